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
# # 09 · Inference, step by step, and COCO evaluation
#
# *Papers:* He et al., *Mask R-CNN*, ICCV 2017 — §3.1 "Inference": the box branch runs on the proposals, NMS,
# then the mask branch on the top detections; "the $m\times m$ floating-number mask output is then resized to
# the RoI size, and binarized at a threshold of 0.5"; §4 and Tables 1–3 (COCO AP); Lin et al., *Microsoft COCO*,
# ECCV 2014 (the metric). · *Docs:* [the whole model](../docs/model.md) (inference),
# [evaluation](../docs/evaluation.md), [box logic](../docs/box_logic.md) (NMS, mask pasting)
# · *Code:* [`tinymask/model.py`](../tinymask/model.py) (`predict`),
# [`tinymask/heads/box_head.py`](../tinymask/heads/box_head.py) (`postprocess_detections`),
# [`tinymask/box_logic/mask_paste.py`](../tinymask/box_logic/mask_paste.py), [`tinymask/evaluation/coco_eval.py`](../tinymask/evaluation/coco_eval.py),
# [`tinymask/evaluation/evaluate.py`](../tinymask/evaluation/evaluate.py) · *Tests:* `tests/test_model.py`,
# `tests/test_mask_paste.py`, `tests/test_coco_eval.py`
#
# What you will see:
#
# 1. COCO's AP on three tiny cases you can compute by hand;
# 2. a briefly trained model's inference on one image, one step at a time: class scores (softmax), per-class
#    boxes, per-class NMS class by class, mask pasting, the final result;
# 3. the COCO evaluation of the model on a validation set: the table and the precision-recall curves.
#
# The model is trained for a few minutes here, so its numbers are modest; in smoke mode (CI) it is trained for
# 2 iterations and its detections are noise — the steps are the same. Set `TINYMASK_CHECKPOINT` to a
# checkpoint of `tinymask train` to look at a better model.

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

from tinymask.box_logic.boxes import clip_boxes, decode_boxes, remove_small_boxes
from tinymask.evaluation.coco_eval import evaluate, format_table
from tinymask.evaluation.evaluate import evaluate_model
from tinymask.evaluation.predict import detections_to_coco_results
from tinymask.heads.mask_head import mask_probabilities
from tinymask.box_logic.mask_paste import binarize, expand_boxes, paste_masks_in_image
from tinymask.model import predict
from tinymask.box_logic.nms import nms
from tinymask.layers.activations import softmax
from tinymask.visualize import draw_detections, plot_loss_curves

# %% [markdown]
# ## 1. COCO AP by hand
#
# For one category, COCO sorts all detections by score, walks down the list and marks each a true positive if
# it matches a still-unmatched ground-truth object with IoU at least $t$, a false positive otherwise. Precision
# and recall after each detection trace a curve; AP is the mean of its (monotone envelope's) precision at the
# 101 recall levels $0, 0.01, \ldots, 1$. The headline "AP" averages this over $t = 0.50, 0.55, \ldots, 0.95$
# ([`tinymask/evaluation/coco_eval.py`](../tinymask/evaluation/coco_eval.py) explains every rule).
#
# One object, box $(0, 0, 10, 10)$:
#
# - **a miss ranked first** (score 0.9, elsewhere), then a perfect hit (0.8): after the first detection
#   precision 0, recall 0; after the second precision 1/2, recall 1. The envelope is 1/2 at every recall level:
#   AP = 0.5 at every threshold;
# - **the same two, hit ranked first**: precision 1 at recall 1, AP = 1;
# - **one detection with IoU 0.6** (box $(0, 0, 10, 6)$: $60/100$): a hit at $t = 0.50, 0.55, 0.60$ and a miss at
#   the seven higher thresholds, so AP@[.5:.95] $= 3/10$ while AP50 = 1.

# %%
gt = {"images": [{"id": 0, "height": 32, "width": 32}], "categories": [{"id": 1, "name": "thing"}],
      "annotations": [{"id": 1, "image_id": 0, "category_id": 1, "bbox": [0, 0, 10, 10], "area": 100,
                       "iscrowd": 0}]}


def det(box_xywh, score):
    return {"image_id": 0, "category_id": 1, "bbox": box_xywh, "score": score}


cases = {"miss first, then a hit": [det([20, 20, 10, 10], 0.9), det([0, 0, 10, 10], 0.8)],
         "hit first, then a miss": [det([20, 20, 10, 10], 0.8), det([0, 0, 10, 10], 0.9)],
         "one detection at IoU 0.6": [det([0, 0, 10, 6], 0.9)]}
for name, dets in cases.items():
    summary = evaluate(gt, dets, iou_type="bbox").summary()
    print(f"{name:>26}: AP {summary['AP']:.3f}   AP50 {summary['AP50']:.3f}   AP75 {summary['AP75']:.3f}")

# %% [markdown]
# ## 2. A model, trained briefly

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
from IPython.display import display

if not CHECKPOINT:
    display(plot_loss_curves(os.path.join(run_dir, "log.jsonl")))  # the training log: each loss and the lr

