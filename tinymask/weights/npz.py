"""tinymask's own weights format: an `.npz` (a zip of `.npy` files) plus one JSON metadata entry.

*Test:* `tests/test_weights.py`

`.npz` files are read with `allow_pickle=False` (they hold arrays and one JSON string, never code) and written
atomically (`tinymask._files.atomic_write`), so a crash never leaves a half-written file where a good one was.
"""
from __future__ import annotations

import json
import zipfile
from collections.abc import Mapping

import numpy as np

from tinymask._files import atomic_write
from tinymask.weights.errors import WeightsFileError, existing_file

#: The reserved `.npz` entry holding the metadata dict as a JSON string.
METADATA_KEY = "__tinymask_metadata__"



def _check_npz_params(params: Mapping) -> dict[str, np.ndarray]:
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of name -> array, got {type(params).__name__}")
    for name, value in params.items():
        if not isinstance(name, str) or not name or name == METADATA_KEY:
            raise ValueError(f"parameter name {name!r} is not allowed (empty, not a string, or the reserved "
                             f"{METADATA_KEY!r})")
        if not isinstance(value, np.ndarray) or value.dtype.hasobject:
            raise TypeError(f"params[{name!r}] must be a NumPy array of numbers, got "
                            f"{getattr(value, 'dtype', type(value).__name__)}")
    return dict(params)



def _write_npz(f, arrays: dict) -> None:
    """What `np.savez` writes: one uncompressed `<name>.npy` member per array."""
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, array in arrays.items():
            with zf.open(name + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, array, allow_pickle=False)



def save_npz(path, params: Mapping, metadata: dict | None = None) -> None:
    """Write `params` ({name: array}) and a JSON-serialisable `metadata` dict to `path` as an .npz, atomically.

    Dtypes are kept as they are. The metadata is stored as a JSON string under the reserved key `METADATA_KEY`.
    Bad names, object arrays and unserialisable metadata are refused before anything is written.
    """
    arrays = _check_npz_params(params)
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    arrays[METADATA_KEY] = np.array(json.dumps(metadata or {}))  # a 0-d unicode array: no pickle needed
    atomic_write(path, lambda f: _write_npz(f, arrays))



def load_npz(path) -> tuple[dict[str, np.ndarray], dict]:
    """Read an .npz written by `save_npz` (or `np.savez`) without unpickling anything: (params, metadata).

    metadata is {} when the file has none. Raises FileNotFoundError or WeightsFileError (naming the file).
    """
    path = existing_file(path)
    try:
        data = np.load(path, allow_pickle=False)
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise WeightsFileError(f"{path} holds a single array (.npy), not an .npz archive of named arrays")
        with data:
            params = {name: data[name] for name in data.files if name != METADATA_KEY}
            metadata = json.loads(str(data[METADATA_KEY][()])) if METADATA_KEY in data.files else {}
    except WeightsFileError:
        raise
    except Exception as e:
        raise WeightsFileError(f"{path} is not a readable .npz file: {type(e).__name__}: {e}") from e
    if not isinstance(metadata, dict):
        raise WeightsFileError(f"{path}: metadata is not a JSON object")
    return params, metadata
