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
# # 01 · A tour: from a picture to masks, in one sitting
#
# *Paper:* He, Gkioxari, Dollár, Girshick, [*Mask R-CNN*](https://arxiv.org/abs/1703.06870), ICCV 2017 — §3
# (the model: a backbone, a region proposal network, and three heads that classify, refine a box and predict a
# mask for every region), §3.1 (training and inference), §4 (COCO AP). · *Docs:* [the index](../docs/index.md)
# (every part of the paper mapped to its module, page, test and notebook), [the whole model](../docs/model.md),
# [using tinymask](../docs/usage.md) · *Code:* [`tinymask/model.py`](../tinymask/model.py),
# [`tinymask/training/loop.py`](../tinymask/training/loop.py), [`tinymask/visualize.py`](../tinymask/visualize.py),
# [`tinymask/evaluation/evaluate.py`](../tinymask/evaluation/evaluate.py) · *Tests:* `tests/test_model.py`, `tests/test_train.py`
#
# What you will see, each step in a few lines of library calls:
#
# 1. one image of the built-in *shapes* data set and its targets (boxes, classes, masks), checked by hand;
# 2. the untrained model on it: its size, its five losses (two of them predictable), its useless detections;
# 3. a short training run with `tinymask.training.loop.train` — the same loop as `tinymask train`;
# 4. the trained model on held-out images, its masks, boxes and scores next to the ground truth;
# 5. the COCO table (box and mask AP) on held-out images;
# 6. where to go next.
#
# **Smoke mode.** With `TINYMASK_SMOKE=1` (how CI runs this notebook) the model trains for 3 iterations on a
# handful of images: its detections, scores and AP **mean nothing**, only that every step runs. In full mode it
# trains for 300 iterations of 4 images, about 4 to 6 minutes on a laptop CPU. To look at a model trained for
# longer, run `tinymask train` and point the environment variable `TINYMASK_CHECKPOINT` at its best/ or
# last/ folder before starting Jupyter.

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

import tempfile

from IPython.display import display

from tinymask.config import MaskRCNNConfig
from tinymask.data.shapes import ShapesDataset
from tinymask.evaluation.evaluate import evaluate_model
from tinymask.model import init_params, predict, train_forward
from tinymask.training.recipe import Recipe
from tinymask.training.loop import train
from tinymask.weights.checkpoint import load_checkpoint
from tinymask.visualize import draw_detections, plot_loss_curves

# %% [markdown]
# ## 1. One image and its targets
#
# A sample of any tinymask data set is a dict of arrays (`tinymask/data/__init__.py` lists them): the image
# `(3, H, W)` in $[0, 1]$, and for its $G$ instances the boxes `(G, 4)` as $(x_0, y_0, x_1, y_1)$ in pixels,
# the class labels `(G,)` (1, 2, 3 = square, circle, triangle; 0 is kept for the background) and the binary
# masks `(G, H, W)`. That is all Mask R-CNN needs to learn from (§3.1).
#
# The coordinates are continuous: pixel $(i, j)$ — row $i$, column $j$ — covers the square
# $[j, j+1) \times [i, i+1)$ ([conventions](../docs/conventions.md)). So the tight box around a mask runs from
# the left edge of its leftmost pixel to the right edge of its rightmost one, $x_0 = \min j$ and
# $x_1 = \max j + 1$, and the same for $y$. We check that by hand on every instance:

# %%
train_set = ShapesDataset("train", num_images=1000, seed=0)  # generated on demand: nothing is stored
names = train_set.class_names  # ["background", "square", "circle", "triangle"]
index = next(i for i in range(100) if len(train_set[i]["labels"]) >= 3)  # an image with 3 or more shapes
sample = train_set[index]
image, boxes, labels, masks = sample["image"], sample["boxes"], sample["labels"], sample["masks"]
print(f"training image {index}: {image.shape} {image.dtype}, values in [{image.min():.2f}, {image.max():.2f}]; "
      f"{len(labels)} instances")
for k in range(len(labels)):
    rows, cols = np.nonzero(masks[k])  # the pixels of instance k
    by_hand = [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1]
    print(f"  {k}: {names[labels[k]]:<8} box {boxes[k]}  by hand from the mask {by_hand}  "
          f"area {masks[k].sum()} pixels")

# %% [markdown]
# Drawn with `draw_detections` (every picture here uses `extent=(0, W, H, 0)`, so a box is drawn at exactly its
# coordinates), then each mask on its own with its box:

# %%
G = len(labels)
fig, axes = plt.subplots(1, G + 1, figsize=(3.4 * (G + 1), 3.6))
draw_detections(axes[0], image, boxes, labels, masks=masks, class_names=names)
axes[0].set_title("image with its targets", fontsize=10)
for k in range(G):
    ax = axes[k + 1]
    ax.imshow(masks[k], cmap="gray", extent=(0, 128, 128, 0), interpolation="nearest")
    x0, y0, x1, y1 = boxes[k]
    ax.add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="tab:orange", lw=1.5))
    ax.set_title(f"mask {k}: {names[labels[k]]}", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The model, untrained
#
# The `small` preset (`tinymask/config.py`) is Mask R-CNN with a narrow ResNet-FPN backbone: one bottleneck
# block per stage, group norm so that it trains from scratch, 64 FPN channels — the architecture of Fig. 4
# (right), sized for 128-pixel images on a CPU. Its parameters are one flat dict named like torchvision's
# state dict.
#
# `train_forward` runs the network in training mode on a batch and returns its five losses (§3: $L = L_{cls} +
# L_{box} + L_{mask}$ for the heads, plus the RPN's two). Two can be predicted before running anything: the
# RPN's objectness layer and the class-score layer start with weights of spread 0.01, so their logits are
# close to 0 — every anchor is 50 % object ($\log 2 = 0.693$) and every RoI equally likely to be any of the
# $K = 4$ classes ($\log 4 = 1.386$).

# %%
cfg = MaskRCNNConfig.preset("small")
params = init_params(cfg, seed=0)  # {torchvision state-dict name: float32 array}
print(f"{len(params)} parameter arrays, {sum(v.size for v in params.values()):,} numbers "
      f"(torchvision's ResNet-50-FPN Mask R-CNN has about 44 million)")

targets = [{"boxes": boxes, "labels": labels, "masks": masks}]
losses, _ = train_forward(params, cfg, [image], targets, np.random.default_rng(0))
for name, value in losses.items():
    print(f"  {name:<17} {float(value):.3f}")
print(f"  log 2 = {np.log(2):.3f}, log 4 = {np.log(4):.3f}")

untrained = predict(params, cfg, [image])[0]  # {"boxes", "scores", "labels", "masks"}, best first
print(f"untrained: {len(untrained['scores'])} detections above the 0.05 score threshold, "
      f"the best scoring {untrained['scores'].max() if len(untrained['scores']) else 0:.2f}")

# %% [markdown]
# ## 3. Training
#
# `tinymask.training.loop.train` is the loop behind `tinymask train`: each iteration takes a batch of images (flipped
# left-right at random), runs `train_forward`, the hand-written `train_backward` from the summed losses back
# into the backbone, and one SGD step; it logs every loss to `log.jsonl` and writes checkpoints. The recipe
# (`tinymask.training.recipe.Recipe`) is the paper's — SGD with momentum 0.9, weight decay $10^{-4}$, a step schedule
# (§3.1) — shortened: lr 0.02 after a 50-iteration warm-up, divided by 10 at 70 % and 90 % of the run.
# Notebook 08 looks at this run in detail: the schedule, each loss, the gradient norms, resuming.
#
# We train into a temporary folder and read the last checkpoint back (with `TINYMASK_CHECKPOINT` set, that
# checkpoint is loaded instead).

# %%
TOUR_ITERATIONS = 300  # of 4 images: about 4 to 6 minutes on a laptop CPU; SMOKE: 3 of 1
CHECKPOINT = os.environ.get("TINYMASK_CHECKPOINT")  # a checkpoint of `tinymask train` (a run's last/ or best/)
if CHECKPOINT:
    trained, cfg, meta, _ = load_checkpoint(CHECKPOINT)
    run_dir = os.path.dirname(os.path.abspath(CHECKPOINT))  # the run's folder, with its log.jsonl
    print(f"loaded {CHECKPOINT}: {meta['iteration']} iterations")
else:
    recipe = Recipe(iterations=3 if SMOKE else TOUR_ITERATIONS, batch_size=1 if SMOKE else 4, lr=0.02,
                    warmup_iters=50, eval_every=0, seed=0)
    run_dir = tempfile.mkdtemp(prefix="tinymask-tour-")
    data = ShapesDataset("train", num_images=8, seed=0) if SMOKE else train_set
    summary = train(cfg, recipe, data, None, run_dir, progress=False, print_fn=lambda *a: None)
    trained, cfg, meta, _ = load_checkpoint(os.path.join(run_dir, "last"))
    print(f"trained {meta['iteration']} iterations of {recipe.batch_size} image(s) in {summary['seconds']:.0f} s "
          f"(run folder {run_dir})")

# %% [markdown]
# The run's log as curves (`plot_loss_curves`): each loss term, faint as logged and solid smoothed, and the
# learning rate below. In full mode the total falls, and so do most terms (notebook 08 explains the one that
# rises); in smoke mode there are three points.

# %%
log_path = os.path.join(run_dir, "log.jsonl")
if os.path.exists(log_path):
    display(plot_loss_curves(log_path))
else:
    print(f"no log.jsonl next to {CHECKPOINT}")

# %% [markdown]
# ## 4. Predictions on held-out images
#
# `predict(params, cfg, images)` is §3.1 "Inference": the RPN's proposals, the box head's scores and boxes,
# per-class NMS, then the mask head on the surviving boxes, each 28×28 mask pasted into the image and
# thresholded at 0.5. It returns, per image, `boxes` `(D, 4)`, `scores` `(D,)`, `labels` `(D,)` and `masks`
# `(D, H, W)`, best first. The images come from the `val` split, a random stream the training never saw.
# Ground truth on top, the prediction below (detections scoring at least 0.5). After a few minutes of
# training the boxes are found before the classes are sure, so many scores are still below 0.5; pass a lower
# `score_threshold` to `draw_detections` to see them.

# %%
val = ShapesDataset("val", num_images=4 if SMOKE else 50, seed=0)
shown = [val[i] for i in range(3)]
predictions = predict(trained, cfg, [s["image"] for s in shown])  # one dict per image
first = predictions[0]
print({k: v.shape for k, v in first.items()})
names = cfg.class_names  # the model's classes (a TINYMASK_CHECKPOINT may have others)
print("best 3 of the first image: scores", first["scores"][:3], "labels",
      [names[l] for l in first["labels"][:3]], "\nboxes\n", first["boxes"][:3])

fig, axes = plt.subplots(2, 3, figsize=(12, 8.4))
for col, (s, pred) in enumerate(zip(shown, predictions)):
    draw_detections(axes[0, col], s["image"], s["boxes"], s["labels"], masks=s["masks"], class_names=names)
    draw_detections(axes[1, col], s["image"], pred["boxes"], pred["labels"], pred["scores"], pred["masks"],
                    class_names=names, score_threshold=0.5)
    axes[0, col].set_title(f"ground truth ({len(s['labels'])})", fontsize=10)
    axes[1, col].set_title(f"prediction ({np.sum(pred['scores'] >= 0.5)} scoring 0.5 or more)", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. The COCO table
#
# `evaluate_model` predicts every held-out image and scores the detections the way the paper's tables do
# (§4, and Lin et al., *Microsoft COCO*, ECCV 2014): for boxes (`bbox`, box IoU) and for masks (`segm`, mask
# IoU). AP averages precision over recall levels and over IoU thresholds $0.50, 0.55, \ldots, 0.95$; AP50 and
# AP75 use one threshold each; S / M / L split by object area (under $32^2$, up to $96^2$, above); AR is recall
# at 1, 10 and 100 detections per image. Notebook 09 computes AP by hand and draws the precision-recall
# curves; [evaluation](../docs/evaluation.md) derives every rule.

# %%
report = evaluate_model(trained, cfg, val)
print(f"{report['num_images']} held-out images, {len(report['results'])} detections, {report['seconds']:.0f} s\n")
print(report["table"])
if SMOKE and not CHECKPOINT:
    print("\n(smoke mode: a model trained for 3 iterations; these numbers mean nothing)")

# %% [markdown]
# The paper's ResNet-101-FPN reaches 35.7 mask AP on COCO after 160k iterations of 16 images (Table 1). The
# shapes are far easier, and the few minutes above are far shorter; the `Recipe` docstring gives what longer
# runs of `tinymask train` reach (mask AP50 about 0.9 after 900 iterations), measured by
# `benchmarks/time_to_accuracy.py`.
#
# ## 6. Where to go next
#
# Each stage of the pipeline above has its own notebook, which opens with an example small enough to check by
# hand:
#
# | notebook | what it takes apart |
# |---|---|
# | [02 · layers and gradient checking](02_layers_and_gradcheck.ipynb) | convolution as im2col, the transposed convolution, the gradient check every layer passes |
# | [03 · backbone](03_backbone.ipynb) | ResNet's stages and the FPN's pyramid, level by level |
# | [04 · anchors and box coding](04_anchors_and_box_coding.ipynb) | anchors, matching, box encoding (Faster R-CNN Eq. 2) |
# | [05 · RPN](05_rpn.ipynb) | the proposal network, its loss and its proposals |
# | [06 · RoIPool vs RoIAlign](06_roipool_vs_roialign.ipynb) | the paper's key layer, against the roundings it removes |
# | [07 · heads and losses](07_heads_and_losses.ipynb) | the box and mask heads, mask targets, the losses |
# | [08 · training](08_training.ipynb) | the loop, the learning-rate schedule, each loss, checkpoints and resuming |
# | [09 · inference and evaluation](09_inference_and_evaluation.ipynb) | inference step by step, COCO AP by hand |
# | [10 · inspecting weights](10_inspect_weights.ipynb) | weights, activations and gradients, layer by layer |
# | [11 · kernels](11_kernels.ipynb) | the NumPy, Numba and CUDA backends of the hot loops |
#
# The docs' [index](../docs/index.md) maps every section and equation of the paper to its module, page, test
# and notebook; [using tinymask](../docs/usage.md) covers training on your own COCO-format data, torchvision
# weights, evaluation and checkpoints.
