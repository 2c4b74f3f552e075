"""The mask branch: the FCN mask head (and the MLP of Table 2e), its loss, and its inference.

Paper: Mask R-CNN §3 "Mask Representation" and Fig. 4 (right): on each positive RoI, 14×14 RoIAlign features go
through four 3×3 convs (256 channels) with ReLU, a 2×2 stride-2 deconvolution with ReLU to 28×28, and a 1×1 conv to
K masks, one per class. The FCN keeps the m×m spatial layout that an fc layer would collapse (Table 2e: the MLP of
comparable size is 2.1 mask AP worse).

Loss (§3, "decoupling mask and class prediction"): a per-pixel sigmoid and the average binary cross-entropy on the
mask of the RoI's ground-truth class only, so that classes do not compete (Table 2b: 5.5 AP better than the
multinomial softmax across classes, which `mask_loss="softmax"` reproduces). `class_agnostic_mask=True` predicts a
single mask for all classes (§4.2: "nearly as effective").

Targets: the ground-truth mask of the RoI's matched instance, resampled into the RoI's m×m grid
(`tinymask.box_logic.mask_targets.project_masks_on_boxes`). Inference (§3.1): the mask of the predicted class, sigmoid (or
softmax), later pasted into the image.
"""
from __future__ import annotations

import numpy as np

from tinymask.box_logic.mask_targets import project_masks_on_boxes
from tinymask.layers.activations import relu_backward, relu_forward, sigmoid, softmax
from tinymask.layers.conv import conv2d_backward, conv2d_forward
from tinymask.layers.conv_transpose import conv_transpose2d_backward, conv_transpose2d_forward
from tinymask.layers.linear import linear_backward, linear_forward
from tinymask.layers.losses import binary_cross_entropy_with_logits, softmax_cross_entropy

HEAD, PRED = "roi_heads.mask_head", "roi_heads.mask_predictor"
DECONV, LOGITS = f"{PRED}.conv5_mask", f"{PRED}.mask_fcn_logits"
MLP1, MLP2, MLP_OUT = f"{HEAD}.fc1", f"{HEAD}.fc2", f"{PRED}.fc_logits"


def mask_channels(cfg) -> int:
    """Number of predicted masks: one per class (background included, as torchvision), or one if class-agnostic."""
    return 1 if cfg.class_agnostic_mask else cfg.num_classes


def init_mask_head_params(in_channels: int, cfg, rng, dtype=np.float32) -> dict:
    """Kaiming-normal (fan-out) convs and deconv with zero biases (torchvision's MaskRCNNHeads / MaskRCNNPredictor:
    `kaiming_normal_(mode="fan_out", nonlinearity="relu")`, std = sqrt(2 / fan_out)).

    PyTorch computes fan_out as weight.shape[0]·k·k for any weight. A conv weight is (C_out, C_in, k, k), so that is
    C_out·k·k; a transposed conv's is (C_in, C_out, k, k), so for the deconv `conv5_mask` it is C_in·k·k. The FPN
    head's deconv keeps its width (256 -> 256, C_in = C_out) and is not affected; the C4 head's (2048 -> 256) is.
    """
    def kaiming(shape, fan_out):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_out)).astype(dtype)

    K, M = mask_channels(cfg), cfg.mask_resolution
    params = {}
    if cfg.mask_head == "mlp":  # Table 2(e): fc -> fc -> fc to K·m·m
        P, hidden = cfg.mask_pool_size, cfg.mask_mlp_hidden
        for name, shape in ((MLP1, (hidden, in_channels * P * P)), (MLP2, (hidden, hidden)), (MLP_OUT, (K * M * M, hidden))):
            params[f"{name}.weight"] = kaiming(shape, shape[1]) if name != MLP_OUT else \
                (0.001 * rng.standard_normal(shape)).astype(dtype)
            params[f"{name}.bias"] = np.zeros(shape[0], dtype)
        return params
    c = in_channels
    for i, width in enumerate(cfg.mask_head_layers):
        params[f"{HEAD}.{i}.0.weight"] = kaiming((width, c, 3, 3), width * 9)
        params[f"{HEAD}.{i}.0.bias"] = np.zeros(width, dtype)
        c = width
    d = cfg.mask_deconv_channels or c
    params[f"{DECONV}.weight"] = kaiming((c, d, 2, 2), c * 4)  # (C_in, C_out, 2, 2): PyTorch's fan_out = C_in·2·2
    params[f"{DECONV}.bias"] = np.zeros(d, dtype)
    params[f"{LOGITS}.weight"] = kaiming((K, d, 1, 1), K)
    params[f"{LOGITS}.bias"] = np.zeros(K, dtype)
    return params


