"""Region Proposal Network: the head, its training targets and losses, and the proposals it hands to the RoI heads.

Paper: Ren et al., *Faster R-CNN*, NeurIPS 2015, §3.1 — a small network slides over the feature map: a 3×3 conv
(+ ReLU), then two sibling 1×1 convs giving, for each of the A anchors of each cell, an objectness logit and four box
deltas. With FPN (Lin et al. 2017, §4.1) the same head (shared weights) runs on every level P2..P6, one anchor size
per level; Mask R-CNN uses it unchanged. (The paper's main results train the RPN separately, §3.1; tinymask trains
it jointly with the heads, the paper's Appendix B "end-to-end" setting, as torchvision does.)

Training (Faster R-CNN §3.1.2–3.1.3): each anchor is labelled positive (IoU ≥ 0.7 with a ground-truth box, or the
best anchor of some box), negative (IoU < 0.3) or ignored; 256 anchors per image are sampled at up to 1:1; the loss
is the binary cross-entropy of the objectness on the sampled anchors plus the smooth-L1 loss of the deltas on the
positive ones, normalised by the number sampled (Faster R-CNN Eq. 1, torchvision's normalisation).

Proposals (torchvision `RPN.filter_proposals`): decode every anchor's deltas; per level keep the `pre_nms_top_n`
highest objectness logits; sigmoid; clip to the image; drop boxes with a side below 1e-3; NMS at 0.7 within each
level; keep the `post_nms_top_n` best of the image. Proposals are constants for the heads: no gradient flows through
them ("approximate joint training", Faster R-CNN §3.2).

Outputs are flattened in anchor order — level by level, cell by cell (row-major), then the A anchors of the cell —
which is the order of `tinymask.box_logic.anchors.anchors_for_image`.
"""
from __future__ import annotations

import numpy as np

from tinymask.box_logic.boxes import box_iou, clip_boxes, decode_boxes, encode_boxes, remove_small_boxes
from tinymask.box_logic.matcher import BETWEEN_THRESHOLDS, Matcher
from tinymask.box_logic.nms import batched_nms
from tinymask.box_logic.sampler import sample_balanced, sample_recorded
from tinymask.layers.activations import relu_backward, relu_forward, sigmoid
from tinymask.layers.conv import conv2d_backward, conv2d_forward
from tinymask.layers.losses import binary_cross_entropy_with_logits, smooth_l1
from tinymask.layers.named import accumulate_grads

PREFIX = "rpn.head"
CONV, CLS, BBOX = f"{PREFIX}.conv.0.0", f"{PREFIX}.cls_logits", f"{PREFIX}.bbox_pred"


def init_rpn_head_params(channels: int, num_anchors: int, rng: np.random.Generator, dtype=np.float32) -> dict:
    """torchvision's RPNHead init: weights ~ N(0, 0.01²), biases 0."""
    shapes = {f"{CONV}.weight": (channels, channels, 3, 3), f"{CLS}.weight": (num_anchors, channels, 1, 1),
              f"{BBOX}.weight": (4 * num_anchors, channels, 1, 1)}
    params = {name: (0.01 * rng.standard_normal(shape)).astype(dtype) for name, shape in shapes.items()}
    params.update({f"{CONV}.bias": np.zeros(channels, dtype), f"{CLS}.bias": np.zeros(num_anchors, dtype),
                   f"{BBOX}.bias": np.zeros(4 * num_anchors, dtype)})
    return params


# ---------------------------------------------------------------------------------------------------------------
# The head: shared weights on every level, one cache per level.
# ---------------------------------------------------------------------------------------------------------------

def rpn_head_forward(params: dict, features: list):
    """features: list of (N, C, H_l, W_l) -> objectness list of (N, A, H_l, W_l), deltas list of (N, 4A, H_l, W_l)."""
    objectness, deltas, caches = [], [], []
    for x in features:
        t, c_conv = conv2d_forward(x, params[f"{CONV}.weight"], params[f"{CONV}.bias"], padding=1)  # (N, C, H, W)
        t, c_relu = relu_forward(t)
        o, c_cls = conv2d_forward(t, params[f"{CLS}.weight"], params[f"{CLS}.bias"])  # (N, A, H, W)
        d, c_box = conv2d_forward(t, params[f"{BBOX}.weight"], params[f"{BBOX}.bias"])  # (N, 4A, H, W)
        objectness.append(o)
        deltas.append(d)
        caches.append((c_conv, c_relu, c_cls, c_box))
    return objectness, deltas, caches


