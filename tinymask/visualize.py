"""Pictures of what the model sees and says: detections drawn on an image, ground truth beside prediction, loss curves.

*Paper:* He et al., *Mask R-CNN*, ICCV 2017 — Figs. 2, 5 and 6 show exactly this kind of picture: each instance's
mask as a translucent colour fill, its box, and its class name with the score. · *Code:* `tinymask/visualize.py` ·
*Test:* `tests/test_visualize.py`

How the drawing lines up with tinymask's coordinates
----------------------------------------------------
tinymask's boxes use continuous pixel coordinates: pixel `(i, j)` covers the square `[j, j+1) x [i, i+1)` (see
`docs/conventions.md`). Matplotlib's `imshow` by default puts pixel centres at integers instead, half a pixel off. So
every image here is drawn with `extent=(0, W, H, 0)`: the image spans `[0, W] x [0, H]` with y pointing down, and a
box `(x0, y0, x1, y1)` is drawn as the rectangle with those very corners. A mask's outline is traced at level 0.5
through the pixel centres `(j + 0.5, i + 0.5)`.

The fill is computed in NumPy, not by stacking translucent layers in matplotlib: inside a mask each pixel becomes
`(1 - alpha) * image + alpha * colour` (alpha blending), so the picture is the same on every backend.

No display needed
-----------------
The figures are made with `matplotlib.figure.Figure` directly rather than through `pyplot`, so nothing here needs a
display or a GUI backend (a Figure renders to PNG with the Agg rasteriser), and figures made in a training loop are
freed like any other object instead of piling up in pyplot's list of open windows. In a notebook a returned Figure
displays itself when it is the value of the last line of a cell; with pyplot, pass your own axes:

    fig, ax = plt.subplots()
    draw_detections(ax, image, pred["boxes"], pred["labels"], pred["scores"], pred["masks"], class_names)

Functions
---------
- `draw_detections(ax, image, boxes, labels, scores=None, masks=None, class_names=None, score_threshold=0.0)`
- `show_ground_truth_vs_prediction(image, gt, pred, class_names=None)` -> Figure, two panels side by side
- `plot_loss_curves(log_jsonl_path, png_path=None)` -> Figure of a JSON-lines training log
- `save_figure(fig, path)` writes a PNG atomically
"""
from __future__ import annotations

import colorsys
import io
import json
import os

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from tinymask._files import atomic_write

#: Opacity of a mask's colour fill (0 = invisible, 1 = opaque).
MASK_ALPHA = 0.45


# ---------------------------------------------------------------------------------------------------------------
# Colours.
# ---------------------------------------------------------------------------------------------------------------

def instance_color(i: int) -> tuple[float, float, float]:
    """A bright RGB colour in [0, 1] for instance number i, the same on every run.

    The hue steps by the golden ratio's fractional part (0.618...) around the colour wheel, so neighbouring
    instances get far-apart hues and no two of the first several dozen look alike.
    """
    hue = (0.08 + 0.6180339887 * i) % 1.0
    return colorsys.hsv_to_rgb(hue, 0.85, 0.95)


# ---------------------------------------------------------------------------------------------------------------
# Detections on one image.
# ---------------------------------------------------------------------------------------------------------------

