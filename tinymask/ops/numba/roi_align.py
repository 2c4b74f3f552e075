"""The "numba" backend: the hot loops as CPU kernels, compiled by Numba, same names as numpy_ops.py.

Each kernel is a plain loop, `@njit(cache=True)`: compiled on first call, then loaded from the on-disk cache
(`NUMBA_CACHE_DIR`, default `__pycache__`). The scalar maths is not rewritten: RoIAlign's bin geometry, sample
positions and bilinear weights are `roi_align.py`'s `roi_bins_1d`, `sample_coords` and `linear_interp_1d`, and the
mask resize weights are `interpolate.py`'s `linear_weights`, compiled unchanged.

**RoIAlign, avg** (the training path) computes the reference's own formula, `out_k = A_y F A_xᵀ` with the per-RoI
matrices of roi_align.py, but channels last, where every step is a multiply-add over a contiguous run of channels
(`_axpy`, which LLVM turns into SIMD instructions) and each matrix's zeros are skipped (a bin row touches a few
cells). The maps are channels first, so each worker thread copies one block of 32 channels of the map channels last
into its own scratch buffer (7 MB for an FPN P2 map: it stays in the L3 cache), runs every RoI on that block, and
moves on to the next block; the whole map is never transposed in main memory. The backward is the transpose,
`dF = Σ_k A_yᵀ dout_k A_x`, accumulated the same way block by block and copied back channels first.
**RoIAlign, max** evaluates every sample point by point, like the definition, and keeps each bin's winning sample.

**Parallel loops and races.** `parallel=True` + `prange` splits a loop over the cores, which is safe only when no two
iterations write the same element. Every `prange` here runs over an axis whose writes are disjoint:

- forward passes own their outputs: one RoI (or one RoI and channel) writes only `out[k]`, one mask only `out[k]`;
- backward passes scatter-add, and two RoIs may overlap on the map, so they are **not** split over RoIs: they are
  split over channels (feature planes `(n, c)`, or blocks of channels), and each iteration walks all RoIs one after
  another. Every add into a given element happens on one thread, in a fixed order: no race, and deterministic;
- im2col and col2im own a plane per iteration; the avg RoIAlign kernels own a block of channels.

NMS is a sequential greedy loop (each decision depends on the previous ones); it is compiled, not parallel.

**Small calls run on one thread.** Waking the other threads of a parallel loop costs tens of microseconds on an idle
machine and milliseconds on a busy one, more than a small loop takes; `_threads_for(work)` runs calls with less
than `SMALL_WORK` inner iterations on the calling thread only (gradient checks make thousands of such calls).

**Wrappers** normalise the inputs (C-contiguous arrays, int64 indices, float64 RoIs, Python scalars) and allocate the
large outputs with NumPy (whose allocator asks for huge pages), so that each kernel is compiled once per float dtype.
The geometry is computed in float64 and the weights cast to the features' dtype, as the reference does; float32
results differ from the reference only by the order of float32 additions.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager

import numba
import numpy as np
from numba import njit, prange

from tinymask.box_logic.bilinear import linear_weights
from tinymask.layers.roi_align import linear_interp_1d, roi_bins_1d, sample_coords
from tinymask.layers.roi_pool import round_half_away

NAME = "numba"
IMPLICIT_GEMM_CONV = False  # conv2d_forward builds cols with im2col and keeps it for the backward

matmul = np.matmul  # the GEMM stays with BLAS; the kernels below are the gathers and scatters around it

# The layers' scalar maths, compiled unchanged (a change there needs an empty NUMBA_CACHE_DIR: Numba's cache of a
# kernel is keyed on this file, not on the files of the functions it calls).
_bins = njit(cache=True)(roi_bins_1d)
_coords = njit(cache=True)(sample_coords)
_interp = njit(cache=True)(linear_interp_1d)
_resize_weights = njit(cache=True)(linear_weights)


SMALL_WORK = 1 << 15  # inner-loop iterations below which a call runs on one thread


@contextmanager
def _threads_for(work):
    """Run the block on one thread when `work` is small (set_num_threads is per calling thread and cheap)."""
    threads = numba.get_num_threads()
    if work >= SMALL_WORK or threads == 1:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)


def _out_size(size, k, s, d):
    return (size - d * (k - 1) - 1) // s + 1


# --------------------------------------------------------------------------------------------------------------------
# Convolution: im2col and col2im (the GEMM between them is np.matmul)
# --------------------------------------------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _im2col(x_pad, cols, kh, kw, sh, sw, dh, dw, Wo):
    N, C = x_pad.shape[0], x_pad.shape[1]
    Ho = cols.shape[2] // Wo
    for nc in prange(N * C):  # each (n, c) fills its own kH·kW rows
        n, c = nc // C, nc % C
        for i in range(kh):
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for y in range(Ho):  # one output row of the window: a (strided) slice of one input row
                    src = x_pad[n, c, y * sh + i * dh]
                    cols[n, row, y * Wo:(y + 1) * Wo] = src[j * dw:j * dw + sw * (Wo - 1) + 1:sw]


def im2col(x_pad, kernel, stride, dilation):
    """x_pad (N, C, Hp, Wp) -> cols (N, C·kH·kW, Ho·Wo), as tinymask/layers/im2col.py."""
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    N, C = x_pad.shape[:2]
    Ho, Wo = _out_size(x_pad.shape[2], kh, sh, dh), _out_size(x_pad.shape[3], kw, sw, dw)
    cols = np.empty((N, C * kh * kw, Ho * Wo), dtype=x_pad.dtype)  # (N, C·kH·kW, Ho·Wo), NumPy's allocator
    with _threads_for(cols.size):
        _im2col(np.ascontiguousarray(x_pad), cols, int(kh), int(kw), int(sh), int(sw), int(dh), int(dw), Wo)
    return cols


@njit(cache=True, parallel=True)
def _col2im(cols, x_pad, kh, kw, sh, sw, dh, dw, Ho, Wo):
    N, C = x_pad.shape[0], x_pad.shape[1]
    for nc in prange(N * C):  # plane (n, c) is written by this iteration only: no race
        n, c = nc // C, nc % C
        for i in range(kh):  # the same (i, j) order as the NumPy version: the same sums, bit for bit
            for j in range(kw):
                row = (c * kh + i) * kw + j
                for y in range(Ho):
                    dst = x_pad[n, c, y * sh + i * dh]
                    for x in range(Wo):
                        dst[x * sw + j * dw] += cols[n, row, y * Wo + x]


def col2im(cols, padded_shape, kernel, stride, dilation, out_hw):
    """cols (N, C·kH·kW, Ho·Wo) -> x_pad (N, C, Hp, Wp), overlapping windows added, as im2col.py."""
    N, C, Hp, Wp = (int(v) for v in padded_shape)
    (kh, kw), (sh, sw), (dh, dw), (Ho, Wo) = kernel, stride, dilation, out_hw
    cols = np.ascontiguousarray(cols).reshape(N, C * kh * kw, Ho * Wo)
    x_pad = np.zeros((N, C, Hp, Wp), dtype=cols.dtype)  # (N, C, Hp, Wp)
    with _threads_for(cols.size):
        _col2im(cols, x_pad, int(kh), int(kw), int(sh), int(sw), int(dh), int(dw), int(Ho), int(Wo))
    return x_pad


def conv2d_implicit_gemm(x_pad, w, stride, dilation):
    """x_pad (N, C, Hp, Wp), w (F, C, kH, kW) -> (N, F, Ho, Wo): im2col here, then BLAS (see numpy_ops.py)."""
    F, C, kh, kw = w.shape
    cols = im2col(x_pad, (kh, kw), stride, dilation)  # (N, C·kH·kW, Ho·Wo)
    Ho = _out_size(x_pad.shape[2], kh, stride[0], dilation[0])
    Wo = _out_size(x_pad.shape[3], kw, stride[1], dilation[1])
    return np.matmul(w.reshape(F, C * kh * kw), cols).reshape(x_pad.shape[0], F, Ho, Wo)


# --------------------------------------------------------------------------------------------------------------------
# RoIAlign
# --------------------------------------------------------------------------------------------------------------------

@njit(cache=True)
def _sample_table(lo, hi, spatial_scale, n_bins, sampling_ratio, aligned, zero_outside, size):
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
        start[k], bin_size[k], grid[k] = _bins(lo[k], hi[k], spatial_scale, n_bins, sampling_ratio, aligned)
        G = max(G, grid[k])
    low = np.zeros((K, n_bins * G), dtype=np.int64)
    high = np.zeros((K, n_bins * G), dtype=np.int64)
    w_low = np.zeros((K, n_bins * G))
    w_high = np.zeros((K, n_bins * G))
    for k in range(K):
        for p in range(n_bins):
            for i in range(grid[k]):
                t = _coords(start[k], bin_size[k], grid[k], p, i)  # y = start + p·b + (i + ½)·b / grid
                l, h, wl, wh = _interp(t, size, zero_outside)
                s = p * grid[k] + i
                low[k, s], high[k, s], w_low[k, s], w_high[k, s] = int(l), int(h), wl, wh
    return grid, low, high, w_low, w_high


@njit(cache=True)
def _bin_table(lo, hi, spatial_scale, n_bins, sampling_ratio, aligned, zero_outside, size):
    """The avg path's matrix A of one axis, per RoI, cut to the cells the RoI touches (roi_align.py's A_y, A_x).

    Returns first (K,) and width (K,): the window of cells; A (K, n_bins, Wmax) float64: bin p's weights over the
    window, the mean of its samples' bilinear weights; nz_lo, nz_hi (K, n_bins): the columns where row p of A is
    non-zero (a few: each sample touches two cells), so the kernels skip the zeros.
    """
    grid, low, high, w_low, w_high = _sample_table(lo, hi, spatial_scale, n_bins, sampling_ratio, aligned,
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
    """out[k] = A_y F A_xᵀ for every RoI: F (N, C, H, W) -> out (K, C, oh·ow), in place.

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
    """dF = Σ_k A_yᵀ dout_k A_x: dout (K, C, oh·ow) -> dF (N, C, H, W), every element written.

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
                        # bilinear: the four corners, weights (1-ly)(1-lx), (1-ly)lx, ly(1-lx), ly·lx
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


def _tables(table, rois, output_size, spatial_scale, sampling_ratio, aligned, zero_outside, H, W, dtype):
    """`table` (_sample_table or _bin_table) along y and x, float weights cast to the features' dtype."""
    rois = np.asarray(rois, dtype=np.float64)
    common = (float(spatial_scale),)
    ty = table(np.ascontiguousarray(rois[:, 2]), np.ascontiguousarray(rois[:, 4]), *common, int(output_size[0]),
               int(sampling_ratio), bool(aligned), bool(zero_outside), int(H))
    tx = table(np.ascontiguousarray(rois[:, 1]), np.ascontiguousarray(rois[:, 3]), *common, int(output_size[1]),
               int(sampling_ratio), bool(aligned), bool(zero_outside), int(W))
    return tuple(t.astype(dtype) if t.dtype == np.float64 else t for t in ty + tx)


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
        tables = _tables(_bin_table, *geometry)
        out = np.empty((len(batch), C, oh, ow), dtype=features.dtype)  # NumPy's allocator: huge pages where allowed
        with _threads_for(C * len(batch) * oh * tables[1].max(initial=0) * 4):
            scratch = _block_scratch(features.shape, features.dtype)
            _roi_align_avg_fwd(np.ascontiguousarray(features), batch, out.reshape(len(batch), C, oh * ow), scratch,
                               *tables)
        return out, None
    tables = _tables(_sample_table, *geometry)
    out = np.zeros((len(batch), C, oh, ow), dtype=features.dtype)  # (K, C, oh, ow)
    argmax = np.full((len(batch), C, oh, ow), -1, dtype=np.int32)  # winning sample iy·gw + ix per bin, −1: none
    with _threads_for(C * tables[1].size * tables[6].shape[1]):  # C · K·oh·Gy · ow·Gx samples
        _roi_align_max_fwd(np.ascontiguousarray(features), batch, out, argmax, *tables)
    return out, argmax


