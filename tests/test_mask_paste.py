"""Tests for tinymask/box_logic/mask_paste.py: torchvision's paste_masks_in_image exactly, hand cases, edges, bad input."""
from pathlib import Path

import numpy as np
import pytest

from tinymask.box_logic.bilinear import bilinear_resize
from tinymask.box_logic.mask_paste import binarize, expand_boxes, paste_masks_in_image

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def paste():
    with np.load(DATA / "ops.npz") as data:
        return {k: data[k] for k in ("paste.masks", "paste.boxes", "paste.out")}


def test_matches_torchvision(paste):
    # boxes include one partly outside the image, one covering it, and a sub-pixel one
    out = paste_masks_in_image(paste["paste.masks"], paste["paste.boxes"], (48, 64), padding=1)
    assert out.shape == (5, 48, 64)
    np.testing.assert_allclose(out, paste["paste.out"][:, 0], rtol=0, atol=1e-10)


def test_both_mask_layouts_agree(paste):
    masks4, boxes = paste["paste.masks"], paste["paste.boxes"]
    np.testing.assert_array_equal(
        paste_masks_in_image(masks4, boxes, (48, 64)), paste_masks_in_image(masks4[:, 0], boxes, (48, 64))
    )


def test_hand_case_full_mask():
    # M = 2 mask of ones, box [2, 2, 6, 6]: padded to 4 x 4 (a ring of zeros), scale 4/2 = 2, so the box grows
    # about its centre (4, 4) to [0, 0, 8, 8] and the padded mask is resized to 9 x 9 (inclusive indices).
    # Resize 4 -> 9: output 4 reads src = 4.5 * 4/9 - 0.5 = 1.5, between two ones -> 1; output 0 reads src < 0 -> 0
    # (the zero ring). Nothing is written outside rows/columns 0..8.
    out = paste_masks_in_image(np.ones((1, 2, 2)), np.array([[2.0, 2.0, 6.0, 6.0]]), (10, 12))
    assert out.shape == (1, 10, 12)
    assert out[0, 4, 4] == 1.0 and out[0, 0, 0] == 0.0
    assert np.all(out[0, 9, :] == 0) and np.all(out[0, :, 9:] == 0)
    np.testing.assert_array_equal(out[0, :9, :9], bilinear_resize(np.pad(np.ones((2, 2)), 1), (9, 9)))
    np.testing.assert_array_equal(out[0, :9, :9], out[0, :9, :9].T)  # symmetric box, symmetric mask


def test_corners_are_truncated_towards_zero():
    # Box [-0.35, 2, 1.65, 6] grows by 2 about x = 0.65 to x in [-1.35, 2.65] -> truncated to [-1, 2] (floor would
    # give -2): a resized width of 4 of which columns 1..3 land on image columns 0..2.
    masks = np.random.default_rng(0).uniform(size=(1, 2, 2))
    out = paste_masks_in_image(masks, np.array([[-0.35, 2.0, 1.65, 6.0]]), (12, 8))
    np.testing.assert_allclose(expand_boxes(np.array([[-0.35, 2.0, 1.65, 6.0]]), 2.0), [[-1.35, 0, 2.65, 8]])
    resized = bilinear_resize(np.pad(masks[0], 1), (9, 4))  # rows 0..8, columns -1..2
    np.testing.assert_array_equal(out[0, 0:9, 0:3], resized[:, 1:4])
    assert np.all(out[0, 9:] == 0) and np.all(out[0, :, 3:] == 0)


def test_box_outside_the_image_gives_zeros():
    out = paste_masks_in_image(np.ones((2, 4, 4)), np.array([[-50.0, 0, -20, 10], [100.0, 100, 120, 130]]), (20, 30))
    np.testing.assert_array_equal(out, 0.0)


def test_empty_and_dtype():
    out = paste_masks_in_image(np.zeros((0, 1, 28, 28)), np.zeros((0, 4)), (48, 64))
    assert out.shape == (0, 48, 64) and out.dtype == np.float64
    out = paste_masks_in_image(np.ones((1, 28, 28), np.float32), np.array([[1, 1, 9, 9]], np.float32), (16, 16))
    assert out.dtype == np.float32


def test_binarize_is_strictly_greater():
    np.testing.assert_array_equal(binarize(np.array([0.49, 0.5, 0.51])), [False, False, True])
    np.testing.assert_array_equal(binarize(np.array([0.2, 0.4]), threshold=0.3), [False, True])


def test_bad_input():
    boxes = np.array([[0.0, 0, 4, 4]])
    with pytest.raises(ValueError, match="masks must have shape"):
        paste_masks_in_image(np.ones((1, 3, 4)), boxes, (8, 8))
    with pytest.raises(ValueError, match="masks must have shape"):
        paste_masks_in_image(np.ones((1, 2, 4, 4)), boxes, (8, 8))
    with pytest.raises(TypeError, match="masks must be float32 or float64"):
        paste_masks_in_image(np.ones((1, 4, 4), dtype=np.int64), boxes, (8, 8))
    with pytest.raises(ValueError, match="boxes must have one row per mask"):
        paste_masks_in_image(np.ones((2, 4, 4)), boxes, (8, 8))
    with pytest.raises(ValueError, match="boxes has an inverted box"):
        paste_masks_in_image(np.ones((1, 4, 4)), np.array([[4.0, 0, 0, 4]]), (8, 8))
    with pytest.raises(ValueError, match="masks contains NaN"):
        paste_masks_in_image(np.full((1, 4, 4), np.nan), boxes, (8, 8))
    with pytest.raises(TypeError, match="image_hw must be a pair of ints"):
        paste_masks_in_image(np.ones((1, 4, 4)), boxes, 8)
