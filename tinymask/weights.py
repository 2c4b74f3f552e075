"""Reading and writing weights without PyTorch: `torch.save` files, `.npz` files, old key spellings, shape checks.

*Code:* `tinymask/weights.py` · *Test:* `tests/test_weights.py`

tinymask keeps a model's parameters in one flat `dict[str, np.ndarray]` whose keys are torchvision's
`maskrcnn_resnet50_fpn` state-dict names (`backbone.body.conv1.weight`, ...). This module reads torchvision's
checkpoints into such a dict without importing PyTorch, and stores tinymask's own weights as `.npz` files.

What `torch.save(model.state_dict(), "m.pth")` writes
-----------------------------------------------------
Since PyTorch 1.6 the file is an uncompressed zip archive holding one folder (named after the file, here `m/`; some
writers use `archive/`):

    m/data.pkl             the state dict itself, pickled, with the numbers of every tensor left out
    m/data/0, m/data/1 ... one record per storage: the raw bytes of a block of tensor memory, nothing else
    m/byteorder            "little" or "big": the order of those bytes (older files lack it; they are little)
    m/version, m/.format_version, m/.storage_alignment, m/.data/serialization_id   bookkeeping, ignored here

A tensor is a *view* of a storage: a flat buffer plus `storage_offset`, `size` and `stride` (in elements), so that
element `[i, j]` lives at `storage[offset + i * stride[0] + j * stride[1]]`. Several tensors may view one storage (a
slice of a bigger tensor, a transpose); the file holds that storage once.

Pickle in one paragraph
-----------------------
A pickle is a little program for a stack machine. Most opcodes push data (ints, strings, tuples) or fill dicts; two
make it powerful and dangerous: `GLOBAL module name` pushes any importable object, and `REDUCE` calls what lies below
its argument tuple. That is how a tensor comes back: `torch.save` pickles each one as the call

    torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad, backward_hooks)

and the very same two opcodes would pickle `os.system("rm -rf ~")`. The unpickler resolves every global through one
method, `find_class(module, name)` (the `EXT` opcodes go through it too), so **`find_class` is the whole security
boundary**. Ours answers from an allowlist (`_ALLOWED` below) with small stand-ins written here, imports nothing, and
refuses every other name with `UnsafePickleError` before a single call has run.

A *persistent id* is pickle's hook for objects kept outside the pickle. Where a storage belongs, `data.pkl` holds a
tuple such as `("storage", torch.FloatStorage, "0", "cpu", 6)` — storage type, record name, device, element count —
followed by the `BINPERSID` opcode, which hands the tuple to the unpickler's `persistent_load`. Ours returns a
placeholder tagged with the storage's dtype and record name; its bytes are read from `m/data/0` when needed.

The tensor is then rebuilt from bytes: `np.frombuffer` views them as a 1-D array of the storage's dtype and byte
order, and `np.lib.stride_tricks.as_strided` lays `size` and `stride` over it (times the item size: NumPy strides are
in bytes). `as_strided` trusts its arguments and would read memory past the buffer, so the extent is checked first.
The view is then copied, so every returned array owns its memory and is C-contiguous, even where tensors shared a
storage in the file.

Other formats. PyTorch 2.x pickles `uint16/32/64` tensors with `_rebuild_tensor_v3` over an untyped (byte) storage,
the dtype given as a global like `torch.uint16`: accepted. The *legacy* format (before PyTorch 1.6, or
`_use_new_zipfile_serialization=False`) is not a zip but five pickles in a row — a magic number, a protocol number
(1001), a dict describing the writer's machine, the object, the list of storage keys — followed by each storage's
bytes (an int64 element count, then the data, both little-endian). The same restricted unpickler reads all five
pickles. The tar format of PyTorch's first releases is refused with a message saying so.

Choices made here
-----------------
- dtypes: float16 and bfloat16 become float32 (NumPy has no bfloat16: its 16 bits are the top half of a float32);
  every other dtype is kept, in native byte order.
- `num_batches_tracked`, BatchNorm's int64 step counter, is dropped by default: tinymask's norm layers never read it,
  and torchvision's own `FrozenBatchNorm2d` (used by the pretrained `maskrcnn_resnet50_fpn`) drops it on load too.
  `keep_num_batches_tracked=True` keeps it.
- Wrapped checkpoints: torchvision's reference training scripts save `{"model": ..., "optimizer": ..., "epoch": ...,
  "args": argparse.Namespace(...)}`. When exactly one entry is a state dict it is returned; otherwise `key=` picks
  one. To open such files, `argparse.Namespace` and `collections.Counter` (in `MultiStepLR`'s state) are on the
  allowlist too, as inert stand-ins that run no code.
- Old key spellings (older torchvision, and its pretrained COCO file) are renamed by `upgrade_legacy_keys`.
- `.npz` files are read with `allow_pickle=False` (they hold arrays and one JSON string, never code) and written
  atomically: into a temporary file beside the target, flushed and fsync'ed, then renamed over it with `os.replace`,
  which either happens entirely or not at all, so a crash never leaves a half-written file where a good one was.
"""
from __future__ import annotations

