# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 03 · The backbone: ResNet bottleneck blocks and the Feature Pyramid Network
#
# *Papers:* He et al., *Deep Residual Learning*, CVPR 2016 — Table 1 (the stages), §4.1 and Fig. 5 (the
# bottleneck block), Eqs. 1–2 (identity and projection shortcuts); Lin et al., *Feature Pyramid Networks*,
# CVPR 2017 — §3 and Fig. 3 (lateral connections and the top-down pathway), §4.1 (P6); Mask R-CNN §3 "Network
# Architecture" and Fig. 4 (ResNet-FPN). · *Docs:* [the backbone](../docs/backbone.md),
# [convolution](../docs/layers/convolution.md),
# [norms](../docs/layers/norms.md), [pooling and upsampling](../docs/layers/pooling_and_upsampling.md)
# · *Code:* [`tinymask/backbone/resnet.py`](../tinymask/backbone/resnet.py),
# [`tinymask/backbone/fpn.py`](../tinymask/backbone/fpn.py) · *Tests:* `tests/test_resnet.py`,
# `tests/test_fpn.py`
#
# What you will see:
#
# 1. the shapes of ResNet-50's stages C2–C5 worked out by hand, and its 23.5 M parameters counted;
# 2. a bottleneck block that is exactly the identity (the residual branch initialised to zero);
# 3. the `small` preset's backbone on a shapes image: C2–C5 and P2–P6, level by level;
# 4. what the **top-down pathway** adds to P2, and — with the hand-written backward — how far into the image
#    a P2 pixel can see compared with a C2 pixel.

# %%
import os
SMOKE = os.environ.get("TINYMASK_SMOKE") == "1"  # CI sets TINYMASK_SMOKE=1: smaller sizes, fewer iterations

import numpy as np
import matplotlib.pyplot as plt

np.set_printoptions(precision=4, suppress=True, linewidth=120)

from tinymask.backbone.resnet import (bottleneck_forward, init_resnet_params, resnet_backward, resnet_forward,
                                      resnet_param_shapes, ResNetConfig)
from tinymask.backbone.fpn import fpn_forward, resnet_fpn_backward, resnet_fpn_forward
from tinymask.config import MaskRCNNConfig
from tinymask.data.shapes import ShapesDataset
from tinymask.model import init_params, resnet_config
from tinymask.box_logic.resize import preprocess

rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. The stages by hand
#
# ResNet (Table 1) is a stem — a 7×7 convolution with stride 2 and a 3×3 max pool with stride 2 — followed by
# four stages of bottleneck blocks. Stage $k$ ($k = 2..5$) works at stride $2^k$: the stem brings the image to
# stride 4, and the first block of stages 3, 4, 5 halves the map again (every stride-2 layer rounds up, so
# "$H/4$" means $\lceil H/4\rceil$). Stage $k$'s blocks have `planes` $= 64\cdot 2^{k-2}$ and output
# $4\cdot$`planes` channels: 256, 512, 1024, 2048. For an 800×1216 image (the paper's shorter side of 800),
# C5 is therefore $\lceil 800/32\rceil \times \lceil 1216/32\rceil = 25\times 38$ with 2048 channels.

# %%
r50 = ResNetConfig(depth=50)
H, W = 800, 1216
print(f"{'stage':>6} {'blocks':>6} {'planes':>6} {'inner width':>11} {'out channels':>12} {'stride':>6} "
      f"{'map for 800x1216':>17}")
for k in (2, 3, 4, 5):
    s = 2 ** k
    print(f"{'C%d' % k:>6} {r50.stage_blocks[k - 2]:>6} {r50.planes(k):>6} {r50.width(k):>11} "
          f"{r50.out_channels(k):>12} {s:>6} {f'{-(-H // s)} x {-(-W // s)}':>17}")

learned = {n: s for n, s in resnet_param_shapes(r50).items() if not n.endswith(("running_mean", "running_var"))}
print(f"\nResNet-50 without its classifier: {sum(int(np.prod(s)) for s in learned.values()):,} parameters "
      "(torchvision's resnet50 has 25,557,032, of which the 1000-way fc layer is 2,049,000)")

