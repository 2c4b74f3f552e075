"""The torchvision reference model of `tests/data/tiny_fpn_model.{json,npz}`: its weights, regenerated.

The fixture (made by torchvision 0.28 in float64; see the README that came with it) stores a small Mask R-CNN's
outputs stage by stage, but not its weights: those are rebuilt here from the json's `state_dict` list of
`(name, shape)` and its `seed`, one draw per entry in list order from `numpy.random.default_rng(seed)`, the first
matching rule deciding the value:

| entry                                                              | value                                        |
|--------------------------------------------------------------------|----------------------------------------------|
| name ends with `running_var`                                       | `0.5 + rng.random(shape)`                    |
| name ends with `running_mean`                                      | `0.1 * rng.standard_normal(shape)`           |
| other 1-D entry whose name ends with `weight`                      | `1.0 + 0.1 * rng.standard_normal(shape)`     |
| other 1-D entry (biases)                                           | `0.1 * rng.standard_normal(shape)`           |
| name contains cls_logits, bbox_pred, cls_score or mask_fcn_logits  | `0.01 * rng.standard_normal(shape)`          |
| every other entry (fan_in = prod(shape[1:]))                       | `rng.standard_normal(shape) * sqrt(2 / fan_in)` |

`regenerate_weights` works for any `(name, shape)` list, so the tests also use it to fill small random models.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
PREDICTOR_NAMES = ("cls_logits", "bbox_pred", "cls_score", "mask_fcn_logits")


def _draw(name: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """One entry's value by the first matching rule of the table above."""
    if name.endswith("running_var"):
        return 0.5 + rng.random(shape)
    if name.endswith("running_mean"):
        return 0.1 * rng.standard_normal(shape)
    if len(shape) == 1 and name.endswith("weight"):
        return 1.0 + 0.1 * rng.standard_normal(shape)
    if len(shape) == 1:
        return 0.1 * rng.standard_normal(shape)
    if any(p in name for p in PREDICTOR_NAMES):
        return 0.01 * rng.standard_normal(shape)
    return rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))


def regenerate_weights(state_dict, seed: int, dtype=np.float64) -> dict[str, np.ndarray]:
    """state_dict: `[(name, shape), ...]` in order (or a dict name -> shape) -> {name: array}, one draw per entry."""
    entries = state_dict.items() if isinstance(state_dict, dict) else state_dict
    rng = np.random.default_rng(seed)
    return {name: _draw(name, tuple(shape), rng).astype(dtype) for name, shape in entries}


def load_tiny_fpn_model():
    """-> (meta, params, arrays): the json (config, seed, versions), all 127 weights in float64, and the npz arrays."""
    meta = json.loads((DATA / "tiny_fpn_model.json").read_text())
    params = regenerate_weights(meta["state_dict"], meta["seed"])
    with np.load(DATA / "tiny_fpn_model.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    return meta, params, arrays