# %% [markdown]
# ## 3. Inference on one image, step by step
#
# `predict(..., return_stages=True)` returns the detections *and* the intermediate results. We redo the
# second stage's steps from them with the library's pieces and check that we land on the same detections.

# %%
val = ShapesDataset("val", num_images=3 if SMOKE else 50, seed=0)
sample = val[0]
results, stages = predict(trained, cfg, [sample["image"]], return_stages=True)
proposals = stages["proposals"][0]  # (P, 4) the RPN's proposals, best first
class_logits, box_regression = stages["class_logits"], stages["box_regression"]  # (P, K), (P, 4K)
print(f"{len(proposals)} proposals -> class logits {class_logits.shape}, box deltas {box_regression.shape}")

# %% [markdown]
# **Scores.** The box head's $K$ logits per proposal (background included) become probabilities with a softmax,
# $p_k = e^{z_k} / \sum_j e^{z_j}$. Each proposal then stands for $K - 1$ candidate detections, one per object
# class, scored $p_k$. The first proposal's numbers by hand:

# %%
scores = softmax(class_logits)  # (P, K)
z = class_logits[0]
print("logits z       :", z)
print("exp(z) / sum   :", np.exp(z - z.max()) / np.exp(z - z.max()).sum())
print("softmax (lib)  :", scores[0])
fig, ax = plt.subplots(figsize=(6, 2.8))
for k in range(1, cfg.num_classes):
    ax.hist(scores[:, k], bins=40, range=(0, 1), histtype="step", label=cfg.class_names[k])
ax.set_yscale("log")
ax.set_xlabel("class probability")
ax.set_ylabel("proposals")
ax.legend(fontsize=8)
plt.show()

# %% [markdown]
# **Per-class boxes and per-class NMS.** Every proposal has a box per class: its $4K$ deltas decoded with the
# box head's weights $(10, 10, 5, 5)$ (notebook 04), clipped to the image. Candidates scoring above
# `box_score_thresh` (0.05) enter NMS at IoU `box_nms_thresh` (0.5) — **separately for each class**, so a
# square never suppresses a circle. The best `box_detections_per_img` of all classes together are the
# detections. Class by class:

# %%
K = cfg.num_classes
boxes_all = decode_boxes(box_regression, proposals, cfg.box_coder_weights)  # (P, 4K): a box per class
boxes_all = clip_boxes(boxes_all.reshape(-1, 4), stages["image_sizes"][0]).reshape(-1, K, 4)  # (P, K, 4)

kept_boxes, kept_scores, kept_labels = [], [], []
fig, axes = plt.subplots(2, K - 1, figsize=(4.2 * (K - 1), 8.4))
for k in range(1, K):
    candidates = np.flatnonzero(scores[:, k] > cfg.box_score_thresh)
    candidates = candidates[remove_small_boxes(boxes_all[candidates, k], 1e-2)]
    keep = candidates[nms(boxes_all[candidates, k], scores[candidates, k], cfg.box_nms_thresh)]
    kept_boxes.append(boxes_all[keep, k])
    kept_scores.append(scores[keep, k])
    kept_labels.append(np.full(len(keep), k))
    for row, (idx, title) in enumerate(((candidates, "before NMS"), (keep, "after NMS"))):
        ax = axes[row, k - 1]
        ax.imshow(sample["image"].transpose(1, 2, 0), extent=(0, 128, 128, 0))
        for i in idx:
            x0, y0, x1, y1 = boxes_all[i, k]
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=plt.cm.autumn(1 - scores[i, k]),
                                   lw=0.5 + 2 * scores[i, k], alpha=0.3 + 0.7 * scores[i, k]))
        ax.set_title(f"{cfg.class_names[k]}: {len(idx)} {title}", fontsize=10)
        ax.set_xlim(0, 128)
        ax.set_ylim(128, 0)
plt.tight_layout()
plt.show()

kept_boxes, kept_scores, kept_labels = map(np.concatenate, (kept_boxes, kept_scores, kept_labels))
top = np.argsort(-kept_scores, kind="stable")[:cfg.box_detections_per_img]
detections = stages["detections"][0]  # what predict's postprocess_detections made
print(f"{len(top)} detections by hand, {len(detections['scores'])} from predict; same scores:",
      np.allclose(np.sort(kept_scores[top]), np.sort(detections["scores"])))

# %% [markdown]
# **Masks.** The mask branch runs on the detections' boxes only (§3.1: "the mask branch is then applied to the
# highest scoring 100 detection boxes"), predicts $K$ masks of 28×28 for each, and keeps the one of the
# detection's class, through a sigmoid. `paste_masks_in_image` puts it back into the image: the mask is padded
# by one pixel of zeros, the box enlarged by $30/28$ to match, the padded mask resized bilinearly onto the
# enlarged box, then thresholded at 0.5 (`binarize`). The padding lets the mask fade out smoothly at the box's
# border instead of being cut there.

