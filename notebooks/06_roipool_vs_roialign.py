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
# # 06 · RoIPool vs RoIAlign
#
# *Papers:* Girshick, *Fast R-CNN*, ICCV 2015, §2.1 (RoI max pooling); He et al., *Mask R-CNN*, ICCV 2017, §3
# "RoIAlign", Fig. 3 and Table 2c/2d (RoIPool vs RoIWarp vs RoIAlign, max vs average, at stride 16 and 32);
# RoIWarp is from Dai et al.'s MNC, CVPR 2016. · *Docs:* [RoI feature extractors](../docs/layers/roi_extractors.md),
# [conventions](../docs/conventions.md) (continuous coordinates and the `aligned` flag) · *Code:* [`tinymask/layers/roi_pool.py`](../tinymask/layers/roi_pool.py),
# [`tinymask/layers/roi_warp.py`](../tinymask/layers/roi_warp.py),
# [`tinymask/layers/roi_align.py`](../tinymask/layers/roi_align.py)
# · *Tests:* `tests/test_roi_pool.py`, `tests/test_roi_warp.py`, `tests/test_roi_align.py` (the 5×5 example
# below is their golden case, after detectron2's)
#
# The RoI heads need a fixed-size feature grid (7×7 for the box head, 14×14 for the mask head) for every box,
# whatever its size and position. Fast R-CNN's **RoIPool** gets it by rounding twice; Mask R-CNN's
# **RoIAlign** does not round at all. The paper's words: RoIPool's quantizations "introduce misalignments
# between the RoI and the extracted features. While this may not impact classification, which is robust to
# small translations, it has a large negative effect on predicting pixel-accurate masks."
#
# What you will see:
#
# 1. the roundings drawn on a feature-map grid: RoIPool's bins, RoIWarp's, and RoIAlign's sample points,
#    with and without the half-pixel `aligned` shift;
# 2. a 5×5 example whose outputs you can verify by hand, for all of them;
# 3. where the gradients go: `roi_pool_backward` vs `roi_align_backward`, side by side;
# 4. what the misalignment does to a mask: ground-truth masks pooled from a coarse map with each method and
#    pasted back — a small, training-free version of Table 2c/2d.

# %%
import os
SMOKE = os.environ.get("TINYMASK_SMOKE") == "1"  # CI sets TINYMASK_SMOKE=1: smaller sizes, fewer iterations

import numpy as np
import matplotlib.pyplot as plt

np.set_printoptions(precision=4, suppress=True, linewidth=120)

from matplotlib.patches import Rectangle

from tinymask.data.shapes import ShapesDataset
from tinymask.box_logic.bilinear import bilinear_resize
from tinymask.layers.roi_align import (linear_interp_1d, roi_align_backward, roi_align_forward, roi_bins_1d,
                                       sample_coords)
from tinymask.layers.roi_pool import pool_bin_edges, roi_pool_backward, roi_pool_forward, round_half_away
from tinymask.layers.roi_warp import quantize_rois, roi_warp_backward, roi_warp_forward
from tinymask.box_logic.mask_paste import binarize, paste_masks_in_image
from tinymask.visualize import show_numbers

rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. The roundings, drawn
#
# A 128×128 image at stride 16 gives an 8×8 feature map; cell $j$ covers image pixels $[16j, 16j + 16)$, so in
# feature-map units a box is simply divided by 16. Our box is $(22, 30, 91, 77)$ in image pixels, i.e.
# $(1.375, 1.875, 5.6875, 4.8125)$ in cells. We ask for 2×2 bins, as in the paper's Fig. 3.
#
# - **RoIPool** rounds the box to whole cells ($[x/16]$, half away from zero): $(1, 2, 6, 5)$, and counts
#   cells inclusively (Fast R-CNN's "+1"), so it covers cells 1–6 across and 2–5 down — a region 6 cells wide
#   where the box is 4.3. Then it splits that into 2×2 bins and rounds each bin *outwards* to whole cells
#   (neighbouring bins may share a row), and takes the max over each bin's cells.
# - **RoIWarp** rounds the box the same way but then samples it bilinearly, like RoIAlign.
# - **RoIAlign** keeps the box as it is, splits it into exactly equal bins, and reads
#   `sampling_ratio`² = 2×2 regularly spaced points per bin by bilinear interpolation from the four nearest
#   cells, then averages them.
#
# Bilinear interpolation reads cell $j$ at coordinate $j$, but the cell's centre in continuous coordinates is
# $j + 0.5$. With `aligned=False` (the paper's original code, torchvision's default) the scaled box is used as is,
# so every sample lands half a cell right of and below where it should; `aligned=True` (detectron2) subtracts
# 0.5 after scaling and the samples sit where the box says. All geometry below comes from the library's own
# helpers (`round_half_away`, `pool_bin_edges`, `roi_bins_1d`, `sample_coords`, `linear_interp_1d`).

