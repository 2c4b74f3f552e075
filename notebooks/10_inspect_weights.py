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
# # 10 · Inspecting weights, activations and gradients
#
# *Papers:* He et al., *Delving Deep into Rectifiers*, ICCV 2015, §2.2 (the "He" / Kaiming initialisation:
# Eq. 10 scales by the fan-in, Eq. 14 by the fan-out, which torchvision's ResNet uses), cited by ResNet §3.4; Wu & He, *Group Normalization*, ECCV 2018; the initialisations of torchvision's
# Mask R-CNN, which tinymask follows module by module. · *Code:* `init_params` in
# [`tinymask/model.py`](../tinymask/model.py) and the `init_*` functions of
# [`tinymask/backbone/resnet.py`](../tinymask/backbone/resnet.py), [`tinymask/backbone/fpn.py`](../tinymask/backbone/fpn.py),
# [`tinymask/heads/rpn.py`](../tinymask/heads/rpn.py), [`tinymask/heads/box_head.py`](../tinymask/heads/box_head.py),
# [`tinymask/heads/mask_head.py`](../tinymask/heads/mask_head.py) · *Docs:* [the whole model](../docs/model.md),
# [norms](../docs/layers/norms.md)
#
# matterport's `inspect_weights` notebook, for tinymask. What you will see:
#
# 1. every layer's initial standard deviation predicted from its initialisation rule, and measured;
# 2. per-layer weight statistics before and after a short training, and histograms;
# 3. activations for one image, level by level: mean, spread, range, and the fraction of zeros after each ReLU;
# 4. gradient sizes per layer, relative to the weights they update.

# %%
import os
SMOKE = os.environ.get("TINYMASK_SMOKE") == "1"  # CI sets TINYMASK_SMOKE=1: smaller sizes, fewer iterations

from tinymask.ops.threads import blas_threads, limit_threads

# One BLAS thread: on a 2-core laptop that also runs a browser, a multi-threaded BLAS is often several times
# slower (its threads wait for each other). `limit_threads` acts at once, before or after NumPy is imported.
limit_threads(1)

import numpy as np

print("BLAS threads:", blas_threads())
import matplotlib.pyplot as plt

np.set_printoptions(precision=4, suppress=True, linewidth=120)

from tinymask.backbone.fpn import fpn_forward
from tinymask.backbone.resnet import bottleneck_forward, stem_forward
from tinymask.layers.linear import linear_forward
from tinymask.layers.activations import relu_forward
from tinymask.layers.conv import conv2d_forward
from tinymask.model import init_params, predict, resnet_config, train_backward, train_forward
from tinymask.box_logic.resize import preprocess


def short(name):
    """A parameter name without torchvision's long prefixes."""
    for prefix in ("backbone.body.", "backbone.", "roi_heads.", "rpn.head."):
        if name.startswith(prefix):
            return name[len(prefix):] if prefix != "rpn.head." else "rpn." + name[len(prefix):]
    return name


# %% [markdown]
# ## 1. The initial spread of every layer, predicted
#
# Each module initialises its weights the way torchvision does, and each rule fixes the standard deviation:
#
# | layers | rule | std |
# |---|---|---|
# | ResNet convs, mask head convs and deconv | He normal, fan-out | $\sqrt{2 / (C_\text{out} k^2)}$ |
# | FPN convs | uniform $\pm\sqrt{3 / \text{fan-in}}$ (`kaiming_uniform_(a=1)`) | $\sqrt{1 / (C_\text{in} k^2)}$ |
# | RPN head | normal | 0.01 |
# | box head fc6, fc7 | uniform $\pm 1/\sqrt{\text{fan-in}}$ (PyTorch's `nn.Linear`) | $1 / \sqrt{3\,\text{fan-in}}$ |
# | class scores / box deltas | normal | 0.01 / 0.001 |
#
# For the stem's 7×7 conv with 32 output channels: $\sqrt{2 / (32\cdot 49)} = 0.0357$. (PyTorch takes the fan-out
# of any weight as `shape[0]·k²`. The mask head's deconv has layout `(C_in, C_out, k, k)`, so its "fan-out" is
# $C_\text{in} k^2$, which is what torchvision's `kaiming_normal_(mode="fan_out")` gives it and what tinymask copies;
# here $C_\text{in} = C_\text{out}$, so it makes no difference. The last 1×1 conv to the $K$ masks uses fan-out $K$.)
# A uniform distribution on $\pm b$ has standard deviation $b/\sqrt 3$.

