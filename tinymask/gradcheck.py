"""Numerical gradient checking: the test that every hand-written backward in tinymask must pass.

A backward pass is right when it agrees with the slope that the forward pass itself shows. For a layer
``out = f(x)`` and an upstream gradient ``dout`` we take the scalar "fake loss" ``L = sum(f(x) * dout)``, whose
gradient with respect to ``x`` is exactly what ``backward(dout, cache)`` must return, and estimate it by central
differences, one element at a time::

    dL/dx[i] ≈ (L(x + h e_i) - L(x - h e_i)) / (2 h)

The error of this estimate is O(h²) from truncation plus O(eps / h) from rounding, so in float64 with h = 1e-6 a
correct backward agrees to about 1e-9 relative error, while a wrong one is off by order 1. Inputs must sit away from
kinks (ReLU at 0, ties in a max, integer sample positions in bilinear interpolation), where the function has no
derivative and the estimate straddles two slopes.

Used by the tests and the notebooks; see docs/conventions.md for the layer convention it checks.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """Relative error of two whole arrays: ||a - b|| / (||a|| + ||b||), 0 when both are zero.

    Scale-free, so it reads the same for a gradient of size 1e-6 or 1e6; a single wrong element still shows, since it
    changes the numerator by its own size.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"cannot compare arrays of shapes {a.shape} and {b.shape}")
    denom = np.linalg.norm(a) + np.linalg.norm(b)
    if denom == 0.0:
        return 0.0
    return float(np.linalg.norm(a - b) / denom)


def numerical_gradient(f: Callable[[], np.ndarray | float], x: np.ndarray, dout=None, h: float = 1e-6) -> np.ndarray:
    """Central-difference gradient of ``sum(f() * dout)`` with respect to ``x``.

    ``f`` takes no arguments and reads ``x`` itself (a closure), so that ``x`` may be any one of several inputs or
    parameters; each element of ``x`` is nudged in place and restored. ``dout`` defaults to 1 (``f`` returns a
    scalar loss).
    """
    if x.dtype != np.float64:
        raise TypeError(f"gradient checks need float64 inputs (float32 rounding swamps the differences), got {x.dtype}")
    grad = np.zeros(x.shape, dtype=np.float64)
    for i in np.ndindex(x.shape):  # index x itself, so that views (x.T, slices) are nudged in place too
        old = x[i]
        x[i] = old + h
        plus = np.sum(np.asarray(f()) * (1.0 if dout is None else dout))
        x[i] = old - h
        minus = np.sum(np.asarray(f()) * (1.0 if dout is None else dout))
        x[i] = old
        grad[i] = (plus - minus) / (2.0 * h)
    return grad


def check_layer(
    forward: Callable,
    backward: Callable,
    inputs: Sequence[np.ndarray | None],
    *,
    kwargs: dict | None = None,
    names: Sequence[str] | None = None,
    seed: int = 1234,
    h: float = 1e-6,
) -> dict[str, float]:
    """Check every gradient that ``backward`` returns against central differences.

    ``forward(*inputs, **kwargs)`` must return ``(out, cache)`` and ``backward(dout, cache)`` a tuple with one entry
    per input (``None`` for inputs that get no gradient, such as a missing bias or integer boxes), or a single array
    when there is one input. A random upstream gradient ``dout`` (seeded) plays the loss.

    Returns ``{name: relative error}`` for every input that received a gradient; names default to ``input0``, ...
    """
    kwargs = kwargs or {}
    names = list(names) if names is not None else [f"input{i}" for i in range(len(inputs))]
    if len(names) != len(inputs):
        raise ValueError(f"got {len(names)} names for {len(inputs)} inputs")
    out, cache = forward(*inputs, **kwargs)
    rng = np.random.default_rng(seed)
    dout = rng.standard_normal(out.shape)
    grads = backward(dout, cache)
    if not isinstance(grads, tuple):
        grads = (grads,)
    if len(grads) != len(inputs):
        raise ValueError(f"backward returned {len(grads)} gradients for {len(inputs)} inputs")

    errors = {}
    for name, x, g in zip(names, inputs, grads):
        if g is None:
            continue
        if g.shape != x.shape:
            raise ValueError(f"gradient of {name} has shape {g.shape}, but {name} has shape {x.shape}")
        num = numerical_gradient(lambda: forward(*inputs, **kwargs)[0], x, dout, h)
        errors[name] = rel_error(g, num)
    return errors


