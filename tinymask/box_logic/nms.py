"""Greedy non-maximum suppression (NMS), plain and per group.

*Papers:* Ren et al., *Faster R-CNN*, NeurIPS 2015, Sec. 3.3 (NMS at IoU 0.7 on RPN proposals); He et al., *Mask
R-CNN*, ICCV 2017, Sec. 3.1 "Inference" (NMS on the box branch's detections, then the mask branch on the top 100).

Greedy NMS, as torchvision's `nms`: visit boxes from the highest score down; keep a box unless it was suppressed;
when a box is kept, suppress every later box whose IoU with it is **strictly greater** than `iou_threshold` (a pair
at exactly the threshold survives). Ties in score are visited lower index first (a stable sort of `-scores`).

Each step computes one row of IoUs, kept box against all still-alive candidates, with array operations; the loop is
over kept boxes only, never over pairs. IoU is `box_iou`'s: 0 where the union is empty.

`batched_nms` runs NMS separately within each group (a class, or an FPN level), so boxes of different groups never
suppress each other. We loop over the groups. torchvision does the same for large inputs, but for small ones uses the
"offset trick": shift each group's boxes by `group * (max coordinate + 1)` so that boxes of different groups cannot
overlap, then run one NMS. Both define the same result; the loop is easier to read and avoids the rounding that
large offsets add to the IoUs.
"""
from __future__ import annotations

import numpy as np

from tinymask._validate import check_finite, check_float_array, check_same_dtype
from tinymask.box_logic.boxes import check_boxes
from tinymask.ops import get_ops


def _check_nms_inputs(boxes, scores, iou_threshold):
    check_boxes(boxes, "boxes")
    check_float_array(scores, "scores", ndim=1, shape_doc="(N,)")
    check_finite(scores, "scores")
    check_same_dtype(boxes=boxes, scores=scores)
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"scores must have one entry per box: {boxes.shape[0]} boxes, scores of shape {scores.shape}")
    if not isinstance(iou_threshold, (int, float, np.integer, np.floating)) or not np.isfinite(iou_threshold):
        raise TypeError(f"iou_threshold must be a finite number, got {iou_threshold!r}")


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, *, backend: str | None = None) -> np.ndarray:
    """Greedy NMS.

    boxes:  (N, 4) `(x0, y0, x1, y1)`.
    scores: (N,) same dtype as boxes.
    iou_threshold: suppress a box when its IoU with a kept, higher-scoring box is > this.
    backend: "numpy" (`nms_numpy` below), "numba" or "cuda" (default: the selected one, tinymask/ops/backend.py).

    Returns `keep`, (K,) int64 indices into `boxes`, by decreasing score (ties: lower index first).
    """
    _check_nms_inputs(boxes, scores, iou_threshold)
    return get_ops(backend).nms(boxes, scores, iou_threshold)


def nms_numpy(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Greedy NMS on validated inputs, the "numpy" backend's kernel: one row of IoUs per kept box."""
    x0, y0, x1, y1 = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]  # (N,) each
    areas = (x1 - x0) * (y1 - y0)  # (N,)
    order = np.argsort(-scores, kind="stable")  # (N,) best first, ties by index
    keep = []
    while order.size > 0:
        i, rest = order[0], order[1:]  # the best alive box, and the alive boxes after it
        keep.append(i)
        inter_w = np.clip(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0, None)  # (R,)
        inter_h = np.clip(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0, None)  # (R,)
        inter = inter_w * inter_h  # (R,)
        union = areas[i] + areas[rest] - inter  # (R,)
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)  # (R,) one row of IoUs
        order = rest[~(iou > iou_threshold)]  # survivors keep their order
    return np.asarray(keep, dtype=np.int64)  # (K,)


def batched_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, iou_threshold: float, *,
                backend: str | None = None) -> np.ndarray:
    """NMS within each group independently (a loop over the distinct group ids).

    boxes:  (N, 4); scores: (N,); groups: (N,) integer group of each box (class label or FPN level).
    backend: as for `nms`.

    Returns `keep`, (K,) int64 indices into `boxes`, all groups together, by decreasing score (ties: lower index
    first).
    """
    _check_nms_inputs(boxes, scores, iou_threshold)
    if not isinstance(groups, np.ndarray) or not np.issubdtype(groups.dtype, np.integer):
        raise TypeError(f"groups must be an integer NumPy array, got {type(groups).__name__} "
                        f"{getattr(groups, 'dtype', '')}".rstrip())
    if groups.shape != scores.shape:
        raise ValueError(f"groups must have shape (N,) = {scores.shape}, got {groups.shape}")
    kept = [np.zeros((0,), dtype=np.int64)]
    for g in np.unique(groups):
        members = np.flatnonzero(groups == g)  # (N_g,) indices of this group's boxes, increasing
        kept.append(members[nms(boxes[members], scores[members], iou_threshold, backend=backend)])
    keep = np.concatenate(kept)  # (K,) grouped
    keep.sort()  # by index, so the stable sort below breaks score ties by index
    return keep[np.argsort(-scores[keep], kind="stable")]  # (K,) by decreasing score
