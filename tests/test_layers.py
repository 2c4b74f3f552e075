"""Every layer's backward against central differences (float64), fast against reference, golden values, bad input."""
import numpy as np
import pytest

from tinymask.gradcheck import check_layer
from tinymask.layers.conv import conv2d_backward, conv2d_backward_naive, conv2d_forward, conv2d_forward_naive
from tinymask.layers.conv_transpose import (conv_transpose2d_backward, conv_transpose2d_backward_naive,
                                            conv_transpose2d_forward, conv_transpose2d_forward_naive)
from tinymask.layers.norm import (frozen_batch_norm_backward, frozen_batch_norm_forward, group_norm_backward,
                                  group_norm_forward)
from tinymask.layers.pooling import (global_avg_pool_backward, global_avg_pool_forward, max_pool2d_backward,
                                     max_pool2d_forward)
from tinymask.layers.linear import linear_backward, linear_forward
from tinymask.layers.activations import relu_backward, relu_forward, sigmoid_backward, sigmoid_forward
from tinymask.layers.upsample import upsample_nearest_backward, upsample_nearest_forward

TOL = 1e-7

CONV_CASES = [
    # (x shape, w shape, settings)
    ((2, 3, 7, 6), (4, 3, 3, 3), dict(stride=1, padding=1)),
    ((1, 2, 8, 9), (3, 2, 3, 3), dict(stride=2, padding=1)),
    ((2, 2, 9, 7), (2, 2, 1, 1), dict(stride=2, padding=0)),  # FPN lateral / bottleneck 1x1 with stride
    ((1, 3, 11, 10), (2, 3, 7, 7), dict(stride=2, padding=3)),  # the ResNet stem
    ((2, 2, 7, 8), (3, 2, 3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=(2, 1))),  # non-square everything
    ((3, 1, 5, 5), (2, 1, 2, 2), dict(stride=1, padding=0, dilation=2)),
]


@pytest.mark.parametrize("x_shape,w_shape,kw", CONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv2d_gradients(rng, x_shape, w_shape, kw, bias):
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0]) if bias else None
    errors = check_layer(conv2d_forward, conv2d_backward, [x, w, b], kwargs=kw, names=["x", "w", "b"])
    assert set(errors) == ({"x", "w", "b"} if bias else {"x", "w"})
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("x_shape,w_shape,kw", CONV_CASES)
def test_conv2d_fast_equals_reference(rng, x_shape, w_shape, kw):
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    out, cache = conv2d_forward(x, w, b, **kw)
    ref, ref_cache = conv2d_forward_naive(x, w, b, **kw)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    for fast, slow in zip(conv2d_backward(dout, cache), conv2d_backward_naive(dout, ref_cache)):
        np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)


def test_conv2d_reference_gradients(rng):
    x, w, b = rng.standard_normal((2, 2, 5, 6)), rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)
    errors = check_layer(conv2d_forward_naive, conv2d_backward_naive, [x, w, b], kwargs=dict(stride=2, padding=1))
    assert max(errors.values()) < TOL


def test_conv2d_golden():
    # A 3x3 map 0..8 and a 2x2 kernel of ones: each output is the sum of a 2x2 window.
    x = np.arange(9.0).reshape(1, 1, 3, 3)
    w = np.ones((1, 1, 2, 2))
    out, _ = conv2d_forward(x, w, np.array([0.5]))
    np.testing.assert_array_equal(out[0, 0], [[0 + 1 + 3 + 4 + 0.5, 1 + 2 + 4 + 5 + 0.5],
                                              [3 + 4 + 6 + 7 + 0.5, 4 + 5 + 7 + 8 + 0.5]])
    # With padding 1 and stride 2 the windows are the corners of the zero-padded 5x5 map.
    out, _ = conv2d_forward(x, w, None, stride=2, padding=1)
    np.testing.assert_array_equal(out[0, 0], [[0, 1 + 2], [3 + 6, 4 + 5 + 7 + 8]])


def test_conv2d_float32(rng):
    x, w = rng.standard_normal((1, 2, 5, 5)).astype(np.float32), rng.standard_normal((2, 2, 3, 3)).astype(np.float32)
    out, cache = conv2d_forward(x, w, None, padding=1)
    dx, dw, _ = conv2d_backward(np.ones_like(out), cache)
    assert out.dtype == dx.dtype == dw.dtype == np.float32
    ref, _ = conv2d_forward(x.astype(np.float64), w.astype(np.float64), None, padding=1)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


