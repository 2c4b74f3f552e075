"""Unit tests of the RPN and RoI-head pieces that the whole-model tests exercise only together."""
import numpy as np
import pytest

from tinymask.config import MaskRCNNConfig
from tinymask.gradcheck import check_layer
from tinymask.heads.mask_head import mask_loss, mask_probabilities
from tinymask.heads.box_head import box_loss, postprocess_detections, select_training_rois
from tinymask.heads.rpn import (flatten_head_outputs, init_rpn_head_params, rpn_head_backward, rpn_head_forward,
                                rpn_loss, rpn_proposals, rpn_targets, unflatten_head_grads)


def small_cfg(**kw):
    return MaskRCNNConfig.preset("small") if not kw else MaskRCNNConfig(**{**MaskRCNNConfig.preset("small").to_dict(), **kw})


def test_flatten_is_anchor_order_and_unflatten_is_its_adjoint(rng):
    shapes = [(2, 3, 4, 5), (2, 3, 2, 3)]
    obj = [rng.standard_normal(s) for s in shapes]
    deltas = [rng.standard_normal((n, 4 * a, h, w)) for n, a, h, w in shapes]
    o, d = flatten_head_outputs(obj, deltas)
    assert o.shape == (2, 4 * 5 * 3 + 2 * 3 * 3) and d.shape == o.shape + (4,)
    # anchor order: level, row, column, anchor; deltas (N, 4A, H, W) are grouped anchor-major, 4 coordinates each
    n, a, y, x = 1, 2, 3, 1
    assert o[n, (y * 5 + x) * 3 + a] == obj[0][n, a, y, x]
    np.testing.assert_array_equal(d[n, (y * 5 + x) * 3 + a], deltas[0][n, 4 * a:4 * a + 4, y, x])
    # <flatten(v), g> == <v, unflatten(g)>: unflatten is the adjoint (here: the inverse permutation)
    go, gd = rng.standard_normal(o.shape), rng.standard_normal(d.shape)
    uo, ud = unflatten_head_grads(go, gd, shapes)
    lhs = np.sum(o * go) + np.sum(d * gd)
    rhs = sum(np.sum(a_ * b_) for a_, b_ in zip(obj + deltas, uo + ud))
    assert lhs == pytest.approx(rhs, rel=1e-12)


def test_rpn_head_shared_weights_gradient(rng):
    params = {k: v.astype(np.float64) * 50 for k, v in init_rpn_head_params(3, 2, rng, np.float64).items()}
    maps = [rng.standard_normal((1, 3, 4, 5)), rng.standard_normal((1, 3, 2, 3))]
    names = sorted(params)

    def forward(*arrays):
        p = dict(zip(names, arrays[:len(names)]))
        o, d, caches = rpn_head_forward(p, list(arrays[len(names):]))
        fo, fd = flatten_head_outputs(o, d)
        return np.concatenate([fo.ravel(), fd.ravel()]), (caches, [x.shape for x in o], fo.shape)

    def backward(dout, cache):
        caches, shapes, fshape = cache
        n = int(np.prod(fshape))
        do, dd = unflatten_head_grads(dout[:n].reshape(fshape), dout[n:].reshape(fshape + (4,)), shapes)
        dmaps, grads = rpn_head_backward(do, dd, caches)
        return tuple(grads[k] for k in names) + tuple(dmaps)

    errors = check_layer(forward, backward, [params[k] for k in names] + maps)
    assert max(errors.values()) < 1e-7, errors


def test_rpn_targets_and_loss_normalisation():
    cfg = small_cfg(rpn_batch_size_per_image=4, rpn_positive_fraction=0.5)
    anchors = np.array([[0, 0, 10, 10], [0, 0, 9, 10], [20, 20, 30, 30], [40, 40, 50, 50], [0, 0, 6, 10]], float)
    gt = [np.array([[0.0, 0.0, 10.0, 10.0]]), np.zeros((0, 4))]
    labels, targets = rpn_targets(anchors, gt, cfg)
    # IoU with the gt: 1, 0.9, 0, 0, 0.6 -> positive, positive, negative, negative, ignored (between 0.3 and 0.7)
    np.testing.assert_array_equal(labels, [[1, 1, 0, 0, -1], [0, 0, 0, 0, 0]])
    np.testing.assert_allclose(targets[0, 0], 0.0, atol=1e-12)
    obj = np.zeros((2, 5))
    deltas = np.zeros((2, 5, 4))
    loss_obj, loss_box, dobj, ddeltas = rpn_loss(obj, deltas, labels, targets, cfg, np.random.default_rng(0))
    # 4 sampled anchors per image (2 + 2 and 0 + 4): logit 0 gives log 2 each
    assert loss_obj == pytest.approx(np.log(2))
    assert np.count_nonzero(dobj) == 8 and np.count_nonzero(dobj[0, 4]) == 0  # the ignored anchor gets nothing
    # the box loss: smooth L1 of the second anchor's target, divided by the 8 sampled anchors
    t = targets[0, 1]
    beta = cfg.rpn_box_beta
    expected = np.sum(np.where(np.abs(t) < beta, 0.5 * t ** 2 / beta, np.abs(t) - 0.5 * beta)) / 8
    assert loss_box == pytest.approx(expected)