import _compat_pickle  # the Python 2 -> 3 name table pickle itself uses
import collections
import contextlib
import functools
import io
import json
import operator
import os
import pickle
import re
import struct
import tempfile
import zipfile
from collections.abc import Mapping

import numpy as np

TORCH_EXTENSIONS = (".pth", ".pt")
NPZ_EXTENSIONS = (".npz",)
#: The reserved `.npz` entry holding the metadata dict as a JSON string.
METADATA_KEY = "__tinymask_metadata__"


class WeightsFileError(ValueError):
    """A weights file that cannot be read: corrupt, truncated, or in a format this module does not know."""


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle asked for a global outside the allowlist; nothing in it was run."""


class ParamsMismatchError(ValueError):
    """Parameter names or shapes differ from what a model expects."""


# ---------------------------------------------------------------------------------------------------------------
# The allowlist: what each permitted global of a torch pickle becomes here.
# ---------------------------------------------------------------------------------------------------------------

#: `torch.FloatStorage` etc. (in persistent ids) -> the dtype of their elements.
_STORAGE_DTYPES = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16", "CharStorage": "int8",
    "ByteStorage": "uint8", "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
#: `torch.float32` etc. (the dtype argument of `_rebuild_tensor_v3`), named like NumPy's dtypes.
_TORCH_DTYPES = ("float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8",
                 "uint8", "uint16", "uint32", "uint64", "bool", "complex64", "complex128")


class _DType:
    """What `torch.FloatStorage` or `torch.uint16` becomes: only the name of an element dtype."""

    def __init__(self, name: str):
        self.name = name


class _Storage:
    """A storage record: element dtype and record key. Its bytes are read later, only if a returned tensor uses it."""

    def __init__(self, dtype: str, key: str):
        self.dtype, self.key = dtype, key


class _Tensor:
    """A tensor as the pickle describes it (offset, size, stride in elements); `_to_array` turns it into an array."""

    def __init__(self, storage, offset, size, stride, dtype: str):
        self.storage, self.offset, self.size, self.stride, self.dtype = storage, offset, size, stride, dtype


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    if not isinstance(storage, _Storage):
        raise pickle.UnpicklingError("a tensor whose storage is not a storage record")
    return _Tensor(storage, storage_offset, size, stride, storage.dtype)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype, metadata=None):
    if not isinstance(storage, _Storage) or not isinstance(dtype, _DType):
        raise pickle.UnpicklingError("a tensor whose storage or dtype is malformed")
    return _Tensor(storage, storage_offset, size, stride, dtype.name)  # bytes of an untyped storage, read as dtype


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data  # an nn.Parameter is its tensor plus a requires_grad flag we do not need


def _device(kind, index=None) -> str:
    return str(kind) if index is None else f"{kind}:{index}"


class _Namespace:
    """Inert stand-in for `argparse.Namespace` (the `args` of torchvision's reference checkpoints): attributes only."""

    def __repr__(self):
        return f"Namespace({', '.join(f'{k}={v!r}' for k, v in vars(self).items())})"


def _counter(mapping=()) -> dict:
    return dict(mapping)  # `collections.Counter` pickles as Counter(dict); a plain dict holds the same counts


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,  # a plain container: calling it runs no user code
    ("collections", "Counter"): _counter,
    ("argparse", "Namespace"): _Namespace,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch", "device"): _device,
    ("torch", "UntypedStorage"): _DType("uint8"),
    ("torch.storage", "UntypedStorage"): _DType("uint8"),
    **{("torch", name): _DType(dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): _DType(name) for name in _TORCH_DTYPES},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler whose globals come only from `_ALLOWED`, and whose persistent ids become `_Storage` records."""

    def __init__(self, file, source: str, storages: dict | None = None):
        super().__init__(file)
        self.source = source
        self.storages = storages  # record key -> _Storage, shared by every tensor that views it; None: no ids allowed

    def find_class(self, module, name):
        # Protocol-2 pickles spell some Python 3 names the Python 2 way (`__builtin__.eval`); translate as pickle does.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return _ALLOWED[(module, name)]
        except (KeyError, TypeError):
            hint = ""
            if str(module).startswith(("torch.nn.", "torchvision.", "__torch__")):
                hint = " (this looks like a whole pickled model: save model.state_dict() instead)"
            raise UnsafePickleError(f"refusing to load global '{module}.{name}' from {self.source}: "
                                    f"only tensor data is accepted{hint}") from None

    def persistent_load(self, pid):
        if self.storages is None:
            raise pickle.UnpicklingError("a persistent id where none was expected")
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] in ("storage", b"storage")):
            raise pickle.UnpicklingError(f"unknown persistent id {str(pid)[:80]}")
        tag, key = pid[1], pid[2]  # pid = ("storage", storage type, key, location, numel[, legacy view])
        if not isinstance(tag, _DType):
            raise pickle.UnpicklingError(f"persistent id {str(pid)[:80]} names no storage type")
        if len(pid) > 5 and pid[5] is not None:
            raise WeightsFileError(f"{self.source} uses storage views (early PyTorch versions): not supported")
        key = key.decode("ascii") if isinstance(key, bytes) else str(key)
        return self.storages.setdefault(key, _Storage(tag.name, key))


# ---------------------------------------------------------------------------------------------------------------
# The two torch.save formats. Each returns the chosen state dict as arrays.
# ---------------------------------------------------------------------------------------------------------------

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # the first pickle of a legacy file (torch/serialization.py, MAGIC_NUMBER)
_LEGACY_PROTOCOL = 1001


def _archive_folder(zf: zipfile.ZipFile, source: str) -> str:
    """The folder holding `data.pkl` ("m/" for m.pth), with its trailing slash."""
    folders = [n[: -len("data.pkl")] for n in zf.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
    if len(folders) != 1:
        raise WeightsFileError(f"{source} is a zip archive but not a torch.save file (no single <folder>/data.pkl)")
    if folders[0] + "constants.pkl" in zf.namelist():
        raise WeightsFileError(f"{source} is a TorchScript archive (torch.jit.save); load it with PyTorch and "
                               "save model.state_dict() instead")
    return folders[0]


def _load_zip(path: str, select) -> dict:
    with zipfile.ZipFile(path) as zf:
        folder = _archive_folder(zf, path)
        names = set(zf.namelist())
        byteorder = zf.read(folder + "byteorder").decode() if folder + "byteorder" in names else "little"
        storages = {}
        obj = _RestrictedUnpickler(io.BytesIO(zf.read(folder + "data.pkl")), path, storages).load()
        return _to_arrays(select(obj), lambda s: zf.read(f"{folder}data/{s.key}"), byteorder)


def _load_legacy(path: str, select) -> dict:
    with open(path, "rb") as f:
        if _RestrictedUnpickler(f, path).load() != _LEGACY_MAGIC:
            raise WeightsFileError(f"{path} is neither a zip archive nor a legacy torch.save file (no magic number)")
        if _RestrictedUnpickler(f, path).load() != _LEGACY_PROTOCOL:
            raise WeightsFileError(f"{path}: unknown legacy torch.save protocol")
        _RestrictedUnpickler(f, path).load()  # sys_info: byte order and C type sizes of the writer
        storages = {}
        obj = _RestrictedUnpickler(f, path, storages).load()
        data = {}
        for key in _RestrictedUnpickler(f, path).load():  # then each storage's bytes, in this order
            storage = storages[str(key)]
            (numel,) = struct.unpack("<q", f.read(8))
            if numel < 0:
                raise WeightsFileError(f"{path}: storage {storage.key!r} has a negative size")
            data[storage.key] = f.read(numel * _itemsize(storage.dtype))
    return _to_arrays(select(obj), lambda s: data[s.key], "little")  # the legacy writer always wrote little-endian


# ---------------------------------------------------------------------------------------------------------------
# From described tensors to arrays.
# ---------------------------------------------------------------------------------------------------------------

def _itemsize(dtype: str) -> int:
    return 2 if dtype == "bfloat16" else np.dtype(dtype).itemsize


def _wire_dtype(dtype: str, byteorder: str) -> np.dtype:
    """The NumPy dtype of the stored bytes: `dtype` in the file's byte order (bfloat16 read as its uint16 bits)."""
    if byteorder not in ("little", "big"):
        raise WeightsFileError(f"unknown byte order {byteorder!r}")
    base = np.dtype(np.uint16 if dtype == "bfloat16" else dtype)
    return base.newbyteorder("<" if byteorder == "little" else ">")


def _to_array(t: _Tensor, raw: bytes, byteorder: str, name: str) -> np.ndarray:
    """Copy the tensor `t` out of its storage's bytes `raw`, into a native-order array (float16/bfloat16 -> float32)."""
    size = tuple(operator.index(n) for n in t.size)
    stride = tuple(operator.index(s) for s in t.stride)
    offset = operator.index(t.offset)
    if len(size) != len(stride) or min(size + stride + (offset,)) < 0:
        raise WeightsFileError(f"tensor {name!r}: malformed size {size}, stride {stride} or offset {offset}")
    wire = _wire_dtype(t.dtype, byteorder)
    flat = np.frombuffer(raw, dtype=wire)  # (numel,) a view of the storage's bytes
    native = wire.newbyteorder("=")
    if 0 in size:
        out = np.empty(size, dtype=native)
    else:
        last = offset + sum((n - 1) * s for n, s in zip(size, stride))  # the farthest element the view touches
        if last >= flat.size:
            raise WeightsFileError(f"tensor {name!r} reads element {last} of a storage of {flat.size} elements")
        view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=[s * wire.itemsize for s in stride])
        out = np.array(view, dtype=native, order="C")  # copy: own memory, C order, native byte order
    if t.dtype == "bfloat16":
        return (out.astype(np.uint32) << 16).view(np.float32)  # the 16 bits are the top half of a float32
    if t.dtype == "float16":
        return out.astype(np.float32)
    return out


