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
# # 12 · The paper's ablations (Table 2), in miniature
#
# *Paper:* Mask R-CNN §4.2 "Ablation Experiments", Table 2 (a)–(e). · *Docs:* [ablations](../docs/ablations.md)
# (the full results and what they mean), [RoI extractors](../docs/layers/roi_extractors.md),
# [heads](../docs/heads.md) · *Code:* [`tinymask/training/ablations.py`](../tinymask/training/ablations.py), the command
# `tinymask ablate` · *Test:* `tests/test_ablations.py`
#
# Table 2 is where the paper shows *why* Mask R-CNN is built as it is: independent per-class sigmoid masks
# instead of a softmax over classes (b), RoIAlign instead of RoIPool (c, d), a fully convolutional mask head
# instead of an MLP (e), and FPN instead of C4 (a). `tinymask ablate` trains each variant on synthetic shapes
# with several seeds and prints the paper's tables with its figures beside ours. This notebook:
#
# 1. shows that the rows of each table are one config switch apart;
# 2. works out by hand what RoIPool's rounding does to a box at stride 16 and 32 — the effect Table 2(c, d)
#    measures;
# 3. runs Table 2(d) live at a small size (RoIPool vs RoIAlign on the stride-32 map) and draws both models'
#    masks on the same held-out image;
# 4. reads the committed full results (`docs/ablations/ablations.json`) and shows their tables and chart.
#
# Full mode trains 4 small models for 300 iterations (under 3 minutes on 2 cores); smoke mode
# (`TINYMASK_SMOKE=1`) trains them for 2.

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

import json
from pathlib import Path

from tinymask.training import ablation_report as R
from tinymask.training import ablations as A
from tinymask.data.shapes import ShapesDataset
from tinymask.weights.checkpoint import load_model
from tinymask.layers.roi_pool import round_half_away
from tinymask.model import predict
from tinymask.visualize import draw_detections

# %% [markdown]
# ## 1. Each table is one switch
#
# `R.TABLES` (`tinymask/training/ablation_report.py`) lists each table's rows, the tinymask variant playing each
# row, and the paper's numbers; `A.variant_config(variant, class_names)` is that variant's `MaskRCNNConfig`. Below, for every row, the
# config fields that differ from the table's first row. Table (a) changes the architecture (C4: stage 5 is the
# RoI head; FPN: a pyramid), the others change one field each.

# %%
names = ShapesDataset("val", 1).class_names
for key, table in R.TABLES.items():
    base = A.variant_config(table.rows[0].variant, names).to_dict()
    print(f"Table 2({key}) {table.title} (paper: {table.paper_model})")
    for row in table.rows:
        cfg = A.variant_config(row.variant, names).to_dict()
        diff = {k: cfg[k] for k in cfg if cfg[k] != base[k]}
        shown = {k: v for k, v in diff.items() if k in ("backbone", "mask_loss", "class_agnostic_mask",
                                                        "roi_extractor", "roi_mode", "mask_head")}
        extra = len(diff) - len(shown)
        print(f"   {row.label:34s} {row.variant:13s} {shown or '(the first row)'}"
              + (f" + {extra} size fields" if extra else ""))

# %% [markdown]
# The models are small (stage widths 32/64/128/256, one block per stage) and see 256×256 images, so that
# a shape of 30–130 pixels covers a few cells of the stride-16 map (16×16) and one to four of the stride-32
# map (8×8) — about what a COCO object covers in an 800-pixel image.
#
# ## 2. RoIPool's rounding, by hand
#
# RoIPool (Fast R-CNN §2.1) rounds the RoI to the feature grid, `round(x / stride)`, then splits it into bins
# whose edges are rounded again. RoIAlign (§3) keeps `x / stride` as it is and samples bilinearly. Take a box
# with x0 = 37.0 and x1 = 85.0 in image pixels: at stride 16 the RoI starts at cell round(2.3125) = 2, i.e.
# pixel 32 — 5 pixels too far left; at stride 32 at round(1.156) = 1, i.e. pixel 32 as well, and its end
# 85 / 32 = 2.66 rounds to 3 = pixel 96, 11 pixels too far right. For a mask predicted on a 28×28 grid over
# the box, a shift of 11 pixels in a 48-pixel box is 6 mask cells.

# %%
x0, x1 = 37.0, 85.0
for stride in (4, 16, 32):
    q0, q1 = round_half_away(x0 / stride) * stride, round_half_away(x1 / stride) * stride
    print(f"stride {stride:2d}: RoIPool reads pixels [{q0:5.1f}, {q1:5.1f}) for the box [{x0}, {x1}): "
          f"start off by {q0 - x0:+5.1f}, end off by {q1 - x1:+5.1f} pixels")

