"""Tests for tinymask/weights/files.py: torch.save files read without PyTorch, malicious pickles, key upgrades, .npz files.

Files written by torch itself are used where torch is installed; the same format is also built by hand below (a zip
and a pickle written opcode by opcode through `HandPickler`), so the reader is tested where torch is missing.
"""
import argparse
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tinymask.weights.npz import load_npz, METADATA_KEY, save_npz
from tinymask.weights.errors import ParamsMismatchError, UnsafePickleError, WeightsFileError
from tinymask.weights.files import check_params_match, load_weights
from tinymask.weights.torch_format import load_torch_state_dict
from tinymask.weights.keys import upgrade_legacy_keys


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


# ---- building torch.save files by hand ---------------------------------------------------------------------------

class Global:
    """Pickled as the opcode `GLOBAL module name`, whether or not `module` can be imported here."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle wants the func of a REDUCE to be callable; never called
        raise AssertionError("a stand-in global was called")

    def __reduce__(self):
        return self.name  # a string means "pickle me as a global": HandPickler.save_global writes it


class Call:
    """Pickled as `func(*args)`: the callable, its argument tuple, then the REDUCE opcode."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class StorageRef:
    """Pickled as a persistent id ("storage", torch.<Type>Storage, key, "cpu", numel) + BINPERSID."""

    def __init__(self, key, storage_type, numel):
        self.key, self.storage_type, self.numel = key, storage_type, numel


class HandPickler(pickle._Pickler):  # the pure-Python pickler: its save_global can be replaced
    def __init__(self, file, legacy=False):
        super().__init__(file, protocol=2)
        self.legacy = legacy  # legacy persistent ids carry a sixth entry, the (unused) view metadata

    def save_global(self, obj, name=None):
        if isinstance(obj, Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        else:
            super().save_global(obj, name)

    def persistent_id(self, obj):
        if isinstance(obj, StorageRef):
            pid = ("storage", Global("torch", obj.storage_type), obj.key, "cpu", obj.numel)
            return pid + (None,) if self.legacy else pid
        return None


def hand_pickle(obj, legacy=False) -> bytes:
    import io
    f = io.BytesIO()
    HandPickler(f, legacy).dump(obj)
    return f.getvalue()


STORAGE_TYPES = {"float32": "FloatStorage", "float64": "DoubleStorage", "float16": "HalfStorage",
                 "int64": "LongStorage", "int32": "IntStorage", "uint8": "ByteStorage", "bool": "BoolStorage",
                 "bfloat16": "BFloat16Storage"}


def tensor(key, dtype, numel, size, stride, offset=0):
    """The pickled form of a tensor viewing storage `key`: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""
    import collections
    return Call(Global("torch._utils", "_rebuild_tensor_v2"), StorageRef(key, STORAGE_TYPES[dtype], numel),
                offset, tuple(size), tuple(stride), False, collections.OrderedDict())


def contiguous_strides(shape):
    strides, step = [], 1
    for n in reversed(shape):
        strides.insert(0, step)
        step *= n
    return tuple(strides)


def hand_state_dict(arrays):
    """(pickled object, storages) for {name: contiguous array}, one storage per array, keys "0", "1", ..."""
    obj, storages = {}, {}
    for i, (name, a) in enumerate(arrays.items()):
        obj[name] = tensor(str(i), a.dtype.name, a.size, a.shape, contiguous_strides(a.shape))
        storages[str(i)] = a.astype(a.dtype.newbyteorder("<")).tobytes()
    return obj, storages


def write_torch_zip(path, obj, storages, folder="archive", byteorder="little", pickled=None):
    """A zip in torch.save's layout: folder/data.pkl, folder/data/<key>, folder/byteorder, folder/version."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{folder}/data.pkl", pickled if pickled is not None else hand_pickle(obj))
        zf.writestr(f"{folder}/byteorder", byteorder)
        for key, raw in storages.items():
            zf.writestr(f"{folder}/data/{key}", raw)
        zf.writestr(f"{folder}/version", "3\n")
    return path


LEGACY_HEADER = [0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}]


