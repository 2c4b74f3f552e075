"""Reading `torch.save` files without PyTorch: a zip of raw storages and a pickle, read by a restricted unpickler.

*Code:* `tinymask/weights/torch_format.py` · *Test:* `tests/test_weights.py`

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
- Old key spellings (older torchvision, and its pretrained COCO file) are renamed by `upgrade_legacy_keys`
  (`tinymask/weights/files.py`).
- tinymask's own `.npz` files are read and written by `tinymask/weights/npz.py`.
"""
from __future__ import annotations

import _compat_pickle  # the Python 2 -> 3 name table pickle itself uses
import collections
import functools
import io
import operator
import pickle
import struct
import zipfile
from collections.abc import Mapping

import numpy as np

from tinymask.weights.errors import UnsafePickleError, WeightsFileError, existing_file
from tinymask.weights.keys import upgrade_legacy_keys

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
    path = existing_file(path)
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