DECONV_CASES = [
    ((2, 3, 4, 5), (3, 2, 2, 2), dict(stride=2)),  # the mask head's 2x2 stride-2 deconv
    ((1, 2, 3, 4), (2, 3, 3, 3), dict(stride=2, padding=1, output_padding=1)),
    ((2, 2, 4, 3), (2, 2, 3, 2), dict(stride=(2, 3), padding=(1, 0), dilation=(2, 1))),
    ((1, 2, 3, 3), (2, 2, 3, 3), dict(stride=1, padding=1)),  # stride 1: the adjoint of a same-size conv
    ((1, 2, 4, 4), (2, 2, 3, 3), dict(stride=1, dilation=2, output_padding=1)),  # output_padding >= stride
]


@pytest.mark.parametrize("x_shape,w_shape,kw", DECONV_CASES)
@pytest.mark.parametrize("bias", [True, False])
def test_conv_transpose2d_gradients(rng, x_shape, w_shape, kw, bias):
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[1]) if bias else None
    errors = check_layer(conv_transpose2d_forward, conv_transpose2d_backward, [x, w, b], kwargs=kw)
    assert max(errors.values()) < TOL, errors


@pytest.mark.parametrize("x_shape,w_shape,kw", DECONV_CASES)
def test_conv_transpose2d_fast_equals_reference(rng, x_shape, w_shape, kw):
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[1])
    out, cache = conv_transpose2d_forward(x, w, b, **kw)
    ref, ref_cache = conv_transpose2d_forward_naive(x, w, b, **kw)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    for fast, slow in zip(conv_transpose2d_backward(dout, cache), conv_transpose2d_backward_naive(dout, ref_cache)):
        np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)


def test_conv_transpose_is_adjoint_of_conv(rng):
    # <conv(x), y> = <x, conv_transpose(y)> with the same kernel: the definition of the adjoint.
    x, y = rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((2, 4, 5, 4))
    w = rng.standard_normal((4, 3, 3, 3))  # conv: 3 -> 4 channels; as deconv weights (C_in=4, C_out=3) read the same
    cx, _ = conv2d_forward(x, w, stride=2, padding=1)
    ty, _ = conv_transpose2d_forward(y, w, stride=2, padding=1, output_padding=(0, 1))
    assert cx.shape == y.shape and ty.shape == x.shape
    np.testing.assert_allclose(np.sum(cx * y), np.sum(x * ty), rtol=1e-12)


