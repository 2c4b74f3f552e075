"""Numba CPU kernels of RoIAlign (tinymask/layers/roi_align.py): first the simple kernels, then the tuned ones.

**The simple kernels** (`roi_align_forward_simple`, `roi_align_backward_simple`) are the definition, compiled. The
forward runs one (RoI, channel) pair per `prange` iteration and computes each output element from its bin's samples,
each sample a bilinear blend of four cells, with roi_align.py's own scalar helpers (`roi_bins_1d`, `sample_coords`,
`linear_interp_1d`); avg takes the samples' mean, max the largest and remembers which sample it was. The backward is
the transpose: each output's gradient is spread back onto the four cells of each of its samples. Two RoIs may overlap
on the map, so the backward is split over feature planes (n, c), not over RoIs: each iteration walks its plane's RoIs
one after another, and no two iterations write one element. Read these first; they are what the tuned kernels must
equal, and the tests check both against the NumPy reference.

**The tuned kernels** (`roi_align_forward`, `roi_align_backward`: what the backend runs). avg (the training path)
computes the reference's matrix form `out_k = A_y F A_xᵀ` with the per-RoI matrices of roi_align.py
(roi_align_tables.py), but channels last, where every step is a multiply-add over a contiguous run of channels
(`_axpy`, which LLVM turns into SIMD instructions) and each matrix's zeros are skipped (a bin row touches a few
cells). The maps are channels first, so each worker thread copies one block of CHANNEL_BLOCK channels of the map
channels last into its own scratch buffer (7 MB for an FPN P2 map: it stays in the L3 cache), runs every RoI on that
block, and moves on to the next block; the whole map is never transposed in main memory. The backward is the
transpose, `dF = Σ_k A_yᵀ dout_k A_x`, accumulated the same way block by block and copied back channels first; a
block owns its channels, so the writes are disjoint. max evaluates every sample point by point, like the simple
kernel, but reads the sample geometry from tables computed once per call instead of once per channel.

Both pairs keep the same `saved` (None for avg; the winning sample `iy·gw + ix` per bin, int32, for max), so either
backward takes either forward's `saved`. The geometry is computed in float64; the tuned kernels cast the weights to
the features' dtype, as the reference does, and the simple ones accumulate in float64: float32 results differ from
the reference by rounding only.
"""
from __future__ import annotations

import threading

import numba
import numpy as np
from numba import njit, prange

from tinymask.ops.numba.common import bins, coords, interp, threads_for
from tinymask.ops.numba.roi_align_tables import bin_table, sample_table, tables

# --------------------------------------------------------------------------------------------------------------------
# The simple kernels: one output element at a time, from the definition
# --------------------------------------------------------------------------------------------------------------------


@njit(cache=True, parallel=True)
def _simple_fwd(features, rois, batch, spatial_scale, sampling_ratio, aligned, avg, zero_outside, out, argmax):
    """The simple kernel: each out[k, c, p, q] from its bin's bilinear samples (mean for avg, largest for max)."""
    K, C, oh, ow = out.shape
    H, W = features.shape[2], features.shape[3]
    for kc in prange(K * C):  # one (RoI, channel) pair per iteration: it alone writes out[k, c]
        k, c = kc // C, kc % C
        F = features[batch[k], c]  # (H, W)
        start_y, bin_h, gh = bins(rois[k, 2], rois[k, 4], spatial_scale, oh, sampling_ratio, aligned)
        start_x, bin_w, gw = bins(rois[k, 1], rois[k, 3], spatial_scale, ow, sampling_ratio, aligned)
        for p in range(oh):
            for q in range(ow):
                acc, best, arg = 0.0, -np.inf, -1
                for iy in range(gh):  # gh·gw samples, each the centre of one sub-bin
                    yl, yh, a0, a1 = interp(coords(start_y, bin_h, gh, p, iy), H, zero_outside)
                    y0, y1 = int(yl), int(yh)
                    for ix in range(gw):
                        xl, xh, b0, b1 = interp(coords(start_x, bin_w, gw, q, ix), W, zero_outside)
                        x0, x1 = int(xl), int(xh)
                        # bilinear: the four corners, weights (1-ly)(1-lx), (1-ly)lx, ly(1-lx), ly·lx
                        v = a0 * (b0 * F[y0, x0] + b1 * F[y0, x1]) + a1 * (b0 * F[y1, x0] + b1 * F[y1, x1])
                        acc += v
                        if v > best:  # strict: ties go to the first sample in row-major order
                            best, arg = v, iy * gw + ix
                if avg:
                    out[k, c, p, q] = acc / max(gh * gw, 1)
                elif arg >= 0:  # a bin with no sample stays 0 and has no winner
                    out[k, c, p, q] = best
                    argmax[k, c, p, q] = arg


