"""Losses: gradients, golden values, numerical stability, bad input."""
import numpy as np
import pytest

from tinymask.gradcheck import check_loss
from tinymask.losses import binary_cross_entropy_with_logits, smooth_l1, softmax_cross_entropy


def test_softmax_cross_entropy_gradients(rng):
    logits, labels = rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    assert check_loss(softmax_cross_entropy, [logits, labels]) < 1e-7
    assert check_loss(softmax_cross_entropy, [logits, labels], kwargs=dict(reduction="sum")) < 1e-7
    # Per pixel, classes on axis 1: the multinomial mask loss of Table 2(b).
    logits, labels = rng.standard_normal((2, 3, 4, 5)), rng.integers(0, 3, (2, 4, 5))
    assert check_loss(softmax_cross_entropy, [logits, labels]) < 1e-7


def test_softmax_cross_entropy_golden():
    # Uniform logits over K classes: loss log K, gradient (1/K − onehot) / N.
    loss, grad = softmax_cross_entropy(np.zeros((2, 4)), np.array([1, 3]))
    assert loss == pytest.approx(np.log(4))
    np.testing.assert_allclose(grad, [[0.125, -0.375, 0.125, 0.125], [0.125, 0.125, 0.125, -0.375]])
    # Large logits do not overflow.
    loss, grad = softmax_cross_entropy(np.array([[1000.0, 0.0]]), np.array([1]))
    assert loss == pytest.approx(1000.0) and np.all(np.isfinite(grad))


def test_smooth_l1(rng):
    pred, target = rng.standard_normal(20), rng.standard_normal(20)
    # keep |pred - target| away from beta, where the second derivative jumps
    for beta in (1.0, 1 / 9):
        diff = pred - target
        ok = np.abs(np.abs(diff) - beta) > 1e-3
        assert check_loss(smooth_l1, [pred[ok], target[ok]], kwargs=dict(beta=beta)) < 1e-7
    assert check_loss(smooth_l1, [pred, target], kwargs=dict(beta=0.0, reduction="mean")) < 1e-7
    loss, grad = smooth_l1(np.array([0.5, 2.0, -3.0]), np.zeros(3), beta=1.0)
    assert loss == pytest.approx(0.125 + 1.5 + 2.5)
    np.testing.assert_allclose(grad, [0.5, 1.0, -1.0])
    loss, grad = smooth_l1(np.array([0.5, -2.0]), np.zeros(2), beta=0.0)  # L1
    assert loss == pytest.approx(2.5)
    np.testing.assert_allclose(grad, [1.0, -1.0])


def test_bce_gradients_and_golden(rng):
    logits, targets = rng.standard_normal((3, 5, 5)) * 3, (rng.random((3, 5, 5)) > 0.5).astype(float)
    assert check_loss(binary_cross_entropy_with_logits, [logits, targets]) < 1e-7
    loss, grad = binary_cross_entropy_with_logits(np.array([0.0]), np.array([1.0]))
    assert loss == pytest.approx(np.log(2))
    np.testing.assert_allclose(grad, [-0.5])


def test_bce_is_stable_at_large_logits():
    logits = np.array([-100.0, 100.0, -100.0, 100.0, 1e4, -1e4])
    targets = np.array([0.0, 1.0, 1.0, 0.0, 0.0, 1.0])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, grad = binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    assert loss == pytest.approx(100.0 + 100.0 + 1e4 + 1e4, rel=1e-12)
    np.testing.assert_allclose(grad, [0.0, 0.0, -1.0, 1.0, 1.0, -1.0], atol=1e-40)


def test_empty_inputs_give_zero_loss():
    loss, grad = softmax_cross_entropy(np.zeros((0, 3)), np.zeros(0, dtype=int))
    assert loss == 0.0 and grad.shape == (0, 3)
    loss, grad = binary_cross_entropy_with_logits(np.zeros((0, 28, 28)), np.zeros((0, 28, 28)))
    assert loss == 0.0 and grad.shape == (0, 28, 28)


def test_float32_stays_float32(rng):
    logits = rng.standard_normal((4, 3)).astype(np.float32)
    assert softmax_cross_entropy(logits, np.array([0, 1, 2, 0]))[1].dtype == np.float32
    assert binary_cross_entropy_with_logits(logits, np.ones((4, 3)))[1].dtype == np.float32
    assert smooth_l1(logits, np.zeros((4, 3), np.float32))[1].dtype == np.float32


def test_loss_bad_inputs():
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3]))
    with pytest.raises(TypeError, match="integers"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="labels must have shape"):
        softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="same shape"):
        smooth_l1(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        binary_cross_entropy_with_logits(np.zeros(2), np.array([0.0, 2.0]))
    with pytest.raises(ValueError, match="reduction"):
        smooth_l1(np.zeros(3), np.zeros(3), reduction="avg")
