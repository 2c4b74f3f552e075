"""Datasets for tinymask: the synthetic shapes dataset, a COCO-format reader, and the transforms between them.

## One sample

Every dataset's `dataset[i]` is a plain dict of NumPy arrays, the same for shapes and COCO (G = instances):

| key        | shape / type       | meaning                                                                      |
|------------|--------------------|------------------------------------------------------------------------------|
| `image`    | (3, H, W) float32  | RGB in [0, 1], channels first like the model's NCHW input                   |
| `boxes`    | (G, 4) float32     | (x0, y0, x1, y1) in continuous pixel coordinates (docs/conventions.md)      |
| `labels`   | (G,) int64         | contiguous class labels 1..K; 0 is background and never appears here        |
| `masks`    | (G, H, W) uint8    | 1 inside the instance, 0 outside                                            |
| `iscrowd`  | (G,) bool          | COCO crowd regions: kept for evaluation, dropped by `training_targets`      |
| `image_id` | int                | the id the evaluator knows the image by                                     |

An image without instances is a valid sample with G = 0: boxes (0, 4), labels (0,), masks (0, H, W), iscrowd (0,).

## One dataset

A dataset has `len(dataset)`, `dataset[i]`, `class_names` (index 0 = "background", index k = label k),
`label_to_category_id` / `category_id_to_label` (dicts between contiguous labels and the category ids of the
annotation file), and `to_coco_gt()`, the ground truth as a COCO-format dict for the evaluator.

    from tinymask.data import ShapesDataset, random_horizontal_flip, epoch_order
    train = ShapesDataset("train", num_images=1000, seed=0)
    sample = train[0]                        # generated on demand, deterministic
"""
from __future__ import annotations

import numpy as np

from tinymask.data.coco import CocoDataset, CocoFormatError, read_image_rgb
from tinymask.data.shapes import ShapesDataset, generate_image, masks_to_boxes
from tinymask.data.transforms import (batch_indices, collate, epoch_order, horizontal_flip, random_horizontal_flip,
                                      training_targets)

__all__ = [
    "CocoDataset", "CocoFormatError", "ShapesDataset", "batch_indices", "check_sample", "collate", "epoch_order",
    "generate_image", "horizontal_flip", "masks_to_boxes", "random_horizontal_flip", "read_image_rgb",
    "training_targets",
]


def check_sample(sample: dict, num_classes: int | None = None) -> None:
    """Raise a ValueError naming the first thing in `sample` that breaks the format above; return None if valid."""
    expected = {"image": np.float32, "boxes": np.float32, "labels": np.int64, "masks": np.uint8, "iscrowd": np.bool_}
    missing = [k for k in [*expected, "image_id"] if k not in sample]
    if missing:
        raise ValueError(f"sample is missing key(s) {missing}")
    for key, dtype in expected.items():
        if not isinstance(sample[key], np.ndarray) or sample[key].dtype != dtype:
            raise ValueError(f"sample[{key!r}] must be a {np.dtype(dtype)} array, got "
                             f"{type(sample[key]).__name__} {getattr(sample[key], 'dtype', '')}".rstrip())
    image = sample["image"]
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"sample['image'] must have shape (3, H, W), got {image.shape}")
    if image.size and (image.min() < 0 or image.max() > 1):
        raise ValueError(f"sample['image'] must lie in [0, 1], got [{image.min()}, {image.max()}]")
    _, h, w = image.shape
    g = sample["labels"].shape[0]
    shapes = {"boxes": (g, 4), "labels": (g,), "masks": (g, h, w), "iscrowd": (g,)}
    for key, shape in shapes.items():
        if sample[key].shape != shape:
            raise ValueError(f"sample[{key!r}] must have shape {shape} for {g} instances of a {h}x{w} image, "
                             f"got {sample[key].shape}")
    if g and sample["labels"].min() < 1:
        raise ValueError(f"sample['labels'] must be >= 1 (0 is background), got {sample['labels'].tolist()}")
    if g and num_classes is not None and sample["labels"].max() > num_classes:
        raise ValueError(f"sample['labels'] must be <= {num_classes}, got {sample['labels'].tolist()}")
    if not isinstance(sample["image_id"], (int, np.integer)):
        raise ValueError(f"sample['image_id'] must be an int, got {type(sample['image_id']).__name__}")