# %%
from tinymask.config import MaskRCNNConfig

cfg = MaskRCNNConfig.preset("small")
initial = init_params(cfg, seed=0)


def predicted_std(name, shape):
    """The standard deviation the initialisation rule gives (the table above)."""
    if "rpn." in name:
        return 0.01
    if "cls_score" in name:
        return 0.01
    if "bbox_pred" in name:
        return 0.001
    if "box_head.fc" in name:
        return 1 / np.sqrt(3 * shape[1])
    if "fpn." in name:
        return np.sqrt(1 / np.prod(shape[1:]))
    if "conv5_mask" in name:  # transposed conv (C_in, C_out, k, k): PyTorch's fan-out is shape[0]·k² = C_in·k²
        return np.sqrt(2 / (shape[0] * shape[2] * shape[3]))
    if "mask_fcn_logits" in name:
        return np.sqrt(2 / shape[0])
    return np.sqrt(2 / (shape[0] * shape[2] * shape[3]))  # He normal, fan-out


weights = [n for n, p in initial.items() if p.ndim >= 2]  # conv and fc weights, in forward order
print(f"{'layer':<38} {'shape':>18} {'predicted std':>13} {'measured':>9}")
for name in weights:
    p = initial[name]
    print(f"{short(name):<38} {str(p.shape):>18} {predicted_std(name, p.shape):13.4f} {p.std():9.4f}")

# %% [markdown]
# ## 2. After a short training
#
# The same table after training, with the relative change $\lVert w - w_0\rVert / \lVert w_0\rVert$ of each
# layer. (In smoke mode the model trains for 2 iterations and barely moves.)

# %%
TRAIN_ITERATIONS = 150  # of 4 images, about 3 minutes on a laptop CPU; SMOKE: 2 of 1
import tempfile
from tinymask.config import MaskRCNNConfig
from tinymask.data.shapes import ShapesDataset
from tinymask.training.recipe import Recipe
from tinymask.training.loop import train
from tinymask.weights.checkpoint import load_checkpoint

CHECKPOINT = os.environ.get("TINYMASK_CHECKPOINT")  # a checkpoint of `tinymask train` (a run's last/ or best/)
if CHECKPOINT:
    trained, cfg, meta, _ = load_checkpoint(CHECKPOINT)
    print(f"loaded {CHECKPOINT}: {meta['iteration']} iterations")
else:
    cfg = MaskRCNNConfig.preset("small")
    recipe = Recipe(iterations=2 if SMOKE else TRAIN_ITERATIONS, batch_size=1 if SMOKE else 4, lr=0.02,
                    warmup_iters=50, eval_every=0, seed=0)
    run_dir = tempfile.mkdtemp(prefix="tinymask-notebook-")
    summary = train(cfg, recipe, ShapesDataset("train", num_images=1000, seed=0), None, run_dir, progress=False,
                    print_fn=lambda *a: None)
    trained, cfg, meta, _ = load_checkpoint(os.path.join(run_dir, "last"))
    print(f"trained {meta['iteration']} iterations of batch {recipe.batch_size} in {summary['seconds']:.0f} s "
          f"(run folder {run_dir})")

# %%
print(f"{'layer':<38} {'std init':>9} {'std now':>9} {'mean':>8} {'min':>8} {'max':>8} {'change':>7}")
for name in weights:
    w0, w = initial[name], trained[name]
    change = np.linalg.norm(w - w0) / np.linalg.norm(w0)
    print(f"{short(name):<38} {w0.std():9.4f} {w.std():9.4f} {w.mean():8.4f} {w.min():8.3f} {w.max():8.3f} "
          f"{change:7.1%}")
gammas = [n for n in trained if n.endswith(".weight") and trained[n].ndim == 1]
g = np.concatenate([trained[n] for n in gammas])
print(f"\ngroup norm scales γ ({len(gammas)} norms): init all 1, now mean {g.mean():.3f}, "
      f"range {g.min():.3f} to {g.max():.3f}")

