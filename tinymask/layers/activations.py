"""Non-linearities: ReLU, the logistic sigmoid, and the softmax over classes.

ReLU follows every conv and fc layer of the backbone and heads (ResNet, FPN, Mask R-CNN Fig. 4). The sigmoid turns
each mask logit into a per-pixel probability (Mask R-CNN §3: "a per-pixel sigmoid"); the losses use its numerically
stable fused form with the cross-entropy (see `tinymask/layers/losses.py`).
"""
from __future__ import annotations

import numpy as np

from tinymask._validate import check_dout, check_float_array, finite_checked


@finite_checked("out", "cache")
def relu_forward(x):
    """out = max(x, 0), any shape. The cache keeps the mask `x > 0`, which is all the backward needs."""
    check_float_array(x, "x")
    positive = x > 0
    return x * positive, positive


@finite_checked("dx")
def relu_backward(dout, cache):
    """dx = dout where x > 0, else 0 (the derivative at exactly 0 is taken as 0)."""
    positive = cache  # (the shape of x and out)
    check_dout(dout, positive.shape, "relu_backward")
    return dout * positive


def sigmoid(x):
    """σ(x) = 1 / (1 + e^{−x}), computed without overflow: for x < 0 as e^{x} / (1 + e^{x})."""
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)


@finite_checked("out", "cache")
def sigmoid_forward(x):
    """out = σ(x), any shape. The cache keeps `out`, since σ'(x) = σ(x)(1 − σ(x))."""
    check_float_array(x, "x")
    out = sigmoid(x)
    return out, out


@finite_checked("dx")
def sigmoid_backward(dout, cache):
    """dx = dout · σ(x) · (1 − σ(x))."""
    out = cache
    check_dout(dout, out.shape, "sigmoid_backward")
    return dout * out * (1.0 - out)


def softmax(logits, axis: int = 1):
    """exp(z) / Σ exp(z) along `axis` (the classes), computed as exp(z − max z) so that nothing overflows.

    Used at inference (class scores, softmax masks); the training losses use the log-softmax inside
    `softmax_cross_entropy` instead, which stays finite where a probability rounds to 0.
    """
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)