@njit(cache=True, parallel=True)
def _simple_bwd(dout, rois, batch, spatial_scale, sampling_ratio, aligned, avg, zero_outside, argmax, dF):
    """The simple kernel's transpose: each dout[k, c, p, q] spread onto the four cells of its bin's samples."""
    K, C, oh, ow = dout.shape
    N, H, W = dF.shape[0], dF.shape[2], dF.shape[3]
    for nc in prange(N * C):  # one feature plane per iteration; its RoIs one after another: disjoint writes
        n, c = nc // C, nc % C
        D = dF[n, c]  # (H, W)
        for k in range(K):
            if batch[k] != n:
                continue
            start_y, bin_h, gh = bins(rois[k, 2], rois[k, 4], spatial_scale, oh, sampling_ratio, aligned)
            start_x, bin_w, gw = bins(rois[k, 1], rois[k, 3], spatial_scale, ow, sampling_ratio, aligned)
            for p in range(oh):
                for q in range(ow):
                    if avg:  # every sample had weight 1 / (gh·gw) in the mean
                        g = dout[k, c, p, q] / max(gh * gw, 1)
                        iy_first, iy_end, ix_first, ix_end = 0, gh, 0, gw
                    else:  # only the winning sample passed its value on
                        a = argmax[k, c, p, q]
                        if a < 0:
                            continue
                        g = dout[k, c, p, q] * 1.0
                        iy_first, ix_first = a // gw, a % gw
                        iy_end, ix_end = iy_first + 1, ix_first + 1
                    for iy in range(iy_first, iy_end):
                        yl, yh, a0, a1 = interp(coords(start_y, bin_h, gh, p, iy), H, zero_outside)
                        y0, y1 = int(yl), int(yh)
                        for ix in range(ix_first, ix_end):
                            xl, xh, b0, b1 = interp(coords(start_x, bin_w, gw, q, ix), W, zero_outside)
                            x0, x1 = int(xl), int(xh)
                            D[y0, x0] += g * a0 * b0  # the transpose of the forward's four corner reads
                            D[y0, x1] += g * a0 * b1
                            D[y1, x0] += g * a1 * b0
                            D[y1, x1] += g * a1 * b1


def _roi_args(rois, batch, spatial_scale, sampling_ratio, aligned, mode, zero_outside):
    return (np.ascontiguousarray(rois, dtype=np.float64), np.ascontiguousarray(batch, dtype=np.int64),
            float(spatial_scale), int(sampling_ratio), bool(aligned), mode == "avg", bool(zero_outside))


def roi_align_forward_simple(features, rois, batch, output_size, spatial_scale, sampling_ratio, aligned, mode,
                             zero_outside):
    """The simple kernel: out (K, C, oh, ow) and `saved` = argmax (K, C, oh, ow) int32 (max) or None (avg)."""
    shape = (len(batch), features.shape[1], int(output_size[0]), int(output_size[1]))
    out = np.zeros(shape, dtype=features.dtype)  # (K, C, oh, ow)
    argmax = np.full(shape if mode == "max" else (1, 1, 1, 1), -1, dtype=np.int32)  # −1: no winner
    args = _roi_args(rois, batch, spatial_scale, sampling_ratio, aligned, mode, zero_outside)
    _simple_fwd(np.ascontiguousarray(features), *args, out, argmax)
    return out, (argmax if mode == "max" else None)


def roi_align_backward_simple(dout, saved, features_shape, rois, batch, output_size, spatial_scale, sampling_ratio,
                              aligned, mode, zero_outside):
    """The simple kernel's backward: dout (K, C, oh, ow) -> dfeatures (N, C, H, W)."""
    dF = np.zeros(tuple(int(v) for v in features_shape), dtype=dout.dtype)  # (N, C, H, W)
    argmax = np.full((1, 1, 1, 1), -1, np.int32) if saved is None else np.ascontiguousarray(saved, dtype=np.int32)
    args = _roi_args(rois, batch, spatial_scale, sampling_ratio, aligned, mode, zero_outside)
    _simple_bwd(np.ascontiguousarray(dout), *args, argmax, dF)
    return dF


# --------------------------------------------------------------------------------------------------------------------
# The tuned kernels, avg: A_y F A_xᵀ channels last, one block of channels per worker
# --------------------------------------------------------------------------------------------------------------------

CHANNEL_BLOCK = 32  # channels per block of the avg kernels (4 AVX2 registers of float32); scratch: H·W·32 per thread


