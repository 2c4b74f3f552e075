"""Numba CPU kernels of RoIPool (tinymask/layers/roi_pool.py), Fast R-CNN's max pool over quantised bins.

These are the simple kernels, and the only ones: RoIPool reads each cell of a bin once and does no arithmetic worth
tuning. The forward runs one (RoI, channel) pair per `prange` iteration and takes each bin's largest cell (the first
one on ties, as `np.argmax` does) and its flat index; the backward adds each bin's gradient at its winner, split over
feature planes (n, c) with the RoIs in order, so the writes are disjoint and the sums are `np.add.at`'s, bit for bit.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from tinymask.layers.roi_pool import round_half_away
from tinymask.ops.numba.common import threads_for


@njit(cache=True, parallel=True)
def _roi_pool_fwd(features, batch, q, out, argmax):
    N, C, H, W = features.shape
    K, _, oh, ow = out.shape
    for kc in prange(K * C):
        k, c = kc // C, kc % C
        F = features[batch[k], c]
        x0q, y0q, x1q, y1q = q[k, 0], q[k, 1], q[k, 2], q[k, 3]
        bin_h = max(y1q - y0q + 1, 1) / oh  # Fast R-CNN's inclusive "+ 1", fractional bins
        bin_w = max(x1q - x0q + 1, 1) / ow
        for p in range(oh):
            hs = min(max(int(np.floor(p * bin_h)) + y0q, 0), H)  # rounded outwards, clipped to the map
            he = min(max(int(np.ceil((p + 1) * bin_h)) + y0q, 0), H)
            for r in range(ow):
                ws = min(max(int(np.floor(r * bin_w)) + x0q, 0), W)
                we = min(max(int(np.ceil((r + 1) * bin_w)) + x0q, 0), W)
                if he <= hs or we <= ws:
                    continue  # empty bin: 0, no winner
                best, idx = F[hs, ws], hs * W + ws
                for h in range(hs, he):
                    for w in range(ws, we):
                        if F[h, w] > best:  # strict: the first maximum in row-major order wins
                            best, idx = F[h, w], h * W + w
                out[k, c, p, r] = best
                argmax[k, c, p, r] = idx


@njit(cache=True, parallel=True)
def _roi_pool_bwd(dout, argmax, batch, dflat):
    K, C, oh, ow = dout.shape
    N = dflat.shape[0]
    for nc in prange(N * C):  # one plane per iteration, RoIs in order: no race, same order as np.add.at
        n, c = nc // C, nc % C
        for k in range(K):
            if batch[k] != n:
                continue
            for p in range(oh):
                for r in range(ow):
                    a = argmax[k, c, p, r]
                    if a >= 0:
                        dflat[n, c, a] += dout[k, c, p, r]


def roi_pool_forward(features, rois, batch, output_size, spatial_scale):
    """RoIPool: out (K, C, oh, ow), argmax (K, C, oh, ow) int64 flat winner index (−1: empty), as roi_pool.py."""
    q = round_half_away(np.asarray(rois, dtype=np.float64)[:, 1:] * spatial_scale).astype(np.int64)  # (K, 4)
    shape = (len(q), features.shape[1], int(output_size[0]), int(output_size[1]))
    out = np.zeros(shape, dtype=features.dtype)
    argmax = np.full(shape, -1, dtype=np.int64)  # flat index h·W + w of the winner, −1: empty bin
    with threads_for(features.shape[1] * features.shape[2] * features.shape[3] * len(q)):  # at most C·H·W per RoI
        _roi_pool_fwd(np.ascontiguousarray(features), np.ascontiguousarray(batch, dtype=np.int64), q, out, argmax)
    return out, argmax


def roi_pool_backward(dout, argmax, batch, features_shape):
    """dout (K, C, oh, ow) -> dfeatures (N, C, H, W)."""
    N, C, H, W = (int(v) for v in features_shape)
    dflat = np.zeros((N, C, H * W), dtype=dout.dtype)
    with threads_for(dout.size * N):
        _roi_pool_bwd(np.ascontiguousarray(dout), np.ascontiguousarray(argmax, dtype=np.int64),
                      np.ascontiguousarray(batch, dtype=np.int64), dflat)
    return dflat.reshape(N, C, H, W)
