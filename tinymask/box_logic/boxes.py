"""Boxes: area, IoU, the Faster R-CNN box coding (Eq. 2), clipping and a validator.

*Paper:* Ren, He, Girshick, Sun, *Faster R-CNN*, NeurIPS 2015, Sec. 3.1.2, Eq. (2); used unchanged by Mask R-CNN's
RPN and box head (He et al., ICCV 2017, Sec. 3).

Conventions used in this file (and everywhere in tinymask):

- A box is a row `(x0, y0, x1, y1)` of floats in continuous pixel coordinates: pixel `(i, j)` covers
  `[j, j+1) x [i, i+1)`. Width is `x1 - x0` and height `y1 - y0`, with no "+1".
- A box with `x1 == x0` or `y1 == y0` is *degenerate* (zero area) and allowed; a box with `x1 < x0` or `y1 < y0` is
  *inverted* and refused by `check_boxes`.
- A box's centre is `(x0 + w/2, y0 + h/2)`.

Box coding, Eq. (2). A box `(x, y, w, h)` (centre, size) is described relative to a reference box
`(x_a, y_a, w_a, h_a)` (an anchor or a proposal) by four numbers

    t_x = (x - x_a) / w_a,   t_y = (y - y_a) / h_a,   t_w = log(w / w_a),   t_h = log(h / h_a).

torchvision multiplies them by `weights = (w_x, w_y, w_w, w_h)`: `(1, 1, 1, 1)` for the RPN and `(10, 10, 5, 5)` for
the box head, which scales the regression targets to roughly unit variance. Decoding inverts this, with `t_w` and
`t_h` clamped above at `log(1000 / 16)` so that `exp` cannot overflow (a box at most 62.5 times its reference).

Nothing here needs a gradient: the regression loss differentiates the deltas, never the decoding.
"""
from __future__ import annotations

import math

import numpy as np

from tinymask._validate import check_finite, check_float_array, check_same_dtype

#: Upper clamp on decoded log-size deltas (torchvision's `bbox_xform_clip`): a box grows at most 1000/16 = 62.5 times.
DEFAULT_CLAMP = math.log(1000.0 / 16)


def check_boxes(boxes, name: str = "boxes") -> np.ndarray:
    """Check that `boxes` is an (N, 4) float array of finite `(x0, y0, x1, y1)` rows with `x1 >= x0` and `y1 >= y0`.

    Zero-area boxes pass; inverted ones raise. Returns `boxes` unchanged so the call can sit in an expression.
    Raises TypeError for a non-array or a non-float dtype, ValueError for a wrong shape, NaN/inf or an inverted box;
    each message starts with `name`.
    """
    check_float_array(boxes, name, ndim=2, shape_doc="(N, 4)")
    if boxes.shape[1] != 4:
        raise ValueError(f"{name} must have shape (N, 4) with rows (x0, y0, x1, y1), got shape {boxes.shape}")
    check_finite(boxes, name)
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])  # (N,)
    if np.any(inverted):
        i = int(np.flatnonzero(inverted)[0])
        raise ValueError(
            f"{name} has an inverted box (x1 < x0 or y1 < y0) at row {i}: {boxes[i].tolist()}; "
            "boxes are (x0, y0, x1, y1) with x1 >= x0 and y1 >= y0"
        )
    return boxes


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas `(x1 - x0) * (y1 - y0)` of (N, 4) boxes, shape (N,)."""
    check_boxes(boxes, "boxes")
    return _area(boxes)


def _area(boxes: np.ndarray) -> np.ndarray:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (N,) width * height


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every pair: (N, 4) x (M, 4) -> (N, M).

    `iou[i, j] = |a_i ∩ b_j| / |a_i ∪ b_j|`. Where the union is empty (two zero-area boxes) the IoU is defined as 0;
    torchvision returns NaN (0 / 0) there, the only place the two differ.
    """
    check_boxes(a, "a")
    check_boxes(b, "b")
    check_same_dtype(a=a, b=b)
    area_a = _area(a)  # (N,)
    area_b = _area(b)  # (M,)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])  # (N, M, 2)
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])  # (N, M, 2)
    wh = np.clip(bottom_right - top_left, 0, None)  # (N, M, 2) overlap sides, 0 when apart
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = area_a[:, None] + area_b[None, :] - inter  # (N, M)
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)  # (N, M)


