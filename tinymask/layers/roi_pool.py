"""RoIPool: Fast R-CNN's region pooling, with both of its roundings (the baseline that RoIAlign fixes).

Paper: Girshick, *Fast R-CNN*, ICCV 2015, §2.1 "The RoI pooling layer"; the "RoIPool" row of Mask R-CNN Table 2c/2d.
Semantics are torchvision's `roi_pool` (its C++ kernel, the same as Fast R-CNN's Caffe layer).

A RoI `[batch_index, x0, y0, x1, y1]` in image pixels is scaled by `spatial_scale` and **rounded** to integer feature
cells (round half away from zero, C's `round`). Fast R-CNN counts pixels inclusively, so the RoI spans
`x1q - x0q + 1` cells (at least 1). It is cut into `oh × ow` bins of fractional size `bin = roi_size / out_size`, and
bin `p` is **rounded outwards** to whole cells, then clipped to the map:

    hstart = clip(y0q + floor(p · bin_h), 0, H)      hend = clip(y0q + ceil((p + 1) · bin_h), 0, H)

so neighbouring bins may share a row. Each output is the max over its bin's cells; a bin that is empty after clipping
(`hend <= hstart` or `wend <= wstart`, e.g. a RoI outside the map) outputs 0. Mask R-CNN §3 explains why the two
roundings hurt masks; see `roi_align.py`.

Backward: the gradient of a max goes to the cell that won (the first one in row-major order on ties, as torchvision);
empty bins pass nothing. The cache keeps, for every output, the flat index `h·W + w` of its winner (−1 for empty
bins) and the RoIs' image indices: that is all the backward needs, and much smaller than the features.

A hand-checkable example, the one tests/test_roi_pool.py uses: on the 4×4 map `np.arange(16).reshape(4, 4)`, the RoI
`[0, 0, 0, 2, 2]` with output 2×2 spans cells 0..2 (3 cells, bins of 1.5): rows {0,1} and {1,2}, columns likewise,
giving `[[5, 6], [9, 10]]`.
"""
from __future__ import annotations

import numpy as np

from tinymask._validate import check_dout, finite_checked
from tinymask.layers.roi_align import check_roi_inputs
from tinymask.ops import get_ops


def round_half_away(v):
    """C's `round`: halves go away from zero (2.5 -> 3, -2.5 -> -3), unlike NumPy's round-half-to-even."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def pool_bin_edges(start, roi_size, n_bins, size):
    """Integer edges `(begin, end)` (n_bins,) of the bins of one RoI along one axis, clipped to `[0, size]`.

    `start` is the RoI's first cell (already rounded), `roi_size` its length in cells (at least 1).
    """
    bin_size = roi_size / n_bins  # fractional: bins are quantised below, not here
    p = np.arange(n_bins)  # (n_bins,)
    begin = np.floor(p * bin_size).astype(np.intp) + start  # hstart = floor(p·bin) + y0q
    end = np.ceil((p + 1) * bin_size).astype(np.intp) + start  # hend = ceil((p+1)·bin) + y0q
    return np.clip(begin, 0, size), np.clip(end, 0, size)


@finite_checked("out", "cache")
def roi_pool_forward(features, rois, *, output_size, spatial_scale, backend=None):
    """RoIPool: features (N, C, H, W), rois (K, 5) `[batch_index, x0, y0, x1, y1]` -> out (K, C, oh, ow), cache.

    output_size: int or (oh, ow). spatial_scale: feature cells per image pixel (1 / stride). backend: "numpy" (the
    code below), "numba" or "cuda" (default: the selected one, tinymask/ops/backend.py).
    """
    rois, batch, (oh, ow) = check_roi_inputs(features, rois, output_size, spatial_scale)
    ops = get_ops(backend)  # roi_pool_forward_numpy below, or a compiled kernel (tinymask/ops/)
    out, argmax = ops.roi_pool_forward(features, rois, batch, (oh, ow), spatial_scale)
    return out, (features.shape, features.dtype, batch, argmax, ops.NAME)


@finite_checked("dfeatures", "drois")
def roi_pool_backward(dout, cache):
    """dout (K, C, oh, ow) -> (dfeatures (N, C, H, W), None): each output's gradient goes to its winning cell."""
    shape, dtype, batch, argmax, backend = cache
    check_dout(dout, argmax.shape, "roi_pool_backward")  # argmax (K, C, oh, ow) has the output's shape
    return get_ops(backend).roi_pool_backward(np.asarray(dout, dtype=dtype), argmax, batch, shape), None


