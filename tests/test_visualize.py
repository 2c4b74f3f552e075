"""Tests for tinymask/visualize.py: drawing runs headless, writes real PNGs, and draws where the masks are."""
import json

import numpy as np
import pytest
from PIL import Image

from tinymask.visualize import (blend_masks, draw_detections, instance_color, plot_loss_curves, read_log, save_figure,
                                show_ground_truth_vs_prediction, smooth)
from matplotlib.figure import Figure


def scene():
    """A grey 40x60 image with one square instance (rows 10..29, columns 5..24) and its box."""
    image = np.full((3, 40, 60), 0.5, np.float32)
    masks = np.zeros((1, 40, 60), np.uint8)
    masks[0, 10:30, 5:25] = 1
    boxes = np.array([[5.0, 10.0, 25.0, 30.0]])
    return image, boxes, np.array([1]), np.array([0.9]), masks


def render(draw, tmp_path, name="out.png"):
    """Draw on a 60x40-pixel axes filling the figure (1 figure pixel = 1 image pixel); -> (H, W, 3) uint8."""
    fig = Figure(figsize=(0.6, 0.4))
    ax = fig.add_axes((0, 0, 1, 1))
    draw(ax)
    path = tmp_path / name
    save_figure(fig, path, dpi=100)
    assert path.stat().st_size > 0
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_draw_detections_colours_the_mask_and_nothing_far_from_it(tmp_path):
    image, boxes, labels, scores, masks = scene()
    blank = render(lambda ax: draw_detections(ax, image, boxes[:0], labels[:0], scores[:0]), tmp_path, "blank.png")
    drawn = render(lambda ax: draw_detections(ax, image, boxes, labels, scores, masks, ["bg", "square"]), tmp_path)
    assert blank.shape == drawn.shape == (40, 60, 3)
    assert np.all(blank == blank[0, 0])  # just the grey image
    diff = np.abs(drawn.astype(int) - blank.astype(int)).sum(axis=2)  # (40, 60)
    assert diff[14:26, 9:21].min() > 30  # the mask's interior is tinted
    assert diff[35:, 40:].max() == 0  # far from the instance nothing changed


def test_score_threshold_hides_low_scores(tmp_path):
    image, boxes, labels, scores, masks = scene()
    blank = render(lambda ax: draw_detections(ax, image, boxes[:0], labels[:0]), tmp_path, "blank.png")
    hidden = render(lambda ax: draw_detections(ax, image, boxes, labels, scores, masks, score_threshold=0.95),
                    tmp_path)
    assert np.array_equal(hidden, blank)


def test_blend_masks_is_alpha_blending():
    image = np.zeros((2, 2, 3))
    out = blend_masks(image, np.array([[[1, 0], [0, 0]]]), [(1.0, 0.5, 0.0)], alpha=0.5)
    np.testing.assert_allclose(out[0, 0], [0.5, 0.25, 0.0])
    assert np.all(out.reshape(-1, 3)[1:] == 0)


def test_instance_colours_are_deterministic_and_distinct():
    colors = [instance_color(i) for i in range(10)]
    assert colors == [instance_color(i) for i in range(10)]
    assert len(set(colors)) == 10
    assert all(0 <= c <= 1 for rgb in colors for c in rgb)


def test_captions_name_and_score():
    image, boxes, labels, scores, masks = scene()
    ax = draw_detections(None, image, boxes, labels, scores, masks, class_names=["background", "square"])
    assert [t.get_text() for t in ax.texts] == ["square 0.90"]
    ax = draw_detections(None, image, boxes, labels)  # ground truth without names
    assert [t.get_text() for t in ax.texts] == ["class 1"]


def test_bad_shapes_are_refused():
    image, boxes, labels, scores, masks = scene()
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        draw_detections(None, image.transpose(1, 2, 0), boxes, labels)
    with pytest.raises(ValueError, match="masks must have shape"):
        draw_detections(None, image, boxes, labels, scores, masks[:, :20])


def test_ground_truth_vs_prediction(tmp_path):
    image, boxes, labels, scores, masks = scene()
    gt = {"boxes": boxes, "labels": labels, "masks": masks}
    pred = {"boxes": boxes + 1, "labels": labels, "scores": scores, "masks": masks}
    fig = show_ground_truth_vs_prediction(image, gt, pred, ["background", "square"])
    assert [ax.get_title() for ax in fig.axes] == ["ground truth (1)", "prediction (1 with score >= 0)"]
    save_figure(fig, tmp_path / "gt_pred.png")
    with Image.open(tmp_path / "gt_pred.png") as im:
        pixels = np.asarray(im.convert("RGB"))
    assert pixels.std() > 0


def write_log(path, n=50, with_lr=True, partial_last=False):
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for i in range(n):
            rec = {"iteration": 10 * i, "loss_classifier": 1.0 / (i + 1) + 0.1 * rng.random(),
                   "loss_mask": 0.7 - 0.01 * i}
            if with_lr:
                rec["lr"] = 0.02
            f.write(json.dumps(rec) + "\n")
        if partial_last:
            f.write('{"iteration": 500, "loss_cl')


def test_plot_loss_curves(tmp_path):
    log = tmp_path / "log.jsonl"
    write_log(log)
    fig = plot_loss_curves(log, tmp_path / "losses.png")
    assert (tmp_path / "losses.png").stat().st_size > 0
    loss_ax, lr_ax = fig.axes
    assert [t.get_text() for t in loss_ax.get_legend().get_texts()] == ["loss_classifier", "loss_mask", "total"]
    lines = loss_ax.get_lines()  # raw and smoothed line per series
    assert len(lines) == 6
    raw_total = lines[4].get_ydata()
    expected = [r["loss_classifier"] + r["loss_mask"] for r in read_log(log)]
    np.testing.assert_allclose(raw_total, expected)
    assert lr_ax.get_ylabel() == "learning rate"


def test_plot_loss_curves_tolerates_a_line_being_written_and_empty_logs(tmp_path):
    log = tmp_path / "log.jsonl"
    write_log(log, n=5, with_lr=False, partial_last=True)
    assert len(read_log(log)) == 5
    assert len(plot_loss_curves(log).axes) == 1
    (tmp_path / "empty.jsonl").write_text("")
    fig = plot_loss_curves(tmp_path / "empty.jsonl", tmp_path / "empty.png")
    assert fig.axes[0].texts[0].get_text() == "no loss records yet"


def test_bad_log_line_names_file_and_line(tmp_path):
    log = tmp_path / "bad.jsonl"
    log.write_text('{"iteration": 0, "loss_mask": 1.0}\nnot json\n{"iteration": 1, "loss_mask": 0.5}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl: line 2"):
        plot_loss_curves(log)


def test_smooth_is_bias_corrected():
    np.testing.assert_allclose(smooth([3.0, 3.0, 3.0]), [3.0, 3.0, 3.0])  # a constant stays constant
    np.testing.assert_allclose(smooth([1.0, 2.0], weight=0.0), [1.0, 2.0])