def mask_head_forward(params: dict, roi_features: np.ndarray, cfg):
    """roi_features (R, C, 14, 14) -> mask_logits (R, K, 28, 28), cache. (C4: (R, 2048, 7, 7) -> (R, K, 14, 14).)"""
    if cfg.mask_head == "mlp":
        R = roi_features.shape[0]
        M = cfg.mask_resolution
        h, c1 = linear_forward(roi_features.reshape(R, -1), params[f"{MLP1}.weight"], params[f"{MLP1}.bias"])
        h, r1 = relu_forward(h)
        h, c2 = linear_forward(h, params[f"{MLP2}.weight"], params[f"{MLP2}.bias"])
        h, r2 = relu_forward(h)
        logits, c3 = linear_forward(h, params[f"{MLP_OUT}.weight"], params[f"{MLP_OUT}.bias"])  # (R, K·M·M)
        return logits.reshape(R, -1, M, M), ("mlp", roi_features.shape, [c1, r1, c2, r2, c3])
    x, caches = roi_features, []
    for i in range(len(cfg.mask_head_layers)):
        x, cc = conv2d_forward(x, params[f"{HEAD}.{i}.0.weight"], params[f"{HEAD}.{i}.0.bias"], padding=1)  # (R, 256, 14, 14)
        x, cr = relu_forward(x)
        caches.append((cc, cr))
    x, cd = conv_transpose2d_forward(x, params[f"{DECONV}.weight"], params[f"{DECONV}.bias"], stride=2)  # (R, 256, 28, 28)
    x, crd = relu_forward(x)
    logits, cl = conv2d_forward(x, params[f"{LOGITS}.weight"], params[f"{LOGITS}.bias"])  # (R, K, 28, 28)
    return logits, ("fcn", caches, cd, crd, cl)


def mask_head_backward(dlogits, cache):
    """Reverse of `mask_head_forward`: -> droi_features, grads."""
    grads = {}
    if cache[0] == "mlp":
        _, shape, (c1, r1, c2, r2, c3) = cache
        R = dlogits.shape[0]
        dh, grads[f"{MLP_OUT}.weight"], grads[f"{MLP_OUT}.bias"] = linear_backward(dlogits.reshape(R, -1), c3)
        dh, grads[f"{MLP2}.weight"], grads[f"{MLP2}.bias"] = linear_backward(relu_backward(dh, r2), c2)
        dx, grads[f"{MLP1}.weight"], grads[f"{MLP1}.bias"] = linear_backward(relu_backward(dh, r1), c1)
        return dx.reshape(shape), grads
    _, caches, cd, crd, cl = cache
    dx, grads[f"{LOGITS}.weight"], grads[f"{LOGITS}.bias"] = conv2d_backward(dlogits, cl)
    dx, grads[f"{DECONV}.weight"], grads[f"{DECONV}.bias"] = conv_transpose2d_backward(relu_backward(dx, crd), cd)
    for i in reversed(range(len(caches))):
        cc, cr = caches[i]
        dx, grads[f"{HEAD}.{i}.0.weight"], grads[f"{HEAD}.{i}.0.bias"] = conv2d_backward(relu_backward(dx, cr), cc)
    return dx, grads


def mask_targets(boxes: list, matched_idxs: list, gt_masks: list, cfg) -> np.ndarray:
    """Per image: positive RoIs (P_i, 4), their matched ground-truth indices (P_i,) and the image's (G_i, H, W)
    masks -> all images' targets (ΣP_i, M, M), each instance's mask resampled into its RoI's M×M grid, with RoIAlign's
    half-pixel shift exactly when the RoI features have it (`pooler_aligned` and `roi_extractor="align"`)."""
    M = cfg.mask_resolution
    aligned = cfg.pooler_aligned and cfg.roi_extractor == "align"  # as the RoI features are pooled (model.py)
    out = [project_masks_on_boxes(masks.astype(b.dtype), b, idx, M, outside=cfg.pooler_outside, aligned=aligned)
           for b, idx, masks in zip(boxes, matched_idxs, gt_masks)]
    targets = np.concatenate(out, axis=0) if out else np.zeros((0, M, M))
    return np.clip(targets, 0.0, 1.0)  # bilinear sums of 0/1 pixels can overshoot 1 by a rounding error


def mask_loss(mask_logits, labels, targets, cfg):
    """L_mask on the positive RoIs: mask_logits (P, K, M, M), labels (P,) in 1..K−1, targets (P, M, M) in [0, 1].

    Returns (loss, dmask_logits). With no positive RoI the loss is 0 and so is the gradient.
    """
    P = len(labels)
    dlogits = np.zeros_like(mask_logits)
    if P == 0:
        return mask_logits.dtype.type(0.0), dlogits
    if cfg.mask_loss == "softmax":  # Table 2(b) "multinomial": classes compete at every pixel
        pixel_labels = (targets >= 0.5).astype(np.int64) * labels[:, None, None]  # (P, M, M): class or background
        return softmax_cross_entropy(mask_logits, pixel_labels)
    channel = np.zeros(P, dtype=np.int64) if cfg.class_agnostic_mask else labels  # (P,)
    chosen = mask_logits[np.arange(P), channel]  # (P, M, M): only the ground-truth class's mask is trained
    loss, dchosen = binary_cross_entropy_with_logits(chosen, targets.astype(mask_logits.dtype))
    dlogits[np.arange(P), channel] = dchosen
    return loss, dlogits


def mask_probabilities(mask_logits, labels, cfg):
    """Inference: each detection's mask for its predicted class, as probabilities (D, M, M)."""
    D = len(labels)
    if cfg.mask_loss == "softmax":
        p = softmax(mask_logits, axis=1)  # (D, K, M, M): classes compete at every pixel
        return p[np.arange(D), labels]
    channel = np.zeros(D, dtype=np.int64) if cfg.class_agnostic_mask else labels
    return sigmoid(mask_logits[np.arange(D), channel])
