"""CUDA kernels of RoIAlign (tinymask/layers/roi_align.py). These are the simple kernels, and the only ones.

The forward runs one thread per output element (k, c, p, q): it computes its bin's gh·gw samples from the definition,
each a bilinear blend of four cells, with roi_align.py's scalar helpers (`roi_bins_1d`, `sample_coords`,
`linear_interp_1d`) compiled as device functions, and keeps their mean (avg) or the largest and which sample it was
(max). The backward runs one thread per upstream gradient element and spreads it back onto the four cells of each
sample with `cuda.atomic.add`, since bins of overlapping RoIs add into the same cells. Atomic adds happen in no
fixed order, so the backward is not bit-reproducible run to run (the sums are). This is the algorithm of the Numba
backend's simple kernels (tinymask/ops/numba/roi_align.py), with a GPU thread where Numba has a `prange` iteration;
a tuned GPU kernel (a block of threads sharing one RoI's window in shared memory, say) is not written yet.

`roi_align_forward_device` / `roi_align_backward_device` take and return GPU arrays (the host functions wrap them);
benchmarks/bench_gpu.py times them against torchvision's CUDA kernel.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda

from tinymask.layers.roi_align import linear_interp_1d, roi_bins_1d, sample_coords
from tinymask.ops.cuda.device import TPB, device_full, grid, on_device

_bins = cuda.jit(device=True)(roi_bins_1d)  # roi_align.py's scalar maths, as device functions
_coords = cuda.jit(device=True)(sample_coords)
_interp = cuda.jit(device=True)(linear_interp_1d)


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
    return (on_device(rois, np.float64, "rois"), on_device(batch, np.int64, "batch"), float(spatial_scale),
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
    d_features = on_device(features, None, "features")
    dtype = d_features.dtype
    K, C, (oh, ow) = rois.shape[0], d_features.shape[1], output_size
    d_out = device_full((K, C, oh, ow), 0, dtype)  # bins with no sample stay 0 (max), as in the reference
    d_arg = device_full((K, C, oh, ow) if mode == "max" else (1, 1, 1, 1), -1, np.int32)
    if d_out.size:
        r, b, scale, sr, al = _roi_args(rois, batch, spatial_scale, sampling_ratio, aligned)
        _roi_align_fwd_kernel[grid(d_out.size), TPB](d_features, r, b, scale, sr, al, mode == "avg",
                                                     bool(zero_outside), d_out, d_arg)
    return d_out, (d_arg if mode == "max" else None)


def roi_align_backward_device(dout, saved, features_shape, rois, batch, output_size, spatial_scale, sampling_ratio,
                              aligned, mode, zero_outside):
    """dout (K, C, oh, ow) -> dfeatures (N, C, H, W), both on the GPU (`saved`: the forward's device argmax or None);
    the arguments as in roi_align_forward_device."""
    _check_roi_shapes(features_shape, rois, batch, output_size, dout.shape)
    d_dout = on_device(dout, None, "dout")
    dtype = d_dout.dtype
    d_df = device_full(tuple(int(v) for v in features_shape), 0, dtype)  # the atomic adds start from zero
    if d_dout.size:
        d_arg = on_device(np.full((1, 1, 1, 1), -1, np.int32) if saved is None else saved, np.int32, "argmax")
        r, b, scale, sr, al = _roi_args(rois, batch, spatial_scale, sampling_ratio, aligned)
        _roi_align_bwd_kernel[grid(d_dout.size), TPB](d_dout, r, b, scale, sr, al, mode == "avg",
                                                      bool(zero_outside), d_arg, d_df)
    return d_df


def roi_align_forward(features, rois, batch, output_size, spatial_scale, sampling_ratio, aligned, mode, zero_outside):
    """RoIAlign: out (K, C, oh, ow) and `saved` = argmax (K, C, oh, ow) int32 (max) or None, as the Numba backend."""
    d_out, d_arg = roi_align_forward_device(features, rois, batch, output_size, spatial_scale, sampling_ratio,
                                            aligned, mode, zero_outside)
    return d_out.copy_to_host(), (None if d_arg is None else d_arg.copy_to_host())


def roi_align_backward(dout, saved, features_shape, rois, batch, output_size, spatial_scale, sampling_ratio, aligned,
                       mode, zero_outside):
    """dout (K, C, oh, ow) -> dfeatures (N, C, H, W), scattered with atomic adds."""
    return roi_align_backward_device(dout, saved, features_shape, rois, batch, output_size, spatial_scale,
                                     sampling_ratio, aligned, mode, zero_outside).copy_to_host()
