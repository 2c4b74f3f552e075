"""Feature Pyramid Network: lateral 1×1 convs, the top-down pathway and 3×3 output convs, forward and backward.

*Papers:* Lin, Dollár, Girshick, He, Hariharan, Belongie, *Feature Pyramid Networks for Object Detection*, CVPR 2017,
Sec. 3 "Feature Pyramid Networks" (Fig. 3) and Sec. 4.1 (P6 for the RPN); He et al., *Mask R-CNN*, ICCV 2017, Sec. 3
"Network Architecture" (the ResNet-FPN backbone, Fig. 4 right).

From ResNet's C2..C5 (strides 4..32) FPN builds maps P2..P5 of one width d (256 in the paper) at the same strides, each
mixing the fine resolution of its own level with the semantics of the levels above:

    lateral_k = conv1×1(C_k) + bias                                    (N, d, H_k, W_k)      "inner_blocks"
    inner_5   = lateral_5
    inner_k   = lateral_k + nearest_resize(inner_{k+1}, size of lateral_k)     for k = 4, 3, 2  (Fig. 3, "+")
    P_k       = conv3×3(inner_k) + bias, padding 1                     (N, d, H_k, W_k)      "layer_blocks"
    P6        = P5[:, :, ::2, ::2]    (max pool, kernel 1, stride 2: "a simple stride-two subsampling", Sec. 4.1)

The paper upsamples by exactly 2; resizing to the lateral map's size (torchvision's choice) also covers image sides
that are not multiples of 32, where ⌈H/8⌉ is not 2·⌈H/16⌉.

Backward: the pool sends its gradient to the P5 pixels it picked; each output conv returns ∂L/∂inner_k. The top-down
pathway is undone from the finest level up: inner_k fed both P_k and (upsampled) inner_{k−1}, so once ∂L/∂inner_{k−1}
is complete, its upsample-backward is added to ∂L/∂inner_k. The sum `lateral_k + up` hands ∂L/∂inner_k unchanged to
the lateral conv, whose backward gives ∂L/∂C_k.

Parameter names follow torchvision (`backbone.fpn.inner_blocks.{i}.0.weight`, `layer_blocks.{i}.0.bias`, i = 0 for
the finest level given), and its output names `"0".."3", "pool"` are P2..P5, P6 (`TORCHVISION_NAMES`).
"""
from __future__ import annotations

import numpy as np

from tinymask.backbone.resnet import ResNetConfig, resnet_backward, resnet_forward
from tinymask.layers.named import accumulate_grads, named_conv_backward, named_conv_forward
from tinymask.layers.pooling import max_pool2d_backward, max_pool2d_forward
from tinymask.layers.upsample import upsample_nearest_backward, upsample_nearest_forward

#: tinymask's level names and torchvision's keys for the same maps.
TORCHVISION_NAMES = {"P2": "0", "P3": "1", "P4": "2", "P5": "3", "P6": "pool"}


def _pyramid_levels(features: dict) -> list[int]:
    """The levels k of the C_k given, finest first; they must be consecutive (C2..C5, or C3..C5, ...)."""
    try:
        levels = sorted(int(name[1:]) for name in features if name[0] == "C")
    except ValueError:
        levels = []
    if not levels or len(levels) != len(features) or levels != list(range(levels[0], levels[-1] + 1)):
        raise ValueError(f"features must be consecutive levels named C2..C5, got {sorted(features)}")
    return levels


def fpn_forward(params, features: dict, *, prefix="backbone.fpn."):
    """features: {"C2": (N, C_2, H_2, W_2), ..., "C5": (N, C_5, H_5, W_5)} ->
    ({"P2": (N, d, H_2, W_2), ..., "P5": (N, d, H_5, W_5), "P6": (N, d, ⌈H_5/2⌉, ⌈W_5/2⌉)}, cache).
    """
    levels = _pyramid_levels(features)
    top = len(levels) - 1
    # lateral connections: a 1×1 conv brings every C_k to d channels
    laterals, c_lateral = [], []
    for i, k in enumerate(levels):
        lat, c = named_conv_forward(params, f"{prefix}inner_blocks.{i}.0", features[f"C{k}"],
                                    bias=True)  # (N, d, H_k, W_k)
        laterals.append(lat)
        c_lateral.append(c)
    # top-down pathway, from the coarsest level
    inner, c_upsample = [None] * len(levels), [None] * len(levels)
    inner[top] = laterals[top]
    for i in range(top - 1, -1, -1):
        up, c_upsample[i] = upsample_nearest_forward(inner[i + 1], size=laterals[i].shape[2:])  # (N, d, H_k, W_k)
        inner[i] = laterals[i] + up
    # output convs: a 3×3 conv on each merged map "to reduce the aliasing effect of upsampling" (Sec. 3)
    outputs, c_output = {}, []
    for i, k in enumerate(levels):
        outputs[f"P{k}"], c = named_conv_forward(params, f"{prefix}layer_blocks.{i}.0", inner[i],
                                                 padding=1, bias=True)  # (N, d, H_k, W_k)
        c_output.append(c)
    # one more level for the RPN: subsample the coarsest output
    k_top = levels[-1]
    outputs[f"P{k_top + 1}"], c_pool = max_pool2d_forward(outputs[f"P{k_top}"], kernel_size=1, stride=2)
    shapes = {name: p.shape for name, p in outputs.items()}
    return outputs, (levels, c_lateral, c_upsample, c_output, c_pool, shapes, outputs[f"P{k_top}"].dtype)


