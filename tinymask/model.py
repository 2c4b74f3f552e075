"""Mask R-CNN, assembled: the forward pass with its losses, the whole backward pass, and inference.

Paper: He, Gkioxari, Dollár, Girshick, *Mask R-CNN*, ICCV 2017. §3: "Mask R-CNN adopts the same two-stage procedure
[as Faster R-CNN], with an identical first stage (RPN). In the second stage, in parallel to predicting the class and
box offset, Mask R-CNN also outputs a binary mask for each RoI." The multi-task loss on each sampled RoI is

    L = L_cls + L_box + L_mask                                              (§3)

and the RPN adds its own two terms (Faster R-CNN Eq. 1). tinymask trains all five jointly, as torchvision does and
as the paper's Appendix B ("end-to-end" training, +0.6 mask AP) reports; the paper's main results train the RPN
separately. The proposals are constants for the heads ("approximate joint training", Faster R-CNN §3.2).

`train_forward` runs the forward pass and returns the five losses and a cache; `train_backward` is the reverse of it,
written out in order: mask loss → mask head → RoIAlign → pyramid; box loss → box head → RoIAlign → pyramid; RPN losses
→ RPN head (shared over levels) → pyramid; then the FPN and the ResNet. `predict` is §3.1 "Inference".

Two backbones (§3 "Network Architecture", Fig. 4): `backbone="fpn"` (ResNet-FPN: RPN on P2–P6, RoIs pooled from
P2–P5 by size, a 2-fc box head, the FCN mask head on 14×14 features) and `backbone="c4"` (ResNet-C4: RPN and RoIs
on C4, ResNet stage 5 as the box head on 14×14 features, the mask head a deconv on stage 5's 7×7 output). A third,
`backbone="c5"`, is the one of Table 2(d): the whole ResNet, one stride-32 map C5 for the RPN and the RoIs, and the
heads of Fig. 4 right ("as the res5 head is not applicable").
"""
from __future__ import annotations

import numpy as np

from tinymask.backbone.fpn import fpn_backward, fpn_forward, init_fpn_params
from tinymask.backbone.resnet import ResNetConfig, init_resnet_params, resnet_backward, resnet_forward
from tinymask.box_logic.anchors import anchors_for_image
from tinymask.box_logic.levels import infer_scale
from tinymask.box_logic.resize import check_targets, postprocess, preprocess, preprocess_targets
from tinymask.config import MaskRCNNConfig
from tinymask.heads.box_head import (box_head_backward, box_head_forward, box_loss, init_box_head_params,
                                     postprocess_detections, select_training_rois)
from tinymask.heads.c4_head import c4_head_backward, c4_head_forward, init_c4_head_params
from tinymask.heads.mask_head import (init_mask_head_params, mask_head_backward, mask_head_forward, mask_loss,
                                      mask_probabilities, mask_targets)
from tinymask.heads.rpn import (flatten_head_outputs, init_rpn_head_params, rpn_head_backward, rpn_head_forward,
                                rpn_loss, rpn_proposals, rpn_targets, unflatten_head_grads)
from tinymask.layers.multiscale_roi import multiscale_roi_backward, multiscale_roi_forward
from tinymask.layers.named import accumulate_grads

LOSS_NAMES = ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask")


# ---------------------------------------------------------------------------------------------------------------
# Parameters.
# ---------------------------------------------------------------------------------------------------------------

def resnet_config(cfg: MaskRCNNConfig) -> ResNetConfig:
    """The backbone's shape, from the model config."""
    return ResNetConfig(blocks=tuple(cfg.resnet_blocks), stem_channels=cfg.stem_channels,
                        base_channels=cfg.base_channels, width_per_group=cfg.width_per_group, groups=cfg.groups,
                        norm=cfg.norm, num_groups=cfg.num_groups, eps=cfg.norm_eps, stride_in_1x1=cfg.stride_in_1x1,
                        return_stages={"fpn": ("C2", "C3", "C4", "C5"), "c4": ("C4",), "c5": ("C5",)}[cfg.backbone])


def num_anchors_per_cell(cfg: MaskRCNNConfig) -> int:
    per_level_sizes = 1 if cfg.backbone == "fpn" else len(cfg.anchor_sizes)
    return per_level_sizes * len(cfg.aspect_ratios)


