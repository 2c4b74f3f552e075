"""The "cuda" backend: the same kernels as numba_ops.py, written for a GPU with numba-cuda.

NumPy arrays go in and come out: each call copies its inputs to the GPU, launches, and copies the result back. That
keeps the layer code unchanged and makes every kernel testable on its own, at the price of a transfer per call (a
device-resident pipeline is future work). RoIAlign also has device-resident entry points,
`roi_align_forward_device` / `roi_align_backward_device`, which take and return GPU arrays (the host functions wrap
them); benchmarks/bench_gpu.py times them against torchvision's CUDA kernel. On a machine without a GPU these kernels
run in Numba's CUDA simulator (`NUMBA_ENABLE_CUDASIM=1` in the environment, never set by this library), which
executes each thread as Python: correct, very slow, fine for the tiny shapes of tests/test_cuda_sim.py.

How the work is split over threads (the one-line version of each kernel):

- im2col / col2im: one thread per element of the output. col2im is written as a *gather* (each input pixel sums the
  columns that cover it, in the reference's (i, j) order), so it needs no atomics and is deterministic.
- matmul: the classic shared-memory tiled GEMM. A 16×16 block computes a 16×16 tile of C; it walks along K in
  steps of 16, each step loading one tile of A and one of B into shared memory (one element per thread), waiting at
  `syncthreads`, and accumulating 16 products per thread from the fast shared copies.
- conv2d_implicit_gemm: the same tiled GEMM, `out_n = W @ cols_n`, except that the tile of `cols` is never stored
  in global memory: each thread computes which input pixel im2col would have put there and loads it straight into
  shared memory ("implicit GEMM"). This is what the convolution layer runs on this backend (`IMPLICIT_GEMM_CONV`),
  and its backward, conv2d_implicit_gemm_backward, is two more such GEMMs: `dW = Σ_n dout_n colsᵀ` with the
  reduction over every image and pixel and the tile of colsᵀ gathered from the input, and `dx = col2im(Wᵀ dout)`
  with each input pixel gathering the taps that reach it. The im2col matrix never exists on the GPU.
- RoIAlign / RoIPool forward: one thread per output element; backward: one thread per upstream gradient element,
  scattering with `cuda.atomic.add`, since bins of overlapping RoIs add into the same feature cells. The sample
  geometry is `roi_align.py`'s `roi_bins_1d`, `sample_coords`, `linear_interp_1d`, compiled as device functions.
  Atomic adds happen in no fixed order, so the backward is not bit-reproducible run to run (the sums are).
- paste_masks: one thread per output pixel.
- nms: the bitmask kernel. Boxes sorted by score; block (row r, column c) has 64 threads, thread t compares box
  64r + t with the 64 boxes of column block c and sets bit s of `mask[64r + t, c]` when box 64c + s (later in the
  order) overlaps it more than the threshold. The greedy pass over the bits is sequential and runs on the host.
  IoUs are computed in the boxes' dtype as nms.py does, and the kernel's PTX has no fused multiply-add, so the keep
  list is the reference's.

Besides the simulator, every kernel here compiles to PTX for sm_80 with NVVM (tests/test_cuda_sim.py,
`test_kernels_compile_to_ptx`); that is what catches a NumPy function the GPU target lacks (`np.floor`, for one, which
is why `linear_interp_1d` floors with `// 1.0`).
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32, float64, uint64

from tinymask.layers.roi_align import linear_interp_1d, roi_bins_1d, sample_coords
from tinymask.layers.roi_pool import round_half_away

NAME = "cuda"
IMPLICIT_GEMM_CONV = True  # conv2d_forward runs conv2d_implicit_gemm and keeps x_pad, not cols
TPB = 128  # threads per block of the 1-D launches
# 1-D launches use grid-stride loops, so any grid covers any array; 8192 blocks of 128 threads are a few times what
# a large GPU holds at once (an H100: 132 multiprocessors × 16 resident blocks of 128 threads), so none sits idle.
MAX_BLOCKS = 8192
TILE = 16  # GEMM tile: 16×16 threads per block, two 16×16 shared-memory tiles
NMS_BITS = 64  # boxes per NMS column block: one uint64 of mask bits

_bins = cuda.jit(device=True)(roi_bins_1d)  # roi_align.py's scalar maths, as device functions
_coords = cuda.jit(device=True)(sample_coords)
_interp = cuda.jit(device=True)(linear_interp_1d)
_NUMBA_FLOAT = {np.dtype(np.float32): float32, np.dtype(np.float64): float64}


def _grid(n):
    """Blocks for a 1-D grid-stride launch over n items."""
    return max(1, min((n + TPB - 1) // TPB, MAX_BLOCKS))


def _to_device(a, dtype=None):
    return cuda.to_device(np.ascontiguousarray(a, dtype=dtype))


def _out_size(size, k, s, d):
    return (size - d * (k - 1) - 1) // s + 1


# --------------------------------------------------------------------------------------------------------------------
# Convolution: im2col, col2im, a tiled GEMM, and the implicit-GEMM convolution
# --------------------------------------------------------------------------------------------------------------------

@cuda.jit(device=True)
def _cols_value(x_pad, n, row, pix, kh, kw, sh, sw, dh, dw, Wo):
    """cols[n, row, pix], read straight from the input: im2col row (c, i, j) of output pixel (y, x) holds input pixel
    (c, y·sh + i·dh, x·sw + j·dw). The one place the GPU kernels spell out im2col's index map."""
    c, i, j = row // (kh * kw), (row // kw) % kh, row % kw
    y, x = pix // Wo, pix % Wo
    return x_pad[n, c, y * sh + i * dh, x * sw + j * dw]


