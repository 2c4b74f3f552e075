"""2-D transposed convolution ("deconvolution"), forward and backward.

Paper: Mask R-CNN §3, Fig. 4 — the mask head upsamples its 14×14 RoI features to 28×28 with a 2×2 stride-2 "deconv"
before the per-class 1×1 predictor. A transposed convolution is the adjoint of a convolution: where a convolution
gathers a window into one output pixel, the transposed convolution scatters each input pixel, weighted by the
kernel, onto a window of the output:

    full[n, o, y·s + i·d, x·s + j·d] += Σ_c x[n, c, y, x] · w[c, o, i, j]
    out = full[:, :, p : p + H_out, p : p + W_out] (+ b)

    H_out = (H − 1)·s − 2p + d·(k − 1) + output_padding + 1

Weights are (C_in, C_out, kH, kW), PyTorch's `ConvTranspose2d` layout. `output_padding` (< stride) adds rows and
columns at the bottom/right to pick one of the several output sizes that a strided convolution maps to the same size.

As with `conv.py`, a loop reference (`conv_transpose2d_forward_naive` / `..._backward_naive`) sits beside the fast
version, which is `col2im` after one matrix product: `cols = Wᵀ @ x`, then each column added onto its window. Its
backward is therefore a convolution: `dx = W @ im2col(dout)` and `dW = Σ_n x_n @ im2col(dout)_nᵀ` (derivation in
docs/layers/transposed_convolution.md). For the 2×2 stride-2 deconv the windows do not overlap, so col2im is four
strided copies.
"""
from __future__ import annotations

import numpy as np

from tinymask._validate import as_pair, check_dout, check_float_array, check_same_dtype, finite_checked
from tinymask.ops import get_ops


def _check_args(x, w, b, stride, padding, output_padding, dilation):
    check_float_array(x, "x", 4, "(N, C_in, H, W)")
    check_float_array(w, "w", 4, "(C_in, C_out, kH, kW)")
    if b is not None:
        check_float_array(b, "b", 1, "(C_out,)")
        if b.shape[0] != w.shape[1]:
            raise ValueError(f"b has {b.shape[0]} entries but w has {w.shape[1]} output channels (w is (C_in, C_out, kH, kW))")
    check_same_dtype(x=x, w=w, b=b)
    if x.shape[1] != w.shape[0]:
        raise ValueError(f"channel mismatch: x has {x.shape[1]} channels but w expects {w.shape[0]} "
                         f"(w shape {w.shape}, laid out as (C_in, C_out, kH, kW))")
    stride, padding = as_pair(stride, "stride"), as_pair(padding, "padding")
    output_padding, dilation = as_pair(output_padding, "output_padding"), as_pair(dilation, "dilation")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0 or min(output_padding) < 0:
        raise ValueError(f"need stride >= 1, dilation >= 1, padding >= 0, output_padding >= 0; "
                         f"got {stride}, {dilation}, {padding}, {output_padding}")
    for a in range(2):
        if output_padding[a] >= max(stride[a], dilation[a]):
            raise ValueError(f"output_padding {output_padding} must be smaller than the stride or the dilation")
    out_hw = tuple(
        (x.shape[2 + a] - 1) * stride[a] - 2 * padding[a] + dilation[a] * (w.shape[2 + a] - 1) + output_padding[a] + 1
        for a in range(2))
    if min(out_hw) < 1:
        raise ValueError(f"padding {padding} crops the whole output away (output size would be {out_hw})")
    return stride, padding, output_padding, dilation, out_hw


def _full_size(H, k, s, d, op):
    """Size of the un-cropped output: every input pixel's window fits, plus output_padding."""
    return (H - 1) * s + d * (k - 1) + 1 + op


# ---------------------------------------------------------------------------------------------------------------
# Reference: scatter each input pixel onto its window.
# ---------------------------------------------------------------------------------------------------------------

@finite_checked("out", "cache")
def conv_transpose2d_forward_naive(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1):
    """Transposed convolution by its definition. x: (N, C_in, H, W), w: (C_in, C_out, kH, kW) -> (N, C_out, Ho, Wo)."""
    stride, padding, output_padding, dilation, (Ho, Wo) = _check_args(x, w, b, stride, padding, output_padding, dilation)
    N, C, H, W = x.shape
    _, F, kh, kw = w.shape
    (sh, sw), (dh, dw), (ph, pw) = stride, dilation, padding
    full = np.zeros((N, F, _full_size(H, kh, sh, dh, output_padding[0]), _full_size(W, kw, sw, dw, output_padding[1])),
                    dtype=x.dtype)
    for n in range(N):
        for c in range(C):
            for y in range(H):
                for xi in range(W):
                    full[n, :, y * sh:y * sh + dh * (kh - 1) + 1:dh, xi * sw:xi * sw + dw * (kw - 1) + 1:dw] += \
                        x[n, c, y, xi] * w[c]  # (C_out, kH, kW)
    out = full[:, :, ph:ph + Ho, pw:pw + Wo].copy()
    if b is not None:
        out += b[None, :, None, None]
    return out, (x, w, b, stride, padding, output_padding, dilation)