# %%
stride, fmap = 16, 8  # an 8×8 map of a 128×128 image
box = np.array([22.0, 30.0, 91.0, 77.0])  # (x0, y0, x1, y1) in image pixels
scale, bins, ratio = 1 / stride, 2, 2  # spatial_scale, output 2×2, 2×2 samples per bin
print("box in cells:", box * scale)
q = round_half_away(box * scale).astype(int)  # RoIPool's rounded box, in cells
print("RoIPool's rounded box:", q, "-> cells", q[0], "to", q[2], "across and", q[1], "to", q[3], "down")


def draw_grid(ax, title):
    for j in range(fmap + 1):
        ax.axhline(j, color="0.8", lw=0.8)
        ax.axvline(j, color="0.8", lw=0.8)
    x0, y0, x1, y1 = box * scale
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="black", lw=2, ls="--"))
    ax.set_xlim(0, fmap)
    ax.set_ylim(fmap, 0)
    ax.set_aspect("equal")
    ax.set_xticks(range(fmap + 1))
    ax.set_yticks(range(fmap + 1))
    ax.tick_params(labelsize=7)
    ax.set_title(title, fontsize=10)


colors = ["tab:red", "tab:blue", "tab:green", "tab:orange"]
fig, axes = plt.subplots(1, 4, figsize=(17, 4.6))

# RoIPool: rounded box, bins rounded outwards to whole cells
draw_grid(axes[0], "RoIPool: max over whole cells")
hs, he = pool_bin_edges(q[1], max(q[3] - q[1] + 1, 1), bins, fmap)  # (2,) first and one-past-last row
ws, we = pool_bin_edges(q[0], max(q[2] - q[0] + 1, 1), bins, fmap)
for p in range(bins):
    for r in range(bins):
        axes[0].add_patch(Rectangle((ws[r], hs[p]), we[r] - ws[r], he[p] - hs[p], color=colors[p * bins + r],
                                    alpha=0.25))
        axes[0].add_patch(Rectangle((ws[r], hs[p]), we[r] - ws[r], he[p] - hs[p], fill=False,
                                    ec=colors[p * bins + r], lw=1.5))


def draw_bilinear(ax, lo_hi_x, lo_hi_y, scale_, aligned, title):
    """Bins and sample points of RoIAlign on the box lo_hi (image units times scale_), in continuous cells."""
    draw_grid(ax, title)
    sy, bh, gh = roi_bins_1d(*lo_hi_y, scale_, bins, ratio, aligned)
    sx, bw, gw = roi_bins_1d(*lo_hi_x, scale_, bins, ratio, aligned)
    for p in range(bins):
        for r in range(bins):
            # interpolation coordinates put cell j at j; continuous coordinates put its centre at j + 0.5
            ax.add_patch(Rectangle((sx + r * bw + 0.5, sy + p * bh + 0.5), bw, bh, fill=False,
                                   ec=colors[p * bins + r], lw=1.5))
            ys = [sample_coords(sy, bh, gh, p, i) for i in range(gh)]
            xs = [sample_coords(sx, bw, gw, r, i) for i in range(gw)]
            for ty in ys:
                for tx in xs:
                    ax.plot(tx + 0.5, ty + 0.5, "o", color=colors[p * bins + r], ms=5)
    return sx, bw, gw, sy, bh, gh


qbox = quantize_rois(np.array([[0, *box]]), scale)[0, 1:]  # RoIWarp hands the rounded box to RoIAlign
draw_bilinear(axes[1], (qbox[0], qbox[2]), (qbox[1], qbox[3]), 1.0, False, "RoIWarp: rounded box, bilinear")
draw_bilinear(axes[2], (box[0], box[2]), (box[1], box[3]), scale, False, "RoIAlign, aligned=False")
sx, bw, gw, sy, bh, gh = draw_bilinear(axes[3], (box[0], box[2]), (box[1], box[3]), scale, True,
                                       "RoIAlign, aligned=True")

