"""Tests for tinymask/box_logic/matcher.py: thresholds, the between band, torchvision's low-quality rule with ties, empties."""
import numpy as np
import pytest

from tinymask.box_logic.matcher import BELOW_LOW_THRESHOLD, BETWEEN_THRESHOLDS, HEAD_MATCHER, Matcher, RPN_MATCHER

B, N = BETWEEN_THRESHOLDS, BELOW_LOW_THRESHOLD  # -2, -1


def test_thresholds_and_between_band():
    # rows: 2 ground-truth boxes; columns: 6 proposals. Best per column: 0.9 (gt0), 0.6 (gt1), 0.29 (gt1),
    # 0.69 (gt0), 0.7 (gt0, exactly high: matched), 0.3 (gt0, exactly low: between).
    iou = np.array([[0.9, 0.5, 0.2, 0.69, 0.7, 0.3],
                    [0.1, 0.6, 0.29, 0.3, 0.0, 0.1]])
    matches = Matcher(0.7, 0.3)(iou)
    assert matches.dtype == np.int64
    np.testing.assert_array_equal(matches, [0, B, N, B, 0, B])


def test_head_preset_has_no_between_band():
    iou = np.array([[0.5, 0.49, 0.2], [0.1, 0.3, 0.51]])
    np.testing.assert_array_equal(HEAD_MATCHER(iou), [0, N, 1])


def test_argmax_ties_take_the_first_gt():
    iou = np.array([[0.1, 0.8], [0.1, 0.8]])
    np.testing.assert_array_equal(Matcher(0.7, 0.3)(iou), [N, 0])


def test_low_quality_matches_with_ties():
    # gt0's highest IoU is 0.4, reached by proposals 1 and 2 (a tie): both are promoted.
    # gt1's highest IoU is 0.65, reached by proposal 3.
    # Proposal 1 is promoted for gt0's sake but goes back to ITS best box, gt1 (0.5 > 0.4), as torchvision does.
    iou = np.array([[0.1, 0.4, 0.4, 0.0],
                    [0.0, 0.5, 0.2, 0.65]])
    np.testing.assert_array_equal(Matcher(0.7, 0.3, allow_low_quality_matches=False)(iou), [N, B, B, B])
    np.testing.assert_array_equal(RPN_MATCHER(iou), [N, 1, 0, 1])


def test_low_quality_gt_without_overlap_promotes_every_zero():
    # gt1 overlaps nothing, so its "highest IoU" is 0 and every proposal with IoU 0 to it is promoted to its own
    # best box; proposals 1 and 2 overlap nothing at all, so their best box is gt0 (first of a tie at 0).
    # This is torchvision's (and detectron2's) behaviour, kept on purpose.
    iou = np.array([[0.8, 0.0, 0.0],
                    [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(Matcher(0.7, 0.3)(iou), [0, N, N])
    np.testing.assert_array_equal(RPN_MATCHER(iou), [0, 0, 0])


def reference_match(iou, high, low, allow_low_quality):
    """The rule written out with loops, one proposal and one gt at a time."""
    num_gt, num_prop = iou.shape
    out = []
    for p in range(num_prop):
        best = max(range(num_gt), key=lambda g: (iou[g, p], -g))  # highest IoU, first gt on ties
        v = iou[best, p]
        out.append(best if v >= high else (BETWEEN_THRESHOLDS if v >= low else BELOW_LOW_THRESHOLD))
        if allow_low_quality:
            for g in range(num_gt):
                if iou[g, p] == iou[g].max():
                    out[p] = best
    return np.array(out)


@pytest.mark.parametrize("seed", range(5))
def test_against_loop_reference(seed):
    rng = np.random.default_rng(seed)
    iou = rng.integers(0, 11, size=(4, 30)) / 10.0  # coarse values: many ties
    for high, low, allow in [(0.7, 0.3, True), (0.7, 0.3, False), (0.5, 0.5, False), (0.5, 0.5, True)]:
        np.testing.assert_array_equal(Matcher(high, low, allow)(iou), reference_match(iou, high, low, allow))


def test_no_ground_truth_is_all_background():
    for matcher in (RPN_MATCHER, HEAD_MATCHER):
        matches = matcher(np.zeros((0, 5)))
        assert matches.dtype == np.int64
        np.testing.assert_array_equal(matches, [N] * 5)


def test_no_proposals_is_empty():
    for iou in (np.zeros((3, 0)), np.zeros((0, 0))):
        matches = RPN_MATCHER(iou)
        assert matches.shape == (0,) and matches.dtype == np.int64


def test_bad_input():
    with pytest.raises(ValueError, match="low_threshold"):
        Matcher(0.3, 0.7)
    with pytest.raises(ValueError, match=r"iou must have 2 dimensions \(G, P\)"):
        RPN_MATCHER(np.zeros(4))
    with pytest.raises(TypeError, match="iou must be float"):
        RPN_MATCHER(np.zeros((2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="iou contains NaN"):
        RPN_MATCHER(np.array([[0.5, np.nan]]))
