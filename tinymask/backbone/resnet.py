"""ResNet backbone: the stem, bottleneck blocks and stages C2..C5, forward and backward.

*Papers:* He, Zhang, Ren, Sun, *Deep Residual Learning for Image Recognition*, CVPR 2016 — Sec. 3.3 and Table 1 (the
50- and 101-layer networks), Sec. 4.1 "Deeper Bottleneck Architectures" (Fig. 5, right); He, Gkioxari, Dollár,
Girshick, *Mask R-CNN*, ICCV 2017, Sec. 3 "Network Architecture" and Fig. 4: the backbone is ResNet-50 or -101, whose
stage outputs C2..C5 (strides 4, 8, 16, 32) feed either FPN (`fpn.py`) or, in the C4 model, the RPN and RoI heads
directly, with stage 5 run on each RoI as the box head (Fig. 4, left: "res5").

The network, for an image of size H × W (every stride-2 layer rounds up, so "H/4" means ⌈H/4⌉):

    stem     7×7 conv, stride 2 → norm → ReLU → 3×3 max pool, stride 2           (N, 64, H/4, W/4)
    stage 2  blocks[0] bottlenecks, planes 64,  stride 1  → C2                    (N, 256, H/4, W/4)
    stage 3  blocks[1] bottlenecks, planes 128, stride 2  → C3                    (N, 512, H/8, W/8)
    stage 4  blocks[2] bottlenecks, planes 256, stride 2  → C4                    (N, 1024, H/16, W/16)
    stage 5  blocks[3] bottlenecks, planes 512, stride 2  → C5                    (N, 2048, H/32, W/32)

**ResNeXt** (Xie, Girshick, Dollár, Tu, He, *Aggregated Residual Transformations for Deep Neural Networks*, CVPR
2017; Mask R-CNN Table 2a's best backbone) is the same network with `groups` = C > 1, the cardinality: the 3×3 conv
of every block becomes a grouped convolution of C paths (ResNeXt Fig. 3c, Eq. 3: F(x) = Σ_i T_i(x)), each
`width / C` channels wide, with width = C · width_per_group · planes / 64 (torchvision's `resnext101_32x8d`:
C = 32, 8 per group). The backward of a grouped conv is each path's own backward (`tinymask/layers/conv.py`).

A **bottleneck block** (Fig. 5, right) squeezes to `width` channels with a 1×1 conv, does the spatial work with a 3×3
conv at that width, and expands to 4·planes with a second 1×1 conv; the input is added back (Eq. 1, `y = F(x) + x`), or,
where the shape changes, a 1×1 projection of it (Eq. 2, `y = F(x) + W_s x`, "option B"):

    F(x) = norm(conv1×1(relu(norm(conv3×3(relu(norm(conv1×1(x))))))))
    y = relu(F(x) + shortcut(x))

Backward: the gradient of `y` passes the final ReLU, then the sum hands the same gradient to both branches; each branch
is undone layer by layer in reverse, and the two gradients w.r.t. `x` add up (x fed both).

**Parameters** live in one flat dict whose keys are torchvision's `maskrcnn_resnet50_fpn` state-dict names
(`backbone.body.layer2.0.conv1.weight`, ...), so torchvision weights load as they are. Gradients come back as a dict
with the same keys, for the trainable entries only: frozen batch norm is a constant affine map (`tinymask/layers/
norm.py`) and gets no gradient; with group norm `bnX.weight` / `bnX.bias` are the trainable γ / β.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinymask.layers.activations import relu_backward, relu_forward
from tinymask.layers.named import accumulate_grads, named_conv_backward, named_conv_forward, param
from tinymask.layers.norm import (frozen_batch_norm_backward, frozen_batch_norm_forward, group_norm_backward,
                                  group_norm_forward)
from tinymask.layers.pooling import max_pool2d_backward, max_pool2d_forward

#: Blocks per stage C2..C5 (ResNet Table 1).
DEPTH_BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
#: A bottleneck block's output has 4× its planes (ResNet Sec. 4.1: 64-d → 256-d).
EXPANSION = 4
NORMS = ("frozen_bn", "group_norm")
STAGES = ("C2", "C3", "C4", "C5")


@dataclass
class ResNetConfig:
    """The shape of a ResNet backbone. Defaults give torchvision's `resnet50` as used by `maskrcnn_resnet50_fpn`."""

    depth: int = 50  # ResNet Table 1: 50 or 101 (Mask R-CNN Sec. 3 uses both); ignored when `blocks` is given
    blocks: tuple[int, ...] | None = None  # blocks per stage C2..C5, overriding `depth`, e.g. (1, 1, 1, 1) on a CPU
    image_channels: int = 3  # RGB
    stem_channels: int = 64  # ResNet Table 1, conv1: "7×7, 64, stride 2"
    base_channels: int = 64  # planes of stage C2; doubled per stage (Table 1: 64, 128, 256, 512)
    width_per_group: int = 64  # inner width = planes · width_per_group / 64 · groups (torchvision's `base_width`;
    #                            64 = ResNet; ResNeXt-101 32×8d: 8)
    groups: int = 1  # ResNeXt's cardinality: the 3×3 conv of each block is grouped (Xie et al. 2017, Sec. 3.3); 1 =
    #                  ResNet. Not group norm's num_groups
    norm: str = "frozen_bn"  # frozen BN as in ResNet App. A / Detectron; "group_norm" (Wu & He, ECCV 2018) trains from scratch
    num_groups: int = 32  # Wu & He Sec. 3.1: G = 32 groups
    eps: float = 1e-5  # both norms' ε (torchvision's FrozenBatchNorm2d and GroupNorm defaults)
    stride_in_1x1: bool = False  # False: stride in the 3×3 (torchvision, "ResNet v1.5"); True: in the first 1×1
    #                              (the original MSRA Caffe weights and Detectron's default)
    return_stages: tuple[str, ...] = STAGES  # which of C2..C5 to return; the C4 backbone returns ("C4",) and stops

    def __post_init__(self):
        if self.blocks is None and self.depth not in DEPTH_BLOCKS:
            raise ValueError(f"depth must be one of {sorted(DEPTH_BLOCKS)} (or give blocks=...), got {self.depth}")
        if len(self.stage_blocks) != 4 or min(self.stage_blocks) < 1:
            raise ValueError(f"blocks must give at least one block to each of the 4 stages, got {self.stage_blocks}")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose one of {NORMS}")
        if not self.return_stages or any(s not in STAGES for s in self.return_stages):
            raise ValueError(f"return_stages must be a non-empty subset of {STAGES}, got {self.return_stages!r}")
        if isinstance(self.groups, bool) or not isinstance(self.groups, (int, np.integer)) or self.groups < 1:
            raise ValueError(f"groups (the cardinality) must be a positive int, got {self.groups!r}")
        if self.width(2) < 1:
            raise ValueError(f"base_channels {self.base_channels} · width_per_group {self.width_per_group} / 64 "
                             "gives an inner width below 1")

    @property
    def stage_blocks(self) -> tuple[int, ...]:
        return tuple(self.blocks) if self.blocks is not None else DEPTH_BLOCKS[self.depth]

    @property
    def last_stage(self) -> int:
        """The deepest stage computed: the deepest one returned (the C4 backbone never runs stage 5)."""
        return max(int(s[1]) for s in self.return_stages)

    def planes(self, stage: int) -> int:
        return self.base_channels * 2 ** (stage - 2)

    def width(self, stage: int) -> int:
        """Channels inside a block of this stage (its 1×1 squeeze and 3×3), torchvision's rounding: its Bottleneck's
        `width = int(planes * (base_width / 64.0)) * groups` (ResNeXt-50 32×4d, C2: int(64 · 4/64) · 32 = 128)."""
        return int(self.planes(stage) * self.width_per_group / 64) * self.groups

    def out_channels(self, stage: int) -> int:
        return EXPANSION * self.planes(stage)

    def in_channels(self, stage: int) -> int:
        return self.stem_channels if stage == 2 else self.out_channels(stage - 1)

    def stride(self, stage: int) -> int:
        """Stage 2 follows the stem's max pool at stride 1; stages 3–5 halve the map in their first block."""
        return 1 if stage == 2 else 2


