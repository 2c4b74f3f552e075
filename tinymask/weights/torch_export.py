"""Writing `torch.save` files without PyTorch: a state dict that `torch.load(path, weights_only=True)` reads.

*Code:* `tinymask/weights/torch_export.py` · *Test:* `tests/test_export.py` · *Reader:* `torch_format.py`

    save_torch_state_dict("model.pth", torchvision_state_dict(params))   # what `tinymask export` does

This is the reader's format (`torch_format.py` explains it: a zip of raw storages and a pickle) written the other way.
The file holds one folder, `archive/`, with these records, in this order:

    archive/data.pkl                   the state dict, pickled (protocol 2) with the numbers left out
    archive/byteorder                  "little": the byte order of every storage below
    archive/data/0, archive/data/1 ... one storage per tensor: its elements, C order, little-endian, nothing else
    archive/version                    "3\\n": the format version torch.save writes
    archive/.data/serialization_id     40 decimal digits; torch's are random, ours a hash of the content, so that
                                       the same parameters always give the same file

What the pickle says
--------------------
An `OrderedDict` of {name: tensor}, every tensor the call torch.save itself writes,

    torch._utils._rebuild_tensor_v2(storage, 0, size, stride, False, OrderedDict())

(storage offset 0, C-order strides in elements, no gradient, no hooks), where `storage` is a *persistent id*, the
tuple `("storage", torch.FloatStorage, "0", "cpu", numel)` followed by the opcode `BINPERSID`: storage type (a legacy
typename that names the dtype: `FloatStorage` float32, `LongStorage` int64, ...), record key, device, element count.
Every global in it (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`, `torch.<Type>Storage`) is on
`torch.load(weights_only=True)`'s allowlist, and on our reader's.

How it is pickled without PyTorch. Python's pickler writes a tensor-like object by calling its `__reduce__`, which
answers "call this with these arguments": `(rebuild, (storage, 0, size, stride, False, OrderedDict()))`. It writes
the callable as `GLOBAL module name`, but only after importing the module to check that the name really is that
object, which fails here: torch need not be installed, and if it is, our stand-in is not its function. So `_Global`
stands in for a torch name and `_Pickler` writes it as `GLOBAL module name` without the import. That needs the
pure-Python pickler (`pickle._Pickler`, whose `save_global` can be replaced; the C one cannot be), which is fast
enough: the pickle holds only names and a few numbers per tensor. `Pickler.persistent_id` turns each `_StorageRef`
into its persistent id. The globals are memoized, so each is written once and later uses are `BINGET`s, as torch's
pickles do.

Alignment. torch.save starts every record's bytes at a multiple of 64 from the start of the file, padding the zip
local header's "extra" field (header id `FB`, filler `Z`s) to get there; `torch.load(mmap=True)` maps the file and
views each storage in place, and an aligned storage gives aligned tensors. We pad the same way. We do not write the
`.format_version` and `.storage_alignment` records of PyTorch >= 2.4: `.format_version` "1" allows torch to compute
record offsets itself on the assumption that miniz (torch's zip writer) wrote the file, with a data descriptor after
every record, which Python's `zipfile` does not write; without it torch asks the zip directory for every offset.

Choices made here
-----------------
- dtypes: float32, float64, float16, int64, int32, uint8 and bool, each kept as it is (tinymask's reader returns
  float16 as float32).
- one storage per tensor, never shared; every tensor contiguous.
- `torchvision_state_dict` adds BatchNorm's `num_batches_tracked` counter (an int64 0) after every `running_var`,
  as torchvision's `model.state_dict()` has them when its backbone uses `nn.BatchNorm2d` (`maskrcnn_resnet50_fpn`
  without pretrained weights). `FrozenBatchNorm2d` (with pretrained weights) has no such counter and deletes it on
  load, so the file loads with `strict=True` into either. It also lists the entries in torchvision's order: the
  backbone, then the RPN, then the RoI heads; module by module.
"""
from __future__ import annotations

import collections
import hashlib
import io
import pickle
import struct
import zipfile
from collections.abc import Mapping

import numpy as np

from tinymask._files import atomic_write

