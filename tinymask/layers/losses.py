"""The losses of Mask R-CNN, each returning the loss and its gradient.

Paper: Mask R-CNN §3 defines the multi-task loss on each sampled RoI as L = L_cls + L_box + L_mask.

- `softmax_cross_entropy` — L_cls, the classification loss of Fast R-CNN (§2.3, Eq. 1): −log p_u for the true class
  u, averaged over RoIs. Also the *multinomial* mask loss of Table 2(b) when the class axis is a per-pixel axis.
- `smooth_l1` — L_box, Fast R-CNN Eq. 3: 0.5·x²/β where |x| < β, else |x| − 0.5·β. β = 1 in Fast R-CNN, 1/9 in
  torchvision's RPN; β = 0 is plain L1.
- `binary_cross_entropy_with_logits` — L_mask, "the average binary cross-entropy loss" over the m×m pixels of the
  ground-truth class's mask (§3), and the RPN's objectness loss (Faster R-CNN §3.1.2).

A loss starts the backward pass, so each returns `(loss, dlogits)`: the scalar loss and ∂loss/∂(first argument).
Derivations are in docs/layers/losses.md.
"""
from __future__ import annotations

import numpy as np

from tinymask._validate import check_float_array, finite_checked
from tinymask.layers.activations import sigmoid

_REDUCTIONS = ("mean", "sum")


def _reduce(values: np.ndarray, reduction: str, count: int):
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    total = values.sum()
    if reduction == "sum":
        return total, 1.0
    if count == 0:
        return total * 0.0, 1.0  # the mean of nothing is defined as 0 here: an image without RoIs adds no loss
    return total / count, 1.0 / count


@finite_checked("loss", "dlogits")
def softmax_cross_entropy(logits, labels, *, reduction="mean"):
    """Cross-entropy of a softmax over axis 1.

    logits: (N, K) or (N, K, *spatial) float; labels: (N,) or (N, *spatial) integers in [0, K).
    Returns (loss, dlogits) with dlogits = (softmax − onehot) / count for the mean over the N·Π(spatial) terms.
    """
    check_float_array(logits, "logits")
    if logits.ndim < 2:
        raise ValueError(f"logits must be (N, K, ...) with classes on axis 1, got shape {logits.shape}")
    labels = np.asarray(labels)
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {labels.dtype}")
    expected = logits.shape[:1] + logits.shape[2:]
    if labels.shape != expected:
        raise ValueError(f"labels must have shape {expected} for logits of shape {logits.shape}, got {labels.shape}")
    K = logits.shape[1]
    if labels.size and (labels.min() < 0 or labels.max() >= K):
        raise ValueError(f"labels must lie in [0, {K}), got values from {labels.min()} to {labels.max()}")
    shifted = logits - logits.max(axis=1, keepdims=True)  # log-sum-exp trick: the largest logit becomes 0
    log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True))  # (N, 1, ...)
    log_p = shifted - log_z  # (N, K, ...): log softmax
    log_p_true = np.take_along_axis(log_p, labels[:, None], axis=1)  # (N, 1, ...): log p_u
    loss, scale = _reduce(-log_p_true, reduction, labels.size)  # Fast R-CNN Eq. 1: L_cls = −log p_u
    dlogits = np.exp(log_p)  # softmax
    np.put_along_axis(dlogits, labels[:, None], np.take_along_axis(dlogits, labels[:, None], axis=1) - 1.0, axis=1)
    return loss, (dlogits * scale).astype(logits.dtype, copy=False)  # ∂L/∂z = (p − onehot) · scale


@finite_checked("loss", "dpred")
def smooth_l1(pred, target, *, beta=1.0, reduction="sum"):
    """Smooth L1 (Huber-like) loss, element-wise then reduced.

    pred, target: same shape, float. Returns (loss, dpred). `reduction="sum"` is what detection heads use before
    dividing by their own normaliser (the number of sampled anchors or RoIs).
    """
    check_float_array(pred, "pred")
    check_float_array(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred and target must have the same shape, got {pred.shape} and {target.shape}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    diff = pred - target
    absd = np.abs(diff)
    if beta == 0:  # plain L1
        values, grad = absd, np.sign(diff)
    else:
        quadratic = absd < beta
        values = np.where(quadratic, 0.5 * diff ** 2 / beta, absd - 0.5 * beta)  # Fast R-CNN Eq. 3
        grad = np.where(quadratic, diff / beta, np.sign(diff))
    loss, scale = _reduce(values, reduction, diff.size)
    return loss, (grad * scale).astype(pred.dtype, copy=False)


@finite_checked("loss", "dlogits")
def binary_cross_entropy_with_logits(logits, targets, *, reduction="mean"):
    """Per-element binary cross-entropy on logits z with targets t in [0, 1].

    ℓ = −t·log σ(z) − (1 − t)·log(1 − σ(z)) = max(z, 0) − z·t + log(1 + e^{−|z|}), the right-hand form never
    overflowing (finite at z = ±100 and beyond). Gradient: ∂ℓ/∂z = σ(z) − t.
    """
    check_float_array(logits, "logits")
    targets = np.asarray(targets)
    if targets.shape != logits.shape:
        raise ValueError(f"targets must have the logits' shape {logits.shape}, got {targets.shape}")
    if targets.size and (np.nanmin(targets) < 0 or np.nanmax(targets) > 1 or np.isnan(targets).any()):
        raise ValueError("targets must lie in [0, 1] (and contain no NaN)")
    values = np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))
    loss, scale = _reduce(values, reduction, logits.size)
    return loss, ((sigmoid(logits) - targets) * scale).astype(logits.dtype, copy=False)
