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
# # 08 · Training: the loop, the schedule, the losses, and resuming
#
# *Paper:* He et al., *Mask R-CNN*, ICCV 2017, §3.1 "Training": the losses are minimised jointly with SGD,
# "a learning rate of 0.02 which is decreased by 10 at the 120k iteration. We use a weight decay of 0.0001 and
# momentum of 0.9"; Appendix B and Faster R-CNN §3.2 (approximate joint training: the proposals are constants);
# Goyal et al., *Accurate, Large Minibatch SGD*, 2017 (linear warm-up and the linear scaling rule).
# · *Docs:* [the whole model](../docs/model.md), [using tinymask](../docs/usage.md) (checkpoints, resuming)
# · *Code:* [`tinymask/training/loop.py`](../tinymask/training/loop.py), [`tinymask/training/optim.py`](../tinymask/training/optim.py),
# [`tinymask/visualize.py`](../tinymask/visualize.py) · *Tests:* `tests/test_train.py`, `tests/test_optim.py`
#
# What you will see:
#
# 1. the recipe — every knob of `Recipe`, where its default comes from;
# 2. the learning-rate schedule: warm-up and steps, by hand on a short one, then the real ones;
# 3. a training run, stopped and resumed at a few iterations so that we can keep those models;
# 4. each loss term over the iterations, the learning rate actually used, and the gradient norm;
# 5. the same held-out images predicted by the model after 0, a few, more and all iterations, and its AP;
# 6. what a checkpoint holds, and a resumed run computing exactly what the uninterrupted one does.
#
# In full mode the run is 300 iterations of 4 images (about 4 to 6 minutes on a laptop CPU, plus a minute or
# two of evaluation). In smoke mode (`TINYMASK_SMOKE=1`, CI) it is 6 iterations of one image: the curves are
# a few points and the predictions and AP **mean nothing**; the mechanics are the same.

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
from dataclasses import fields

from IPython.display import display

from tinymask.config import MaskRCNNConfig
from tinymask.data.shapes import ShapesDataset
from tinymask.evaluation.evaluate import evaluate_model
from tinymask.model import init_params, LOSS_NAMES, predict
from tinymask.training.optim import LRSchedule
from tinymask.training.recipe import Recipe
from tinymask.training.loop import train
from tinymask.weights.checkpoint import load_checkpoint
from tinymask.visualize import draw_detections, plot_loss_curves, read_log

# %% [markdown]
# ## 1. The recipe
#
# A run is described by two objects: the model, `MaskRCNNConfig` (notebook 01), and how to train it,
# `tinymask.training.recipe.Recipe`. Its docstring gives the paper's numbers and why tinymask's defaults differ:

# %%
print(Recipe.__doc__)
default = Recipe()
for f in fields(Recipe):
    print(f"  {f.name:<16} {getattr(default, f.name)!r}")

# %% [markdown]
# In short: the paper trains with 16 images per batch at lr 0.02 for 160k iterations. The **linear scaling
# rule** (Goyal et al. §2.1) says that with $B$ images the lr should be $0.02 \cdot B / 16$ — 0.005 for 4 —
# because the gradient of a batch is an average and its noise shrinks with $B$. tinymask's `small` preset, a
# narrow network with group norm trained from scratch on easy 128-pixel images, learns faster at 0.02 with 4
# images *after a warm-up*, but close to the edge: its FPN outputs have no normalisation and grow during the
# warm-up, and one bad batch can then throw the box head's fc layers far enough to diverge. So the recipe
# clips the gradient's global norm at 10 (`clip_grad_norm`; Mask R-CNN does not clip), which cuts a few
# updates of the warm-up and almost none after it (`Recipe`'s module docstring has the measurements). The
# `tinymask train` default is 1500 iterations. Weight decay applies to conv and fc weights only, never to
# biases or norm parameters (`tinymask.training.optim.decays_weight`).
#
# ## 2. The learning-rate schedule
#
# `Recipe.schedule()` returns an `LRSchedule` (`tinymask/training/optim.py`): a linear **warm-up** from
# $\eta f$ to $\eta$ over the first $T_w$ iterations, then **steps** that multiply by $\gamma = 0.1$:
#
# $$\eta_t = \eta\,\gamma^{\#\{s\,\le\,t\}} \cdot \begin{cases} f + (1 - f)\, t / T_w & t < T_w \\
# 1 & t \ge T_w \end{cases}$$
#
# A short one to check by hand: $\eta = 0.02$, $f = 0.001$, $T_w = 4$, steps at 7 and 9. At $t = 0$ the rate
# is $0.02 \cdot 0.001 = 2\cdot 10^{-5}$; at $t = 2$, halfway, $0.02\,(0.001 \cdot 0.5 + 0.5) = 0.01001$;
# from $t = 4$ it is 0.02; from $t = 7$, 0.002; from $t = 9$, 0.0002.

