"""im2col and col2im: convolution as one matrix product.

A convolution slides a `kH×kW` window over the (padded) input and takes a dot product with each filter. If we copy
every window into a column of a matrix — *im2col* — the whole convolution becomes a single matrix product with the
filters laid out as rows, which BLAS runs at close to the machine's peak. *col2im* is its adjoint: it adds every
column back onto the window it came from (overlapping windows add up), which is what the backward pass of a
convolution, and the forward pass of a transposed convolution, need.

Geometry for one spatial axis (input size `H`, kernel `k`, stride `s`, padding `p`, dilation `d`):
the kernel's extent is `d·(k−1) + 1` and there are `H_out = ⌊(H + 2p − d·(k−1) − 1) / s⌋ + 1` windows.
"""
from __future__ import annotations

import numpy as np


def conv_output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    """Number of window positions along one axis: ⌊(H + 2p − d(k−1) − 1) / s⌋ + 1."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def im2col(x_pad: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]) -> np.ndarray:
    """Copy every kernel window of an already padded input into a column.

    x_pad: (N, C, Hp, Wp). Returns cols: (N, C·kH·kW, H_out·W_out), row index `c·kH·kW + i·kW + j` holding input
    pixel `(c, y·s + i·d, x·s + j·d)` for output position `(y, x)` in column `y·W_out + x`.
    """
    N, C, Hp, Wp = x_pad.shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    Ho = (Hp - dh * (kh - 1) - 1) // sh + 1
    Wo = (Wp - dw * (kw - 1) - 1) // sw + 1
    # A strided view, no copy: windows[n, c, y, x, i, j] = x_pad[n, c, y*sh + i*dh, x*sw + j*dw].
    sn, sc, sy, sx = x_pad.strides
    windows = np.lib.stride_tricks.as_strided(
        x_pad, shape=(N, C, kh, kw, Ho, Wo), strides=(sn, sc, sy * dh, sx * dw, sy * sh, sx * sw), writeable=False
    )  # (N, C, kH, kW, Ho, Wo)
    return windows.reshape(N, C * kh * kw, Ho * Wo)  # the one copy: (N, C·kH·kW, Ho·Wo)


def col2im(cols: np.ndarray, padded_shape: tuple[int, int, int, int], kernel: tuple[int, int],
           stride: tuple[int, int], dilation: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """The adjoint of `im2col`: add each column back onto its window of a zero (N, C, Hp, Wp) array.

    cols: (N, C·kH·kW, Ho·Wo). One strided add per kernel offset (i, j): inside one offset the windows never overlap,
    so each add is a plain vectorised `+=` and the loop has only kH·kW steps.
    """
    N, C, Hp, Wp = padded_shape
    (kh, kw), (sh, sw), (dh, dw) = kernel, stride, dilation
    Ho, Wo = out_hw
    cols = cols.reshape(N, C, kh, kw, Ho, Wo)
    x_pad = np.zeros(padded_shape, dtype=cols.dtype)  # (N, C, Hp, Wp)
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dh, j * dw
            x_pad[:, :, y0:y0 + sh * (Ho - 1) + 1:sh, x0:x0 + sw * (Wo - 1) + 1:sw] += cols[:, :, i, j]
    return x_pad
