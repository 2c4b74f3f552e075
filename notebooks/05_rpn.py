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
# # 05 · The Region Proposal Network
#
# *Papers:* Ren et al., *Faster R-CNN*, NeurIPS 2015 — §3.1 (the RPN head: a 3×3 conv, then sibling 1×1 convs
# for objectness and box deltas at every anchor), §3.1.2 (the loss, Eq. 1), §3.1.3 (256 sampled anchors per
# image, up to half positive), §3.3 (NMS at IoU 0.7 on the proposals); Lin et al., *FPN*, CVPR 2017, §4.1 (the
# same head, shared, on P2–P6); Mask R-CNN §3.1 (1000 proposals per image at test time for FPN).
# · *Docs:* [the RPN](../docs/rpn.md), [box logic](../docs/box_logic.md), [losses](../docs/layers/losses.md)
# · *Code:* [`tinymask/heads/rpn.py`](../tinymask/heads/rpn.py), [`tinymask/box_logic/nms.py`](../tinymask/box_logic/nms.py),
# [`tinymask/box_logic/anchors.py`](../tinymask/box_logic/anchors.py) · *Tests:* `tests/test_model.py`, `tests/test_nms.py`
#
# What you will see:
#
# 1. the order in which the head's outputs line up with the anchors, on a 2×2 map you can read;
# 2. an untrained RPN: its targets, its sampled anchors, its loss (predictable by hand) and its proposals;
# 3. the proposal pipeline step by step — top-$k$ per level, decoding, clipping, NMS — before and after a short
#    training;
# 4. a recall table: the fraction of ground-truth boxes that the top-$N$ proposals cover.

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

from matplotlib.patches import Rectangle

from tinymask.box_logic.boxes import box_iou, clip_boxes, decode_boxes, remove_small_boxes
from tinymask.layers.activations import sigmoid
from tinymask.model import init_params, predict
from tinymask.box_logic.nms import batched_nms
from tinymask.heads.rpn import flatten_head_outputs, rpn_loss, rpn_targets
from tinymask.box_logic.sampler import sample_balanced

rng = np.random.default_rng(0)


def draw_boxes(ax, boxes, color, lw=1.0, alpha=1.0):
    for x0, y0, x1, y1 in boxes:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=color, lw=lw, alpha=alpha))


# %% [markdown]
# ## 1. How the head's outputs line up with the anchors
#
# The head produces, per level, objectness maps `(N, A, H, W)` (one logit per anchor of each cell) and delta
# maps `(N, 4A, H, W)`. The anchors are ordered level by level, cell by cell (row-major), then the $A$ anchors
# of the cell (notebook 04): anchor $(y\cdot W + x)\cdot A + a$. `flatten_head_outputs` permutes the maps into
# that order. On a 2×2 map with $A = 3$ we write $100y + 10x + a$ into each logit, and the flattened row must
# read $0, 1, 2, 10, 11, 12, 100, \ldots$; a delta's channel $4a + c$ holds coordinate $c$ of anchor $a$.

# %%
A, H, W = 3, 2, 2
objectness = np.zeros((1, A, H, W))  # (N, A, H, W)
deltas = np.zeros((1, 4 * A, H, W))  # (N, 4A, H, W)
for a in range(A):
    for y in range(H):
        for x in range(W):
            objectness[0, a, y, x] = 100 * y + 10 * x + a
            for c in range(4):
                deltas[0, 4 * a + c, y, x] = 1000 * c + 100 * y + 10 * x + a
obj_flat, deltas_flat = flatten_head_outputs([objectness], [deltas])  # (N, T), (N, T, 4)
print("objectness, flattened:", obj_flat[0])
print("deltas of anchor 4 (cell (0, 1), a = 1):", deltas_flat[0, 4])