def fpn_backward(dP: dict, cache):
    """dP: {"P2": ∂L/∂P2, ..., "P6": ...}, a missing entry meaning a zero gradient -> ({"C2": ∂L/∂C2, ...}, grads)."""
    levels, c_lateral, c_upsample, c_output, c_pool, shapes, dtype = cache
    for name, d in dP.items():
        if name not in shapes:
            raise ValueError(f"got a gradient for {name!r}, but the FPN returned only {sorted(shapes)}")
        if d.shape != shapes[name]:
            raise ValueError(f"gradient for {name} has shape {d.shape}, but {name} has shape {shapes[name]}")

    def grad_of(name):
        return dP[name] if name in dP else np.zeros(shapes[name], dtype=dtype)

    grads = {}
    k_top = levels[-1]
    # the pool's gradient joins P_top's own
    d_outputs = [grad_of(f"P{k}") for k in levels]  # (N, d, H_k, W_k) each
    d_outputs[-1] = d_outputs[-1] + max_pool2d_backward(grad_of(f"P{k_top + 1}"), c_pool)
    # output convs
    d_inner = []
    for i in range(len(levels)):
        d, g = named_conv_backward(d_outputs[i], c_output[i])  # (N, d, H_k, W_k): ∂L/∂inner_k through P_k
        d_inner.append(d)
        accumulate_grads(grads, g)
    # top-down pathway in reverse, finest level first: inner_{k+1} also fed inner_k through the upsample
    for i in range(len(levels) - 1):
        d_up = upsample_nearest_backward(d_inner[i], c_upsample[i])  # (N, d, H_{k+1}, W_{k+1})
        d_inner[i + 1] = d_inner[i + 1] + d_up
    # lateral convs: the sum lateral_k + up passed ∂L/∂inner_k to the lateral unchanged
    dfeatures = {}
    for i, k in enumerate(levels):
        dfeatures[f"C{k}"], g = named_conv_backward(d_inner[i], c_lateral[i])  # (N, C_k, H_k, W_k)
        accumulate_grads(grads, g)
    return dfeatures, grads


def resnet_fpn_forward(params, images, cfg: ResNetConfig, *, prefix="backbone."):
    """The ResNet-FPN backbone (Mask R-CNN Fig. 4, right): images (N, 3, H, W) -> ({"P2".."P6"}, cache).

    The ResNet's returned stages (cfg.return_stages, C2..C5 by default) are the FPN's inputs.
    """
    features, c_body = resnet_forward(params, images, cfg, prefix=f"{prefix}body.")  # {"C2": (N, 256, H/4, W/4), ...}
    pyramid, c_fpn = fpn_forward(params, features, prefix=f"{prefix}fpn.")  # {"P2": (N, d, H/4, W/4), ...}
    return pyramid, (c_body, c_fpn)


def resnet_fpn_backward(dP: dict, cache):
    """dP: {"P2": ..., "P6": ...} (missing = zero) -> (dimages (N, 3, H, W), grads of ResNet and FPN)."""
    c_body, c_fpn = cache
    dfeatures, grads = fpn_backward(dP, c_fpn)
    dimages, g = resnet_backward(dfeatures, c_body)
    return dimages, accumulate_grads(grads, g)


# ---------------------------------------------------------------------------------------------------------------
# Parameter shapes and initialisation.
# ---------------------------------------------------------------------------------------------------------------

def fpn_param_shapes(in_channels_list, out_channels, *, prefix="backbone.fpn.") -> dict[str, tuple[int, ...]]:
    """Names and shapes in torchvision's state-dict order: all laterals, then all output convs."""
    shapes = {}
    for i, c_in in enumerate(in_channels_list):
        shapes[f"{prefix}inner_blocks.{i}.0.weight"] = (out_channels, c_in, 1, 1)
        shapes[f"{prefix}inner_blocks.{i}.0.bias"] = (out_channels,)
    for i in range(len(in_channels_list)):
        shapes[f"{prefix}layer_blocks.{i}.0.weight"] = (out_channels, out_channels, 3, 3)
        shapes[f"{prefix}layer_blocks.{i}.0.bias"] = (out_channels,)
    return shapes


def init_fpn_params(in_channels_list, out_channels, rng: np.random.Generator, dtype=np.float32, *,
                    prefix="backbone.fpn.") -> dict[str, np.ndarray]:
    """torchvision's FPN initialisation: `kaiming_uniform_(w, a=1)`, i.e. uniform on ±√(3 / fan_in) with
    fan_in = C_in·kH·kW (a gain of √(2 / (1 + a²)) = 1: variance-preserving for the linear maps FPN's convs are,
    there being no ReLU after them), and zero biases. `in_channels_list`: the channels of C2..C5, e.g.
    [256, 512, 1024, 2048]; `out_channels`: d (256 in the paper).
    """
    params = {}
    for name, shape in fpn_param_shapes(in_channels_list, out_channels, prefix=prefix).items():
        if len(shape) == 4:
            bound = np.sqrt(3.0 / (shape[1] * shape[2] * shape[3]))
            value = rng.uniform(-bound, bound, size=shape)
        else:
            value = np.zeros(shape)
        params[name] = value.astype(dtype)
    return params
