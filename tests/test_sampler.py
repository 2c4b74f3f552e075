"""Tests for tinymask/box_logic/sampler.py: counts and fractions, fewer positives than the quota, determinism, bad input."""
import numpy as np
import pytest

from tinymask.box_logic.sampler import (HEAD_BATCH_SIZE_PER_IMAGE, HEAD_POSITIVE_FRACTION, RPN_BATCH_SIZE_PER_IMAGE,
                                        RPN_POSITIVE_FRACTION, sample_balanced)


def make_labels(num_pos, num_neg, num_ignored, seed=0):
    """Shuffled labels: positives get class ids 1..3, negatives 0, ignored -1."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([rng.integers(1, 4, num_pos), np.zeros(num_neg, int), -np.ones(num_ignored, int)])
    return rng.permutation(labels).astype(np.int64)


def check_valid(labels, pos, neg):
    assert pos.dtype == bool and neg.dtype == bool and pos.shape == neg.shape == labels.shape
    assert not np.any(pos & neg)
    assert np.all(labels[pos] >= 1)
    assert np.all(labels[neg] == 0)


@pytest.mark.parametrize(
    "batch, fraction, expected_pos, expected_neg",
    [
        (RPN_BATCH_SIZE_PER_IMAGE, RPN_POSITIVE_FRACTION, 128, 128),
        (HEAD_BATCH_SIZE_PER_IMAGE, HEAD_POSITIVE_FRACTION, 128, 384),
    ],
)
def test_presets_when_there_are_plenty(batch, fraction, expected_pos, expected_neg):
    labels = make_labels(300, 1000, 50)
    pos, neg = sample_balanced(labels, batch, fraction, np.random.default_rng(0))
    check_valid(labels, pos, neg)
    assert (pos.sum(), neg.sum()) == (expected_pos, expected_neg)  # int(256 * 0.5) = int(512 * 0.25) = 128


def test_negatives_fill_missing_positives():
    labels = make_labels(10, 1000, 5)
    pos, neg = sample_balanced(labels, 256, 0.5, np.random.default_rng(0))
    check_valid(labels, pos, neg)
    assert pos.sum() == 10 and neg.sum() == 246  # every positive, and negatives up to the batch size


def test_too_few_of_both():
    labels = make_labels(10, 20, 100)
    pos, neg = sample_balanced(labels, 256, 0.5, np.random.default_rng(0))
    assert pos.sum() == 10 and neg.sum() == 20  # all of them; ignored never taken


def test_fraction_is_truncated_like_int():
    labels = make_labels(100, 100, 0)
    pos, neg = sample_balanced(labels, 10, 0.25, np.random.default_rng(0))
    assert pos.sum() == 2 and neg.sum() == 8  # int(2.5) = 2


def test_same_seed_same_sample_and_no_global_state():
    labels = make_labels(300, 1000, 50)
    first = sample_balanced(labels, 256, 0.5, np.random.default_rng(42))
    np.random.seed(123)  # global state must not matter
    np.random.random(10)
    second = sample_balanced(labels, 256, 0.5, np.random.default_rng(42))
    other = sample_balanced(labels, 256, 0.5, np.random.default_rng(43))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert not np.array_equal(first[0], other[0])


def test_draws_are_spread_over_all_candidates():
    labels = np.array([1] * 20 + [0] * 20)
    rng = np.random.default_rng(0)
    picked = sum(sample_balanced(labels, 20, 0.5, rng)[0].astype(int) for _ in range(400))
    # each positive is drawn with probability 10 / 20, so about 200 times in 400 draws
    assert picked[:20].min() > 150 and picked[:20].max() < 250


def test_empty_labels():
    pos, neg = sample_balanced(np.zeros((0,), np.int64), 256, 0.5, np.random.default_rng(0))
    assert pos.shape == neg.shape == (0,)


def test_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(TypeError, match="labels must be an integer NumPy array"):
        sample_balanced(np.zeros(4), 8, 0.5, rng)
    with pytest.raises(ValueError, match=r"labels must have 1 dimension"):
        sample_balanced(np.zeros((2, 2), np.int64), 8, 0.5, rng)
    with pytest.raises(ValueError, match="positive_fraction"):
        sample_balanced(np.zeros(4, np.int64), 8, 1.5, rng)
    with pytest.raises(ValueError, match="batch_size_per_image"):
        sample_balanced(np.zeros(4, np.int64), -1, 0.5, rng)
    with pytest.raises(TypeError, match="rng must be a numpy.random.Generator"):
        sample_balanced(np.zeros(4, np.int64), 8, 0.5, np.random)


def test_sample_recorded_takes_the_given_draw_and_checks_it_against_the_labels():
    from tinymask.box_logic.sampler import sample_recorded
    labels = np.array([1, 0, -1, 2, 0, 0])
    pos, neg = sample_recorded(labels, [3], [1, 5])
    assert pos.tolist() == [False, False, False, True, False, False]
    assert neg.tolist() == [False, True, False, False, False, True]
    with pytest.raises(ValueError, match=r"recorded positive samples \[1\] are labelled \[0\]"):
        sample_recorded(labels, [1], [])
    with pytest.raises(ValueError, match=r"recorded negative samples \[2\] are labelled \[-1\]"):
        sample_recorded(labels, [], [2])
    with pytest.raises(ValueError, match=r"must lie in \[0, 6\)"):
        sample_recorded(labels, [6], [])
