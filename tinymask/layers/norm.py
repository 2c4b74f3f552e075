"""Normalisation layers: frozen batch norm and group norm, forward and backward.

**Frozen batch norm.** Detection backbones are fine-tuned with batches of one or two images per GPU, too few for
batch statistics, so the pretrained statistics and affine are frozen (the practice of the ResNet paper's detection
experiments, Appendix A, kept by Detectron and torchvision's `FrozenBatchNorm2d`). What remains is a fixed
per-channel affine map:

    y = x · s + (b − μ · s),   s = γ / √(σ² + ε)

It has no trainable parameters (all four of γ, b, μ, σ² are constants), so its backward returns `dx = dout · s` only.

**Group norm** (Wu & He, ECCV 2018): normalise each sample over groups of channels, independent of the batch, which
lets the model train from scratch with tiny batches (detectron2's GN baselines; tinymask's small CPU preset):

    μ_g, σ²_g = mean and (biased) variance of x over (channels of group g, H, W)
    x̂ = (x − μ_g) / √(σ²_g + ε),    y = γ_c · x̂ + β_c

Backward (derivation in docs/layers/norms.md), per sample and group with M elements:
    dx̂ = dout · γ,   dx = (dx̂ − mean(dx̂) − x̂ · mean(dx̂ · x̂)) / √(σ² + ε)
The cache keeps x̂ and 1/√(σ² + ε): both backward terms are built from them.
"""
from __future__ import annotations

import numpy as np

from tinymask._validate import check_dout, check_float_array, check_same_dtype, finite_checked


def _check_channel_param(p, name, C):
    check_float_array(p, name, 1, "(C,)")
    if p.shape[0] != C:
        raise ValueError(f"{name} has {p.shape[0]} entries but x has {C} channels")


@finite_checked("out", "cache")
def frozen_batch_norm_forward(x, weight, bias, running_mean, running_var, *, eps=1e-5):
    """x: (N, C, H, W); the four per-channel constants: (C,) each -> y (N, C, H, W), cache (the scale s, x's shape)."""
    check_float_array(x, "x", 4, "(N, C, H, W)")
    C = x.shape[1]
    for name, p in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        _check_channel_param(p, name, C)
    if eps <= 0 and np.any(running_var <= 0):
        raise ValueError("running_var must be positive when eps is 0")
    scale = (weight / np.sqrt(running_var + eps)).astype(x.dtype)  # (C,): s = γ / √(σ² + ε)
    shift = (bias - running_mean * scale).astype(x.dtype)  # (C,): b − μ·s
    out = x * scale[:, None, None] + shift[:, None, None]  # (N, C, H, W)
    return out, (scale, x.shape)


@finite_checked("dx")
def frozen_batch_norm_backward(dout, cache):
    """dx = dout · s. The statistics and affine are frozen, so no other gradient exists."""
    scale, x_shape = cache
    check_dout(dout, x_shape, "frozen_batch_norm_backward")
    return dout * scale[:, None, None]


@finite_checked("out", "cache")
def group_norm_forward(x, gamma, beta, *, num_groups, eps=1e-5):
    """x: (N, C, H, W), gamma/beta: (C,) -> y (N, C, H, W), cache. C must be divisible by num_groups."""
    check_float_array(x, "x", 4, "(N, C, H, W)")
    N, C, H, W = x.shape
    _check_channel_param(gamma, "gamma", C)
    _check_channel_param(beta, "beta", C)
    check_same_dtype(x=x, gamma=gamma, beta=beta)
    if num_groups < 1 or C % num_groups:
        raise ValueError(f"{C} channels cannot be split into {num_groups} groups of equal size")
    xg = x.reshape(N, num_groups, -1)  # (N, G, C/G·H·W)
    mean = xg.mean(axis=2, keepdims=True)  # (N, G, 1): μ_g
    var = xg.var(axis=2, keepdims=True)  # (N, G, 1): σ²_g (biased, as in the paper)
    inv_std = 1.0 / np.sqrt(var + eps)  # (N, G, 1)
    x_hat = ((xg - mean) * inv_std).reshape(N, C, H, W)  # x̂ = (x − μ) / √(σ² + ε)
    out = x_hat * gamma[:, None, None] + beta[:, None, None]  # y = γ x̂ + β
    return out, (x_hat, inv_std, gamma, num_groups)


@finite_checked("dx", "dgamma", "dbeta")
def group_norm_backward(dout, cache):
    """dout: (N, C, H, W) -> (dx, dgamma (C,), dbeta (C,))."""
    x_hat, inv_std, gamma, G = cache
    check_dout(dout, x_hat.shape, "group_norm_backward")
    N, C, H, W = dout.shape
    dgamma = np.sum(dout * x_hat, axis=(0, 2, 3))  # (C,)
    dbeta = dout.sum(axis=(0, 2, 3))  # (C,)
    dx_hat = (dout * gamma[:, None, None]).reshape(N, G, -1)  # (N, G, M)
    xh = x_hat.reshape(N, G, -1)  # (N, G, M)
    dx = (dx_hat - dx_hat.mean(axis=2, keepdims=True)
          - xh * np.mean(dx_hat * xh, axis=2, keepdims=True)) * inv_std  # (N, G, M)
    return dx.reshape(N, C, H, W), dgamma, dbeta
