"""The kernels behind the backend switch: one module per backend, the same functions in each.

    numpy_ops.py   the reference: the layer files' own NumPy code, exposed under the kernel signatures below
    numba_ops.py   the same functions as Numba CPU kernels
    cuda_ops.py    the same functions as CUDA kernels (numba-cuda)

A layer fetches its inner routine with `get_ops(backend)` and calls it; validation, the public API and the
readable maths stay in the layer file. Every module defines `NAME` and every function in `KERNELS`, with these
signatures (shapes in the layer files' docstrings):

    im2col(x_pad, kernel, stride, dilation) -> cols                                   tinymask/layers/im2col.py
    col2im(cols, padded_shape, kernel, stride, dilation, out_hw) -> x_pad
    matmul(a, b) -> a @ b   (np.matmul on CPU: BLAS does the GEMM; a tiled kernel on CUDA)
    conv2d_implicit_gemm(x_pad, w, stride, dilation) -> out                           (im2col and GEMM in one)
    conv2d_implicit_gemm_backward(dout, x_pad, w, stride, dilation) -> (dx_pad, dw)  (backends with
                                                       IMPLICIT_GEMM_CONV only)
    roi_align_forward(features, rois, batch, output_size, spatial_scale, sampling_ratio, aligned, mode,
                      zero_outside) -> (out, saved)                                  tinymask/layers/roi_align.py
    roi_align_backward(dout, saved, features_shape, rois, batch, output_size, spatial_scale, sampling_ratio,
                       aligned, mode, zero_outside) -> dfeatures
    roi_pool_forward(features, rois, batch, output_size, spatial_scale) -> (out, argmax)   tinymask/layers/roi_pool.py
    roi_pool_backward(dout, argmax, batch, features_shape) -> dfeatures
    paste_masks(padded, int_boxes, image_hw) -> (N, H, W)                            tinymask/box_logic/mask_paste.py
    nms(boxes, scores, iou_threshold) -> keep                                        tinymask/box_logic/nms.py

`IMPLICIT_GEMM_CONV` says how `conv2d_forward` runs on a backend: False (CPU), im2col + `matmul`, keeping `cols` for
the backward; True (CUDA), `conv2d_implicit_gemm`, keeping the padded input, and `conv2d_implicit_gemm_backward`.

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
    "im2col", "col2im", "matmul", "conv2d_implicit_gemm",
    "roi_align_forward", "roi_align_backward", "roi_pool_forward", "roi_pool_backward",
    "paste_masks", "nms",
)


def get_ops(backend: str | None = None):
    """The kernel module of `backend` (default: the selected one, see tinymask/ops/backend.py)."""
    return importlib.import_module(f"tinymask.ops.{resolve_backend(backend)}_ops")
