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
# # 04 · Anchors, positive and negative anchors, and box coding
#
# *Papers:* Ren et al., *Faster R-CNN*, NeurIPS 2015 — §3.1.1 (anchors), §3.1.2 (anchor labels: positive at
# IoU ≥ 0.7 or best for a ground-truth box, negative below 0.3) and Eq. 2 (box coding); Lin et al., *FPN*,
# CVPR 2017, §4.1 (one anchor size per pyramid level, three aspect ratios). Mask R-CNN uses this RPN unchanged
# (§3.1). · *Docs:* [box logic](../docs/box_logic.md), [conventions](../docs/conventions.md) (box coordinates,
# aspect ratio = height / width)
# · *Code:* [`tinymask/box_logic/anchors.py`](../tinymask/box_logic/anchors.py), [`tinymask/box_logic/boxes.py`](../tinymask/box_logic/boxes.py),
# [`tinymask/box_logic/matcher.py`](../tinymask/box_logic/matcher.py), [`tinymask/box_logic/sampler.py`](../tinymask/box_logic/sampler.py)
# · *Tests:* `tests/test_anchors.py`, `tests/test_boxes.py`, `tests/test_matcher.py`, `tests/test_sampler.py`
#
# What you will see:
#
# 1. one level's anchors worked out by hand, and their order;
# 2. the 4092 anchors of the `small` preset on a 128×128 image, drawn level by level;
# 3. which anchors are positive, negative or ignored for a set of ground-truth boxes — first five anchors by
#    hand, then a real image — and why the "low-quality" matches are needed;
# 4. Faster R-CNN's box coding (Eq. 2) by hand, and the round trip encode → decode.
#
# Boxes are `(x0, y0, x1, y1)` in continuous pixel coordinates: pixel $(i, j)$ covers
# $[j, j+1)\times[i, i+1)$. Images are drawn with `extent=(0, W, H, 0)`, so a box is drawn at exactly its
# coordinates.

# %%
import os
SMOKE = os.environ.get("TINYMASK_SMOKE") == "1"  # CI sets TINYMASK_SMOKE=1: smaller sizes, fewer iterations

import numpy as np
import matplotlib.pyplot as plt

np.set_printoptions(precision=4, suppress=True, linewidth=120)

from matplotlib.patches import Rectangle

from tinymask.box_logic.anchors import anchors_for_image, base_anchors, grid_anchors
from tinymask.box_logic.boxes import box_iou, decode_boxes, DEFAULT_CLAMP, encode_boxes
from tinymask.config import MaskRCNNConfig
from tinymask.data.shapes import ShapesDataset
from tinymask.box_logic.matcher import Matcher, RPN_MATCHER
from tinymask.heads.rpn import rpn_targets
from tinymask.box_logic.sampler import sample_balanced

rng = np.random.default_rng(0)


def draw_box(ax, box, color, lw=1.0, ls="-", alpha=1.0):
    x0, y0, x1, y1 = box
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=color, lw=lw, ls=ls, alpha=alpha))


# %% [markdown]
# ## 1. One level's anchors, by hand
#
# An anchor of size $s$ and aspect ratio $r$ = height / width has area $s^2$: height $h = s\sqrt r$, width
# $w = s/\sqrt r$. Centred on $(0, 0)$ it is $[-w/2, -h/2, w/2, h/2]$, rounded to integers (torchvision's
# `AnchorGenerator`). For $s = 32$: ratio 0.5 gives $w = 45.25$, $h = 22.63$, rounded
# $[-23, -11, 23, 11]$; ratio 1 gives $[-16, -16, 16, 16]$; ratio 2 gives $[-11, -23, 11, 23]$.

# %%
base = base_anchors((32,), (0.5, 1.0, 2.0))  # (A, 4) = (3, 4), centred on (0, 0)
print(base)
w, h = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
print("h / w =", h / w, " area =", w * h, "(32² = 1024 before rounding)")

# %% [markdown]
# On a feature map of stride 16 the anchors of cell $(y, x)$ are the base anchors shifted by
# $(16x, 16y)$ — to the cell's top-left corner, without a half-cell offset (torchvision's choice). They are
# ordered cell by cell, row by row, then the $A$ anchors of the cell: anchor $(y\cdot W + x)\cdot A + a$.
# On a 2×2 map, anchors 3–5 belong to cell $(0, 1)$, shifted by 16 in $x$:

