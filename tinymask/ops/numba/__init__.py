"""The "numba" backend: the hot loops as CPU kernels, compiled by Numba, under the names of tinymask/ops/numpy.py.

One file per op; each opens with its simplest correct kernel and, where there is one, follows it with the tuned
kernel the backend runs:

    common.py             the layers' scalar maths compiled (bin geometry, bilinear and resize weights);
                          `threads_for`: small calls run on one thread
    convolution.py        im2col, col2im (simple prange loops; the GEMM between them is BLAS), conv2d_forward/backward
    roi_align.py          simple: one output element per step, from the definition (roi_align_forward_simple, ...);
                          tuned: A_y F A_xᵀ channels last, one block of CHANNEL_BLOCK channels per worker
    roi_align_tables.py   the sample geometry as per-call tables, for the tuned RoIAlign kernels
    roi_pool.py           RoIPool, forward and backward
    masks_and_nms.py      mask pasting and the greedy NMS loop

Each kernel is `@njit(cache=True)`: compiled on first call, then loaded from the on-disk cache (`NUMBA_CACHE_DIR`,
default `__pycache__` next to the kernel's file).

**Parallel loops and races.** `parallel=True` + `prange` splits a loop over the cores, which is safe only when no two
iterations write the same element. Every `prange` here runs over an axis whose writes are disjoint:

- forward passes own their outputs: one RoI (or one RoI and channel) writes only `out[k]`, one mask only `out[k]`;
- backward passes scatter-add, and two RoIs may overlap on the map, so they are **not** split over RoIs: they are
  split over channels (feature planes `(n, c)`, or blocks of channels), and each iteration walks all RoIs one after
  another. Every add into a given element happens on one thread, in a fixed order: no race, and deterministic;
- im2col and col2im own a plane per iteration; the tuned avg RoIAlign kernels own a block of channels.

**Wrappers** normalise the inputs (C-contiguous arrays, int64 indices, float64 RoIs, Python scalars) and allocate the
large outputs with NumPy (whose allocator asks for huge pages), so that each kernel is compiled once per float dtype.
"""
from __future__ import annotations

from tinymask.ops.numba.common import SMALL_WORK
from tinymask.ops.numba.convolution import col2im, conv2d_backward, conv2d_forward, im2col, matmul
from tinymask.ops.numba.masks_and_nms import nms, paste_masks
from tinymask.ops.numba.roi_align import (CHANNEL_BLOCK, roi_align_backward, roi_align_backward_simple,
                                          roi_align_forward, roi_align_forward_simple)
from tinymask.ops.numba.roi_pool import roi_pool_backward, roi_pool_forward

NAME = "numba"

__all__ = ["NAME", "CHANNEL_BLOCK", "SMALL_WORK", "im2col", "col2im", "matmul", "conv2d_forward", "conv2d_backward",
           "roi_align_forward", "roi_align_backward", "roi_align_forward_simple", "roi_align_backward_simple",
           "roi_pool_forward", "roi_pool_backward", "paste_masks", "nms"]