# %% [markdown]
# ## 2. A bottleneck block that is the identity
#
# A bottleneck block (Fig. 5, right) computes $y = \mathrm{relu}(F(x) + x)$, where the residual branch $F$
# squeezes to a narrow width with a 1×1 convolution, does the spatial work with a 3×3 at that width and expands
# back with another 1×1, each followed by a norm. So if $F(x) = 0$, then $y = \mathrm{relu}(x)$, and for a
# non-negative $x$ — the output of the previous block's ReLU always is — $y = x$ exactly.
#
# Setting the scale $\gamma$ of each block's last norm to zero makes $F = 0$ at initialisation ("zero-init
# residual", Goyal et al. 2017, §5.1; it needs group norm, since a frozen BN's $\gamma$ could never move). We
# check it on a block of stage 2 whose input already has $4\cdot$`planes` channels, so its shortcut is the
# identity (Eq. 1) rather than a projection (Eq. 2).

# %%
cfg_id = ResNetConfig(blocks=(1, 1, 1, 1), stem_channels=64, base_channels=16, norm="group_norm", num_groups=8)
x = np.abs(rng.standard_normal((1, 64, 8, 8)))  # (N, 4·planes, H, W), non-negative like a ReLU's output

params_zero = init_resnet_params(cfg_id, rng, np.float64, zero_init_residual=True)
y, _ = bottleneck_forward(params_zero, "backbone.body.layer1.0.", x, cfg_id, planes=16, stride=1)
print("zero-init residual: max |y - x| =", np.abs(y - x).max())

params_he = init_resnet_params(cfg_id, rng, np.float64)  # γ = 1 everywhere: F(x) is not zero
y, _ = bottleneck_forward(params_he, "backbone.body.layer1.0.", x, cfg_id, planes=16, stride=1)
print("γ = 1:              ||y - x|| / ||x|| =", np.linalg.norm(y - x) / np.linalg.norm(x))

# %% [markdown]
# ## 3. The `small` preset on a shapes image
#
# tinymask's `small` preset is ResNet-FPN at CPU size: one bottleneck per stage, 32 stem channels, planes
# 16, 32, 64, 128 (outputs 64 to 512 channels), group norm, and an FPN of width $d = 64$ instead of 256.
# `preprocess` normalises the image with the ImageNet mean and standard deviation, resizes it (a 128×128
# shapes image stays 128×128) and pads it to a multiple of 32. The weights are freshly initialised
# (`init_params`), so the maps below are responses to random filters; notebook 10 looks at trained ones.

# %%
cfg = MaskRCNNConfig.preset("small")
params = init_params(cfg, seed=0)
sample = ShapesDataset("val", num_images=4, seed=0)[0]
batch, image_sizes, _ = preprocess([sample["image"]], cfg)  # (1, 3, 128, 128)

features, body_cache = resnet_forward(params, batch, resnet_config(cfg))  # {"C2": ..., "C5": ...}
pyramid, fpn_cache = fpn_forward(params, features)  # {"P2": ..., "P6": ...}
print(f"{'map':>4} {'shape':>20} {'stride':>7} {'mean':>8} {'std':>8}")
for name, f in list(features.items()) + list(pyramid.items()):
    print(f"{name:>4} {str(f.shape):>20} {batch.shape[-1] // f.shape[-1]:>7} {f.mean():8.3f} {f.std():8.3f}")


# %% [markdown]
# Each map drawn over the image's extent, so that a cell sits above the pixels it summarises (a C5 cell covers
# 32×32 pixels). Four channels per level; the colour scale is per map.