# %%
cells = grid_anchors(base, grid_hw=(2, 2), stride_hw=(16, 16))  # (H·W·A, 4) = (12, 4)
for i, box in enumerate(cells):
    cell, a = divmod(i, 3)
    print(f"anchor {i:2d}: cell (y, x) = {divmod(cell, 2)}, ratio {(0.5, 1.0, 2.0)[a]}: {box}")

# %% [markdown]
# ## 2. All anchors of the `small` preset
#
# FPN puts one size on each level — the paper uses $32^2$ on P2 up to $512^2$ on P6; tinymask's `small`
# preset halves them (16 … 256) because its shapes are 8 to 64 pixels in a 128-pixel image — and three
# ratios everywhere. The stride of a level is image size // map size.

# %%
cfg = MaskRCNNConfig.preset("small")
image_hw = (128, 128)
map_hws = [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2)]  # P2..P6 of a 128×128 image
anchors, counts = anchors_for_image(image_hw, map_hws, [[s] for s in cfg.anchor_sizes], cfg.aspect_ratios)
level_of = np.repeat(np.arange(len(counts)), counts)  # (T,) pyramid level index of every anchor
print(f"{'level':>5} {'map':>7} {'stride':>6} {'size':>5} {'anchors':>8}")
for l, ((fh, fw), n) in enumerate(zip(map_hws, counts)):
    print(f"{'P%d' % (l + 2):>5} {f'{fh}x{fw}':>7} {image_hw[0] // fh:>6} {cfg.anchor_sizes[l]:>5} {n:>8}")
print(f"{'':>5} {'':>7} {'':>6} {'total':>5} {len(anchors):>8}")