def _to_arrays(state: dict, read, byteorder: str) -> dict[str, np.ndarray]:
    """Arrays for the described tensors of `state`; `read(storage)` gives a storage's bytes (each read once)."""
    raw = {}
    out = {}
    for name, t in state.items():
        if t.storage.key not in raw:
            raw[t.storage.key] = read(t.storage)
        out[name] = _to_array(t, raw[t.storage.key], byteorder, name)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Finding the state dict in a checkpoint.
# ---------------------------------------------------------------------------------------------------------------

def _is_state_dict(obj) -> bool:
    return isinstance(obj, Mapping) and all(isinstance(k, str) and isinstance(v, _Tensor) for k, v in obj.items())


def _describe(obj) -> str:
    if isinstance(obj, Mapping):
        keys = list(obj)
        return f"a dict with keys {keys[:8]}{' ...' if len(keys) > 8 else ''}"
    return f"a {type(obj).__name__}"


def _select_state_dict(obj, source: str, key: str | None, keep_num_batches_tracked: bool) -> dict:
    """The state dict in `obj`: `obj` itself, `obj[key]`, or the only entry of `obj` that is a state dict."""
    if key is not None:
        if not (isinstance(obj, Mapping) and key in obj and _is_state_dict(obj[key])):
            raise WeightsFileError(f"{source} has no state dict under {key!r}; its top level is {_describe(obj)}")
        obj = obj[key]
    elif not _is_state_dict(obj):
        found = [k for k, v in obj.items() if v and _is_state_dict(v)] if isinstance(obj, Mapping) else []
        if len(found) != 1:
            what = (f"several state dicts, under {found}" if found
                    else f"no state dict: its top level is {_describe(obj)}")
            raise WeightsFileError(f"{source} holds {what}; choose one with load_torch_state_dict(path, key=...)")
        obj = obj[found[0]]
    return {k: v for k, v in obj.items()
            if keep_num_batches_tracked or not (k == "num_batches_tracked" or k.endswith(".num_batches_tracked"))}