# one sample's bilinear interpolation: its four neighbouring cell centres and their weights
ty, tx = sample_coords(sy, bh, gh, 1, 1), sample_coords(sx, bw, gw, 1, 1)
y_lo, y_hi, wy_lo, wy_hi = linear_interp_1d(ty, fmap)
x_lo, x_hi, wx_lo, wx_hi = linear_interp_1d(tx, fmap)
for cy, wy in ((y_lo, wy_lo), (y_hi, wy_hi)):
    for cx, wx in ((x_lo, wx_lo), (x_hi, wx_hi)):
        axes[3].plot([tx + 0.5, cx + 0.5], [ty + 0.5, cy + 0.5], color="0.3", lw=0.8)
        axes[3].text(cx + 0.5, cy + 0.5, f"{wy * wx:.2f}", fontsize=7, ha="center", va="center",
                     bbox=dict(fc="white", ec="0.5", pad=1))
plt.tight_layout()
plt.show()

# %% [markdown]
# The dashed box is the RoI. RoIPool's bins (filled) cover whole cells of a box whose top-left corner moved by
# up to 0.4 cell and whose right and bottom edges moved by more than a cell, the inclusive "+1" included; for
# other sizes the bins come out unequal, and neighbouring bins share a row or column. RoIWarp samples evenly, but inside the rounded box. RoIAlign with `aligned=False`
# keeps the box's size but is shifted half a cell right and down. RoIAlign with `aligned=True` samples exactly
# inside the box; the boxed numbers are the bilinear weights of one sample's four neighbouring cells (they sum
# to 1). At stride 16, half a cell is 8 image pixels.
#
# ## 2. A 5×5 example to verify by hand
#
# Features `np.arange(25).reshape(5, 5)`: cell $(y, x)$ holds $5y + x$, a *linear* function, so bilinear
# interpolation reproduces it exactly — the value at any point $(y, x)$ is $5y + x$. The box is
# $(1, 1, 3, 3)$: in continuous coordinates it covers pixels 1 and 2 in each direction. Output 4×4,
# spatial scale 1, adaptive sampling (`sampling_ratio=0`: $\lceil 2 / 4\rceil = 1$ sample per bin).
#
# - **RoIAlign, `aligned=True`**: the box starts at $1 - 0.5 = 0.5$ in interpolation coordinates and is 2 long;
#   bins of 0.5, one sample at each bin's centre: $0.75, 1.25, 1.75, 2.25$ on each axis. Top-left:
#   $5\cdot 0.75 + 0.75 = 4.5$; moving one bin right adds 0.5, one bin down adds 2.5.
# - **RoIAlign, `aligned=False`**: the samples sit at $1.25, 1.75, 2.25, 2.75$, half a pixel further on both
#   axes, so every value is larger by $5\cdot 0.5 + 0.5 = 3$: top-left $7.5$.
# - **RoIPool**: the box rounds to cells 1…3 *inclusive* (3 cells — one more than the box covers); 4 bins of
#   $3/4$ cell, rounded outwards: rows $\{1\}, \{1, 2\}, \{2, 3\}, \{3\}$ and the same columns. The max of
#   $5y + x$ over a bin is at its bottom-right cell: rows $1, 2, 3, 3$ → top-left $5 + 1 = 6$, bottom-right
#   $5\cdot 3 + 3 = 18$. It reads row 3, which the box does not cover at all.
# - **RoIWarp**: the box is already on whole pixels, so rounding changes nothing, and RoIWarp equals RoIAlign
#   with `aligned=False`.

# %%
features = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)  # (N, C, H, W): value 5y + x
rois = np.array([[0, 1.0, 1.0, 3.0, 3.0]])  # (K, 5) [batch index, x0, y0, x1, y1]
kw = dict(output_size=4, spatial_scale=1.0)
outputs = {
    "RoIAlign aligned=True": roi_align_forward(features, rois, **kw, sampling_ratio=0, aligned=True),
    "RoIAlign aligned=False": roi_align_forward(features, rois, **kw, sampling_ratio=0, aligned=False),
    "RoIPool": roi_pool_forward(features, rois, **kw),
    "RoIWarp": roi_warp_forward(features, rois, **kw, sampling_ratio=0),
}
fig, axes = plt.subplots(1, 5, figsize=(16, 3.4))
show_numbers(axes[0], features[0, 0], "features: 5y + x")
for ax, (name, (out, _)) in zip(axes[1:], outputs.items()):
    show_numbers(ax, out[0, 0], name, cmap="Greens")
    print(f"{name:>23}:", out[0, 0].tolist())
plt.tight_layout()
plt.show()