def is_trainable(name: str, cfg: MaskRCNNConfig) -> bool:
    """Frozen batch norm's four per-channel arrays are constants (ResNet App. A, Detectron); everything else learns."""
    if name.endswith(("running_mean", "running_var", "num_batches_tracked")):
        return False
    if cfg.norm == "frozen_bn" and name.startswith("backbone.body.") and (".bn" in name or ".downsample.1." in name):
        return False
    return True


def init_params(cfg: MaskRCNNConfig, seed: int = 0, dtype=np.float32) -> dict:
    """Fresh parameters for a model of this config (each part initialised as torchvision does; see each module)."""
    rng = np.random.default_rng(seed)
    rcfg = resnet_config(cfg)
    params = init_resnet_params(rcfg, rng, dtype)
    if cfg.backbone in ("fpn", "c5"):
        if cfg.backbone == "fpn":
            params.update(init_fpn_params([rcfg.out_channels(s) for s in (2, 3, 4, 5)], cfg.fpn_channels, rng, dtype))
        channels = cfg.fpn_channels if cfg.backbone == "fpn" else rcfg.out_channels(5)
        params.update(init_box_head_params(channels * cfg.box_pool_size ** 2, cfg.box_head_representation,
                                           cfg.num_classes, rng, dtype))
        mask_in = channels
    else:
        full = ResNetConfig(**{**rcfg.__dict__, "return_stages": ("C5",)})
        params.update({k: v for k, v in init_resnet_params(full, rng, dtype).items() if ".layer4." in k})
        channels = rcfg.out_channels(4)
        params.update(init_c4_head_params(rcfg.out_channels(5), cfg.num_classes, rng, dtype))
        mask_in = rcfg.out_channels(5)
    params.update(init_rpn_head_params(channels, num_anchors_per_cell(cfg), rng, dtype))
    params.update(init_mask_head_params(mask_in, cfg, rng, dtype))
    return params


# ---------------------------------------------------------------------------------------------------------------
# Backbone: feature maps for the RPN and for the RoI heads.
# ---------------------------------------------------------------------------------------------------------------

def backbone_forward(params, cfg, batch):
    """batch (N, 3, H, W) -> (maps for the RPN, maps for the RoI heads, cache). FPN: P2..P6 and P2..P5; C4: [C4];
    C5: [C5]."""
    rcfg = resnet_config(cfg)
    features, c_body = resnet_forward(params, batch, rcfg)  # {"C2": ..., "C5": ...} or {"C4": ...} or {"C5": ...}
    if cfg.backbone != "fpn":  # one map, read by the RPN and by the RoI heads
        stage = rcfg.return_stages[0]  # "C4" or "C5"
        return [features[stage]], [features[stage]], {"body": c_body, "stage": stage}
    pyramid, c_fpn = fpn_forward(params, features)  # {"P2": ..., "P6": ...}
    levels = [pyramid[k] for k in ("P2", "P3", "P4", "P5")]
    return levels + [pyramid["P6"]], levels, {"body": c_body, "fpn": c_fpn}  # P6 only for the RPN (FPN §4.1)


def backbone_backward(d_rpn_maps, d_roi_maps, cache):
    """Sum the gradients that reach each map from the RPN and the RoI heads, then run the FPN and ResNet backward.

    Returns (grads, dmaps): the parameters' gradients, and the gradient reaching each map from the heads ({"P2": ...,
    "P6": ...} for FPN, {"C4": ...} or {"C5": ...} otherwise; P5's excludes what P6 passes back to it)."""
    c_body = cache["body"]
    if "stage" in cache:  # C4 or C5: one map, read by the RPN and the RoI heads
        dmaps = {cache["stage"]: d_rpn_maps[0] + d_roi_maps[0]}
        _, grads = resnet_backward(dmaps, c_body)
        return grads, dmaps
    dP = {k: d_rpn_maps[i] + d_roi_maps[i] for i, k in enumerate(("P2", "P3", "P4", "P5"))}
    dP["P6"] = d_rpn_maps[4]  # read by the RPN only; the FPN's backward passes it on to P5
    dfeatures, grads = fpn_backward(dP, cache["fpn"])
    _, g_body = resnet_backward(dfeatures, c_body)
    grads.update(g_body)
    return grads, dP