# %%
def show_levels(maps, names, channels=(0, 1, 2, 3)):
    fig, axes = plt.subplots(len(names), len(channels) + 1, figsize=(2.2 * (len(channels) + 1), 2.2 * len(names)))
    H, W = batch.shape[2:]
    for row, name in enumerate(names):
        axes[row, 0].imshow(sample["image"].transpose(1, 2, 0), extent=(0, W, H, 0))
        axes[row, 0].set_ylabel(f"{name} {maps[name].shape[2]}×{maps[name].shape[3]}")
        for col, c in enumerate(channels, start=1):
            axes[row, col].imshow(maps[name][0, c], extent=(0, W, H, 0), cmap="viridis")
            axes[row, col].set_title(f"{name}, channel {c}", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    plt.tight_layout()
    plt.show()


show_levels(features, ["C2", "C3", "C4", "C5"])
show_levels(pyramid, ["P2", "P3", "P4", "P5", "P6"])

# %% [markdown]
# ## 4. The top-down pathway
#
# FPN (§3, Fig. 3) gives every level the channels $d$ and mixes in the levels above:
#
# $$\mathrm{inner}_5 = \mathrm{lateral}(C_5), \qquad
#   \mathrm{inner}_k = \mathrm{lateral}(C_k) + \mathrm{upsample}_{2\times}(\mathrm{inner}_{k+1}), \qquad
#   P_k = \mathrm{conv}_{3\times 3}(\mathrm{inner}_k),$$
#
# and P6 is P5 subsampled with stride 2 (§4.1). Running `fpn_forward` on C2 alone gives the P2 FPN would
# make without anything from above (the parameter names of level 2 are the same). The 3×3 convolution is
# linear, so the difference of the two is exactly the output conv applied to the upsampled
# $\mathrm{inner}_3$: the top-down contribution. It is blocky — nearest-neighbour upsampling copies each
# coarse cell into a 2×2, 4×4, 8×8 block — and the 3×3 conv smooths the block edges ("to reduce the aliasing
# effect of upsampling", §3).

# %%
alone, _ = fpn_forward(params, {"C2": features["C2"]})  # only the lateral of C2, then the 3×3 conv
top_down = pyramid["P2"] - alone["P2"]  # (1, d, 32, 32): what the levels above added
print(f"share of P2 coming from above: ||top-down|| / ||P2|| = "
      f"{np.linalg.norm(top_down) / np.linalg.norm(pyramid['P2']):.2f}")

c = 0
fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
for ax, m, title in zip(axes, [alone["P2"], top_down, pyramid["P2"]],
                        ["P2 from C2 alone", "+ top-down (from C3, C4, C5)", "= P2"]):
    im = ax.imshow(m[0, c], extent=(0, 128, 128, 0), cmap="viridis")
    ax.set_title(f"{title}, channel {c}", fontsize=10)
    plt.colorbar(im, ax=ax, fraction=0.046)
plt.tight_layout()
plt.show()

# %% [markdown]
# **How far does a pixel see?** The backward pass answers it directly: the gradient of one output pixel with
# respect to the input image is non-zero exactly on the pixels that influence it (its receptive field; how
# strongly, is the *effective* receptive field of Luo et al., NeurIPS 2016). We send a gradient of 1 into
# the centre pixel of a level (all channels) and run the hand-written backward of the ResNet alone
# (`resnet_backward`) or of ResNet + FPN (`resnet_fpn_backward`) down to the image.
#
# Through the top-down pathway, a P2 pixel sees as far as a C5 pixel does, while keeping stride 4: the
# point of FPN — fine resolution *and* the context of the deep levels, at every level.

# %%
pyramid, backbone_cache = resnet_fpn_forward(params, batch, resnet_config(cfg))


def centre_impulse(shape):
    d = np.zeros(shape, dtype=np.float32)
    d[0, :, shape[2] // 2, shape[3] // 2] = 1.0  # every channel of the centre pixel
    return d


fig, axes = plt.subplots(2, 4, figsize=(11, 5.6))
print(f"{'level':>6} {'pixels with |grad| > 1% of max':>32}")
for col, k in enumerate((2, 3, 4, 5)):
    for row, (name, shape) in enumerate(((f"C{k}", features[f"C{k}"].shape), (f"P{k}", pyramid[f"P{k}"].shape))):
        if name.startswith("C"):
            dimage, _ = resnet_backward({name: centre_impulse(shape)}, body_cache)
        else:
            dimage, _ = resnet_fpn_backward({name: centre_impulse(shape)}, backbone_cache)
        g = np.abs(dimage[0]).sum(axis=0)  # (H, W) how much each image pixel moves the centre pixel
        reach = (g > 0.01 * g.max()).mean()
        print(f"{name:>6} {reach:31.0%}")
        axes[row, col].imshow(np.log10(g + 1e-12 * g.max()), extent=(0, 128, 128, 0), cmap="magma",
                              vmin=np.log10(g.max()) - 4)
        axes[row, col].set_title(f"{name}: log |d pixel / d image|", fontsize=9)
        axes[row, col].set_xticks([])
        axes[row, col].set_yticks([])
plt.tight_layout()
plt.show()

# %% [markdown]
# The top row grows with depth, as the ResNet stacks 3×3 convolutions and stride-2 layers. The bottom row does
# not shrink with resolution: P2 already reaches about as far as P5, because P5's pixels were copied into P2 by
# the top-down pathway. (The faint glow over the whole image, about $10^{-3}$ of the peak, is group norm: its
# mean and variance are taken over the whole map, so every pixel moves every output a little. With the
# paper's frozen batch norm, a constant affine map, the gradient outside the receptive field is exactly 0.)
#
# **Next:** notebook 04 puts reference boxes — anchors — on every level of this pyramid.
