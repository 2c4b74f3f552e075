"""FPN level assignment: which pyramid level each RoI is pooled from (FPN Eq. 1), and the level of each map.

*Paper:* Lin et al., *Feature Pyramid Networks for Object Detection*, CVPR 2017, §4.2, Eq. (1); used by Mask R-CNN §3
("Network Architecture", FPN head). Semantics are torchvision's `LevelMapper`. · *Test:* `tests/test_multiscale_roi.py`

A box of width w and height h (image pixels) goes to pyramid level

    k = floor(k0 + log2(sqrt(w·h) / 224) + eps),   clamped to [k_min, k_max]        (FPN Eq. 1)

with k0 = 4 and 224 the ImageNet pre-training size: a 224×224 box reads P4 (stride 16), a box half as wide P3, and so
on. `eps = 1e-6` keeps exact powers of two (112, 448, …) from falling a level by rounding. A zero-area box has
log2(0) = −∞ and lands on k_min.

The level k_l of each map comes from its scale (feature cells per image pixel): torchvision infers it from the sizes,
`scale = 2 ** round(log2(feature_h / image_h))` (`infer_scale`), so a stride-4 map of a padded batch still gets exactly
1/4, and `k_l = -log2(scale)`. The maps must be consecutive levels, finest first (P2, P3, P4, P5).
"""
from __future__ import annotations

import math

import numpy as np


def assign_fpn_levels(boxes, k_min, k_max, canonical_size=224, canonical_level=4, eps=1e-6):
    """FPN level k (int, in [k_min, k_max]) of every box (P, 4) `(x0, y0, x1, y1)` -> (P,) int64.

    Subtract `k_min` to index a list of maps that starts at level k_min.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (P, 4), rows (x0, y0, x1, y1), got shape {boxes.shape}")
    if not np.all(np.isfinite(boxes)):
        raise ValueError("boxes contain NaN or infinity")
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]  # (P,) each
    if np.any((w < 0) | (h < 0)):
        k = int(np.flatnonzero((w < 0) | (h < 0))[0])
        raise ValueError(f"box {k} is inverted (x1 < x0 or y1 < y0): {boxes[k].tolist()}")
    area = w * h  # (P,)
    with np.errstate(divide="ignore"):  # a zero-area box: log2(0) = -inf, clamped to k_min below
        k = np.floor(canonical_level + np.log2(np.sqrt(area) / canonical_size) + eps)  # FPN Eq. (1)
    return np.clip(k, k_min, k_max).astype(np.int64)  # (P,)



def infer_scale(feature_hw, image_hw):
    """Scale of a feature map relative to the image, snapped to a power of two: `2 ** round(log2(feature / image))`.

    Like torchvision, the height decides (`feature_hw[0] / image_hw[0]`); `image_hw` is the largest unpadded image
    size in the batch. Python's `round` halves to even, as torch's does.
    """
    return 2.0 ** round(math.log2(float(feature_hw[0]) / float(image_hw[0])))



def levels_of_scales(scales):
    """Pyramid levels (k_min, k_max) of maps with these scales; they must be powers of two of consecutive levels."""
    levels = [-math.log2(s) for s in scales]
    if any(abs(k - round(k)) > 1e-9 for k in levels):
        raise ValueError(f"every scale must be a power of two (1/4, 1/8, ...), got {list(scales)}")
    levels = [int(round(k)) for k in levels]
    if levels != list(range(levels[0], levels[0] + len(levels))):
        raise ValueError(f"the maps must be consecutive pyramid levels, finest first; scales {list(scales)} give "
                         f"levels {levels}")
    return levels[0], levels[-1]
