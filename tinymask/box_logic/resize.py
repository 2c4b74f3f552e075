"""Image preprocessing and postprocessing around the network (torchvision's `GeneralizedRCNNTransform`).

Paper: Mask R-CNN §3.1 "Implementation Details" — images are resized so that their shorter side is 800 pixels (with
the longer side capped, 1333 in Detectron and torchvision); inference returns boxes and masks for the original image.

Forward (`preprocess`):
1. normalise each channel: (x − mean) / std (ImageNet statistics, the pretrained backbones' input convention);
2. resize by `scale = min(min_size / short side, max_size / long side)` to `⌊h·scale⌋ × ⌊w·scale⌋`, bilinearly
   (align_corners=False, the sampling ratio recomputed from the sizes); a scale of exactly 1 leaves it unchanged; a
   side that would round to 0 pixels (a banner far longer than max_size : 1) is kept at 1 (`resized_size`);
3. zero-pad bottom and right so every image in the batch has the size of the largest, rounded up to a multiple of
   `size_divisible` (32: the coarsest FPN stride, so every level's map tiles the image exactly).
Ground-truth boxes scale with the image; masks are resized with nearest-neighbour sampling.

Backward (`postprocess`): boxes scale back by original / resized per axis; each 28×28 soft mask is pasted into the
original image (`tinymask.box_logic.mask_paste`) and binarised at 0.5.

Images enter as (3, H, W) float arrays in [0, 1] (RGB), the format of `tinymask.data`.
"""
from __future__ import annotations

import math

import numpy as np

from tinymask._validate import check_finite
from tinymask.box_logic.bilinear import bilinear_resize
from tinymask.box_logic.mask_paste import binarize, paste_masks_in_image
from tinymask.layers.upsample import nearest_indices


