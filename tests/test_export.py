"""Tests for tinymask/weights/torch_export.py and `tinymask export`: torch.save files written without PyTorch.

The file is read back three ways: by tinymask's own reader (bit for bit), by `torch.load(weights_only=True)` where
torch is installed (also memory-mapped), and byte by byte (records 64-byte aligned, only allowlisted globals).
"""
import json
import pickletools
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tinymask.cli import main
from tinymask.config import MaskRCNNConfig
from tinymask.model import init_params
from tinymask.weights.checkpoint import VELOCITY_PREFIX, save_checkpoint
from tinymask.weights.torch_export import STORAGE_TYPES, save_torch_state_dict, torchvision_state_dict
from tinymask.weights.torch_format import load_torch_state_dict
from tiny import tiny_shapes_config

KEYS_FILE = Path(__file__).parent / "data" / "maskrcnn_resnet50_fpn_state_dict_keys.json"


@pytest.fixture
def torch():
    return pytest.importorskip("torch")


def all_dtypes(rng) -> dict:
    """One array of every supported dtype, with the awkward shapes: a scalar, an empty array, a big-endian array."""
    return {"conv.weight": rng.standard_normal((3, 2, 3, 3)).astype(np.float32),
            "double": rng.standard_normal((4, 5)), "half": rng.standard_normal(6).astype(np.float16),
            "long": np.arange(-3, 4, dtype=np.int64), "int": np.arange(12, dtype=np.int32).reshape(3, 4),
            "byte": np.arange(250, 256, dtype=np.uint8), "mask": np.array([[True, False], [False, True]]),
            "scalar": np.array(2.5, np.float32), "empty": np.zeros((0, 3), np.float32),
            "big_endian": np.arange(5, dtype=">f8"), "not_contiguous": np.arange(12.0).reshape(3, 4).T}


def data_offsets(path) -> dict:
    """{record name: offset of its first data byte in the file}, read from each zip local header."""
    raw = Path(path).read_bytes()
    offsets = {}
    for info in zipfile.ZipFile(path).infolist():
        name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
        offsets[info.filename] = info.header_offset + 30 + name_len + extra_len
    return offsets


# ---- the file ----------------------------------------------------------------------------------------------------

def test_round_trip_is_bit_identical_on_the_tiny_model(tmp_path):
    for norm in ("group_norm", "frozen_bn"):
        params = init_params(tiny_shapes_config(norm=norm), seed=1)
        save_torch_state_dict(tmp_path / "m.pth", torchvision_state_dict(params))
        back = load_torch_state_dict(tmp_path / "m.pth")  # drops num_batches_tracked, as it does for torch's files
        assert set(back) == set(params)
        for name, value in params.items():
            assert back[name].dtype == value.dtype and back[name].shape == value.shape, name
            assert back[name].tobytes() == value.tobytes(), name


def test_every_dtype_round_trips_and_the_layout_is_torch_saves(tmp_path, rng):
    params = all_dtypes(rng)
    save_torch_state_dict(tmp_path / "d.pth", params)
    back = load_torch_state_dict(tmp_path / "d.pth")
    for name, value in params.items():
        expected = value.astype(np.float32) if value.dtype == np.float16 else value  # the reader widens float16
        assert back[name].dtype == expected.dtype.newbyteorder("=") and np.array_equal(back[name], expected), name
    names = zipfile.ZipFile(tmp_path / "d.pth").namelist()
    assert names == (["archive/data.pkl", "archive/byteorder"] + [f"archive/data/{i}" for i in range(len(params))]
                     + ["archive/version", "archive/.data/serialization_id"])
    assert all(offset % 64 == 0 for offset in data_offsets(tmp_path / "d.pth").values())
    with zipfile.ZipFile(tmp_path / "d.pth") as zf:
        assert zf.read("archive/byteorder") == b"little" and zf.read("archive/version") == b"3\n"
        assert all(info.compress_type == zipfile.ZIP_STORED for info in zf.infolist())
        ops = list(pickletools.genops(zf.read("archive/data.pkl")))
        serial = zf.read("archive/.data/serialization_id")
    assert len(serial) == 40 and serial.isdigit()
    assert ops[0][0].name == "PROTO" and ops[0][1] == 2
    globals_ = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
    assert globals_ == {"collections OrderedDict", "torch._utils _rebuild_tensor_v2",
                        *(f"torch {STORAGE_TYPES[a.dtype.name]}" for a in params.values())}
    save_torch_state_dict(tmp_path / "again.pth", params)  # the same parameters give the same bytes
    assert (tmp_path / "again.pth").read_bytes() == (tmp_path / "d.pth").read_bytes()