def _centre_size(boxes: np.ndarray):
    """Split (N, 4) corner boxes into centre x, centre y, width, height, each (N,)."""
    widths = boxes[:, 2] - boxes[:, 0]  # (N,)
    heights = boxes[:, 3] - boxes[:, 1]  # (N,)
    ctr_x = boxes[:, 0] + 0.5 * widths  # (N,)
    ctr_y = boxes[:, 1] + 0.5 * heights  # (N,)
    return ctr_x, ctr_y, widths, heights


def _check_weights(weights) -> tuple[float, float, float, float]:
    if len(weights) != 4 or not all(isinstance(w, (int, float, np.integer, np.floating)) for w in weights):
        raise TypeError(f"weights must be four numbers (w_x, w_y, w_w, w_h), got {weights!r}")
    if not all(w > 0 for w in weights):
        raise ValueError(f"weights must be positive, got {tuple(weights)}")
    return tuple(float(w) for w in weights)


def encode_boxes(reference_boxes: np.ndarray, proposals: np.ndarray, weights=(1.0, 1.0, 1.0, 1.0)) -> np.ndarray:
    """Regression targets (N, 4) that move each proposal onto its reference box: Faster R-CNN Eq. (2), weighted.

    reference_boxes: (N, 4) the boxes to reach (matched ground truth).
    proposals:       (N, 4) the boxes they are described relative to (anchors or proposals).
    weights:         (w_x, w_y, w_w, w_h); (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the box head.

    Returns (N, 4) rows `(t_x, t_y, t_w, t_h)`. Both inputs need positive widths and heights (a log of zero or a
    division by zero has no meaning here), otherwise ValueError.
    """
    check_boxes(reference_boxes, "reference_boxes")
    check_boxes(proposals, "proposals")
    check_same_dtype(reference_boxes=reference_boxes, proposals=proposals)
    if reference_boxes.shape[0] != proposals.shape[0]:
        raise ValueError(
            f"reference_boxes and proposals must have the same number of rows, got {reference_boxes.shape[0]} "
            f"and {proposals.shape[0]}"
        )
    wx, wy, ww, wh = _check_weights(weights)
    for name, b in (("reference_boxes", reference_boxes), ("proposals", proposals)):
        flat = (b[:, 2] <= b[:, 0]) | (b[:, 3] <= b[:, 1])  # (N,)
        if np.any(flat):
            i = int(np.flatnonzero(flat)[0])
            raise ValueError(f"{name} needs positive widths and heights to be encoded, row {i} is {b[i].tolist()}")

    ex_x, ex_y, ex_w, ex_h = _centre_size(proposals)  # (N,) each: x_a, y_a, w_a, h_a
    gt_x, gt_y, gt_w, gt_h = _centre_size(reference_boxes)  # (N,) each: x, y, w, h
    t_x = wx * (gt_x - ex_x) / ex_w  # Eq. (2): t_x = (x - x_a) / w_a
    t_y = wy * (gt_y - ex_y) / ex_h  # Eq. (2): t_y = (y - y_a) / h_a
    t_w = ww * np.log(gt_w / ex_w)  # Eq. (2): t_w = log(w / w_a)
    t_h = wh * np.log(gt_h / ex_h)  # Eq. (2): t_h = log(h / h_a)
    return np.stack([t_x, t_y, t_w, t_h], axis=1)  # (N, 4)


