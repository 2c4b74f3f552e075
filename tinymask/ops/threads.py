"""How many threads the hot loops use: NumPy's BLAS and Numba's parallel kernels.

*Test:* `tests/test_cli.py::test_threads_can_be_limited_after_numpy_loads`

On a machine whose cores are busy with other work (a laptop running a browser, a CI runner, several training runs at
once), a multi-threaded BLAS can be several times slower than one thread: its threads wait for each other.
`limit_threads(1)` avoids that. It acts at once, even after NumPy is imported: threadpoolctl finds the BLAS that
NumPy loaded (OpenBLAS, MKL, BLIS) and sets its thread count through the library's own API, and Numba's count is set
with `numba.set_num_threads`. The environment variables are set too, so that processes started from here (the
ablations' workers) begin with the same limit.
"""
from __future__ import annotations

import os
import sys

#: The environment variables BLAS libraries and Numba read when they load.
THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def thread_environment(n: int) -> dict:
    """{variable: "n"} for a child process that should start with `n` threads."""
    return {name: str(n) for name in THREAD_VARIABLES}


def limit_threads(n: int) -> None:
    """Use `n` threads in NumPy's BLAS and in Numba's kernels, from now on, in this process and its children."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"the number of threads must be a positive integer, got {n!r}")
    os.environ.update(thread_environment(n))  # read by a BLAS or Numba that loads later, and by child processes
    if "numpy" in sys.modules:  # a BLAS already loaded ignores the variables: tell it directly
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n)  # applies now and stays (only its context-manager form restores)
    if "numba" in sys.modules:
        import numba

        numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def blas_threads() -> list[int]:
    """The thread count of every BLAS library loaded in this process (threadpoolctl's view), e.g. [1]."""
    from threadpoolctl import threadpool_info

    return [lib["num_threads"] for lib in threadpool_info() if lib.get("user_api") == "blas"]
