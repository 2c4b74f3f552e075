"""Pasting the mask branch's M x M masks back into the image.

*Paper:* He et al., *Mask R-CNN*, ICCV 2017, Sec. 3.1 "Inference": "The m x m floating-number mask output is then
resized to the RoI size, and binarized at a threshold of 0.5."

torchvision's `paste_masks_in_image`, which this file reproduces, resizes a little more carefully than "to the RoI
size", so that the mask's border falls off smoothly rather than being cut at the box edge:

1. **Pad** each M x M mask with `padding` (1) pixel of zeros on every side: (M + 2) x (M + 2).
2. **Enlarge** the box about its centre by `(M + 2 * padding) / M`, so the padded mask covers the enlarged box the
   way the original mask covered the box.
3. **Truncate** the enlarged box's corners to integers (towards zero, like a C cast, so -2.7 becomes -2).
4. **Resize** the padded mask bilinearly (align_corners=False) to `(y1 - y0 + 1) x (x1 - x0 + 1)` pixels, at least
   1 x 1: the integer box is read as inclusive pixel indices here, hence the "+1".
5. **Copy** the part that lies inside the (H, W) image into a zero image at rows y0..y1, columns x0..x1.

The result is a soft mask (probabilities); `binarize` applies the paper's 0.5 threshold.
"""
from __future__ import annotations

import numpy as np

from tinymask._validate import check_finite, check_float_array, check_same_dtype
from tinymask.box_logic.bilinear import bilinear_resize
from tinymask.box_logic.boxes import _check_hw, check_boxes
from tinymask.ops import get_ops


def expand_boxes(boxes: np.ndarray, scale: float) -> np.ndarray:
    """Scale (N, 4) boxes about their centres by `scale` (width and height both multiplied by it)."""
    half_w = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale  # (N,)
    half_h = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale  # (N,)
    ctr_x = (boxes[:, 2] + boxes[:, 0]) * 0.5  # (N,)
    ctr_y = (boxes[:, 3] + boxes[:, 1]) * 0.5  # (N,)
    return np.stack([ctr_x - half_w, ctr_y - half_h, ctr_x + half_w, ctr_y + half_h], axis=1)  # (N, 4)


def paste_masks_in_image(masks: np.ndarray, boxes: np.ndarray, image_hw, padding: int = 1, *,
                         backend: str | None = None) -> np.ndarray:
    """Paste each detection's mask into a full image.

    masks:    (N, M, M) or (N, 1, M, M) soft masks (the mask head's sigmoid outputs for each detection's class).
    boxes:    (N, 4) detection boxes `(x0, y0, x1, y1)` in the coordinates of the target image.
    image_hw: (H, W) of the target image.
    padding:  zero pixels added around each mask before resizing (torchvision: 1).
    backend:  "numpy" (`paste_masks_numpy` below), "numba" or "cuda" for steps 4-5 (default: the selected one,
              tinymask/ops/backend.py).

    Returns (N, H, W) soft masks in the dtype of `masks`, zero outside each pasted box. N = 0 gives (0, H, W).
    Unlike torchvision (which fails there), a box entirely outside the image gives an all-zero mask.
    """
    check_float_array(masks, "masks")
    if masks.ndim == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]  # (N, M, M)
    if masks.ndim != 3 or masks.shape[1] != masks.shape[2]:
        raise ValueError(f"masks must have shape (N, M, M) or (N, 1, M, M) (square), got {masks.shape}")
    check_finite(masks, "masks")
    check_boxes(boxes, "boxes")
    check_same_dtype(masks=masks, boxes=boxes)
    if boxes.shape[0] != masks.shape[0]:
        raise ValueError(f"boxes must have one row per mask: {masks.shape[0]} masks, boxes of shape {boxes.shape}")
    im_h, im_w = _check_hw(image_hw, "image_hw")
    if not isinstance(padding, (int, np.integer)) or padding < 0:
        raise ValueError(f"padding must be a non-negative int, got {padding!r}")

    n, m = masks.shape[0], masks.shape[-1]
    if n == 0:
        return np.zeros((0, im_h, im_w), dtype=masks.dtype)
    padded = np.pad(masks, ((0, 0), (padding, padding), (padding, padding)))  # (N, M + 2p, M + 2p)
    scale = (m + 2 * padding) / m  # enlarge the box as the mask was enlarged
    int_boxes = np.trunc(expand_boxes(boxes, scale)).astype(np.int64)  # (N, 4) towards zero, as a C cast

    return get_ops(backend).paste_masks(padded, int_boxes, (im_h, im_w))  # steps 4 and 5: (N, H, W)


def paste_masks_numpy(padded: np.ndarray, int_boxes: np.ndarray, image_hw) -> np.ndarray:
    """Steps 4 and 5, the "numpy" backend's kernel: padded (N, P, P) masks, int_boxes (N, 4) -> (N, H, W)."""
    im_h, im_w = image_hw
    out = np.zeros((padded.shape[0], im_h, im_w), dtype=padded.dtype)  # (N, H, W)
    for k in range(padded.shape[0]):
        x0, y0, x1, y1 = (int(v) for v in int_boxes[k])
        w = max(x1 - x0 + 1, 1)  # inclusive pixel indices, at least one pixel
        h = max(y1 - y0 + 1, 1)
        resized = bilinear_resize(padded[k], (h, w))  # (h, w) the mask over the whole integer box
        # The part of the box inside the image, in image indices [iy0, iy1) x [ix0, ix1).
        ix0, ix1 = max(x0, 0), min(x1 + 1, im_w)
        iy0, iy1 = max(y0, 0), min(y1 + 1, im_h)
        if ix0 >= ix1 or iy0 >= iy1:
            continue  # the box lies entirely outside the image
        out[k, iy0:iy1, ix0:ix1] = resized[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
    return out


def binarize(masks: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Hard masks: `masks > threshold` as booleans (the paper's 0.5; torchvision's COCO evaluation uses `>`)."""
    check_float_array(masks, "masks")
    return masks > threshold