def rpn_head_backward(dobjectness: list, ddeltas: list, caches: list):
    """Reverse of `rpn_head_forward`. The shared weights' gradients are summed over the levels."""
    grads = {}
    dfeatures = []

    for do, dd, (c_conv, c_relu, c_cls, c_box) in zip(dobjectness, ddeltas, caches):
        dt1, dw, db = conv2d_backward(do, c_cls)
        accumulate_grads(grads, {f"{CLS}.weight": dw, f"{CLS}.bias": db})
        dt2, dw, db = conv2d_backward(dd, c_box)
        accumulate_grads(grads, {f"{BBOX}.weight": dw, f"{BBOX}.bias": db})
        dt = relu_backward(dt1 + dt2, c_relu)  # the two sibling convs read the same t: their gradients add
        dx, dw, db = conv2d_backward(dt, c_conv)
        accumulate_grads(grads, {f"{CONV}.weight": dw, f"{CONV}.bias": db})
        dfeatures.append(dx)
    return dfeatures, grads


def flatten_head_outputs(objectness: list, deltas: list):
    """Per-level maps -> (N, T) logits and (N, T, 4) deltas in anchor order (level, row, column, anchor)."""
    flat_o, flat_d = [], []
    for o, d in zip(objectness, deltas):
        N, A, H, W = o.shape
        flat_o.append(o.transpose(0, 2, 3, 1).reshape(N, H * W * A))  # (N, H·W·A)
        flat_d.append(d.reshape(N, A, 4, H, W).transpose(0, 3, 4, 1, 2).reshape(N, H * W * A, 4))  # (N, H·W·A, 4)
    return np.concatenate(flat_o, axis=1), np.concatenate(flat_d, axis=1)


def unflatten_head_grads(dobj_flat, ddeltas_flat, shapes: list):
    """The adjoint of `flatten_head_outputs`: (N, T) and (N, T, 4) gradients -> per-level (N, A, H, W), (N, 4A, H, W)."""
    dobj, ddel, start = [], [], 0
    for (N, A, H, W) in shapes:
        n = H * W * A
        dobj.append(np.ascontiguousarray(dobj_flat[:, start:start + n].reshape(N, H, W, A).transpose(0, 3, 1, 2)))
        ddel.append(np.ascontiguousarray(
            ddeltas_flat[:, start:start + n].reshape(N, H, W, A, 4).transpose(0, 3, 4, 1, 2).reshape(N, 4 * A, H, W)))
        start += n
    return dobj, ddel


# ---------------------------------------------------------------------------------------------------------------
# Training targets and losses.
# ---------------------------------------------------------------------------------------------------------------

def rpn_targets(anchors: np.ndarray, gt_boxes: list, cfg):
    """Label every anchor of every image: 1 positive, 0 negative, −1 ignored; and its regression target.

    anchors: (T, 4) (the same for every image of the padded batch); gt_boxes: list of (G_i, 4).
    Returns labels (N, T) int64 and targets (N, T, 4) (zeros where not positive).
    """
    matcher = Matcher(cfg.rpn_fg_iou_thresh, cfg.rpn_bg_iou_thresh, allow_low_quality_matches=True)
    labels = np.zeros((len(gt_boxes), len(anchors)), dtype=np.int64)  # (N, T)
    targets = np.zeros((len(gt_boxes), len(anchors), 4), dtype=anchors.dtype)  # (N, T, 4)
    for i, gt in enumerate(gt_boxes):
        if len(gt) == 0:
            continue  # no objects: every anchor is background
        matches = matcher(box_iou(gt, anchors))  # (T,)
        labels[i] = matches >= 0
        labels[i][matches == BETWEEN_THRESHOLDS] = -1
        positive = matches >= 0
        targets[i, positive] = encode_boxes(gt[matches[positive]], anchors[positive])  # Faster R-CNN Eq. 2
    return labels, targets