# %%
if len(detections["scores"]):
    labels = detections["labels"]
    probs = mask_probabilities(stages["mask_logits"], labels, cfg)  # (D, 28, 28) the class's mask, sigmoid
    box = detections["boxes"][:1]  # (1, 4) the best detection
    soft = paste_masks_in_image(probs[:1], box, (128, 128))  # (1, 128, 128)
    hard = binarize(soft)  # (1, 128, 128) bool
    print("same as predict's mask:", np.array_equal(hard[0], results[0]["masks"][0].astype(bool)))

    fig, axes = plt.subplots(1, 4, figsize=(15, 3.8))
    axes[0].imshow(probs[0], cmap="viridis", vmin=0, vmax=1)
    axes[0].set_title(f"28×28 mask of class {cfg.class_names[labels[0]]}", fontsize=10)
    axes[1].imshow(sample["image"].transpose(1, 2, 0), extent=(0, 128, 128, 0))
    for b, style, label in ((box[0], "-", "box"), (expand_boxes(box, 30 / 28)[0], "--", "enlarged by 30/28")):
        axes[1].add_patch(Rectangle(b[:2], b[2] - b[0], b[3] - b[1], fill=False, ec="yellow", ls=style,
                                    lw=1.5, label=label))
    axes[1].legend(fontsize=8, loc="lower right")
    axes[1].set_title("the detection's box", fontsize=10)
    axes[2].imshow(soft[0], extent=(0, 128, 128, 0), cmap="viridis", vmin=0, vmax=1)
    axes[2].set_title("pasted (probabilities)", fontsize=10)
    axes[3].imshow(hard[0], extent=(0, 128, 128, 0), cmap="gray")
    axes[3].set_title("binarized at 0.5", fontsize=10)
    plt.tight_layout()
    plt.show()
else:
    print("no detections above the score threshold: this model has not learned enough yet")

# %% [markdown]
# **The result**, next to the ground truth, on a few validation images (detections scoring at least 0.3; after
# a few minutes of training the boxes are found before the classes are sure):

# %%
fig, axes = plt.subplots(2, 3, figsize=(12, 8.4))
for col in range(3):
    s = val[col % len(val)]
    pred = predict(trained, cfg, [s["image"]])[0]
    draw_detections(axes[0, col], s["image"], s["boxes"], s["labels"], masks=s["masks"],
                    class_names=cfg.class_names)
    draw_detections(axes[1, col], s["image"], pred["boxes"], pred["labels"], pred["scores"], pred["masks"],
                    class_names=cfg.class_names, score_threshold=0.3)
    axes[0, col].set_title("ground truth", fontsize=10)
    axes[1, col].set_title(f"prediction ({np.sum(pred['scores'] >= 0.3)} scoring 0.3 or more)", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. COCO evaluation
#
# `evaluate_model` predicts every image of the validation set, writes each detection as a COCO result (box as
# `[x, y, width, height]`, mask as a compressed RLE; `detections_to_coco_results`), and runs the evaluation twice: on boxes
# (`iou_type="bbox"`) and on masks (`"segm"`, IoU between masks). One detection as COCO sees it:

# %%
first = detections_to_coco_results(results[0], image_id=0)[:1]
print(first if first else "no detections")
report = evaluate_model(trained, cfg, val)
print(f"{report['num_images']} images, {len(report['results'])} detections, {report['seconds']:.0f} s\n")
print("segm (mask AP)")
print(format_table(report["segm"]))

# %% [markdown]
# **Precision-recall curves.** `result.precision` has shape $(T, R, K, A, M)$: IoU threshold × 101 recall levels
# × category × area range (all, small, medium, large) × detections per image (1, 10, 100), already the
# monotone envelope; $-1$ marks a category without ground truth. AP is the mean of a curve, AP@[.5:.95] the mean
# over the ten thresholds. At IoU 0.5 a roughly placed box counts; at 0.75 it must be tight — the gap between
# the curves is localisation quality.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharey=True)
for ax, iou_type in zip(axes, ("bbox", "segm")):
    result = report[iou_type]
    for k, name in enumerate(result.category_names):
        for t, style in ((0, "-"), (5, "--")):  # IoU thresholds 0.50 and 0.75
            p = result.precision[t, :, k, 0, -1]  # (R,) area "all", 100 detections
            if np.all(p < 0):
                continue  # no ground truth of this category
            ax.plot(result.recall_thresholds, p, style, color=f"C{k}",
                    label=f"{name} @{result.iou_thresholds[t]:.2f}: AP {p.mean():.2f}")
    ax.set_xlabel("recall")
    ax.set_title(f"{iou_type}: AP {result.stats[0]:.3f}, AP50 {result.stats[1]:.3f}, AP75 {result.stats[2]:.3f}",
                 fontsize=10)
    ax.legend(fontsize=7)
axes[0].set_ylabel("precision")
plt.tight_layout()
plt.show()

# %% [markdown]
# For scale: the paper's ResNet-101-FPN reaches 35.7 mask AP on COCO after 160k iterations of 16 images
# (Table 1); the shapes data are far easier, and `tinymask train` with its default recipe (3000 iterations of
# 4 images) gets much further than the few minutes above.
