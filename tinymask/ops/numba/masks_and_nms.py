"""Numba CPU kernels of inference: pasting masks into the image (tinymask/box_logic/mask_paste.py) and NMS
(tinymask/box_logic/nms.py).

Both are the simple kernels, and the only ones. paste_masks runs one mask per `prange` iteration (it alone writes
its output plane), with the resize weights of `tinymask/box_logic/bilinear.py`'s `linear_weights`, compiled. NMS is
the greedy loop of the definition, compiled but sequential: each decision depends on the ones before it.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from tinymask.ops.numba.common import resize_weights, threads_for


@njit(cache=True, parallel=True)
def _paste(padded, boxes, out):
    n, im_h, im_w = out.shape
    P = padded.shape[1]
    for k in prange(n):  # one mask per iteration owns out[k]
        x0, y0, x1, y1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        ix0, ix1 = max(x0, 0), min(x1 + 1, im_w)  # the part of the box inside the image
        iy0, iy1 = max(y0, 0), min(y1 + 1, im_h)
        if ix0 >= ix1 or iy0 >= iy1:
            continue
        r0, r1, wr0, wr1 = resize_weights(P, max(y1 - y0 + 1, 1))  # resize P -> box height (bilinear.py)
        c0, c1, wc0, wc1 = resize_weights(P, max(x1 - x0 + 1, 1))
        wr0, wr1 = wr0.astype(padded.dtype), wr1.astype(padded.dtype)  # in the masks' dtype, as bilinear_resize
        wc0, wc1 = wc0.astype(padded.dtype), wc1.astype(padded.dtype)
        M = padded[k]
        for yy in range(iy0, iy1):
            i = yy - y0
            for xx in range(ix0, ix1):
                j = xx - x0
                row_c0 = wr0[i] * M[r0[i], c0[j]] + wr1[i] * M[r1[i], c0[j]]  # blend along the height first
                row_c1 = wr0[i] * M[r0[i], c1[j]] + wr1[i] * M[r1[i], c1[j]]
                out[k, yy, xx] = wc0[j] * row_c0 + wc1[j] * row_c1  # then along the width


def paste_masks(padded, int_boxes, image_hw):
    """padded (N, P, P) masks, int_boxes (N, 4) int -> (N, H, W), as mask_paste.py's steps 4 and 5."""
    # NumPy's zeros: pages outside the boxes are never touched, so they cost nothing (a 100-mask 800×1088 output is
    # 348 MB in float32, mostly zeros).
    out = np.zeros((padded.shape[0], int(image_hw[0]), int(image_hw[1])), dtype=padded.dtype)  # (N, H, W)
    with threads_for(out.size):
        _paste(np.ascontiguousarray(padded), np.ascontiguousarray(int_boxes, dtype=np.int64), out)
    return out


@njit(cache=True)
def _nms(boxes, areas, order, threshold, zero):
    n = order.shape[0]
    suppressed = np.zeros(n, dtype=np.bool_)
    keep = np.empty(n, dtype=np.int64)
    m = 0
    for a in range(n):  # boxes by decreasing score
        if suppressed[a]:
            continue
        i = order[a]
        keep[m] = i
        m += 1
        for b in range(a + 1, n):  # suppress the later boxes that overlap the kept one too much
            if suppressed[b]:
                continue
            j = order[b]
            iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
            ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
            inter = max(iw, zero) * max(ih, zero)
            union = areas[i] + areas[j] - inter
            iou = inter / union if union > zero else zero  # box_iou's rule: 0 where the union is empty
            if iou > threshold:
                suppressed[b] = True
    return keep[:m].copy()


def nms(boxes, scores, iou_threshold):
    """Greedy NMS: keep (K,) int64, by decreasing score; the same keep list as nms.py's, bit for bit.

    The arithmetic is nms.py's in the boxes' dtype (areas computed by the same NumPy expression, the threshold
    compared in the dtype NumPy would compare it in), so that IoUs right at the threshold decide the same way.
    """
    boxes = np.ascontiguousarray(boxes)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])  # (N,)
    order = np.argsort(-scores, kind="stable").astype(np.int64)  # best first, ties by index
    compare = np.result_type(boxes.dtype, iou_threshold)  # float32 boxes vs a Python float: float32, as NumPy does
    return _nms(boxes, areas, order, compare.type(iou_threshold), boxes.dtype.type(0))
