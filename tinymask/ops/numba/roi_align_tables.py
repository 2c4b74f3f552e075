"""RoIAlign's sample geometry as tables, computed once per call for the tuned Numba kernels (roi_align.py).

The simple kernels compute every sample's position and bilinear weights where they use them, once per channel. The
tuned ones read them from the tables below instead, computed once per call and shared by all channels: per RoI and
axis, every sample's two cells and weights (`sample_table`, what the max kernels read), and for the average the
matrix A of tinymask/layers/roi_align.py, each bin's mean of its samples' weights, cut to the cells the RoI touches
(`bin_table`). The scalar maths is roi_align.py's, compiled (common.py).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from tinymask.ops.numba.common import bins, coords, interp


@njit(cache=True)
def sample_table(lo, hi, spatial_scale, n_bins, sampling_ratio, aligned, zero_outside, size):
    """Every RoI's samples along one axis: grid (K,) and, per sample s = p·grid + i, its two cells and weights.

    lo, hi: (K,) the box edges on this axis (x0, x1 or y0, y1). Returns grid (K,), low, high (K, n_bins·G) int64 and
    w_low, w_high (K, n_bins·G) float64, G the largest grid. Computed once per call, shared by all channels.
    """
    K = lo.shape[0]
    start = np.empty(K)
    bin_size = np.empty(K)
    grid = np.empty(K, dtype=np.int64)
    G = 0
    for k in range(K):
        start[k], bin_size[k], grid[k] = bins(lo[k], hi[k], spatial_scale, n_bins, sampling_ratio, aligned)
        G = max(G, grid[k])
    low = np.zeros((K, n_bins * G), dtype=np.int64)
    high = np.zeros((K, n_bins * G), dtype=np.int64)
    w_low = np.zeros((K, n_bins * G))
    w_high = np.zeros((K, n_bins * G))
    for k in range(K):
        for p in range(n_bins):
            for i in range(grid[k]):
                t = coords(start[k], bin_size[k], grid[k], p, i)  # y = start + p·b + (i + ½)·b / grid
                l, h, wl, wh = interp(t, size, zero_outside)
                s = p * grid[k] + i
                low[k, s], high[k, s], w_low[k, s], w_high[k, s] = int(l), int(h), wl, wh
    return grid, low, high, w_low, w_high


@njit(cache=True)
def bin_table(lo, hi, spatial_scale, n_bins, sampling_ratio, aligned, zero_outside, size):
    """The avg path's matrix A of one axis, per RoI, cut to the cells the RoI touches (roi_align.py's A_y, A_x).

    Returns first (K,) and width (K,): the window of cells; A (K, n_bins, Wmax) float64: bin p's weights over the
    window, the mean of its samples' bilinear weights; nz_lo, nz_hi (K, n_bins): the columns where row p of A is
    non-zero (a few: each sample touches two cells), so the kernels skip the zeros.
    """
    grid, low, high, w_low, w_high = sample_table(lo, hi, spatial_scale, n_bins, sampling_ratio, aligned,
                                                  zero_outside, size)
    K = lo.shape[0]
    first = np.zeros(K, dtype=np.int64)
    width = np.zeros(K, dtype=np.int64)
    for k in range(K):
        S = n_bins * grid[k]
        if S > 0:
            first[k] = low[k, :S].min()
            width[k] = high[k, :S].max() - first[k] + 1
    A = np.zeros((K, n_bins, max(1, width.max()) if K > 0 else 1))
    nz_lo = np.zeros((K, n_bins), dtype=np.int64)
    nz_hi = np.zeros((K, n_bins), dtype=np.int64)
    for k in range(K):
        g = grid[k]
        for p in range(n_bins):
            a, b = A.shape[2], 0
            for i in range(g):
                s = p * g + i
                l, h = low[k, s] - first[k], high[k, s] - first[k]
                A[k, p, l] += w_low[k, s] / g  # A = the mean of the bin's sample rows
                A[k, p, h] += w_high[k, s] / g
                a, b = min(a, l), max(b, h + 1)
            if g > 0:
                nz_lo[k, p], nz_hi[k, p] = a, b
    return first, width, A, nz_lo, nz_hi


def tables(table, rois, output_size, spatial_scale, sampling_ratio, aligned, zero_outside, H, W, dtype):
    """`table` (sample_table or bin_table) along y and x, float weights cast to the features' dtype."""
    rois = np.asarray(rois, dtype=np.float64)
    common = (float(spatial_scale),)
    ty = table(np.ascontiguousarray(rois[:, 2]), np.ascontiguousarray(rois[:, 4]), *common, int(output_size[0]),
               int(sampling_ratio), bool(aligned), bool(zero_outside), int(H))
    tx = table(np.ascontiguousarray(rois[:, 1]), np.ascontiguousarray(rois[:, 3]), *common, int(output_size[1]),
               int(sampling_ratio), bool(aligned), bool(zero_outside), int(W))
    return tuple(t.astype(dtype) if t.dtype == np.float64 else t for t in ty + tx)