# %% [markdown]
# ## 2. An untrained RPN
#
# `predict(..., return_stages=True)` returns the model's intermediate results along with the detections: the
# RPN's per-level outputs, the anchors and the proposals. We use it for the inference side, and the RPN's own
# functions for the training side.
#
# **Its loss, by hand.** The objectness layer starts with weights of standard deviation 0.01 (torchvision's
# `RPNHead`), so every logit is close to 0 and every probability close to 0.5: the binary cross-entropy on the
# sampled anchors is $-\log 0.5 = \log 2 = 0.693$. The box deltas start near 0 too, so the regression loss is
# the smooth L1 of the targets themselves.

# %%
from tinymask.config import MaskRCNNConfig
from tinymask.data.shapes import ShapesDataset

cfg = MaskRCNNConfig.preset("small")
untrained = init_params(cfg, seed=0)
val = ShapesDataset("val", num_images=2 if SMOKE else 40, seed=0)
sample = val[1]
gt = sample["boxes"].astype(np.float32)

_, stages = predict(untrained, cfg, [sample["image"]], return_stages=True)
obj_flat, deltas_flat = flatten_head_outputs(stages["objectness"], stages["deltas"])  # (1, T), (1, T, 4)
anchors = stages["anchors"]  # (T, 4)
print(f"{anchors.shape[0]} anchors; objectness logits between {obj_flat.min():.3f} and {obj_flat.max():.3f}")

labels, reg_targets = rpn_targets(anchors, [gt], cfg)  # (1, T) in {1, 0, -1}, (1, T, 4)
loss_obj, loss_box, _, _ = rpn_loss(obj_flat, deltas_flat, labels, reg_targets, cfg, np.random.default_rng(0))
print(f"objectness loss {float(loss_obj):.4f} (log 2 = {np.log(2):.4f}); box loss {float(loss_box):.4f}")

# %% [markdown]
# The loss sees only a sample of the anchors: up to `rpn_batch_size_per_image` (256 in the paper, 128 in the
# `small` preset), at most half of them positive, the rest negatives chosen at random. Most anchors are easy
# negatives (background), and without sampling they would swamp the loss.

# %%
pos, neg = sample_balanced(labels[0], cfg.rpn_batch_size_per_image, cfg.rpn_positive_fraction, rng)
fig, ax = plt.subplots(figsize=(5, 5))
ax.imshow(sample["image"].transpose(1, 2, 0), extent=(0, 128, 128, 0))
draw_boxes(ax, anchors[neg], "tab:red", lw=0.5, alpha=0.5)
draw_boxes(ax, anchors[pos], "lime", lw=1.2)
draw_boxes(ax, gt, "white", lw=2)
ax.set_xlim(-40, 168)
ax.set_ylim(168, -40)
ax.set_title(f"sampled: {pos.sum()} positive (green), {neg.sum()} negative (red)", fontsize=10)
plt.show()


# %% [markdown]
# ## 3. From head outputs to proposals, step by step
#
# `rpn_proposals` turns the head's outputs into proposals (torchvision's `filter_proposals`):
#
# 1. on each level, keep the `pre_nms_top_n` anchors with the highest objectness logits;
# 2. **decode** their deltas into boxes (Faster R-CNN Eq. 2 inverted, notebook 04) and take the sigmoid of the
#    logits;
# 3. **clip** the boxes to the image and drop those with a side below $10^{-3}$ pixel;
# 4. **NMS** at IoU 0.7 within each level, then keep the `post_nms_top_n` best of the image.
#
# Below, the same steps written out with the library's pieces, and checked against the proposals `predict`
# made. The untrained RPN's logits are tiny random numbers, so its "best" anchors are a random choice and its
# decoded boxes are the anchors themselves.

