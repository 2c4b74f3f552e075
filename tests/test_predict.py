"""Tests for tinymask/evaluation/predict.py: loading models from every source, COCO results, run_predict, clear errors."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tinymask.config import MaskRCNNConfig
from tinymask.evaluation.predict import detections_to_coco_results, keep_scores_above, run_predict
from tinymask.weights.checkpoint import expected_shapes, load_model
from tinymask.model import init_params, predict
from tinymask.evaluation.rle import rle_decode
from tinymask.weights.errors import ParamsMismatchError
from tinymask.weights.npz import save_npz
from tiny import tiny_config as _tiny


def tiny_config(**overrides) -> MaskRCNNConfig:
    """tests/tiny.py's model, with class names for the captions."""
    return _tiny(**{"class_names": ["background", "square", "circle"], **overrides})


def make_checkpoint(folder, cfg, seed=1, extra=None):
    """A checkpoint folder as the training loop writes it: config.json + weights.npz (plus optional extra arrays)."""
    folder.mkdir(parents=True, exist_ok=True)
    params = init_params(cfg, seed=seed)
    cfg.save(folder / "config.json")
    save_npz(folder / "weights.npz", {**params, **(extra or {})}, metadata={"iteration": 7})
    return params


def test_load_checkpoint_dir_ignores_optimizer_state(tmp_path):
    cfg = tiny_config()
    saved = make_checkpoint(tmp_path / "ckpt", cfg, extra={"optimizer.velocity.backbone.body.conv1.weight":
                                                           np.ones(3, np.float32)})
    params, loaded_cfg = load_model(tmp_path / "ckpt")
    assert loaded_cfg == cfg
    assert list(params) == list(saved)
    for name in saved:
        assert params[name].dtype == saved[name].dtype
        np.testing.assert_array_equal(params[name], saved[name])


def test_an_npz_entry_the_model_lacks_is_refused_by_every_loader(tmp_path, capsys):
    """Issue: the same .npz with an extra entry was silently dropped by load_model (predict) but refused by eval."""
    cfg = tiny_config()
    make_checkpoint(tmp_path / "ckpt", cfg, extra={"backbone.body.conv9.weight": np.ones(3, np.float32)})
    with pytest.raises(ParamsMismatchError, match=r"1 unexpected(.|\n)*backbone.body.conv9.weight"):
        load_model(tmp_path / "ckpt")
    from tinymask.cli import main
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    for command in (["eval", "--checkpoint", str(tmp_path / "ckpt")],
                    ["predict", str(tmp_path / "x.png"), "--checkpoint", str(tmp_path / "ckpt"), "--out",
                     str(tmp_path / "out")]):
        assert main(command) == 1
        assert "1 unexpected" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_load_config_plus_npz(tmp_path):
    cfg = tiny_config()
    saved = make_checkpoint(tmp_path, cfg)
    params, loaded_cfg = load_model(config_path=tmp_path / "config.json", weights_path=tmp_path / "weights.npz")
    assert loaded_cfg == cfg and set(params) == set(saved)


