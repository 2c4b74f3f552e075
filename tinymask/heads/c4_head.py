"""The C4 box head: ResNet stage 5 on RoI features, global average pooling, class scores and box deltas.

Paper: Mask R-CNN §3 "Network Architecture" and Fig. 4 (left), following the ResNet paper's Faster R-CNN (He et al.
2016, Appendix A): with the ResNet-C4 backbone the network up to stage 4 is shared and stage 5 ("res5") becomes the
RoI head. Here each RoI's 14×14 features go through res5 with its stride 2 (so 7×7×2048), as in ResNet App. A and
Detectron; Fig. 4's caption describes a variant that pools 7×7 RoIs and runs res5 at stride 1 — the output size is
the same. The features are average-pooled and fed to the classifier and box regressor; the mask branch
deconvolves the same res5 output to 14×14 masks (`tinymask.heads.mask_head` with no convs).

Stage 5's parameters keep the backbone's names, `backbone.body.layer4.*`, since it is the same stage of the same
ResNet, moved after the RoI pooling.
"""
from __future__ import annotations

import numpy as np

from tinymask.backbone.resnet import resnet_stage_backward, resnet_stage_forward
from tinymask.heads.box_head import BBOX, CLS
from tinymask.layers.linear import linear_backward, linear_forward
from tinymask.layers.pooling import global_avg_pool_backward, global_avg_pool_forward

STAGE5 = "backbone.body.layer4."


def init_c4_head_params(in_features: int, num_classes: int, rng, dtype=np.float32) -> dict:
    """Class scores N(0, 0.01²) and box deltas N(0, 0.001²), zero biases (Detectron / detectron2's init).

    Stage 5's own weights are the backbone's (`backbone.body.layer4.*`, made by `init_resnet_params`).
    """
    return {f"{CLS}.weight": (0.01 * rng.standard_normal((num_classes, in_features))).astype(dtype),
            f"{CLS}.bias": np.zeros(num_classes, dtype),
            f"{BBOX}.weight": (0.001 * rng.standard_normal((4 * num_classes, in_features))).astype(dtype),
            f"{BBOX}.bias": np.zeros(4 * num_classes, dtype)}


def c4_head_forward(params, roi_features, resnet_cfg):
    """roi_features (R, 1024, 14, 14) -> res5 (R, 2048, 7, 7), class_logits (R, K), box_regression (R, 4K), cache."""
    res5, c_stage = resnet_stage_forward(params, STAGE5, roi_features, resnet_cfg, 5)  # (R, 2048, 7, 7)
    pooled, c_pool = global_avg_pool_forward(res5)  # (R, 2048)
    logits, c_cls = linear_forward(pooled, params[f"{CLS}.weight"], params[f"{CLS}.bias"])  # (R, K)
    regression, c_box = linear_forward(pooled, params[f"{BBOX}.weight"], params[f"{BBOX}.bias"])  # (R, 4K)
    cache = dict(c_stage=c_stage, c_pool=c_pool, c_cls=c_cls, c_box=c_box, res5_shape=res5.shape)
    return res5, logits, regression, cache


def c4_head_backward(dlogits, dregression, dres5_extra, cache):
    """Reverse of `c4_head_forward`. `dres5_extra` (R, 2048, 7, 7) is the gradient the mask branch sends to res5's output."""
    grads = {}
    dp1, grads[f"{CLS}.weight"], grads[f"{CLS}.bias"] = linear_backward(dlogits, cache["c_cls"])
    dp2, grads[f"{BBOX}.weight"], grads[f"{BBOX}.bias"] = linear_backward(dregression, cache["c_box"])
    dres5 = global_avg_pool_backward(dp1 + dp2, cache["c_pool"]) + dres5_extra  # two readers of res5: gradients add
    dx, g = resnet_stage_backward(dres5, cache["c_stage"])
    grads.update(g)
    return dx, grads