@cuda.jit(cache=True)
def _im2col_kernel(x_pad, cols, kh, kw, sh, sw, dh, dw, Wo):
    N, R, P = cols.shape  # R = C·kH·kW rows, P = Ho·Wo columns
    for idx in range(cuda.grid(1), N * R * P, cuda.gridsize(1)):
        n, rest = idx // (R * P), idx % (R * P)
        row, pix = rest // P, rest % P
        cols[n, row, pix] = _cols_value(x_pad, n, row, pix, kh, kw, sh, sw, dh, dw, Wo)


def im2col(x_pad, kernel, stride, dilation):
    """x_pad (N, C, Hp, Wp) -> cols (N, C·kH·kW, Ho·Wo), as tinymask/layers/im2col.py."""
    N, C, Hp, Wp = x_pad.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    Ho, Wo = _out_size(Hp, kh, sh, dh), _out_size(Wp, kw, sw, dw)
    cols = np.zeros((N, C * kh * kw, Ho * Wo), dtype=x_pad.dtype)
    if cols.size == 0:
        return cols
    d_cols = cuda.to_device(cols)
    _im2col_kernel[_grid(cols.size), TPB](_to_device(x_pad), d_cols, kh, kw, sh, sw, dh, dw, Wo)
    return d_cols.copy_to_host()