def _to_hwc(image) -> np.ndarray:
    """(3, H, W) in [0, 1] (tinymask's layout) -> (H, W, 3) float in [0, 1] (matplotlib's)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[0] != 3:
        raise ValueError(f"image must have shape (3, H, W) with values in [0, 1], got shape {image.shape}")
    return np.clip(image.transpose(1, 2, 0).astype(np.float64), 0.0, 1.0)  # (H, W, 3)


def _caption(label: int, score, class_names) -> str:
    """'circle 0.93' (or 'class 2 0.93' without names; no score for ground truth)."""
    name = class_names[label] if class_names is not None and 0 <= label < len(class_names) else f"class {label}"
    return name if score is None else f"{name} {score:.2f}"


def blend_masks(image_hwc: np.ndarray, masks: np.ndarray, colors, alpha: float = MASK_ALPHA) -> np.ndarray:
    """Paint each mask translucently: inside mask k, pixel = (1 - alpha) * pixel + alpha * colors[k].

    image_hwc: (H, W, 3) in [0, 1]; masks: (D, H, W), nonzero = inside; colors: D RGB triples. Returns (H, W, 3).
    Later masks are painted over earlier ones (the best detection first, so the best stays visible underneath).
    """
    out = image_hwc.copy()  # (H, W, 3)
    for mask, color in zip(masks, colors):
        inside = np.asarray(mask) != 0  # (H, W)
        out[inside] = (1 - alpha) * out[inside] + alpha * np.asarray(color)  # (P, 3) for the P pixels inside
    return out


def draw_detections(ax, image, boxes, labels, scores=None, masks=None, class_names=None, score_threshold=0.0):
    """Draw instances on an image: mask fills with outlines, boxes, and "name score" captions.

    ax:              a matplotlib Axes (`None`: make a new Figure with one Axes).
    image:           (3, H, W) float in [0, 1].
    boxes:           (D, 4) `(x0, y0, x1, y1)` in pixels; labels: (D,) ints (0 = background, 1.. = classes).
    scores:          (D,) or None (ground truth: no scores, nothing is filtered).
    masks:           (D, H, W) binary (nonzero = inside) or None.
    class_names:     names indexed by label (`cfg.class_names`), or None to caption "class k".
    score_threshold: instances scoring below it are not drawn.

    Instance k gets `instance_color(k)` (its rank among those drawn), so the same prediction draws the same way.
    Returns the Axes.
    """
    if ax is None:
        ax = Figure(figsize=(6, 6)).add_subplot()
    rgb = _to_hwc(image)  # (H, W, 3)
    h, w = rgb.shape[:2]
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)  # (D, 4)
    labels = np.asarray(labels).reshape(-1)  # (D,)
    keep = np.ones(len(boxes), bool) if scores is None else np.asarray(scores).reshape(-1) >= score_threshold
    boxes, labels = boxes[keep], labels[keep]
    scores = None if scores is None else np.asarray(scores).reshape(-1)[keep]
    masks = None if masks is None else np.asarray(masks)[keep]  # (D', H, W)
    colors = [instance_color(k) for k in range(len(boxes))]

    if masks is not None and len(masks):
        if masks.shape[1:] != (h, w):
            raise ValueError(f"masks must have shape (D, {h}, {w}) like the image, got {masks.shape}")
        rgb = blend_masks(rgb, masks, colors)
    ax.imshow(rgb, extent=(0, w, h, 0), interpolation="nearest")  # pixel (i, j) covers [j, j+1) x [i, i+1)
    centres_x, centres_y = np.arange(w) + 0.5, np.arange(h) + 0.5  # pixel centres, where mask values live
    for k, (box, label) in enumerate(zip(boxes, labels)):
        color = colors[k]
        if masks is not None and masks[k].any():
            ax.contour(centres_x, centres_y, (masks[k] != 0).astype(np.float32), levels=[0.5], colors=[color],
                       linewidths=1.0)
        x0, y0, x1, y1 = box
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=1.5))
        at_top = y0 < 0.06 * h  # no room above the box: put the caption just inside it
        ax.text(x0, y0, _caption(int(label), None if scores is None else float(scores[k]), class_names),
                fontsize=8, color="white", va="top" if at_top else "bottom", ha="left", clip_on=True,
                bbox=dict(facecolor=color, edgecolor="none", alpha=0.8, pad=1.0))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)  # y points down, as in the image
    ax.set_axis_off()
    return ax


def show_ground_truth_vs_prediction(image, gt, pred, class_names=None, score_threshold=0.0):
    """Two panels side by side: the ground truth (left) and the model's prediction (right). Returns the Figure.

    image: (3, H, W) in [0, 1].
    gt:    {"boxes" (G, 4), "labels" (G,), optionally "masks" (G, H, W)} — a sample's targets.
    pred:  {"boxes", "labels", "scores", optionally "masks"} — one image's entry of `model.predict`.
    class_names, score_threshold: as in `draw_detections` (the threshold applies to the prediction only).
    """
    h, w = np.shape(image)[1:]
    fig = Figure(figsize=(10, 5 * h / w + 0.6), layout="constrained")
    ax_gt, ax_pred = fig.subplots(1, 2)
    draw_detections(ax_gt, image, gt["boxes"], gt["labels"], masks=gt.get("masks"), class_names=class_names)
    ax_gt.set_title(f"ground truth ({len(gt['labels'])})")
    draw_detections(ax_pred, image, pred["boxes"], pred["labels"], pred.get("scores"), pred.get("masks"),
                    class_names, score_threshold)
    shown = int(np.sum(np.asarray(pred["scores"]) >= score_threshold)) if "scores" in pred else len(pred["labels"])
    ax_pred.set_title(f"prediction ({shown} with score >= {score_threshold:g})")
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Loss curves from a training log.
# ---------------------------------------------------------------------------------------------------------------

def show_numbers(ax, M, title, fmt="{:g}", cmap="Blues", vmin=None, vmax=None, fontsize=8):
    """A small matrix as a heat map with its values written in the cells (the notebooks' hand-checkable examples)."""
    M = np.asarray(M)
    ax.imshow(M, cmap=cmap, vmin=vmin, vmax=vmax)
    for (i, j), v in np.ndenumerate(M):
        ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=fontsize)
    ax.set_title(title, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])


