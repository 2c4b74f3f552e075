"""The "cuda" backend: the same kernels as tinymask/ops/numba/, written for a GPU with numba-cuda.

One file per op; each opens with its simplest correct kernel and, where there is one, follows it with the tuned
kernel the backend runs:

    device.py          launch sizes, host↔device copies, device arrays filled on the device (`on_device`)
    gemm.py            simple: one thread per output element (matmul_simple); tuned: 16×16 shared-memory tiles (matmul)
    convolution.py     simple: im2col, the simple GEMM, col2im (conv2d_forward_simple, ...); tuned: the implicit
                       GEMM, which gathers each tile of `cols` from the input and never stores it (conv2d_forward, ...)
    roi_align.py       one thread per output element, atomic adds in the backward (the simple form; the only one)
    roi_pool.py        the same for RoIPool
    masks_and_nms.py   mask pasting, one thread per pixel; NMS, the bitmask kernel and a greedy pass on the host

NumPy arrays go in and come out: each call copies its inputs to the GPU, launches, and copies the result back. That
keeps the layer code unchanged and makes every kernel testable on its own, at the price of a transfer per call (a
device-resident pipeline is future work). RoIAlign also has device-resident entry points,
`roi_align_forward_device` / `roi_align_backward_device`, which take and return GPU arrays (the host functions wrap
them); benchmarks/bench_gpu.py times them against torchvision's CUDA kernel. On a machine without a GPU these kernels
run in Numba's CUDA simulator (`NUMBA_ENABLE_CUDASIM=1` in the environment, never set by this library), which
executes each thread as Python: correct, very slow, fine for the tiny shapes of tests/test_cuda_sim.py.

Besides the simulator, every kernel here compiles to PTX for sm_80 with NVVM (tests/test_cuda_sim.py,
`test_kernels_compile_to_ptx`); that is what catches a NumPy function the GPU target lacks (`np.floor`, for one, which
is why `linear_interp_1d` floors with `// 1.0`).
"""
from __future__ import annotations

from tinymask.ops.cuda.convolution import (col2im, conv2d_backward, conv2d_backward_simple, conv2d_forward,
                                           conv2d_forward_simple, im2col)
from tinymask.ops.cuda.device import MAX_BLOCKS, TPB
from tinymask.ops.cuda.gemm import TILE, matmul, matmul_simple
from tinymask.ops.cuda.masks_and_nms import NMS_BITS, nms, paste_masks
from tinymask.ops.cuda.roi_align import (roi_align_backward, roi_align_backward_device, roi_align_forward,
                                         roi_align_forward_device)
from tinymask.ops.cuda.roi_pool import roi_pool_backward, roi_pool_forward

NAME = "cuda"

__all__ = ["NAME", "TPB", "MAX_BLOCKS", "TILE", "NMS_BITS", "im2col", "col2im", "matmul", "matmul_simple",
           "conv2d_forward", "conv2d_backward", "conv2d_forward_simple", "conv2d_backward_simple",
           "roi_align_forward", "roi_align_backward", "roi_align_forward_device", "roi_align_backward_device",
           "roi_pool_forward", "roi_pool_backward", "paste_masks", "nms"]
