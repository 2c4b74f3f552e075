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
# # 07 · The box and mask heads, their targets and their losses
#
# *Papers:* He et al., *Mask R-CNN*, ICCV 2017 — §3 (the multi-task loss $L = L_{cls} + L_{box} + L_{mask}$;
# "the mask target is the intersection between an RoI and its associated ground-truth mask"; the per-pixel
# sigmoid and the average binary cross-entropy), Fig. 4 (the FPN heads), Table 2b (multinomial vs independent
# masks); Girshick, *Fast R-CNN*, ICCV 2015, §2.3 (Eq. 1: $L_{cls} = -\log p_u$; Eqs. 2–3: smooth L1).
# · *Docs:* [the RoI heads](../docs/heads.md), [losses](../docs/layers/losses.md),
# [linear, ReLU, sigmoid](../docs/layers/linear_relu_sigmoid.md),
# [transposed convolution](../docs/layers/transposed_convolution.md) · *Code:*
# [`tinymask/box_logic/mask_targets.py`](../tinymask/box_logic/mask_targets.py), [`tinymask/heads/box_head.py`](../tinymask/heads/box_head.py),
# [`tinymask/heads/mask_head.py`](../tinymask/heads/mask_head.py), [`tinymask/layers/losses.py`](../tinymask/layers/losses.py)
# · *Tests:* `tests/test_mask_targets.py`, `tests/test_losses.py`, `tests/test_model.py`
#
# What you will see:
#
# 1. a 4×4 mask target computed by hand, then RoI crops of a real image next to their 28×28 mask targets;
# 2. the shapes through the box head and the mask head, and the losses an untrained model starts from;
# 3. the per-class **sigmoid** mask loss vs the **multinomial softmax** loss on the same logits: the softmax
#    couples the classes, the sigmoid does not (Table 2b);
# 4. smooth L1 vs L1 for the box regression.

# %%
import os
SMOKE = os.environ.get("TINYMASK_SMOKE") == "1"  # CI sets TINYMASK_SMOKE=1: smaller sizes, fewer iterations

import numpy as np
import matplotlib.pyplot as plt

np.set_printoptions(precision=4, suppress=True, linewidth=120)

import dataclasses
from matplotlib.patches import Rectangle

from tinymask.box_logic.boxes import box_iou
from tinymask.config import MaskRCNNConfig
from tinymask.data.shapes import ShapesDataset
from tinymask.data.transforms import training_targets
from tinymask.layers.roi_align import roi_align_forward
from tinymask.layers.losses import smooth_l1
from tinymask.heads.mask_head import init_mask_head_params, mask_head_forward, mask_loss
from tinymask.box_logic.mask_targets import project_masks_on_boxes
from tinymask.model import init_params, train_forward
from tinymask.heads.box_head import box_head_forward, box_loss, init_box_head_params

from tinymask.visualize import show_numbers

rng = np.random.default_rng(0)
cfg = MaskRCNNConfig.preset("small")

# %% [markdown]
# ## 1. Mask targets
#
# A positive RoI's mask target is its ground-truth mask seen through the RoI, resampled to $M\times M$
# (28×28 for the FPN head). torchvision — and tinymask, `project_masks_on_boxes` — computes it with RoIAlign
# itself, on the binary mask as a one-channel image, with the same `aligned=False` convention as the features
# (notebook 06): a target is then a *soft* mask, fractional near the object's edge.
#
# By hand: an 8×8 mask holding a square on pixels 2–5 (continuous $[2, 6)$), and the RoI
# $(2, 2, 6, 6)$ that fits it exactly, $M = 4$. Each bin is one pixel wide with one sample at its centre —
# in interpolation coordinates, where pixel $j$ sits at $j$: $2.5, 3.5, 4.5, 5.5$. The last one lies halfway
# between pixel 5 (inside, 1) and pixel 6 (outside, 0) and reads 0.5. So the target's last row and column
# are 0.5 and its corner 0.25: the `aligned=False` half-pixel shift, visible in the targets.

# %%
gt_mask = np.zeros((1, 8, 8))
gt_mask[0, 2:6, 2:6] = 1  # (G, H, W): one square on pixels 2..5
box = np.array([[2.0, 2.0, 6.0, 6.0]])  # (P, 4) the RoI
target = project_masks_on_boxes(gt_mask, box, matched_idxs=np.array([0]), M=4)  # (P, M, M)
fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
show_numbers(axes[0], gt_mask[0], "gt mask (8×8), RoI dashed")
axes[0].add_patch(Rectangle((1.5, 1.5), 4, 4, fill=False, ec="red", lw=2, ls="--"))  # imshow centres pixels
show_numbers(axes[1], target[0], "target (4×4)", cmap="Greens")
plt.tight_layout()
plt.show()