# %%
sample = ShapesDataset("val", num_images=1, seed=0)[0]
image = sample["image"].transpose(1, 2, 0)  # (H, W, 3) for imshow
fig, axes = plt.subplots(1, 5, figsize=(17, 3.8))
for l, ax in enumerate(axes):
    level = anchors[level_of == l]  # (H_l·W_l·3, 4)
    ax.imshow(image, extent=(0, 128, 128, 0))
    centres = (level[::3, :2] + level[::3, 2:]) / 2  # one centre per cell
    ax.plot(centres[:, 0], centres[:, 1], ".", color="white", ms=2 if l == 0 else 4)
    fh, fw = map_hws[l]
    middle = ((fh // 2) * fw + fw // 2) * 3  # the three anchors of the cell nearest the image centre
    for a, color in zip(range(3), ("tab:red", "yellow", "tab:cyan")):
        draw_box(ax, level[middle + a], color, lw=1.5)
    lim = max(160, cfg.anchor_sizes[l])
    ax.set_xlim(-lim / 2 + 64 - 20, lim / 2 + 64 + 20)
    ax.set_ylim(lim / 2 + 64 + 20, -lim / 2 + 64 - 20)
    ax.set_title(f"P{l + 2}: stride {128 // fw}, size {cfg.anchor_sizes[l]}", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# Dots are the anchor centres of every cell (at the cells' top-left corners); the three boxes are the anchors of
# one cell, ratios 0.5 (red), 1 (yellow) and 2 (cyan). Large anchors reach past the image: they are not clipped,
# and their IoU with a box inside the image simply counts the part that overlaps it.
#
# ## 3. Positive, negative and ignored anchors
#
# Faster R-CNN §3.1.2 labels an anchor
#
# - **positive** if its IoU with some ground-truth box is at least 0.7, *or* if it is the anchor with the
#   highest IoU for some ground-truth box (a "low-quality match": otherwise a box that no anchor overlaps by 0.7
#   would get no positive anchor at all);
# - **negative** if its IoU with every ground-truth box is below 0.3;
# - **ignored** (between the thresholds) otherwise: it does not enter the loss.
#
# Five anchors and two ground-truth boxes you can check by hand. Anchor 1 is the gt box shifted by 8 of its 32
# pixels: the overlap is 24·32 = 768 of a union of 1280, IoU 0.6, ignored. Anchor 4 is the only one touching the
# small 10×10 box, with IoU $100 / 256 = 0.39$ — below 0.7, but the best that box has, so it becomes
# positive for box 1.

# %%
toy_anchors = np.array([[0, 0, 32, 32], [8, 0, 40, 32], [16, 0, 48, 32], [32, 0, 64, 32], [96, 96, 112, 112]],
                       dtype=np.float64)
toy_gt = np.array([[0, 0, 32, 32], [100, 100, 110, 110]], dtype=np.float64)
iou = box_iou(toy_gt, toy_anchors)  # (G, T): one row per ground-truth box
print("IoU =\n", iou)
print("matches with low-quality matches:   ", RPN_MATCHER(iou),
      "  (gt index; -1 = negative, -2 = ignored)")
print("matches without low-quality matches:", Matcher(0.7, 0.3, allow_low_quality_matches=False)(iou))

# %% [markdown]
# Now a shapes image and all 4092 anchors. `rpn_targets` does the matching for the RPN loss: label 1
# (positive), 0 (negative) or −1 (ignored) per anchor, and each positive's regression target.

# %%
gt = sample["boxes"].astype(np.float64)  # (G, 4)
iou = box_iou(gt, anchors)  # (G, T)
matches = RPN_MATCHER(iou)  # (T,) gt index, -1 negative, -2 ignored
strict = Matcher(0.7, 0.3, allow_low_quality_matches=False)(iou)
labels, reg_targets = rpn_targets(anchors, [gt], cfg)  # (1, T) in {1, 0, -1}, (1, T, 4)
print(f"positive {np.sum(labels == 1)}, negative {np.sum(labels == 0)}, ignored {np.sum(labels == -1)} "
      f"of {labels.size} anchors")
print(f"\n{'gt':>3} {'class':>9} {'w x h':>9} {'best IoU':>9} {'level of best':>13} {'IoU >= 0.7':>10} "
      f"{'positives':>9}")
for g, box in enumerate(gt):
    best = iou[g].argmax()
    print(f"{g:>3} {cfg.class_names[sample['labels'][g]]:>9} "
          f"{f'{box[2] - box[0]:.0f}x{box[3] - box[1]:.0f}':>9} {iou[g, best]:9.2f} "
          f"{'P%d' % (level_of[best] + 2):>13} {np.sum(strict == g):>10} {np.sum(matches == g):>9}")

# %% [markdown]
# A box whose best anchor overlaps it by less than 0.7 has no strict positive at all ("IoU ≥ 0.7" column 0),
# and only the low-quality rule gives it one — or several, since ties count: a square between anchor centres
# can have four equally good anchors. The level of the best anchor follows the box's size: FPN's
# one-size-per-level design hands small objects to the fine levels.

# %%
pos_mask, neg_mask = sample_balanced(labels[0], cfg.rpn_batch_size_per_image, cfg.rpn_positive_fraction, rng)
print(f"sampled for the loss: {pos_mask.sum()} positives and {neg_mask.sum()} negatives "
      f"(batch {cfg.rpn_batch_size_per_image}, at most {cfg.rpn_positive_fraction:.0%} positive)")

fig, axes = plt.subplots(1, 2, figsize=(11, 5.5))
for ax in axes:
    ax.imshow(image, extent=(0, 128, 128, 0))
    for box in gt:
        draw_box(ax, box, "white", lw=2)
ignored = anchors[labels[0] == -1]
c = (ignored[:, :2] + ignored[:, 2:]) / 2
axes[0].plot(c[:, 0], c[:, 1], "o", color="yellow", ms=2, alpha=0.6)
for i in np.flatnonzero(labels[0] == 1):
    draw_box(axes[0], anchors[i], "lime" if strict[i] >= 0 else "tab:orange", lw=1)
axes[0].set_title("positives (green: IoU ≥ 0.7, orange: low-quality)\nyellow dots: centres of ignored anchors",
                  fontsize=10)
for i in np.flatnonzero(neg_mask):
    draw_box(axes[1], anchors[i], "tab:red", lw=0.6, alpha=0.6)
for i in np.flatnonzero(pos_mask):
    draw_box(axes[1], anchors[i], "lime", lw=1)
axes[1].set_title("the sampled anchors: positives (green) and negatives (red)", fontsize=10)
for ax in axes:
    ax.set_xlim(-40, 168)
    ax.set_ylim(168, -40)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Box coding (Faster R-CNN Eq. 2)
#
# The RPN does not predict box corners. It predicts how to move and stretch an anchor
# $(x_a, y_a, w_a, h_a)$ (centre, size) onto the box $(x, y, w, h)$:
#
# $$t_x = \frac{x - x_a}{w_a},\quad t_y = \frac{y - y_a}{h_a},\quad t_w = \log\frac{w}{w_a},\quad
#   t_h = \log\frac{h}{h_a}.$$
#
# Offsets relative to the anchor's size make the targets scale-free, and the logarithm makes "twice as wide"
# and "half as wide" symmetric. By hand: the anchor $[0, 0, 32, 32]$ has centre $(16, 16)$ and size 32×32; the
# box $[8, 4, 56, 28]$ has centre $(32, 16)$ and size 48×24. So $t = (16/32,\ 0/32,\ \log 1.5,\ \log 0.75)
# = (0.5,\ 0,\ 0.405,\ -0.288)$. The box head multiplies the same four numbers by the weights
# $(10, 10, 5, 5)$, which brings the smaller offsets of proposals that already lie close to their boxes to about
# unit scale.

# %%
anchor = np.array([[0.0, 0.0, 32.0, 32.0]])
box = np.array([[8.0, 4.0, 56.0, 28.0]])
t = encode_boxes(box, anchor)  # (1, 4) (t_x, t_y, t_w, t_h)
print("t              =", t[0], " by hand:", np.array([0.5, 0.0, np.log(1.5), np.log(0.75)]))
print("decode(t)      =", decode_boxes(t, anchor)[0])
print("t, head weights:", encode_boxes(box, anchor, weights=(10, 10, 5, 5))[0])
huge = decode_boxes(np.array([[0.0, 0.0, 10.0, 0.0]]), anchor)[0]  # t_w = 10 would be e^10 = 22026 times wider
print(f"t_w = 10 is clamped at log(1000/16) = {DEFAULT_CLAMP:.3f}: width {huge[2] - huge[0]:.1f} = 62.5 × 32")

fig, ax = plt.subplots(figsize=(4.5, 3))
draw_box(ax, anchor[0], "tab:blue", lw=2)
draw_box(ax, box[0], "tab:green", lw=2)
ax.annotate("", xy=(32, 16), xytext=(16, 16), arrowprops=dict(arrowstyle="->"))
ax.text(17, 14, "t_x · w_a = 16", fontsize=9)
ax.set_xlim(-4, 60)
ax.set_ylim(36, -4)
ax.set_aspect("equal")
ax.set_title("anchor (blue) and box (green)", fontsize=10)
plt.show()

# %% [markdown]
# Every positive anchor of the image encoded and decoded again lands on its ground-truth box, up to float
# rounding: decoding inverts encoding exactly (while no clamp is hit).

# %%
positive = np.flatnonzero(labels[0] == 1)
decoded = decode_boxes(reg_targets[0, positive], anchors[positive])  # (P, 4)
print("max |decode(encode(gt)) - gt| over", len(positive), "positives:",
      np.abs(decoded - gt[matches[positive]]).max())

# %% [markdown]
# What do the targets the RPN must learn look like over many images? The centre offsets stay within about
# ±0.35 (an anchor with IoU ≥ 0.7 cannot be far off), the log-size ratios are centred near 0, and the low-quality
# matches make the tails.

# %%
data = ShapesDataset("train", num_images=4 if SMOKE else 100, seed=0)
all_t = []
for i in range(len(data)):
    lab, tgt = rpn_targets(anchors, [data[i]["boxes"].astype(np.float64)], cfg)  # (1, T), (1, T, 4)
    all_t.append(tgt[0, lab[0] == 1])  # the positives' targets
all_t = np.concatenate(all_t)  # (P, 4)
fig, axes = plt.subplots(1, 4, figsize=(14, 2.6))
for k, (ax, name) in enumerate(zip(axes, ("t_x", "t_y", "t_w", "t_h"))):
    ax.hist(all_t[:, k], bins=30, color="tab:blue")
    ax.set_title(f"{name}: std {all_t[:, k].std():.2f}", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# **Next:** notebook 05 trains the RPN's head to predict these labels and targets, and turns its predictions
# into proposals.
