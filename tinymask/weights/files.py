"""Weights files, whatever their format: one loader that goes by the extension, and a check against a model.

*Code:* `tinymask/weights/files.py` · *Test:* `tests/test_weights.py`

A model's parameters are one flat `dict[str, np.ndarray]` keyed by torchvision's `maskrcnn_resnet50_fpn` state-dict
names (`backbone.body.conv1.weight`, ...). `.pth`/`.pt` files are PyTorch's (read by `torch_format.py` without
PyTorch), `.npz` files tinymask's own (`npz.py`); `check_params_match` lists every name or shape that does not fit.
"""
from __future__ import annotations

import os
from collections.abc import Mapping

import numpy as np

from tinymask.weights.errors import ParamsMismatchError, existing_file
from tinymask.weights.keys import upgrade_key
from tinymask.weights.npz import load_npz
from tinymask.weights.torch_format import load_torch_state_dict

TORCH_EXTENSIONS = (".pth", ".pt")



NPZ_EXTENSIONS = (".npz",)



def load_weights(path) -> dict[str, np.ndarray]:
    """Parameters from a `.pth`/`.pt` (torch.save) or `.npz` (save_npz) file, chosen by the file's extension.

    For the options (a checkpoint's key, `num_batches_tracked`) or an .npz's metadata, call
    `load_torch_state_dict` or `load_npz` directly.
    """
    path = existing_file(path)
    ext = os.path.splitext(path)[1].lower()
    if ext in TORCH_EXTENSIONS:
        return load_torch_state_dict(path)
    if ext in NPZ_EXTENSIONS:
        return load_npz(path)[0]
    raise ValueError(f"cannot tell the format of {path} from its extension {ext!r}: "
                     f"expected one of {', '.join(TORCH_EXTENSIONS + NPZ_EXTENSIONS)}")



def _listing(items: list[str], show: int) -> str:
    more = f", ... and {len(items) - show} more" if len(items) > show else ""
    return ", ".join(items[:show]) + more



def check_params_match(params: Mapping, expected, *, show: int = 5) -> None:
    """Raise ParamsMismatchError listing missing names, unexpected names and wrong shapes, all in one message.

    params:    {name: array}.
    expected:  {name: shape}, or (name, shape) pairs such as the entries of a state-dict key list.
    show:      how many of each kind to name (the counts are always complete).
    """
    pairs = expected.items() if isinstance(expected, Mapping) else expected
    expected = {name: tuple(int(n) for n in shape) for name, shape in pairs}
    missing = [k for k in expected if k not in params]
    unexpected = [k for k in params if k not in expected]
    wrong = [f"{k} is {tuple(np.shape(params[k]))}, expected {expected[k]}" for k in expected
             if k in params and tuple(np.shape(params[k])) != expected[k]]
    if not (missing or unexpected or wrong):
        return
    lines = [f"parameters do not match the model: {len(missing)} missing, {len(unexpected)} unexpected, "
             f"{len(wrong)} with the wrong shape"]
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            lines.append(f"  {label} ({len(items)}): {_listing(items, show)}")
    if any(upgrade_key(k) != k for k in unexpected):
        lines.append("  hint: some names are old torchvision spellings; upgrade them with upgrade_legacy_keys()")
    if any(k.endswith("num_batches_tracked") for k in missing):
        lines.append("  hint: load_torch_state_dict drops num_batches_tracked unless keep_num_batches_tracked=True")
    raise ParamsMismatchError("\n".join(lines))