def test_bad_params_are_refused_naming_the_entry(tmp_path):
    with pytest.raises(TypeError, match="'x'.*int16"):
        save_torch_state_dict(tmp_path / "b.pth", {"x": np.zeros(2, np.int16)})
    with pytest.raises(TypeError, match="'y'.*list"):
        save_torch_state_dict(tmp_path / "b.pth", {"y": [1.0]})
    with pytest.raises(ValueError, match="not allowed"):
        save_torch_state_dict(tmp_path / "b.pth", {"": np.zeros(2)})
    assert not (tmp_path / "b.pth").exists()


# ---- read by PyTorch ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mmap", [False, True])
def test_torch_load_weights_only_reads_it(torch, tmp_path, rng, mmap):
    params = all_dtypes(rng)
    save_torch_state_dict(tmp_path / "t.pth", params)
    state = torch.load(tmp_path / "t.pth", weights_only=True, mmap=mmap)
    assert type(state).__name__ == "OrderedDict" and list(state) == list(params)
    for name, value in params.items():
        tensor = state[name]
        assert tensor.dtype == getattr(torch, value.dtype.name), name
        assert tuple(tensor.shape) == value.shape and tensor.is_contiguous(), name
        assert np.array_equal(tensor.numpy(), value), name
        if tensor.numel():
            assert tensor.data_ptr() % 64 == 0, name  # aligned in the file, so aligned when memory-mapped


def test_torch_load_with_calculated_storage_offsets(torch, tmp_path, monkeypatch):
    # PyTorch >= 2.4 can compute each storage's offset from the previous one instead of asking the zip directory,
    # assuming miniz's layout (a data descriptor after every record), for files that carry `.format_version`.
    # Ours do not (Python's zipfile writes no data descriptors), so torch must still find every storage.
    load_config = pytest.importorskip("torch.utils.serialization").config.load
    if not hasattr(load_config, "calculate_storage_offsets"):
        pytest.skip("this PyTorch always asks the zip directory")
    monkeypatch.setenv("TORCH_SERIALIZATION_DEBUG", "1")  # torch checks every offset it uses against the directory
    params = {f"w{i}": np.arange(7 * i + 1, dtype=np.float32) for i in range(40)}
    save_torch_state_dict(tmp_path / "c.pth", params)
    before, load_config.calculate_storage_offsets = load_config.calculate_storage_offsets, True
    try:
        state = torch.load(tmp_path / "c.pth", weights_only=True, mmap=True)
    finally:
        load_config.calculate_storage_offsets = before
    assert all(np.array_equal(state[k].numpy(), v) for k, v in params.items())


def test_torch_load_reads_the_tiny_model_into_a_module(torch, tmp_path):
    # A BatchNorm2d loads our weight/bias/running stats and num_batches_tracked with strict=True.
    params = torchvision_state_dict(init_params(tiny_shapes_config(norm="frozen_bn"), seed=2))
    save_torch_state_dict(tmp_path / "m.pth", params)
    state = torch.load(tmp_path / "m.pth", weights_only=True)
    bn = torch.nn.BatchNorm2d(params["backbone.body.bn1.weight"].shape[0])
    bn.load_state_dict({k.split("bn1.")[1]: v for k, v in state.items() if k.startswith("backbone.body.bn1.")})
    assert np.array_equal(bn.running_var.numpy(), params["backbone.body.bn1.running_var"])
    assert int(bn.num_batches_tracked) == 0


# ---- torchvision's names -----------------------------------------------------------------------------------------