def check_loss(loss_fn: Callable, inputs: Sequence, *, kwargs: dict | None = None, h: float = 1e-6) -> float:
    """Check a loss ``loss_fn(*inputs) -> (loss, dinputs[0])`` against central differences on its first input."""
    kwargs = kwargs or {}
    _, grad = loss_fn(*inputs, **kwargs)
    num = numerical_gradient(lambda: loss_fn(*inputs, **kwargs)[0], inputs[0], None, h)
    return rel_error(grad, num)


def check_named(forward: Callable, backward: Callable, wrt: dict, *, seed: int = 0, h: float = 1e-6) -> dict:
    """The dict form of `check_layer`, for networks whose parameters are a `{name: array}` dict (ResNet, FPN).

    `forward()` -> (outputs dict, cache) reads the arrays of `wrt` itself (they are nudged in place);
    `backward(douts, cache)` -> {name: gradient} for at least the names in `wrt`. A random upstream gradient per
    output plays the loss L = Σ_k sum(out_k · dout_k). Returns {name: relative error}.
    """
    outs, cache = forward()
    rng = np.random.default_rng(seed)
    douts = {k: rng.standard_normal(v.shape) for k, v in outs.items()}
    analytic = backward(douts, cache)

    def loss():
        return sum(np.sum(o * douts[k]) for k, o in forward()[0].items())

    return {name: rel_error(analytic[name], numerical_gradient(loss, x, None, h)) for name, x in wrt.items()}


def check_every_layer(seed: int = 0) -> list[tuple[str, dict]]:
    """Gradient-check every layer and loss on small random inputs (float64): [(what, {input: relative error})].

    What `tinymask demo` prints. A correct backward agrees to about 1e-9; a wrong one is off by order 1.
    """
    from tinymask import layers as L
    from tinymask.layers.losses import binary_cross_entropy_with_logits, smooth_l1, softmax_cross_entropy

    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, 3, 9, 8))
    layers = [
        ("conv2d 3x3, stride 2, padding 1", L.conv2d_forward, L.conv2d_backward,
         [x, rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)], dict(stride=2, padding=1)),
        ("conv_transpose2d 2x2, stride 2 (mask head deconv)", L.conv_transpose2d_forward, L.conv_transpose2d_backward,
         [x, rng.standard_normal((3, 2, 2, 2)), rng.standard_normal(2)], dict(stride=2)),
        ("linear", L.linear_forward, L.linear_backward,
         [rng.standard_normal((5, 6)), rng.standard_normal((3, 6)), rng.standard_normal(3)], {}),
        ("relu", L.relu_forward, L.relu_backward, [x + np.sign(x) * 0.1], {}),
        ("sigmoid", L.sigmoid_forward, L.sigmoid_backward, [x], {}),
        ("max_pool2d 3x3, stride 2, padding 1 (ResNet stem)", L.max_pool2d_forward, L.max_pool2d_backward,
         [0.01 * rng.permutation(np.arange(x.size, dtype=float)).reshape(x.shape)],
         dict(kernel_size=3, stride=2, padding=1)),
        ("group_norm, 3 groups", L.group_norm_forward, L.group_norm_backward,
         [rng.standard_normal((2, 6, 4, 5)), rng.standard_normal(6), rng.standard_normal(6)], dict(num_groups=3)),
        ("upsample_nearest to 13x11 (FPN top-down)", L.upsample_nearest_forward, L.upsample_nearest_backward,
         [x], dict(size=(13, 11))),
    ]
    results = [(name, check_layer(fwd, bwd, inputs, kwargs=kwargs, names=["x", "w", "b"][:len(inputs)]))
               for name, fwd, bwd, inputs, kwargs in layers]
    labels = rng.integers(0, 4, 6)
    losses = [("softmax_cross_entropy", softmax_cross_entropy, [rng.standard_normal((6, 4)), labels]),
              ("smooth_l1 (beta 1/9)", lambda p, t: smooth_l1(p, t, beta=1 / 9),
               [rng.standard_normal(8) + 1.0, np.zeros(8)]),
              ("binary_cross_entropy_with_logits", binary_cross_entropy_with_logits,
               [rng.standard_normal((3, 4)) * 3, (rng.random((3, 4)) > 0.5).astype(float)])]
    results += [(name, {"x": check_loss(fn, inputs)}) for name, fn, inputs in losses]
    return results