@cuda.jit(cache=True)
def _col2im_kernel(cols, x_pad, kh, kw, sh, sw, dh, dw, Ho, Wo):
    N, C, Hp, Wp = x_pad.shape
    for idx in range(cuda.grid(1), N * C * Hp * Wp, cuda.gridsize(1)):
        n, c, yy, xx = idx // (C * Hp * Wp), (idx // (Hp * Wp)) % C, (idx // Wp) % Hp, idx % Wp
        acc = x_pad[n, c, yy, xx]  # a zero of the array's dtype: the sum runs in that dtype, as in the reference
        for i in range(kh):  # which windows cover pixel (yy, xx)? window y with y·sh + i·dh = yy
            ty = yy - i * dh
            if ty < 0 or ty % sh != 0 or ty // sh >= Ho:
                continue
            for j in range(kw):
                tx = xx - j * dw
                if tx < 0 or tx % sw != 0 or tx // sw >= Wo:
                    continue
                acc += cols[n, (c * kh + i) * kw + j, (ty // sh) * Wo + tx // sw]
        x_pad[n, c, yy, xx] = acc


def col2im(cols, padded_shape, kernel, stride, dilation, out_hw):
    """cols (N, C·kH·kW, Ho·Wo) -> x_pad (N, C, Hp, Wp), as im2col.py; a gather, so no atomics."""
    (kh, kw), (sh, sw), (dh, dw), (Ho, Wo) = kernel, stride, dilation, out_hw
    x_pad = np.zeros(tuple(int(v) for v in padded_shape), dtype=cols.dtype)
    if x_pad.size == 0 or cols.size == 0:
        return x_pad
    d_x = cuda.to_device(x_pad)
    _col2im_kernel[_grid(x_pad.size), TPB](_to_device(cols), d_x, kh, kw, sh, sw, dh, dw, Ho, Wo)
    return d_x.copy_to_host()


def _make_gemm(dtype):
    """A tiled GEMM kernel for one float type (shared arrays need their dtype at compile time)."""

    @cuda.jit
    def gemm(A, B, Cout):
        # Cout[z] (M, N) = A[z or 0] (M, K) @ B[z or 0] (K, N); this block: the TILE×TILE tile at (row, col)
        sA = cuda.shared.array((TILE, TILE), dtype)
        sB = cuda.shared.array((TILE, TILE), dtype)
        tx, ty, z = cuda.threadIdx.x, cuda.threadIdx.y, cuda.blockIdx.z
        row, col = cuda.blockIdx.y * TILE + ty, cuda.blockIdx.x * TILE + tx
        za = z if A.shape[0] > 1 else 0  # a 2-D operand is shared by every batch entry
        zb = z if B.shape[0] > 1 else 0
        M, K, N = A.shape[1], A.shape[2], B.shape[2]
        acc = dtype(0)
        for k0 in range(0, K, TILE):  # walk along K one tile at a time
            sA[ty, tx] = A[za, row, k0 + tx] if row < M and k0 + tx < K else 0  # each thread loads one element
            sB[ty, tx] = B[zb, k0 + ty, col] if k0 + ty < K and col < N else 0
            cuda.syncthreads()  # the tiles are complete
            for kk in range(TILE):
                acc += sA[ty, kk] * sB[kk, tx]
            cuda.syncthreads()  # everyone is done reading before the next tiles overwrite them
        if row < M and col < N:
            Cout[z, row, col] = acc

    return gemm


def _make_implicit_gemm_conv(dtype):
    """The tiled GEMM `out_n = W @ cols_n`, with each tile of cols gathered from the input on the fly."""

    @cuda.jit
    def conv(x_pad, w_rows, out, kh, kw, sh, sw, dh, dw, Wo):
        sW = cuda.shared.array((TILE, TILE), dtype)
        sX = cuda.shared.array((TILE, TILE), dtype)
        tx, ty, n = cuda.threadIdx.x, cuda.threadIdx.y, cuda.blockIdx.z
        f, pix = cuda.blockIdx.y * TILE + ty, cuda.blockIdx.x * TILE + tx  # output channel, output pixel
        F, R = w_rows.shape  # R = C·kH·kW
        P = out.shape[2] * out.shape[3]
        y, x = pix // Wo, pix % Wo
        acc = dtype(0)
        for k0 in range(0, R, TILE):
            sW[ty, tx] = w_rows[f, k0 + tx] if f < F and k0 + tx < R else 0
            r = k0 + ty  # sX[ty, tx] = cols[n, r, pix], gathered from the input
            if r < R and pix < P:
                sX[ty, tx] = _cols_value(x_pad, n, r, pix, kh, kw, sh, sw, dh, dw, Wo)
            else:
                sX[ty, tx] = 0
            cuda.syncthreads()
            for kk in range(TILE):
                acc += sW[ty, kk] * sX[kk, tx]
            cuda.syncthreads()
        if f < F and pix < P:
            out[n, f, y, x] = acc

    return conv


def _make_implicit_gemm_conv_dw(dtype):
    """dW = Σ_n dout_n @ cols_nᵀ as one tiled GEMM whose reduction runs over every image and output pixel; the tile
    of colsᵀ is gathered from the input as in the forward."""

    @cuda.jit
    def conv_dw(dout, x_pad, grad_w, kh, kw, sh, sw, dh, dw):
        sD = cuda.shared.array((TILE, TILE), dtype)
        sX = cuda.shared.array((TILE, TILE), dtype)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        f, r = cuda.blockIdx.y * TILE + ty, cuda.blockIdx.x * TILE + tx  # this thread's element of grad_w (F, R)
        N, F, Ho, Wo = dout.shape
        R = grad_w.shape[1]  # C·kH·kW
        P = Ho * Wo
        acc = dtype(0)
        for k0 in range(0, N * P, TILE):  # the reduction index k = n·P + pixel
            k = k0 + tx  # sD[ty, tx] = dout[n, f, pixel]
            if f < F and k < N * P:
                n, pix = k // P, k % P
                sD[ty, tx] = dout[n, f, pix // Wo, pix % Wo]
            else:
                sD[ty, tx] = 0
            k = k0 + ty  # sX[ty, tx] = cols[n, r, pixel]: the input pixel that im2col row r of that pixel reads
            if r < R and k < N * P:
                sX[ty, tx] = _cols_value(x_pad, k // P, r, k % P, kh, kw, sh, sw, dh, dw, Wo)
            else:
                sX[ty, tx] = 0
            cuda.syncthreads()
            for kk in range(TILE):
                acc += sD[ty, kk] * sX[kk, tx]
            cuda.syncthreads()
        if f < F and r < R:
            grad_w[f, r] = acc

    return conv_dw


def _make_implicit_gemm_conv_dx(dtype):
    """dx_pad_n = col2im(Wᵀ @ dout_n) as one tiled GEMM: each padded input pixel (yy, xx) of channel c sums
    W[f, c, i, j] · dout[n, f, y, x] over the taps (f, i, j) whose window put it there, i.e. yy = y·sh + i·dh and
    xx = x·sw + j·dw for an output pixel (y, x). Each output element is written once: no atomics."""

    @cuda.jit
    def conv_dx(dout, w_t, dx_pad, kh, kw, sh, sw, dh, dw):
        sW = cuda.shared.array((TILE, TILE), dtype)
        sD = cuda.shared.array((TILE, TILE), dtype)
        tx, ty, n = cuda.threadIdx.x, cuda.threadIdx.y, cuda.blockIdx.z
        c, q = cuda.blockIdx.y * TILE + ty, cuda.blockIdx.x * TILE + tx  # input channel, padded pixel yy·Wp + xx
        C, K = w_t.shape  # w_t[c, (f·kH + i)·kW + j] = W[f, c, i, j]; K = F·kH·kW
        Hp, Wp = dx_pad.shape[2], dx_pad.shape[3]
        Ho, Wo = dout.shape[2], dout.shape[3]
        acc = dtype(0)
        for k0 in range(0, K, TILE):
            sW[ty, tx] = w_t[c, k0 + tx] if c < C and k0 + tx < K else 0
            k = k0 + ty  # sD[ty, tx] = dout[n, f, y, x] if tap k = (f, i, j) reaches pixel q from some (y, x), else 0
            v = dtype(0)
            if k < K and q < Hp * Wp:
                f, i, j = k // (kh * kw), (k // kw) % kh, k % kw
                oy, ox = q // Wp - i * dh, q % Wp - j * dw  # = y·sh and x·sw, if such an output pixel exists
                if oy >= 0 and ox >= 0 and oy % sh == 0 and ox % sw == 0 and oy // sh < Ho and ox // sw < Wo:
                    v = dout[n, f, oy // sh, ox // sw]
            sD[ty, tx] = v
            cuda.syncthreads()
            for kk in range(TILE):
                acc += sW[ty, kk] * sD[kk, tx]
            cuda.syncthreads()
        if c < C and q < Hp * Wp:
            dx_pad[n, c, q // Wp, q % Wp] = acc

    return conv_dx


_GEMM = {}
_CONV = {}
_CONV_DW = {}
_CONV_DX = {}


def _kernel(table, make, dtype):
    dtype = np.dtype(dtype)
    if dtype not in table:
        table[dtype] = make(_NUMBA_FLOAT[dtype])
    return table[dtype]


def matmul(a, b):
    """np.matmul for the shapes the convolutions use: (M, K) or (Z, M, K) times (K, N) or (Z, K, N)."""
    dtype = np.result_type(a, b)
    squeeze = a.ndim == 2 and b.ndim == 2
    a3, b3 = (a[None] if a.ndim == 2 else a), (b[None] if b.ndim == 2 else b)
    if a3.shape[0] != b3.shape[0] and 1 not in (a3.shape[0], b3.shape[0]):
        raise ValueError(f"matmul: batch sizes {a3.shape[0]} and {b3.shape[0]} do not broadcast")
    Z, M, K, N = max(a3.shape[0], b3.shape[0]), a3.shape[1], a3.shape[2], b3.shape[2]
    out = np.zeros((Z, M, N), dtype=dtype)
    if out.size and K:
        d_out = cuda.to_device(out)
        blocks = ((N + TILE - 1) // TILE, (M + TILE - 1) // TILE, Z)
        _kernel(_GEMM, _make_gemm, dtype)[blocks, (TILE, TILE)](_to_device(a3, dtype), _to_device(b3, dtype), d_out)
        out = d_out.copy_to_host()
    return out[0] if squeeze else out


def conv2d_implicit_gemm(x_pad, w, stride, dilation):
    """x_pad (N, C, Hp, Wp), w (F, C, kH, kW) -> out (N, F, Ho, Wo), without ever building the im2col matrix."""
    N, C, Hp, Wp = x_pad.shape
    F, _, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    Ho, Wo = _out_size(Hp, kh, sh, dh), _out_size(Wp, kw, sw, dw)
    out = np.zeros((N, F, Ho, Wo), dtype=x_pad.dtype)
    if out.size == 0:
        return out
    d_out = cuda.to_device(out)
    blocks = ((Ho * Wo + TILE - 1) // TILE, (F + TILE - 1) // TILE, N)
    _kernel(_CONV, _make_implicit_gemm_conv, x_pad.dtype)[blocks, (TILE, TILE)](
        _to_device(x_pad), _to_device(w.reshape(F, C * kh * kw)), d_out, kh, kw, sh, sw, dh, dw, Wo)
    return d_out.copy_to_host()


def conv2d_implicit_gemm_backward(dout, x_pad, w, stride, dilation):
    """The backward of conv2d_implicit_gemm, without cols either: dout (N, F, Ho, Wo), x_pad (N, C, Hp, Wp),
    w (F, C, kH, kW) -> dx_pad (N, C, Hp, Wp), dw (F, C, kH, kW)."""
    N, C, Hp, Wp = x_pad.shape
    F, _, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    dtype = x_pad.dtype
    dx_pad = np.zeros((N, C, Hp, Wp), dtype=dtype)
    grad_w = np.zeros((F, C * kh * kw), dtype=dtype)
    if dout.size == 0:
        return dx_pad, grad_w.reshape(w.shape)
    d_dout = _to_device(dout, dtype)
    d_grad_w, d_dx = cuda.to_device(grad_w), cuda.to_device(dx_pad)
    blocks = ((C * kh * kw + TILE - 1) // TILE, (F + TILE - 1) // TILE)
    _kernel(_CONV_DW, _make_implicit_gemm_conv_dw, dtype)[blocks, (TILE, TILE)](
        d_dout, _to_device(x_pad), d_grad_w, kh, kw, sh, sw, dh, dw)
    w_t = w.transpose(1, 0, 2, 3).reshape(C, F * kh * kw)  # (C, F·kH·kW)
    blocks = ((Hp * Wp + TILE - 1) // TILE, (C + TILE - 1) // TILE, N)
    _kernel(_CONV_DX, _make_implicit_gemm_conv_dx, dtype)[blocks, (TILE, TILE)](
        d_dout, _to_device(w_t, dtype), d_dx, kh, kw, sh, sw, dh, dw)
    return d_dx.copy_to_host(), d_grad_w.copy_to_host().reshape(w.shape)


# --------------------------------------------------------------------------------------------------------------------
# RoIAlign
# --------------------------------------------------------------------------------------------------------------------

@cuda.jit(cache=True)
def _roi_align_fwd_kernel(features, rois, batch, spatial_scale, sampling_ratio, aligned, avg, zero_outside, out,
                          argmax):
    K, C, oh, ow = out.shape
    H, W = features.shape[2], features.shape[3]
    for idx in range(cuda.grid(1), K * C * oh * ow, cuda.gridsize(1)):
        k, c, p, q = idx // (C * oh * ow), (idx // (oh * ow)) % C, (idx // ow) % oh, idx % ow
        b = batch[k]
        start_y, bin_h, gh = _bins(rois[k, 2], rois[k, 4], spatial_scale, oh, sampling_ratio, aligned)
        start_x, bin_w, gw = _bins(rois[k, 1], rois[k, 3], spatial_scale, ow, sampling_ratio, aligned)
        acc, best, arg = 0.0, -math.inf, -1
        for iy in range(gh):
            yl, yh, a0, a1 = _interp(_coords(start_y, bin_h, gh, p, iy), H, zero_outside)
            y0, y1 = int(yl), int(yh)
            for ix in range(gw):
                xl, xh, b0, b1 = _interp(_coords(start_x, bin_w, gw, q, ix), W, zero_outside)
                x0, x1 = int(xl), int(xh)
                v = a0 * (b0 * features[b, c, y0, x0] + b1 * features[b, c, y0, x1]) + \
                    a1 * (b0 * features[b, c, y1, x0] + b1 * features[b, c, y1, x1])
                acc += v
                if v > best:  # strict: ties go to the first sample in row-major order
                    best, arg = v, iy * gw + ix
        if avg:
            out[k, c, p, q] = acc / max(gh * gw, 1)
        elif arg >= 0:
            out[k, c, p, q] = best
            argmax[k, c, p, q] = arg


@cuda.jit(cache=True)
def _roi_align_bwd_kernel(dout, rois, batch, spatial_scale, sampling_ratio, aligned, avg, zero_outside, argmax,
                          dfeatures):
    K, C, oh, ow = dout.shape
    H, W = dfeatures.shape[2], dfeatures.shape[3]
    for idx in range(cuda.grid(1), K * C * oh * ow, cuda.gridsize(1)):
        k, c, p, q = idx // (C * oh * ow), (idx // (oh * ow)) % C, (idx // ow) % oh, idx % ow
        b = batch[k]
        start_y, bin_h, gh = _bins(rois[k, 2], rois[k, 4], spatial_scale, oh, sampling_ratio, aligned)
        start_x, bin_w, gw = _bins(rois[k, 1], rois[k, 3], spatial_scale, ow, sampling_ratio, aligned)
        if avg:
            g = dout[k, c, p, q] / max(gh * gw, 1)
            iy_first, iy_end, ix_first, ix_end = 0, gh, 0, gw
        else:
            a = argmax[k, c, p, q]
            if a < 0:
                continue
            g = dout[k, c, p, q] * 1.0
            iy_first, ix_first = a // gw, a % gw
            iy_end, ix_end = iy_first + 1, ix_first + 1
        for iy in range(iy_first, iy_end):
            yl, yh, a0, a1 = _interp(_coords(start_y, bin_h, gh, p, iy), H, zero_outside)
            y0, y1 = int(yl), int(yh)
            for ix in range(ix_first, ix_end):
                xl, xh, b0, b1 = _interp(_coords(start_x, bin_w, gw, q, ix), W, zero_outside)
                x0, x1 = int(xl), int(xh)
                # bins of overlapping RoIs add into the same cells: atomic adds
                cuda.atomic.add(dfeatures, (b, c, y0, x0), g * a0 * b0)
                cuda.atomic.add(dfeatures, (b, c, y0, x1), g * a0 * b1)
                cuda.atomic.add(dfeatures, (b, c, y1, x0), g * a1 * b0)
                cuda.atomic.add(dfeatures, (b, c, y1, x1), g * a1 * b1)


@cuda.jit(cache=True)
def _fill_kernel(a, value):
    """a[:] = value, for a 1-D device array (a fresh device array holds garbage, and its host copy would cost a
    transfer)."""
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] = value


def _device_full(shape, value, dtype):
    """A new device array of `shape` filled with `value`, without a host-to-device copy."""
    d = cuda.device_array(shape, dtype=dtype)
    if d.size:
        _fill_kernel[_grid(d.size), TPB](d.reshape(d.size), value)
    return d


def _on_device(a, dtype, name):
    """A GPU array as it is (a Numba device array, or any `__cuda_array_interface__` object such as a PyTorch CUDA
    tensor or a CuPy array: no copy), or a host array copied over once. The kernels are compiled per dtype and
    layout, so a device array must already have the dtype and be C-contiguous; dtype None: float32 or float64,
    whichever the array has."""
    if hasattr(a, "copy_to_host"):  # a Numba device array (or the simulator's stand-in)
        d, on_gpu = a, True
    elif hasattr(a, "__cuda_array_interface__"):  # another library's GPU array: viewed, not copied
        d, on_gpu = cuda.as_cuda_array(a), True
    else:
        d, on_gpu = np.asarray(a), False
    if dtype is None and d.dtype not in _NUMBA_FLOAT:
        raise TypeError(f"{name} must be float32 or float64, got {d.dtype.name}")
    dtype = d.dtype if dtype is None else np.dtype(dtype)
    if not on_gpu:
        return _to_device(d, dtype)
    if d.dtype != dtype or not d.is_c_contiguous():
        raise TypeError(f"{name} on the GPU must be a C-contiguous {dtype.name} array, got {d.dtype.name}"
                        + ("" if d.is_c_contiguous() else ", not C-contiguous"))
    return d


def _check_roi_shapes(features_shape, rois, batch, output_size, dout_shape=None):
    """The device entry points trust values (check_roi_inputs in layers/roi_align.py validates them on the host) but
    check shapes, which would otherwise fail inside a kernel's compilation or read out of bounds."""
    K = rois.shape[0]
    if len(features_shape) != 4:
        raise ValueError(f"features must have shape (N, C, H, W), got {tuple(features_shape)}")
    if tuple(rois.shape) != (K, 5) or tuple(batch.shape) != (K,):
        raise ValueError(f"rois must have shape (K, 5) and batch (K,), got {tuple(rois.shape)} and "
                         f"{tuple(batch.shape)}")
    expected = (K, features_shape[1]) + tuple(output_size)
    if dout_shape is not None and tuple(dout_shape) != expected:
        raise ValueError(f"dout must have shape (K, C, oh, ow) = {expected}, got {tuple(dout_shape)}")


def _roi_args(rois, batch, spatial_scale, sampling_ratio, aligned):
    return (_on_device(rois, np.float64, "rois"), _on_device(batch, np.int64, "batch"), float(spatial_scale),
            int(sampling_ratio), bool(aligned))


def roi_align_forward_device(features, rois, batch, output_size, spatial_scale, sampling_ratio, aligned, mode,
                             zero_outside):
    """RoIAlign with every array on the GPU: the same arguments as roi_align_forward, returning device arrays.

    features (N, C, H, W) float32/float64, rois (K, 5) float64 (column 0 unused; the image index is `batch`) and
    batch (K,) int64 may be device arrays (used in place) or host arrays (copied once). Returns the device arrays
    out (K, C, oh, ow) and argmax (K, C, oh, ow) int32 for mode="max", else None. This is what a GPU-resident
    pipeline, or a benchmark of the kernel alone, calls; the layers call roi_align_forward, which wraps it. Shapes
    are checked, values are not: `tinymask.layers.roi_align.check_roi_inputs` validates rois on the host and
    returns them, with `batch`, as these functions take them (an image index out of range would read out of bounds).
    """
    _check_roi_shapes(features.shape, rois, batch, output_size)
    d_features = _on_device(features, None, "features")
    dtype = d_features.dtype
    K, C, (oh, ow) = rois.shape[0], d_features.shape[1], output_size
    d_out = _device_full((K, C, oh, ow), 0, dtype)  # bins with no sample stay 0 (max), as in the reference
    d_arg = _device_full((K, C, oh, ow) if mode == "max" else (1, 1, 1, 1), -1, np.int32)
    if d_out.size:
        r, b, scale, sr, al = _roi_args(rois, batch, spatial_scale, sampling_ratio, aligned)
        _roi_align_fwd_kernel[_grid(d_out.size), TPB](d_features, r, b, scale, sr, al, mode == "avg",
                                                      bool(zero_outside), d_out, d_arg)
    return d_out, (d_arg if mode == "max" else None)


def roi_align_backward_device(dout, saved, features_shape, rois, batch, output_size, spatial_scale, sampling_ratio,
                              aligned, mode, zero_outside):
    """dout (K, C, oh, ow) -> dfeatures (N, C, H, W), both on the GPU (`saved`: the forward's device argmax or None);
    the arguments as in roi_align_forward_device."""
    _check_roi_shapes(features_shape, rois, batch, output_size, dout.shape)
    d_dout = _on_device(dout, None, "dout")
    dtype = d_dout.dtype
    d_df = _device_full(tuple(int(v) for v in features_shape), 0, dtype)  # the atomic adds start from zero
    if d_dout.size:
        d_arg = _on_device(np.full((1, 1, 1, 1), -1, np.int32) if saved is None else saved, np.int32, "argmax")
        r, b, scale, sr, al = _roi_args(rois, batch, spatial_scale, sampling_ratio, aligned)
        _roi_align_bwd_kernel[_grid(d_dout.size), TPB](d_dout, r, b, scale, sr, al, mode == "avg",
                                                       bool(zero_outside), d_arg, d_df)
    return d_df


def roi_align_forward(features, rois, batch, output_size, spatial_scale, sampling_ratio, aligned, mode, zero_outside):
    """RoIAlign: out (K, C, oh, ow) and `saved` = argmax (K, C, oh, ow) int32 (max) or None, as numba_ops.py."""
    d_out, d_arg = roi_align_forward_device(features, rois, batch, output_size, spatial_scale, sampling_ratio,
                                            aligned, mode, zero_outside)
    return d_out.copy_to_host(), (None if d_arg is None else d_arg.copy_to_host())


def roi_align_backward(dout, saved, features_shape, rois, batch, output_size, spatial_scale, sampling_ratio, aligned,
                       mode, zero_outside):
    """dout (K, C, oh, ow) -> dfeatures (N, C, H, W), scattered with atomic adds."""
    return roi_align_backward_device(dout, saved, features_shape, rois, batch, output_size, spatial_scale,
                                     sampling_ratio, aligned, mode, zero_outside).copy_to_host()


# --------------------------------------------------------------------------------------------------------------------
# RoIPool
# --------------------------------------------------------------------------------------------------------------------

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
        _roi_pool_fwd_kernel[_grid(out.size), TPB](_to_device(features), _to_device(batch, np.int64), _to_device(q),
                                                   d_out, d_arg)
        out, argmax = d_out.copy_to_host(), d_arg.copy_to_host()
    return out, argmax


def roi_pool_backward(dout, argmax, batch, features_shape):
    """dout (K, C, oh, ow) -> dfeatures (N, C, H, W), atomic adds at each bin's winner."""
    N, C, H, W = features_shape
    dflat = np.zeros((N, C, H * W), dtype=dout.dtype)
    if dout.size:
        d_flat = cuda.to_device(dflat)
        _roi_pool_bwd_kernel[_grid(dout.size), TPB](_to_device(dout), _to_device(argmax, np.int64),
                                                    _to_device(batch, np.int64), d_flat)
        dflat = d_flat.copy_to_host()
    return dflat.reshape(N, C, H, W)


# --------------------------------------------------------------------------------------------------------------------
# Mask pasting (inference)
# --------------------------------------------------------------------------------------------------------------------

@cuda.jit(device=True)
def _resize_1d(d, n_in, n_out):
    """interpolate.py's `linear_weights` for one destination index d: (i0, i1, w0, w1)."""
    src = max((d + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = min(int(math.floor(src)), n_in - 1)
    i1 = min(i0 + 1, n_in - 1)
    w1 = min(max(src - i0, 0.0), 1.0)
    return i0, i1, 1.0 - w1, w1


@cuda.jit(cache=True)
def _paste_kernel(padded, boxes, out):
    n, H, W = out.shape
    P = padded.shape[1]
    for idx in range(cuda.grid(1), n * H * W, cuda.gridsize(1)):
        k, yy, xx = idx // (H * W), (idx // W) % H, idx % W
        x0, y0, x1, y1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        if yy < y0 or yy > y1 or xx < x0 or xx > x1:
            continue  # outside this box: stays 0
        r0, r1, wr0, wr1 = _resize_1d(yy - y0, P, max(y1 - y0 + 1, 1))
        c0, c1, wc0, wc1 = _resize_1d(xx - x0, P, max(x1 - x0 + 1, 1))
        row_c0 = wr0 * padded[k, r0, c0] + wr1 * padded[k, r1, c0]
        row_c1 = wr0 * padded[k, r0, c1] + wr1 * padded[k, r1, c1]
        out[k, yy, xx] = wc0 * row_c0 + wc1 * row_c1


def paste_masks(padded, int_boxes, image_hw):
    """padded (N, P, P) masks, int_boxes (N, 4) int -> (N, H, W), as mask_paste.py's steps 4 and 5."""
    out = np.zeros((padded.shape[0], int(image_hw[0]), int(image_hw[1])), dtype=padded.dtype)
    if out.size:
        d_out = cuda.to_device(out)
        _paste_kernel[_grid(out.size), TPB](_to_device(padded), _to_device(int_boxes, np.int64), d_out)
        out = d_out.copy_to_host()
    return out


# --------------------------------------------------------------------------------------------------------------------
# NMS (inference): the bitmask kernel, then a sequential pass on the host
# --------------------------------------------------------------------------------------------------------------------

@cuda.jit(cache=True)
def _nms_mask_kernel(boxes, areas, threshold, zero, mask):
    n = boxes.shape[0]
    row_block, col_block, t = cuda.blockIdx.y, cuda.blockIdx.x, cuda.threadIdx.x
    i = row_block * NMS_BITS + t  # this thread's box (in score order)
    if col_block < row_block or i >= n:
        return  # only later boxes can be suppressed by box i
    bits = uint64(0)
    for s in range(NMS_BITS):
        j = col_block * NMS_BITS + s
        if j <= i or j >= n:
            continue
        iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
        ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
        inter = max(iw, zero) * max(ih, zero)
        union = areas[i] + areas[j] - inter
        iou = inter / union if union > zero else zero
        if iou > threshold:
            bits |= uint64(1) << uint64(s)
    mask[i, col_block] = bits


def nms(boxes, scores, iou_threshold):
    """Greedy NMS: keep (K,) int64 by decreasing score, the same keep list as nms.py's."""
    n = boxes.shape[0]
    if n == 0:
        return np.zeros((0,), dtype=np.int64)
    order = np.argsort(-scores, kind="stable")  # best first, ties by index
    sorted_boxes = np.ascontiguousarray(boxes[order])
    areas = (sorted_boxes[:, 2] - sorted_boxes[:, 0]) * (sorted_boxes[:, 3] - sorted_boxes[:, 1])
    compare = np.result_type(boxes.dtype, iou_threshold)  # the dtype NumPy compares IoU and threshold in
    blocks = (n + NMS_BITS - 1) // NMS_BITS
    d_mask = cuda.to_device(np.zeros((n, blocks), dtype=np.uint64))
    _nms_mask_kernel[(blocks, blocks), NMS_BITS](_to_device(sorted_boxes), _to_device(areas),
                                                 compare.type(iou_threshold), boxes.dtype.type(0), d_mask)
    mask = d_mask.copy_to_host()
    removed = np.zeros(blocks, dtype=np.uint64)  # bit s of removed[c]: box 64c + s is suppressed
    keep = []
    for i in range(n):  # the greedy pass: sequential by nature, cheap (one OR of a row of bits per kept box)
        c, s = divmod(i, NMS_BITS)
        if not (int(removed[c]) >> s) & 1:
            keep.append(order[i])
            removed |= mask[i]
    return np.asarray(keep, dtype=np.int64)
