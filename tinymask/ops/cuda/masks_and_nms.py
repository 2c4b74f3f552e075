"""CUDA kernels of inference: pasting masks into the image (tinymask/box_logic/mask_paste.py) and NMS
(tinymask/box_logic/nms.py).

- paste_masks: the simple kernel, and the only one: one thread per output pixel.
- nms: the bitmask kernel (the one torchvision's CUDA NMS uses). Boxes sorted by score; block (row r, column c) has
  64 threads, thread t compares box 64r + t with the 64 boxes of column block c and sets bit s of `mask[64r + t, c]`
  when box 64c + s (later in the order) overlaps it more than the threshold. The greedy pass over the bits is
  sequential and runs on the host. IoUs are computed in the boxes' dtype as nms.py does, and the kernel's PTX has no
  fused multiply-add, so the keep list is the reference's.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, uint64

from tinymask.ops.cuda.device import TPB, grid, to_device

NMS_BITS = 64  # boxes per NMS column block: one uint64 of mask bits


@cuda.jit(device=True)
def _resize_1d(d, n_in, n_out):
    """bilinear.py's `linear_weights` for one destination index d: (i0, i1, w0, w1)."""
    src = max((d + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = min(int(math.floor(src)), n_in - 1)
    i1 = min(i0 + 1, n_in - 1)
    w1 = min(max(src - i0, 0.0), 1.0)
    return i0, i1, 1.0 - w1, w1


@cuda.jit(cache=True)
def _paste_kernel(padded, boxes, out):
    n, H, W = out.shape
    P = padded.shape[1]
    for idx in range(cuda.grid(1), n * H * W, cuda.gridsize(1)):
        k, yy, xx = idx // (H * W), (idx // W) % H, idx % W
        x0, y0, x1, y1 = boxes[k, 0], boxes[k, 1], boxes[k, 2], boxes[k, 3]
        if yy < y0 or yy > y1 or xx < x0 or xx > x1:
            continue  # outside this box: stays 0
        r0, r1, wr0, wr1 = _resize_1d(yy - y0, P, max(y1 - y0 + 1, 1))
        c0, c1, wc0, wc1 = _resize_1d(xx - x0, P, max(x1 - x0 + 1, 1))
        row_c0 = wr0 * padded[k, r0, c0] + wr1 * padded[k, r1, c0]
        row_c1 = wr0 * padded[k, r0, c1] + wr1 * padded[k, r1, c1]
        out[k, yy, xx] = wc0 * row_c0 + wc1 * row_c1


def paste_masks(padded, int_boxes, image_hw):
    """padded (N, P, P) masks, int_boxes (N, 4) int -> (N, H, W), as mask_paste.py's steps 4 and 5."""
    out = np.zeros((padded.shape[0], int(image_hw[0]), int(image_hw[1])), dtype=padded.dtype)
    if out.size:
        d_out = cuda.to_device(out)
        _paste_kernel[grid(out.size), TPB](to_device(padded), to_device(int_boxes, np.int64), d_out)
        out = d_out.copy_to_host()
    return out


@cuda.jit(cache=True)
def _nms_mask_kernel(boxes, areas, threshold, zero, mask):
    n = boxes.shape[0]
    row_block, col_block, t = cuda.blockIdx.y, cuda.blockIdx.x, cuda.threadIdx.x
    i = row_block * NMS_BITS + t  # this thread's box (in score order)
    if col_block < row_block or i >= n:
        return  # only later boxes can be suppressed by box i
    bits = uint64(0)
    for s in range(NMS_BITS):
        j = col_block * NMS_BITS + s
        if j <= i or j >= n:
            continue
        iw = min(boxes[i, 2], boxes[j, 2]) - max(boxes[i, 0], boxes[j, 0])
        ih = min(boxes[i, 3], boxes[j, 3]) - max(boxes[i, 1], boxes[j, 1])
        inter = max(iw, zero) * max(ih, zero)
        union = areas[i] + areas[j] - inter
        iou = inter / union if union > zero else zero
        if iou > threshold:
            bits |= uint64(1) << uint64(s)
    mask[i, col_block] = bits


def nms(boxes, scores, iou_threshold):
    """Greedy NMS: keep (K,) int64 by decreasing score, the same keep list as nms.py's."""
    n = boxes.shape[0]
    if n == 0:
        return np.zeros((0,), dtype=np.int64)
    order = np.argsort(-scores, kind="stable")  # best first, ties by index
    sorted_boxes = np.ascontiguousarray(boxes[order])
    areas = (sorted_boxes[:, 2] - sorted_boxes[:, 0]) * (sorted_boxes[:, 3] - sorted_boxes[:, 1])
    compare = np.result_type(boxes.dtype, iou_threshold)  # the dtype NumPy compares IoU and threshold in
    blocks = (n + NMS_BITS - 1) // NMS_BITS
    d_mask = cuda.to_device(np.zeros((n, blocks), dtype=np.uint64))
    _nms_mask_kernel[(blocks, blocks), NMS_BITS](to_device(sorted_boxes), to_device(areas),
                                                 compare.type(iou_threshold), boxes.dtype.type(0), d_mask)
    mask = d_mask.copy_to_host()
    removed = np.zeros(blocks, dtype=np.uint64)  # bit s of removed[c]: box 64c + s is suppressed
    keep = []
    for i in range(n):  # the greedy pass: sequential by nature, cheap (one OR of a row of bits per kept box)
        c, s = divmod(i, NMS_BITS)
        if not (int(removed[c]) >> s) & 1:
            keep.append(order[i])
            removed |= mask[i]
    return np.asarray(keep, dtype=np.int64)