def write_torch_legacy(path, obj, storages, itemsizes, body=None):
    """The pre-1.6 stream: magic, protocol, sys_info, object, storage keys; then per storage int64 numel + bytes."""
    with open(path, "wb") as f:
        for header in LEGACY_HEADER:
            f.write(pickle.dumps(header, protocol=2))
        f.write(body if body is not None else hand_pickle(obj, legacy=True))
        f.write(pickle.dumps(list(storages), protocol=2))
        for key, raw in storages.items():
            f.write(struct.pack("<q", len(raw) // itemsizes[key]) + raw)
    return path


# ---- files written by torch: round trips --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16", "int64", "int32", "uint8", "bool"])
@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_dtypes_round_trip(torch, tmp_path, dtype, legacy):
    t = (torch.arange(-6, 6).reshape(3, 4) * 1.25).to(getattr(torch, dtype))
    path = tmp_path / "w.pth"
    torch.save({"w": t}, path, _use_new_zipfile_serialization=not legacy)
    out = load_torch_state_dict(path)["w"]
    widened = dtype in ("float16", "bfloat16")  # NumPy has no bfloat16; both become float32
    expected = t.float().numpy() if widened else t.numpy()
    assert out.dtype == (np.float32 if widened else np.dtype(dtype))
    np.testing.assert_array_equal(out, expected)


def test_torch_scalars_and_empty_tensors(torch, tmp_path):
    sd = {"step": torch.tensor(7, dtype=torch.int64), "scale": torch.tensor(0.5, dtype=torch.float64),
          "empty": torch.zeros(0, 3), "empty_narrow": torch.ones(4, 3)[2:2]}
    torch.save(sd, tmp_path / "s.pth")
    out = load_torch_state_dict(tmp_path / "s.pth")
    for name, t in sd.items():
        assert out[name].shape == tuple(t.shape) and out[name].dtype == t.numpy().dtype
        np.testing.assert_array_equal(out[name], t.numpy())


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_torch_strided_views_round_trip(torch, tmp_path, legacy):
    # Views saved as they are: torch stores the shared storage once, with each view's offset and strides.
    big = torch.arange(60, dtype=torch.float32).reshape(5, 12)
    sd = {"big": big, "transposed": big.t(), "slice": big[1:4, 2::3], "column": big[:, 7],
          "expanded": torch.arange(3.0).expand(4, 3), "permuted": torch.randn(2, 3, 4).permute(2, 0, 1)}
    torch.save(sd, tmp_path / "v.pth", _use_new_zipfile_serialization=not legacy)
    out = load_torch_state_dict(tmp_path / "v.pth")
    for name, t in sd.items():
        np.testing.assert_array_equal(out[name], t.numpy())
        assert out[name].flags.c_contiguous and out[name].flags.owndata and out[name].flags.writeable
    out["big"][0, 0] = -1.0  # copies: the arrays that shared a storage no longer do
    assert out["transposed"][0, 0] == 0.0


def test_torch_module_state_dict_and_num_batches_tracked(torch, tmp_path):
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    torch.save(net.state_dict(), tmp_path / "m.pth")
    sd = net.state_dict()
    out = load_torch_state_dict(tmp_path / "m.pth")
    assert list(out) == [k for k in sd if not k.endswith("num_batches_tracked")]  # order kept, counter dropped
    for name, value in out.items():
        np.testing.assert_array_equal(value, sd[name].numpy())
    kept = load_torch_state_dict(tmp_path / "m.pth", keep_num_batches_tracked=True)
    assert kept["1.num_batches_tracked"].dtype == np.int64 and kept["1.num_batches_tracked"].shape == ()


def test_torch_parameters_saved_with_keep_vars(torch, tmp_path):
    net = torch.nn.Linear(3, 2)
    torch.save(net.state_dict(keep_vars=True), tmp_path / "p.pth")  # nn.Parameter objects: _rebuild_parameter
    out = load_torch_state_dict(tmp_path / "p.pth")
    np.testing.assert_array_equal(out["weight"], net.weight.detach().numpy())


def test_torch_reference_checkpoint_is_unwrapped(torch, tmp_path):
    # torchvision's references/detection/train.py saves this dict: model, optimizer, lr_scheduler, args, epoch.
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
    net(torch.ones(1, 3)).sum().backward()
    opt.step()  # creates momentum buffers: tensors outside the model's state dict
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[16, 22])  # milestones: a collections.Counter
    checkpoint = {"model": net.state_dict(), "optimizer": opt.state_dict(), "lr_scheduler": sched.state_dict(),
                  "args": argparse.Namespace(lr=0.02, data_path="/data/coco"), "epoch": 3}
    torch.save(checkpoint, tmp_path / "checkpoint.pth")
    out = load_torch_state_dict(tmp_path / "checkpoint.pth")
    assert list(out) == ["weight", "bias"]
    np.testing.assert_array_equal(out["bias"], net.bias.detach().numpy())


def test_torch_ambiguous_wrapper_needs_a_key(torch, tmp_path):
    a, b = torch.nn.Linear(2, 2).state_dict(), torch.nn.Linear(2, 2).state_dict()
    torch.save({"model": a, "model_ema": b}, tmp_path / "two.pth")
    with pytest.raises(WeightsFileError, match=r"several state dicts.*'model', 'model_ema'.*key="):
        load_torch_state_dict(tmp_path / "two.pth")
    out = load_torch_state_dict(tmp_path / "two.pth", key="model_ema")
    np.testing.assert_array_equal(out["weight"], b["weight"].numpy())
    with pytest.raises(WeightsFileError, match="no state dict under 'optimizer'"):
        load_torch_state_dict(tmp_path / "two.pth", key="optimizer")


def test_torch_file_without_state_dict(torch, tmp_path):
    torch.save([torch.ones(2), 3], tmp_path / "list.pth")
    with pytest.raises(WeightsFileError, match="no state dict: its top level is a list"):
        load_torch_state_dict(tmp_path / "list.pth")


def test_torch_whole_pickled_model_is_refused(torch, tmp_path):
    torch.save(torch.nn.Linear(2, 2), tmp_path / "model.pth")
    with pytest.raises(UnsafePickleError, match=r"refusing to load global 'torch\.nn\..*state_dict\(\) instead"):
        load_torch_state_dict(tmp_path / "model.pth")


def test_hand_built_file_matches_torch_load(torch, tmp_path):
    # The hand-built format below is the real one: torch's own safe loader reads it to the same values.
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(5, dtype=np.int64)}
    path = write_torch_zip(tmp_path / "hand.pth", *hand_state_dict(arrays))
    theirs = torch.load(path, weights_only=True)
    ours = load_torch_state_dict(path)
    for name in arrays:
        np.testing.assert_array_equal(ours[name], theirs[name].numpy())