def decode_boxes(deltas: np.ndarray, boxes: np.ndarray, weights=(1.0, 1.0, 1.0, 1.0), clamp: float = DEFAULT_CLAMP):
    """Apply regression deltas to reference boxes: the inverse of `encode_boxes`.

    deltas:  (N, 4 * K) rows `(t_x, t_y, t_w, t_h)` for each of K classes (K = 1 for the RPN, one set per class for
             the box head), or (N, 4).
    boxes:   (N, 4) the reference boxes (anchors or proposals).
    weights: the same (w_x, w_y, w_w, w_h) the targets were encoded with.
    clamp:   `t_w / w_w` and `t_h / w_h` are clamped above at this value before `exp` (default log(1000 / 16)).

    Returns (N, 4 * K) boxes `(x0, y0, x1, y1)` per class, the same shape as `deltas`. Nothing is clipped to the
    image; that is `clip_boxes`' job.
    """
    check_float_array(deltas, "deltas", ndim=2, shape_doc="(N, 4 * K)")
    if deltas.shape[1] == 0 or deltas.shape[1] % 4 != 0:
        raise ValueError(f"deltas must have shape (N, 4 * K) with K >= 1, got shape {deltas.shape}")
    check_finite(deltas, "deltas")
    check_boxes(boxes, "boxes")
    check_same_dtype(deltas=deltas, boxes=boxes)
    if deltas.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"deltas and boxes must have the same number of rows, got {deltas.shape[0]} and {boxes.shape[0]}"
        )
    wx, wy, ww, wh = _check_weights(weights)

    ctr_x, ctr_y, widths, heights = _centre_size(boxes)  # (N,) each
    dx = deltas[:, 0::4] / wx  # (N, K)
    dy = deltas[:, 1::4] / wy  # (N, K)
    dw = np.minimum(deltas[:, 2::4] / ww, clamp)  # (N, K) clamped so exp cannot overflow
    dh = np.minimum(deltas[:, 3::4] / wh, clamp)  # (N, K)

    pred_x = dx * widths[:, None] + ctr_x[:, None]  # (N, K) inverse of t_x = (x - x_a) / w_a
    pred_y = dy * heights[:, None] + ctr_y[:, None]  # (N, K) inverse of t_y = (y - y_a) / h_a
    pred_w = np.exp(dw) * widths[:, None]  # (N, K) inverse of t_w = log(w / w_a)
    pred_h = np.exp(dh) * heights[:, None]  # (N, K) inverse of t_h = log(h / h_a)

    out = np.empty_like(deltas)  # (N, 4 * K)
    out[:, 0::4] = pred_x - 0.5 * pred_w
    out[:, 1::4] = pred_y - 0.5 * pred_h
    out[:, 2::4] = pred_x + 0.5 * pred_w
    out[:, 3::4] = pred_y + 0.5 * pred_h
    return out


def clip_boxes(boxes: np.ndarray, image_hw) -> np.ndarray:
    """Clamp (N, 4) boxes into an image of size `image_hw = (height, width)`: x into [0, width], y into [0, height].

    A box entirely outside the image becomes a zero-area box on the border. Returns a new array.
    """
    check_boxes(boxes, "boxes")
    height, width = _check_hw(image_hw, "image_hw")
    out = boxes.copy()  # (N, 4)
    out[:, 0::2] = np.clip(out[:, 0::2], 0, width)  # x0, x1
    out[:, 1::2] = np.clip(out[:, 1::2], 0, height)  # y0, y1
    return out


def remove_small_boxes(boxes: np.ndarray, min_size: float) -> np.ndarray:
    """Indices (int64, increasing) of the boxes whose width and height are both at least `min_size`."""
    check_boxes(boxes, "boxes")
    widths = boxes[:, 2] - boxes[:, 0]  # (N,)
    heights = boxes[:, 3] - boxes[:, 1]  # (N,)
    return np.flatnonzero((widths >= min_size) & (heights >= min_size)).astype(np.int64)  # (N_keep,)


def _check_hw(hw, name: str) -> tuple[int, int]:
    """A (height, width) pair of non-negative ints."""
    if (
        not isinstance(hw, (tuple, list, np.ndarray))
        or len(hw) != 2
        or not all(isinstance(v, (int, np.integer)) for v in hw)
    ):
        raise TypeError(f"{name} must be a pair of ints (height, width), got {hw!r}")
    h, w = int(hw[0]), int(hw[1])
    if h < 0 or w < 0:
        raise ValueError(f"{name} must be non-negative, got {(h, w)}")
    return h, w
