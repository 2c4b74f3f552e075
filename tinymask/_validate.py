"""Input checks shared by every layer: what is always checked, and what only in finite-check mode.

Each check raises an error that names the argument and the problem, so that a wrong call fails at the layer's door
with a sentence a reader can act on, never deep inside NumPy.

**Always checked** (cheap: they look at types and shapes, not at the numbers):

- every array argument of a layer's forward: that it is a NumPy array (`TypeError`), float32 or float64
  (`TypeError`), with the right number of dimensions and matching channels or features (`ValueError`), and that the
  arrays of one call share one dtype (`TypeError`); settings such as stride, padding and kernel size (`ValueError`);
- every layer's backward: that `dout` is a float32 or float64 array (`TypeError`) of exactly the shape of its
  forward's output (`ValueError`: "conv2d_backward: dout has shape ... but conv2d_forward's output was ...").
  `check_dout` does it; each backward finds the output's shape in its cache;
- NaN and infinity only where a value comes from the caller and a NaN is always a mistake, whatever the mode:
  images (`tinymask.box_logic.resize.check_image`), RoIs (`tinymask.layers.roi_align.check_roi_inputs`), boxes,
  box deltas and scores (`tinymask/box_logic/`) — `ValueError`, via `check_finite`.

**Only in finite-check mode** (off by default: it reads every number of every array, on the hot path, and the
training loop already stops at a non-finite loss): NaN and infinity in every float array that a layer's forward
takes and returns (`out`), every `dout` and every gradient a backward returns, and the inputs and outputs of the
losses, raising `FloatingPointError` that names the layer, the array and the first bad index. Turn it on with
`tinymask.layers.finite_checks` — `finite_checks(True)` for the rest of the process, `with finite_checks():` for a
block — or with the environment variable `TINYMASK_CHECK_FINITE=1` before the import. `finite_checked` is the
decorator that each layer's public forward and backward carries for it.
"""
from __future__ import annotations

import functools
import inspect
import os

import numpy as np

FLOAT_DTYPES = (np.float32, np.float64)

_FINITE_CHECKS = os.environ.get("TINYMASK_CHECK_FINITE", "").strip().lower() not in ("", "0", "false", "no", "off")


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
    """Refuse NaN and infinity, naming where the first one is (always on: for caller data such as images and boxes)."""
    if not np.all(np.isfinite(x)):
        bad = np.argwhere(~np.isfinite(x))[0]
        raise ValueError(f"{name} contains NaN or infinity (first at index {tuple(int(i) for i in bad)})")


def check_dout(dout, expected_shape, layer: str) -> np.ndarray:
    """The upstream gradient of `layer` (a backward's name, e.g. "conv2d_backward"): a float32/float64 array with
    the shape of its forward's output, `expected_shape`, which the backward reads from its cache. Returns `dout`.

    A float dtype other than the forward's is accepted: each backward computes in the dtype it documents.
    """
    forward = layer.replace("_backward", "_forward")
    if not isinstance(dout, np.ndarray):
        raise TypeError(f"{layer}: dout must be a NumPy array (the gradient of {forward}'s output), "
                        f"got {type(dout).__name__}")
    if dout.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{layer}: dout must be float32 or float64, got dtype {dout.dtype}")
    if dout.shape != tuple(expected_shape):
        raise ValueError(f"{layer}: dout has shape {dout.shape} but {forward}'s output was {tuple(expected_shape)}")
    return dout


# --------------------------------------------------------------------------------------------------------------------
# Finite-check mode
# --------------------------------------------------------------------------------------------------------------------

class finite_checks:  # lower case: it is used like a function, as torch.set_grad_enabled is
    """Turn finite-check mode on (`finite_checks()`, `finite_checks(True)`) or off (`finite_checks(False)`).

    Called on its own it switches the mode for the rest of the process; used as `with finite_checks():` it switches
    it for the block and restores the previous setting afterwards (blocks nest). In the mode every layer's public
    forward and backward, and every loss, refuses NaN and infinity in its float arrays with a `FloatingPointError`
    (see this module's docstring). `finite_checks.enabled()` says whether the mode is on.
    """

    def __init__(self, enabled: bool = True):
        global _FINITE_CHECKS
        self.previous = _FINITE_CHECKS
        _FINITE_CHECKS = bool(enabled)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        global _FINITE_CHECKS
        _FINITE_CHECKS = self.previous

    @staticmethod
    def enabled() -> bool:
        return _FINITE_CHECKS


def _require_finite(value, name: str, layer: str) -> None:
    """FloatingPointError at the first NaN or infinity of a float array (or of a list or dict of them)."""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _require_finite(v, f"{name}[{i}]", layer)
    elif isinstance(value, dict):
        for key, v in value.items():
            _require_finite(v, f"{name}[{key!r}]", layer)
    elif isinstance(value, np.ndarray) and np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
        bad = np.argwhere(~np.isfinite(value))
        index = tuple(int(i) for i in bad[0])
        raise FloatingPointError(f"{layer}: {name} contains {value[index]} at index {index} ({len(bad)} non-finite "
                                 f"values of {value.size}; finite checks are on)")
    elif isinstance(value, (float, np.floating)) and not np.isfinite(value):
        raise FloatingPointError(f"{layer}: {name} is {value} (finite checks are on)")


def finite_checked(*returns: str):
    """Decorator for a layer's public forward and backward, and a loss: in finite-check mode, check the float arrays
    it takes (by parameter name; a backward's `cache` and a named layer's `params` dict are skipped: the layer
    inside checks the weights it uses) and the ones it returns, named by `returns` ("cache" is skipped):
    `@finite_checked("out", "cache")` on a forward, `@finite_checked("dx", "dw", "db")` on a backward,
    `@finite_checked("dx")` on one that returns one array. With the mode off it only calls the function.
    """
    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def checked(*args, **kwargs):
            if not _FINITE_CHECKS:
                return fn(*args, **kwargs)
            for name, value in signature.bind(*args, **kwargs).arguments.items():
                if name not in ("cache", "params"):
                    _require_finite(value, name, fn.__name__)
            result = fn(*args, **kwargs)
            for name, value in zip(returns, result if len(returns) > 1 else (result,)):
                if name != "cache":
                    _require_finite(value, name, fn.__name__)
            return result
        return checked
    return decorate
