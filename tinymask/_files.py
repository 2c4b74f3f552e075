"""Writing files so that a crash never leaves a half-written one where a good one was: the one place that does it.

*Test:* `tests/test_weights.py` (the .npz writer), `tests/test_train.py` (checkpoints).

`atomic_write` writes into a temporary file beside the target, flushes and fsyncs it, then renames it over the target
with `os.replace`, which either happens entirely or not at all: a reader sees the old file or the new one, never a
mixture. Every file tinymask writes for the user (weights, configs, JSON reports, logs) goes through it.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile

import numpy as np


def write_error(path, error: OSError, note: str = "") -> OSError:
    """An OSError of the same kind whose message names what could not be written and why, e.g.
    "cannot write runs/x/last: No space left on device (the previous checkpoint is intact)"."""
    reason = os.strerror(error.errno) if error.errno else str(error)
    return OSError(error.errno, f"cannot write {os.fspath(path)}: {reason}{note}")


def fsync_dir(path) -> None:
    """Make a rename inside folder `path` durable (POSIX; silently not possible on some file systems)."""
    with contextlib.suppress(OSError):
        fd = os.open(os.fspath(path), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path, write) -> None:
    """Call `write(file)` on a temporary binary file beside `path`, fsync it, then rename it over `path` in one step.

    The new file gets the old one's permissions, or 0644 (an ordinary readable file) when there was none.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as e:  # a read-only or full disk, a missing folder
        raise write_error(path, e) from e
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
        os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)  # mkstemp made it 0600
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never a mixture
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError):  # a full or read-only disk: say which file, and that the old one is intact
            raise write_error(path, e, " (the file there before, if any, is unchanged)") from e
        raise
    fsync_dir(directory)


def write_text(path, text: str) -> None:
    """`text` to `path` as UTF-8, atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path, data, *, indent: int | None = 2) -> None:
    """`data` to `path` as JSON, atomically; creates the folder. NumPy scalars and arrays become numbers and lists."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    write_text(path, json.dumps(data, indent=indent, default=_jsonable))


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