# %%
schedule = LRSchedule(base_lr=0.02, warmup_iters=4, warmup_factor=0.001, steps=[7, 9], gamma=0.1)
for t in range(11):
    by_hand = 0.02 * (0.001 * (1 - t / 4) + t / 4) if t < 4 else 0.02 * 0.1 ** ((t >= 7) + (t >= 9))
    print(f"t = {t:2d}   schedule {schedule(t):.6f}   by hand {by_hand:.6f}")

# %% [markdown]
# The steps are placed at fractions of the run (`decay_at`, 70 % and 90 %), so a shorter or longer run keeps
# the same shape. The default recipe and the run of this notebook (a 50-iteration warm-up):

# %%
ITERATIONS = 6 if SMOKE else 300  # of 4 images: about 4 to 6 minutes on a laptop CPU; SMOKE: 6 of 1
recipe = Recipe(iterations=ITERATIONS, batch_size=1 if SMOKE else 4, lr=0.02, warmup_iters=50, eval_every=0,
                seed=0)
fig, ax = plt.subplots(figsize=(9, 3))
for r, label in ((default, "Recipe() default"), (recipe, "this notebook's run")):
    s = r.schedule()
    t = np.arange(r.iterations)
    ax.plot(t, [s(i) for i in t], label=f"{label}: {r.iterations} iterations, warm-up {r.warmup_iters}, "
                                         f"steps at {s.steps}")
ax.set_yscale("log")
ax.set_xlabel("iteration t")
ax.set_ylabel("learning rate")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# Why warm up? At initialisation the gradients are large and point in unreliable directions (notebook 10
# measures them); a full-size step there can push the group-norm network into a state it takes hundreds of
# iterations to leave, or make a loss overflow (`TrainingDiverged`). Why step down? Late in training a large
# rate keeps the weights bouncing around a minimum; dividing it by 10 lets them settle, and the loss visibly
# drops at each step.
#
# ## 3. A run, stopped and resumed
#
# `train(cfg, recipe, train_set, val_set, out_dir)` runs the loop (the "One iteration" section of
# `tinymask/training/loop.py` lists its five steps) and keeps two checkpoints: last/ and, when there is a held-out
# set, best/. To keep the model at several points of the run, we stop it with `stop_after=k` — exactly as
# if it had been interrupted there — copy last/, and resume with `resume=True`. Resuming loses nothing
# (section 6 checks it), so the models below are those of one uninterrupted run, with the recipe, data and
# seed of notebook 01's.

# %%
SNAPSHOTS = [2, 4, 6] if SMOKE else [25, 75, 150, 300]  # iterations at which we keep the model
cfg = MaskRCNNConfig.preset("small")
train_set = ShapesDataset("train", num_images=8 if SMOKE else 1000, seed=0)
run_dir = tempfile.mkdtemp(prefix="tinymask-training-")
snapshots = {0: init_params(cfg, seed=recipe.seed)}  # the run starts from these
for k, stop in enumerate(SNAPSHOTS):
    summary = train(cfg, recipe, train_set, None, run_dir, resume=k > 0, stop_after=stop, progress=False)
    snapshots[stop], _, meta, _ = load_checkpoint(os.path.join(run_dir, "last"))
print(f"kept the model after {list(snapshots)} iterations; {summary['total_seconds']:.0f} s of training in all")