def has_projection(in_channels: int, out_channels: int, stride: int) -> bool:
    """A block needs a 1×1 projection shortcut where the identity would not fit (ResNet Eq. 2, option B)."""
    return stride != 1 or in_channels != out_channels


# ---------------------------------------------------------------------------------------------------------------
# Named parameters: look-up, and the conv / norm layers called by their parameter names.
# ---------------------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------------------
# The stem (ResNet Table 1, conv1 + the max pool of conv2_x).
# ---------------------------------------------------------------------------------------------------------------

def named_norm_forward(params, name, x, cfg: ResNetConfig):
    """The configured norm with its parameters `name.*`. x: (N, C, H, W) -> same shape, cache."""
    if cfg.norm == "frozen_bn":
        out, cache = frozen_batch_norm_forward(
            x, param(params, f"{name}.weight"), param(params, f"{name}.bias"),
            param(params, f"{name}.running_mean"), param(params, f"{name}.running_var"), eps=cfg.eps)
    elif cfg.norm == "group_norm":
        out, cache = group_norm_forward(x, param(params, f"{name}.weight"), param(params, f"{name}.bias"),
                                        num_groups=cfg.num_groups, eps=cfg.eps)
    else:
        raise ValueError(f"unknown norm {cfg.norm!r}; choose one of {NORMS}")
    return out, (name, cfg.norm, cache)