@njit(cache=True, fastmath={"contract"})
def _axpy(y, a, x):
    """y += a·x over 1-D contiguous arrays: the loop LLVM turns into SIMD fused multiply-adds."""
    for i in range(y.shape[0]):
        y[i] += a * x[i]


@njit(cache=True)
def _block_to_channels_last(F, n, c0, cb, Fh):
    """Fh[y, x, j] = F[n, c0 + j, y, x] for j < cb: one block of channels, channels last.

    The writes run contiguously and the reads walk cb planes side by side: of the loop orders we timed, the fastest.
    Every index is a loop variable: Numba checks each signed index for wrap-around (`a[-1]`), and an index whose sign
    it cannot prove, such as `c0 + j`, costs a compare and select per element (the copy back ran 2× slower so).
    """
    H, W = Fh.shape[0], Fh.shape[1]
    block = F[n, c0:c0 + cb]  # (cb, H, W): indexed by loop variables only, which Numba knows are not negative
    for y in range(H):
        for x in range(W):
            for j in range(cb):
                Fh[y, x, j] = block[j, y, x]
            for j in range(cb, Fh.shape[2]):  # a narrower last block: zeros above it (they are multiplied, then unused)
                Fh[y, x, j] = 0


@njit(cache=True)
def _block_to_channels_first(Dh, n, c0, cb, dF):
    """dF[n, c0 + j, y, x] = Dh[y, x, j] for j < cb: the inverse of _block_to_channels_last."""
    H, W = Dh.shape[0], Dh.shape[1]
    block = dF[n, c0:c0 + cb]  # (cb, H, W), a view: writing `dF[n, c0 + j, ...]` would be 2× slower (see above)
    for y in range(H):
        for x in range(W):
            for j in range(cb):
                block[j, y, x] = Dh[y, x, j]


@njit(cache=True, parallel=True, fastmath={"contract"})
def _roi_align_avg_fwd(F, batch, out, scratch, fy, wy, Ay, ly, hy, fx, wx, Ax, lx, hx):
    """The tuned kernel: out[k] = A_y F A_xᵀ for every RoI, F (N, C, H, W) -> out (K, C, oh·ow), in place.

    Worker t of T takes every T-th block of CHANNEL_BLOCK channels of an image, copies it channels last into its own
    scratch (H, W, block), and runs every RoI of that image on it. Blocks own their output channels: disjoint writes.
    """
    N, C, H, W = F.shape
    K, _, P = out.shape
    oh, ow, wmax = Ay.shape[1], Ax.shape[1], Ax.shape[2]
    T, B = scratch.shape[0], scratch.shape[3]
    n_blocks = (C + B - 1) // B
    for t in prange(T):
        Fh = scratch[t]  # (H, W, B): this worker's block, channels last
        rows = Fh.reshape(H, W * B)  # each map row as one run of W·B values
        Tb = np.empty((oh, wmax, B), dtype=F.dtype)  # T = A_y F over the RoI's window: (oh, w, B)
        acc = np.empty((P, B), dtype=F.dtype)  # out[k] for this block, channels last
        for job in range(t, N * n_blocks, T):
            n, c0 = job // n_blocks, (job % n_blocks) * B
            cb = min(B, C - c0)
            _block_to_channels_last(F, n, c0, cb, Fh)
            for k in range(K):
                if batch[k] != n:
                    continue
                r0, x0, w = fy[k], fx[k], wx[k]
                for p in range(oh):
                    Tp = Tb[p].reshape(wmax * B)[:w * B]
                    Tp[:] = 0
                    for y in range(ly[k, p], hy[k, p]):  # the few rows bin row p reads: w·B contiguous values each
                        _axpy(Tp, Ay[k, p, y], rows[r0 + y, x0 * B:(x0 + w) * B])
                    for q in range(ow):  # out[p, q] = Σ_x A_x[q, x] T[p, x], over the block's channels
                        i = p * ow + q
                        acc[i, :cb] = 0
                        for x in range(lx[k, q], hx[k, q]):
                            a = Ax[k, q, x]
                            for j in range(cb):
                                acc[i, j] += a * Tb[p, x, j]
                for j in range(cb):  # back to channels first
                    for i in range(P):
                        out[k, c0 + j, i] = acc[i, j]


