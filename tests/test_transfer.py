"""Fine-tuning (tinymask/weights/transfer.py, `tinymask train --init-weights`): what is loaded, what starts afresh,
which stages train, and a fine-tuned run that starts with a lower loss than one from scratch."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from tiny import tiny_shapes_config
from tinymask.cli import main
from tinymask.data.coco import CocoDataset
from tinymask.data.shapes import ShapesDataset
from tinymask.model import init_params
from tinymask.training.loop import train
from tinymask.training.recipe import Recipe
from tinymask.weights.checkpoint import load_checkpoint
from tinymask.weights.transfer import CLASS_DEPENDENT, backbone_part, init_from, trains_with


def recipe(**overrides):
    base = dict(iterations=4, batch_size=2, lr=0.02, warmup_iters=2, decay_at=[0.5], eval_every=0)
    return Recipe(**{**base, **overrides})


def write_coco(folder, dataset: ShapesDataset, ids: dict) -> str:
    """`dataset` as a COCO data set on disk (PNG images, one JSON), its labels renamed to the category ids `ids`."""
    os.makedirs(folder, exist_ok=True)
    gt = dataset.to_coco_gt()
    for entry in gt["images"]:
        image = (dataset[entry["id"]]["image"].transpose(1, 2, 0) * 255).round().astype(np.uint8)
        Image.fromarray(image).save(os.path.join(folder, entry["file_name"]))
    for a in gt["annotations"]:
        a["category_id"] = ids[a["category_id"]]
    gt["categories"] = [dict(c, id=ids[c["id"]]) for c in gt["categories"]]
    path = os.path.join(folder, "annotations.json")
    with open(path, "w") as f:
        json.dump(gt, f)
    return path


def test_same_shapes_load_the_class_dependent_predictors_start_afresh():
    source = init_params(tiny_shapes_config(), seed=1)
    target_cfg = tiny_shapes_config(num_classes=7, class_names=["background"] + [f"c{i}" for i in range(6)])
    source["not.in.the.model"] = np.zeros(3, np.float32)
    source["rpn.head.conv.0.0.weight"] = source["rpn.head.conv.0.0.weight"][:1]  # a shape that does not fit
    params, report = init_from(source, target_cfg, seed=0)
    fresh = init_params(target_cfg, seed=0)
    assert set(params) == set(fresh) and all(params[k].shape == fresh[k].shape for k in fresh)
    afresh = dict(report["reinitialised"])
    assert all(name.startswith(CLASS_DEPENDENT) or name in ("rpn.head.conv.0.0.weight",) for name in afresh)
    assert sum(name.startswith(CLASS_DEPENDENT) for name in afresh) == 6  # weight and bias of the three predictors
    for name in report["loaded"]:
        np.testing.assert_array_equal(params[name], source[name])
    assert "backbone.body.conv1.weight" in report["loaded"]
    assert report["skipped"] == [("not.in.the.model", "not in this model")]


def test_the_predictors_start_afresh_even_when_the_number_of_classes_matches():
    cfg = tiny_shapes_config()
    source = init_params(cfg, seed=1)
    params, report = init_from(source, cfg, seed=0)
    fresh = init_params(cfg, seed=0)
    for name in params:
        if name.startswith(CLASS_DEPENDENT):
            np.testing.assert_array_equal(params[name], fresh[name])
    assert len(report["loaded"]) == len(params) - 6


@pytest.mark.parametrize("name, part", [("backbone.body.conv1.weight", "conv1"), ("backbone.body.bn1.bias", "conv1"),
                                        ("backbone.body.layer3.0.conv2.weight", "layer3"),
                                        ("backbone.fpn.layer_blocks.0.0.weight", None), ("rpn.head.cls_logits.bias", None)])
def test_backbone_parts(name, part):
    assert backbone_part(name) == part


def test_frozen_stages_do_not_move(tmp_path):
    data = ShapesDataset("train", 4, image_size=48)
    cfg = tiny_shapes_config()
    start = init_params(cfg, seed=0)
    train(cfg, recipe(iterations=2, trainable_backbone_layers=2), data, None, tmp_path / "run", params=start,
          progress=False, print_fn=lambda *a: None, plot=False)
    after = load_checkpoint(tmp_path / "run" / "last")[0]
    for name in start:
        moved = not np.array_equal(after[name], start[name])
        part = backbone_part(name)
        if part in ("conv1", "layer1", "layer2"):
            assert not moved, name  # frozen: only layer3 and layer4 of the ResNet train
        elif name.endswith(("weight",)) and part in ("layer3", "layer4"):
            assert moved, name
    assert trains_with("backbone.body.layer4.0.conv1.weight", 1) and not trains_with("backbone.body.conv1.weight", 4)
    with pytest.raises(ValueError, match="trainable_backbone_layers must be 0..5"):
        Recipe(trainable_backbone_layers=6)


def test_fine_tuning_starts_lower_than_from_scratch(tmp_path, capsys):
    """Pre-train the tiny model on the shapes (3 classes), fine-tune it on a COCO data set of 6 other classes with
    category ids 11..16: its first iterations' RPN and total losses are lower than a run from scratch's."""
    pre_cfg = tiny_shapes_config()
    train(pre_cfg, recipe(iterations=60, batch_size=4, warmup_iters=10, decay_at=[0.8]),
          ShapesDataset("train", 64, image_size=48), None, tmp_path / "pre", progress=False,
          print_fn=lambda *a: None, plot=False)
    hard = ShapesDataset("train", 16, image_size=48, difficulty="hard", seed=5)
    ann = write_coco(tmp_path / "coco", hard, {k: 10 + k for k in range(1, 7)})
    names = CocoDataset(ann, tmp_path / "coco").class_names
    cfg_path = tmp_path / "k7.json"
    tiny_shapes_config(num_classes=len(names), class_names=names).save(cfg_path)
    losses = {}
    for run, extra in (("scratch", []), ("tuned", ["--init-weights", str(tmp_path / "pre" / "last")])):
        code = main(["train", "--config", str(cfg_path), "--data", ann, "--images", str(tmp_path / "coco"),
                     "--iterations", "6", "--batch-size", "4", "--warmup", "2", "--eval-every", "0",
                     "--out", str(tmp_path / run), "--no-progress", *extra])
        assert code == 0
        log = [json.loads(line) for line in open(tmp_path / run / "log.jsonl") if '"loss"' in line]
        losses[run] = {k: np.mean([r[k] for r in log[:3]]) for k in ("loss", "loss_objectness", "loss_rpn_box_reg")}
    out = capsys.readouterr().out
    with capsys.disabled():
        print(f"\nfirst 3 iterations, mean: {losses}")  # recorded in the closing note of the fine-tuning issue
    assert "parameter tensors loaded" in out and "initialised afresh: roi_heads.box_predictor.cls_score.weight" in out
    listed = json.loads((tmp_path / "tuned" / "init_weights.json").read_text())
    assert len(listed["loaded"]) + len(listed["reinitialised"]) == len(init_params(tiny_shapes_config(
        num_classes=len(names), class_names=names)))
    assert listed["skipped"] == [] and "backbone.body.conv1.weight" in listed["loaded"]
    assert losses["tuned"]["loss_objectness"] < losses["scratch"]["loss_objectness"], losses
    assert losses["tuned"]["loss"] < losses["scratch"]["loss"], losses


def test_init_weights_errors_are_one_line(tmp_path, capsys):
    assert main(["train", "--init-weights", str(tmp_path / "missing.pth"), "--out", str(tmp_path / "r"),
                 "--iterations", "1", "--num-train", "4"]) == 1
    assert "weights file not found" in capsys.readouterr().err
    assert main(["train", "--resume", "--init-weights", "x.pth", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "leave out" in err and "--init-weights" in err
