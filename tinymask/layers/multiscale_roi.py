"""RoI features from a feature pyramid: each RoI is pooled from the one FPN level that suits its size.

Paper: Lin et al., *Feature Pyramid Networks for Object Detection*, CVPR 2017, §4.2, Eq. (1); used by Mask R-CNN §3
("Network Architecture", FPN head). Semantics are torchvision's `MultiScaleRoIAlign` and its `LevelMapper`.

A box of width w and height h (image pixels) goes to pyramid level

    k = floor(k0 + log2(sqrt(w·h) / 224) + eps),   clamped to [k_min, k_max]        (FPN Eq. 1)

with k0 = 4 and 224 the ImageNet pre-training size: a 224×224 box reads P4 (stride 16), a box half as wide P3, and so
on. `eps = 1e-6` keeps exact powers of two (112, 448, …) from falling a level by rounding. A zero-area box has
log2(0) = −∞ and lands on k_min.

The level k_l of each map comes from its scale (feature cells per image pixel): torchvision infers it from the sizes,
`scale = 2 ** round(log2(feature_h / image_h))` (`infer_scale`), so a stride-4 map of a padded batch still gets exactly
1/4, and `k_l = -log2(scale)`. The maps must be consecutive levels, finest first (P2, P3, P4, P5).

Coordinates: RoIs `(K, 5)` `[batch_index, x0, y0, x1, y1]` in image pixels (docs/conventions.md); level assignment
uses only `x0..y1`. The output keeps the RoIs' order, whatever level each one used. The cache keeps, per level, which
RoIs went there and the single-level op's cache; the backward runs each level's backward on its rows of `dout`.
"""
from __future__ import annotations

import math

import numpy as np

from .roi_align import check_roi_inputs, roi_align_backward, roi_align_forward
from .roi_pool import roi_pool_backward, roi_pool_forward
from .roi_warp import roi_warp_backward, roi_warp_forward

METHODS = ("align", "pool", "warp")


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


def _levels_of(scales):
    """Pyramid levels (k_min, k_max) of maps with these scales; they must be powers of two of consecutive levels."""
    levels = [-math.log2(s) for s in scales]
    if any(abs(k - round(k)) > 1e-9 for k in levels):
        raise ValueError(f"every scale must be a power of two (1/4, 1/8, ...), got {list(scales)}")
    levels = [int(round(k)) for k in levels]
    if levels != list(range(levels[0], levels[0] + len(levels))):
        raise ValueError(f"the maps must be consecutive pyramid levels, finest first; scales {list(scales)} give "
                         f"levels {levels}")
    return levels[0], levels[-1]


def multiscale_roi_forward(
    features, rois, *, scales, output_size, sampling_ratio=-1, aligned=False, method="align", mode=None,
    outside="zero", canonical_size=224, canonical_level=4,
):
    """Pool every RoI from its FPN level: features [(N, C, H_l, W_l), ...] finest first, rois (K, 5) -> out, cache.

    out (K, C, oh, ow) keeps the RoIs' order. scales: one per map (e.g. [1/4, 1/8, 1/16, 1/32]). method: "align" (RoIAlign), "warp" (RoIWarp) or "pool"
    (RoIPool). mode: "avg" or "max" for align and warp (default "avg"); RoIPool is always max (None or "max").
    aligned applies to "align" only; sampling_ratio and outside to "align" and "warp".
    """
    if not isinstance(features, (list, tuple)) or len(features) == 0:
        raise TypeError("features must be a non-empty list of (N, C, H, W) maps, finest level first")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if len(scales) != len(features):
        raise ValueError(f"got {len(scales)} scales for {len(features)} feature maps")
    for l, f in enumerate(features):
        check_roi_inputs(f, np.zeros((0, 5)), output_size, scales[l])  # each map and its scale, on their own
        if f.shape[:2] != features[0].shape[:2] or f.dtype != features[0].dtype:
            raise ValueError(f"all maps must share N, C and dtype; map 0 is {features[0].shape} {features[0].dtype}, "
                             f"map {l} is {f.shape} {f.dtype}")
    k_min, k_max = _levels_of(scales)
    rois64, _, _ = check_roi_inputs(features[0], rois, output_size, scales[0])
    if method == "pool":
        if mode not in (None, "max"):
            raise ValueError(f"RoIPool always takes the max; mode must be None or 'max', got {mode!r}")
        if aligned:
            raise ValueError("aligned=True applies to method='align' only")
        op, kwargs = roi_pool_forward, {}
    elif method == "warp":
        if aligned:
            raise ValueError("aligned=True applies to method='align' only (RoIWarp rounds the box instead)")
        op = roi_warp_forward
        kwargs = dict(sampling_ratio=sampling_ratio, mode=mode or "avg", outside=outside)
    else:
        op = roi_align_forward
        kwargs = dict(sampling_ratio=sampling_ratio, aligned=aligned, mode=mode or "avg", outside=outside)

    level = assign_fpn_levels(rois64[:, 1:], k_min, k_max, canonical_size, canonical_level) - k_min  # (K,) map index
    out = None
    per_level = []
    for l, f in enumerate(features):
        idx = np.flatnonzero(level == l)  # (K_l,) the RoIs that read this map, in their original order
        out_l, cache_l = op(f, rois64[idx], output_size=output_size, spatial_scale=scales[l], **kwargs)
        if out is None:
            out = np.zeros((len(rois64),) + out_l.shape[1:], dtype=f.dtype)  # (K, C, oh, ow)
        out[idx] = out_l  # back to the input order
        per_level.append((idx, cache_l))
    return out, (method, per_level)


def multiscale_roi_backward(dout, cache):
    """dout (K, C, oh, ow) -> ([dfeatures per map], None): each level's backward on its own RoIs' rows."""
    method, per_level = cache
    backward = {"align": roi_align_backward, "pool": roi_pool_backward, "warp": roi_warp_backward}[method]
    dfeatures = [backward(dout[idx], cache_l)[0] for idx, cache_l in per_level]  # a level with no RoIs gets zeros
    return dfeatures, None