# %%
def proposal_steps(stages, cfg):
    """The proposal pipeline of rpn_proposals, one step at a time, for the first image.

    Returns {step: (boxes, scores, levels, anchors)} after each step, best score first."""
    obj, dlt = flatten_head_outputs(stages["objectness"], stages["deltas"])
    obj, dlt, anchors = obj[0], dlt[0], stages["anchors"]
    counts = [o.shape[1] * o.shape[2] * o.shape[3] for o in stages["objectness"]]  # anchors per level
    starts = np.cumsum([0] + counts)
    top = np.concatenate([starts[l] + np.argsort(-obj[starts[l]:starts[l + 1]], kind="stable")[:cfg.rpn_pre_nms_top_n_test]
                          for l in range(len(counts))])  # step 1: per level, best logits first
    level = np.searchsorted(starts, top, side="right") - 1  # (K,) level index of each candidate
    boxes = decode_boxes(dlt[top], anchors[top])  # step 2: (K, 4)
    scores = sigmoid(obj[top])  # (K,)
    anchors = anchors[top]  # (K, 4) the anchor each box was decoded from
    steps = {"top-k per level": (boxes, scores, level, anchors)}
    boxes = clip_boxes(boxes, stages["image_sizes"][0])  # step 3
    keep = remove_small_boxes(boxes, 1e-3)
    boxes, scores, level, anchors = boxes[keep], scores[keep], level[keep], anchors[keep]
    steps["clipped"] = (boxes, scores, level, anchors)
    keep = batched_nms(boxes, scores, level, cfg.rpn_nms_thresh)  # step 4: NMS within each level
    steps["after NMS"] = (boxes[keep], scores[keep], level[keep], anchors[keep])
    keep = keep[:cfg.rpn_post_nms_top_n_test]
    steps["proposals"] = (boxes[keep], scores[keep], level[keep], anchors[keep])
    return {name: tuple(a[np.argsort(-sc, kind="stable")] for a in (b, sc, lv, an))
            for name, (b, sc, lv, an) in steps.items()}


steps = proposal_steps(stages, cfg)
print(" -> ".join(f"{name}: {len(b)}" for name, (b, *_) in steps.items()))
print("same as predict's proposals:", np.array_equal(steps["proposals"][0], stages["proposals"][0]))

# %% [markdown]
# Now a short training run, so that the RPN has something to say. `tinymask.training.loop.train` runs the full
# Mask R-CNN training loop (notebook 08): all five losses, SGD with momentum, a linear warm-up. In smoke mode
# (CI) it runs 2 iterations of one image, and the "trained" model is no better than the untrained one.

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
_, stages_trained = predict(trained, cfg, [sample["image"]], return_stages=True)
models = {"untrained": (untrained, stages), "trained": (trained, stages_trained)}
level_colors = ["orange", "yellow", "cyan", "lime", "magenta"]  # P2..P6
fig, axes = plt.subplots(2, 3, figsize=(15, 10))
for row, (name, (_, st)) in enumerate(models.items()):
    steps = proposal_steps(st, cfg)
    print(f"{name:>9}: " + " -> ".join(f"{step} {len(b)}" for step, (b, *_) in steps.items()))
    boxes, scores, levels, anchors_used = steps["proposals"]
    for col, ax in enumerate(axes[row]):
        ax.imshow(sample["image"].transpose(1, 2, 0), extent=(0, 128, 128, 0))
        draw_boxes(ax, gt, "white", lw=2)
        ax.set_xlim(-20, 148)
        ax.set_ylim(148, -20)
    for b, a in zip(boxes[:5], anchors_used[:5]):  # decoding: anchor -> box
        axes[row, 0].add_patch(Rectangle(a[:2], a[2] - a[0], a[3] - a[1], fill=False, ec="cyan", ls="--"))
        draw_boxes(axes[row, 0], [b], "yellow", lw=1.5)
        axes[row, 0].annotate("", xy=((b[0] + b[2]) / 2, (b[1] + b[3]) / 2),
                              xytext=((a[0] + a[2]) / 2, (a[1] + a[3]) / 2),
                              arrowprops=dict(arrowstyle="->", color="yellow"))
    axes[row, 0].set_title(f"{name}: the 5 best, anchors (cyan, dashed)\ndecoded into boxes (yellow)",
                           fontsize=10)
    for b, l in zip(boxes[:20], levels[:20]):
        draw_boxes(axes[row, 1], [b], level_colors[l], lw=1.2)
    axes[row, 1].set_title(f"{name}: the 20 best proposals, coloured by level\n(scores {scores[19]:.3f} to "
                           f"{scores[0]:.3f})", fontsize=10)
    cand_boxes, cand_scores, cand_levels, _ = steps["clipped"]  # every candidate that entered NMS
    same = cand_levels == levels[0]  # NMS compares boxes of one level only
    iou = box_iou(boxes[:1], cand_boxes[same])[0]
    victims = cand_boxes[same][(iou > cfg.rpn_nms_thresh) & (cand_scores[same] < scores[0])]
    draw_boxes(axes[row, 2], victims, "cyan", lw=0.8)
    draw_boxes(axes[row, 2], boxes[:1], "lime", lw=2.5)
    axes[row, 2].set_title(f"{name}: the best proposal (green, P{levels[0] + 2}) and the\n{len(victims)} "
                           f"candidate(s) it suppresses (cyan, IoU > {cfg.rpn_nms_thresh})", fontsize=10)