# %% [markdown]
# On a real image. The RoIs are ground-truth boxes jittered at random and kept if their IoU with their box is
# at least 0.5 — positive RoIs in the sense of §3.1, the only ones that get a mask loss. The crop is the
# image resampled over the RoI with the same RoIAlign call; the target shows exactly what part of the object
# falls inside the RoI ("the intersection between an RoI and its associated ground-truth mask"), and
# nothing of the neighbours that also fall inside it.

# %%
data = ShapesDataset("val", num_images=20, seed=0)
sample = next(data[i] for i in range(len(data)) if len(data[i]["labels"]) >= 3)
gt_boxes = sample["boxes"].astype(np.float64)

rois, matched = [], []
while len(rois) < 6:  # jitter ground-truth boxes until we have six positives
    g = int(rng.integers(len(gt_boxes)))
    x0, y0, x1, y1 = gt_boxes[g]
    w, h = x1 - x0, y1 - y0
    dx, dy, sw, sh = rng.normal(0, 0.15, 4)
    box = np.array([x0 + dx * w, y0 + dy * h, x0 + dx * w + w * np.exp(sw), y0 + dy * h + h * np.exp(sh)])
    box = np.clip(box, 0, 128)
    if box_iou(box[None], gt_boxes[g][None])[0, 0] >= 0.5:
        rois.append(box)
        matched.append(g)
rois, matched = np.array(rois), np.array(matched)

targets = project_masks_on_boxes(sample["masks"], rois, matched, 28)  # (6, 28, 28) soft
image_rois = np.concatenate([np.zeros((6, 1)), rois], axis=1)  # (6, 5) all from image 0
crops, _ = roi_align_forward(sample["image"][None].astype(np.float64), image_rois, output_size=28,
                             spatial_scale=1.0, sampling_ratio=2)  # (6, 3, 28, 28)

fig = plt.figure(figsize=(15, 4.4))
grid = fig.add_gridspec(2, 8)
ax = fig.add_subplot(grid[:, :2])
ax.imshow(sample["image"].transpose(1, 2, 0), extent=(0, 128, 128, 0))
for k, (x0, y0, x1, y1) in enumerate(rois):
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=f"C{k}", lw=1.5))
    ax.text(x0, y0, str(k), color=f"C{k}", fontsize=9, va="bottom")
ax.set_title("positive RoIs (IoU ≥ 0.5 with their box)", fontsize=10)
for k in range(6):
    a = fig.add_subplot(grid[0, 2 + k])
    a.imshow(np.clip(crops[k].transpose(1, 2, 0), 0, 1))
    a.set_title(f"RoI {k}: crop", fontsize=9, color=f"C{k}")
    b = fig.add_subplot(grid[1, 2 + k])
    b.imshow(targets[k], cmap="gray", vmin=0, vmax=1)
    b.set_title(f"RoI {k}: target", fontsize=9, color=f"C{k}")
    for c in (a, b):
        c.set_xticks([])
        c.set_yticks([])
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 2. The heads
#
# The FPN box head (FPN §4.2; Mask R-CNN Fig. 4, right) flattens each 7×7 RoI feature, runs two fully
# connected layers with ReLU, and predicts $K$ class scores (background included) and $4K$ box deltas, one box
# per class. The mask head is a small FCN on 14×14 RoI features: four 3×3 convolutions with ReLU, a 2×2
# stride-2 transposed convolution to 28×28 (notebook 02), and a 1×1 convolution to $K$ masks — one per class,
# all predicted, only one trained per RoI. The `small` preset uses 64 channels and 256-wide fc layers where
# the paper uses 256 and 1024.

# %%
params = init_params(cfg, seed=0)
R = 8
box_feats = rng.standard_normal((R, cfg.fpn_channels, 7, 7)).astype(np.float32)  # (R, C, 7, 7)
mask_feats = rng.standard_normal((R, cfg.fpn_channels, 14, 14)).astype(np.float32)  # (R, C, 14, 14)
class_logits, box_regression, _ = box_head_forward(params, box_feats)
mask_logits, _ = mask_head_forward(params, mask_feats, cfg)
print(f"box head:  {box_feats.shape} -> class logits {class_logits.shape}, box deltas {box_regression.shape}")
print(f"mask head: {mask_feats.shape} -> mask logits {mask_logits.shape}\n")
for name, p in params.items():
    if name.startswith("roi_heads.") and name.endswith("weight"):
        print(f"{name:<44} {str(p.shape):>20} {p.size:>10,}")

