"""Bilinear resizing with PyTorch's `F.interpolate(mode="bilinear", align_corners=False)` semantics.

*Used by:* Mask R-CNN inference (He et al., ICCV 2017, Sec. 3.1 "Inference": the m x m mask is "resized to the RoI
size, and binarized at a threshold of 0.5") and the image preprocessing (resize to the shorter side 800, Sec. 3.1
"Implementation Details").

Conventions. Pixels are unit squares and a value sits at its pixel's centre (see `docs/conventions.md`). Resizing
an axis of length `n_in` to `n_out` maps output pixel centre `d + 0.5` to input position `(d + 0.5) * n_in / n_out`,
so in pixel *indices*

    src = (d + 0.5) * n_in / n_out - 0.5,   clamped below at 0,

and the output is the linear blend of the two input pixels around `src`: `i0 = floor(src)`, `i1 = min(i0 + 1,
n_in - 1)` (the edge pixel is repeated), weights `1 - (src - i0)` and `src - i0`. Bilinear = this along the rows,
then along the columns. At `n_out == n_in` every `src` is an integer and the resize is the identity.

Everything is vectorised: one gather of whole rows, one gather of whole columns, no loop over pixels.
"""
from __future__ import annotations

import numpy as np

from tinymask._validate import FLOAT_DTYPES


def linear_weights(n_in: int, n_out: int):
    """Source indices and weights of a 1-D resize from `n_in` to `n_out` samples (align_corners=False).

    Returns `i0, i1` (n_out,) int64 and `w0, w1` (n_out,) float64 with `out[d] = w0[d] * x[i0[d]] + w1[d] * x[i1[d]]`.
    """
    d = np.arange(n_out, dtype=np.float64)  # (n_out,) destination indices
    src = np.maximum((d + 0.5) * (n_in / n_out) - 0.5, 0.0)  # (n_out,) src = (d + 0.5) * in / out - 0.5, >= 0
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)  # (n_out,) left neighbour
    i1 = np.minimum(i0 + 1, n_in - 1)  # (n_out,) right neighbour, clamped at the edge
    w1 = np.clip(src - i0, 0.0, 1.0)  # (n_out,) weight of the right neighbour
    w0 = 1.0 - w1  # (n_out,)
    return i0, i1, w0, w1


def bilinear_resize(x: np.ndarray, out_hw) -> np.ndarray:
    """Resize the last two axes of `x` (..., H, W) to `out_hw = (H_out, W_out)`, bilinearly, align_corners=False.

    Works on any leading shape: a mask (H, W), masks (N, H, W), images (N, C, H, W). Computes in the dtype of `x`
    (float32 or float64) and returns a new array of shape (..., H_out, W_out).
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a NumPy array, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"x must be float32 or float64, got dtype {x.dtype}")
    if x.ndim < 2:
        raise ValueError(f"x must have at least 2 dimensions (..., H, W), got shape {x.shape}")
    if (
        not isinstance(out_hw, (tuple, list))
        or len(out_hw) != 2
        or not all(isinstance(v, (int, np.integer)) for v in out_hw)
    ):
        raise TypeError(f"out_hw must be a pair of ints (height, width), got {out_hw!r}")
    out_h, out_w = int(out_hw[0]), int(out_hw[1])
    in_h, in_w = x.shape[-2:]
    if out_h <= 0 or out_w <= 0:
        raise ValueError(f"out_hw must be positive, got {(out_h, out_w)}")
    if in_h == 0 or in_w == 0:
        raise ValueError(f"x must have a non-empty (H, W), got shape {x.shape}")

    r0, r1, wr0, wr1 = linear_weights(in_h, out_h)  # (H_out,) each
    c0, c1, wc0, wc1 = linear_weights(in_w, out_w)  # (W_out,) each
    wr0, wr1 = wr0.astype(x.dtype)[:, None], wr1.astype(x.dtype)[:, None]  # (H_out, 1)
    wc0, wc1 = wc0.astype(x.dtype), wc1.astype(x.dtype)  # (W_out,)

    rows = wr0 * x[..., r0, :] + wr1 * x[..., r1, :]  # (..., H_out, W) blend along the height
    return wc0 * rows[..., c0] + wc1 * rows[..., c1]  # (..., H_out, W_out) then along the width