def test_resnet50_fpn_export_has_torchvisions_keys_shapes_and_order(tmp_path):
    """The whole resnet50_fpn preset (44M parameters, 170 MB, a few seconds): the keys, shapes and order of
    torchvision's `maskrcnn_resnet50_fpn(num_classes=91).state_dict()`; read back bit for bit, and by torch."""
    expected = [(name, tuple(shape)) for name, shape in json.loads(KEYS_FILE.read_text())]
    params = init_params(MaskRCNNConfig.preset("resnet50_fpn"))
    state = torchvision_state_dict(params)
    assert [(name, value.shape) for name, value in state.items()] == expected
    assert all(state[k].dtype == np.int64 for k in state if k.endswith("num_batches_tracked"))
    save_torch_state_dict(tmp_path / "r50.pth", state)
    back = load_torch_state_dict(tmp_path / "r50.pth")
    assert all(back[k].tobytes() == v.tobytes() for k, v in params.items()) and set(back) == set(params)
    del back
    try:
        import torch
    except ImportError:
        return
    loaded = torch.load(tmp_path / "r50.pth", weights_only=True, mmap=True)
    assert [(name, tuple(t.shape)) for name, t in loaded.items()] == expected
    assert all(np.array_equal(loaded[k].numpy(), v) for k, v in params.items())


# ---- the command -------------------------------------------------------------------------------------------------

def test_export_command_end_to_end(tmp_path, capsys):
    cfg = tiny_shapes_config()
    params = init_params(cfg, seed=3)
    save_checkpoint(tmp_path / "ckpt", params, cfg, {"iteration": 5},
                    optimizer_state={k: np.ones_like(v) for k, v in params.items()})
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "out.pth")]) == 0
    assert f"wrote {len(params)} tensors" in capsys.readouterr().out
    back = load_torch_state_dict(tmp_path / "out.pth")
    assert set(back) == set(params) and not any(k.startswith(VELOCITY_PREFIX) for k in back)
    assert all(back[k].tobytes() == v.tobytes() for k, v in params.items())
    # --config with --weights: the checkpoint's own files, momentum in the .npz left out the same way
    assert main(["export", "--config", str(tmp_path / "ckpt" / "config.json"), "--weights",
                 str(tmp_path / "ckpt" / "weights.npz"), str(tmp_path / "again.pth")]) == 0
    assert (tmp_path / "again.pth").read_bytes() == (tmp_path / "out.pth").read_bytes()


def test_export_help(capsys):
    with pytest.raises(SystemExit) as info:
        main(["export", "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in ("CHECKPOINT", "OUT.pth", "--config", "--weights", "--force", "weights_only=True"):
        assert option in text, option


def test_export_command_refuses_to_overwrite_without_force(tmp_path, capsys):
    cfg = tiny_shapes_config()
    save_checkpoint(tmp_path / "ckpt", init_params(cfg, seed=3), cfg, {"iteration": 5})
    (tmp_path / "out.pth").write_bytes(b"precious")
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "out.pth")]) == 1
    err = capsys.readouterr().err
    assert "exists; pass --force" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "out.pth").read_bytes() == b"precious"
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "out.pth"), "--force"]) == 0
    assert load_torch_state_dict(tmp_path / "out.pth")


@pytest.mark.parametrize("argv,message", [
    (["export", "{tmp}/none", "{tmp}/o.pth"], "checkpoint folder not found"),
    (["export", "{tmp}/o.pth"], "give a CHECKPOINT folder"),
    (["export", "{tmp}/ckpt", "{tmp}/o.npz"], "extension .pth or .pt"),
    (["export", "{tmp}/ckpt", "{tmp}/o.pth", "--config", "{tmp}/ckpt/config.json"], "not both"),
    (["export", "--config", "{tmp}/ckpt/config.json", "{tmp}/o.pth"], "--config needs --weights"),
])
def test_export_command_errors_are_one_line(argv, message, tmp_path, capsys):
    cfg = tiny_shapes_config()
    save_checkpoint(tmp_path / "ckpt", init_params(cfg, seed=3), cfg, {"iteration": 5})
    assert main([a.format(tmp=tmp_path) for a in argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "o.pth").exists()