@njit(cache=True, parallel=True, fastmath={"contract"})
def _roi_align_avg_bwd(dout, dF, batch, scratch, fy, wy, Ay, ly, hy, fx, wx, Ax, lx, hx):
    """The tuned kernel's transpose: dF = Σ_k A_yᵀ dout_k A_x, dout (K, C, oh·ow) -> dF (N, C, H, W), all written.

    RoIs overlap, so the work is not split over RoIs but over blocks of channels, as in the forward: a worker
    accumulates all RoIs of an image into its scratch block (channels last), in order, then writes the block out.
    """
    N, C, H, W = dF.shape
    K, _, P = dout.shape
    oh, ow, wmax = Ay.shape[1], Ax.shape[1], Ax.shape[2]
    T, B = scratch.shape[0], scratch.shape[3]
    n_blocks = (C + B - 1) // B
    for t in prange(T):
        Dh = scratch[t]  # (H, W, B): this worker's block of the gradient, channels last
        rows = Dh.reshape(H, W * B)
        G = np.empty((P, B), dtype=dout.dtype)  # dout[k] for this block, channels last
        U = np.empty((wmax, B), dtype=dout.dtype)  # U = dout A_x for one bin row: (w, B)
        for job in range(t, N * n_blocks, T):
            n, c0 = job // n_blocks, (job % n_blocks) * B
            cb = min(B, C - c0)
            rows[:] = 0
            for k in range(K):
                if batch[k] != n:
                    continue
                r0, x0, w = fy[k], fx[k], wx[k]
                for j in range(cb):
                    for i in range(P):
                        G[i, j] = dout[k, c0 + j, i]
                for p in range(oh):
                    Up = U.reshape(wmax * B)[:w * B]
                    Up[:] = 0
                    for q in range(ow):
                        i = p * ow + q
                        for x in range(lx[k, q], hx[k, q]):
                            a = Ax[k, q, x]
                            for j in range(cb):
                                U[x, j] += a * G[i, j]
                    for y in range(ly[k, p], hy[k, p]):  # dF[y, window] += A_y[p, y] U
                        _axpy(rows[r0 + y, x0 * B:(x0 + w) * B], Ay[k, p, y], Up)
            _block_to_channels_first(Dh, n, c0, cb, dF)


_scratch = threading.local()  # per calling thread: {dtype name: the largest block scratch buffer used so far}


def _block_scratch(shape, dtype):
    """One (H, W, CHANNEL_BLOCK) channels-last buffer per worker thread of the avg RoIAlign kernels.

    The buffer is kept and reused by the next call (one per dtype and calling thread, as large as the largest map
    seen: 14 MB for a float32 P2 of an 800×1088 image on two threads): a fresh one would be 14 MB of new pages for
    the operating system to zero on first touch, on every call. Its contents are garbage; the kernels write before
    they read.
    """
    N, C, H, W = shape
    size = (numba.get_num_threads(), H, W, min(CHANNEL_BLOCK, C))
    need = int(np.prod(size))
    buffers = _scratch.__dict__
    key = np.dtype(dtype).name
    if key not in buffers or buffers[key].size < need:
        buffers[key] = np.empty(need, dtype=dtype)
    return buffers[key][:need].reshape(size)


# --------------------------------------------------------------------------------------------------------------------
# The tuned kernels, max: every sample point by point, the geometry from the tables
# --------------------------------------------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _roi_align_max_fwd(features, batch, out, argmax, gy, ylo, yhi, ywl, ywh, gx, xlo, xhi, xwl, xwh):
    """mode="max": every sample's bilinear value, the largest per bin (out), and which sample it was (argmax)."""
    K, C, oh, ow = out.shape
    for kc in prange(K * C):  # (RoI, channel) pairs own their outputs: disjoint writes
        k, c = kc // C, kc % C
        F = features[batch[k], c]  # (H, W)
        gh, gw = gy[k], gx[k]
        for p in range(oh):
            for q in range(ow):
                best, arg = -np.inf, -1
                for iy in range(gh):
                    sy = p * gh + iy
                    y0, y1, a0, a1 = ylo[k, sy], yhi[k, sy], ywl[k, sy], ywh[k, sy]
                    for ix in range(gw):
                        sx = q * gw + ix
                        x0, x1, b0, b1 = xlo[k, sx], xhi[k, sx], xwl[k, sx], xwh[k, sx]
                        v = a0 * (b0 * F[y0, x0] + b1 * F[y0, x1]) + a1 * (b0 * F[y1, x0] + b1 * F[y1, x1])
                        if v > best:  # strict: ties go to the first sample in row-major order
                            best, arg = v, iy * gw + ix
                if arg >= 0:
                    out[k, c, p, q] = best
                    argmax[k, c, p, q] = arg