# %%
show = [n for n in ("backbone.body.conv1.weight", "backbone.body.layer3.0.conv2.weight",
                    "backbone.fpn.layer_blocks.0.0.weight", "rpn.head.conv.0.0.weight",
                    "roi_heads.box_head.fc6.weight", "roi_heads.box_predictor.cls_score.weight",
                    "roi_heads.mask_head.0.0.weight", "roi_heads.mask_predictor.mask_fcn_logits.weight")
        if n in trained]
fig, axes = plt.subplots(2, 4, figsize=(16, 6))
for ax, name in zip(axes.ravel(), show):
    lo, hi = min(initial[name].min(), trained[name].min()), max(initial[name].max(), trained[name].max())
    ax.hist(initial[name].ravel(), bins=60, range=(lo, hi), histtype="step", label="init", density=True)
    ax.hist(trained[name].ravel(), bins=60, range=(lo, hi), histtype="step", label="trained", density=True)
    ax.set_title(short(name), fontsize=9)
axes[0, 0].legend(fontsize=8)
plt.tight_layout()
plt.show()


# %% [markdown]
# ## 3. Activations for one image
#
# We run the backbone block by block with the library's forward functions, keeping every output: the stem
# (conv, norm, ReLU, max pool), each bottleneck block's output (after its final ReLU), the FPN levels (no ReLU:
# they are linear maps of the blocks), the RPN head's hidden layer and the box head's two fc layers (each after
# a ReLU), recomputed from their weights. "zeros" is the fraction of exact zeros — after a ReLU, the units that
# are off; a unit off for every input is a *dead* ReLU.

# %%
def activations(params, image):
    """Named activations of one image: backbone blocks, FPN levels, RPN hidden layer, box head fc6 / fc7."""
    rcfg = resnet_config(cfg)
    batch, _, _ = preprocess([image], cfg)
    acts = {}
    x, _ = stem_forward(params, "backbone.body.", batch, rcfg)
    acts["stem"] = x
    features = {}
    for stage in (2, 3, 4, 5):
        for b in range(rcfg.stage_blocks[stage - 2]):
            stride = rcfg.stride(stage) if b == 0 else 1
            x, _ = bottleneck_forward(params, f"backbone.body.layer{stage - 1}.{b}.", x, rcfg,
                                      planes=rcfg.planes(stage), stride=stride)
            acts[f"C{stage} block {b}"] = x
        features[f"C{stage}"] = x
    pyramid, _ = fpn_forward(params, features)
    acts.update(pyramid)
    hidden, _ = conv2d_forward(pyramid["P2"], params["rpn.head.conv.0.0.weight"],
                               params["rpn.head.conv.0.0.bias"], padding=1)
    acts["RPN hidden (P2)"], _ = relu_forward(hidden)
    _, stages = predict(params, cfg, [image], return_stages=True)
    h = stages["box_features"].reshape(len(stages["box_features"]), -1)  # (P, C·7·7)
    for fc in ("fc6", "fc7"):
        h, _ = linear_forward(h, params[f"roi_heads.box_head.{fc}.weight"], params[f"roi_heads.box_head.{fc}.bias"])
        h, _ = relu_forward(h)
        acts[f"box head {fc}"] = h
    acts["class logits"] = stages["class_logits"]
    return acts


image = ShapesDataset("val", num_images=1, seed=0)[0]["image"]
acts = {"init": activations(initial, image), "trained": activations(trained, image)}
print(f"{'activation':<18} {'shape':>18} | {'mean':>7} {'std':>7} {'min':>7} {'max':>7} {'zeros':>6} "
      f"| {'mean':>7} {'std':>7} {'min':>7} {'max':>7} {'zeros':>6}")
print(f"{'':<18} {'':>18} | {'at initialisation':^39} | {'trained':^39}")
for name, a in acts["init"].items():
    row = f"{name:<18} {str(a.shape):>18}"
    for which in ("init", "trained"):
        v = acts[which][name]
        row += f" | {v.mean():7.3f} {v.std():7.3f} {v.min() + 0.0:7.2f} {v.max():7.2f} {np.mean(v == 0):6.1%}"
    print(row)
for name in ("box head fc6", "box head fc7"):
    dead = {w: np.mean(np.all(acts[w][name] == 0, axis=0)) for w in acts}  # units off for every proposal
    print(f"{name}: units that are zero for all {len(acts['init'][name])} proposals: "
          f"{dead['init']:.0%} at initialisation, {dead['trained']:.0%} trained")

