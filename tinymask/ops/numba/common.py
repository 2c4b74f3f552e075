"""What the Numba kernel files share: the layers' scalar maths, compiled, and the small-call rule.

The scalar maths is not rewritten: RoIAlign's bin geometry, sample positions and bilinear weights are
`tinymask/layers/roi_align.py`'s `roi_bins_1d`, `sample_coords` and `linear_interp_1d`, and the mask resize weights
are `tinymask/box_logic/bilinear.py`'s `linear_weights`, compiled unchanged (`@njit(cache=True)`). A change to one
of them needs an empty `NUMBA_CACHE_DIR`: Numba keys the cache of a kernel on the file that defines the kernel, not
on the files of the functions it calls.

**Small calls run on one thread.** Waking the other threads of a parallel loop costs tens of microseconds on an idle
machine and milliseconds on a busy one, more than a small loop takes; `threads_for(work)` runs calls with less than
`SMALL_WORK` inner iterations on the calling thread only (gradient checks make thousands of such calls).
"""
from __future__ import annotations

from contextlib import contextmanager

import numba
from numba import njit

from tinymask.box_logic.bilinear import linear_weights
from tinymask.layers.roi_align import linear_interp_1d, roi_bins_1d, sample_coords

bins = njit(cache=True)(roi_bins_1d)  # (lo, hi, scale, n_bins, sampling_ratio, aligned) -> (start, bin_size, grid)
coords = njit(cache=True)(sample_coords)  # (start, bin_size, grid, p, i) -> the sample's coordinate
interp = njit(cache=True)(linear_interp_1d)  # (t, size, zero_outside) -> (low, high, w_low, w_high)
resize_weights = njit(cache=True)(linear_weights)  # (n_in, n_out) -> (i0, i1, w0, w1) arrays

SMALL_WORK = 1 << 15  # inner-loop iterations below which a call runs on one thread


@contextmanager
def threads_for(work):
    """Run the block on one thread when `work` is small (set_num_threads is per calling thread and cheap)."""
    threads = numba.get_num_threads()
    if work >= SMALL_WORK or threads == 1:
        yield
        return
    numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(threads)
