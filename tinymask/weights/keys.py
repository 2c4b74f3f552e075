"""Old spellings of torchvision's parameter names, renamed to today's (older torchvision, its pretrained COCO file).

*Test:* `tests/test_weights.py`
"""
from __future__ import annotations

import re
from collections.abc import Mapping

#: (pattern, new name) for the three renames torchvision itself makes in `_load_from_state_dict` when a checkpoint's
#: module version is missing or < 2 (its pretrained `maskrcnn_resnet50_fpn` COCO file is such a checkpoint):
#: - `torchvision/ops/feature_pyramid_network.py`, `FeaturePyramidNetwork`: each inner/layer block became a
#:   `Conv2dNormActivation` (a Sequential with the conv at index 0): `{block}.{i}.{w}` -> `{block}.{i}.0.{w}`;
#: - `torchvision/models/detection/rpn.py`, `RPNHead`: the conv became a Sequential of `conv_depth` such blocks:
#:   `conv.{w}` -> `conv.0.0.{w}`;
#: - `torchvision/models/detection/mask_rcnn.py`, `MaskRCNNHeads`: the named convs `mask_fcn1..4` became numbered
#:   blocks: `mask_fcn{i+1}.{w}` -> `{i}.0.{w}`.
#: torchvision decides by the version saved with the module; here the spelling decides, since an old name can never
#: be a current one. Any prefix before the module (e.g. "module." from DistributedDataParallel) is kept as it is.
_LEGACY_KEY_RULES = (
    (re.compile(r"^((?:.*\.)?fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$"), lambda m: f"{m[1]}.0.{m[2]}"),
    (re.compile(r"^((?:.*\.)?rpn\.head\.conv)\.(weight|bias)$"), lambda m: f"{m[1]}.0.0.{m[2]}"),
    (re.compile(r"^((?:.*\.)?roi_heads\.mask_head\.)mask_fcn([1-9]\d*)\.(weight|bias)$"),
     lambda m: f"{m[1]}{int(m[2]) - 1}.0.{m[3]}"),
)



def upgrade_key(name: str) -> str:
    """The current torchvision spelling of a parameter name (the name itself if it is not an old spelling)."""
    for pattern, new in _LEGACY_KEY_RULES:
        m = pattern.match(name)
        if m:
            return new(m)
    return name



def upgrade_legacy_keys(state_dict: Mapping) -> dict:
    """A new dict, in the same order, with old torchvision key spellings renamed (see `_LEGACY_KEY_RULES`).

    Values are the same objects. Raises ValueError if an old name and its current name are both present.
    """
    out = {}
    for name, value in state_dict.items():
        new = upgrade_key(name)
        if new in out or (new != name and new in state_dict):
            raise ValueError(f"both {name!r} and its current spelling {new!r} are present; cannot tell which to keep")
        out[new] = value
    return out
