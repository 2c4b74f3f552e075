"""RoIAlign as the paper draws it (Fig. 3): every bin, every sample point, its four neighbouring cells, one at a time.

*Paper:* He et al., *Mask R-CNN*, ICCV 2017, §3 "RoIAlign" and Fig. 3: "We use bilinear interpolation to compute the
exact values of the input features at four regularly sampled locations in each RoI bin, and aggregate the result
(using max or average)". · *Code:* `tinymask/layers/roi_align_naive.py` · *Test:* `tests/test_roi_align.py`

This is the readable reference, as `conv2d_forward_naive` is convolution's: plain loops over RoIs, channels, bins
and sample points, with the four corner weights written out. `tinymask/layers/roi_align.py` computes the same numbers
with two small matrix products per RoI (bilinear interpolation is separable) and explains the conventions (the
`aligned` half-cell shift, torchvision's edge rules); the tests check that the two agree to 1e-12, forward and
backward, on boxes across the map's edge, outside it, of zero area and smaller than a cell.

One sample point (y, x), in feature-cell coordinates, lies between four cells. With `yl = floor(y)`, `ly = y - yl`
(and likewise x), its value is

    (1 - ly)(1 - lx) F[yl, xl]  +  (1 - ly) lx F[yl, xl + 1]  +  ly (1 - lx) F[yl + 1, xl]  +  ly lx F[yl + 1, xl + 1]

so the backward sends `dout · weight` back to each of the four cells, divided by the number of samples for the
average, or only through the winning sample for the max. Overlapping bins and RoIs add their contributions.
It is slow (Python loops); use it on small inputs to see, and to check, what RoIAlign does.
"""
from __future__ import annotations

import math

import numpy as np

from tinymask._validate import check_dout, finite_checked
from tinymask.layers.roi_align import check_roi_inputs


def four_corners(y: float, x: float, H: int, W: int, zero_outside: bool) -> list[tuple[int, int, float]]:
    """[(row, col, weight)] of the four cells a sample at (y, x) reads; [] when it lies beyond one cell outside the
    map and `zero_outside` (torchvision's kernels: it reads 0). Coordinates are clamped into the map first."""
    if zero_outside and (y < -1 or y > H or x < -1 or x > W):
        return []
    y, x = max(y, 0.0), max(x, 0.0)
    yl, xl = int(y), int(x)
    if yl >= H - 1:  # on or past the last row: read it (the "edge" rule)
        yl = yh = H - 1
        y = float(yl)
    else:
        yh = yl + 1
    if xl >= W - 1:
        xl = xh = W - 1
        x = float(xl)
    else:
        xh = xl + 1
    ly, lx = y - yl, x - xl
    return [(yl, xl, (1 - ly) * (1 - lx)), (yl, xh, (1 - ly) * lx), (yh, xl, ly * (1 - lx)), (yh, xh, ly * lx)]


def bin_samples(roi, p: int, q: int, oh: int, ow: int, spatial_scale: float, sampling_ratio: int,
                aligned: bool) -> tuple[list[tuple[float, float]], int]:
    """The sample points (y, x) of bin (p, q) of a RoI `[b, x0, y0, x1, y1]` (image pixels), and how many there are
    by definition (the divisor of the average: gh · gw, at least 1)."""
    _, x0, y0, x1, y1 = (float(v) for v in roi)
    offset = 0.5 if aligned else 0.0  # aligned: continuous coordinates -> cell centres
    sx, sy = x0 * spatial_scale - offset, y0 * spatial_scale - offset
    rw, rh = x1 * spatial_scale - offset - sx, y1 * spatial_scale - offset - sy
    if not aligned:  # the legacy mode forces at least one cell
        rw, rh = max(rw, 1.0), max(rh, 1.0)
    bh, bw = rh / oh, rw / ow  # bin size in cells, fractional: no rounding anywhere
    gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / oh)  # adaptive: about one sample per cell
    gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / ow)
    points = [(sy + p * bh + (iy + 0.5) * bh / gh, sx + q * bw + (ix + 0.5) * bw / gw)
              for iy in range(gh) for ix in range(gw)]  # a regular gh × gw grid inside the bin
    return points, max(gh * gw, 1)


@finite_checked("out", "cache")
def roi_align_forward_naive(features, rois, *, output_size, spatial_scale, sampling_ratio=-1, aligned=False,
                            mode="avg", outside="zero"):
    """RoIAlign, loop by loop: features (N, C, H, W), rois (K, 5) -> out (K, C, oh, ow), cache.

    Same arguments and results as `tinymask.layers.roi_align.roi_align_forward`.
    """
    rois, batch, (oh, ow) = check_roi_inputs(features, rois, output_size, spatial_scale)
    N, C, H, W = features.shape
    out = np.zeros((len(rois), C, oh, ow), dtype=features.dtype)  # (K, C, oh, ow)
    winners = {}  # (k, c, p, q) -> the corners of the winning sample (max mode)
    for k, roi in enumerate(rois):
        img = features[batch[k]]  # (C, H, W)
        for p in range(oh):
            for q in range(ow):
                points, count = bin_samples(roi, p, q, oh, ow, spatial_scale, sampling_ratio, aligned)
                corners = [four_corners(y, x, H, W, outside == "zero") for y, x in points]
                for c in range(C):
                    values = [sum(w * img[c, r, s] for r, s, w in cs) for cs in corners]  # one per sample
                    if mode == "avg":
                        out[k, c, p, q] = sum(values) / count
                    elif values:
                        best = int(np.argmax(values))  # the first one on ties
                        out[k, c, p, q] = values[best]
                        winners[k, c, p, q] = corners[best]
    cache = (features.shape, batch, rois, (oh, ow), spatial_scale, sampling_ratio, aligned, mode, outside, winners)
    return out, cache


@finite_checked("dfeatures", "drois")
def roi_align_backward_naive(dout, cache):
    """dout (K, C, oh, ow) -> (dfeatures (N, C, H, W), None): each sample hands `dout × weight` to its four cells."""
    shape, batch, rois, (oh, ow), spatial_scale, sampling_ratio, aligned, mode, outside, winners = cache
    check_dout(dout, (len(rois), shape[1], oh, ow), "roi_align_backward_naive")
    dfeatures = np.zeros(shape, dtype=dout.dtype)  # (N, C, H, W)
    H, W = shape[2:]
    for k, roi in enumerate(rois):
        for p in range(oh):
            for q in range(ow):
                if mode == "avg":
                    points, count = bin_samples(roi, p, q, oh, ow, spatial_scale, sampling_ratio, aligned)
                    for y, x in points:
                        for r, s, w in four_corners(y, x, H, W, outside == "zero"):
                            dfeatures[batch[k], :, r, s] += dout[k, :, p, q] * w / count  # every channel at once
                else:
                    for c in range(shape[1]):
                        for r, s, w in winners.get((k, c, p, q), []):  # only the winner passes the gradient on
                            dfeatures[batch[k], c, r, s] += dout[k, c, p, q] * w
    return dfeatures, None