def roi_features_forward(maps, rois_per_image: list, image_sizes, cfg, output_size):
    """Pool (Σ R_i, C, S, S) features for every image's RoIs from the maps (each RoI from its FPN level)."""
    rois = np.concatenate([np.concatenate([np.full((len(b), 1), i, b.dtype), b], axis=1)
                           for i, b in enumerate(rois_per_image)], axis=0)  # (ΣR, 5) [batch index, x0, y0, x1, y1]
    largest = (max(s[0] for s in image_sizes), max(s[1] for s in image_sizes))
    scales = [infer_scale(m.shape[2:], largest) for m in maps]
    mode = None if cfg.roi_extractor == "pool" else cfg.roi_mode
    return multiscale_roi_forward(maps, rois, scales=scales, output_size=output_size,
                                  sampling_ratio=cfg.pooler_sampling_ratio,
                                  aligned=cfg.pooler_aligned and cfg.roi_extractor == "align",
                                  method=cfg.roi_extractor, mode=mode, canonical_size=cfg.fpn_canonical_size,
                                  canonical_level=cfg.fpn_canonical_level,
                                  **({} if cfg.roi_extractor == "pool" else {"outside": cfg.pooler_outside}))


def anchors_for_batch(cfg, batch_hw, rpn_maps):
    sizes = [[s] for s in cfg.anchor_sizes] if cfg.backbone == "fpn" else [list(cfg.anchor_sizes)]
    return anchors_for_image(batch_hw, [m.shape[2:] for m in rpn_maps], sizes, cfg.aspect_ratios,
                             dtype=rpn_maps[0].dtype)


# ---------------------------------------------------------------------------------------------------------------
# Training: forward with losses, and the backward pass.
# ---------------------------------------------------------------------------------------------------------------

def train_forward(params, cfg: MaskRCNNConfig, images, targets, rng: np.random.Generator, *, proposals=None,
                  samples=None):
    """Forward pass in training mode.

    images: list of (3, H, W) float images in [0, 1]; targets: list of dicts with "boxes" (G, 4) (x0, y0, x1, y1) in
    image pixels, "labels" (G,) in 1..K−1 and "masks" (G, H, W) binary; any aspect ratio (a banner far longer than
    cfg.max_size : 1 is resized to one pixel thick, `tinymask.box_logic.resize.resized_size`, and still trains with
    finite losses). `rng` draws the anchor and RoI samples.
    `proposals` (optional, per image (P, 4) in resized-image coordinates) replaces the RPN's, to hold them fixed in
    gradient checks. `samples` (optional, a test hook) replaces the two random draws with recorded ones:
    {"rpn": per image (positive, negative) anchor indices, "roi": per image (positive, negative) indices into
    [proposals; gt boxes]}, as in tests/test_torchvision_train_step.py, which replays one of torchvision's steps.

    Returns (losses: dict of the five scalar losses, cache for `train_backward`).
    """
    dtype = params["backbone.body.conv1.weight"].dtype
    check_targets(images, targets, cfg.num_classes)
    batch, image_sizes, original_sizes = preprocess(images, cfg, dtype)  # (N, 3, H_pad, W_pad)
    targets = preprocess_targets(targets, original_sizes, image_sizes)
    gt_boxes = [t["boxes"].astype(dtype) for t in targets]

    # Backbone.
    rpn_maps, roi_maps, c_backbone = backbone_forward(params, cfg, batch)

    # RPN: head on every level (shared weights), losses on sampled anchors, proposals (constants from here on).
    objectness, deltas, c_rpn = rpn_head_forward(params, rpn_maps)
    obj_flat, deltas_flat = flatten_head_outputs(objectness, deltas)  # (N, T), (N, T, 4)
    anchors, counts = anchors_for_batch(cfg, batch.shape[2:], rpn_maps)
    labels, reg_targets = rpn_targets(anchors, gt_boxes, cfg)
    samples = samples or {}
    loss_obj, loss_rpn_box, dobj_flat, ddeltas_flat = rpn_loss(obj_flat, deltas_flat, labels, reg_targets, cfg, rng,
                                                               recorded=samples.get("rpn"))
    if proposals is None:
        proposals, _ = rpn_proposals(obj_flat, deltas_flat, anchors, counts, image_sizes, cfg, training=True)

    # RoI heads: sample RoIs (ground truth included) and their targets.
    rois = select_training_rois(proposals, [{"boxes": b, "labels": t["labels"]} for b, t in zip(gt_boxes, targets)],
                                cfg, rng, recorded=samples.get("roi"))
    roi_labels = np.concatenate([r["labels"] for r in rois])  # (R,)
    roi_reg_targets = np.concatenate([r["regression_targets"] for r in rois])  # (R, 4)
    positive = [r["labels"] > 0 for r in rois]

    if cfg.backbone != "c4":  # FPN or C5: the 2-fc box head on 7x7 features, the FCN mask head on 14x14 ones
        box_feats, c_box_pool = roi_features_forward(roi_maps, [r["boxes"] for r in rois], image_sizes, cfg,
                                                     cfg.box_pool_size)  # (R, C, 7, 7)
        class_logits, box_regression, c_box_head = box_head_forward(params, box_feats)
        pos_boxes = [r["boxes"][p] for r, p in zip(rois, positive)]
        mask_feats, c_mask_pool = roi_features_forward(roi_maps, pos_boxes, image_sizes, cfg,
                                                       cfg.mask_pool_size)  # (P, C, 14, 14)
    else:  # C4: stage 5 on 14x14 RoI features; the mask branch reuses the positive RoIs' stage-5 output
        box_feats, c_box_pool = roi_features_forward(roi_maps, [r["boxes"] for r in rois], image_sizes, cfg,
                                                     cfg.box_pool_size)  # (R, 1024, 14, 14)
        res5, class_logits, box_regression, c_box_head = c4_head_forward(params, box_feats, resnet_config(cfg))
        mask_feats, c_mask_pool = res5[np.concatenate(positive)], None  # (P, 2048, 7, 7)
    loss_cls, loss_box, dlogits, dregression = box_loss(class_logits, box_regression, roi_labels, roi_reg_targets,
                                                        cfg)

    # Mask branch, on positive RoIs only (§3): the ground-truth class's mask.
    mask_logits, c_mask_head = mask_head_forward(params, mask_feats, cfg)  # (P, K, 28, 28)
    m_targets = mask_targets([r["boxes"][p] for r, p in zip(rois, positive)],
                             [r["matched_idxs"][p] for r, p in zip(rois, positive)],
                             [t["masks"] for t in targets], cfg)  # (P, 28, 28)
    pos_labels = roi_labels[roi_labels > 0]
    loss_mask, dmask_logits = mask_loss(mask_logits, pos_labels, m_targets, cfg)

    losses = {"loss_objectness": loss_obj, "loss_rpn_box_reg": loss_rpn_box, "loss_classifier": loss_cls,
              "loss_box_reg": loss_box, "loss_mask": loss_mask}
    cache = dict(cfg=cfg, c_backbone=c_backbone, c_rpn=c_rpn, shapes=[o.shape for o in objectness],
                 dobj_flat=dobj_flat, ddeltas_flat=ddeltas_flat, c_box_pool=c_box_pool, c_box_head=c_box_head,
                 dlogits=dlogits, dregression=dregression, c_mask_pool=c_mask_pool, c_mask_head=c_mask_head,
                 dmask_logits=dmask_logits, positive=np.concatenate(positive), rpn_maps=len(rpn_maps),
                 roi_maps=[m.shape for m in roi_maps], proposals=proposals, rois=rois,
                 outputs=dict(rpn_labels=labels, class_logits=class_logits, box_regression=box_regression,
                              mask_logits=mask_logits, mask_targets=m_targets))
    return losses, cache


