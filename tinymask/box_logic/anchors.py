"""Anchors: the reference boxes the RPN scores and regresses, one set per FPN level.

*Papers:* Ren et al., *Faster R-CNN*, NeurIPS 2015, Sec. 3.1.1 ("Anchors"); Lin et al., *Feature Pyramid Networks*,
CVPR 2017, Sec. 4.1 (one anchor size per pyramid level, areas 32^2 ... 512^2 on P2 ... P6, three aspect ratios).
Mask R-CNN (He et al., ICCV 2017, Sec. 3.1) uses the FPN RPN unchanged.

The recipe, exactly as torchvision's `AnchorGenerator` computes it:

1. **Base anchors** of a level, centred on (0, 0): for every aspect ratio `r` (height / width) and every size `s`,
   `h_ratio = sqrt(r)`, `w_ratio = 1 / h_ratio`, width `w = w_ratio * s`, height `h = h_ratio * s` (so `w * h = s^2`
   and `h / w = r`), and the box `[-w, -h, w, h] / 2` **rounded to integers** (round half to even). The order is
   ratio-major: all sizes of the first ratio, then all sizes of the second, ...; `A = len(ratios) * len(sizes)`.
2. **Stride** of a level = padded image size // feature map size, per axis (integer division).
3. **Shifts**: feature cell `(y, x)` puts the base anchors at `(x * stride_w, y * stride_h)` (the cell's top-left
   corner in image pixels, no half-cell offset). Order: cell-major, row by row, then the A anchors of the cell, so
   anchor `(y * W + x) * A + a` belongs to cell (y, x) and base anchor a. This is the order the RPN head's outputs
   `(N, A, H, W)` take after the permutation to `(N, H, W, A)`.

Worked example (size 32, ratios 0.5, 1, 2): ratio 0.5 gives w = 32 * sqrt(2) = 45.25, h = 22.63, halves 22.63 and
11.31, rounded `[-23, -11, 23, 11]`; ratio 1 gives `[-16, -16, 16, 16]`; ratio 2 gives `[-11, -23, 11, 23]`.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: FPN's settings (Lin et al. Sec. 4.1, torchvision's defaults): one size per level P2..P6, three ratios everywhere.
FPN_ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
FPN_ASPECT_RATIOS = (0.5, 1.0, 2.0)


def base_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], dtype=np.float64) -> np.ndarray:
    """The A = len(aspect_ratios) * len(sizes) anchors of one level centred on (0, 0), shape (A, 4), ratio-major.

    Computed in `dtype` (torchvision uses the feature maps' dtype) and rounded half to even.
    """
    sizes = np.asarray(_numbers(sizes, "sizes"), dtype=dtype)  # (S,)
    ratios = np.asarray(_numbers(aspect_ratios, "aspect_ratios"), dtype=dtype)  # (R,)
    if np.any(sizes <= 0) or np.any(ratios <= 0):
        raise ValueError(f"sizes and aspect_ratios must be positive, got {sizes.tolist()} and {ratios.tolist()}")
    h_ratios = np.sqrt(ratios)  # (R,) r = h / w and w * h = s^2  =>  h = s * sqrt(r)
    w_ratios = 1 / h_ratios  # (R,)                                  w = s / sqrt(r)
    ws = (w_ratios[:, None] * sizes[None, :]).reshape(-1)  # (R * S,) ratio-major
    hs = (h_ratios[:, None] * sizes[None, :]).reshape(-1)  # (R * S,)
    corners = np.stack([-ws, -hs, ws, hs], axis=1) / 2  # (A, 4) centred on (0, 0)
    return np.round(corners)  # (A, 4) NumPy's round is half to even, like torch.round


def grid_anchors(base: np.ndarray, grid_hw, stride_hw) -> np.ndarray:
    """Place (A, 4) base anchors at every cell of an (H, W) feature map: (H * W * A, 4), cell-major.

    Cell (y, x) shifts the base anchors by `(x * stride_w, y * stride_h)`.
    """
    grid_h, grid_w = _pair(grid_hw, "grid_hw")
    stride_h, stride_w = _pair(stride_hw, "stride_hw")
    shifts_x = np.arange(grid_w) * stride_w  # (W,) x * stride_w
    shifts_y = np.arange(grid_h) * stride_h  # (H,) y * stride_h
    shift_y, shift_x = np.meshgrid(shifts_y, shifts_x, indexing="ij")  # (H, W) each, row by row
    shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1).reshape(-1, 1, 4)  # (H * W, 1, 4)
    return (shifts + base[None, :, :]).reshape(-1, 4).astype(base.dtype)  # (H * W * A, 4)


def anchors_for_image(
    image_hw,
    feature_hws: Sequence,
    sizes: Sequence[Sequence[float]] = FPN_ANCHOR_SIZES,
    aspect_ratios=FPN_ASPECT_RATIOS,
    dtype=np.float64,
):
    """All anchors of one (padded) image, every level concatenated, and the count per level.

    image_hw:      (height, width) of the padded batch (the tensor the backbone saw, not the unpadded image).
    feature_hws:   one (H_l, W_l) per level, e.g. the last two dimensions of each FPN output.
    sizes:         one sequence of sizes per level, e.g. ((32,), (64,), (128,), (256,), (512,)).
    aspect_ratios: one sequence of ratios (height / width) per level, or a single sequence of numbers used on every
                   level, e.g. (0.5, 1.0, 2.0).
    dtype:         float dtype of the anchors (the feature maps' dtype).

    Returns `anchors` (sum_l H_l * W_l * A_l, 4) and `counts`, a list of H_l * W_l * A_l per level.
    """
    image_h, image_w = _pair(image_hw, "image_hw")
    feature_hws = [_pair(hw, f"feature_hws[{i}]") for i, hw in enumerate(feature_hws)]
    levels = len(feature_hws)
    if len(sizes) != levels:
        raise ValueError(f"sizes must give one sequence of sizes per level ({levels} levels), got {len(sizes)}")
    if len(aspect_ratios) > 0 and all(isinstance(r, (int, float, np.integer, np.floating)) for r in aspect_ratios):
        aspect_ratios = [aspect_ratios] * levels  # the same ratios on every level
    if len(aspect_ratios) != levels:
        raise ValueError(
            f"aspect_ratios must be one sequence of ratios, or one per level ({levels} levels), got {aspect_ratios!r}"
        )
    per_level = []
    for (feat_h, feat_w), level_sizes, level_ratios in zip(feature_hws, sizes, aspect_ratios):
        if feat_h <= 0 or feat_w <= 0 or feat_h > image_h or feat_w > image_w:
            raise ValueError(
                f"feature size {(feat_h, feat_w)} must be between 1 and the image size {(image_h, image_w)}"
            )
        stride = (image_h // feat_h, image_w // feat_w)  # integer division per axis, as torchvision does
        per_level.append(grid_anchors(base_anchors(level_sizes, level_ratios, dtype), (feat_h, feat_w), stride))
    counts = [len(a) for a in per_level]
    anchors = np.concatenate(per_level, axis=0) if per_level else np.zeros((0, 4), dtype=dtype)  # (sum counts, 4)
    return anchors, counts


def _numbers(values, name: str) -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, np.ndarray)) or len(values) == 0:
        raise TypeError(f"{name} must be a non-empty sequence of numbers, got {values!r}")
    if not all(isinstance(v, (int, float, np.integer, np.floating)) for v in values):
        raise TypeError(f"{name} must contain only numbers, got {values!r}")
    return list(values)


def _pair(value, name: str) -> tuple[int, int]:
    if (
        not isinstance(value, (tuple, list, np.ndarray))
        or len(value) != 2
        or not all(isinstance(v, (int, np.integer)) for v in value)
    ):
        raise TypeError(f"{name} must be a pair of ints (height, width), got {value!r}")
    return int(value[0]), int(value[1])
