"""2-D convolution, forward and backward.

Paper: every convolution of Mask R-CNN — the ResNet backbone (He et al., CVPR 2016), FPN's laterals and output convs
(Lin et al., CVPR 2017), the RPN head (Ren et al., NeurIPS 2015, §3.1) and the mask head's four 3×3 convs and 1×1
predictor (Mask R-CNN §3, Fig. 4) — is this one operation.

    out[n, o, y, x] = b[o] + Σ_c Σ_i Σ_j  w[o, c, i, j] · x_pad[n, c, y·s + i·d, x·s + j·d]

with stride `s`, zero padding `p` and dilation `d` (each an int or a (height, width) pair). Two implementations share
one signature:

- `conv2d_forward_naive` / `conv2d_backward_naive`: the loops of the definition, slow, obviously right; the reference.
- `conv2d_forward` / `conv2d_backward`: the same maths as matrix products via im2col (see `im2col.py`), fast on BLAS.
  The tests check that both agree and that both pass the numerical gradient check.

Backward (derivation in docs/layers/convolution.md): with `cols` the im2col matrix and `W` the filters as rows,
`out = W @ cols + b`, so `dW = Σ_n dout_n @ cols_nᵀ`, `db = Σ dout`, and `dcols = Wᵀ @ dout`, which col2im adds back
onto the input windows.

**Backends.** The public pair validates, pads, adds the bias and crops the padding's gradient; the products in
between are one backend call, `get_ops(backend).conv2d_forward(x_pad, w, stride, dilation) -> (out, saved)` and
`.conv2d_backward(dout, saved, w, stride, dilation) -> (dx_pad, dw)`, and the layer does not know how a backend
computes them. On "numpy" they are `conv2d_forward_numpy` / `conv2d_backward_numpy` at the end of this file: im2col
and the products above, the reference. "numba" runs the same steps with compiled im2col / col2im
(tinymask/ops/numba/convolution.py); "cuda" runs an implicit GEMM that never stores `cols`, keeping the padded input
instead (tinymask/ops/cuda/convolution.py). Which algorithm a backend uses is its own choice, made in its file.

**Groups** (Krizhevsky et al., AlexNet, 2012; ResNeXt, Xie et al., CVPR 2017, Sec. 3.3 and Fig. 3c): with `groups` = G,
the C input channels and F filters are split into G groups of C/G and F/G, and group g's filters see only group g's
channels, so w has shape (F, C/G, kH, kW), as in PyTorch. A grouped convolution *is* G ordinary convolutions side by
side: the layer slices x and w, runs each group as one backend call and concatenates the outputs along channels; the
backward runs each group's backward on its slice of dout and concatenates dx along channels and dw along filters.
The groups stay in this layer, so no backend knows about them; `groups=1` takes exactly the path it always took.
"""
from __future__ import annotations

import numpy as np

from tinymask._validate import as_pair, check_dout, check_float_array, check_same_dtype, finite_checked
from tinymask.layers.im2col import col2im, conv_output_size, im2col
from tinymask.ops import get_ops


def _check_conv_args(x, w, b, stride, padding, dilation, groups=1):
    """Validate a convolution's inputs; return the (height, width) pairs of stride, padding and dilation."""
    check_float_array(x, "x", 4, "(N, C, H, W)")
    check_float_array(w, "w", 4, "(C_out, C_in / groups, kH, kW)" if groups != 1 else "(C_out, C_in, kH, kW)")
    if b is not None:
        check_float_array(b, "b", 1, "(C_out,)")
        if b.shape[0] != w.shape[0]:
            raise ValueError(f"b has {b.shape[0]} entries but w has {w.shape[0]} output channels")
    check_same_dtype(x=x, w=w, b=b)
    if groups != 1:
        _check_groups(x.shape[1], w.shape, groups)
    elif x.shape[1] != w.shape[1]:
        raise ValueError(f"channel mismatch: x has {x.shape[1]} channels but w expects {w.shape[1]} (w shape {w.shape})")
    stride, padding, dilation = as_pair(stride, "stride"), as_pair(padding, "padding"), as_pair(dilation, "dilation")
    if min(stride) < 1 or min(dilation) < 1 or min(padding) < 0:
        raise ValueError(f"need stride >= 1, dilation >= 1, padding >= 0; got {stride}, {dilation}, {padding}")
    for axis, size, k, p, d in (("height", x.shape[2], w.shape[2], padding[0], dilation[0]),
                                ("width", x.shape[3], w.shape[3], padding[1], dilation[1])):
        extent = d * (k - 1) + 1
        if extent > size + 2 * p:
            raise ValueError(f"kernel {axis} {extent} (k={k}, dilation={d}) is larger than the padded input "
                             f"{axis} {size + 2 * p} (size {size}, padding {p})")
    return stride, padding, dilation