def train_backward(cache, loss_weights: dict | None = None, *, return_stages=False):
    """The gradient of Σ w_i·loss_i with respect to every trainable parameter, the reverse of `train_forward`.

    Each loss's gradient was computed with the loss itself (a loss starts the backward pass); here they are scaled by
    their weights (default 1) and carried back through the network. `return_stages=True` also returns the gradients
    on the way: {"maps": the gradient reaching each backbone map (see `backbone_backward`), "box_features" (R, C, S, S)
    and "mask_features" (P, C, S', S'): the pooled RoI features' gradients} (for tests and notebooks).
    """
    w = {name: 1.0 for name in LOSS_NAMES}
    w.update(loss_weights or {})
    cfg = cache["cfg"]
    grads = {}

    # Mask branch: L_mask -> mask head -> (FPN: RoIAlign on the pyramid | C4: the positive rows of stage 5's output).
    dmask_feats, g = mask_head_backward(w["loss_mask"] * cache["dmask_logits"], cache["c_mask_head"])
    accumulate_grads(grads, g)
    # Box branch: L_cls, L_box -> box head.
    dlogits, dregression = w["loss_classifier"] * cache["dlogits"], w["loss_box_reg"] * cache["dregression"]
    if cfg.backbone != "c4":
        dbox_feats, g = box_head_backward(dlogits, dregression, cache["c_box_head"])
        accumulate_grads(grads, g)
        d_roi_maps, _ = multiscale_roi_backward(dbox_feats, cache["c_box_pool"])
        d_mask_maps, _ = multiscale_roi_backward(dmask_feats, cache["c_mask_pool"])
        d_roi_maps = [a + b for a, b in zip(d_roi_maps, d_mask_maps)]
    else:
        dres5_from_mask = np.zeros(cache["c_box_head"]["res5_shape"], dmask_feats.dtype)
        dres5_from_mask[cache["positive"]] = dmask_feats  # the mask branch read the positive rows
        dbox_feats, g = c4_head_backward(dlogits, dregression, dres5_from_mask, cache["c_box_head"])
        accumulate_grads(grads, g)
        d_roi_maps, _ = multiscale_roi_backward(dbox_feats, cache["c_box_pool"])
    # RPN: its two losses -> the shared head on every level.
    dobj, ddeltas = unflatten_head_grads(w["loss_objectness"] * cache["dobj_flat"],
                                         w["loss_rpn_box_reg"] * cache["ddeltas_flat"], cache["shapes"])
    d_rpn_maps, g = rpn_head_backward(dobj, ddeltas, cache["c_rpn"])
    accumulate_grads(grads, g)
    # Backbone: both streams of gradient meet on the feature maps.
    g, dmaps = backbone_backward(d_rpn_maps, d_roi_maps, cache["c_backbone"])
    accumulate_grads(grads, g)
    if not return_stages:
        return grads
    return grads, {"maps": dmaps, "box_features": dbox_feats, "mask_features": dmask_feats}