#: NumPy dtype -> the legacy storage typename torch.save uses for it in persistent ids.
STORAGE_TYPES = {
    "float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage", "int64": "LongStorage",
    "int32": "IntStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
}
FOLDER = "archive"  # what torch.save names the folder when it writes to a file object
ALIGNMENT = 64  # record data starts at a multiple of this (torch.save's default storage alignment)
_LOCAL_HEADER = 30  # bytes of a zip local file header before the file name
_PAD_HEADER_ID = 0x4246  # "FB": the extra-field id torch.save pads with
_ZIP64_EXTRA = 20  # zipfile appends this many bytes of zip64 extra field to the local header of a large record


# ---------------------------------------------------------------------------------------------------------------
# The pickle: stand-ins that the pickler writes as torch's globals, calls and persistent ids.
# ---------------------------------------------------------------------------------------------------------------

class _Global:
    """Pickled as the opcode `GLOBAL module name`, whether or not `module` can be imported here."""

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    def __call__(self, *args):  # the pickler wants the callable of a reduce to be callable; never called
        raise TypeError(f"{self.module}.{self.name} is a stand-in for pickling only")

    def __reduce__(self):
        return self.name  # a string means "pickle me as a global": `_Pickler.save_global` writes it


_REBUILD_TENSOR = _Global("torch._utils", "_rebuild_tensor_v2")
_STORAGE_GLOBALS = {dtype: _Global("torch", typename) for dtype, typename in STORAGE_TYPES.items()}


class _StorageRef:
    """A storage record; pickled as its persistent id ("storage", torch.<Type>Storage, key, "cpu", numel)."""

    def __init__(self, dtype: str, key: str, numel: int):
        self.dtype, self.key, self.numel = dtype, key, numel


class _TensorRef:
    """A contiguous tensor over a whole storage; pickled as `_rebuild_tensor_v2(storage, 0, size, stride, ...)`."""

    def __init__(self, storage: _StorageRef, shape: tuple):
        self.storage, self.shape = storage, shape

    def __reduce__(self):
        stride, step = [], 1
        for n in reversed(self.shape):  # C order, in elements: the last axis moves fastest
            stride.insert(0, step)
            step *= max(n, 1)
        return _REBUILD_TENSOR, (self.storage, 0, self.shape, tuple(stride), False, collections.OrderedDict())


class _Pickler(pickle._Pickler):  # the pure-Python pickler: its save_global can be replaced (see the docstring)
    def save_global(self, obj, name=None):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
            self.memoize(obj)  # the next use of the same stand-in is a BINGET
        else:
            super().save_global(obj, name)

    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            return ("storage", _STORAGE_GLOBALS[obj.dtype], obj.key, "cpu", obj.numel)
        return None


def _pickle_state_dict(arrays: dict[str, np.ndarray]) -> bytes:
    """data.pkl for {name: array}: storage i (record `data/i`) holds the i-th array."""
    state = collections.OrderedDict(
        (name, _TensorRef(_StorageRef(a.dtype.name, str(i), int(a.size)), tuple(int(n) for n in a.shape)))
        for i, (name, a) in enumerate(arrays.items()))
    f = io.BytesIO()
    _Pickler(f, protocol=2).dump(state)
    return f.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# The zip: records aligned as torch.save aligns them.
# ---------------------------------------------------------------------------------------------------------------

def _write_record(zf: zipfile.ZipFile, f, name: str, data) -> None:
    """Append the uncompressed record `FOLDER/name` holding the bytes `data`, its first byte at a multiple of 64."""
    data = memoryview(data).cast("B")
    zinfo = zipfile.ZipInfo(f"{FOLDER}/{name}")  # date 1980-01-01: the same content gives the same file
    zinfo.compress_type = zipfile.ZIP_STORED
    zinfo.file_size = data.nbytes  # zipfile decides from it whether the record needs zip64 fields
    zip64 = data.nbytes * 1.05 > zipfile.ZIP64_LIMIT  # zipfile's own test (ZipFile._open_to_write)
    start = f.tell() + _LOCAL_HEADER + len(zinfo.filename.encode("utf-8")) + 4 + (_ZIP64_EXTRA if zip64 else 0)
    pad = -start % ALIGNMENT  # the data begins after the header, the name, our extra field and zip64's
    zinfo.extra = struct.pack("<HH", _PAD_HEADER_ID, pad) + b"Z" * pad
    with zf.open(zinfo, "w", force_zip64=zip64) as out:
        out.write(data)


