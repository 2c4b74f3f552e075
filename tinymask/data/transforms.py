"""Data augmentation, batching and a resumable epoch order.

*Paper:* He et al., *Mask R-CNN*, ICCV 2017, Sec. 3.1 "Implementation Details" resizes training images (shorter
side 800 pixels); the reference code (Detectron, and detectron2's `RandomFlip`, probability 0.5) adds a horizontal
flip as its only augmentation. Images of a mini-batch are padded to a common size before they enter the backbone.

## Flipping a sample

Mirroring an image of width W maps the continuous x coordinate to W - x (docs/conventions.md: pixel j covers
[j, j+1), and W - [j, j+1) = (W - j - 1, W - j], which is pixel W - 1 - j, so reversing the columns is exactly
this map). A box's left edge becomes the right edge and vice versa:

    x0' = W - x1,   x1' = W - x0,   y0' = y0,   y1' = y1

The masks' columns are reversed with the image's, so image, boxes and masks stay consistent. Flipping twice gives
the sample back.

## Batching

`collate` stacks samples of different sizes into one (N, 3, H_max, W_max) array by zero-padding each image at the
bottom and right. Padding there leaves every box coordinate valid; `image_sizes` remembers the real sizes. The
targets stay per image (lists), because each image has its own number of instances.

## A resumable epoch order

`epoch_order(num_items, seed, epoch)` is the permutation of epoch `epoch`, generated from its own generator
`np.random.default_rng([seed, epoch])`. It depends on nothing else (no generator state carried from epoch to
epoch), so a training run stopped in the middle of epoch 7 and restarted sees the same images in the same order.
"""
from __future__ import annotations

import numpy as np

SAMPLE_TARGET_KEYS = ("boxes", "labels", "masks", "iscrowd")  # per-instance arrays, indexed together


def horizontal_flip(sample: dict) -> dict:
    """Mirror a sample left to right: image (3, H, W), boxes (G, 4) and masks (G, H, W) together.

    Returns a new dict of new (contiguous) arrays; the input is not changed. Other keys are copied over.
    """
    width = sample["image"].shape[-1]
    out = dict(sample)
    out["image"] = np.ascontiguousarray(sample["image"][:, :, ::-1])  # (3, H, W) columns reversed
    out["masks"] = np.ascontiguousarray(sample["masks"][:, :, ::-1])  # (G, H, W)
    boxes = sample["boxes"]  # (G, 4) x0, y0, x1, y1
    flipped = boxes.copy()
    flipped[:, 0] = width - boxes[:, 2]  # x0' = W - x1
    flipped[:, 2] = width - boxes[:, 0]  # x1' = W - x0
    out["boxes"] = flipped
    return out


def random_horizontal_flip(sample: dict, rng: np.random.Generator, p: float = 0.5) -> dict:
    """Flip the sample with probability `p`. Draws exactly one number from `rng` whether it flips or not."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p!r}")
    return horizontal_flip(sample) if rng.random() < p else sample


def training_targets(sample: dict) -> dict:
    """The instances a training loss should see: crowd regions and degenerate boxes removed.

    COCO marks crowds (`iscrowd`) that are kept in the sample for evaluation, where a detection on a crowd is
    neither right nor wrong; they are not training targets. A box of zero width or height (COCO has a few) would
    make box coding divide by zero (log of 0), so it is dropped too, as detectron2 and torchvision do.
    """
    boxes = sample["boxes"]  # (G, 4)
    keep = ~sample["iscrowd"] & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])  # (G,) bool
    out = dict(sample)
    for key in SAMPLE_TARGET_KEYS:
        out[key] = sample[key][keep]
    return out


def collate(samples: list, size_divisible: int = 1) -> dict:
    """Batch samples: images zero-padded at the bottom and right to one size, targets kept per image.

    samples:        a list of N sample dicts, images (3, H_n, W_n).
    size_divisible: round the padded height and width up to a multiple of this (32 for a 5-level FPN, so every
                    level's feature map halves exactly).

    Returns a dict:
        images      (N, 3, H_pad, W_pad), in the images' dtype
        image_sizes (N, 2) int64, the (H, W) of each image before padding
        boxes, labels, masks, iscrowd, image_ids: lists of N per-image entries (masks stay (G_n, H_n, W_n))
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    sizes = np.array([s["image"].shape[1:] for s in samples], dtype=np.int64)  # (N, 2)
    h_pad, w_pad = (-(-sizes.max(axis=0) // size_divisible) * size_divisible).tolist()  # ceil to a multiple
    images = np.zeros((len(samples), 3, h_pad, w_pad), dtype=samples[0]["image"].dtype)  # (N, 3, H_pad, W_pad)
    for n, s in enumerate(samples):
        h, w = s["image"].shape[1:]
        images[n, :, :h, :w] = s["image"]
    batch = {"images": images, "image_sizes": sizes}
    for key in SAMPLE_TARGET_KEYS:
        batch[key] = [s[key] for s in samples]
    batch["image_ids"] = [s["image_id"] for s in samples]
    return batch


def epoch_order(num_items: int, seed: int, epoch: int) -> np.ndarray:
    """The (num_items,) int64 permutation of epoch `epoch`: the same for the same (seed, epoch), on any restart."""
    if num_items < 0 or seed < 0 or epoch < 0:
        raise ValueError(f"num_items, seed and epoch must be non-negative, got {num_items}, {seed}, {epoch}")
    return np.random.default_rng([seed, epoch]).permutation(num_items).astype(np.int64)


def batch_indices(num_items: int, batch_size: int, seed: int, epoch: int, drop_last: bool = False) -> list:
    """Epoch `epoch`'s order cut into batches of `batch_size` indices (the last one shorter unless `drop_last`).

    To resume after `step` batches of an epoch, start from `batch_indices(...)[step]`.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = epoch_order(num_items, seed, epoch)  # (num_items,)
    stop = num_items - num_items % batch_size if drop_last else num_items
    return [order[i:i + batch_size] for i in range(0, stop, batch_size)]
