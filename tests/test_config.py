"""Model configurations: presets, JSON round trips, validation, and the preprocessing they drive."""
import json

import numpy as np
import pytest

from tinymask.config import MaskRCNNConfig
from tinymask.box_logic.resize import preprocess, preprocess_targets, resized_size


@pytest.mark.parametrize("name", ["small", "resnet50_fpn", "resnet50_c4"])
def test_presets_round_trip_through_json(tmp_path, name):
    cfg = MaskRCNNConfig.preset(name)
    path = tmp_path / f"{name}.json"
    cfg.save(path)
    assert MaskRCNNConfig.load(path) == cfg
    assert json.loads(path.read_text())["backbone"] == cfg.backbone


def test_preset_values():
    r50 = MaskRCNNConfig.preset("resnet50_fpn")
    assert r50.resnet_blocks == [3, 4, 6, 3] and r50.fpn_channels == 256 and r50.mask_resolution == 28
    c4 = MaskRCNNConfig.preset("resnet50_c4")
    assert c4.backbone == "c4" and c4.mask_resolution == 14
    small = MaskRCNNConfig.preset("small")
    assert small.num_classes == 4 and small.class_names[0] == "background"


def test_any_width_and_depth_from_a_file(tmp_path):
    path = tmp_path / "custom.json"
    path.write_text(json.dumps({"num_classes": 7, "resnet_blocks": [3, 4, 23, 3], "fpn_channels": 128}))
    cfg = MaskRCNNConfig.load(path)
    assert cfg.resnet_blocks == [3, 4, 23, 3] and cfg.fpn_channels == 128 and cfg.num_classes == 7


@pytest.mark.parametrize("data,message", [
    ({"backbone": "vgg"}, "backbone must be one of"),
    ({"num_classes": 1}, "num_classes"),
    ({"mask_loss": "softmax", "class_agnostic_mask": True}, "class-agnostic"),
    ({"norm": "group_norm", "num_groups": 7}, "divisible"),
    ({"anchor_sizes": [32, 64]}, "5 anchor_sizes"),
    ({"resnet_blocks": [1, 1, 1]}, "resnet_blocks"),
    ({"colour": 3}, "unknown config field"),
])
def test_bad_configs_are_named(tmp_path, data, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        MaskRCNNConfig.load(path)


def test_unreadable_config_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        MaskRCNNConfig.load(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        MaskRCNNConfig.load(tmp_path / "broken.json")
    with pytest.raises(ValueError, match="unknown preset"):
        MaskRCNNConfig.preset("resnet18")


def test_preprocess_resizes_normalises_and_pads():
    cfg = MaskRCNNConfig(min_size=64, max_size=100)
    rng = np.random.default_rng(0)
    images = [rng.random((3, 30, 50)).astype(np.float32), rng.random((3, 40, 20)).astype(np.float32)]
    # scales: min(64/30, 100/50) = 2 -> 60x100; min(64/20, 100/40) = 2.5 -> 100x50
    assert resized_size((30, 50), 64, 100) == ((60, 100), 2.0)
    batch, sizes, originals = preprocess(images, cfg)
    assert sizes == [(60, 100), (100, 50)] and originals == [(30, 50), (40, 20)]
    assert batch.shape == (2, 3, 128, 128)  # the largest size, rounded up to a multiple of 32
    assert np.all(batch[0, :, 60:, :] == 0) and np.all(batch[1, :, :, 50:] == 0)  # zero padding bottom and right
    # a flat image normalises to (value - mean) / std everywhere, resizing or not
    flat = np.full((3, 30, 50), 0.5, np.float32)
    out, _, _ = preprocess([flat], cfg)
    expected = (0.5 - np.array(cfg.image_mean)) / np.array(cfg.image_std)
    np.testing.assert_allclose(out[0, :, 0, 0], expected, rtol=1e-6)
    targets = preprocess_targets([{"boxes": np.array([[10.0, 5.0, 20.0, 15.0]], np.float32),
                                   "masks": np.ones((1, 30, 50), np.uint8)}], [(30, 50)], [(60, 100)])
    np.testing.assert_allclose(targets[0]["boxes"], [[20, 10, 40, 30]])
    assert targets[0]["masks"].shape == (1, 60, 100)