def rpn_loss(obj_flat, deltas_flat, labels, targets, cfg, rng: np.random.Generator, *, recorded=None):
    """Objectness BCE on the sampled anchors and smooth-L1 on the sampled positives, both over the sample count.

    `recorded` (a test hook): per image a pair (positive anchor indices, negative anchor indices) drawn elsewhere,
    used instead of drawing from `rng` (see `tinymask.box_logic.sampler.sample_recorded`).

    Returns (loss_objectness, loss_box, dobj_flat (N, T), ddeltas_flat (N, T, 4)).
    """
    if recorded is None:
        pos, neg = zip(*(sample_balanced(l, cfg.rpn_batch_size_per_image, cfg.rpn_positive_fraction, rng)
                         for l in labels))
    else:
        pos, neg = zip(*(sample_recorded(l, *r) for l, r in zip(labels, recorded, strict=True)))
    pos, neg = np.stack(pos), np.stack(neg)  # (N, T) each
    sampled = pos | neg
    num_sampled = max(int(sampled.sum()), 1)
    loss_obj, dlogits = binary_cross_entropy_with_logits(obj_flat[sampled], pos[sampled].astype(obj_flat.dtype))
    loss_box, dpred = smooth_l1(deltas_flat[pos], targets[pos], beta=cfg.rpn_box_beta, reduction="sum")
    loss_box = loss_box / num_sampled  # torchvision: the box loss is normalised by all sampled anchors
    dobj = np.zeros_like(obj_flat)
    dobj[sampled] = dlogits
    ddeltas = np.zeros_like(deltas_flat)
    ddeltas[pos] = dpred / num_sampled
    return loss_obj, loss_box, dobj, ddeltas


# ---------------------------------------------------------------------------------------------------------------
# Proposals.
# ---------------------------------------------------------------------------------------------------------------

def rpn_proposals(obj_flat, deltas_flat, anchors, level_counts, image_sizes, cfg, training: bool):
    """Turn the head's outputs into at most post_nms_top_n proposals per image (no gradient).

    Returns a list of (P_i, 4) boxes and a list of (P_i,) objectness probabilities, best first.
    """
    pre_nms = cfg.rpn_pre_nms_top_n_train if training else cfg.rpn_pre_nms_top_n_test
    post_nms = cfg.rpn_post_nms_top_n_train if training else cfg.rpn_post_nms_top_n_test
    levels = np.repeat(np.arange(len(level_counts)), level_counts)  # (T,) level of each anchor
    starts = np.cumsum([0] + list(level_counts))
    boxes_out, scores_out = [], []
    for i in range(obj_flat.shape[0]):
        # 1. per level, the top pre_nms logits (a stable sort: ties keep anchor order)
        chosen = []
        for l in range(len(level_counts)):
            logits_l = obj_flat[i, starts[l]:starts[l + 1]]
            top = np.argsort(-logits_l, kind="stable")[:pre_nms]
            chosen.append(starts[l] + top)
        chosen = np.concatenate(chosen)  # (K,)
        # 2. decode (Faster R-CNN Eq. 2 inverted) and 3. clip, drop tiny boxes, score threshold
        boxes = decode_boxes(deltas_flat[i, chosen], anchors[chosen])  # (K, 4)
        scores = sigmoid(obj_flat[i, chosen])  # (K,)
        lvl = levels[chosen]
        boxes = clip_boxes(boxes, image_sizes[i])
        keep = remove_small_boxes(boxes, 1e-3)
        keep = keep[scores[keep] >= cfg.rpn_score_thresh]
        boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
        # 4. NMS within each level, then the best post_nms of the image
        keep = batched_nms(boxes, scores, lvl, cfg.rpn_nms_thresh)[:post_nms]
        boxes_out.append(boxes[keep])
        scores_out.append(scores[keep])
    return boxes_out, scores_out