# ---------------------------------------------------------------------------------------------------------------
# Inference (§3.1).
# ---------------------------------------------------------------------------------------------------------------

def predict(params, cfg: MaskRCNNConfig, images, *, mask_threshold: float | None = 0.5, return_stages=False):
    """Detect and segment: list of (3, H, W) images -> per image {"boxes" (D, 4), "scores", "labels", "masks" (D, H, W)}
    in original image coordinates, best first. `mask_threshold=None` keeps soft masks; `return_stages=True` also
    returns a dict of the intermediate results (for notebooks and the torchvision parity test)."""
    dtype = params["backbone.body.conv1.weight"].dtype
    batch, image_sizes, original_sizes = preprocess(images if isinstance(images, list) else [images], cfg, dtype)
    rpn_maps, roi_maps, _ = backbone_forward(params, cfg, batch)
    objectness, deltas, _ = rpn_head_forward(params, rpn_maps)
    obj_flat, deltas_flat = flatten_head_outputs(objectness, deltas)
    anchors, counts = anchors_for_batch(cfg, batch.shape[2:], rpn_maps)
    proposals, _ = rpn_proposals(obj_flat, deltas_flat, anchors, counts, image_sizes, cfg, training=False)

    box_feats, _ = roi_features_forward(roi_maps, proposals, image_sizes, cfg, cfg.box_pool_size)
    if cfg.backbone != "c4":
        class_logits, box_regression, _ = box_head_forward(params, box_feats)
    else:
        _, class_logits, box_regression, _ = c4_head_forward(params, box_feats, resnet_config(cfg))
    detections = postprocess_detections(class_logits, box_regression, proposals, image_sizes, cfg)

    det_boxes = [d["boxes"] for d in detections]
    labels = np.concatenate([d["labels"] for d in detections])
    mask_logits = None
    if len(labels):
        if cfg.backbone != "c4":
            mask_feats, _ = roi_features_forward(roi_maps, det_boxes, image_sizes, cfg, cfg.mask_pool_size)
        else:
            feats, _ = roi_features_forward(roi_maps, det_boxes, image_sizes, cfg, cfg.box_pool_size)
            mask_feats, _, _, _ = c4_head_forward(params, feats, resnet_config(cfg))
        mask_logits, _ = mask_head_forward(params, mask_feats, cfg)  # (D, K, M, M)
        probs = mask_probabilities(mask_logits, labels, cfg)  # (D, M, M)
    else:
        probs = np.zeros((0, cfg.mask_resolution, cfg.mask_resolution), dtype)
    start = 0
    for d in detections:
        d["mask_probs"] = probs[start:start + len(d["labels"])]
        start += len(d["labels"])
    results = postprocess(detections, image_sizes, original_sizes, mask_threshold)
    if not return_stages:
        return results
    stages = dict(batch=batch, image_sizes=image_sizes, rpn_maps=rpn_maps, objectness=objectness, deltas=deltas,
                  anchors=anchors, proposals=proposals, box_features=box_feats, class_logits=class_logits,
                  box_regression=box_regression, detections=detections, mask_logits=mask_logits)
    return results, stages
