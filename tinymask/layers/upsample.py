"""Nearest-neighbour upsampling, forward and backward.

Paper: FPN §3, top-down pathway — "we upsample the spatial resolution by a factor of 2 (using nearest neighbor
upsampling for simplicity)" and add the lateral connection. When an input side is odd the lateral map is not exactly
twice the coarser one, so torchvision resizes to the lateral map's size; this module does both.

Output pixel (y, x) copies input pixel (⌊y·H_in / H_out⌋, ⌊x·W_in / W_out⌋) — PyTorch's `mode="nearest"` rule,
computed here in exact integer arithmetic.

Backward: each input pixel receives the sum of the gradients of all output pixels that copied it. With the one-hot
selection matrices `A_h` (H_out, H_in) and `A_w` (W_out, W_in), forward is `A_h @ x @ A_wᵀ` and backward
`A_hᵀ @ dout @ A_w`. The cache keeps the two index vectors.
"""
from __future__ import annotations

import numpy as np

from tinymask._validate import as_pair, check_dout, check_float_array, finite_checked


def nearest_indices(size_in: int, size_out: int) -> np.ndarray:
    """Source index of each output index along one axis: ⌊dst · in / out⌋."""
    return (np.arange(size_out) * size_in) // size_out  # (size_out,)


@finite_checked("out", "cache")
def upsample_nearest_forward(x, *, size=None, scale_factor=None):
    """x: (N, C, H, W) -> (N, C, Ho, Wo) with `size=(Ho, Wo)` or an integer `scale_factor` (2 in FPN)."""
    check_float_array(x, "x", 4, "(N, C, H, W)")
    if (size is None) == (scale_factor is None):
        raise ValueError("give exactly one of size=(H_out, W_out) or scale_factor")
    H, W = x.shape[2:]
    if size is not None:
        Ho, Wo = as_pair(size, "size")
    else:
        fh, fw = as_pair(scale_factor, "scale_factor")
        Ho, Wo = H * fh, W * fw
    if Ho < 1 or Wo < 1:
        raise ValueError(f"output size must be positive, got {(Ho, Wo)}")
    iy, ix = nearest_indices(H, Ho), nearest_indices(W, Wo)
    out = x[:, :, iy][:, :, :, ix]  # (N, C, Ho, Wo)
    return out, (x.shape, iy, ix)


@finite_checked("dx")
def upsample_nearest_backward(dout, cache):
    """Sum the gradients of the copies back onto their source pixel: dx = A_hᵀ @ dout @ A_w."""
    (N, C, H, W), iy, ix = cache
    check_dout(dout, (N, C, len(iy), len(ix)), "upsample_nearest_backward")
    a_h = (iy[:, None] == np.arange(H)).astype(dout.dtype)  # (Ho, H) one-hot
    a_w = (ix[:, None] == np.arange(W)).astype(dout.dtype)  # (Wo, W) one-hot
    return a_h.T @ dout @ a_w  # (N, C, H, W)