def read_log(log_jsonl_path) -> list[dict]:
    """The records of a JSON-lines log, one dict per line; blank lines are skipped.

    A last line without its newline that is not valid JSON is taken to be still being written by the training loop
    and skipped; any other bad line raises ValueError naming the file and the line number.
    """
    path = os.fspath(log_jsonl_path)
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")  # a complete file ends with "\n", so its last piece is ""
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            if number == len(lines):  # unterminated last line: a write in progress
                break
            raise ValueError(f"{path}: line {number} is not valid JSON: {e}") from None
        if not isinstance(record, dict):
            raise ValueError(f"{path}: line {number} must be a JSON object, got {type(record).__name__}")
        records.append(record)
    return records


def smooth(values, weight: float = 0.9) -> np.ndarray:
    """Exponential moving average with bias correction (as Adam's moments and TensorBoard's smoothing):

        m_t = weight * m_{t-1} + (1 - weight) * v_t,   m_0 = 0,   smoothed_t = m_t / (1 - weight ** t)

    The correction divides out the pull towards the starting 0, so the first points are not dragged down.
    """
    values = np.asarray(values, dtype=np.float64)  # (T,)
    out = np.empty_like(values)
    m = 0.0
    for t, v in enumerate(values, start=1):
        m = weight * m + (1 - weight) * v
        out[t - 1] = m / (1 - weight ** t)
    return out


def _loss_series(records: list[dict]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{name: (iterations, values)} for every key starting with "loss" and for "total"; "lr" too if present.

    "total" is the record's own "loss" entry if it has one, else the sum of its loss terms.
    """
    terms = sorted({k for r in records for k in r if k.startswith("loss") and k != "loss"})
    series: dict[str, list] = {}
    for r in records:
        if "iteration" not in r:
            continue
        it = r["iteration"]
        present = [k for k in terms if isinstance(r.get(k), (int, float))]
        for k in present:
            series.setdefault(k, []).append((it, r[k]))
        if isinstance(r.get("loss"), (int, float)):
            series.setdefault("total", []).append((it, r["loss"]))
        elif present:
            series.setdefault("total", []).append((it, sum(r[k] for k in present)))
        if isinstance(r.get("lr"), (int, float)):
            series.setdefault("lr", []).append((it, r["lr"]))
    return {k: (np.array([p[0] for p in v], float), np.array([p[1] for p in v], float)) for k, v in series.items()}


def plot_loss_curves(log_jsonl_path, png_path=None, smoothing: float = 0.9):
    """Plot a training log: each loss term and their total (faint: raw; solid: smoothed), and the learning rate.

    log_jsonl_path: JSON lines, each a dict with "iteration", loss entries named "loss..." (e.g. "loss_mask"), and
                    optionally "lr" and "loss" (the total; otherwise the sum of the terms is plotted as the total).
    png_path:       if given, the figure is also written there (atomically).
    smoothing:      the weight of `smooth` (0 = no smoothing).
    Returns the Figure. A log with no loss records yet gives a figure that says so (the training loop may call
    this before its first log line).
    """
    series = _loss_series(read_log(log_jsonl_path))
    has_lr = "lr" in series
    fig = Figure(figsize=(9, 6.5 if has_lr else 5), layout="constrained")
    axes = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1]) if has_lr else [fig.add_subplot()]
    ax = axes[0]
    names = [k for k in series if k not in ("total", "lr")] + (["total"] if "total" in series else [])
    for i, name in enumerate(names):
        it, values = series[name]
        color = "black" if name == "total" else instance_color(i)
        ax.plot(it, values, color=color, alpha=0.25, linewidth=0.8)
        ax.plot(it, smooth(values, smoothing), color=color, linewidth=2.0 if name == "total" else 1.4, label=name)
    if names:
        ax.legend(loc="upper right", fontsize=8)
        if all(np.all(series[n][1] > 0) for n in names):
            ax.set_yscale("log")  # terms differ by orders of magnitude; a log axis shows each one's progress
    else:
        ax.text(0.5, 0.5, "no loss records yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("loss")
    ax.set_title(f"training losses: {os.path.basename(os.fspath(log_jsonl_path))} (smoothed {smoothing:g})")
    ax.grid(True, alpha=0.3)
    if has_lr:
        axes[1].plot(*series["lr"], color="tab:gray")
        axes[1].set_ylabel("learning rate")
        axes[1].grid(True, alpha=0.3)
    axes[-1].set_xlabel("iteration")
    if png_path is not None:
        save_figure(fig, png_path)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Saving.
# ---------------------------------------------------------------------------------------------------------------

def save_figure(fig, path, dpi: int = 100) -> None:
    """Write a figure as PNG, atomically: rendered in memory, written beside `path`, then renamed over it, so a
    reader (a browser refreshing the loss plot during training) never sees a half-written file."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    data = buffer.getvalue()
    atomic_write(path, lambda f: f.write(data))
