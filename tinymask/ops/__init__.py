"""The kernels behind the backend switch: one module or package per backend, the same functions in each.

    numpy.py   the reference: the layer files' own NumPy code, exposed under the kernel signatures below
    numba/     the same functions as Numba CPU kernels, one file per op (numba/__init__.py lists them)
    cuda/      the same functions as CUDA kernels (numba-cuda), one file per op (cuda/__init__.py lists them)

A layer fetches its inner routine with `get_ops(backend)` and calls it; validation, the public API and the
readable maths stay in the layer file. Every backend defines `NAME` and every function in `KERNELS`, with these
signatures (shapes in the layer files' docstrings):

    im2col(x_pad, kernel, stride, dilation) -> cols                                   tinymask/layers/im2col.py
    col2im(cols, padded_shape, kernel, stride, dilation, out_hw) -> x_pad
    matmul(a, b) -> a @ b   (np.matmul on CPU: BLAS does the GEMM; a tiled kernel on CUDA)
    conv2d_forward(x_pad, w, stride, dilation) -> (out, saved)                        tinymask/layers/conv.py
    conv2d_backward(dout, saved, w, stride, dilation) -> (dx_pad, dw)
    roi_align_forward(features, rois, batch, output_size, spatial_scale, sampling_ratio, aligned, mode,
                      zero_outside) -> (out, saved)                                  tinymask/layers/roi_align.py
    roi_align_backward(dout, saved, features_shape, rois, batch, output_size, spatial_scale, sampling_ratio,
                       aligned, mode, zero_outside) -> dfeatures
    roi_pool_forward(features, rois, batch, output_size, spatial_scale) -> (out, argmax)   tinymask/layers/roi_pool.py
    roi_pool_backward(dout, argmax, batch, features_shape) -> dfeatures
    paste_masks(padded, int_boxes, image_hw) -> (N, H, W)                            tinymask/box_logic/mask_paste.py
    nms(boxes, scores, iou_threshold) -> keep                                        tinymask/box_logic/nms.py

How a backend computes a kernel is its own choice, made in its own files; a layer never asks. The convolution is the
example: `conv2d_forward` is im2col + one GEMM on the CPU backends (keeping `cols` as `saved`) and an implicit GEMM
on CUDA (keeping the padded input), and `tinymask/layers/conv.py` calls the same two functions on all three.

**Simple and tuned kernels.** A compiled backend may also define `<kernel>_simple`, with the signature of `<kernel>`:
the simplest correct kernel for the same job (one output element per thread or loop iteration, straight from the
definition), which its file shows first, before the tuned kernel that the backend runs. The tests check both
against the reference. Today: `roi_align_forward_simple` / `roi_align_backward_simple` (Numba), `matmul_simple` and
`conv2d_forward_simple` / `conv2d_backward_simple` (CUDA). Where a backend has no `_simple` twin of a kernel, that
kernel is already in its simple form (its file says so).

Inputs arrive validated (the layer checked them). Each compiled wrapper normalises what it is given (C-contiguous
arrays, int64 indices, float64 RoIs, Python scalars), so that each kernel compiles once per float dtype and never
for a stray layout. `saved` is whatever that backend's backward needs; a backward is always run by the backend whose
forward made its `saved`.

The backend modules are imported on first use, so `import tinymask` never imports Numba or touches a GPU.
"""
from __future__ import annotations

import importlib

from tinymask.ops.backend import resolve_backend

KERNELS = (
    "im2col", "col2im", "matmul", "conv2d_forward", "conv2d_backward",
    "roi_align_forward", "roi_align_backward", "roi_pool_forward", "roi_pool_backward",
    "paste_masks", "nms",
)


def get_ops(backend: str | None = None):
    """The kernels of `backend` (default: the selected one, see tinymask/ops/backend.py): the module
    tinymask/ops/numpy.py, or the package tinymask/ops/numba/ or tinymask/ops/cuda/."""
    return importlib.import_module(f"tinymask.ops.{resolve_backend(backend)}")
