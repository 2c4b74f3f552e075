"""Validation of training images and their ground truth, before anything is computed.

A wrong target caught late shows up as a NaN loss or an index error deep in the matcher; caught here it is one
sentence naming the image, the instance and the problem.
"""
from __future__ import annotations

import numpy as np

from .transform import check_image


def check_targets(images, targets, num_classes: int) -> None:
    """Each image (3, H, W) float, finite; each target {"boxes" (G, 4), "labels" (G,), "masks" (G, H, W)} consistent.

    Boxes must have positive width and height and lie inside the image (a tolerance of 0.01 pixel); labels must lie
    in 1..num_classes−1 (0 is the background); an image with G = 0 is valid (it teaches the background).
    """
    if len(images) != len(targets):
        raise ValueError(f"got {len(images)} images but {len(targets)} targets")
    if len(images) == 0:
        raise ValueError("got an empty batch: no images")
    for i, (image, t) in enumerate(zip(images, targets)):
        check_image(image, f"images[{i}]")
        H, W = image.shape[1:]
        for key in ("boxes", "labels", "masks"):
            if key not in t:
                raise ValueError(f"targets[{i}] has no {key!r} (it needs 'boxes', 'labels' and 'masks')")
        boxes, labels, masks = (np.asarray(t[k]) for k in ("boxes", "labels", "masks"))
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"targets[{i}]['boxes'] must have shape (G, 4), got {boxes.shape}")
        if not np.issubdtype(boxes.dtype, np.floating):
            raise TypeError(f"targets[{i}]['boxes'] must be float (x0, y0, x1, y1), got dtype {boxes.dtype}")
        G = boxes.shape[0]
        if labels.shape != (G,) or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"targets[{i}]['labels'] must be {G} integers (one per box), got {labels.dtype} "
                             f"shape {labels.shape}")
        if masks.shape != (G, H, W):
            raise ValueError(f"targets[{i}]['masks'] must have shape (G, H, W) = {(G, H, W)} (one mask per box, the "
                             f"image's size), got {masks.shape}")
        if not np.all(np.isfinite(boxes)):
            raise ValueError(f"targets[{i}]['boxes'] contains NaN or infinity")
        if G and (labels.min() < 1 or labels.max() >= num_classes):
            raise ValueError(f"targets[{i}]['labels'] must lie in 1..{num_classes - 1} (0 is the background), got "
                             f"{labels.min()}..{labels.max()}")
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        bad = np.flatnonzero((w <= 0) | (h <= 0))
        if bad.size:
            raise ValueError(f"targets[{i}] box {bad[0]} is degenerate (zero or negative width or height): "
                             f"{boxes[bad[0]].tolist()}")
        tol = 1e-2
        outside = np.flatnonzero((boxes[:, 0] < -tol) | (boxes[:, 1] < -tol) | (boxes[:, 2] > W + tol)
                                 | (boxes[:, 3] > H + tol))
        if outside.size:
            raise ValueError(f"targets[{i}] box {outside[0]} {boxes[outside[0]].tolist()} lies outside the image "
                             f"(width {W}, height {H})")