def _check_groups(C, w_shape, groups):
    """A grouped convolution needs C and F divisible by `groups` and w of shape (F, C / groups, kH, kW)."""
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    F = w_shape[0]
    if C % groups:
        raise ValueError(f"groups={groups} must divide the input channels: x has {C} channels, not divisible by "
                         f"{groups}")
    if F % groups:
        raise ValueError(f"groups={groups} must divide the output channels: w has {F} filters, not divisible by "
                         f"{groups}")
    if w_shape[1] != C // groups:
        raise ValueError(f"channel mismatch: with groups={groups} each filter sees C / groups = {C} / {groups} = "
                         f"{C // groups} channels, so w must have shape ({F}, {C // groups}, kH, kW), got "
                         f"{tuple(w_shape)}")


def _output_shape(x_shape, w_shape, stride, padding, dilation) -> tuple[int, int, int, int]:
    """(N, F, Ho, Wo) of a convolution of an x of `x_shape` with a w of `w_shape`: what its dout must be."""
    Ho = conv_output_size(x_shape[2], w_shape[2], stride[0], padding[0], dilation[0])
    Wo = conv_output_size(x_shape[3], w_shape[3], stride[1], padding[1], dilation[1])
    return x_shape[0], w_shape[0], Ho, Wo


def _pad(x: np.ndarray, padding: tuple[int, int]) -> np.ndarray:
    ph, pw = padding
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))  # (N, C, H + 2ph, W + 2pw)


# ---------------------------------------------------------------------------------------------------------------
# Reference: the definition, loop by loop.
# ---------------------------------------------------------------------------------------------------------------