@njit(cache=True, parallel=True)
def _roi_align_max_bwd(dout, argmax, dF, batch, gy, ylo, yhi, ywl, ywh, gx, xlo, xhi, xwl, xwh):
    K, C, oh, ow = dout.shape
    N = dF.shape[0]
    for nc in prange(N * C):  # one feature plane per iteration; RoIs one after another: no race
        n, c = nc // C, nc % C
        D = dF[n, c]  # (H, W)
        for k in range(K):
            if batch[k] != n:
                continue
            gh, gw = gy[k], gx[k]
            for p in range(oh):
                for q in range(ow):
                    a = argmax[k, c, p, q]
                    if a < 0:
                        continue
                    g = dout[k, c, p, q]  # only the winning sample gets the gradient
                    sy, sx = p * gh + a // gw, q * gw + a % gw
                    y0, y1, a0, a1 = ylo[k, sy], yhi[k, sy], ywl[k, sy] * g, ywh[k, sy] * g
                    x0, x1, b0, b1 = xlo[k, sx], xhi[k, sx], xwl[k, sx], xwh[k, sx]
                    D[y0, x0] += a0 * b0  # the transpose of the forward's four corner reads
                    D[y0, x1] += a0 * b1
                    D[y1, x0] += a1 * b0
                    D[y1, x1] += a1 * b1


# --------------------------------------------------------------------------------------------------------------------
# What the backend runs: the tuned kernels
# --------------------------------------------------------------------------------------------------------------------

def roi_align_forward(features, rois, batch, output_size, spatial_scale, sampling_ratio, aligned, mode, zero_outside):
    """RoIAlign: out (K, C, oh, ow) and `saved` = argmax (K, C, oh, ow) int32 (max) or None (avg).

    avg computes roi_align.py's `A_y F A_xᵀ` channels last, where each step is a long contiguous multiply-add over
    channels; max evaluates every sample, as the definition does.
    """
    N, C, H, W = features.shape
    oh, ow = int(output_size[0]), int(output_size[1])
    geometry = (rois, output_size, spatial_scale, sampling_ratio, aligned, zero_outside, H, W, features.dtype)
    batch = np.ascontiguousarray(batch, dtype=np.int64)
    if mode == "avg":
        t = tables(bin_table, *geometry)
        out = np.empty((len(batch), C, oh, ow), dtype=features.dtype)  # NumPy's allocator: huge pages where allowed
        with threads_for(C * len(batch) * oh * t[1].max(initial=0) * 4):
            scratch = _block_scratch(features.shape, features.dtype)
            _roi_align_avg_fwd(np.ascontiguousarray(features), batch, out.reshape(len(batch), C, oh * ow), scratch,
                               *t)
        return out, None
    t = tables(sample_table, *geometry)
    out = np.zeros((len(batch), C, oh, ow), dtype=features.dtype)  # (K, C, oh, ow)
    argmax = np.full((len(batch), C, oh, ow), -1, dtype=np.int32)  # winning sample iy·gw + ix per bin, −1: none
    with threads_for(C * t[1].size * t[6].shape[1]):  # C · K·oh·Gy · ow·Gx samples
        _roi_align_max_fwd(np.ascontiguousarray(features), batch, out, argmax, *t)
    return out, argmax


def roi_align_backward(dout, saved, features_shape, rois, batch, output_size, spatial_scale, sampling_ratio, aligned,
                       mode, zero_outside):
    """dout (K, C, oh, ow) -> dfeatures (N, C, H, W); the geometry is recomputed from the RoIs."""
    N, C, H, W = (int(v) for v in features_shape)
    K = dout.shape[0]
    geometry = (rois, output_size, spatial_scale, sampling_ratio, aligned, zero_outside, H, W, dout.dtype)
    batch = np.ascontiguousarray(batch, dtype=np.int64)
    if mode == "avg":
        t = tables(bin_table, *geometry)
        dF = np.empty((N, C, H, W), dtype=dout.dtype)  # every element is written by the kernel
        with threads_for(C * K * dout.shape[2] * t[1].max(initial=0) * 4):
            scratch = _block_scratch((N, C, H, W), dout.dtype)
            dout = np.ascontiguousarray(dout).reshape(K, C, dout.shape[2] * dout.shape[3])  # (K, C, oh·ow)
            _roi_align_avg_bwd(dout, dF, batch, scratch, *t)
        return dF
    t = tables(sample_table, *geometry)
    dF = np.zeros((N, C, H, W), dtype=dout.dtype)
    with threads_for(dout.size * 4):
        _roi_align_max_bwd(np.ascontiguousarray(dout), np.ascontiguousarray(saved, dtype=np.int32), dF, batch, *t)
    return dF