paper = MaskRCNNConfig.preset("resnet50_fpn")  # the paper's sizes, for comparison: 256 channels, fc 1024
n_box = sum(p.size for p in init_box_head_params(256 * 7 * 7, 1024, paper.num_classes, rng).values())
n_mask = sum(p.size for p in init_mask_head_params(256, paper, rng).values())
print(f"\nat the paper's sizes (81 COCO classes in the paper, 91 ids in torchvision): box head {n_box:,}, "
      f"mask head {n_mask:,} parameters")

# %% [markdown]
# **The losses of an untrained model, predicted.** The class-score layer starts with weights of standard
# deviation 0.01, so every class logit is close to 0, the softmax is uniform, and
# $L_{cls} = -\log(1/K) = \log 4 = 1.386$ for the 4 classes of the shapes data. The RPN's objectness logits
# start near 0 as well, so its log loss is $\log 2 = 0.693$.

# %%
s = training_targets(sample)
losses, _ = train_forward(params, cfg, [s["image"]], [{k: s[k] for k in ("boxes", "labels", "masks")}],
                          np.random.default_rng(0))
for name, value in losses.items():
    print(f"{name:>18}: {float(value):.3f}")
print(f"{'log 4, log 2':>18}: {np.log(4):.3f}, {np.log(2):.3f}")

# %% [markdown]
# ## 3. Per-class sigmoid vs multinomial softmax (Table 2b)
#
# The mask head predicts one $m\times m$ mask per class. Mask R-CNN's loss applies a sigmoid to each pixel of
# **the ground-truth class's mask only** and averages the binary cross-entropy; the other classes' masks get no
# gradient. The alternative, an FCN-style per-pixel softmax over the classes (the "multinomial" row of Table
# 2b), makes the classes compete at every pixel. The paper: "this decouples mask and class prediction" and the
# softmax loses 5.5 mask AP.
#
# One pixel by hand, three masks (background, square, circle) with logits $(0, 1, 2)$, the RoI's class square,
# the pixel inside the square:
#
# - **sigmoid**: $L = -\log\sigma(1) = 0.313$; gradient $\sigma(1) - 1 = -0.269$ on the square's logit and 0
#   on the others;
# - **softmax**: $p = \mathrm{softmax}(0, 1, 2) = (0.090, 0.245, 0.665)$, $L = -\log 0.245 = 1.408$;
#   gradient $p - \text{onehot} = (0.090, -0.755, 0.665)$ — every class's logit is pushed.

# %%
cfg_softmax = dataclasses.replace(cfg, mask_loss="softmax")  # Table 2(b), "multinomial"
logits = np.array([0.0, 1.0, 2.0]).reshape(1, 3, 1, 1)  # (P, K, m, m): one RoI, three classes, one pixel
labels, target = np.array([1]), np.ones((1, 1, 1))  # the RoI is a square; the pixel is inside it
for name, c in (("sigmoid", cfg), ("softmax", cfg_softmax)):
    loss, dlogits = mask_loss(logits, labels, target, c)
    print(f"{name}: loss {float(loss):.4f}, dL/dlogits {dlogits.ravel()}")

# %% [markdown]
# Now raise the *circle's* logit at that pixel while the square's stays at 1. The sigmoid loss of a square RoI
# does not change — the circle's mask is none of its business — while the softmax loss grows: to be a good
# square mask, this pixel must also be a bad circle mask. That coupling is what Table 2b measures.

# %%
z = np.linspace(-4, 6, 101)
curves = {name: [float(mask_loss(np.array([0.0, 1.0, zc]).reshape(1, 3, 1, 1), labels, target, c)[0])
                 for zc in z] for name, c in (("sigmoid (Mask R-CNN)", cfg), ("softmax (multinomial)", cfg_softmax))}
fig, ax = plt.subplots(figsize=(6, 3.2))
for name, values in curves.items():
    ax.plot(z, values, label=name)
ax.set_xlabel("circle logit at a pixel of a square RoI")
ax.set_ylabel("mask loss at that pixel")
ax.legend()
plt.show()

# %% [markdown]
# The same on whole 28×28 masks: random logits for the six RoIs above, their targets, and the size of the
# gradient each class's mask receives. The sigmoid sends gradient into one mask per RoI — the RoI's class — the
# softmax into all of them.