def test_conv_transpose2d_golden():
    # 2x2 stride-2 deconv with a kernel of ones: every input pixel becomes a 2x2 block (no overlap).
    x = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    out, _ = conv_transpose2d_forward(x, np.ones((1, 1, 2, 2)), stride=2)
    np.testing.assert_array_equal(out[0, 0], [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    # Stride 1: the blocks overlap and add up.
    out, _ = conv_transpose2d_forward(x, np.ones((1, 1, 2, 2)), stride=1)
    np.testing.assert_array_equal(out[0, 0], [[1, 3, 2], [4, 10, 6], [3, 7, 4]])


def test_linear_gradients(rng):
    x, w, b = rng.standard_normal((5, 7)), rng.standard_normal((3, 7)), rng.standard_normal(3)
    errors = check_layer(linear_forward, linear_backward, [x, w, b])
    assert len(errors) == 3 and max(errors.values()) < TOL
    errors = check_layer(linear_forward, linear_backward, [x, w, None])
    assert len(errors) == 2 and max(errors.values()) < TOL


def away_from_zero(rng, shape, margin=0.05):
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < margin, np.sign(x) * margin + x, x)


def test_relu_and_sigmoid_gradients(rng):
    x = away_from_zero(rng, (2, 3, 4, 5))
    assert check_layer(relu_forward, relu_backward, [x])["input0"] < TOL
    assert check_layer(sigmoid_forward, sigmoid_backward, [x * 3])["input0"] < TOL


def test_relu_golden_and_sigmoid_stable():
    out, _ = relu_forward(np.array([-2.0, -0.0, 0.5, 3.0]))
    np.testing.assert_array_equal(out, [0.0, 0.0, 0.5, 3.0])
    with np.errstate(over="raise"):
        out, _ = sigmoid_forward(np.array([-1000.0, -100.0, 0.0, 100.0, 1000.0]))
    np.testing.assert_allclose(out, [0.0, 3.720075976020836e-44, 0.5, 1.0, 1.0], rtol=1e-12, atol=0)


def distinct_values(rng, shape):
    """A random permutation of well-separated values: no ties, so every max has one winner."""
    return rng.permutation(np.arange(np.prod(shape), dtype=np.float64)).reshape(shape) * 0.1


@pytest.mark.parametrize("kw", [dict(kernel_size=3, stride=2, padding=1),  # the ResNet stem
                                dict(kernel_size=1, stride=2),  # FPN's P6
                                dict(kernel_size=2),
                                dict(kernel_size=(3, 2), stride=(1, 2), padding=(1, 0))])
def test_max_pool_gradients(rng, kw):
    x = distinct_values(rng, (2, 2, 7, 6))
    assert check_layer(max_pool2d_forward, max_pool2d_backward, [x], kwargs=kw)["input0"] < TOL


def test_max_pool_golden():
    x = np.array([[1.0, 5.0, 2.0], [4.0, 3.0, 0.0], [7.0, 6.0, 8.0]]).reshape(1, 1, 3, 3)
    out, cache = max_pool2d_forward(x, kernel_size=2, stride=1)
    np.testing.assert_array_equal(out[0, 0], [[5, 5], [7, 8]])
    dx = max_pool2d_backward(np.ones((1, 1, 2, 2)), cache)
    # 5 wins two windows, so it collects two gradients.
    np.testing.assert_array_equal(dx[0, 0], [[0, 2, 0], [0, 0, 0], [1, 0, 1]])
    out, _ = max_pool2d_forward(x, kernel_size=1, stride=2)  # P6: keep every other pixel
    np.testing.assert_array_equal(out[0, 0], [[1, 2], [7, 8]])
    out, _ = max_pool2d_forward(-x, kernel_size=3, stride=2, padding=1)  # padding never wins, even against negatives
    np.testing.assert_array_equal(out[0, 0], [[-1, 0], [-3, 0]])


def test_frozen_batch_norm(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    w, b, mean, var = rng.standard_normal(3), rng.standard_normal(3), rng.standard_normal(3), rng.random(3) + 0.5
    out, _ = frozen_batch_norm_forward(x, w, b, mean, var, eps=1e-5)
    expected = (x - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-5) * w[:, None, None] + b[:, None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    fwd = lambda x_: frozen_batch_norm_forward(x_, w, b, mean, var, eps=1e-3)  # noqa: E731
    assert check_layer(fwd, frozen_batch_norm_backward, [x])["input0"] < TOL


@pytest.mark.parametrize("C,G", [(6, 3), (4, 1), (4, 4)])
def test_group_norm_gradients(rng, C, G):
    x = rng.standard_normal((2, C, 3, 4)) * 2 + 1
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)
    errors = check_layer(group_norm_forward, group_norm_backward, [x, gamma, beta], kwargs=dict(num_groups=G))
    assert max(errors.values()) < TOL, errors


def test_group_norm_statistics(rng):
    x = rng.standard_normal((2, 6, 5, 5)) * 3 + 2
    out, _ = group_norm_forward(x, np.ones(6), np.zeros(6), num_groups=2)
    groups = out.reshape(2, 2, -1)
    np.testing.assert_allclose(groups.mean(axis=2), 0, atol=1e-12)
    np.testing.assert_allclose(groups.var(axis=2), 1, atol=1e-4)  # 1 − ε/(σ²+ε)


@pytest.mark.parametrize("kw", [dict(scale_factor=2), dict(size=(7, 5)), dict(size=(3, 2)), dict(size=(13, 11))])
def test_upsample_gradients(rng, kw):
    x = rng.standard_normal((2, 3, 4, 5))
    assert check_layer(upsample_nearest_forward, upsample_nearest_backward, [x], kwargs=kw)["input0"] < TOL


def test_upsample_golden():
    x = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2)
    out, cache = upsample_nearest_forward(x, scale_factor=2)
    np.testing.assert_array_equal(out[0, 0], [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]])
    np.testing.assert_array_equal(upsample_nearest_backward(np.ones((1, 1, 4, 4)), cache)[0, 0], [[4, 4], [4, 4]])
    out, _ = upsample_nearest_forward(x, size=(3, 3))  # src = floor(dst * 2 / 3) = 0, 0, 1
    np.testing.assert_array_equal(out[0, 0], [[1, 1, 2], [1, 1, 2], [3, 3, 4]])