def named_norm_backward(dout, cache):
    """-> (dx, grads): no grads for frozen BN (all constants), {name.weight: dγ, name.bias: dβ} for group norm."""
    name, kind, norm_cache = cache
    if kind == "frozen_bn":
        return frozen_batch_norm_backward(dout, norm_cache), {}
    dx, dgamma, dbeta = group_norm_backward(dout, norm_cache)
    return dx, {f"{name}.weight": dgamma, f"{name}.bias": dbeta}


def stem_forward(params, prefix, x, cfg: ResNetConfig):
    """x: (N, 3, H, W) image batch -> (N, stem_channels, ⌈H/4⌉, ⌈W/4⌉), cache. Parameters `{prefix}conv1`, `bn1`."""
    out, c_conv = named_conv_forward(params, f"{prefix}conv1", x, stride=2, padding=3)  # (N, 64, H/2, W/2)
    out, c_norm = named_norm_forward(params, f"{prefix}bn1", out, cfg)
    out, c_relu = relu_forward(out)
    out, c_pool = max_pool2d_forward(out, kernel_size=3, stride=2, padding=1)  # (N, 64, H/4, W/4)
    return out, (c_conv, c_norm, c_relu, c_pool)


def stem_backward(dout, cache):
    """dout: (N, stem_channels, ⌈H/4⌉, ⌈W/4⌉) -> (dx (N, 3, H, W), grads)."""
    c_conv, c_norm, c_relu, c_pool = cache
    d = max_pool2d_backward(dout, c_pool)  # (N, 64, H/2, W/2)
    d = relu_backward(d, c_relu)
    d, g_norm = named_norm_backward(d, c_norm)
    dx, g_conv = named_conv_backward(d, c_conv)  # (N, 3, H, W)
    return dx, {**g_conv, **g_norm}


# ---------------------------------------------------------------------------------------------------------------
# The bottleneck block (ResNet Sec. 4.1, Fig. 5 right).
# ---------------------------------------------------------------------------------------------------------------