@finite_checked("out", "cache")
def conv2d_forward_naive(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    """Convolution by its definition. x: (N, C, H, W), w: (F, C/groups, kH, kW), b: (F,) or None -> out (N, F, Ho, Wo).

    Filter f belongs to group g = f // (F/groups) and sees input channels g·C/groups .. (g+1)·C/groups − 1.
    """
    stride, padding, dilation = _check_conv_args(x, w, b, stride, padding, dilation, groups)
    N, C, H, W = x.shape
    F, Cg, kh, kw = w.shape  # Cg = C / groups channels per filter
    Fg = F // groups  # filters per group
    (sh, sw), (dh, dw) = stride, dilation
    Ho = conv_output_size(H, kh, sh, padding[0], dh)
    Wo = conv_output_size(W, kw, sw, padding[1], dw)
    x_pad = _pad(x, padding)
    out = np.zeros((N, F, Ho, Wo), dtype=x.dtype)
    for n in range(N):
        for f in range(F):
            g = f // Fg  # the group of filter f
            for y in range(Ho):
                for xo in range(Wo):
                    window = x_pad[n, g * Cg:(g + 1) * Cg, y * sh:y * sh + dh * (kh - 1) + 1:dh,
                                   xo * sw:xo * sw + dw * (kw - 1) + 1:dw]  # (C, kH, kW)
                    out[n, f, y, xo] = np.sum(window * w[f]) + (b[f] if b is not None else 0.0)
    return out, (x, w, b, stride, padding, dilation, groups)


@finite_checked("dx", "dw", "db")
def conv2d_backward_naive(dout, cache):
    """Every output pixel spreads its gradient back over the window and the filter that made it."""
    x, w, b, (sh, sw), padding, (dh, dw), groups = cache
    check_dout(dout, _output_shape(x.shape, w.shape, (sh, sw), padding, (dh, dw)), "conv2d_backward_naive")
    N, F, Ho, Wo = dout.shape
    Cg, kh, kw = w.shape[1:]
    Fg = F // groups
    x_pad = _pad(x, padding)
    dx_pad = np.zeros_like(x_pad)
    dw_ = np.zeros_like(w)
    for n in range(N):
        for f in range(F):
            cs = slice(f // Fg * Cg, (f // Fg + 1) * Cg)  # the channels of filter f's group
            for y in range(Ho):
                for xo in range(Wo):
                    ys = slice(y * sh, y * sh + dh * (kh - 1) + 1, dh)
                    xs = slice(xo * sw, xo * sw + dw * (kw - 1) + 1, dw)
                    dw_[f] += dout[n, f, y, xo] * x_pad[n, cs, ys, xs]  # ∂out/∂w[f] = window
                    dx_pad[n, cs, ys, xs] += dout[n, f, y, xo] * w[f]  # ∂out/∂window = w[f]
    ph, pw = padding
    dx = dx_pad[:, :, ph:ph + x.shape[2], pw:pw + x.shape[3]]
    db = dout.sum(axis=(0, 2, 3)) if b is not None else None
    return dx, dw_, db


# ---------------------------------------------------------------------------------------------------------------
# Fast: im2col + one matrix product (GEMM) per image, run by the selected backend (the NumPy steps: end of file).
# ---------------------------------------------------------------------------------------------------------------

@finite_checked("out", "cache")
def conv2d_forward(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1, backend=None):
    """2-D convolution. x: (N, C, H, W), w: (F, C/groups, kH, kW), b: (F,) or None -> out (N, F, Ho, Wo), cache.

    On the reference backend the cache keeps the im2col matrix `cols` (N, C·kH·kW, Ho·Wo): the backward needs it for
    dW, and keeping it turns the backward into two matrix products at the price of holding kH·kW copies of the input
    until then. backend: where the products and the gathers run ("numpy", "numba", "cuda"; default the selected one,
    tinymask/ops/backend.py); each backend keeps what its own backward needs (the CUDA one keeps the padded input, not
    `cols`). The backward runs on the forward's backend. The maths is the same on every backend.

    groups: G > 1 runs G convolutions of C/G channels to F/G filters, one backend call each (`_grouped_forward`), so
    every backend computes grouped convolutions without knowing of groups; the cache then keeps one `saved` per group.
    """
    stride, padding, dilation = _check_conv_args(x, w, b, stride, padding, dilation, groups)
    ops = get_ops(backend)  # conv2d_forward_numpy below, or a compiled backend's (tinymask/ops/)
    x_pad = _pad(x, padding)  # (N, C, H + 2ph, W + 2pw)
    if groups == 1:
        out, saved = ops.conv2d_forward(x_pad, w, stride, dilation)  # (N, F, Ho, Wo): out_n = W @ cols_n
    else:
        out, saved = _grouped_forward(ops, x_pad, w, stride, dilation, groups)  # (N, F, Ho, Wo), [saved_g]
    if b is not None:
        out += b[:, None, None]
    return out, (x.shape, w, b is not None, saved, stride, padding, dilation, groups, ops.NAME)


@finite_checked("dx", "dw", "db")
def conv2d_backward(dout, cache):
    """Gradients of a convolution: (dx (N, C, H, W), dw (F, C, kH, kW), db (F,) or None)."""
    x_shape, w, has_bias, saved, stride, padding, dilation, groups, backend = cache
    check_dout(dout, _output_shape(x_shape, w.shape, stride, padding, dilation), "conv2d_backward")
    N, C, H, W = x_shape
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None  # db = Σ_{n,y,x} dout
    ops = get_ops(backend)  # the forward's backend
    if groups == 1:
        dx_pad, dw = ops.conv2d_backward(dout, saved, w, stride, dilation)
    else:
        dx_pad, dw = _grouped_backward(ops, dout, saved, w, stride, dilation, groups)
    ph, pw = padding
    dx = dx_pad[:, :, ph:ph + H, pw:pw + W]  # drop the padding's gradient: (N, C, H, W)
    return np.ascontiguousarray(dx), dw, db


def _grouped_forward(ops, x_pad, w, stride, dilation, groups):
    """G ordinary convolutions side by side. x_pad (N, C, Hp, Wp), w (F, C/G, kH, kW) -> out (N, F, Ho, Wo) and the
    list of the G backend calls' `saved`."""
    Cg, Fg = x_pad.shape[1] // groups, w.shape[0] // groups  # channels and filters per group
    outs, saved = [], []
    for g in range(groups):
        x_g = np.ascontiguousarray(x_pad[:, g * Cg:(g + 1) * Cg])  # (N, C/G, Hp, Wp): group g's channels
        out_g, saved_g = ops.conv2d_forward(x_g, w[g * Fg:(g + 1) * Fg], stride, dilation)  # (N, F/G, Ho, Wo)
        outs.append(out_g)
        saved.append(saved_g)
    return np.concatenate(outs, axis=1), saved  # (N, F, Ho, Wo): the groups' outputs stacked along channels


def _grouped_backward(ops, dout, saved, w, stride, dilation, groups):
    """The reverse of `_grouped_forward`: each group's backward on its slice of dout -> dx_pad (N, C, Hp, Wp),
    dw (F, C/G, kH, kW). Group g's filters touch only group g's channels, so nothing crosses between groups."""
    Fg = w.shape[0] // groups
    dxs, dws = [], []
    for g in range(groups):
        dout_g = np.ascontiguousarray(dout[:, g * Fg:(g + 1) * Fg])  # (N, F/G, Ho, Wo)
        dx_g, dw_g = ops.conv2d_backward(dout_g, saved[g], w[g * Fg:(g + 1) * Fg], stride, dilation)
        dxs.append(dx_g)  # (N, C/G, Hp, Wp)
        dws.append(dw_g)  # (F/G, C/G, kH, kW)
    return np.concatenate(dxs, axis=1), np.concatenate(dws, axis=0)


# ---------------------------------------------------------------------------------------------------------------
# The NumPy kernels (the "numpy" backend, tinymask/ops/numpy.py): the reference the compiled kernels must match
# ---------------------------------------------------------------------------------------------------------------

def conv2d_forward_numpy(x_pad, w, stride, dilation):
    """Convolution of an already padded input as im2col + one GEMM per image.

    x_pad (N, C, Hp, Wp), w (F, C, kH, kW), stride and dilation (height, width) pairs -> out (N, F, Ho, Wo) and
    saved = (cols (N, C·kH·kW, Ho·Wo), x_pad.shape), what conv2d_backward_numpy needs.
    """
    N, C, Hp, Wp = x_pad.shape
    F, _, kh, kw = w.shape
    Ho = conv_output_size(Hp, kh, stride[0], 0, dilation[0])
    Wo = conv_output_size(Wp, kw, stride[1], 0, dilation[1])
    cols = im2col(x_pad, (kh, kw), stride, dilation)  # (N, C·kH·kW, Ho·Wo)
    w_rows = w.reshape(F, C * kh * kw)  # (F, C·kH·kW)
    out = np.matmul(w_rows, cols)  # (N, F, Ho·Wo): out_n = W @ cols_n
    return out.reshape(N, F, Ho, Wo), (cols, x_pad.shape)


def conv2d_backward_numpy(dout, saved, w, stride, dilation):
    """dout (N, F, Ho, Wo) and the forward's `saved` -> dx_pad (N, C, Hp, Wp), dw (F, C, kH, kW): two GEMMs and
    col2im."""
    cols, padded_shape = saved  # (N, C·kH·kW, Ho·Wo), (N, C, Hp, Wp)
    N, F, Ho, Wo = dout.shape
    _, C, kh, kw = w.shape
    dout_rows = dout.reshape(N, F, Ho * Wo)  # (N, F, Ho·Wo)
    dw = np.matmul(dout_rows, cols.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)  # dW = Σ_n dout_n @ cols_nᵀ
    dcols = np.matmul(w.reshape(F, C * kh * kw).T, dout_rows)  # (N, C·kH·kW, Ho·Wo): dcols = Wᵀ @ dout
    dx_pad = col2im(dcols, padded_shape, (kh, kw), stride, dilation, (Ho, Wo))  # (N, C, Hp, Wp)
    return dx_pad, dw
