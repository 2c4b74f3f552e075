"""Layers that read their weights from the model's flat parameter dict by name, and return named gradients.

tinymask keeps every parameter in one `{name: array}` dict with torchvision's state-dict names; these wrappers let
the backbone and heads say `named_conv_forward(params, "backbone.fpn.layer_blocks.0", x, padding=1)` and get back
`{"backbone.fpn.layer_blocks.0.weight": dw, ...}` from the backward. A weight used more than once (the RPN head on
every pyramid level) gets the sum of its gradients: `accumulate_grads`.
"""
from __future__ import annotations

import numpy as np

from tinymask._validate import check_dout, check_float_array, finite_checked
from tinymask.layers.conv import conv2d_backward, conv2d_forward


def param(params: dict, key: str) -> np.ndarray:
    """params[key], or an error that names the missing key."""
    try:
        return params[key]
    except KeyError:
        raise KeyError(f"the params dict has no entry {key!r}") from None


def accumulate_grads(total: dict, new: dict) -> dict:
    """Add `new` into `total` key by key: a weight used twice gets the sum of both gradients."""
    for key, g in new.items():
        total[key] = total[key] + g if key in total else g
    return total


@finite_checked("out", "cache")
def named_conv_forward(params, name, x, *, stride=1, padding=0, groups=1, bias=False):
    """conv2d with weight `name.weight` (and `name.bias`) from `params`. x: (N, C, H, W) -> (N, F, Ho, Wo), cache.

    groups: a grouped convolution (ResNeXt's 3×3), w of shape (F, C/groups, kH, kW)."""
    check_float_array(x, "x", 4, "(N, C, H, W)")
    w = param(params, f"{name}.weight")  # (F, C/groups, kH, kW)
    b = param(params, f"{name}.bias") if bias else None  # (F,)
    if w.ndim == 4 and x.shape[1] != w.shape[1] * groups:
        per = f" ({w.shape[1]} per group × groups={groups})" if groups != 1 else ""
        raise ValueError(f"{name}.weight {w.shape} expects {w.shape[1] * groups} input channels{per}, got "
                         f"{x.shape[1]} (input shape {x.shape})")
    out, cache = conv2d_forward(x, w, b, stride=stride, padding=padding, groups=groups)
    return out, (name, cache, out.shape)


@finite_checked("dx", "grads")
def named_conv_backward(dout, cache):
    """-> (dx, {name.weight: dw, name.bias: db (if it has one)})."""
    name, conv_cache, out_shape = cache
    check_dout(dout, out_shape, f"named_conv_backward[{name}]")
    dx, dw, db = conv2d_backward(dout, conv_cache)
    grads = {f"{name}.weight": dw}
    if db is not None:
        grads[f"{name}.bias"] = db
    return dx, grads