def test_load_config_plus_torchvision_pth(tmp_path):
    """A torchvision-style state dict: frozen BN with running stats and num_batches_tracked counters."""
    torch = pytest.importorskip("torch")
    cfg = tiny_config(norm="frozen_bn")
    cfg.save(tmp_path / "config.json")
    reference = init_params(cfg, seed=2)
    state = {}
    for name, value in reference.items():
        state[name] = torch.from_numpy(value.copy())
        if name.endswith(".running_var"):  # BatchNorm2d's step counter, which tinymask does not keep
            state[name[:-len("running_var")] + "num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    assert any(k.endswith("num_batches_tracked") for k in state)
    torch.save(state, tmp_path / "model.pth")
    params, _ = load_model(config_path=tmp_path / "config.json", weights_path=tmp_path / "model.pth")
    assert set(params) == set(reference)
    for name in reference:
        np.testing.assert_array_equal(params[name], reference[name])


def test_torchvision_resnet50_fpn_names_line_up():
    """What load_model checks a real `maskrcnn_resnet50_fpn` .pth against: every name and shape of its state dict
    (tests/data holds the list), less BatchNorm's num_batches_tracked counters, which the reader drops."""
    keys = json.loads((Path(__file__).parent / "data" / "maskrcnn_resnet50_fpn_state_dict_keys.json").read_text())
    torchvision = {name: tuple(shape) for name, shape in keys if not name.endswith("num_batches_tracked")}
    assert expected_shapes(MaskRCNNConfig.preset("resnet50_fpn")) == torchvision


def test_saved_and_loaded_model_predicts_identically(tmp_path):
    cfg = tiny_config()
    params = make_checkpoint(tmp_path, cfg)
    loaded, loaded_cfg = load_model(tmp_path)
    image = np.random.default_rng(0).random((3, 40, 56)).astype(np.float32)
    before, after = predict(params, cfg, [image])[0], predict(loaded, loaded_cfg, [image])[0]
    assert len(before["scores"]) > 0
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == after[key].dtype
        np.testing.assert_array_equal(before[key], after[key])


def test_mismatched_weights_are_listed(tmp_path):
    cfg = tiny_config()
    make_checkpoint(tmp_path, cfg)
    tiny_config(fpn_channels=8).save(tmp_path / "wider.json")  # same names, other shapes
    with pytest.raises(ParamsMismatchError, match=r"weights.npz does not fit the model of .*wider.json(.|\n)*wrong shape"):
        load_model(config_path=tmp_path / "wider.json", weights_path=tmp_path / "weights.npz")
    params = init_params(cfg)
    del params["backbone.body.conv1.weight"]
    save_npz(tmp_path / "partial.npz", params)
    with pytest.raises(ParamsMismatchError, match=r"1 missing(.|\n)*backbone.body.conv1.weight"):
        load_model(config_path=tmp_path / "config.json", weights_path=tmp_path / "partial.npz")


def test_missing_checkpoint_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found: .*nowhere"):
        load_model(tmp_path / "nowhere")
    (tmp_path / "ckpt").mkdir()
    tiny_config().save(tmp_path / "ckpt" / "config.json")
    with pytest.raises(FileNotFoundError, match=r"lacks .*weights.npz"):
        load_model(tmp_path / "ckpt")
    with pytest.raises(FileNotFoundError, match=r"weights file not found: .*absent.pth"):
        load_model(config_path=tmp_path / "ckpt" / "config.json", weights_path=tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="give checkpoint_dir, or both"):
        load_model(config_path=tmp_path / "ckpt" / "config.json")


# ---- COCO results -----------------------------------------------------------------------------------------------

def test_detections_to_coco_results_round_trip():
    masks = np.zeros((2, 9, 12), np.uint8)
    masks[0, 2:5, 3:9] = 1
    masks[1, 0:9, 0:2] = 1
    result = {"boxes": np.array([[3.0, 2.0, 9.0, 5.0], [0.25, 0.0, 2.0, 9.5]], np.float32),
              "scores": np.array([0.9, 0.4], np.float32), "labels": np.array([2, 1]), "masks": masks}
    out = detections_to_coco_results(result, image_id=17, label_to_category_id={1: 5, 2: 11})
    assert [r["image_id"] for r in out] == [17, 17]
    assert [r["category_id"] for r in out] == [11, 5]
    assert out[0]["bbox"] == [3.0, 2.0, 6.0, 3.0]
    assert out[1]["bbox"] == [0.25, 0.0, 1.75, 9.5]
    assert out[0]["score"] == pytest.approx(0.9)
    for r, mask in zip(out, masks):
        assert isinstance(r["segmentation"]["counts"], str)
        assert r["segmentation"]["size"] == [9, 12]
        np.testing.assert_array_equal(rle_decode(r["segmentation"]), mask.astype(bool))
    json.dumps(out)  # plain Python types only
    assert [r["category_id"] for r in detections_to_coco_results(result, 0)] == [2, 1]  # no mapping: the label


def test_coco_results_refuse_soft_masks_and_unknown_labels():
    result = {"boxes": np.zeros((1, 4)), "scores": np.ones(1), "labels": np.array([3]),
              "masks": np.full((1, 4, 4), 0.7)}
    with pytest.raises(ValueError, match="soft probabilities"):
        detections_to_coco_results(result, 0)
    result["masks"] = np.ones((1, 4, 4))
    with pytest.raises(KeyError, match="label 3"):
        detections_to_coco_results(result, 0, {1: 1})


def test_keep_scores_above():
    result = {"boxes": np.arange(8.0).reshape(2, 4), "scores": np.array([0.2, 0.8]), "labels": np.array([1, 2]),
              "masks": np.zeros((2, 3, 3), np.uint8)}
    kept = keep_scores_above(result, 0.5)
    assert kept["labels"].tolist() == [2] and kept["boxes"].shape == (1, 4) and kept["masks"].shape == (1, 3, 3)


# ---- run_predict ---------------------------------------------------------------------------------------------------

def write_images(tmp_path):
    rng = np.random.default_rng(0)
    rgb = tmp_path / "street.png"
    Image.fromarray((rng.random((40, 56, 3)) * 255).astype(np.uint8)).save(rgb)
    gray = tmp_path / "field.png"  # grayscale: converted to RGB on reading
    Image.fromarray((rng.random((36, 48)) * 255).astype(np.uint8), mode="L").save(gray)
    return [rgb, gray]


def test_run_predict_writes_overlays_and_results(tmp_path):
    cfg = tiny_config()
    make_checkpoint(tmp_path / "ckpt", cfg)
    paths = write_images(tmp_path)
    out = tmp_path / "out"
    results = run_predict(paths, checkpoint_dir=tmp_path / "ckpt", out_dir=out, score_threshold=0.3)
    assert len(results) == 2 and all(len(r["scores"]) > 0 for r in results)
    assert all(np.all(r["scores"] >= 0.3) for r in results)
    for name, (h, w) in (("street.png", (40, 56)), ("field.png", (36, 48))):
        with Image.open(out / name) as im:
            assert im.size[0] >= 512 or im.size[1] >= 512  # enlarged so captions are legible
            assert np.asarray(im.convert("RGB")).std() > 0
    coco = json.loads((out / "results.json").read_text())
    assert len(coco) == sum(len(r["scores"]) for r in results)
    assert {r["image_id"] for r in coco} == {0, 1}
    first = [r for r in coco if r["image_id"] == 0]
    np.testing.assert_array_equal(rle_decode(first[0]["segmentation"]), results[0]["masks"][0].astype(bool))
    assert first[0]["segmentation"]["size"] == [40, 56]
    assert sorted(p.name for p in out.iterdir()) == ["field.png", "results.json", "street.png"]  # no temp files


def test_run_predict_with_image_ids_and_category_mapping(tmp_path):
    cfg = tiny_config()
    make_checkpoint(tmp_path, cfg)
    paths = write_images(tmp_path)[:1]
    run_predict(paths, config_path=tmp_path / "config.json", weights_path=tmp_path / "weights.npz",
                out_dir=tmp_path / "out", score_threshold=0.3, image_ids=[42], label_to_category_id={1: 7, 2: 9})
    coco = json.loads((tmp_path / "out" / "results.json").read_text())
    assert coco and {r["image_id"] for r in coco} == {42} and {r["category_id"] for r in coco} <= {7, 9}


def test_run_predict_errors_name_the_file(tmp_path):
    make_checkpoint(tmp_path / "ckpt", tiny_config())
    good = write_images(tmp_path)[0]
    with pytest.raises(FileNotFoundError, match="image not found: .*missing.png"):
        run_predict([good, tmp_path / "missing.png"], checkpoint_dir=tmp_path / "ckpt", out_dir=tmp_path / "out")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a JPEG")
    with pytest.raises(ValueError, match="cannot read the image .*broken.jpg"):
        run_predict([broken], checkpoint_dir=tmp_path / "ckpt", out_dir=tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="checkpoint folder not found"):
        run_predict([good], checkpoint_dir=tmp_path / "no_ckpt", out_dir=tmp_path / "out")
    (tmp_path / "other").mkdir()
    Image.open(good).save(tmp_path / "other" / "street.jpg")
    with pytest.raises(ValueError, match="would both be drawn to street.png"):
        run_predict([good, tmp_path / "other" / "street.jpg"], checkpoint_dir=tmp_path / "ckpt",
                    out_dir=tmp_path / "out")