def load_torch_state_dict(path, *, key: str | None = None, keep_num_batches_tracked: bool = False,
                          upgrade_keys: bool = True) -> dict[str, np.ndarray]:
    """Read a file written by `torch.save(model.state_dict(), path)` without PyTorch.

    path:                      a zip-format (PyTorch >= 1.6) or legacy-format torch.save file.
    key:                       for a wrapped checkpoint, the entry holding the state dict (e.g. "model"); by default
                               the file's object itself if it is a state dict, else its only entry that is one.
    keep_num_batches_tracked:  keep BatchNorm's int64 step counters (dropped by default).
    upgrade_keys:              rename old torchvision spellings with `upgrade_legacy_keys` (default).

    Returns {name: array}, arrays in native byte order, each owning its memory; float16 and bfloat16 become float32.
    Raises FileNotFoundError, UnsafePickleError (a global outside the allowlist; nothing was run) or
    WeightsFileError (corrupt or unsupported file); each message names the file.
    """
    path = _existing_file(path)
    select = functools.partial(_select_state_dict, source=path, key=key,
                               keep_num_batches_tracked=keep_num_batches_tracked)
    try:
        if zipfile.is_zipfile(path):
            state = _load_zip(path, select)
        elif _is_tar(path):
            raise WeightsFileError(f"{path} uses the tar format of PyTorch's first releases: not supported; "
                                   "re-save it with a recent PyTorch")
        else:
            state = _load_legacy(path, select)
    except (UnsafePickleError, WeightsFileError):
        raise
    except Exception as e:  # anything else while decoding untrusted bytes means a corrupt file
        raise WeightsFileError(f"{path} is not a readable torch.save file: {type(e).__name__}: {e}") from e
    return upgrade_legacy_keys(state) if upgrade_keys else state


