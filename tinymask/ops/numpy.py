"""The "numpy" backend: the reference every compiled kernel is tested against.

Nothing is re-implemented here. Each kernel is the NumPy code of the layer file that defines the concept, gathered
under the names and signatures that tinymask/ops/numba/ and tinymask/ops/cuda/ share (listed in
tinymask/ops/__init__.py), so a reader who wants the maths opens the layer file, and a test that wants "the
reference" calls `get_ops("numpy")`.
"""
from __future__ import annotations

import numpy as np

from tinymask.box_logic.mask_paste import paste_masks_numpy as paste_masks
from tinymask.box_logic.nms import nms_numpy as nms
from tinymask.layers.conv import conv2d_backward_numpy as conv2d_backward
from tinymask.layers.conv import conv2d_forward_numpy as conv2d_forward
from tinymask.layers.im2col import col2im, im2col
from tinymask.layers.roi_align import roi_align_backward_numpy as roi_align_backward
from tinymask.layers.roi_align import roi_align_forward_numpy as roi_align_forward
from tinymask.layers.roi_pool import roi_pool_backward_numpy as roi_pool_backward
from tinymask.layers.roi_pool import roi_pool_forward_numpy as roi_pool_forward

NAME = "numpy"

matmul = np.matmul  # BLAS: the GEMM of the convolutions stays here on every CPU backend

__all__ = ["NAME", "im2col", "col2im", "matmul", "conv2d_forward", "conv2d_backward", "roi_align_forward",
           "roi_align_backward", "roi_pool_forward", "roi_pool_backward", "paste_masks", "nms"]