# %%
names = ["stem", "C2 block 0", "C3 block 0", "C4 block 0", "C5 block 0", "P2", "P3", "P4", "P5"]
fig, axes = plt.subplots(1, len(names), figsize=(2.1 * len(names), 2.6), sharey=False)
for ax, name in zip(axes, names):
    for which in ("init", "trained"):
        v = acts[which][name].ravel()
        ax.hist(v[v != 0], bins=50, histtype="step", density=True, label=which)
    ax.set_title(name, fontsize=9)
    ax.set_yticks([])
axes[0].legend(fontsize=7)
plt.tight_layout()
plt.show()

# %% [markdown]
# (Histograms of the non-zero values; the zeros are in the table.) Group norm keeps each block's pre-activation
# at zero mean and unit spread per group, so about half of every ReLU's inputs are negative: the "zeros" column
# of the backbone starts near 50 %.
#
# ## 4. Gradients, relative to the weights
#
# A rule of thumb from CS231n: an SGD step $\eta\,\lVert g\rVert$ should be about $10^{-3}$ of
# $\lVert w\rVert$ — much smaller and the layer does not learn, much larger and it thrashes. One training
# batch through `train_forward` / `train_backward`, at initialisation and after training, with the recipe's
# learning rate (the momentum makes the real step a few times larger):

# %%
data = ShapesDataset("train", num_images=4, seed=1)
images = [data[i]["image"] for i in range(2)]
targets = [{k: data[i][k] for k in ("boxes", "labels", "masks")} for i in range(2)]
lr = 0.02
ratios = {}
for which, params in (("init", initial), ("trained", trained)):
    _, cache = train_forward(params, cfg, images, targets, np.random.default_rng(0))
    grads = train_backward(cache)
    ratios[which] = [lr * np.linalg.norm(grads[n]) / np.linalg.norm(params[n]) for n in weights]
fig, ax = plt.subplots(figsize=(14, 3.6))
x = np.arange(len(weights))
for dx, which in ((-0.2, "init"), (0.2, "trained")):
    ax.bar(x + dx, ratios[which], width=0.4, label=which)
ax.axhline(1e-3, color="k", ls=":", lw=1)
ax.set_yscale("log")
ax.set_xticks(x, [short(n).replace(".weight", "") for n in weights], rotation=90, fontsize=7)
ax.set_ylabel("lr · ||g|| / ||w||")
ax.legend()
plt.tight_layout()
plt.show()

# %% [markdown]
# Layers initialised with small weights (the RPN head at 0.01, the class scores at 0.01) see relatively large
# updates — their weights are small, not their gradients. Three layers stand out at the other end:
# `fpn.layer_blocks.1`–`3`, the output convolutions of P3, P4 and P5, get by far the least gradient. The reason is
# FPN's level assignment (Eq. 1): an RoI of width $w$ and height $h$ is pooled from level
# $k = \lfloor 4 + \log_2(\sqrt{wh}/224)\rfloor$, clamped to 2…5, so every box smaller than 224 / 2 = 112
# pixels reads P2 — and every shape in a 128×128 image is. P3–P5 then feed only the RPN, whose head reads them
# through weights of size 0.01. The levels the shapes' boxes are assigned to:

# %%
from tinymask.box_logic.levels import assign_fpn_levels

shapes = ShapesDataset("val", num_images=100, seed=0)  # generating 100 images takes a fraction of a second
boxes = np.concatenate([shapes[i]["boxes"] for i in range(len(shapes))]).astype(np.float64)
levels = assign_fpn_levels(boxes, k_min=2, k_max=5)  # FPN Eq. 1 with k0 = 4 and 224
print({f"P{k}": int(np.sum(levels == k)) for k in (2, 3, 4, 5)}, "of", len(boxes), "boxes;",
      f"sqrt(w·h) from {np.sqrt(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)).min():.0f} "
      f"to {np.sqrt(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)).max():.0f} pixels")

# %% [markdown]
# On COCO images resized to 800 pixels, objects span all four levels; on 128-pixel shapes, a model that should
# use P3–P5 for its RoIs would need a smaller canonical size than 224 in Eq. 1.