# The same over many random boxes of 30-130 pixels: the mean shift of an edge, in pixels and as a fraction
# of the box.
rng = np.random.default_rng(0)
size = rng.uniform(30, 130, 10000)
start = rng.uniform(0, 256 - size)
for stride in (4, 16, 32):
    shift = np.abs(round_half_away(start / stride) * stride - start)
    print(f"stride {stride:2d}: mean edge shift {shift.mean():5.2f} px = {np.mean(shift / size):6.1%} of the box")

# %% [markdown]
# The mean shift is a quarter of the stride (uniform rounding error), so it grows 8× from stride 4 (FPN's P2)
# to stride 32: that is why the paper finds the largest RoIAlign gain at stride 32 (Table 2d: +7.3 mask AP,
# +10.5 AP75) and why AP75, which needs a precise mask, gains more than AP50.
#
# ## 3. Table 2(d), live
#
# `A.ablate(setting, tables, out_dir)` trains every variant of the chosen tables once per seed (each run an
# ordinary training folder with log.jsonl and checkpoints under out_dir/runs), evaluates mask AP on
# held-out images, prints the table and writes JSON, Markdown and a bar chart. Here: Table 2(d) only, two
# seeds, short runs — the full setting (`tinymask ablate --setting full`) trains 800 iterations with three seeds.

# %%
import tempfile

OUT = Path(tempfile.mkdtemp(prefix="tinymask-ablate-"))
if SMOKE:
    setting = A.make_setting("quick", iterations=2, seeds=[0], num_train=4, num_val=2, image_size=64)
else:
    setting = A.make_setting("quick", iterations=300, seeds=[0, 1], num_train=300, num_val=40)
print(setting)
report = A.ablate(setting, ["d"], OUT, jobs=1 if SMOKE else 2, command="notebook 12")

# %% [markdown]
# Each cell is the mean over the seeds ± their standard deviation, and the Δ row the difference of the means
# ± its standard error: with two seeds and 300 iterations the error bars are wide, which is the point of
# showing them. Now both models (seed 0) on one held-out image: RoIPool's masks are blockier and shifted
# where the rounding moved the RoI.

# %%
val = ShapesDataset("val", setting.num_val, seed=0, image_size=setting.image_size,
                    difficulty=setting.difficulty)
sample = val[0]
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
H, W = sample["image"].shape[1:]
axes[0].imshow(sample["image"].transpose(1, 2, 0), extent=(0, W, H, 0))
axes[0].set_title("held-out image")
for ax, variant in zip(axes[1:], ("c5-pool", "c5")):
    params, cfg = load_model(A.run_dir(OUT, variant, setting.seeds[0]) + "/last")
    (pred,) = predict(params, cfg, [sample["image"]])
    draw_detections(ax, sample["image"], pred["boxes"], pred["labels"], pred["scores"], pred["masks"],
                    class_names=cfg.class_names, score_threshold=0.5)
    ax.set_title(f"{variant}: {'RoIPool' if 'pool' in variant else 'RoIAlign'}, stride 32")
plt.show()

# %% [markdown]
# ## 4. The full results
#
# The full setting's results are committed in `docs/ablations/` (made by `tinymask ablate --setting full`;
# [ablations](../docs/ablations.md) discusses each table). `R.format_table` prints a table of the JSON in the
# paper's layout.

# %%
results = Path("..") / "docs" / "ablations" / "ablations.json"
if not results.exists():  # the notebook was started from another folder
    results = Path(A.__file__).resolve().parents[2] / "docs" / "ablations" / "ablations.json"
full = json.loads(results.read_text())
s = full["setting"]
print(f"{full['command']}: {len(s['seeds'])} seeds x {s['iterations']} iterations, {s['difficulty']} shapes "
      f"at {s['image_size']} px, {full['minutes']:.0f} min on {full['machine']['cpus']} CPUs\n")
for key, table in full["tables"].items():
    print(R.format_table(key, table), end="\n\n")

# %%
image = plt.imread(results.with_suffix(".png"))
plt.figure(figsize=(18, 4))
plt.imshow(image)
plt.axis("off")
plt.show()

# %% [markdown]
# **Reading it.** Compare the *direction* and the *relative size* of each Δ with the paper's, not the absolute
# APs: ours are small models on synthetic shapes, the paper's ResNet-50s on COCO. Where a Δ is within about
# two standard errors of zero, the miniature cannot tell the variants apart. The
# [ablations](../docs/ablations.md) page goes through each table: where we agree with the paper, where we do
# not, and why.
