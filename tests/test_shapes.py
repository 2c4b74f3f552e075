"""Tests for tinymask/data/shapes.py: determinism, random access, disjoint splits, the sample format, occlusion,
tight boxes, class balance, the COCO ground truth, the hard variant, and the shape formulas on hand examples."""
import json

import numpy as np
import pytest

from tinymask.data.shapes import ShapesDataset
from tinymask.data import check_sample
from tinymask.data import shapes as S
from tinymask.evaluation.rle import rle_decode

KEYS = ("image", "boxes", "labels", "masks", "iscrowd")


def same_sample(a, b):
    return a["image_id"] == b["image_id"] and all(np.array_equal(a[k], b[k]) for k in KEYS)


def test_same_seed_same_arrays_and_different_seeds_differ():
    a, b, c = ShapesDataset("train", 5, seed=3), ShapesDataset("train", 5, seed=3), ShapesDataset("train", 5, seed=4)
    for i in range(5):
        assert same_sample(a[i], b[i])
        assert not np.array_equal(a[i]["image"], c[i]["image"])


def test_any_index_alone_equals_the_same_index_in_sequence():
    in_sequence = [sample for sample in ShapesDataset("val", 12, seed=1)]  # iteration: 0, 1, ..., 11
    assert len(in_sequence) == 12
    for i in (11, 0, 7, 3):  # out of order, each from a fresh dataset
        assert same_sample(ShapesDataset("val", 12, seed=1)[i], in_sequence[i])
    assert same_sample(ShapesDataset("val", 12, seed=1)[-1], in_sequence[11])


def test_splits_are_disjoint():
    images = {split: [ShapesDataset(split, 20, seed=0)[i]["image"] for i in range(20)]
              for split in ("train", "val", "test")}
    for s1, s2 in (("train", "val"), ("train", "test"), ("val", "test")):
        for a in images[s1]:
            assert not any(np.array_equal(a, b) for b in images[s2])


@pytest.mark.parametrize("difficulty", ["easy", "hard"])
def test_format_ranges_and_occlusion(difficulty):
    ds = ShapesDataset("train", 40, seed=0, image_size=96, difficulty=difficulty)
    k = len(ds.class_names) - 1
    assert ds.class_names[0] == "background" and k == (3 if difficulty == "easy" else 6)
    config = S.DIFFICULTIES[difficulty]
    for i in range(len(ds)):
        s = ds[i]
        check_sample(s, num_classes=k)  # keys, dtypes, shapes, image in [0, 1], labels in 1..K
        g = s["labels"].shape[0]
        assert s["image"].shape == (3, 96, 96) and s["image_id"] == i
        assert 1 <= g <= config.max_instances
        assert not s["iscrowd"].any()
        assert set(np.unique(s["masks"])) <= {0, 1}
        areas = s["masks"].reshape(g, -1).sum(axis=1)  # (G,)
        assert np.all(areas >= config.min_visible_pixels)  # non-empty, above the drop threshold
        assert s["masks"].sum(axis=0).max() <= 1  # each pixel belongs to at most one instance
        for box, mask in zip(s["boxes"], s["masks"]):  # boxes tight around the visible mask
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            assert box.tolist() == [cols[0], rows[0], cols[-1] + 1, rows[-1] + 1]


def test_every_mask_pixel_has_its_instance_colour_and_background_is_unlabelled():
    """The image agrees with the masks: pixels of one instance share a colour (up to the noise), and it differs
    from the background's, so no dropped shape is left in the picture."""
    s = ShapesDataset("train", 1, seed=5)[0]
    image, masks = s["image"], s["masks"].astype(bool)  # (3, H, W), (G, H, W)
    noise = S.NOISE_STD * np.sqrt(3) + 1e-6  # the uniform noise's half-width
    bg = ~masks.any(axis=0)
    bg_colour = np.median(image[:, bg], axis=1)  # (3,)
    for m in masks:
        pixels = image[:, m]  # (3, n)
        centre = np.median(pixels, axis=1)  # (3,)
        inside = np.all(np.abs(pixels - centre[:, None]) <= 2 * noise + 1e-6, axis=0)
        assert inside.mean() > 0.95  # clipping at 0 / 1 can bend a few pixels
        assert np.linalg.norm(centre - bg_colour) > S.MIN_BACKGROUND_CONTRAST - 4 * noise - S.GRADIENT_AMPLITUDE


def test_resolve_occlusion_by_hand():
    """Three shapes on a 4 x 6 grid, painted in order 0, 1, 2.

    shape 0 covers columns 0-3, shape 1 columns 1-4 (hiding 3 of shape 0's 4 columns), shape 2 column 5.
    Shape 0 shows 4 of its 16 pixels (25 % < 30 %): dropped. Shape 1 then shows all its 16 pixels.
    """
    full = np.zeros((3, 4, 6), dtype=bool)
    full[0, :, 0:4] = True
    full[1, :, 1:5] = True
    full[2, :, 5] = True
    owner, kept = S.resolve_occlusion(full, min_visible_fraction=0.3, min_visible_pixels=2)
    assert kept.tolist() == [1, 2]
    assert owner.tolist() == [[-1, 1, 1, 1, 1, 2]] * 4  # shape 0 is gone from the picture too
    owner, kept = S.resolve_occlusion(full, min_visible_fraction=0.2, min_visible_pixels=2)
    assert kept.tolist() == [0, 1, 2] and owner.tolist() == [[0, 1, 1, 1, 1, 2]] * 4
    owner, kept = S.resolve_occlusion(full, min_visible_fraction=0.0, min_visible_pixels=5)
    assert kept.tolist() == [1]  # shape 2 has only 4 pixels