def roi_align_backward(dout, saved, features_shape, rois, batch, output_size, spatial_scale, sampling_ratio, aligned,
                       mode, zero_outside):
    """dout (K, C, oh, ow) -> dfeatures (N, C, H, W); the geometry is recomputed from the RoIs."""
    N, C, H, W = (int(v) for v in features_shape)
    K = dout.shape[0]
    geometry = (rois, output_size, spatial_scale, sampling_ratio, aligned, zero_outside, H, W, dout.dtype)
    batch = np.ascontiguousarray(batch, dtype=np.int64)
    if mode == "avg":
        tables = _tables(_bin_table, *geometry)
        dF = np.empty((N, C, H, W), dtype=dout.dtype)  # every element is written by the kernel
        with _threads_for(C * K * dout.shape[2] * tables[1].max(initial=0) * 4):
            scratch = _block_scratch((N, C, H, W), dout.dtype)
            dout = np.ascontiguousarray(dout).reshape(K, C, dout.shape[2] * dout.shape[3])  # (K, C, oh·ow)
            _roi_align_avg_bwd(dout, dF, batch, scratch, *tables)
        return dF
    tables = _tables(_sample_table, *geometry)
    dF = np.zeros((N, C, H, W), dtype=dout.dtype)
    with _threads_for(dout.size * 4):
        _roi_align_max_bwd(np.ascontiguousarray(dout), np.ascontiguousarray(saved, dtype=np.int32), dF, batch, *tables)
    return dF