@finite_checked("dx", "dw", "db")
def conv_transpose2d_backward_naive(dout, cache):
    """Each input pixel receives the gradient of the window it was scattered onto, weighted by the kernel."""
    x, w, b, (sh, sw), (ph, pw), output_padding, (dh, dw) = cache
    N, C, H, W = x.shape
    _, F, kh, kw = w.shape
    full_h, full_w = _full_size(H, kh, sh, dh, output_padding[0]), _full_size(W, kw, sw, dw, output_padding[1])
    check_dout(dout, (N, F, full_h - 2 * ph, full_w - 2 * pw), "conv_transpose2d_backward_naive")  # out = cropped full
    dfull = np.zeros((N, F, full_h, full_w), dtype=dout.dtype)
    dfull[:, :, ph:ph + dout.shape[2], pw:pw + dout.shape[3]] = dout  # cropped pixels get no gradient
    dx = np.zeros_like(x)
    dw_ = np.zeros_like(w)
    for n in range(N):
        for c in range(C):
            for y in range(H):
                for xi in range(W):
                    window = dfull[n, :, y * sh:y * sh + dh * (kh - 1) + 1:dh, xi * sw:xi * sw + dw * (kw - 1) + 1:dw]
                    dx[n, c, y, xi] = np.sum(window * w[c])
                    dw_[c] += x[n, c, y, xi] * window
    db = dout.sum(axis=(0, 2, 3)) if b is not None else None
    return dx, dw_, db


# ---------------------------------------------------------------------------------------------------------------
# Fast: one matrix product, then col2im.
# ---------------------------------------------------------------------------------------------------------------

@finite_checked("out", "cache")
def conv_transpose2d_forward(x, w, b=None, *, stride=1, padding=0, output_padding=0, dilation=1, backend=None):
    """Transposed convolution. x: (N, C_in, H, W), w: (C_in, C_out, kH, kW), b: (C_out,) or None.

    Returns out (N, C_out, Ho, Wo) and a cache that keeps `x` (the backward's dW needs it; it is small, the input of
    an upsampling layer). backend: where col2im, im2col and the matrix products run (default the selected one,
    tinymask/ops/backend.py); the backward runs on the forward's backend.
    """
    stride, padding, output_padding, dilation, (Ho, Wo) = _check_args(x, w, b, stride, padding, output_padding, dilation)
    N, C, H, W = x.shape
    _, F, kh, kw = w.shape
    ops = get_ops(backend)  # col2im and matmul of the selected backend (tinymask/ops/)
    cols = ops.matmul(w.reshape(C, F * kh * kw).T, x.reshape(N, C, H * W))  # (N, C_out·kH·kW, H·W) = Wᵀ @ x_n
    full_hw = (_full_size(H, kh, stride[0], dilation[0], output_padding[0]),
               _full_size(W, kw, stride[1], dilation[1], output_padding[1]))
    full = ops.col2im(cols, (N, F) + full_hw, (kh, kw), stride, dilation, (H, W))  # (N, C_out, full_h, full_w)
    ph, pw = padding
    out = np.ascontiguousarray(full[:, :, ph:ph + Ho, pw:pw + Wo])  # (N, C_out, Ho, Wo)
    if b is not None:
        out += b[None, :, None, None]
    return out, (x, w, b is not None, stride, padding, full_hw, dilation, ops.NAME)


@finite_checked("dx", "dw", "db")
def conv_transpose2d_backward(dout, cache):
    """Gradients of a transposed convolution: (dx, dw, db) — a plain convolution of dout with the same kernel."""
    x, w, has_bias, stride, (ph, pw), full_hw, dilation, backend = cache
    ops = get_ops(backend)  # the forward's backend
    N, C, H, W = x.shape
    _, F, kh, kw = w.shape
    out_shape = (N, F, full_hw[0] - 2 * ph, full_hw[1] - 2 * pw)  # the forward's output is `full` cropped by padding
    check_dout(dout, out_shape, "conv_transpose2d_backward")
    dfull = np.zeros((N, F) + full_hw, dtype=dout.dtype)  # (N, C_out, full_h, full_w)
    dfull[:, :, ph:ph + dout.shape[2], pw:pw + dout.shape[3]] = dout
    # The rows and columns that output_padding added are read by no window: cut them, so that im2col finds
    # exactly one window per input pixel.
    reach = [(n - 1) * s + d * (k - 1) + 1 for n, s, d, k in zip((H, W), stride, dilation, (kh, kw))]
    dcols = ops.im2col(dfull[:, :, :reach[0], :reach[1]], (kh, kw), stride, dilation)  # (N, C_out·kH·kW, H·W)
    w_rows = w.reshape(C, F * kh * kw)  # (C_in, C_out·kH·kW)
    dx = ops.matmul(w_rows, dcols).reshape(N, C, H, W)  # dx_n = W @ dcols_n
    dw = ops.matmul(x.reshape(N, C, H * W), dcols.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)  # Σ x_n @ dcols_nᵀ
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db
