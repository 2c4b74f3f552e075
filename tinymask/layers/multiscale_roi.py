"""RoI features from a feature pyramid: each RoI is pooled from the one FPN level that suits its size.

Paper: Lin et al., *Feature Pyramid Networks for Object Detection*, CVPR 2017, §4.2, Eq. (1); used by Mask R-CNN §3
("Network Architecture", FPN head). Semantics are torchvision's `MultiScaleRoIAlign` and its `LevelMapper`.

Which level each RoI reads is FPN Eq. 1 (`tinymask/box_logic/levels.py`, where it is derived).

Coordinates: RoIs `(K, 5)` `[batch_index, x0, y0, x1, y1]` in image pixels (docs/conventions.md); level assignment
uses only `x0..y1`. The output keeps the RoIs' order, whatever level each one used. The cache keeps, per level, which
RoIs went there and the single-level op's cache, and the output's shape (to check `dout`); the backward runs each
level's backward on its rows of `dout`.
"""
from __future__ import annotations

import numpy as np

from tinymask._validate import check_dout, finite_checked
from tinymask.box_logic.levels import assign_fpn_levels, levels_of_scales
from tinymask.layers.roi_align import check_roi_inputs, roi_align_backward, roi_align_forward
from tinymask.layers.roi_pool import roi_pool_backward, roi_pool_forward
from tinymask.layers.roi_warp import roi_warp_backward, roi_warp_forward

METHODS = ("align", "pool", "warp")


@finite_checked("out", "cache")
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
    k_min, k_max = levels_of_scales(scales)
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
    return out, (method, per_level, out.shape)


@finite_checked("dfeatures", "drois")
def multiscale_roi_backward(dout, cache):
    """dout (K, C, oh, ow) -> ([dfeatures per map], None): each level's backward on its own RoIs' rows."""
    method, per_level, out_shape = cache
    check_dout(dout, out_shape, "multiscale_roi_backward")
    backward = {"align": roi_align_backward, "pool": roi_pool_backward, "warp": roi_warp_backward}[method]
    dfeatures = [backward(dout[idx], cache_l)[0] for idx, cache_l in per_level]  # a level with no RoIs gets zeros
    return dfeatures, None
