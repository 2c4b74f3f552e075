"""Optional cross-check of every layer and loss against `torch.nn.functional` in float64.

Skipped cleanly when PyTorch is not installed; CI installs it, so these run there. PyTorch's autograd gives the
reference gradients; tinymask's hand-written backwards must agree to round-off.
"""
import numpy as np
import pytest

from tinymask import layers as L
from tinymask.layers.conv import conv2d_backward_naive, conv2d_forward_naive
from tinymask.layers.losses import binary_cross_entropy_with_logits, smooth_l1, softmax_cross_entropy

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_grads(fn, arrays, dout):
    """Run `fn` on torch copies of `arrays`, backpropagate `dout`, return (out, [grads])."""
    ts = [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays]
    out = fn(*ts)
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), [None if t is None else t.grad.numpy() for t in ts]


def assert_close(ours, theirs):
    for a, b in zip(ours, theirs):
        if a is None or b is None:
            assert a is None and b is None
        else:
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("kw", [dict(stride=1, padding=1), dict(stride=2, padding=3), dict(stride=(2, 1), padding=(0, 2), dilation=(1, 2))])
def test_conv2d(rng, kw):
    x, w, b = rng.standard_normal((2, 3, 11, 9)), rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)
    out, cache = L.conv2d_forward(x, w, b, **kw)
    dout = rng.standard_normal(out.shape)
    ref, grads = torch_grads(lambda x, w, b: F.conv2d(x, w, b, **kw), [x, w, b], dout)
    assert_close([out, *L.conv2d_backward(dout, cache)], [ref, *grads])


@pytest.mark.parametrize("x_shape, w_shape, kw", [
    ((2, 4, 9, 8), (6, 2, 3, 3), dict(padding=1, groups=2)),  # ResNeXt's grouped 3×3
    ((2, 6, 11, 9), (6, 2, 3, 3), dict(stride=2, padding=1, groups=3)),  # with the stage's stride
    ((1, 4, 8, 7), (8, 1, 3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=4)),  # depthwise, ×2
])
def test_conv2d_grouped(rng, x_shape, w_shape, kw):
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    dout = None
    for forward, backward in ((L.conv2d_forward, L.conv2d_backward), (conv2d_forward_naive, conv2d_backward_naive)):
        out, cache = forward(x, w, b, **kw)
        dout = rng.standard_normal(out.shape) if dout is None else dout
        ref, grads = torch_grads(lambda x, w, b: F.conv2d(x, w, b, **kw), [x, w, b], dout)
        assert_close([out, *backward(dout, cache)], [ref, *grads])


@pytest.mark.parametrize("kw", [dict(stride=2), dict(stride=2, padding=1, output_padding=1), dict(stride=(3, 2), dilation=(1, 2))])
def test_conv_transpose2d(rng, kw):
    x, w, b = rng.standard_normal((2, 3, 5, 4)), rng.standard_normal((3, 2, 2, 3)), rng.standard_normal(2)
    out, cache = L.conv_transpose2d_forward(x, w, b, **kw)
    dout = rng.standard_normal(out.shape)
    ref, grads = torch_grads(lambda x, w, b: F.conv_transpose2d(x, w, b, **kw), [x, w, b], dout)
    assert_close([out, *L.conv_transpose2d_backward(dout, cache)], [ref, *grads])


def test_linear(rng):
    x, w, b = rng.standard_normal((5, 7)), rng.standard_normal((3, 7)), rng.standard_normal(3)
    out, cache = L.linear_forward(x, w, b)
    dout = rng.standard_normal(out.shape)
    ref, grads = torch_grads(F.linear, [x, w, b], dout)
    assert_close([out, *L.linear_backward(dout, cache)], [ref, *grads])


def test_max_pool(rng):
    x = rng.permutation(np.arange(2 * 3 * 9 * 8, dtype=np.float64)).reshape(2, 3, 9, 8)
    out, cache = L.max_pool2d_forward(x, kernel_size=3, stride=2, padding=1)
    dout = rng.standard_normal(out.shape)
    ref, grads = torch_grads(lambda x: F.max_pool2d(x, 3, 2, 1), [x], dout)
    assert_close([out, L.max_pool2d_backward(dout, cache)], [ref, *grads])


def test_group_norm(rng):
    x, g, b = rng.standard_normal((2, 6, 4, 5)), rng.standard_normal(6), rng.standard_normal(6)
    out, cache = L.group_norm_forward(x, g, b, num_groups=3)
    dout = rng.standard_normal(out.shape)
    ref, grads = torch_grads(lambda x, g, b: F.group_norm(x, 3, g, b, eps=1e-5), [x, g, b], dout)
    assert_close([out, *L.group_norm_backward(dout, cache)], [ref, *grads])


def test_frozen_batch_norm(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    w, b, m, v = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(3), rng.random(3) + 0.5
    out, cache = L.frozen_batch_norm_forward(x, w, b, m, v, eps=1e-5)
    dout = rng.standard_normal(out.shape)
    tm, tv = torch.tensor(m), torch.tensor(v)
    ref, grads = torch_grads(lambda x: F.batch_norm(x, tm, tv, torch.tensor(w), torch.tensor(b), False, 0.0, 1e-5),
                             [x], dout)
    assert_close([out, L.frozen_batch_norm_backward(dout, cache)], [ref, *grads])


@pytest.mark.parametrize("size", [(8, 10), (7, 9), (13, 5)])
def test_upsample_nearest(rng, size):
    x = rng.standard_normal((2, 3, 4, 5))
    out, cache = L.upsample_nearest_forward(x, size=size)
    dout = rng.standard_normal(out.shape)
    ref, grads = torch_grads(lambda x: F.interpolate(x, size=size, mode="nearest"), [x], dout)
    assert_close([out, L.upsample_nearest_backward(dout, cache)], [ref, *grads])


def test_relu_sigmoid(rng):
    x = rng.standard_normal((3, 4, 5))
    for ours_f, ours_b, theirs in ((L.relu_forward, L.relu_backward, F.relu),
                                   (L.sigmoid_forward, L.sigmoid_backward, torch.sigmoid)):
        out, cache = ours_f(x)
        dout = rng.standard_normal(out.shape)
        ref, grads = torch_grads(theirs, [x], dout)
        assert_close([out, ours_b(dout, cache)], [ref, *grads])


def test_losses(rng):
    logits, labels = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    loss, grad = softmax_cross_entropy(logits, labels)
    t = torch.tensor(logits, requires_grad=True)
    F.cross_entropy(t, torch.tensor(labels)).backward()
    assert_close([np.array(loss), grad], [np.array(F.cross_entropy(t, torch.tensor(labels)).item()), t.grad.numpy()])

    pred, target = rng.standard_normal(10), rng.standard_normal(10)
    for beta in (1.0, 1 / 9, 0.0):
        loss, grad = smooth_l1(pred, target, beta=beta, reduction="sum")
        t = torch.tensor(pred, requires_grad=True)
        ref = F.smooth_l1_loss(t, torch.tensor(target), beta=beta, reduction="sum")
        ref.backward()
        assert_close([np.array(loss), grad], [np.array(ref.item()), t.grad.numpy()])

    z, y = rng.standard_normal((3, 7)) * 50, (rng.random((3, 7)) > 0.5).astype(float)
    loss, grad = binary_cross_entropy_with_logits(z, y)
    t = torch.tensor(z, requires_grad=True)
    ref = F.binary_cross_entropy_with_logits(t, torch.tensor(y))
    ref.backward()
    assert_close([np.array(loss), grad], [np.array(ref.item()), t.grad.numpy()])