def test_occluded_squares_occur_and_keep_tight_boxes():
    """An unoccluded easy square fills its box; a square that does not was cut by a later shape, and its box is
    still tight around what is left (checked in test_format_ranges_and_occlusion)."""
    ds = ShapesDataset("train", 60, seed=0)
    cut = 0
    for i in range(len(ds)):
        s = ds[i]
        for box, label, mask in zip(s["boxes"], s["labels"], s["masks"]):
            if ds.class_names[label] == "square":
                cut += mask.sum() < (box[2] - box[0]) * (box[3] - box[1])
    assert cut > 0


def test_label_counts_roughly_balanced():
    ds = ShapesDataset("train", 300, seed=0, image_size=64)
    labels = np.concatenate([ds[i]["labels"] for i in range(len(ds))])
    counts = np.bincount(labels, minlength=4)[1:]  # (3,)
    assert counts.min() > 0.8 * counts.mean() and counts.max() < 1.2 * counts.mean(), counts


def test_to_coco_gt_structure():
    ds = ShapesDataset("val", 6, seed=2, image_size=64)
    gt = json.loads(json.dumps(ds.to_coco_gt()))  # JSON-serialisable
    assert [img["id"] for img in gt["images"]] == list(range(6))
    assert all(img["width"] == img["height"] == 64 for img in gt["images"])
    assert [c["id"] for c in gt["categories"]] == [1, 2, 3]
    assert [c["name"] for c in gt["categories"]] == ds.class_names[1:]
    assert [a["id"] for a in gt["annotations"]] == list(range(1, len(gt["annotations"]) + 1))  # ids from 1
    for image_id in range(6):
        s = ds[image_id]
        anns = [a for a in gt["annotations"] if a["image_id"] == image_id]
        assert len(anns) == len(s["labels"])
        for a, box, label, mask in zip(anns, s["boxes"], s["labels"], s["masks"]):
            assert a["category_id"] == ds.label_to_category_id[int(label)] and a["iscrowd"] == 0
            assert np.array_equal(rle_decode(a["segmentation"]), mask.astype(bool))
            assert a["area"] == mask.sum()
            x, y, w, h = a["bbox"]
            assert [x, y, x + w, y + h] == box.tolist()  # COCO [x, y, w, h]


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        ShapesDataset("training")
    with pytest.raises(ValueError, match="difficulty"):
        ShapesDataset(difficulty="medium")
    with pytest.raises(IndexError):
        ShapesDataset("train", 3)[3]


# Hand examples for the formulas, on pixel centres (j + 0.5, i + 0.5).

X = np.arange(8, dtype=float)[None, :] + 0.5  # (1, 8)
Y = np.arange(8, dtype=float)[:, None] + 0.5  # (8, 1)


def test_square_formula_on_pixel_centres():
    # Centre (4, 4), half side 0.8 * 2.5 = 2: pixel centres 2.5..5.5 are within [2, 6] -> columns/rows 2..5.
    m = S.square_mask(X, Y, 4.0, 4.0, 2.5)
    expected = np.zeros((8, 8), bool)
    expected[2:6, 2:6] = True
    assert np.array_equal(m, expected)


def test_circle_formula_on_pixel_centres():
    # Centre (4, 4), radius 0.9 * (1 / 0.9) = 1: only the four pixels whose centres are at distance 0.707.
    m = S.circle_mask(X, Y, 4.0, 4.0, 1.0 / 0.9)
    assert np.argwhere(m).tolist() == [[3, 3], [3, 4], [4, 3], [4, 4]]


def test_triangle_is_inside_its_circumcircle_with_about_the_right_area():
    xx = np.arange(200, dtype=float)[None, :] + 0.5
    yy = np.arange(200, dtype=float)[:, None] + 0.5
    r = 60.0
    tri = S.triangle_mask(xx, yy, 100.0, 100.0, r, angle=0.3)
    R = S.TRIANGLE_CIRCUMRADIUS * r
    assert abs(tri.sum() / (3 * np.sqrt(3) / 4 * R ** 2) - 1) < 0.01  # area of an equilateral triangle
    assert not np.any(tri & ((xx - 100) ** 2 + (yy - 100) ** 2 > R ** 2))


def test_hard_classes_are_distinct_from_easy_ones():
    xx = np.arange(100, dtype=float)[None, :] + 0.5
    yy = np.arange(100, dtype=float)[:, None] + 0.5
    ring = S.ring_mask(xx, yy, 50, 50, 40, inner_ratio=0.6)
    assert not ring[50, 50] and ring[50, 50 + 30]  # a hole in the middle
    cross = S.cross_mask(xx, yy, 50, 50, 40)
    assert cross[50, 85] and cross[85, 50] and not cross[80, 80]  # arms, and a notch at the corner
    ellipse = S.ellipse_mask(xx, yy, 50, 50, 40, angle=0.0, axis_ratio=0.5)
    rows, cols = np.flatnonzero(ellipse.any(axis=1)), np.flatnonzero(ellipse.any(axis=0))
    assert 1.8 < cols.size / rows.size < 2.2  # twice as long as wide
