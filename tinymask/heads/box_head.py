"""The box branch of the RoI heads: training targets, the FPN box head, its losses, and inference.

Paper: Mask R-CNN §3 — on each sampled RoI the loss is L = L_cls + L_box + L_mask, where L_cls and L_box are those of
Fast R-CNN (Girshick, ICCV 2015, §2.3: softmax cross-entropy over K+1 classes, smooth-L1 on the true class's box
deltas). §3.1 "Training": an RoI is positive if its IoU with a ground-truth box is at least 0.5; each image samples
N RoIs (512 for FPN) at a positive-to-negative ratio of 1:3; the ground-truth boxes are added to the proposals.

The FPN box head (FPN §4.2, Mask R-CNN Fig. 4 right): 7×7 RoIAlign features → flatten → fc 1024 → ReLU → fc 1024 →
ReLU, then the predictor: class scores (K+1) and class-specific box deltas (4 per class, decoded with weights
(10, 10, 5, 5)). The C4 head (Fig. 4 left) lives in `tinymask/heads/c4_head.py`.

Inference (§3.1 "Inference"): softmax scores; every class's deltas decoded; boxes clipped to the image; background
dropped; score > 0.05; boxes with a side below 0.01 dropped; NMS per class at 0.5; the 100 best kept.
"""
from __future__ import annotations

import numpy as np

from tinymask.box_logic.boxes import box_iou, clip_boxes, decode_boxes, encode_boxes, remove_small_boxes
from tinymask.box_logic.matcher import BETWEEN_THRESHOLDS, Matcher
from tinymask.box_logic.nms import batched_nms
from tinymask.box_logic.sampler import sample_balanced, sample_recorded
from tinymask.layers.activations import relu_backward, relu_forward, softmax
from tinymask.layers.linear import linear_backward, linear_forward
from tinymask.layers.losses import smooth_l1, softmax_cross_entropy

FC6, FC7 = "roi_heads.box_head.fc6", "roi_heads.box_head.fc7"
CLS, BBOX = "roi_heads.box_predictor.cls_score", "roi_heads.box_predictor.bbox_pred"


def init_box_head_params(in_features: int, representation: int, num_classes: int, rng, dtype=np.float32) -> dict:
    """fc6/fc7: uniform ±1/√fan_in (PyTorch's nn.Linear weight default) with zero biases; predictor: N(0, 0.01²)
    scores and N(0, 0.001²) deltas with zero biases (Detectron / detectron2's FastRCNNOutputLayers init)."""
    def uniform(shape):
        bound = 1.0 / np.sqrt(shape[-1])
        return rng.uniform(-bound, bound, shape).astype(dtype)

    return {f"{FC6}.weight": uniform((representation, in_features)), f"{FC6}.bias": np.zeros(representation, dtype),
            f"{FC7}.weight": uniform((representation, representation)), f"{FC7}.bias": np.zeros(representation, dtype),
            f"{CLS}.weight": (0.01 * rng.standard_normal((num_classes, representation))).astype(dtype),
            f"{CLS}.bias": np.zeros(num_classes, dtype),
            f"{BBOX}.weight": (0.001 * rng.standard_normal((4 * num_classes, representation))).astype(dtype),
            f"{BBOX}.bias": np.zeros(4 * num_classes, dtype)}


# ---------------------------------------------------------------------------------------------------------------
# Training targets: which proposals the heads learn from, and what they should predict.
# ---------------------------------------------------------------------------------------------------------------

def select_training_rois(proposals: list, targets: list, cfg, rng: np.random.Generator, *, recorded=None):
    """Add the ground truth to the proposals, match, sample, and compute each sampled RoI's targets.

    `recorded` (a test hook): per image a pair (positive, negative) of indices into `[proposals; gt boxes]` drawn
    elsewhere, used instead of drawing from `rng` (see `tinymask.box_logic.sampler.sample_recorded`).

    Returns, per image, a dict: "boxes" (R, 4) sampled RoIs, "labels" (R,) int64 class (0 background),
    "matched_idxs" (R,) index of the matched ground-truth box (0 for background, unused), "regression_targets"
    (R, 4) (Faster R-CNN Eq. 2 with weights (10, 10, 5, 5)).
    """
    matcher = Matcher(cfg.box_fg_iou_thresh, cfg.box_bg_iou_thresh, allow_low_quality_matches=False)
    out = []
    for i, (boxes, t) in enumerate(zip(proposals, targets)):
        gt_boxes, gt_labels = t["boxes"].astype(boxes.dtype, copy=False), t["labels"]
        boxes = np.concatenate([boxes, gt_boxes], axis=0)  # (P + G, 4): the ground truth are RoIs too
        if len(gt_boxes) == 0:
            matched = np.zeros(len(boxes), dtype=np.int64)
            labels = np.zeros(len(boxes), dtype=np.int64)  # every RoI is background
        else:
            matches = matcher(box_iou(gt_boxes, boxes))  # (P + G,)
            matched = np.maximum(matches, 0)
            labels = gt_labels[matched].astype(np.int64)  # (P + G,)
            labels[matches < 0] = 0  # below 0.5: background
            labels[matches == BETWEEN_THRESHOLDS] = -1  # (empty with the paper's 0.5 / 0.5)
        if recorded is None:
            pos, neg = sample_balanced(labels, cfg.box_batch_size_per_image, cfg.box_positive_fraction, rng)
        else:
            pos, neg = sample_recorded(labels, *recorded[i])
        keep = np.flatnonzero(pos | neg)  # (R,) sampled RoIs, in proposal order
        boxes, labels, matched = boxes[keep], labels[keep], matched[keep]
        targets_r = np.zeros_like(boxes)  # (R, 4): only positives have a regression target
        pos = labels > 0
        targets_r[pos] = encode_boxes(gt_boxes[matched[pos]], boxes[pos], cfg.box_coder_weights)  # Eq. 2
        out.append({"boxes": boxes, "labels": labels, "matched_idxs": matched, "regression_targets": targets_r})
    return out