def bottleneck_forward(params, prefix, x, cfg: ResNetConfig, *, planes, stride):
    """One bottleneck block with parameters `{prefix}conv1..3`, `bn1..3` and, where the shape changes,
    `{prefix}downsample.0` (1×1 conv) / `downsample.1` (norm).

    x: (N, C_in, H, W) -> out (N, 4·planes, ⌈H/stride⌉, ⌈W/stride⌉), cache.
    """
    s1x1, s3x3 = (stride, 1) if cfg.stride_in_1x1 else (1, stride)  # where the block halves the map
    # residual branch F(x)
    out, c_conv1 = named_conv_forward(params, f"{prefix}conv1", x, stride=s1x1)  # (N, width, ...)
    out, c_bn1 = named_norm_forward(params, f"{prefix}bn1", out, cfg)
    out, c_relu1 = relu_forward(out)
    out, c_conv2 = named_conv_forward(params, f"{prefix}conv2", out, stride=s3x3, padding=1,
                                      groups=cfg.groups)  # (N, width, H/s, W/s); ResNeXt: `groups` paths of width/groups
    out, c_bn2 = named_norm_forward(params, f"{prefix}bn2", out, cfg)
    out, c_relu2 = relu_forward(out)
    out, c_conv3 = named_conv_forward(params, f"{prefix}conv3", out)  # (N, 4·planes, H/s, W/s)
    out, c_bn3 = named_norm_forward(params, f"{prefix}bn3", out, cfg)
    # shortcut: x itself (Eq. 1), or W_s x (Eq. 2)
    if has_projection(x.shape[1], EXPANSION * planes, stride):
        shortcut, c_down_conv = named_conv_forward(params, f"{prefix}downsample.0", x,
                                                   stride=stride)  # (N, 4·planes, H/s, W/s)
        shortcut, c_down_norm = named_norm_forward(params, f"{prefix}downsample.1", shortcut, cfg)
        c_shortcut = (c_down_conv, c_down_norm)
    else:
        shortcut, c_shortcut = x, None
    out, c_relu = relu_forward(out + shortcut)  # y = relu(F(x) + shortcut(x))
    return out, (c_conv1, c_bn1, c_relu1, c_conv2, c_bn2, c_relu2, c_conv3, c_bn3, c_shortcut, c_relu)


def bottleneck_backward(dout, cache):
    """dout: (N, 4·planes, H', W') -> (dx (N, C_in, H, W), grads)."""
    c_conv1, c_bn1, c_relu1, c_conv2, c_bn2, c_relu2, c_conv3, c_bn3, c_shortcut, c_relu = cache
    grads = {}
    d_sum = relu_backward(dout, c_relu)  # ∂L/∂(F(x) + shortcut(x)): the sum passes it to both branches
    # shortcut branch
    if c_shortcut is not None:
        c_down_conv, c_down_norm = c_shortcut
        d, g = named_norm_backward(d_sum, c_down_norm)
        accumulate_grads(grads, g)
        dx_shortcut, g = named_conv_backward(d, c_down_conv)
        accumulate_grads(grads, g)
    else:
        dx_shortcut = d_sum
    # residual branch, in reverse
    d, g = named_norm_backward(d_sum, c_bn3)
    accumulate_grads(grads, g)
    d, g = named_conv_backward(d, c_conv3)  # (N, width, H', W')
    accumulate_grads(grads, g)
    d = relu_backward(d, c_relu2)
    d, g = named_norm_backward(d, c_bn2)
    accumulate_grads(grads, g)
    d, g = named_conv_backward(d, c_conv2)  # (N, width, ...)
    accumulate_grads(grads, g)
    d = relu_backward(d, c_relu1)
    d, g = named_norm_backward(d, c_bn1)
    accumulate_grads(grads, g)
    dx_residual, g = named_conv_backward(d, c_conv1)  # (N, C_in, H, W)
    accumulate_grads(grads, g)
    return dx_residual + dx_shortcut, grads  # x fed both branches: their gradients add


