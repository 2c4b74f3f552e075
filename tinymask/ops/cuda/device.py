"""What the CUDA kernel files share: launch sizes, host↔device copies, and device arrays made on the device.

NumPy arrays go in and come out of every kernel wrapper: each call copies its inputs to the GPU, launches, and copies
the result back. That keeps the layer code unchanged and makes every kernel testable on its own, at the price of a
transfer per call. RoIAlign also takes arrays already on the GPU (`on_device`; roi_align.py).
"""
from __future__ import annotations

import numpy as np
from numba import cuda, float32, float64

TPB = 128  # threads per block of the 1-D launches
# 1-D launches use grid-stride loops, so any grid covers any array; 8192 blocks of 128 threads are a few times what
# a large GPU holds at once (an H100: 132 multiprocessors × 16 resident blocks of 128 threads), so none sits idle.
MAX_BLOCKS = 8192
NUMBA_FLOAT = {np.dtype(np.float32): float32, np.dtype(np.float64): float64}


def grid(n):
    """Blocks for a 1-D grid-stride launch over n items."""
    return max(1, min((n + TPB - 1) // TPB, MAX_BLOCKS))


def to_device(a, dtype=None):
    """A host array copied to the GPU, C-contiguous (and cast to `dtype` when given)."""
    return cuda.to_device(np.ascontiguousarray(a, dtype=dtype))


def kernel_for(table, make, dtype):
    """`make(numba float type)`, built once per dtype and kept in `table`: kernels with shared-memory arrays need
    their dtype when they are compiled."""
    dtype = np.dtype(dtype)
    if dtype not in table:
        table[dtype] = make(NUMBA_FLOAT[dtype])
    return table[dtype]


@cuda.jit(cache=True)
def _fill_kernel(a, value):
    """a[:] = value, for a 1-D device array (a fresh device array holds garbage, and its host copy would cost a
    transfer)."""
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] = value


def device_full(shape, value, dtype):
    """A new device array of `shape` filled with `value`, without a host-to-device copy."""
    d = cuda.device_array(shape, dtype=dtype)
    if d.size:
        _fill_kernel[grid(d.size), TPB](d.reshape(d.size), value)
    return d


def on_device(a, dtype, name):
    """A GPU array as it is (a Numba device array, or any `__cuda_array_interface__` object such as a PyTorch CUDA
    tensor or a CuPy array: no copy), or a host array copied over once. The kernels are compiled per dtype and
    layout, so a device array must already have the dtype and be C-contiguous; dtype None: float32 or float64,
    whichever the array has."""
    if hasattr(a, "copy_to_host"):  # a Numba device array (or the simulator's stand-in)
        d, on_gpu = a, True
    elif hasattr(a, "__cuda_array_interface__"):  # another library's GPU array: viewed, not copied
        d, on_gpu = cuda.as_cuda_array(a), True
    else:
        d, on_gpu = np.asarray(a), False
    if dtype is None and d.dtype not in NUMBA_FLOAT:
        raise TypeError(f"{name} must be float32 or float64, got {d.dtype.name}")
    dtype = d.dtype if dtype is None else np.dtype(dtype)
    if not on_gpu:
        return to_device(d, dtype)
    if d.dtype != dtype or not d.is_c_contiguous():
        raise TypeError(f"{name} on the GPU must be a C-contiguous {dtype.name} array, got {d.dtype.name}"
                        + ("" if d.is_c_contiguous() else ", not C-contiguous"))
    return d