# %% [markdown]
# Move the box by a fraction of a pixel, to $(1.4, 1.4, 3.4, 3.4)$. RoIAlign follows it: every value grows by
# $6\cdot 0.4 = 2.4$. RoIPool and RoIWarp round the box back to $(1, 1, 3, 3)$ and do not move at all — the
# quantization: any box within half a cell of another gives the same features.

# %%
moved = np.array([[0, 1.4, 1.4, 3.4, 3.4]])
for name, f in [("RoIAlign aligned=True", lambda r: roi_align_forward(features, r, **kw, sampling_ratio=0, aligned=True)),
                ("RoIPool", lambda r: roi_pool_forward(features, r, **kw)),
                ("RoIWarp", lambda r: roi_warp_forward(features, r, **kw, sampling_ratio=0))]:
    print(f"{name:>22}: change of the output when the box moves by 0.4 px:",
          np.unique(np.round(f(moved)[0] - f(rois)[0], 6)))

# %% [markdown]
# ## 3. Where the gradients go
#
# Backward, both layers send the upstream gradient back to the cells the forward read. RoIPool sends each
# output's gradient to the single cell that won its max; RoIAlign splits it among the four neighbours of each
# sample, with the bilinear weights, divided by the number of samples. With $d\mathrm{out} = 1$ everywhere on
# the 5×5 example, both send a total of 16 (one per output), but differently:
#
# - **RoIAlign, `aligned=True`**: along one axis the samples $0.75, 1.25, 1.75, 2.25$ give cell 0 a weight
#   $0.25$, cells 1 and 2 $0.75 + 0.75 + 0.25 = 1.75$ each, cell 3 $0.25$. The 2-D gradient is the outer
#   product of $(0.25, 1.75, 1.75, 0.25, 0)$ with itself: $3.0625$ on cells $(1, 1) … (2, 2)$.
# - **RoIPool**: the winners are each bin's bottom-right cell, rows $1, 2, 3, 3$: cell 3 wins twice along each
#   axis, so cell $(3, 3)$ collects $2\cdot 2 = 4$ — all of it outside the box.

# %%
dout = np.ones((1, 1, 4, 4))
_, c_align = roi_align_forward(features, rois, **kw, sampling_ratio=0, aligned=True)
_, c_pool = roi_pool_forward(features, rois, **kw)
d_align, _ = roi_align_backward(dout, c_align)  # (1, 1, 5, 5); the RoIs get no gradient (None)
d_pool, _ = roi_pool_backward(dout, c_pool)
fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
show_numbers(axes[0], d_align[0, 0], f"roi_align_backward (sum {d_align.sum():g})", fmt="{:.4g}", cmap="Reds")
show_numbers(axes[1], d_pool[0, 0], f"roi_pool_backward (sum {d_pool.sum():g})", cmap="Reds")
for ax in axes:  # the box (1, 1, 3, 3) in imshow's pixel-centred axes
    ax.add_patch(Rectangle((0.5, 0.5), 2, 2, fill=False, ec="black", lw=2, ls="--"))
plt.tight_layout()
plt.show()

# %% [markdown]
# On a smooth random 16×16 feature map with two boxes and 7×7 outputs: RoIPool's gradient is a scatter of
# winning cells (it depends on the feature values, and moves when they change); RoIWarp's and RoIAlign's are
# smooth footprints that do not depend on the features at all (the average is linear in them) — RoIWarp's on the
# rounded box, RoIAlign's on the box itself.

# %%
smooth = bilinear_resize(rng.standard_normal((1, 1, 4, 4)), (16, 16))  # (1, 1, 16, 16) a smooth random map
boxes = np.array([[0, 1.3, 2.6, 7.9, 9.2], [0, 8.6, 5.3, 14.4, 14.7]])  # in cells (spatial scale 1)
dout = np.ones((2, 1, 7, 7))
grads = {
    "RoIPool": roi_pool_backward(dout, roi_pool_forward(smooth, boxes, output_size=7, spatial_scale=1.0)[1])[0],
    "RoIWarp": roi_warp_backward(dout, roi_warp_forward(smooth, boxes, output_size=7, spatial_scale=1.0,
                                                        sampling_ratio=2)[1])[0],
    "RoIAlign aligned=True": roi_align_backward(dout, roi_align_forward(smooth, boxes, output_size=7,
                                                                       spatial_scale=1.0, sampling_ratio=2,
                                                                       aligned=True)[1])[0],
}
fig, axes = plt.subplots(1, 4, figsize=(16, 4))
axes[0].imshow(smooth[0, 0], extent=(0, 16, 16, 0), cmap="viridis")
axes[0].set_title("features", fontsize=10)
for ax, (name, g) in zip(axes[1:], grads.items()):
    ax.imshow(g[0, 0], extent=(0, 16, 16, 0), cmap="Reds")
    ax.set_title(f"gradient of {name}", fontsize=10)