# --------------------------------------------------------------------------------------------------------------------
# The NumPy kernels (the "numpy" backend, tinymask/ops/numpy.py): the reference the compiled kernels must match
# --------------------------------------------------------------------------------------------------------------------

def roi_pool_forward_numpy(features, rois, batch, output_size, spatial_scale):
    """RoIPool on validated inputs: out (K, C, oh, ow) and argmax (K, C, oh, ow), the flat index `h·W + w` of each
    bin's winner, −1 for empty bins."""
    N, C, H, W = features.shape
    K = rois.shape[0]
    oh, ow = output_size
    q = round_half_away(rois[:, 1:] * spatial_scale).astype(np.intp)  # (K, 4) x0q, y0q, x1q, y1q in cells
    out = np.zeros((K, C, oh, ow), dtype=features.dtype)  # (K, C, oh, ow)
    argmax = np.full((K, C, oh, ow), -1, dtype=np.intp)  # flat index h·W + w of each bin's winner, −1 if empty
    for k in range(K):
        x0q, y0q, x1q, y1q = q[k]
        hs, he = pool_bin_edges(y0q, max(y1q - y0q + 1, 1), oh, H)  # (oh,) each; Fast R-CNN's inclusive "+ 1"
        ws, we = pool_bin_edges(x0q, max(x1q - x0q + 1, 1), ow, W)  # (ow,)
        Lh, Lw = int((he - hs).max(initial=0)), int((we - ws).max(initial=0))  # the largest bin, in cells
        if Lh == 0 or Lw == 0:
            continue  # every bin is empty: output 0, argmax −1
        rows = hs[:, None] + np.arange(Lh)  # (oh, Lh) candidate rows of each bin, padded to the largest bin
        cols = ws[:, None] + np.arange(Lw)  # (ow, Lw)
        row_ok, col_ok = rows < he[:, None], cols < we[:, None]  # (oh, Lh), (ow, Lw): inside the bin?
        rows, cols = np.minimum(rows, H - 1), np.minimum(cols, W - 1)  # keep padded indices legal
        vals = features[batch[k]][:, rows[:, :, None, None], cols[None, None, :, :]]  # (C, oh, Lh, ow, Lw)
        ok = row_ok[:, :, None, None] & col_ok[None, None, :, :]  # (oh, Lh, ow, Lw)
        vals = np.where(ok, vals, -np.inf).transpose(0, 1, 3, 2, 4).reshape(C, oh, ow, Lh * Lw)  # row-major bins
        win = vals.argmax(axis=-1)  # (C, oh, ow) first maximum in row-major order
        empty = ~ok.any(axis=(1, 3))  # (oh, ow) bins with no cell
        best = np.take_along_axis(vals, win[..., None], axis=-1)[..., 0]  # (C, oh, ow)
        out[k] = np.where(empty, 0.0, best)  # an empty bin is 0
        win_h = rows[np.arange(oh)[:, None], win // Lw]  # (C, oh, ow) absolute row of the winner
        win_w = cols[np.arange(ow)[None, :], win % Lw]  # (C, oh, ow) absolute column
        argmax[k] = np.where(empty, -1, win_h * W + win_w)
    return out, argmax


def roi_pool_backward_numpy(dout, argmax, batch, features_shape):
    """dout (K, C, oh, ow) -> dfeatures (N, C, H, W).

    Several bins (of one RoI or of several) may share a winner; `np.add.at` accumulates them all.
    """
    N, C, H, W = features_shape
    dflat = np.zeros((N, C, H * W), dtype=dout.dtype)  # (N, C, H·W)
    k, c, p, q = np.nonzero(argmax >= 0)  # every non-empty bin
    np.add.at(dflat, (batch[k], c, argmax[k, c, p, q]), dout[k, c, p, q])
    return dflat.reshape(N, C, H, W)
