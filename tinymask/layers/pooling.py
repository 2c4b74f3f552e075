"""Max pooling, forward and backward.

Paper: the ResNet stem ends with a 3×3 stride-2 max pool (ResNet Table 1, conv2_x; padding 1); FPN's P6 for the RPN is "a simple
stride-two subsampling of P5" (FPN §4.1), which torchvision writes as a max pool of kernel 1, stride 2.

    out[n, c, y, x] = max_{i, j} x_pad[n, c, y·s + i, x·s + j]      (padding with −∞, so it never wins)

Backward: the gradient of a max flows to the element that won; the others get nothing. With ties the first winner
in row-major window order takes it all (PyTorch does the same). The cache keeps the arg-max offset of every window.
"""
from __future__ import annotations

import numpy as np

from tinymask._validate import as_pair, check_dout, check_float_array, finite_checked
from tinymask.layers.im2col import conv_output_size


@finite_checked("out", "cache")
def max_pool2d_forward(x, *, kernel_size, stride=None, padding=0):
    """x: (N, C, H, W) -> out (N, C, Ho, Wo), cache. `stride` defaults to the kernel size."""
    check_float_array(x, "x", 4, "(N, C, H, W)")
    kh, kw = as_pair(kernel_size, "kernel_size")
    sh, sw = as_pair(stride if stride is not None else kernel_size, "stride")
    ph, pw = as_pair(padding, "padding")
    if min(kh, kw, sh, sw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"need kernel_size >= 1, stride >= 1, padding >= 0; got {(kh, kw)}, {(sh, sw)}, {(ph, pw)}")
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"padding {(ph, pw)} must be at most half the kernel size {(kh, kw)}")
    N, C, H, W = x.shape
    if kh > H + 2 * ph or kw > W + 2 * pw:
        raise ValueError(f"kernel {(kh, kw)} is larger than the padded input {(H + 2 * ph, W + 2 * pw)}")
    Ho, Wo = conv_output_size(H, kh, sh, ph, 1), conv_output_size(W, kw, sw, pw, 1)
    x_pad = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)  # (N, C, Hp, Wp)
    sn, sc, sy, sx = x_pad.strides
    windows = np.lib.stride_tricks.as_strided(
        x_pad, shape=(N, C, Ho, Wo, kh, kw), strides=(sn, sc, sy * sh, sx * sw, sy, sx), writeable=False
    ).reshape(N, C, Ho, Wo, kh * kw)  # (N, C, Ho, Wo, kH·kW)
    argmax = windows.argmax(axis=-1)  # (N, C, Ho, Wo): offset i·kW + j of the winner
    out = np.take_along_axis(windows, argmax[..., None], axis=-1)[..., 0]  # (N, C, Ho, Wo)
    return out, (x.shape, argmax, (kh, kw), (sh, sw), (ph, pw))


@finite_checked("dx")
def max_pool2d_backward(dout, cache):
    """Route each output's gradient to its window's arg-max: one strided add per kernel offset (no races)."""
    (N, C, H, W), argmax, (kh, kw), (sh, sw), (ph, pw) = cache
    check_dout(dout, argmax.shape, "max_pool2d_backward")  # argmax has the output's shape
    Ho, Wo = dout.shape[2:]
    dx_pad = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dout.dtype)
    for i in range(kh):
        for j in range(kw):
            won = argmax == i * kw + j  # (N, C, Ho, Wo): windows whose max sits at offset (i, j)
            dx_pad[:, :, i:i + sh * (Ho - 1) + 1:sh, j:j + sw * (Wo - 1) + 1:sw] += dout * won
    return dx_pad[:, :, ph:ph + H, pw:pw + W].copy()


@finite_checked("out", "cache")
def global_avg_pool_forward(x):
    """x: (N, C, H, W) -> out (N, C): the mean over each map. The C4 box head ends this way, as ResNet's classifier does (ResNet Table 1)."""
    check_float_array(x, "x", 4, "(N, C, H, W)")
    return x.mean(axis=(2, 3)), x.shape


@finite_checked("dx")
def global_avg_pool_backward(dout, cache):
    """Each of the H·W inputs of a mean gets 1/(H·W) of its gradient."""
    N, C, H, W = cache
    check_dout(dout, (N, C), "global_avg_pool_backward")
    return np.broadcast_to(dout[:, :, None, None] / (H * W), cache).copy()