plt.tight_layout()
plt.show()


# %% [markdown]
# Untrained, the deltas are close to 0 and every box is its anchor; trained, the deltas move and stretch the
# anchors onto the objects (Eq. 2 inverted). A trained RPN's best proposals sit on the objects; each level
# proposes its own boxes (colours: P2 orange, P3
# yellow, P4 cyan, P5 green, P6 magenta), and NMS compares boxes within a level only. At IoU 0.7 NMS is
# lenient: it removes the near-duplicates of a better box — the neighbouring anchors that regressed onto the
# same object — and lets boxes that overlap less through; the `post_nms_top_n` cut and the second stage's own
# NMS (at 0.5, per class, notebook 09) do the rest. Untrained, the "best" boxes are anchors picked at random,
# and hardly any candidate overlaps one of them that much.
#
# ## 4. Recall of the proposals
#
# The second stage can only find an object if some proposal covers it. The standard measure is the **recall**
# of the top-$N$ proposals: the fraction of ground-truth boxes that at least one of them overlaps with IoU
# $\ge$ 0.5 (or 0.7), over a set of images. For reference, anchors in random order — which is what an untrained
# RPN amounts to.

# %%
def recall(proposals, gt_boxes, n, threshold):
    """Fraction of all gt boxes that one of the first n proposals of their image covers at IoU >= threshold."""
    covered = total = 0
    for p, g in zip(proposals, gt_boxes):
        if len(g) and len(p[:n]):
            covered += int(np.sum(box_iou(g, p[:n]).max(axis=1) >= threshold))
        total += len(g)
    return covered / max(total, 1)


gt_boxes = [val[i]["boxes"].astype(np.float32) for i in range(len(val))]
proposals = {name: [predict(p, cfg, [val[i]["image"]], return_stages=True)[1]["proposals"][0]
                    for i in range(len(val))] for name, (p, _) in models.items()}
proposals["random anchors"] = [anchors[rng.permutation(len(anchors))] for _ in range(len(val))]

Ns = [10, 50, 100, cfg.rpn_post_nms_top_n_test]
print(f"{len(val)} images, {sum(map(len, gt_boxes))} ground-truth boxes\n")
print(f"{'':>16}" + "".join(f"{f'top {n}':>9}" for n in Ns) + "   (IoU 0.5 | IoU 0.7)")
for name, props in proposals.items():
    print(f"{name:>16}" + "".join(f"{recall(props, gt_boxes, n, 0.5):9.2f}" for n in Ns) + "  |"
          + "".join(f"{recall(props, gt_boxes, n, 0.7):6.2f}" for n in Ns))

# %% [markdown]
# A trained RPN covers most objects with its first few dozen proposals, where random anchors need far more; and
# at IoU 0.7 the regression matters, since an anchor rarely fits an object that well without being moved. (In
# smoke mode the "trained" model has had 2 iterations and these numbers mean nothing.)
#
# **Next:** notebook 06 shows how the RoI heads read features for each proposal: RoIPool vs RoIAlign.
