"""Input checks shared by every layer.

Each check raises an error that names the argument and the problem (its shape, its dtype, NaN), so that a wrong call
fails at the layer's door with a sentence a reader can act on, never deep inside NumPy.
"""
from __future__ import annotations

import numpy as np

FLOAT_DTYPES = (np.float32, np.float64)


def as_pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints (height, width) as a pair; stride, padding and dilation accept both."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, (int, np.integer)) for v in value):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints (height, width), got {value!r}")


def check_float_array(x, name: str, ndim: int | None = None, shape_doc: str = "") -> np.ndarray:
    """`x` must be a float32 or float64 NumPy array with `ndim` dimensions (`shape_doc` says which, e.g. "(N, C, H, W)")."""
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(x).__name__}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32 or float64, got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        doc = f" {shape_doc}" if shape_doc else ""
        raise ValueError(f"{name} must have {ndim} dimensions{doc}, got shape {x.shape}")
    return x


def check_same_dtype(**arrays) -> None:
    """All the given arrays (None skipped) share one float dtype; mixing float32 and float64 is refused, not cast."""
    named = [(k, v) for k, v in arrays.items() if v is not None]
    dtypes = {v.dtype for _, v in named}
    if len(dtypes) > 1:
        listing = ", ".join(f"{k} is {v.dtype}" for k, v in named)
        raise TypeError(f"arrays must share one dtype, but {listing}")


def check_finite(x: np.ndarray, name: str) -> None:
    """Refuse NaN and infinity, naming where the first one is."""
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"{name} contains NaN or infinity (first at index {tuple(int(i) for i in bad)})")
