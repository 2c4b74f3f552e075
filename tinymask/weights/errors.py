"""The errors a weights file can raise, and the one check every reader starts with."""
from __future__ import annotations

import os
import pickle


class WeightsFileError(ValueError):
    """A weights file that cannot be read: corrupt, truncated, or in a format tinymask does not know."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allowlist; nothing in it was run."""


class ParamsMismatchError(ValueError):
    """Parameters whose names or shapes do not fit the model they are loaded into."""


def existing_file(path) -> str:
    """`path` as a string, or FileNotFoundError / WeightsFileError when it is missing or not a file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if not os.path.isfile(path):
        raise WeightsFileError(f"{path} is not a file")
    return path