for ax in axes:
    for _, x0, y0, x1, y1 in boxes:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="black", lw=1.5, ls="--"))
plt.tight_layout()
plt.show()

# %% [markdown]
# ## 4. What misalignment does to a mask
#
# A training-free experiment in the spirit of Table 2c/2d. Take the ground-truth masks of shapes images and
# make a stride-$s$ "feature map" of each: the fraction of every $s\times s$ cell that the mask covers (a map
# that is exactly aligned with the image, cell $j$ covering pixels $[sj, sj + s)$). Pool a 28×28 grid from it
# over the object's own box with each RoI method, paste the grid back into the image the way inference does
# (`paste_masks_in_image`, then threshold at 0.5), and compare with the mask we started from. A perfect pooler
# loses only what the coarse map lost; every misalignment shows as a lower IoU.

# %%
M = 28  # the mask head's resolution
methods = {  # name -> f(features, rois, spatial_scale) -> (R, C, M, M)
    "RoIPool (max)": lambda F, r, sc: roi_pool_forward(F, r, output_size=M, spatial_scale=sc)[0],
    "RoIWarp (max)": lambda F, r, sc: roi_warp_forward(F, r, output_size=M, spatial_scale=sc, sampling_ratio=2,
                                                      mode="max")[0],
    "RoIWarp (avg)": lambda F, r, sc: roi_warp_forward(F, r, output_size=M, spatial_scale=sc, sampling_ratio=2)[0],
    "RoIAlign (max), aligned=False": lambda F, r, sc: roi_align_forward(F, r, output_size=M, spatial_scale=sc,
                                                                       sampling_ratio=2, mode="max")[0],
    "RoIAlign (avg), aligned=False": lambda F, r, sc: roi_align_forward(F, r, output_size=M, spatial_scale=sc,
                                                                       sampling_ratio=2)[0],
    "RoIAlign (avg), aligned=True": lambda F, r, sc: roi_align_forward(F, r, output_size=M, spatial_scale=sc,
                                                                      sampling_ratio=2, aligned=True)[0],
}