def test_rpn_proposals_nms_and_limits():
    cfg = small_cfg(rpn_pre_nms_top_n_test=3, rpn_post_nms_top_n_test=2, rpn_nms_thresh=0.5)
    anchors = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [30, 30, 40, 40], [50, 50, 60, 60], [0, 0, 4, 4]], float)
    logits = np.array([[5.0, 4.0, 3.0, 2.0, 1.0]])
    boxes, scores = rpn_proposals(logits, np.zeros((1, 5, 4)), anchors, [5], [(64, 64)], cfg, training=False)
    # top 3 logits, then NMS drops anchor 1 (IoU 0.82 with anchor 0), then at most 2 are kept
    np.testing.assert_allclose(boxes[0], anchors[[0, 2]])
    assert np.all(np.diff(scores[0]) < 0)


def test_select_training_rois_adds_ground_truth():
    cfg = small_cfg(box_batch_size_per_image=8, box_positive_fraction=0.5)
    proposals = [np.array([[0, 0, 10, 10], [30, 30, 40, 40], [1, 1, 10, 10]], float)]
    targets = [{"boxes": np.array([[0.0, 0.0, 10.0, 10.0]]), "labels": np.array([2])}]
    (r,) = select_training_rois(proposals, targets, cfg, np.random.default_rng(0))
    assert len(r["boxes"]) == 4  # 3 proposals + the ground truth, all sampled
    pos = r["labels"] > 0
    np.testing.assert_array_equal(r["labels"][pos], [2, 2, 2])
    np.testing.assert_allclose(r["regression_targets"][~pos], 0.0)
    gt_row = np.flatnonzero(np.all(r["boxes"] == [0, 0, 10, 10], axis=1))
    np.testing.assert_allclose(r["regression_targets"][gt_row], 0.0, atol=1e-12)


def test_box_loss_only_true_class_deltas():
    cfg = small_cfg()
    logits = np.zeros((3, 4))
    regression = np.zeros((3, 16))
    labels = np.array([2, 0, 1])
    targets = np.array([[0.5, 0, 0, 0], [9, 9, 9, 9], [0, -2.0, 0, 0]])
    loss_cls, loss_box, dl, dr = box_loss(logits, regression, labels, targets, cfg)
    assert loss_cls == pytest.approx(np.log(4))
    beta = cfg.box_box_beta
    assert loss_box == pytest.approx(((0.5 - 0.5 * beta) + (2.0 - 0.5 * beta)) / 3)
    assert np.count_nonzero(dr[1]) == 0  # background: no box loss
    assert np.flatnonzero(dr[0]).tolist() == [8] and np.flatnonzero(dr[2]).tolist() == [5]


def test_postprocess_detections_thresholds_and_nms():
    cfg = small_cfg(box_score_thresh=0.3, box_nms_thresh=0.5, box_detections_per_img=10)
    proposals = [np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], float)]
    logits = np.log(np.array([[0.1, 0.8, 0.05, 0.05], [0.1, 0.7, 0.1, 0.1], [0.5, 0.1, 0.1, 0.3]]))
    (det,) = postprocess_detections(logits, np.zeros((3, 16)), proposals, [(64, 64)], cfg)
    # class 1: boxes 0 (0.8) and 1 (0.7) overlap -> one kept; box 2's best is background (0.5), its class 3 at 0.3
    # is not above the threshold
    np.testing.assert_allclose(det["boxes"], [[0, 0, 10, 10]])
    np.testing.assert_array_equal(det["labels"], [1])
    assert det["scores"][0] == pytest.approx(0.8)


@pytest.mark.parametrize("kind", [dict(), dict(class_agnostic_mask=True), dict(mask_loss="softmax")])
def test_mask_loss_variants(rng, kind):
    cfg = small_cfg(**kind)
    K = 1 if cfg.class_agnostic_mask else 4
    logits = rng.standard_normal((3, K, 6, 6))
    labels = np.array([1, 3, 2])
    targets = (rng.random((3, 6, 6)) > 0.5).astype(float)
    loss, dlogits = mask_loss(logits, labels, targets, cfg)
    num = np.zeros_like(logits)
    for i in np.ndindex(logits.shape):
        old = logits[i]
        logits[i] = old + 1e-6
        plus = mask_loss(logits, labels, targets, cfg)[0]
        logits[i] = old - 1e-6
        minus = mask_loss(logits, labels, targets, cfg)[0]
        logits[i] = old
        num[i] = (plus - minus) / 2e-6
    np.testing.assert_allclose(dlogits, num, atol=1e-8)
    if not cfg.class_agnostic_mask and cfg.mask_loss == "sigmoid":
        # decoupled: only the ground-truth class's channel receives a gradient
        assert np.count_nonzero(dlogits[0, [0, 2, 3]]) == 0
    probs = mask_probabilities(logits, labels, cfg)
    assert probs.shape == (3, 6, 6) and np.all((probs >= 0) & (probs <= 1))


def test_mask_loss_without_positives_is_zero():
    cfg = small_cfg()
    loss, d = mask_loss(np.zeros((0, 4, 28, 28)), np.zeros(0, np.int64), np.zeros((0, 28, 28)), cfg)
    assert loss == 0.0 and d.shape == (0, 4, 28, 28)
