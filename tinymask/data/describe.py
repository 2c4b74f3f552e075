"""A data set described as JSON, so that a checkpoint can say what it was trained on and a resumed run rebuild it.

*Test:* `tests/test_cli.py` (train, resume, eval from a description)

    {"kind": "shapes", "num_train": 1000, "num_val": 100, "difficulty": "easy", "seed": 0, "image_size": 128}
    {"kind": "coco", "train": ["/abs/train.json", "/abs/train_images"], "val": ["/abs/val.json", "/abs/val"] or null}
"""
from __future__ import annotations

#: The built-in shapes data of `tinymask train`: 1000 training and 100 held-out 128-pixel images.
SHAPES_DEFAULTS = dict(num_train=1000, num_val=100, difficulty="easy", seed=0, image_size=128)


def datasets_from_description(info: dict):
    """(training set, held-out set or None) from a data description (the module docstring's two forms)."""
    from tinymask.data.coco import CocoDataset
    from tinymask.data.shapes import ShapesDataset

    if info.get("kind") == "shapes":
        common = dict(seed=info["seed"], image_size=info["image_size"], difficulty=info["difficulty"])
        val = ShapesDataset("val", info["num_val"], **common) if info["num_val"] else None
        return ShapesDataset("train", info["num_train"], **common), val
    if info.get("kind") == "coco":
        val = CocoDataset(*info["val"]) if info.get("val") else None
        return CocoDataset(*info["train"]), val
    raise ValueError(f"unknown data description {info!r}: expected kind 'shapes' or 'coco'")