# %%
roi_labels = sample["labels"][matched]  # (P,) the class of each RoI's box
logits = rng.standard_normal((6, cfg.num_classes, 28, 28))  # (P, K, 28, 28)
fig, axes = plt.subplots(2, cfg.num_classes, figsize=(11, 5.6))
for row, (name, c) in enumerate((("sigmoid", cfg), ("softmax", cfg_softmax))):
    loss, dlogits = mask_loss(logits, roi_labels, targets, c)
    for k in range(cfg.num_classes):
        axes[row, k].imshow(np.abs(dlogits[0, k]), cmap="Reds", vmin=0, vmax=np.abs(dlogits).max())
        axes[row, k].set_title(f"{name}: |dL/d mask {cfg.class_names[k]}|", fontsize=9)
        axes[row, k].axis("off")
plt.suptitle(f"RoI 0, a {cfg.class_names[roi_labels[0]]}", fontsize=11)
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. Smooth L1 vs L1
#
# The box regression loss of Fast R-CNN (Eq. 3) is the smooth L1, with a threshold $\beta$:
#
# $$\mathrm{smooth}_{L_1}(x) = \begin{cases} 0.5\,x^2/\beta & |x| < \beta \\ |x| - 0.5\,\beta &
#   \text{otherwise}\end{cases}$$
#
# Far from the target it is L1: a constant gradient of ±1, so a badly placed box (an outlier) cannot blow up the
# gradient as L2 would ("less sensitive to outliers", Fast R-CNN §2.3). Near the target it is quadratic: the
# gradient $x/\beta$ fades to 0, where L1's would flip between −1 and +1. Fast R-CNN uses $\beta = 1$,
# torchvision $\beta = 1/9$ for the RPN and the box head; $\beta = 0$ is plain L1. By hand, at $x = 0.05$ with
# $\beta = 1/9$: $0.5\cdot 0.05^2\cdot 9 = 0.01125$ and gradient $0.45$; L1 gives $0.05$ and $1$.

# %%
x = np.linspace(-2, 2, 401)
fig, axes = plt.subplots(1, 2, figsize=(11, 3.4))
for beta, label in ((1.0, "β = 1 (Fast R-CNN)"), (1 / 9, "β = 1/9 (torchvision)"), (0.0, "β = 0: L1")):
    values = [float(smooth_l1(np.array([v]), np.zeros(1), beta=beta)[0]) for v in x]
    grads = [float(smooth_l1(np.array([v]), np.zeros(1), beta=beta)[1][0]) for v in x]
    axes[0].plot(x, values, label=label)
    axes[1].plot(x, grads, label=label)
axes[0].plot(x, 0.5 * x ** 2, "k:", label="0.5 x² (L2)")
axes[0].set_ylim(0, 2.2)
axes[0].set_title("loss")
axes[1].set_title("gradient")
for ax in axes:
    ax.set_xlabel("prediction − target")
    ax.legend(fontsize=8)
plt.tight_layout()
plt.show()
loss, grad = smooth_l1(np.array([0.05]), np.zeros(1), beta=1 / 9)
print(f"x = 0.05, β = 1/9: loss {float(loss):.5f}, gradient {grad[0]:.2f}")

# %% [markdown]
# In the box head, the loss is taken on the deltas of **the RoI's ground-truth class only**, and on positive RoIs
# only (Fast R-CNN Eq. 1, the $[u \ge 1]$ factor): of the $4K$ deltas the head predicts per RoI, four get a
# gradient, and a background RoI's get none. `box_loss` for three RoIs — classes 2, background and 3 — shows
# which of the $3\times 16$ deltas are trained:

# %%
labels3 = np.array([2, 0, 3])
logits3 = rng.standard_normal((3, cfg.num_classes))
regression3 = rng.standard_normal((3, 4 * cfg.num_classes))
reg_targets3 = rng.standard_normal((3, 4))
loss_cls, loss_box, dlogits3, dregression3 = box_loss(logits3, regression3, labels3, reg_targets3, cfg)
fig, ax = plt.subplots(figsize=(8, 2))
ax.imshow(dregression3 != 0, cmap="Greens", aspect="auto")
ax.set_yticks(range(3), [f"RoI {i}: class {l}" for i, l in enumerate(labels3)])
ax.set_xticks(range(0, 16, 4), [f"class {k}: t_x..t_h" for k in range(4)])
ax.set_title("which deltas get a gradient", fontsize=10)
plt.show()
print(f"loss_classifier {float(loss_cls):.3f} (every RoI), loss_box_reg {float(loss_box):.3f} (positives only)")

# %% [markdown]
# **Next:** notebook 09 runs the trained heads at inference time, and scores them with COCO AP.
