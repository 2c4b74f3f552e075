"""CUDA kernels of the convolution: first the simple form, im2col + GEMM, then the tuned one, the implicit GEMM.

**The simple kernels** are the reference's steps (tinymask/layers/conv.py, `conv2d_forward_numpy`), each a kernel
with one thread per output element:

- im2col (`_im2col_kernel`): `cols[n, row, pix]` read from the input pixel that row (c, i, j) of output pixel (y, x)
  holds, (c, y·sh + i·dh, x·sw + j·dw) (`_cols_value`, the one place these kernels spell out the index map);
- col2im (`_col2im_kernel`), written as a *gather*: each input pixel sums the columns that cover it, in the
  reference's (i, j) order, so it needs no atomics and is deterministic;
- `conv2d_forward_simple` / `conv2d_backward_simple`: im2col, then the simple GEMM of gemm.py (`W @ cols`; for the
  backward `dout colsᵀ` and `Wᵀ dout`), then col2im. The transposed convolution runs on im2col, col2im and the tuned
  GEMM (tinymask/layers/conv_transpose.py).

**The tuned kernels** (`conv2d_forward` / `conv2d_backward`, what the backend runs): the tiled GEMM of gemm.py,
`out_n = W @ cols_n`, except that the tile of `cols` is never stored in global memory: each thread computes which
input pixel im2col would have put there and loads it straight into shared memory ("implicit GEMM"). `saved` is the
padded input, not `cols`, and the backward is two more such GEMMs: `dW = Σ_n dout_n colsᵀ` with the reduction over
every image and pixel and the tile of colsᵀ gathered from the input, and `dx = col2im(Wᵀ dout)` with each input pixel
gathering the taps that reach it. The im2col matrix never exists on the GPU.
"""
from __future__ import annotations

import numpy as np
from numba import cuda

from tinymask.ops.cuda.device import TPB, grid, kernel_for, to_device
from tinymask.ops.cuda.gemm import TILE, matmul_simple


def _out_size(size, k, s, d):
    return (size - d * (k - 1) - 1) // s + 1


# --------------------------------------------------------------------------------------------------------------------
# The simple kernels: im2col, col2im, and the GEMM between them
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
    _im2col_kernel[grid(cols.size), TPB](to_device(x_pad), d_cols, kh, kw, sh, sw, dh, dw, Wo)
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
    _col2im_kernel[grid(x_pad.size), TPB](to_device(cols), d_x, kh, kw, sh, sw, dh, dw, Ho, Wo)
    return d_x.copy_to_host()


def conv2d_forward_simple(x_pad, w, stride, dilation):
    """The simple form: im2col, then `W @ cols` by the simple GEMM. x_pad (N, C, Hp, Wp), w (F, C, kH, kW) ->
    out (N, F, Ho, Wo), saved = (cols, x_pad.shape), as conv2d_forward_numpy."""
    N, C, Hp, Wp = x_pad.shape
    F, _, kh, kw = w.shape
    Ho, Wo = _out_size(Hp, kh, stride[0], dilation[0]), _out_size(Wp, kw, stride[1], dilation[1])
    cols = im2col(x_pad, (kh, kw), stride, dilation)  # (N, C·kH·kW, Ho·Wo)
    out = matmul_simple(w.reshape(F, C * kh * kw), cols)  # (N, F, Ho·Wo): out_n = W @ cols_n
    return out.reshape(N, F, Ho, Wo), (cols, x_pad.shape)


def conv2d_backward_simple(dout, saved, w, stride, dilation):
    """The simple form's backward: dW = Σ_n dout_n @ cols_nᵀ and dx = col2im(Wᵀ @ dout), as conv2d_backward_numpy."""
    cols, padded_shape = saved  # (N, C·kH·kW, Ho·Wo), (N, C, Hp, Wp)
    N, F, Ho, Wo = dout.shape
    _, C, kh, kw = w.shape
    dout_rows = dout.reshape(N, F, Ho * Wo)  # (N, F, Ho·Wo)
    dw = matmul_simple(dout_rows, cols.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)
    dcols = matmul_simple(w.reshape(F, C * kh * kw).T, dout_rows)  # (N, C·kH·kW, Ho·Wo)
    return col2im(dcols, padded_shape, (kh, kw), stride, dilation, (Ho, Wo)), dw


# --------------------------------------------------------------------------------------------------------------------
# The tuned kernels: implicit GEMM, cols gathered tile by tile into shared memory and never stored
# --------------------------------------------------------------------------------------------------------------------

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


_CONV = {}  # dtype -> kernel, for each of the three
_CONV_DW = {}
_CONV_DX = {}


def conv2d_forward(x_pad, w, stride, dilation):
    """x_pad (N, C, Hp, Wp), w (F, C, kH, kW) -> out (N, F, Ho, Wo) without ever building the im2col matrix, and
    saved = x_pad (what the implicit backward gathers its tiles of cols from)."""
    N, C, Hp, Wp = x_pad.shape
    F, _, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    Ho, Wo = _out_size(Hp, kh, sh, dh), _out_size(Wp, kw, sw, dw)
    out = np.zeros((N, F, Ho, Wo), dtype=x_pad.dtype)
    if out.size == 0:
        return out, x_pad
    d_out = cuda.to_device(out)
    blocks = ((Ho * Wo + TILE - 1) // TILE, (F + TILE - 1) // TILE, N)
    kernel_for(_CONV, _make_implicit_gemm_conv, x_pad.dtype)[blocks, (TILE, TILE)](
        to_device(x_pad), to_device(w.reshape(F, C * kh * kw)), d_out, kh, kw, sh, sw, dh, dw, Wo)
    return d_out.copy_to_host(), x_pad


def conv2d_backward(dout, saved, w, stride, dilation):
    """The backward of conv2d_forward, without cols either: dout (N, F, Ho, Wo), saved = x_pad (N, C, Hp, Wp),
    w (F, C, kH, kW) -> dx_pad (N, C, Hp, Wp), dw (F, C, kH, kW)."""
    x_pad = saved
    N, C, Hp, Wp = x_pad.shape
    F, _, kh, kw = w.shape
    (sh, sw), (dh, dw) = stride, dilation
    dtype = x_pad.dtype
    dx_pad = np.zeros((N, C, Hp, Wp), dtype=dtype)
    grad_w = np.zeros((F, C * kh * kw), dtype=dtype)
    if dout.size == 0:
        return dx_pad, grad_w.reshape(w.shape)
    d_dout = to_device(dout, dtype)
    d_grad_w, d_dx = cuda.to_device(grad_w), cuda.to_device(dx_pad)
    blocks = ((C * kh * kw + TILE - 1) // TILE, (F + TILE - 1) // TILE)
    kernel_for(_CONV_DW, _make_implicit_gemm_conv_dw, dtype)[blocks, (TILE, TILE)](
        d_dout, to_device(x_pad), d_grad_w, kh, kw, sh, sw, dh, dw)
    w_t = w.transpose(1, 0, 2, 3).reshape(C, F * kh * kw)  # (C, F·kH·kW)
    blocks = ((Hp * Wp + TILE - 1) // TILE, (C + TILE - 1) // TILE, N)
    kernel_for(_CONV_DX, _make_implicit_gemm_conv_dx, dtype)[blocks, (TILE, TILE)](
        d_dout, to_device(w_t, dtype), d_dx, kh, kw, sh, sw, dh, dw)
    return d_dx.copy_to_host(), d_grad_w.copy_to_host().reshape(w.shape)