# ---- hand-built files: no torch needed ----------------------------------------------------------------------------

def test_hand_built_zip_round_trip(tmp_path):
    arrays = {"conv.weight": np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2), "scale": np.array(2.5),
              "half": np.array([1.5, -2.0, 65504.0], dtype=np.float16), "count": np.array(3, dtype=np.int64),
              "mask": np.array([True, False]), "empty": np.zeros((0, 4), dtype=np.float32)}
    path = write_torch_zip(tmp_path / "hand.pth", *hand_state_dict(arrays))
    out = load_torch_state_dict(path)
    assert list(out) == list(arrays)
    for name, a in arrays.items():
        np.testing.assert_array_equal(out[name], a)
        assert out[name].dtype == (np.float32 if a.dtype == np.float16 else a.dtype)


def test_hand_built_views_of_one_storage(tmp_path):
    # One storage of 12 floats (a 3×4 matrix), seen as itself, its transpose and the slice [1:, 1::2].
    base = np.arange(12, dtype=np.float32)
    obj = {"m": tensor("0", "float32", 12, (3, 4), (4, 1)),
           "mT": tensor("0", "float32", 12, (4, 3), (1, 4)),
           "part": tensor("0", "float32", 12, (2, 2), (4, 2), offset=5)}
    out = load_torch_state_dict(write_torch_zip(tmp_path / "v.pth", obj, {"0": base.tobytes()}))
    m = base.reshape(3, 4)
    np.testing.assert_array_equal(out["m"], m)
    np.testing.assert_array_equal(out["mT"], m.T)
    np.testing.assert_array_equal(out["part"], m[1:, 1::2])