# %% [markdown]
# ## 4. The loss terms, the learning rate and the gradient norm
#
# `log.jsonl` has one line per iteration: the iteration (updates done), the total loss, the five terms, the
# lr, the gradient norm, and the time. The five terms (§3, and Faster R-CNN Eq. 1 for the RPN's two):
#
# - `loss_objectness`: the RPN's binary cross-entropy, object or not, on 128 sampled anchors per image;
#   starts near $\log 2$;
# - `loss_rpn_box_reg`: the RPN's smooth L1 on the box deltas of its positive anchors;
# - `loss_classifier`: the box head's softmax cross-entropy over $K = 4$ classes on 64 sampled RoIs per image;
#   starts near $\log 4$;
# - `loss_box_reg`: the box head's smooth L1 on the deltas of the true class, positive RoIs only;
# - `loss_mask`: the mean per-pixel binary cross-entropy of the true class's 28×28 mask, positive RoIs only.
#
# Not every term has to fall. `loss_box_reg` is summed over the *positive* RoIs but divided by *all* sampled
# RoIs (as torchvision does), and at first almost none of the proposals overlaps an object: as the RPN learns
# to propose boxes on the shapes, more of the sampled RoIs are positive, and this term grows while the others
# fall. `plot_loss_curves` draws them (faint as logged, solid smoothed) with the lr below:

# %%
log_path = os.path.join(run_dir, "log.jsonl")
display(plot_loss_curves(log_path))
records = [r for r in read_log(log_path) if "loss" in r]  # (evaluation lines have no "loss")
n = max(1, len(records) // 10)
print(f"{'term':<17} {'first ' + str(n):>10} {'last ' + str(n):>10}   (mean over the first and last {n} iterations)")
for name in ("loss", *LOSS_NAMES):
    first, last = (np.mean([r[name] for r in part]) for part in (records[:n], records[-n:]))
    print(f"{name:<17} {first:10.3f} {last:10.3f}")

# %% [markdown]
# The lr in the log is what the optimizer used at each update; record $t + 1$ (after $t + 1$ updates) holds
# the rate of iteration $t$, `schedule(t)`. The gradient norm is $\lVert g\rVert$ over all trainable
# parameters together, before weight decay and before clipping (Mask R-CNN does not clip; the recipe here
# clips at 10, and `clip_scale` in the log is the factor applied, 1 when it did not act). It tells you
# whether the run is healthy: a norm that grows steadily, or jumps by orders of magnitude, comes before a
# divergence; a lr that is too large for the batch shows here first. The product $\eta_t \lVert g\rVert$
# is the size of the raw gradient step (momentum makes the actual step up to $1/(1 - 0.9) = 10$ times larger).

# %%
it = np.array([r["iteration"] for r in records])
lr = np.array([r["lr"] for r in records])
grad_norm = np.array([r["grad_norm"] for r in records])
schedule = recipe.schedule()
print("the logged lr is the schedule's:", np.array_equal(lr, [schedule(t - 1) for t in it]))

fig, axes = plt.subplots(1, 2, figsize=(13, 3.6))
axes[0].plot(it, grad_norm, lw=0.8)
axes[0].set_yscale("log")
axes[0].set_title("gradient norm ||g||", fontsize=10)
axes[1].plot(it, lr * grad_norm, lw=0.8, color="tab:green")
axes[1].set_yscale("log")
axes[1].set_title("lr · ||g||", fontsize=10)
for ax in axes:
    ax.set_xlabel("iteration")
    for step in schedule.steps:
        ax.axvline(step, color="k", ls=":", lw=1)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 5. The same held-out images, as training goes on
#
# The models kept in section 3, on three images of the `val` split (never trained on). Ground truth on the
# left, then the model after 0 iterations (its initial weights), and after each stop; detections scoring at
# least 0.5. The untrained model finds nothing that scores 0.5 (its class scores are all near 1/4); the
# later models find more of the shapes, with tighter boxes and masks.

# %%
val = ShapesDataset("val", num_images=2 if SMOKE else 25, seed=0)
shown = [val[i] for i in range(min(3, len(val)))]
fig, axes = plt.subplots(len(shown), len(snapshots) + 1, figsize=(2.9 * (len(snapshots) + 1), 3 * len(shown)),
                         squeeze=False)
for row, s in enumerate(shown):
    draw_detections(axes[row, 0], s["image"], s["boxes"], s["labels"], masks=s["masks"],
                    class_names=cfg.class_names)
    axes[row, 0].set_title("ground truth", fontsize=9)
    for col, (iteration, params) in enumerate(snapshots.items(), start=1):
        pred = predict(params, cfg, [s["image"]])[0]
        draw_detections(axes[row, col], s["image"], pred["boxes"], pred["labels"], pred["scores"],
                        pred["masks"], class_names=cfg.class_names, score_threshold=0.5)
        axes[row, col].set_title(f"after {iteration} iterations", fontsize=9)
plt.tight_layout()
plt.show()

# %% [markdown]
# And in numbers: COCO box and mask AP of each kept model on the held-out images (`evaluate_model`; notebook 09
# explains the metric). AP50 counts a detection right at IoU 0.5, AP averages over IoU 0.5 to 0.95.

# %%
print(f"{len(val)} held-out images")
print(f"{'iterations':>10} {'box AP':>7} {'box AP50':>9} {'mask AP':>8} {'mask AP50':>10} {'seconds':>8}")
for iteration, params in snapshots.items():
    report = evaluate_model(params, cfg, val)
    b, m = report["bbox"].summary(), report["segm"].summary()
    print(f"{iteration:>10} {b['AP']:7.3f} {b['AP50']:9.3f} {m['AP']:8.3f} {m['AP50']:10.3f} "
          f"{report['seconds']:8.1f}")
if SMOKE:
    print("(smoke mode: a few iterations on one image each; these numbers mean nothing)")

# %% [markdown]
# ## 6. Checkpoints, and resuming exactly
#
# A checkpoint is a folder: `weights.npz` holds the parameters, the optimizer's momentum buffers (under
# `optimizer.velocity.<name>`) and a JSON metadata entry; `config.json` is the model. Nothing else is needed
# to continue, because nothing random is carried from one iteration to the next: iteration $t$ draws its flips
# from `default_rng([seed, t, 1])` and its anchor and RoI sampling from `default_rng([seed, t, 2])`, and the
# data order of epoch $e$ comes from `(seed, e)`. The folder of our run, and the metadata of last/:

# %%
for name in sorted(os.listdir(run_dir)):
    inside = sorted(os.listdir(os.path.join(run_dir, name))) if os.path.isdir(os.path.join(run_dir, name)) else ""
    print(f"  {name:<16} {inside}")
params, _, meta, velocity = load_checkpoint(os.path.join(run_dir, "last"))
print(f"{len(params)} parameters, {len(velocity)} momentum buffers (one per trainable parameter)")
for key in ("format", "iteration", "seed", "seconds", "rng"):
    print(f"  {key}: {meta[key]}")
print("  recipe:", meta["recipe"])

# %% [markdown]
# **Resuming is exact.** Train a short run twice: once straight through, once stopped after 2 iterations and
# resumed. Every parameter and every momentum buffer must be *equal*, not merely close — the same
# floating-point operations in the same order (`tests/test_train.py::test_resumed_run_is_bit_identical`
# checks the same):

# %%
short = Recipe(iterations=4, batch_size=1, lr=0.02, warmup_iters=10, eval_every=0, seed=1)
few = ShapesDataset("train", num_images=6, seed=0)
straight, stopped = tempfile.mkdtemp(prefix="straight-"), tempfile.mkdtemp(prefix="resumed-")
quiet = dict(progress=False, print_fn=lambda *a: None)
train(cfg, short, few, None, straight, **quiet)
train(cfg, short, few, None, stopped, stop_after=2, **quiet)  # as if Ctrl-C after 2 iterations
train(cfg, short, few, None, stopped, resume=True, **quiet)  # continue from last/
pa, _, _, va = load_checkpoint(os.path.join(straight, "last"))
pb, _, _, vb = load_checkpoint(os.path.join(stopped, "last"))
print("parameters identical:", all(np.array_equal(pa[k], pb[k]) for k in pa))
print("momentum identical:  ", all(np.array_equal(va[k], vb[k]) for k in va))

# %% [markdown]
# On the command line the same is `tinymask train --out runs/quick --resume`, which reads the recipe and the
# data description from the checkpoint. Ctrl-C during a run writes last/ before it stops. Options given with
# `--resume` change the run from there on: `--iterations 600` continues a 300-iteration run to 600, but the
# steps move with it (to 70 % and 90 % of 600), so that is a different schedule from a run started with 600.
# `train` also refuses to start a fresh run in a folder that already holds one, so a forgotten `--resume`
# never overwrites a checkpoint. What `tinymask train` writes, and how to train on your own data:
# [using tinymask](../docs/usage.md).
