"""CUDA kernels of RoIPool (tinymask/layers/roi_pool.py). These are the simple kernels, and the only ones.

The forward runs one thread per output element: it takes its bin's largest cell (the first on ties) and the cell's
flat index. The backward runs one thread per upstream gradient element and adds it at its bin's winner with
`cuda.atomic.add` (bins of overlapping RoIs may share a winner).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from tinymask.layers.roi_pool import round_half_away
from tinymask.ops.cuda.device import TPB, grid, to_device


@cuda.jit(cache=True)
def _roi_pool_fwd_kernel(features, batch, q, out, argmax):
    K, C, oh, ow = out.shape
    H, W = features.shape[2], features.shape[3]
    for idx in range(cuda.grid(1), K * C * oh * ow, cuda.gridsize(1)):
        k, c, p, r = idx // (C * oh * ow), (idx // (oh * ow)) % C, (idx // ow) % oh, idx % ow
        b = batch[k]
        bin_h = max(q[k, 3] - q[k, 1] + 1, 1) / oh  # Fast R-CNN's inclusive "+ 1", fractional bins
        bin_w = max(q[k, 2] - q[k, 0] + 1, 1) / ow
        hs = min(max(int(math.floor(p * bin_h)) + q[k, 1], 0), H)  # rounded outwards, clipped to the map
        he = min(max(int(math.ceil((p + 1) * bin_h)) + q[k, 1], 0), H)
        ws = min(max(int(math.floor(r * bin_w)) + q[k, 0], 0), W)
        we = min(max(int(math.ceil((r + 1) * bin_w)) + q[k, 0], 0), W)
        if he <= hs or we <= ws:
            continue  # empty bin: stays 0, argmax −1
        best, arg = features[b, c, hs, ws], hs * W + ws
        for h in range(hs, he):
            for w in range(ws, we):
                if features[b, c, h, w] > best:
                    best, arg = features[b, c, h, w], h * W + w
        out[k, c, p, r] = best
        argmax[k, c, p, r] = arg


@cuda.jit(cache=True)
def _roi_pool_bwd_kernel(dout, argmax, batch, dflat):
    K, C, oh, ow = dout.shape
    for idx in range(cuda.grid(1), K * C * oh * ow, cuda.gridsize(1)):
        k, c, p, r = idx // (C * oh * ow), (idx // (oh * ow)) % C, (idx // ow) % oh, idx % ow
        a = argmax[k, c, p, r]
        if a >= 0:
            cuda.atomic.add(dflat, (batch[k], c, a), dout[k, c, p, r])


def roi_pool_forward(features, rois, batch, output_size, spatial_scale):
    """RoIPool: out (K, C, oh, ow), argmax (K, C, oh, ow) int64 flat winner index (−1: empty), as roi_pool.py."""
    K, C, (oh, ow) = rois.shape[0], features.shape[1], output_size
    out = np.zeros((K, C, oh, ow), dtype=features.dtype)
    argmax = np.full((K, C, oh, ow), -1, dtype=np.int64)
    if out.size:
        q = round_half_away(np.asarray(rois, dtype=np.float64)[:, 1:] * spatial_scale).astype(np.int64)  # (K, 4)
        d_out, d_arg = cuda.to_device(out), cuda.to_device(argmax)
        _roi_pool_fwd_kernel[grid(out.size), TPB](to_device(features), to_device(batch, np.int64), to_device(q),
                                                  d_out, d_arg)
        out, argmax = d_out.copy_to_host(), d_arg.copy_to_host()
    return out, argmax


def roi_pool_backward(dout, argmax, batch, features_shape):
    """dout (K, C, oh, ow) -> dfeatures (N, C, H, W), atomic adds at each bin's winner."""
    N, C, H, W = features_shape
    dflat = np.zeros((N, C, H * W), dtype=dout.dtype)
    if dout.size:
        d_flat = cuda.to_device(dflat)
        _roi_pool_bwd_kernel[grid(dout.size), TPB](to_device(dout), to_device(argmax, np.int64),
                                                   to_device(batch, np.int64), d_flat)
        dflat = d_flat.copy_to_host()
    return dflat.reshape(N, C, H, W)