def test_hand_built_bfloat16_and_big_endian(tmp_path):
    values = np.array([1.0, -2.5, 3.140625], dtype=np.float32)  # exactly representable in bfloat16
    bf16 = (values.view(np.uint32) >> 16).astype("<u2").tobytes()  # bfloat16 = the top 16 bits of a float32
    obj = {"bf": tensor("0", "bfloat16", 3, (3,), (1,))}
    np.testing.assert_array_equal(load_torch_state_dict(write_torch_zip(tmp_path / "b.pth", obj, {"0": bf16}))["bf"],
                                  values)
    big = np.arange(4, dtype=">f8").tobytes()  # a big-endian writer: the `byteorder` record says so
    obj = {"x": tensor("0", "float64", 4, (4,), (1,))}
    out = load_torch_state_dict(write_torch_zip(tmp_path / "be.pth", obj, {"0": big}, byteorder="big"))["x"]
    np.testing.assert_array_equal(out, np.arange(4.0))
    assert out.dtype == np.float64 and out.dtype.isnative


def test_hand_built_legacy_stream(tmp_path):
    arrays = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array(9, dtype=np.int64)}
    obj, storages = hand_state_dict(arrays)
    path = write_torch_legacy(tmp_path / "old.pth", obj, storages, {"0": 4, "1": 8})
    out = load_torch_state_dict(path)
    for name, a in arrays.items():
        np.testing.assert_array_equal(out[name], a)