def _write_archive(f, arrays: dict[str, np.ndarray]) -> None:
    """The whole file, written into the open binary file `f` (seekable: its position gives the alignment)."""
    digest = hashlib.blake2b(digest_size=16)
    pickled = _pickle_state_dict(arrays)
    digest.update(pickled)
    with zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        _write_record(zf, f, "data.pkl", pickled)
        _write_record(zf, f, "byteorder", b"little")
        for i, a in enumerate(arrays.values()):
            raw = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).reshape(-1)  # (numel,) little-endian
            digest.update(raw.view(np.uint8))
            _write_record(zf, f, f"data/{i}", raw.view(np.uint8))
        _write_record(zf, f, "version", b"3\n")
        _write_record(zf, f, ".data/serialization_id", str(int(digest.hexdigest(), 16)).zfill(40).encode("ascii"))


def _check_params(params: Mapping) -> dict[str, np.ndarray]:
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a dict of name -> array, got {type(params).__name__}")
    for name, value in params.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"parameter name {name!r} is not allowed (empty or not a string)")
        if not isinstance(value, np.ndarray):
            raise TypeError(f"params[{name!r}] must be a NumPy array, got {type(value).__name__}")
        if value.dtype.name not in STORAGE_TYPES:
            raise TypeError(f"params[{name!r}] has dtype {value.dtype}; a torch export supports "
                            f"{', '.join(STORAGE_TYPES)}")
    return dict(params)


def save_torch_state_dict(path, params: Mapping) -> None:
    """Write `params` ({name: array}) as a state dict file that `torch.load(path, weights_only=True)` reads.

    path:    the file to write (`.pth` by convention), atomically: a crash leaves the old file or none, never half.
    params:  {name: array}, in the order the file should list them; dtypes in `STORAGE_TYPES`, kept as they are.

    `torch.load` returns an OrderedDict of CPU tensors with these names, shapes, dtypes and values;
    `tinymask.weights.torch_format.load_torch_state_dict` reads it back bit for bit. PyTorch is not needed.
    Raises TypeError / ValueError naming a bad entry, OSError naming the file when it cannot be written.
    """
    arrays = _check_params(params)
    atomic_write(path, lambda f: _write_archive(f, arrays))


# ---------------------------------------------------------------------------------------------------------------
# tinymask's parameters as torchvision's state dict.
# ---------------------------------------------------------------------------------------------------------------

_TOP_LEVEL_ORDER = ("backbone", "rpn", "roi_heads")  # the order of GeneralizedRCNN's submodules


def torchvision_state_dict(params: Mapping) -> dict[str, np.ndarray]:
    """`params` as torchvision's `model.state_dict()` lists them: `num_batches_tracked` added, torchvision's order.

    params: {name: array} with torchvision's names (tinymask's own); not modified.
    Returns a new dict holding the same arrays, plus an int64 zero `<bn>.num_batches_tracked` right after every
    `<bn>.running_var` (see the module docstring), with the modules in torchvision's order: backbone, rpn,
    roi_heads, and within each, module by module in the order `params` first names them.
    """
    modules: dict[str, list[str]] = {}  # module path -> its entries, in the order params gives them
    for name in params:
        modules.setdefault(name.rpartition(".")[0], []).append(name)
    top = lambda module: (_TOP_LEVEL_ORDER.index(module.split(".")[0])  # noqa: E731
                          if module.split(".")[0] in _TOP_LEVEL_ORDER else len(_TOP_LEVEL_ORDER))
    out = {}
    for module in sorted(modules, key=top):  # a stable sort: the order within each part is kept
        for name in modules[module]:
            out[name] = params[name]
        if f"{module}.running_var" in params and f"{module}.num_batches_tracked" not in params:
            out[f"{module}.num_batches_tracked"] = np.zeros((), np.int64)  # () int64, as torch's BatchNorm2d
    return out