# ---------------------------------------------------------------------------------------------------------------
# The FPN box head and predictor.
# ---------------------------------------------------------------------------------------------------------------

def box_head_forward(params: dict, roi_features: np.ndarray):
    """roi_features (R, C, 7, 7) -> class_logits (R, K), box_regression (R, 4K), cache."""
    R = roi_features.shape[0]
    x = roi_features.reshape(R, -1)  # (R, C·7·7), flattened in (C, H, W) order
    h, c6 = linear_forward(x, params[f"{FC6}.weight"], params[f"{FC6}.bias"])  # (R, 1024)
    h, r6 = relu_forward(h)
    h, c7 = linear_forward(h, params[f"{FC7}.weight"], params[f"{FC7}.bias"])  # (R, 1024)
    h, r7 = relu_forward(h)
    logits, cc = linear_forward(h, params[f"{CLS}.weight"], params[f"{CLS}.bias"])  # (R, K)
    regression, cb = linear_forward(h, params[f"{BBOX}.weight"], params[f"{BBOX}.bias"])  # (R, 4K)
    return logits, regression, (roi_features.shape, c6, r6, c7, r7, cc, cb)


def box_head_backward(dlogits, dregression, cache):
    """Reverse of `box_head_forward`: -> droi_features (R, C, 7, 7), grads."""
    shape, c6, r6, c7, r7, cc, cb = cache
    grads = {}
    dh1, grads[f"{CLS}.weight"], grads[f"{CLS}.bias"] = linear_backward(dlogits, cc)
    dh2, grads[f"{BBOX}.weight"], grads[f"{BBOX}.bias"] = linear_backward(dregression, cb)
    dh = relu_backward(dh1 + dh2, r7)  # both predictors read the same features
    dh, grads[f"{FC7}.weight"], grads[f"{FC7}.bias"] = linear_backward(dh, c7)
    dh = relu_backward(dh, r6)
    dx, grads[f"{FC6}.weight"], grads[f"{FC6}.bias"] = linear_backward(dh, c6)
    return dx.reshape(shape), grads


def box_loss(class_logits, box_regression, labels, regression_targets, cfg):
    """Fast R-CNN §2.3: L_cls (softmax cross-entropy, mean over RoIs) and L_box (smooth L1 on the true class's
    deltas of the positive RoIs, summed and divided by the number of RoIs, as torchvision does).

    Returns (loss_classifier, loss_box_reg, dlogits (R, K), dregression (R, 4K)).
    """
    R = len(labels)
    loss_cls, dlogits = softmax_cross_entropy(class_logits, labels)
    pos = np.flatnonzero(labels > 0)  # (P,)
    per_class = box_regression.reshape(R, -1, 4)  # (R, K, 4)
    loss_box, dpred = smooth_l1(per_class[pos, labels[pos]], regression_targets[pos], beta=cfg.box_box_beta,
                                reduction="sum")
    loss_box = loss_box / max(R, 1)
    dreg = np.zeros_like(per_class)  # (R, K, 4): only the true class's deltas of positives get a gradient
    dreg[pos, labels[pos]] = dpred / max(R, 1)
    return loss_cls, loss_box, dlogits, dreg.reshape(R, -1)


# ---------------------------------------------------------------------------------------------------------------
# Inference.
# ---------------------------------------------------------------------------------------------------------------

def postprocess_detections(class_logits, box_regression, proposals: list, image_sizes: list, cfg):
    """Scores, per-class boxes, thresholds and per-class NMS -> per image {"boxes", "scores", "labels"}, best first."""
    K = class_logits.shape[1]
    counts = [len(p) for p in proposals]
    results = []
    start = 0
    for boxes, size, n in zip(proposals, image_sizes, counts):
        scores = softmax(class_logits[start:start + n])  # (P, K)
        decoded = decode_boxes(box_regression[start:start + n], boxes, cfg.box_coder_weights)  # (P, 4K)
        start += n
        decoded = clip_boxes(decoded.reshape(-1, 4), size).reshape(n, K, 4)  # (P, K, 4)
        labels = np.broadcast_to(np.arange(K), (n, K))
        # drop the background column, then flatten proposal-major: (P·(K−1),)
        decoded, scores, labels = decoded[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        keep = np.flatnonzero(scores > cfg.box_score_thresh)
        decoded, scores, labels = decoded[keep], scores[keep], labels[keep]
        keep = remove_small_boxes(decoded, 1e-2)
        decoded, scores, labels = decoded[keep], scores[keep], labels[keep]
        keep = batched_nms(decoded, scores, labels, cfg.box_nms_thresh)[:cfg.box_detections_per_img]
        results.append({"boxes": decoded[keep], "scores": scores[keep], "labels": labels[keep].astype(np.int64)})
    return results