# --------------------------------------------------------------------------------------------------------------------
# RoIPool
# --------------------------------------------------------------------------------------------------------------------

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
    with _threads_for(features.shape[1] * features.shape[2] * features.shape[3] * len(q)):  # at most C·H·W per RoI
        _roi_pool_fwd(np.ascontiguousarray(features), np.ascontiguousarray(batch, dtype=np.int64), q, out, argmax)
    return out, argmax


def roi_pool_backward(dout, argmax, batch, features_shape):
    """dout (K, C, oh, ow) -> dfeatures (N, C, H, W)."""
    N, C, H, W = (int(v) for v in features_shape)
    dflat = np.zeros((N, C, H * W), dtype=dout.dtype)
    with _threads_for(dout.size * N):
        _roi_pool_bwd(np.ascontiguousarray(dout), np.ascontiguousarray(argmax, dtype=np.int64),
                      np.ascontiguousarray(batch, dtype=np.int64), dflat)
    return dflat.reshape(N, C, H, W)


# --------------------------------------------------------------------------------------------------------------------
# Mask pasting (inference)
# --------------------------------------------------------------------------------------------------------------------

@njit(cache=True, parallel=True)
def _paste(padded, boxes, out):
    n, im_h, im_w = out.shape
    P = padded.shape[1]
    for k in prange(n):  # one mask per iteration owns out[k]
        x0, y0, x1, y1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        ix0, ix1 = max(x0, 0), min(x1 + 1, im_w)  # the part of the box inside the image
        iy0, iy1 = max(y0, 0), min(y1 + 1, im_h)
        if ix0 >= ix1 or iy0 >= iy1:
            continue
        r0, r1, wr0, wr1 = _resize_weights(P, max(y1 - y0 + 1, 1))  # resize P -> box height (interpolate.py)
        c0, c1, wc0, wc1 = _resize_weights(P, max(x1 - x0 + 1, 1))
        wr0, wr1 = wr0.astype(padded.dtype), wr1.astype(padded.dtype)  # in the masks' dtype, as bilinear_resize
        wc0, wc1 = wc0.astype(padded.dtype), wc1.astype(padded.dtype)
        M = padded[k]
        for yy in range(iy0, iy1):
            i = yy - y0
            for xx in range(ix0, ix1):
                j = xx - x0
                row_c0 = wr0[i] * M[r0[i], c0[j]] + wr1[i] * M[r1[i], c0[j]]  # blend along the height first
                row_c1 = wr0[i] * M[r0[i], c1[j]] + wr1[i] * M[r1[i], c1[j]]
                out[k, yy, xx] = wc0[j] * row_c0 + wc1[j] * row_c1  # then along the width


