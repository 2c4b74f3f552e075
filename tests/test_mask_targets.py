"""Mask targets (Mask R-CNN §3 "Training"): torchvision's project_masks_on_boxes, by hand and against its numbers."""
import numpy as np
import pytest

from tinymask.box_logic.mask_targets import project_masks_on_boxes

OPS = np.load(__file__.rsplit("/", 1)[0] + "/data/ops.npz")


def test_matches_torchvision():
    gt, boxes, idx = OPS["mask_targets.gt_masks"], OPS["mask_targets.proposals"], OPS["mask_targets.matched_idxs"]
    ref = OPS["mask_targets.out"]
    M = ref.shape[-1]
    assert M == 28
    # The fixture was made by torchvision's pure-Python roi_align: samples beyond the mask read its clamped edge.
    out = project_masks_on_boxes(gt, boxes, idx, M, outside="edge")
    assert out.shape == (4, 28, 28) and out.dtype == np.float64
    np.testing.assert_allclose(out, ref, rtol=0, atol=1e-10)
    # Proposal 2, [-5, 10, 20, 60], reaches 12 pixels below the 48-pixel-high mask; the others lie inside, where
    # the default outside="zero" (torchvision's compiled kernels) gives the same targets.
    out = project_masks_on_boxes(gt, boxes, idx, M)
    inside = [0, 1, 3]
    np.testing.assert_allclose(out[inside], ref[inside], rtol=0, atol=1e-10)
    assert np.all(out[2][-6:] == 0)  # rows 22..27 sample only at y > 48, more than one pixel below the mask: 0


def test_by_hand():
    # Mask 0 is all ones, mask 1 all zeros, mask 2 is ones on its left half (columns 0..3 of 8).
    # A proposal inside an all-ones mask gets all ones; the matched index picks the mask.
    # On mask 2 the box [0, 0, 8, 8] with M = 4 has 2-pixel bins and an adaptive grid of ceil(8 / 4) = 2 samples per
    # bin and axis, at x = 0.5, 1.5 | 2.5, 3.5 | 4.5, 5.5 | 6.5, 7.5. With aligned=False, x is a pixel index, so
    # x = 3.5 reads halfway between column 3 (1) and column 4 (0): 0.5, and the second bin averages (1 + 0.5) / 2.
    # The targets are [1, 0.75, 0, 0]: the mask edge at x = 4 looks half a pixel to the left of where it is.
    masks = np.zeros((3, 8, 8), dtype=bool)
    masks[0] = True
    masks[2, :, :4] = True
    boxes = np.array([[1.5, 2.0, 6.0, 7.0], [1.5, 2.0, 6.0, 7.0], [0.0, 0.0, 8.0, 8.0]])
    out = project_masks_on_boxes(masks, boxes, np.array([0, 1, 2]), 4)
    assert out.shape == (3, 4, 4)
    np.testing.assert_array_equal(out[0], 1.0)
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_array_equal(out[2], np.tile([1.0, 0.75, 0.0, 0.0], (4, 1)))


def test_by_hand_aligned():
    """aligned=True (detectron2's targets) shifts the box by -0.5 first: on mask 2 the samples of the box [0, 0, 8, 8]
    fall at x = 0, 1 | 2, 3 | 4, 5 | 6, 7, pixel centres, so the edge at x = 4 is where it is: [1, 1, 0, 0]."""
    masks = np.zeros((1, 8, 8), dtype=bool)
    masks[0, :, :4] = True
    out = project_masks_on_boxes(masks, np.array([[0.0, 0.0, 8.0, 8.0]]), np.array([0]), 4, aligned=True)
    np.testing.assert_array_equal(out[0], np.tile([1.0, 1.0, 0.0, 0.0], (4, 1)))
    unaligned = project_masks_on_boxes(masks, np.array([[0.0, 0.0, 8.0, 8.0]]), np.array([0]), 4)
    np.testing.assert_array_equal(unaligned[0], np.tile([1.0, 0.75, 0.0, 0.0], (4, 1)))


def test_dtypes_and_empty():
    masks = np.ones((2, 6, 6), dtype=np.uint8)
    out = project_masks_on_boxes(masks, np.array([[1, 1, 4, 4]], dtype=np.float32), np.array([1]), 5)
    assert out.dtype == np.float32
    out = project_masks_on_boxes(masks, np.zeros((0, 4)), np.zeros(0, dtype=np.int64), 28)
    assert out.shape == (0, 28, 28)


@pytest.mark.parametrize("args, error, message", [
    ((np.ones((2, 6, 6)), np.zeros((1, 4)), np.array([2]), 4), ValueError, r"out of range: there are 2 gt masks"),
    ((np.ones((2, 6, 6)), np.zeros((1, 4)), np.array([-1]), 4), ValueError, "out of range"),
    ((np.ones((2, 6, 6)), np.zeros((2, 4)), np.array([0]), 4), ValueError, r"one per box"),
    ((np.ones((6, 6)), np.zeros((1, 4)), np.array([0]), 4), ValueError, r"\(G, H, W\)"),
    ((np.ones((2, 6, 6)), np.zeros((1, 5)), np.array([0]), 4), ValueError, r"\(P, 4\)"),
    ((np.ones((2, 6, 6)), np.zeros((1, 4)), np.array([0.0]), 4), TypeError, "integers"),
    ((np.ones((2, 6, 6)), np.zeros((1, 4)), np.array([0]), 0), ValueError, "M"),
    ((np.ones((2, 6, 6)), np.array([[3.0, 0, 1, 1]]), np.array([0]), 4), ValueError, "inverted"),
])
def test_bad_input(args, error, message):
    with pytest.raises(error, match=message):
        project_masks_on_boxes(*args)
