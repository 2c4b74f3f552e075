"""The "numpy" backend: the reference every compiled kernel is tested against.

Nothing is re-implemented here. Each kernel is the NumPy code of the layer file that defines the concept, gathered
under the names and signatures that numba_ops.py and cuda_ops.py share (listed in tinymask/ops/__init__.py), so a
reader who wants the maths opens the layer file, and a test that wants "the reference" imports this module.
"""
from __future__ import annotations

import numpy as np

from tinymask.layers.im2col import col2im, im2col
from tinymask.layers.roi_align import roi_align_backward_numpy as roi_align_backward
from tinymask.layers.roi_align import roi_align_forward_numpy as roi_align_forward
from tinymask.layers.roi_pool import roi_pool_backward_numpy as roi_pool_backward
from tinymask.layers.roi_pool import roi_pool_forward_numpy as roi_pool_forward
from tinymask.box_logic.mask_paste import paste_masks_numpy as paste_masks
from tinymask.box_logic.nms import nms_numpy as nms

NAME = "numpy"
IMPLICIT_GEMM_CONV = False  # conv2d_forward builds cols with im2col and keeps it for the backward

matmul = np.matmul  # BLAS: the GEMM of the convolutions stays here on every CPU backend


def conv2d_implicit_gemm(x_pad, w, stride, dilation):
    """Convolution of an already padded input: x_pad (N, C, Hp, Wp), w (F, C, kH, kW) -> out (N, F, Ho, Wo).

    The explicit form, `W @ im2col(x_pad)`; the CUDA kernel of the same name never builds `cols` (see cuda_ops.py).
    """
    N = x_pad.shape[0]
    F, C, kh, kw = w.shape
    cols = im2col(x_pad, (kh, kw), stride, dilation)  # (N, C·kH·kW, Ho·Wo)
    Ho = (x_pad.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    Wo = (x_pad.shape[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    return np.matmul(w.reshape(F, C * kh * kw), cols).reshape(N, F, Ho, Wo)


__all__ = ["NAME", "im2col", "col2im", "matmul", "conv2d_implicit_gemm", "roi_align_forward", "roi_align_backward",
           "roi_pool_forward", "roi_pool_backward", "paste_masks", "nms"]