def paste_masks(padded, int_boxes, image_hw):
    """padded (N, P, P) masks, int_boxes (N, 4) int -> (N, H, W), as mask_paste.py's steps 4 and 5."""
    # NumPy's zeros: pages outside the boxes are never touched, so they cost nothing (a 100-mask 800×1088 output is
    # 348 MB in float32, mostly zeros).
    out = np.zeros((padded.shape[0], int(image_hw[0]), int(image_hw[1])), dtype=padded.dtype)  # (N, H, W)
    with _threads_for(out.size):
        _paste(np.ascontiguousarray(padded), np.ascontiguousarray(int_boxes, dtype=np.int64), out)
    return out


# --------------------------------------------------------------------------------------------------------------------
# NMS (inference)
# --------------------------------------------------------------------------------------------------------------------

@njit(cache=True)
def _nms(boxes, areas, order, threshold, zero):
    n = order.shape[0]
    suppressed = np.zeros(n, dtype=np.bool_)
    keep = np.empty(n, dtype=np.int64)
    m = 0
    for a in range(n):  # boxes by decreasing score
        if suppressed[a]:
            continue
        i = order[a]
        keep[m] = i
        m += 1
        for b in range(a + 1, n):  # suppress the later boxes that overlap the kept one too much
            if suppressed[b]:
                continue
            j = order[b]
            iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
            inter = max(iw, zero) * max(ih, zero)
            union = areas[i] + areas[j] - inter
            iou = inter / union if union > zero else zero  # box_iou's rule: 0 where the union is empty
            if iou > threshold:
                suppressed[b] = True
    return keep[:m].copy()


def nms(boxes, scores, iou_threshold):
    """Greedy NMS: keep (K,) int64, by decreasing score; the same keep list as nms.py's, bit for bit.

    The arithmetic is nms.py's in the boxes' dtype (areas computed by the same NumPy expression, the threshold
    compared in the dtype NumPy would compare it in), so that IoUs right at the threshold decide the same way.
    """
    boxes = np.ascontiguousarray(boxes)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (N,)
    order = np.argsort(-scores, kind="stable").astype(np.int64)  # best first, ties by index
    compare = np.result_type(boxes.dtype, iou_threshold)  # float32 boxes vs a Python float: float32, as NumPy does
    return _nms(boxes, areas, order, compare.type(iou_threshold), boxes.dtype.type(0))
