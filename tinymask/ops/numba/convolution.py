"""Numba CPU kernels of the convolution: im2col and col2im, with the GEMM between them left to BLAS.

The reference is tinymask/layers/im2col.py (the two gathers) and `conv2d_forward_numpy` / `conv2d_backward_numpy` in
tinymask/layers/conv.py (im2col, one GEMM per image, and for the backward two GEMMs and col2im). Here the two
gathers are compiled loops and everything else is the reference's own code:

- im2col and col2im are already the simple kernels, and the only ones: a `prange` over the (image, channel) planes,
  each iteration filling (im2col) or accumulating into (col2im) only its own plane's rows, so no two iterations
  write one element. col2im adds in the reference's (i, j) order, so both give the reference's numbers bit for bit.
- the GEMM is `np.matmul` (OpenBLAS), as in the reference: a compiled loop would not beat it.
- `conv2d_forward` / `conv2d_backward` are the reference's steps, in the same order, with this file's im2col and
  col2im: the "numba" convolution is the "numpy" one bit for bit, only the gathers run faster.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from tinymask.ops.numba.common import threads_for

matmul = np.matmul  # the GEMM stays with BLAS; the kernels below are the gathers and scatters around it


def _out_size(size, k, s, d):
    return (size - d * (k - 1) - 1) // s + 1


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
    with threads_for(cols.size):
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
    with threads_for(cols.size):
        _col2im(cols, x_pad, int(kh), int(kw), int(sh), int(sw), int(dh), int(dw), int(Ho), int(Wo))
    return x_pad


def conv2d_forward(x_pad, w, stride, dilation):
    """x_pad (N, C, Hp, Wp), w (F, C, kH, kW) -> out (N, F, Ho, Wo), saved = (cols, x_pad.shape).

    conv2d_forward_numpy (tinymask/layers/conv.py) with this file's im2col: `out_n = W @ cols_n`.
    """
    N, C, Hp, Wp = x_pad.shape
    F, _, kh, kw = w.shape
    Ho, Wo = _out_size(Hp, kh, stride[0], dilation[0]), _out_size(Wp, kw, stride[1], dilation[1])
    cols = im2col(x_pad, (kh, kw), stride, dilation)  # (N, C·kH·kW, Ho·Wo)
    out = matmul(w.reshape(F, C * kh * kw), cols)  # (N, F, Ho·Wo): out_n = W @ cols_n
    return out.reshape(N, F, Ho, Wo), (cols, x_pad.shape)


def conv2d_backward(dout, saved, w, stride, dilation):
    """dout (N, F, Ho, Wo), the forward's `saved` -> dx_pad (N, C, Hp, Wp), dw (F, C, kH, kW).

    conv2d_backward_numpy with this file's col2im: `dW = Σ_n dout_n @ cols_nᵀ`, `dx = col2im(Wᵀ @ dout)`.
    """
    cols, padded_shape = saved  # (N, C·kH·kW, Ho·Wo), (N, C, Hp, Wp)
    N, F, Ho, Wo = dout.shape
    _, C, kh, kw = w.shape
    dout_rows = dout.reshape(N, F, Ho * Wo)  # (N, F, Ho·Wo)
    dw = matmul(dout_rows, cols.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)  # dW = Σ_n dout_n @ cols_nᵀ
    dcols = matmul(w.reshape(F, C * kh * kw).T, dout_rows)  # (N, C·kH·kW, Ho·Wo): dcols = Wᵀ @ dout
    return col2im(dcols, padded_shape, (kh, kw), stride, dilation, (Ho, Wo)), dw