# ---------------------------------------------------------------------------------------------------------------
# A stage, and the whole network.
# ---------------------------------------------------------------------------------------------------------------

def resnet_stage_forward(params, prefix, x, cfg: ResNetConfig, stage_index: int):
    """Stage `stage_index` (2..5): cfg.stage_blocks[stage_index − 2] blocks `{prefix}0.`, `{prefix}1.`, ...; the first
    has the stage's stride and the projection shortcut. `prefix` is the stage's key prefix, `backbone.body.layer4.`
    for stage 5 of the backbone; the C4 model's box head runs the same function on RoI features (Mask R-CNN Fig. 4).

    x: (N, C_in, H, W) -> (N, 4·planes, ⌈H/stride⌉, ⌈W/stride⌉), cache (the blocks' caches, in order).
    """
    if stage_index not in (2, 3, 4, 5):
        raise ValueError(f"stage_index must be 2, 3, 4 or 5, got {stage_index}")
    planes, caches = cfg.planes(stage_index), []
    for b in range(cfg.stage_blocks[stage_index - 2]):
        stride = cfg.stride(stage_index) if b == 0 else 1
        x, c = bottleneck_forward(params, f"{prefix}{b}.", x, cfg, planes=planes, stride=stride)  # (N, 4·planes, ...)
        caches.append(c)
    return x, caches


def resnet_stage_backward(dout, cache):
    """dout: the stage output's gradient -> (dx, grads), through the blocks in reverse."""
    grads = {}
    for c in reversed(cache):
        dout, g = bottleneck_backward(dout, c)
        accumulate_grads(grads, g)
    return dout, grads


def resnet_forward(params, x, cfg: ResNetConfig, *, prefix="backbone.body."):
    """x: (N, 3, H, W) images -> ({"C2": (N, 4·64, ⌈H/4⌉, ⌈W/4⌉), ..., "C5": (N, 4·512, ⌈H/32⌉, ⌈W/32⌉)}, cache).

    Only the stages in cfg.return_stages are returned, and none deeper than the deepest of them is computed.
    Stage k's parameters are `{prefix}layer{k−1}.*` (torchvision's numbering: C2 is `layer1`).
    """
    features = {}
    out, c_stem = stem_forward(params, prefix, x, cfg)  # (N, 64, H/4, W/4)
    stage_caches = []
    for stage in range(2, cfg.last_stage + 1):
        stage_prefix = f"{prefix}layer{stage - 1}."  # torchvision counts from layer1 = C2
        out, c = resnet_stage_forward(params, stage_prefix, out, cfg, stage)  # (N, 4·planes, H/2^k, W/2^k)
        stage_caches.append(c)
        if f"C{stage}" in cfg.return_stages:
            features[f"C{stage}"] = out
    shapes = {name: f.shape for name, f in features.items()}
    return features, (c_stem, stage_caches, shapes, out.dtype)


def resnet_backward(dfeatures: dict, cache):
    """dfeatures: {"C2": ∂L/∂C2, ...}, a missing entry meaning a zero gradient -> (dx (N, 3, H, W), grads).

    From the deepest stage down: the gradient reaching a stage's output is what the stage above sends back plus the
    stage's own feature gradient (C_k went both to the next stage and out of the network).
    """
    c_stem, stage_caches, shapes, dtype = cache
    for name, d in dfeatures.items():
        if name not in shapes:
            raise ValueError(f"got a gradient for {name!r}, but the forward returned only {sorted(shapes)}")
        if d.shape != shapes[name]:
            raise ValueError(f"gradient for {name} has shape {d.shape}, but {name} has shape {shapes[name]}")
    last = len(stage_caches) + 1
    grads = {}
    d = np.zeros(shapes[f"C{last}"], dtype=dtype)  # nothing comes from above the deepest stage
    for stage in range(last, 1, -1):
        if f"C{stage}" in dfeatures:
            d = d + dfeatures[f"C{stage}"]  # (N, 4·planes, H/2^k, W/2^k)
        d, g = resnet_stage_backward(d, stage_caches[stage - 2])
        accumulate_grads(grads, g)
    dx, g = stem_backward(d, c_stem)  # (N, 3, H, W)
    return dx, accumulate_grads(grads, g)