def _is_tar(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(262)[257:262] == b"ustar"


# ---------------------------------------------------------------------------------------------------------------
# Old key spellings.
# ---------------------------------------------------------------------------------------------------------------

#: (pattern, new name) for the three renames torchvision itself makes in `_load_from_state_dict` when a checkpoint's
#: module version is missing or < 2 (its pretrained `maskrcnn_resnet50_fpn` COCO file is such a checkpoint):
#: - `torchvision/ops/feature_pyramid_network.py`, `FeaturePyramidNetwork`: each inner/layer block became a
#:   `Conv2dNormActivation` (a Sequential with the conv at index 0): `{block}.{i}.{w}` -> `{block}.{i}.0.{w}`;
#: - `torchvision/models/detection/rpn.py`, `RPNHead`: the conv became a Sequential of `conv_depth` such blocks:
#:   `conv.{w}` -> `conv.0.0.{w}`;
#: - `torchvision/models/detection/mask_rcnn.py`, `MaskRCNNHeads`: the named convs `mask_fcn1..4` became numbered
#:   blocks: `mask_fcn{i+1}.{w}` -> `{i}.0.{w}`.
#: torchvision decides by the version saved with the module; here the spelling decides, since an old name can never
#: be a current one. Any prefix before the module (e.g. "module." from DistributedDataParallel) is kept as it is.
_LEGACY_KEY_RULES = (
    (re.compile(r"^((?:.*\.)?fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$"), lambda m: f"{m[1]}.0.{m[2]}"),
    (re.compile(r"^((?:.*\.)?rpn\.head\.conv)\.(weight|bias)$"), lambda m: f"{m[1]}.0.0.{m[2]}"),
    (re.compile(r"^((?:.*\.)?roi_heads\.mask_head\.)mask_fcn([1-9]\d*)\.(weight|bias)$"),
     lambda m: f"{m[1]}{int(m[2]) - 1}.0.{m[3]}"),
)


def upgrade_key(name: str) -> str:
    """The current torchvision spelling of a parameter name (the name itself if it is not an old spelling)."""
    for pattern, new in _LEGACY_KEY_RULES:
        m = pattern.match(name)
        if m:
            return new(m)
    return name


def upgrade_legacy_keys(state_dict: Mapping) -> dict:
    """A new dict, in the same order, with old torchvision key spellings renamed (see `_LEGACY_KEY_RULES`).

    Values are the same objects. Raises ValueError if an old name and its current name are both present.
    """
    out = {}
    for name, value in state_dict.items():
        new = upgrade_key(name)
        if new in out or (new != name and new in state_dict):
            raise ValueError(f"both {name!r} and its current spelling {new!r} are present; cannot tell which to keep")
        out[new] = value
    return out


# ---------------------------------------------------------------------------------------------------------------
# tinymask's own format: .npz (a zip of .npy files) plus a JSON metadata entry.
# ---------------------------------------------------------------------------------------------------------------

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


def _atomic_write(path, write) -> None:
    """Call `write(file)` on a temporary file beside `path`, fsync it, then rename it over `path` in one step."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # the bytes are on disk before the rename makes them visible
        os.chmod(tmp, os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644)  # mkstemp made it 0600
        os.replace(tmp, path)  # atomic: readers see the old file or the new one, never a mixture
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX; not possible everywhere)
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def save_npz(path, params: Mapping, metadata: dict | None = None) -> None:
    """Write `params` ({name: array}) and a JSON-serialisable `metadata` dict to `path` as an .npz, atomically.

    Dtypes are kept as they are. The metadata is stored as a JSON string under the reserved key `METADATA_KEY`.
    Bad names, object arrays and unserialisable metadata are refused before anything is written.
    """
    arrays = _check_npz_params(params)
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict or None, got {type(metadata).__name__}")
    arrays[METADATA_KEY] = np.array(json.dumps(metadata or {}))  # a 0-d unicode array: no pickle needed
    _atomic_write(path, lambda f: _write_npz(f, arrays))


def load_npz(path) -> tuple[dict[str, np.ndarray], dict]:
    """Read an .npz written by `save_npz` (or `np.savez`) without unpickling anything: (params, metadata).

    metadata is {} when the file has none. Raises FileNotFoundError or WeightsFileError (naming the file).
    """
    path = _existing_file(path)
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


# ---------------------------------------------------------------------------------------------------------------
# One entry point, and a check against a model's expected shapes.
# ---------------------------------------------------------------------------------------------------------------

def _existing_file(path) -> str:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"weights file not found: {path}")
    if not os.path.isfile(path):
        raise WeightsFileError(f"{path} is not a file")
    return path


def load_weights(path) -> dict[str, np.ndarray]:
    """Parameters from a `.pth`/`.pt` (torch.save) or `.npz` (save_npz) file, chosen by the file's extension.

    For the options (a checkpoint's key, `num_batches_tracked`) or an .npz's metadata, call
    `load_torch_state_dict` or `load_npz` directly.
    """
    path = _existing_file(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in TORCH_EXTENSIONS:
        return load_torch_state_dict(path)
    if ext in NPZ_EXTENSIONS:
        return load_npz(path)[0]
    raise ValueError(f"cannot tell the format of {path} from its extension {ext!r}: "
                     f"expected one of {', '.join(TORCH_EXTENSIONS + NPZ_EXTENSIONS)}")


def _listing(items: list[str], show: int) -> str:
    more = f", ... and {len(items) - show} more" if len(items) > show else ""
    return ", ".join(items[:show]) + more


def check_params_match(params: Mapping, expected, *, show: int = 5) -> None:
    """Raise ParamsMismatchError listing missing names, unexpected names and wrong shapes, all in one message.

    params:    {name: array}.
    expected:  {name: shape}, or (name, shape) pairs such as the entries of a state-dict key list.
    show:      how many of each kind to name (the counts are always complete).
    """
    pairs = expected.items() if isinstance(expected, Mapping) else expected
    expected = {name: tuple(int(n) for n in shape) for name, shape in pairs}
    missing = [k for k in expected if k not in params]
    unexpected = [k for k in params if k not in expected]
    wrong = [f"{k} is {tuple(np.shape(params[k]))}, expected {expected[k]}" for k in expected
             if k in params and tuple(np.shape(params[k])) != expected[k]]
    if not (missing or unexpected or wrong):
        return
    lines = [f"parameters do not match the model: {len(missing)} missing, {len(unexpected)} unexpected, "
             f"{len(wrong)} with the wrong shape"]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            lines.append(f"  {label} ({len(items)}): {_listing(items, show)}")
    if any(upgrade_key(k) != k for k in unexpected):
        lines.append("  hint: some names are old torchvision spellings; upgrade them with upgrade_legacy_keys()")
    if any(k.endswith("num_batches_tracked") for k in missing):
        lines.append("  hint: load_torch_state_dict drops num_batches_tracked unless keep_num_batches_tracked=True")
    raise ParamsMismatchError("\n".join(lines))