def coverage_map(masks, s):
    """(G, H, W) binary masks -> (G, 1, H/s, W/s): the fraction of each s×s cell that each mask covers."""
    G, H, W = masks.shape
    return masks.reshape(G, H // s, s, W // s, s).mean(axis=(2, 4))[:, None].astype(np.float64)


def pooled_and_pasted(method, masks, boxes, s):
    """Pool each mask's coverage map over its own box and paste the M×M grid back: (G, H, W) bool."""
    rois = np.concatenate([np.arange(len(boxes))[:, None], boxes], axis=1)  # mask g is image g of the batch
    grid = methods[method](coverage_map(masks, s), rois, 1.0 / s)  # (G, 1, M, M)
    return binarize(paste_masks_in_image(grid[:, 0], boxes, masks.shape[1:]))


def centroid(m):
    ys, xs = np.nonzero(m)
    return np.array([xs.mean() + 0.5, ys.mean() + 0.5]) if len(xs) else np.array([np.nan, np.nan])


data = ShapesDataset("val", num_images=6 if SMOKE else 100, seed=0)
strides = (4, 8, 16)
ious = {(m, s): [] for m in methods for s in strides}
shifts = {m: [] for m in methods}  # centroid of the pasted mask minus the true one, at stride 16
for i in range(len(data)):
    sample = data[i]
    masks, boxes = sample["masks"].astype(bool), sample["boxes"].astype(np.float64)
    for s in strides:
        for m in methods:
            pasted = pooled_and_pasted(m, masks, boxes, s)  # (G, H, W)
            inter = (pasted & masks).sum(axis=(1, 2))
            union = (pasted | masks).sum(axis=(1, 2))
            ious[m, s] += list(inter / union)
            if s == 16:
                shifts[m] += [centroid(p) - centroid(g) for p, g in zip(pasted, masks)]

n = len(ious[next(iter(ious))])
print(f"{n} instances; mask IoU of the pasted mask with the true one (mean, and % of instances >= 0.75)\n")
print(f"{'method':<30}" + "".join(f"{f'stride {s}':>18}" for s in strides))
for m in methods:
    print(f"{m:<30}" + "".join(f"{np.mean(ious[m, s]):10.3f} {np.mean(np.array(ious[m, s]) >= 0.75):6.0%} "
                               for s in strides))

# %% [markdown]
# The coarser the map, the more the roundings cost, and at every stride the ranking is the paper's. Its
# Table 2c (ResNet-50-C4, stride 16) reads, in mask AP: RoIPool 26.9, RoIWarp 27.2 (max) and 27.1 (avg),
# RoIAlign 30.2 (max) and 30.3 (avg) — max or average hardly matters, alignment does; at stride 32 (Table 2d)
# RoIAlign gains 7.3 AP over RoIPool.
#
# `aligned=False` does much worse than `aligned=True` in this experiment, yet the paper's RoIAlign *was*
# `aligned=False`. The difference is in the kind of error. Here is where each method moves the mask's centre of
# mass, instance by instance, at stride 16:

# %%
show = ["RoIPool (max)", "RoIWarp (avg)", "RoIAlign (avg), aligned=False", "RoIAlign (avg), aligned=True"]
fig, axes = plt.subplots(1, 4, figsize=(16, 4), sharex=True, sharey=True)
for ax, m in zip(axes, show):
    d = np.array(shifts[m])
    ax.scatter(d[:, 0], d[:, 1], s=8, alpha=0.6)
    ax.axhline(0, color="0.7", lw=0.8)
    ax.axvline(0, color="0.7", lw=0.8)
    spread = np.sqrt(np.nanvar(d[:, 0]) + np.nanvar(d[:, 1]))  # scatter around the mean shift
    ax.set_title(f"{m}\nmean shift ({np.nanmean(d[:, 0]):+.1f}, {np.nanmean(d[:, 1]):+.1f}) px, "
                 f"scatter {spread:.1f} px", fontsize=9)
    ax.set_xlabel("centroid shift x (px)")
axes[0].set_ylabel("centroid shift y (px)")
axes[0].set_xlim(-12, 12)
axes[0].set_ylim(12, -12)
plt.tight_layout()
plt.show()

# %% [markdown]
# `aligned=False` moves every mask by about the same amount, several pixels up and to the left (its samples
# read half a cell — 8 pixels — further down and right, and that content is pasted where the box starts), and
# beyond that constant it scatters no more than `aligned=True`, whose scatter is what the coarse map itself
# loses. A network whose features and mask targets are computed the same way learns to absorb a constant
# offset, which is why the original RoIAlign worked. RoIPool and RoIWarp shift the masks on average too, but
# scatter much more around that mean: the rounding error depends on where each box falls between the cells,
# differently for every box, and nothing learned once can undo it. The `aligned=True` fix (detectron2) removes
# the constant offset as well, so nothing needs to be learned.
#
# One instance, at stride 16: the true mask's outline in white, each method's pasted mask filled.

# %%
sample = data[0]
masks, boxes = sample["masks"].astype(bool), sample["boxes"].astype(np.float64)
g = int(np.argmax(masks.sum(axis=(1, 2))))  # the largest instance
fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
for ax, m in zip(axes, show):
    pasted = pooled_and_pasted(m, masks, boxes, 16)[g]
    iou = (pasted & masks[g]).sum() / (pasted | masks[g]).sum()
    ax.imshow(sample["image"].transpose(1, 2, 0), extent=(0, 128, 128, 0))
    ax.imshow(np.ma.masked_where(~pasted, pasted), extent=(0, 128, 128, 0), cmap="autumn", alpha=0.55)
    ax.contour(np.arange(128) + 0.5, np.arange(128) + 0.5, masks[g], levels=[0.5], colors="white",
               linewidths=1.5)
    x0, y0, x1, y1 = boxes[g]
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="black", lw=1, ls="--"))
    pad = 10
    ax.set_xlim(x0 - pad, x1 + pad)
    ax.set_ylim(y1 + pad, y0 - pad)
    ax.set_title(f"{m}: IoU {iou:.2f}", fontsize=10)
plt.tight_layout()
plt.show()

# %% [markdown]
# **Take-aways.** RoIPool rounds the box and its bins to whole cells, so its features jump between boxes a
# fraction of a cell apart and its gradient lands on single winning cells; RoIWarp removes only the second
# rounding; RoIAlign removes both, with bilinear sampling and a gradient spread smoothly over the box. For
# classification the difference is small; for a 28×28 mask pasted back at stride 16 it is most of the
# boundary.
#
# **Next:** notebook 07 feeds these RoI features to the box and mask heads and their losses.
