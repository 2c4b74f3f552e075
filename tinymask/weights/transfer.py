"""Fine-tuning: start a model from weights trained on other data, and choose which backbone stages train.

*Code:* `tinymask/weights/transfer.py` · *Command:* `tinymask train --init-weights FILE` · *Test:*
`tests/test_transfer.py`

Practitioners rarely train Mask R-CNN from scratch: they start from weights trained on COCO and fine-tune on their own
data (torchvision's detection tutorial does exactly this). The backbone, the FPN, the RPN and the heads' hidden layers
learned features that transfer; the three layers whose outputs are per class cannot, since the new data has other
classes:

    roi_heads.box_predictor.cls_score         K class scores
    roi_heads.box_predictor.bbox_pred         4K box deltas
    roi_heads.mask_predictor.mask_fcn_logits  K masks

`init_from(source, cfg, seed)` builds the new model's parameters: every parameter the source has with the same shape
is copied; the class-dependent ones above are always initialised afresh (as torchvision's tutorial replaces the
predictors), even when K happens to match, since the classes themselves differ; the rest (a shape that does not fit,
a name the source lacks) keep their fresh initialisation, and the report says which and why. A source parameter the
new model does not have is skipped and listed too.

**Freezing stages** (`trainable_backbone_layers`, torchvision's argument of the same name): of the ResNet's five
parts — the stem (`conv1`, `bn1`) and stages `layer1` … `layer4` — only the last N train; N = 5 trains everything,
N = 0 none of the ResNet (the FPN, RPN and heads always train). torchvision's default when it starts from COCO
weights is 3, so that the low-level filters learned on a million images are not disturbed by a small data set.
"""
from __future__ import annotations

import os

import numpy as np

from tinymask.config import MaskRCNNConfig
from tinymask.model import init_params
from tinymask.weights.checkpoint import VELOCITY_PREFIX, load_checkpoint
from tinymask.weights.files import load_weights

#: The parameters whose shapes depend on the number of classes (prefixes of their names).
CLASS_DEPENDENT = ("roi_heads.box_predictor.cls_score.", "roi_heads.box_predictor.bbox_pred.",
                   "roi_heads.mask_predictor.mask_fcn_logits.")
#: The ResNet's parts from the last to the first, as torchvision's `trainable_backbone_layers` counts them.
BACKBONE_PARTS = ("layer4", "layer3", "layer2", "layer1", "conv1")


def read_source_weights(path) -> dict[str, np.ndarray]:
    """Parameters to start from: a tinymask checkpoint folder, a tinymask `.npz` or a torchvision `.pth`.

    The optimizer's momentum of a checkpoint is left out; FileNotFoundError / WeightsFileError name the file."""
    path = os.fspath(path)
    if os.path.isdir(path):
        params = load_checkpoint(path)[0]
    else:
        params = load_weights(path)
    return {k: v for k, v in params.items() if not k.startswith(VELOCITY_PREFIX)}


def init_from(source: dict, cfg: MaskRCNNConfig, seed: int = 0) -> tuple[dict, dict]:
    """The new model's parameters, started from `source` where the shapes fit (see the module docstring).

    Returns (params, report): report = {"loaded": [names], "reinitialised": [(name, why)], "skipped": [(name, why)]}.
    """
    fresh = init_params(cfg, seed=seed)
    params, report = {}, {"loaded": [], "reinitialised": [], "skipped": []}
    for name, value in fresh.items():
        if name.startswith(CLASS_DEPENDENT):
            why = "class-dependent: the new data's classes"
        elif name not in source:
            why = "not in the source"
        elif np.shape(source[name]) != value.shape:
            why = f"shape {tuple(np.shape(source[name]))} in the source, {value.shape} here"
        else:
            params[name] = np.array(source[name], dtype=value.dtype)  # a copy, in this model's dtype
            report["loaded"].append(name)
            continue
        params[name] = value
        report["reinitialised"].append((name, why))
    report["skipped"] = [(name, "not in this model") for name in source if name not in fresh]
    return params, report


def format_report(report: dict, source: str, show: int | None = None) -> str:
    """What `tinymask train --init-weights` prints: counts, then every re-initialised and skipped name with its reason
    (the first `show` of each when given; the loaded names are in the run folder's init_weights.json)."""
    lines = [f"started from {source}: {len(report['loaded'])} parameter tensors loaded, "
             f"{len(report['reinitialised'])} initialised afresh, {len(report['skipped'])} of the source skipped"]
    for label, items in (("initialised afresh", report["reinitialised"]), ("skipped", report["skipped"])):
        for name, why in items[:show]:
            lines.append(f"  {label}: {name} ({why})")
        if show is not None and len(items) > show:
            lines.append(f"  ... and {len(items) - show} more {label}")
    return "\n".join(lines)


def backbone_part(name: str) -> str | None:
    """The ResNet part a parameter belongs to ("conv1" for the stem, "layer1".."layer4"), or None outside the ResNet."""
    prefix = "backbone.body."
    if not name.startswith(prefix):
        return None
    head = name[len(prefix):].split(".")[0]
    return "conv1" if head in ("conv1", "bn1") else head


def trains_with(name: str, trainable_backbone_layers: int | None) -> bool:
    """Whether `name` trains when only the last `trainable_backbone_layers` ResNet parts do (None: all of them)."""
    if trainable_backbone_layers is None:
        return True
    part = backbone_part(name)
    return part is None or part in BACKBONE_PARTS[:trainable_backbone_layers]