def check_image(image, name: str = "image") -> None:
    """An image is a (3, H, W) float32/float64 array of finite values in [0, 1] (a 0..255 float image would be
    normalised wrongly without any error, so it is refused here)."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array (3, H, W), got {type(image).__name__}")
    if image.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} must be float32 or float64 with values in [0, 1], got dtype {image.dtype} "
                        f"(convert uint8 images with image.astype(np.float32) / 255)")
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"{name} must have shape (3, H, W) (RGB, channels first), got {image.shape}")
    if image.shape[1] < 1 or image.shape[2] < 1:
        raise ValueError(f"{name} is empty: shape {image.shape}")
    check_finite(image, name)
    low, high = float(image.min()), float(image.max())
    if low < 0 or high > 1:
        raise ValueError(f"{name} must hold values in [0, 1], got [{low:g}, {high:g}] (divide 0..255 images by 255; "
                         f"the model normalises with cfg.image_mean and cfg.image_std itself)")


def resized_size(hw, min_size: int, max_size: int) -> tuple[tuple[int, int], float]:
    """Size after the resize, and the scale: min(min_size / short side, max_size / long side).

    Each side is `⌊side · scale⌋`, **but at least 1 pixel**. Only an extreme aspect ratio reaches the clamp: when
    max_size caps the scale, the short side becomes `short · max_size / long`, below 1 once long / short exceeds
    max_size (128 in the `small` preset: a 10×2000 banner would be 0×128). torchvision's transform floors the same
    product inside `F.interpolate(..., scale_factor, recompute_scale_factor=True)` and fails there on a zero-size
    output; here the image becomes one pixel thick (1×128) instead. That side's scale is then 1 / short rather than
    `scale`, so the aspect ratio is not kept exactly; boxes and masks follow through `image_sizes` (their scale per
    axis is resized / original, so postprocessing maps them back to the original image exactly). Prediction returns
    masks of the original size, and training accepts the image too: its losses and gradients are finite, and one odd
    image in a dataset should not stop a run, even if a one-pixel-thick view of it teaches little. An image whose
    sides are both at least 1 after flooring (any aspect ratio up to about max_size : 1) is resized as before.
    """
    h, w = hw
    scale = min(min_size / min(h, w), max_size / max(h, w))
    return (max(1, int(math.floor(h * scale))), max(1, int(math.floor(w * scale)))), scale


def resize_image(image: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """(C, H, W) -> (C, H', W') with the short side at min_size unless the long side would pass max_size."""
    (h2, w2), scale = resized_size(image.shape[1:], min_size, max_size)
    if scale == 1.0:
        return image
    return bilinear_resize(image, (h2, w2))


def resize_masks(masks: np.ndarray, out_hw) -> np.ndarray:
    """(G, H, W) binary masks -> (G, H', W'), nearest neighbour (PyTorch's mode="nearest")."""
    if masks.shape[1:] == tuple(out_hw):
        return masks
    iy, ix = nearest_indices(masks.shape[1], out_hw[0]), nearest_indices(masks.shape[2], out_hw[1])
    return masks[:, iy][:, :, ix]


def resize_boxes(boxes: np.ndarray, old_hw, new_hw) -> np.ndarray:
    """Scale (x0, y0, x1, y1) boxes by new / old per axis."""
    ratio_h, ratio_w = new_hw[0] / old_hw[0], new_hw[1] / old_hw[1]
    return (boxes * np.array([ratio_w, ratio_h, ratio_w, ratio_h])).astype(boxes.dtype)


def preprocess(images, cfg, dtype=np.float32):
    """Normalise, resize and batch a list of (3, H, W) images.

    Returns `batch` (N, 3, H_pad, W_pad), `image_sizes` [(h', w')] (resized, unpadded) and `original_sizes` [(h, w)].
    """
    if isinstance(images, np.ndarray) and images.ndim == 3:
        images = [images]
    if len(images) == 0:
        raise ValueError("got an empty list of images")
    mean = np.asarray(cfg.image_mean, dtype=dtype)[:, None, None]  # (3, 1, 1)
    std = np.asarray(cfg.image_std, dtype=dtype)[:, None, None]  # (3, 1, 1)
    resized, original_sizes = [], []
    for i, image in enumerate(images):
        check_image(image, f"images[{i}]")
        original_sizes.append(tuple(image.shape[1:]))
        normalised = (image.astype(dtype, copy=False) - mean) / std  # (3, H, W)
        resized.append(resize_image(normalised, cfg.min_size, cfg.max_size))  # (3, H', W')
    image_sizes = [tuple(r.shape[1:]) for r in resized]
    d = cfg.size_divisible
    pad_h = int(math.ceil(max(s[0] for s in image_sizes) / d) * d)
    pad_w = int(math.ceil(max(s[1] for s in image_sizes) / d) * d)
    batch = np.zeros((len(resized), 3, pad_h, pad_w), dtype=dtype)  # (N, 3, H_pad, W_pad), zero padding
    for i, r in enumerate(resized):
        batch[i, :, :r.shape[1], :r.shape[2]] = r
    return batch, image_sizes, original_sizes


def preprocess_targets(targets, original_sizes, image_sizes):
    """Scale each target's boxes and resize its masks to the resized image."""
    out = []
    for t, old, new in zip(targets, original_sizes, image_sizes):
        t = dict(t)
        t["boxes"] = resize_boxes(t["boxes"], old, new)
        if "masks" in t:
            t["masks"] = resize_masks(t["masks"], new)
        out.append(t)
    return out


def postprocess(detections, image_sizes, original_sizes, mask_threshold: float | None = 0.5):
    """Map detections from the resized image back to the original one and paste their masks.

    detections: per image a dict with "boxes" (D, 4), "scores", "labels" and "mask_probs" (D, M, M). Adds "masks"
    (D, H, W): soft probabilities pasted into the original image, binarised (uint8) unless `mask_threshold` is None.
    """
    results = []
    for det, size, original in zip(detections, image_sizes, original_sizes):
        det = dict(det)
        det["boxes"] = resize_boxes(det["boxes"], size, original)
        if "mask_probs" in det:
            soft = paste_masks_in_image(det.pop("mask_probs"), det["boxes"], original)  # (D, H, W)
            det["masks"] = soft if mask_threshold is None else binarize(soft, mask_threshold).astype(np.uint8)
        results.append(det)
    return results


def check_targets(images, targets, num_classes: int) -> None:
    """Each image (3, H, W) float, finite, in [0, 1]; each target a dict of NumPy arrays {"boxes" (G, 4) float,
    "labels" (G,) int, "masks" (G, H, W) binary} consistent with it.

    Boxes must have positive width and height and lie inside the image (a tolerance of 0.01 pixel); labels must lie
    in 1..num_classes−1 (0 is the background); masks hold 0 and 1 only (bool or any dtype; NaN is not 0 or 1); an
    image with G = 0 is valid (it teaches the background).
    """
    if len(images) != len(targets):
        raise ValueError(f"got {len(images)} images but {len(targets)} targets")
    if len(images) == 0:
        raise ValueError("got an empty batch: no images")
    for i, (image, t) in enumerate(zip(images, targets)):
        check_image(image, f"images[{i}]")
        H, W = image.shape[1:]
        if not isinstance(t, dict):
            raise TypeError(f"targets[{i}] must be a dict with 'boxes', 'labels' and 'masks', got {type(t).__name__}")
        for key in ("boxes", "labels", "masks"):
            if key not in t:
                raise ValueError(f"targets[{i}] has no {key!r} (it needs 'boxes', 'labels' and 'masks')")
            if not isinstance(t[key], np.ndarray):
                raise TypeError(f"targets[{i}][{key!r}] must be a NumPy array, got {type(t[key]).__name__} "
                                f"(convert it with np.asarray)")
        boxes, labels, masks = (t[k] for k in ("boxes", "labels", "masks"))
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
        if masks.dtype != np.bool_ and masks.size and not np.all((masks == 0) | (masks == 1)):
            values = np.unique(masks[(masks != 0) & (masks != 1)])[:3].tolist()
            raise ValueError(f"targets[{i}]['masks'] must be binary (0 and 1, or bool), but holds {values}; for "
                             f"0/255 masks use masks > 0")
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
