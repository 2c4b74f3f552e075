"""The one switch that picks where tinymask's hot loops run: `numpy`, `numba` or `cuda`.

Every layer is written once, in NumPy, and that NumPy code is the reference a reader follows. A few inner routines
are loops that NumPy runs slowly or in many small pieces (the convolution's im2col / col2im gather and scatter,
RoIAlign's bilinear sampling and its scatter-add backward, RoIPool, mask pasting, NMS). Those routines, and only
those, have compiled twins in `tinymask/ops/`: one module (or package, one file per op) per backend, each defining the
same functions with the same signatures (the layout of tinygrad's early `ops_cpu.py` / `ops_gpu.py`). This file
decides which one a layer gets.

    backend      kernels                    what runs
    ---------    -----------------------    ----------------------------------------------------------------
    "numpy"      tinymask/ops/numpy.py      the reference: the layer files' own NumPy code (always available)
    "numba"      tinymask/ops/numba/        CPU kernels, `@njit(cache=True)`, `prange` over disjoint writes
    "cuda"       tinymask/ops/cuda/         GPU kernels (numba-cuda); NumPy arrays in and out, copied per call

Choosing a backend, from the most specific to the least:

    conv2d_forward(x, w, b, padding=1, backend="numba")    # 1. the `backend=` argument of a layer call
    with use_backend("numba"): ...                           # 2. a block (restored afterwards)
    set_backend("numba")                                     # 2'. for the rest of the program
    TINYMASK_BACKEND=numba python train.py                   # 3. the environment variable
                                                             # 4. otherwise "numpy", the reference

A backward pass runs on the backend its forward ran on: the forward writes its backend's name into the cache,
because what a kernel keeps for the backward (say, RoIAlign's arg-max sample indices) differs from what the NumPy
code keeps (its interpolation matrices).

The switch is a plain module-level variable, not thread-local: set it once, at the start of a program or a test.
For the CUDA simulator (`NUMBA_ENABLE_CUDASIM=1`), set that variable in the environment before Python starts; this
library never sets it.
"""
from __future__ import annotations

import importlib.util
import os
from contextlib import contextmanager
from functools import lru_cache

BACKENDS = ("numpy", "numba", "cuda")
ENV_VAR = "TINYMASK_BACKEND"
DEFAULT = "numpy"

_selected: str | None = None  # set by set_backend / use_backend; None: the environment variable, then DEFAULT


def _check_name(name, where: str = "backend") -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"{where} must be one of {BACKENDS}, got {name!r}")
    return name


def _numba_status() -> tuple[bool, str]:
    if importlib.util.find_spec("numba") is None:
        return False, "numba not installed (pip install numba)"
    import numba

    return True, f"numba {numba.__version__}, {numba.config.NUMBA_NUM_THREADS} threads, CPU kernels"


def _cuda_status() -> tuple[bool, str]:
    if importlib.util.find_spec("numba") is None:
        return False, "numba not installed (pip install numba numba-cuda)"
    if importlib.util.find_spec("numba_cuda") is None:
        return False, "numba-cuda not installed (pip install 'tinymask[cuda]')"
    try:
        from numba import cuda
    except Exception as e:  # a broken install: say what broke rather than crash `tinymask info`
        return False, f"numba-cuda does not import: {type(e).__name__}: {e}"
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return True, "CUDA simulator (NUMBA_ENABLE_CUDASIM=1): kernels run as Python, for tests at tiny sizes"
    try:
        if not cuda.is_available():
            return False, "no CUDA GPU found (or no CUDA driver)"
        device = cuda.get_current_device()
        name = device.name.decode() if isinstance(device.name, bytes) else str(device.name)
        return True, f"{name}, compute capability {device.compute_capability[0]}.{device.compute_capability[1]}"
    except Exception as e:
        return False, f"CUDA driver error: {type(e).__name__}: {e}"


def _numpy_status() -> tuple[bool, str]:
    import numpy as np

    return True, f"NumPy {np.__version__}, the reference"


@lru_cache(maxsize=None)
def _status(name: str) -> tuple[bool, str]:
    """Whether one backend can run in this process, and why (asked once per process: probing a GPU is slow)."""
    return {"numpy": _numpy_status, "numba": _numba_status, "cuda": _cuda_status}[name]()


def available_backends() -> dict[str, tuple[bool, str]]:
    """`{name: (available, reason)}` for every backend, e.g. `{"cuda": (False, "no CUDA GPU found ...")}`."""
    return {name: _status(name) for name in BACKENDS}


def describe_backends() -> str:
    """A few lines for `tinymask info`: every backend, whether it can run here and why, and which one is selected."""
    try:
        current = get_backend()
    except ValueError as e:  # a bad TINYMASK_BACKEND should be reported, not crash the report
        current = f"(invalid: {e})"
    lines = [f"backend: {current}   (set with TINYMASK_BACKEND, tinymask.ops.backend.set_backend or backend=)"]
    for name, (ok, reason) in available_backends().items():
        lines.append(f"  {name:6s} {'yes' if ok else 'no ':3s}  {reason}")
    return "\n".join(lines)


def get_backend() -> str:
    """The selected backend: the last `set_backend` / innermost `use_backend`, else $TINYMASK_BACKEND, else numpy."""
    if _selected is not None:
        return _selected
    env = os.environ.get(ENV_VAR, "").strip()
    return _check_name(env, f"${ENV_VAR}") if env else DEFAULT


def resolve_backend(backend: str | None = None) -> str:
    """The backend a call should use: `backend` when given, else `get_backend()`; raises if it cannot run here."""
    name = _check_name(backend) if backend is not None else get_backend()
    if name != "numpy":
        ok, reason = _status(name)
        if not ok:
            raise RuntimeError(f"backend {name!r} is not available: {reason}")
    return name


def set_backend(name: str) -> None:
    """Select a backend for every later call that does not pass `backend=`. Raises if it cannot run here."""
    global _selected
    _selected = resolve_backend(_check_name(name))


@contextmanager
def use_backend(name: str):
    """`with use_backend("numba"): ...` runs the block on that backend and restores the previous choice afterwards."""
    global _selected
    previous = _selected
    set_backend(name)
    try:
        yield name
    finally:
        _selected = previous
