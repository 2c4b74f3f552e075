"""Tests for tinymask/box_logic/nms.py: hand cases (threshold equality, chains, ties), brute force, batched vs per group."""
import numpy as np
import pytest

from tinymask.box_logic.nms import batched_nms, nms


def brute_force_nms(boxes, scores, thr):
    """Greedy NMS with plain loops over pairs: the definition, slowly."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    suppressed, keep = set(), []
    for a, i in enumerate(order):
        if i in suppressed:
            continue
        keep.append(i)
        for j in order[a + 1:]:
            xa, ya = max(boxes[i, 0], boxes[j, 0]), max(boxes[i, 1], boxes[j, 1])
            xb, yb = min(boxes[i, 2], boxes[j, 2]), min(boxes[i, 3], boxes[j, 3])
            inter = max(0.0, xb - xa) * max(0.0, yb - ya)
            union = (boxes[i, 2] - boxes[i, 0]) * (boxes[i, 3] - boxes[i, 1]) + \
                    (boxes[j, 2] - boxes[j, 0]) * (boxes[j, 3] - boxes[j, 1]) - inter
            if union > 0 and inter / union > thr:
                suppressed.add(j)
    return np.array(keep, dtype=np.int64)


def random_boxes(rng, n, scale=100.0):
    xy = rng.uniform(0, scale, size=(n, 2))
    return np.concatenate([xy, xy + rng.uniform(1, scale / 3, size=(n, 2))], axis=1)


def test_hand_case():
    # A and B overlap with IoU 81 / 119 = 0.68; C is far away.
    boxes = np.array([[0.0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30]])
    scores = np.array([0.9, 0.8, 0.7])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [0, 2])
    np.testing.assert_array_equal(nms(boxes, scores, 0.7), [0, 1, 2])
    # the order of the result follows the score, not the index
    np.testing.assert_array_equal(nms(boxes, np.array([0.1, 0.8, 0.9]), 0.5), [2, 1])


def test_iou_exactly_at_threshold_is_kept():
    # [0,0,2,1] and [0,0,1,1]: intersection 1, union 2, IoU exactly 0.5 (representable), and "suppress if > 0.5".
    boxes = np.array([[0.0, 0, 2, 1], [0, 0, 1, 1]])
    scores = np.array([0.9, 0.8])
    np.testing.assert_array_equal(nms(boxes, scores, 0.5), [0, 1])
    np.testing.assert_array_equal(nms(boxes, scores, 0.4999), [0])


def test_suppressed_boxes_do_not_suppress():
    # A-B and B-C overlap with IoU 60 / 140 = 0.43, A-C with 20 / 180 = 0.11. At 0.4, A removes B, and B (gone)
    # cannot remove C.
    boxes = np.array([[0.0, 0, 10, 10], [4, 0, 14, 10], [8, 0, 18, 10]])
    np.testing.assert_array_equal(nms(boxes, np.array([0.9, 0.8, 0.7]), 0.4), [0, 2])


def test_ties_lower_index_first():
    same = np.array([[0.0, 0, 10, 10]] * 3)
    np.testing.assert_array_equal(nms(same, np.array([0.5, 0.5, 0.5]), 0.5), [0])
    apart = np.array([[0.0, 0, 1, 1], [5, 5, 6, 6], [10, 10, 11, 11]])
    np.testing.assert_array_equal(nms(apart, np.array([0.2, 0.7, 0.7]), 0.5), [1, 2, 0])


def test_empty_input():
    keep = nms(np.zeros((0, 4)), np.zeros((0,)), 0.5)
    assert keep.shape == (0,) and keep.dtype == np.int64
    keep = batched_nms(np.zeros((0, 4)), np.zeros((0,)), np.zeros((0,), np.int64), 0.5)
    assert keep.shape == (0,) and keep.dtype == np.int64


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("thr", [0.3, 0.5, 0.7])
def test_against_brute_force(seed, thr):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 120)
    scores = rng.integers(0, 20, size=120) / 20.0  # coarse scores: many ties
    np.testing.assert_array_equal(nms(boxes, scores, thr), brute_force_nms(boxes, scores, thr))


def test_batched_groups_do_not_suppress_each_other():
    boxes = np.array([[0.0, 0, 10, 10]] * 4)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    groups = np.array([0, 1, 0, 1])
    np.testing.assert_array_equal(batched_nms(boxes, scores, groups, 0.5), [0, 1])


@pytest.mark.parametrize("seed", range(4))
def test_batched_equals_nms_per_group_sorted_by_score(seed):
    rng = np.random.default_rng(seed)
    boxes = random_boxes(rng, 200)
    scores = rng.integers(0, 50, size=200) / 50.0
    groups = rng.integers(0, 4, size=200)
    keep = batched_nms(boxes, scores, groups, 0.5)
    expected = np.concatenate([np.flatnonzero(groups == g)[nms(boxes[groups == g], scores[groups == g], 0.5)]
                               for g in range(4)])
    assert sorted(keep.tolist()) == sorted(expected.tolist())
    ordered = sorted(expected.tolist(), key=lambda i: (-scores[i], i))  # by score, ties by index
    np.testing.assert_array_equal(keep, ordered)


def test_bad_input():
    boxes = np.array([[0.0, 0, 1, 1], [0, 0, 2, 2]])
    with pytest.raises(ValueError, match="scores must have one entry per box"):
        nms(boxes, np.array([0.5]), 0.5)
    with pytest.raises(ValueError, match="scores contains NaN"):
        nms(boxes, np.array([0.5, np.nan]), 0.5)
    with pytest.raises(ValueError, match="boxes has an inverted box"):
        nms(np.array([[1.0, 0, 0, 1]]), np.array([0.5]), 0.5)
    with pytest.raises(TypeError, match="scores must be float32 or float64"):
        nms(boxes, np.array([1, 2]), 0.5)
    with pytest.raises(TypeError, match="iou_threshold"):
        nms(boxes, np.array([0.5, 0.4]), None)
    with pytest.raises(TypeError, match="groups must be an integer NumPy array"):
        batched_nms(boxes, np.array([0.5, 0.4]), np.array([0.0, 1.0]), 0.5)
    with pytest.raises(ValueError, match="groups must have shape"):
        batched_nms(boxes, np.array([0.5, 0.4]), np.array([0, 1, 2]), 0.5)