# ---------------------------------------------------------------------------------------------------------------
# Parameter shapes and initialisation.
# ---------------------------------------------------------------------------------------------------------------

def resnet_param_shapes(cfg: ResNetConfig, *, prefix="backbone.body.") -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, in torchvision's state-dict order (without `num_batches_tracked`)."""
    shapes = {}

    def conv(name, c_out, c_in, k):
        shapes[f"{name}.weight"] = (c_out, c_in, k, k)

    def norm(name, c):
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (c,)
        if cfg.norm == "frozen_bn":
            shapes[f"{name}.running_mean"] = shapes[f"{name}.running_var"] = (c,)

    conv(f"{prefix}conv1", cfg.stem_channels, cfg.image_channels, 7)
    norm(f"{prefix}bn1", cfg.stem_channels)
    for stage in range(2, cfg.last_stage + 1):
        c_in, width, c_out = cfg.in_channels(stage), cfg.width(stage), cfg.out_channels(stage)
        for b in range(cfg.stage_blocks[stage - 2]):
            p = f"{prefix}layer{stage - 1}.{b}."
            conv(f"{p}conv1", width, c_in, 1)
            norm(f"{p}bn1", width)
            conv(f"{p}conv2", width, width // cfg.groups, 3)  # grouped (ResNeXt): each filter sees width/groups
            norm(f"{p}bn2", width)
            conv(f"{p}conv3", c_out, width, 1)
            norm(f"{p}bn3", c_out)
            if has_projection(c_in, c_out, cfg.stride(stage) if b == 0 else 1):
                conv(f"{p}downsample.0", c_out, c_in, 1)
                norm(f"{p}downsample.1", c_out)
            c_in = c_out
    return shapes


def init_resnet_params(cfg: ResNetConfig, rng: np.random.Generator, dtype=np.float32, *,
                       prefix="backbone.body.", zero_init_residual=False) -> dict[str, np.ndarray]:
    """Fresh parameters for training from scratch.

    - Convs: He et al., ICCV 2015 ("Delving Deep into Rectifiers", Eq. 10), cited by ResNet Sec. 3.4, in
      torchvision's variant: normal with std √(2 / fan_out), fan_out = C_out·kH·kW.
    - Frozen BN: the identity map (weight 1, bias 0, mean 0, var 1), so y = x / √(1 + ε); real runs load
      pretrained statistics instead.
    - Group norm: γ = 1, β = 0. With `zero_init_residual`, γ = 0 in each block's last norm (bn3), so every block
      starts as the identity (Goyal et al., "Accurate, Large Minibatch SGD", 2017, Sec. 5.1; torchvision's
      `zero_init_residual`). Refused for frozen BN, where that γ could never move off 0.
    """
    if zero_init_residual and cfg.norm == "frozen_bn":
        raise ValueError("zero_init_residual would freeze every residual branch at 0 under frozen BN; "
                         "use it with norm='group_norm'")
    params = {}
    for name, shape in resnet_param_shapes(cfg, prefix=prefix).items():
        if len(shape) == 4:
            fan_out = shape[0] * shape[2] * shape[3]
            value = rng.standard_normal(shape) * np.sqrt(2.0 / fan_out)
        elif name.endswith(("running_var", ".weight")):
            last_gamma = zero_init_residual and name.endswith(".bn3.weight")
            value = np.zeros(shape) if last_gamma else np.ones(shape)
        else:  # bias, running_mean
            value = np.zeros(shape)
        params[name] = value.astype(dtype)
    return params
