"""RoIWarp: RoIPool's rounding of the box, then RoIAlign's bilinear sampling (the middle row of Mask R-CNN Table 2c).

Paper: He et al., *Mask R-CNN*, ICCV 2017, §3 and Table 2c. RoIWarp comes from Dai et al.'s MNC (CVPR 2016); Mask
R-CNN's ablation lists it between RoIPool and RoIAlign because it "also adopts bilinear resampling" but still
"quantizes the RoI, losing alignment with the input". It isolates the question Table 2c asks: with bilinear sampling
in both, how much does the rounding alone cost? The paper's answer: RoIWarp does about as well as RoIPool and clearly
worse than RoIAlign, so proper alignment, not the choice of interpolation or pooling, is what matters.

Here the box is scaled and rounded to integer feature cells exactly as RoIPool rounds it (`roi_pool.round_half_away`,
half away from zero), and the rounded box is handed to RoIAlign in its legacy coordinates (`aligned=False`, spatial
scale 1, every RoI at least 1×1 cell). So RoIWarp and `roi_align(aligned=False)` differ only by that rounding, which is
the comparison the paper makes. We do not add Fast R-CNN's inclusive "+1" cell: with bilinear sampling the box
`[x0q, x1q]` already reaches the values of cells x0q…x1q. `mode` is "avg" or "max" (both rows of the table);
`sampling_ratio` and `outside` mean what they mean in `roi_align.py`.

Coordinates: RoIs `[batch_index, x0, y0, x1, y1]` in image pixels, as for every RoI extractor (docs/conventions.md).
The cache is RoIAlign's (per RoI: its interpolation matrices and window; see `roi_align.py`), so the backward is
RoIAlign's: the gradient flows to the features only, the rounded boxes are constants.
"""
from __future__ import annotations

import numpy as np

from tinymask._validate import check_dout, finite_checked
from tinymask.layers.roi_align import check_roi_inputs, roi_align_backward, roi_align_forward, roi_output_shape
from tinymask.layers.roi_pool import round_half_away


def quantize_rois(rois, spatial_scale):
    """RoIs in image pixels (K, 5) -> the same RoIs rounded to integer feature cells (K, 5), batch index unchanged."""
    q = rois.astype(np.float64)  # (K, 5)
    q[:, 1:] = round_half_away(q[:, 1:] * spatial_scale)  # x0q = round(x0 · scale), as RoIPool
    return q


@finite_checked("out", "cache")
def roi_warp_forward(features, rois, *, output_size, spatial_scale, sampling_ratio=-1, mode="avg", outside="zero",
                     backend=None):
    """RoIWarp: features (N, C, H, W), rois (K, 5) -> out (K, C, oh, ow), cache. Keywords as `roi_align_forward`."""
    rois, _, _ = check_roi_inputs(features, rois, output_size, spatial_scale)  # validate before rounding
    q = quantize_rois(rois, spatial_scale)  # (K, 5) in feature cells
    return roi_align_forward(
        features, q, output_size=output_size, spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=False,
        mode=mode, outside=outside, backend=backend,
    )


@finite_checked("dfeatures", "drois")
def roi_warp_backward(dout, cache):
    """dout (K, C, oh, ow) -> (dfeatures (N, C, H, W), None): RoIAlign's backward on the rounded boxes."""
    check_dout(dout, roi_output_shape(cache), "roi_warp_backward")
    return roi_align_backward(dout, cache)
