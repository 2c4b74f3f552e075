"""Losses: gradients, golden values, numerical stability, bad input."""
import numpy as np
import pytest

from tinymask.config import MaskRCNNConfig
from tinymask.gradcheck import check_loss
from tinymask.layers.losses import binary_cross_entropy_with_logits, smooth_l1, softmax_cross_entropy
from tinymask.heads.box_head import box_loss
from tinymask.heads.rpn import rpn_loss


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


def test_softmax_cross_entropy_per_pixel_is_the_mean_over_every_pixel(rng):
    """The multinomial mask loss of Table 2(b): classes on axis 1, the mean over all N·H·W pixels (as PyTorch's
    F.cross_entropy), recomputed here pixel by pixel with a loop."""
    logits, labels = rng.standard_normal((2, 3, 4, 5)), rng.integers(0, 3, (2, 4, 5))
    terms, expected_grad = [], np.zeros_like(logits)
    for n in range(2):
        for i in range(4):
            for j in range(5):
                z = logits[n, :, i, j]
                p = np.exp(z) / np.exp(z).sum()
                terms.append(-np.log(p[labels[n, i, j]]))
                expected_grad[n, :, i, j] = (p - np.eye(3)[labels[n, i, j]]) / 40
    loss, grad = softmax_cross_entropy(logits, labels)
    assert loss == pytest.approx(np.mean(terms), rel=1e-12)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-10, atol=1e-15)


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


# ---------------------------------------------------------------------------------------------------------------
# Smooth L1 at torchvision's β = 1/9 (RPN and box head), where multiplying and dividing by β differ by 81×
# ---------------------------------------------------------------------------------------------------------------

BETA = 1 / 9
# (pred, target, value, gradient), worked by hand with x = pred − target: |x| < 1/9 gives 0.5·x²/β = 4.5·x² and
# x/β = 9x; otherwise |x| − β/2 = |x| − 1/18 and sign(x).
SMOOTH_L1_AT_BETA = [
    (0.05, 0.0, 0.01125, 0.45),  # 4.5 · 0.0025
    (-0.1, 0.0, 0.045, -0.9),  # 4.5 · 0.01
    (1.0, 0.96, 0.0072, 0.36),  # 4.5 · 0.0016
    (0.5, 0.0, 0.5 - 1 / 18, 1.0),  # 0.4444…
    (-2.0, 0.0, 2.0 - 1 / 18, -1.0),  # 1.9444…
]


@pytest.mark.parametrize("pred, target, value, grad", SMOOTH_L1_AT_BETA)
def test_smooth_l1_values_at_beta_one_ninth(pred, target, value, grad):
    loss, dpred = smooth_l1(np.array([pred]), np.array([target]), beta=BETA)
    assert loss == pytest.approx(value, rel=1e-12)
    np.testing.assert_allclose(dpred, [grad], rtol=1e-12)


def test_smooth_l1_mean_and_numerical_gradient_at_beta_one_ninth():
    pred, target = np.array([v[:2] for v in SMOOTH_L1_AT_BETA]).T.copy()
    loss, dpred = smooth_l1(pred, target, beta=BETA, reduction="mean")
    assert loss == pytest.approx((0.01125 + 0.045 + 0.0072 + 0.5 + 2.0 - 2 / 18) / 5, rel=1e-12)
    np.testing.assert_allclose(dpred, np.array([0.45, -0.9, 0.36, 1.0, -1.0]) / 5, rtol=1e-12)
    # numerically, at points at least 0.01 from the kinks at ±β
    assert check_loss(smooth_l1, [pred, target], kwargs=dict(beta=BETA)) < 1e-8


def test_box_loss_quadratic_branch_value():
    """Fast R-CNN's L_box on the true class's deltas, every difference within β = 1/9 of the target."""
    cfg = MaskRCNNConfig(num_classes=3, box_box_beta=BETA)
    labels = np.array([2, 0])  # one positive of class 2, one background
    regression = np.zeros((2, 12))  # (R, 4K)
    regression[0, 4:8] = 1.0  # class 1's deltas: wrong-class, must be ignored
    regression[0, 8:12] = [0.05, -0.02, 0.0, 0.1]  # class 2's deltas
    regression[1] = 3.0  # background: no box loss
    targets = np.array([[0.0, 0.03, 0.04, 0.16], [9.0, 9.0, 9.0, 9.0]])
    loss_cls, loss_box, _, dreg = box_loss(np.zeros((2, 3)), regression, labels, targets, cfg)
    # x = (0.05, −0.05, −0.04, −0.06): 4.5 · (0.0025 + 0.0025 + 0.0016 + 0.0036) = 0.0459, over R = 2 RoIs
    assert loss_box == pytest.approx(0.02295, rel=1e-12)
    expected = np.zeros((2, 12))
    expected[0, 8:12] = [0.225, -0.225, -0.18, -0.27]  # 9x / 2
    np.testing.assert_allclose(dreg, expected, rtol=1e-12, atol=1e-15)
    assert loss_cls == pytest.approx(np.log(3))


def test_rpn_box_loss_quadratic_branch_value():
    """The RPN's smooth L1 (β = 1/9) on the sampled positives, over all sampled anchors."""
    cfg = MaskRCNNConfig(rpn_box_beta=BETA, rpn_batch_size_per_image=4, rpn_positive_fraction=0.5)
    labels = np.array([[1, 1, 0, 0]])  # 2 positives + 2 negatives: all four are sampled
    deltas = np.full((1, 4, 4), 5.0)  # the negatives' deltas must not count
    deltas[0, 0] = [0.02, 0.0, 0.0, 0.0]
    deltas[0, 1] = [0.0, 0.0, 0.1, -0.1]
    targets = np.zeros((1, 4, 4))
    targets[0, 1] = [0.0, 0.0, 0.05, -0.03]
    _, loss_box, _, ddeltas = rpn_loss(np.zeros((1, 4)), deltas, labels, targets, cfg, np.random.default_rng(0))
    # x = 0.02 and (0.05, −0.07): 4.5 · (0.0004 + 0.0025 + 0.0049) = 0.0351, over 4 sampled anchors
    assert loss_box == pytest.approx(0.008775, rel=1e-12)
    expected = np.zeros((1, 4, 4))
    expected[0, 0, 0] = 0.045  # 9 · 0.02 / 4
    expected[0, 1, 2:] = [0.1125, -0.1575]  # 9 · (0.05, −0.07) / 4
    np.testing.assert_allclose(ddeltas, expected, rtol=1e-12, atol=1e-15)