def test_loader_does_not_import_torch(tmp_path):
    path = write_torch_zip(tmp_path / "w.pth", *hand_state_dict({"w": np.ones(3, dtype=np.float32)}))
    code = ("import sys; from tinymask.weights.files import load_torch_state_dict; "
            f"assert load_torch_state_dict({str(path)!r})['w'].sum() == 3; assert 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_out_of_bounds_view_is_refused(tmp_path):
    # as_strided would read past the buffer; the loader checks the extent first.
    for size, stride, offset in [((3, 4), (4, 1), 1), ((5,), (3,), 0), ((2,), (-1,), 1)]:
        obj = {"x": tensor("0", "float32", 12, size, stride, offset)}
        path = write_torch_zip(tmp_path / "oob.pth", obj, {"0": np.zeros(12, np.float32).tobytes()})
        with pytest.raises(WeightsFileError, match="'x'"):
            load_torch_state_dict(path)


def test_missing_storage_record_is_a_corrupt_file(tmp_path):
    obj = {"x": tensor("7", "float32", 3, (3,), (1,))}
    path = write_torch_zip(tmp_path / "missing.pth", obj, {})
    with pytest.raises(WeightsFileError, match="missing.pth is not a readable torch.save file"):
        load_torch_state_dict(path)


def test_legacy_key_spellings_are_upgraded_on_load(tmp_path):
    arrays = {"backbone.fpn.inner_blocks.0.weight": np.ones((2, 2, 1, 1), np.float32),
              "rpn.head.conv.bias": np.zeros(2, np.float32)}
    path = write_torch_zip(tmp_path / "old_keys.pth", *hand_state_dict(arrays))
    assert list(load_torch_state_dict(path)) == ["backbone.fpn.inner_blocks.0.0.weight", "rpn.head.conv.0.0.bias"]
    assert list(load_torch_state_dict(path, upgrade_keys=False)) == list(arrays)


# ---- malicious pickles: refused, never run ------------------------------------------------------------------------

class Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


PAYLOADS = {
    "os.system": lambda marker: Evil(os.system, f"touch {marker}"),
    "builtins.eval": lambda marker: Evil(eval, f"open({str(marker)!r}, 'w').close()"),
    "subprocess.Popen": lambda marker: Evil(subprocess.Popen, ["touch", str(marker)]),
}


def evil_file(kind, path, payload):
    if kind == "raw":  # just the pickle, as a .pth
        path.write_bytes(pickle.dumps(payload, protocol=2))
    elif kind == "zip":  # torch's layout, the payload as data.pkl
        write_torch_zip(path, None, {}, pickled=pickle.dumps(payload, protocol=2))
    elif kind == "legacy":  # a valid legacy header, the payload as the object
        write_torch_legacy(path, None, {}, {}, body=pickle.dumps(payload, protocol=2))
    elif kind == "nested":  # a genuine state dict with the payload tucked into it
        obj, storages = hand_state_dict({"w": np.ones(2, np.float32)})
        write_torch_zip(path, {"model": obj, "extra": payload}, storages)
    return path


@pytest.mark.parametrize("kind", ["raw", "zip", "legacy", "nested"])
@pytest.mark.parametrize("name", list(PAYLOADS))
def test_malicious_pickle_is_refused_and_not_run(tmp_path, kind, name):
    marker = tmp_path / "pwned"
    payload = PAYLOADS[name](marker)
    result = pickle.loads(pickle.dumps(payload, protocol=2))  # control: an ordinary unpickler does run it
    if isinstance(result, subprocess.Popen):
        result.wait()
    assert marker.exists()
    marker.unlink()

    path = evil_file(kind, tmp_path / "evil.pth", payload)
    module, func = payload.func.__module__, payload.func.__qualname__  # os.system pickles as posix.system
    with pytest.raises(UnsafePickleError) as info:
        load_weights(path)
    assert str(info.value) == (f"refusing to load global '{module}.{func}' from {path}: "
                               "only tensor data is accepted")
    assert isinstance(info.value, pickle.UnpicklingError)
    assert not marker.exists()


def test_refused_global_in_a_persistent_id(tmp_path):
    # The storage-type slot of a persistent id goes through find_class like every other global.
    bad = Call(Global("torch._utils", "_rebuild_tensor_v2"), ("storage", Global("os", "system"), "0", "cpu", 1),
               0, (1,), (1,), False, None)
    path = write_torch_zip(tmp_path / "pid.pth", None, {"0": b"\0" * 4}, pickled=hand_pickle({"x": bad}))
    with pytest.raises(UnsafePickleError, match=r"refusing to load global 'os\.system' from .*pid\.pth"):
        load_torch_state_dict(path)


# ---- old key spellings --------------------------------------------------------------------------------------------

OLD_TO_NEW = {
    "backbone.body.conv1.weight": "backbone.body.conv1.weight",
    "backbone.fpn.inner_blocks.0.weight": "backbone.fpn.inner_blocks.0.0.weight",
    "backbone.fpn.inner_blocks.3.bias": "backbone.fpn.inner_blocks.3.0.bias",
    "backbone.fpn.layer_blocks.2.weight": "backbone.fpn.layer_blocks.2.0.weight",
    "rpn.head.conv.weight": "rpn.head.conv.0.0.weight",
    "rpn.head.conv.bias": "rpn.head.conv.0.0.bias",
    "rpn.head.cls_logits.weight": "rpn.head.cls_logits.weight",
    "roi_heads.mask_head.mask_fcn1.weight": "roi_heads.mask_head.0.0.weight",
    "roi_heads.mask_head.mask_fcn4.bias": "roi_heads.mask_head.3.0.bias",
    "roi_heads.mask_predictor.mask_fcn_logits.weight": "roi_heads.mask_predictor.mask_fcn_logits.weight",
    "module.rpn.head.conv.weight": "module.rpn.head.conv.0.0.weight",
}


def test_upgrade_legacy_keys():
    old = {name: object() for name in OLD_TO_NEW}
    new = upgrade_legacy_keys(old)
    assert list(new) == list(OLD_TO_NEW.values())  # renamed in place, order kept
    assert all(new[OLD_TO_NEW[k]] is v for k, v in old.items())  # values untouched
    assert upgrade_legacy_keys(new) == new  # current names stay as they are


def test_old_spellings_cover_the_reference_key_list():
    # torchvision's COCO file names 26 parameters the old way; upgraded, they are exactly the current names of the
    # FPN, the RPN conv and the mask head in maskrcnn_resnet50_fpn's state dict.
    keys_file = Path(__file__).parent / "data" / "maskrcnn_resnet50_fpn_state_dict_keys.json"
    if not keys_file.exists():
        pytest.skip(f"{keys_file} not present")
    reference = [name for name, _ in json.loads(keys_file.read_text())]
    old = ([f"backbone.fpn.{block}.{i}.{w}" for block in ("inner_blocks", "layer_blocks") for i in range(4)
            for w in ("weight", "bias")] + [f"rpn.head.conv.{w}" for w in ("weight", "bias")]
           + [f"roi_heads.mask_head.mask_fcn{i}.{w}" for i in range(1, 5) for w in ("weight", "bias")])
    upgraded = list(upgrade_legacy_keys(dict.fromkeys(old)))
    assert sorted(upgraded) == sorted(k for k in reference
                                      if k.startswith(("backbone.fpn.", "rpn.head.conv.", "roi_heads.mask_head.")))


def test_upgrade_legacy_keys_refuses_both_spellings():
    with pytest.raises(ValueError, match="'rpn.head.conv.weight' and its current spelling 'rpn.head.conv.0.0.weight'"):
        upgrade_legacy_keys({"rpn.head.conv.weight": 1, "rpn.head.conv.0.0.weight": 2})


# ---- .npz files ---------------------------------------------------------------------------------------------------

def test_npz_round_trip_with_metadata(tmp_path, rng):
    params = {"backbone.body.conv1.weight": rng.standard_normal((4, 3, 7, 7)).astype(np.float32),
              "scale": np.array(2.0), "half": np.ones(3, np.float16), "n": np.arange(3)}
    metadata = {"config": {"num_classes": 4}, "epoch": 12, "note": "ünïcode"}
    save_npz(tmp_path / "w.npz", params, metadata)
    loaded, meta = load_npz(tmp_path / "w.npz")
    assert meta == metadata and list(loaded) == list(params)
    for name, a in params.items():
        assert loaded[name].dtype == a.dtype
        np.testing.assert_array_equal(loaded[name], a)
    save_npz(tmp_path / "plain.npz", params)
    assert load_npz(tmp_path / "plain.npz")[1] == {}
    np.testing.assert_array_equal(load_weights(tmp_path / "w.npz")["n"], params["n"])


def test_npz_refuses_bad_input_before_writing(tmp_path):
    path = tmp_path / "w.npz"
    save_npz(path, {"a": np.ones(2)})
    before = path.read_bytes()
    with pytest.raises(TypeError):
        save_npz(path, {"a": np.ones(2)}, {"bad": object()})  # metadata that JSON cannot hold
    with pytest.raises(TypeError, match="params\\['o'\\]"):
        save_npz(path, {"o": np.array([None])})  # object arrays would need pickle to read back
    with pytest.raises(ValueError, match="reserved"):
        save_npz(path, {METADATA_KEY: np.ones(1)})
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["w.npz"]


def test_npz_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "w.npz"
    save_npz(path, {"a": np.arange(4.0)}, {"version": 1})
    real_write_array = np.lib.format.write_array

    def write_half_then_fail(f, array, **kwargs):  # a crash mid-write: some bytes out, then an error
        f.write(b"\x93NUMPY partial")
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        save_npz(path, {"a": np.zeros(1000)}, {"version": 2})
    monkeypatch.setattr(np.lib.format, "write_array", real_write_array)
    params, meta = load_npz(path)  # the previous good file, intact
    np.testing.assert_array_equal(params["a"], np.arange(4.0))
    assert meta == {"version": 1}
    assert os.listdir(tmp_path) == ["w.npz"]  # no temporary file left behind


def test_npz_write_failure_leaves_nothing_new(tmp_path, monkeypatch):
    def fail(f, array, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(np.lib.format, "write_array", fail)
    with pytest.raises(OSError):
        save_npz(tmp_path / "new.npz", {"a": np.ones(3)})
    assert os.listdir(tmp_path) == []


def test_npz_never_unpickles(tmp_path):
    np.savez(tmp_path / "objects.npz", a=np.array([{"x": 1}], dtype=object))  # a pickled object array
    with pytest.raises(WeightsFileError, match="objects.npz"):
        load_npz(tmp_path / "objects.npz")
    np.save(tmp_path / "single.npy", np.ones(2))
    os.replace(tmp_path / "single.npy", tmp_path / "single.npz")
    with pytest.raises(WeightsFileError, match="single array"):
        load_npz(tmp_path / "single.npz")


# ---- errors: missing, corrupt, wrong extension --------------------------------------------------------------------

def test_missing_file(tmp_path):
    for name in ["nope.pth", "nope.npz"]:
        with pytest.raises(FileNotFoundError, match=f"weights file not found: .*{name}"):
            load_weights(tmp_path / name)
    with pytest.raises(WeightsFileError, match="is not a file"):
        load_weights(tmp_path)  # a directory named like a weights file
    (tmp_path / "dir.pth").mkdir()
    with pytest.raises(WeightsFileError, match="is not a file"):
        load_weights(tmp_path / "dir.pth")


@pytest.mark.parametrize("name", ["garbage.pth", "garbage.pt", "garbage.npz"])
def test_corrupt_file_names_the_file(tmp_path, rng, name):
    path = tmp_path / name
    path.write_bytes(rng.integers(0, 256, 1000, dtype=np.uint8).tobytes())
    with pytest.raises(WeightsFileError, match=name):
        load_weights(path)


def test_truncated_files(tmp_path):
    good = write_torch_zip(tmp_path / "good.pth", *hand_state_dict({"w": np.ones(100, np.float32)}))
    (tmp_path / "cut.pth").write_bytes(good.read_bytes()[:300])
    with pytest.raises(WeightsFileError, match="cut.pth"):
        load_weights(tmp_path / "cut.pth")
    save_npz(tmp_path / "good.npz", {"w": np.ones(100)})
    (tmp_path / "cut.npz").write_bytes((tmp_path / "good.npz").read_bytes()[:300])
    with pytest.raises(WeightsFileError, match="cut.npz"):
        load_weights(tmp_path / "cut.npz")


def test_other_archives_are_named(tmp_path):
    with zipfile.ZipFile(tmp_path / "other.pth", "w") as zf:
        zf.writestr("readme.txt", "not weights")
    with pytest.raises(WeightsFileError, match="not a torch.save file"):
        load_weights(tmp_path / "other.pth")
    (tmp_path / "x.txt").write_text("x")
    with tarfile.open(tmp_path / "old.pth", "w") as tf:
        tf.add(tmp_path / "x.txt", arcname="x.txt")
    with pytest.raises(WeightsFileError, match="tar format"):
        load_weights(tmp_path / "old.pth")


def test_unknown_extension(tmp_path):
    (tmp_path / "w.h5").write_bytes(b"")
    with pytest.raises(ValueError, match=r"extension '\.h5': expected one of \.pth, \.pt, \.npz"):
        load_weights(tmp_path / "w.h5")


# ---- check_params_match -------------------------------------------------------------------------------------------

def test_check_params_match_passes_and_accepts_pairs():
    params = {"a.weight": np.zeros((2, 3)), "a.bias": np.zeros(2)}
    assert check_params_match(params, {"a.weight": (2, 3), "a.bias": [2]}) is None
    assert check_params_match(params, [["a.weight", [2, 3]], ["a.bias", [2]]]) is None  # as in a key-list json


def test_check_params_match_reports_everything_at_once():
    expected = {f"layer{i}.weight": (4, 4) for i in range(10)}
    expected["head.weight"] = (3, 4)
    params = {f"layer{i}.weight": np.zeros((4, 4)) for i in range(2)}  # 8 missing
    params["head.weight"] = np.zeros((4, 3))  # wrong shape
    params["rpn.head.conv.weight"] = np.zeros(1)  # unexpected, and an old spelling
    with pytest.raises(ParamsMismatchError) as info:
        check_params_match(params, expected, show=3)
    message = str(info.value)
    assert "8 missing, 1 unexpected, 1 with the wrong shape" in message
    assert "missing (8): layer2.weight, layer3.weight, layer4.weight, ... and 5 more" in message
    assert "unexpected (1): rpn.head.conv.weight" in message
    assert "wrong shape (1): head.weight is (4, 3), expected (3, 4)" in message
    assert "upgrade_legacy_keys" in message