def test_weight_sharing_gradients_add_up(rng):
    # One conv applied to two inputs (as the RPN head is applied to every FPN level): the gradient of the shared
    # weight is the sum of the two calls' gradients, each call with its own cache.
    x1, x2 = rng.standard_normal((1, 2, 5, 5)), rng.standard_normal((1, 2, 3, 4))
    w, b = rng.standard_normal((3, 2, 3, 3)), rng.standard_normal(3)

    def forward(x1, x2, w, b):
        o1, c1 = conv2d_forward(x1, w, b, padding=1)
        o2, c2 = conv2d_forward(x2, w, b, padding=1)
        return np.concatenate([o1.ravel(), o2.ravel()]), (c1, c2, o1.shape)

    def backward(dout, cache):
        c1, c2, shape1 = cache
        n1 = int(np.prod(shape1))
        dx1, dw1, db1 = conv2d_backward(dout[:n1].reshape(shape1), c1)
        dx2, dw2, db2 = conv2d_backward(dout[n1:].reshape(c2[0][0], 3, 3, 4), c2)
        return dx1, dx2, dw1 + dw2, db1 + db2

    errors = check_layer(forward, backward, [x1, x2, w, b], names=["x1", "x2", "w", "b"])
    assert max(errors.values()) < TOL, errors


# ----------------------------------------------------------------------------------------------------------------
# Bad input: errors that name the problem.
# ----------------------------------------------------------------------------------------------------------------

def test_conv_bad_inputs():
    x, w = np.zeros((1, 3, 5, 5)), np.zeros((2, 3, 3, 3))
    with pytest.raises(ValueError, match="4 dimensions"):
        conv2d_forward(np.zeros((3, 5, 5)), w)
    with pytest.raises(ValueError, match="channel mismatch"):
        conv2d_forward(np.zeros((1, 4, 5, 5)), w)
    with pytest.raises(ValueError, match="larger than the padded input"):
        conv2d_forward(np.zeros((1, 3, 2, 5)), w)
    with pytest.raises(TypeError, match="float32 or float64"):
        conv2d_forward(np.zeros((1, 3, 5, 5), dtype=np.int64), w)
    with pytest.raises(TypeError, match="share one dtype"):
        conv2d_forward(x.astype(np.float32), w)
    with pytest.raises(ValueError, match="b has 3 entries"):
        conv2d_forward(x, w, np.zeros(3))
    with pytest.raises(TypeError, match="stride"):
        conv2d_forward(x, w, stride=1.5)
    with pytest.raises(TypeError, match="NumPy array"):
        conv2d_forward(x.tolist(), w)


def test_other_bad_inputs():
    with pytest.raises(ValueError, match="channel mismatch"):
        conv_transpose2d_forward(np.zeros((1, 3, 4, 4)), np.zeros((2, 3, 2, 2)))
    with pytest.raises(ValueError, match="feature mismatch"):
        linear_forward(np.zeros((2, 5)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="groups"):
        group_norm_forward(np.zeros((1, 6, 2, 2)), np.ones(6), np.zeros(6), num_groups=4)
    with pytest.raises(ValueError, match="gamma has 5 entries"):
        group_norm_forward(np.zeros((1, 6, 2, 2)), np.ones(5), np.zeros(6), num_groups=3)
    with pytest.raises(ValueError, match="larger than the padded input"):
        max_pool2d_forward(np.zeros((1, 1, 2, 2)), kernel_size=3)
    with pytest.raises(ValueError, match="exactly one"):
        upsample_nearest_forward(np.zeros((1, 1, 2, 2)))
    with pytest.raises(TypeError, match="float32 or float64"):
        relu_forward(np.arange(4))
    with pytest.raises(ValueError, match="stride >= 1"):
        max_pool2d_forward(np.zeros((1, 1, 4, 4)), kernel_size=2, stride=0)


def test_global_avg_pool(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    out, _ = global_avg_pool_forward(x)
    np.testing.assert_allclose(out, x.mean(axis=(2, 3)))
    assert check_layer(global_avg_pool_forward, global_avg_pool_backward, [x])["input0"] < TOL
