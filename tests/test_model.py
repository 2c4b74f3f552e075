"""The assembled model: whole-model gradient check, every parameter trained, variants, empty images, bad input."""
import numpy as np
import pytest

from tinymask.gradcheck import rel_error
from tinymask.model import LOSS_NAMES, init_params, is_trainable, predict, train_backward, train_forward
from tiny import tiny_config


def tiny_batch(dtype=np.float64):
    rng = np.random.default_rng(3)
    images, targets = [], []
    for boxes, labels in (([[4, 6, 30, 28], [20, 18, 44, 46]], [1, 2]), ([[10, 8, 40, 30]], [2])):
        image = rng.random((3, 48, 48)).astype(dtype)
        masks = np.zeros((len(boxes), 48, 48), np.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes):
            m[y0 + 2:y1 - 2, x0 + 1:x1 - 3] = 1
        images.append(image)
        targets.append({"boxes": np.array(boxes, dtype), "labels": np.array(labels), "masks": masks})
    return images, targets


def total_loss(losses):
    return sum(float(v) for v in losses.values())


def check_whole_model(cfg, picks_per_param=2, seed=0, max_params=None, random_biases=False):
    """Analytic vs central-difference gradient of the total loss, on a few entries of every parameter.

    random_biases: give the head biases small random values instead of zero. A RoI whose features are all zero (it
    samples only cells a ReLU zeroed, likely on C5's 2x2 map) then still gives ReLU inputs away from the kink at 0,
    where the central difference would see half a slope and the analytic gradient none.
    """
    params = init_params(cfg, seed=seed, dtype=np.float64)
    for k in params:  # larger predictor weights, so every loss term has a sizeable gradient
        if "predictor" in k or "cls_logits" in k or "bbox_pred" in k:
            params[k] = params[k] * 30
    if random_biases:
        rng = np.random.default_rng(seed + 7)
        for k in params:
            if k.startswith("roi_heads.") and k.endswith(".bias"):
                params[k] = params[k] + 0.1 * rng.standard_normal(params[k].shape)
    images, targets = tiny_batch()
    losses, cache = train_forward(params, cfg, images, targets, np.random.default_rng(0))
    proposals = cache["proposals"]  # held fixed: the RPN's top-k and NMS are not differentiable
    grads = train_backward(cache)
    trainable = {k for k in params if is_trainable(k, cfg)}
    assert set(grads) == trainable, f"parameters without a gradient: {sorted(trainable - set(grads))}"

    def loss_now():
        out, _ = train_forward(params, cfg, images, targets, np.random.default_rng(0), proposals=proposals)
        return total_loss(out)

    rng = np.random.default_rng(1)
    analytic, numeric, names = [], [], []
    h = 1e-6
    names_to_check = sorted(trainable)
    if max_params is not None:
        names_to_check = list(rng.choice(names_to_check, size=min(max_params, len(names_to_check)), replace=False))
    for name in names_to_check:
        p = params[name]
        flat, gflat = p.reshape(-1), grads[name].reshape(-1)
        for i in rng.choice(flat.size, size=min(picks_per_param, flat.size), replace=False):
            old = flat[i]
            flat[i] = old + h
            plus = loss_now()
            flat[i] = old - h
            minus = loss_now()
            flat[i] = old
            analytic.append(gflat[i])
            numeric.append((plus - minus) / (2 * h))
            names.append(name)
    analytic, numeric = np.array(analytic), np.array(numeric)
    return rel_error(analytic, numeric), analytic, numeric, names, losses


def test_whole_model_gradient_fpn():
    err, analytic, numeric, names, losses = check_whole_model(tiny_config(), picks_per_param=1)
    assert all(float(v) > 0 for v in losses.values()), losses
    worst = np.argsort(-np.abs(analytic - numeric))[:3]
    assert err <= 1e-6, [(names[i], analytic[i], numeric[i]) for i in worst]
    # every component contributed non-zero gradients to the check
    for part in ("body.conv1", "layer1", "layer2", "layer3", "layer4", "fpn", "rpn.head", "box_head",
                 "box_predictor", "mask_head", "mask_predictor"):
        assert any(part in n and abs(a) > 0 for n, a in zip(names, analytic)), part


@pytest.mark.parametrize("overrides", [
    dict(mask_loss="softmax"),
    dict(class_agnostic_mask=True),
    dict(mask_head="mlp"),
    dict(roi_extractor="pool"),
    dict(roi_extractor="warp", roi_mode="max"),
    dict(roi_extractor="align", roi_mode="max", pooler_aligned=True),
    dict(norm="frozen_bn"),
])
def test_whole_model_gradient_variants(overrides):
    err, analytic, numeric, names, _ = check_whole_model(tiny_config(**overrides), picks_per_param=1, max_params=24)
    assert err <= 1e-6, overrides


def test_whole_model_gradient_c4():
    cfg = tiny_config(backbone="c4", anchor_sizes=[8, 16, 32], box_pool_size=4, mask_pool_size=4,
                      mask_head_layers=[], mask_deconv_channels=4)
    err, *_ = check_whole_model(cfg, picks_per_param=1)
    assert err <= 1e-6


@pytest.mark.parametrize("extractor", ["align", "pool"])
def test_whole_model_gradient_c5(extractor):
    """Table 2(d)'s backbone: one stride-32 map (C5) and the FPN-style heads."""
    cfg = tiny_config(backbone="c5", anchor_sizes=[8, 16, 32], roi_extractor=extractor)
    err, analytic, numeric, names, _ = check_whole_model(cfg, picks_per_param=1, random_biases=True)
    assert err <= 1e-6
    assert not any("fpn" in n for n in names)
    for part in ("layer4", "box_head", "mask_head", "rpn.head"):
        assert any(part in n and abs(a) > 0 for n, a in zip(names, analytic)), part


def test_c5_predicts_and_sizes():
    cfg = tiny_config(backbone="c5", anchor_sizes=[8, 16, 32], box_score_thresh=0.0)
    assert cfg.mask_resolution == 2 * cfg.mask_pool_size
    params = init_params(cfg, dtype=np.float32)
    assert params["roi_heads.box_head.fc6.weight"].shape[1] == 4 * 2 * 8 * cfg.box_pool_size ** 2  # C5's channels
    images, _ = tiny_batch(np.float32)
    results = predict(params, cfg, images)
    assert len(results) == 2 and all(r["masks"].shape[1:] == (48, 48) for r in results)


def test_canonical_size_moves_rois_to_coarser_levels():
    """FPN Eq. 1's k0 and canonical size are config fields: halving the size moves every RoI one level up."""
    from tinymask.layers.multiscale_roi import assign_fpn_levels
    boxes = np.array([[0, 0, 32, 32], [0, 0, 64, 64], [0, 0, 112, 112]], np.float64)
    assert list(assign_fpn_levels(boxes, 2, 5, 224, 4)) == [2, 2, 3]
    assert list(assign_fpn_levels(boxes, 2, 5, 112, 4)) == [2, 3, 4]
    cfg = tiny_config(fpn_canonical_size=24)
    params = init_params(cfg, dtype=np.float64)
    images, targets = tiny_batch()
    losses, cache = train_forward(params, cfg, images, targets, np.random.default_rng(0))
    assert all(np.isfinite(float(v)) for v in losses.values())


def test_image_without_objects_trains_background():
    cfg = tiny_config()
    params = init_params(cfg, dtype=np.float64)
    images, targets = tiny_batch()
    targets[1] = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64), "masks": np.zeros((0, 48, 48), np.uint8)}
    losses, cache = train_forward(params, cfg, images, targets, np.random.default_rng(0))
    assert all(np.isfinite(float(v)) for v in losses.values())
    grads = train_backward(cache)
    assert all(np.all(np.isfinite(g)) for g in grads.values())
    # a batch of background only
    losses, cache = train_forward(params, cfg, images[1:], targets[1:], np.random.default_rng(0))
    assert float(losses["loss_mask"]) == 0.0 and float(losses["loss_box_reg"]) == 0.0
    assert all(np.isfinite(float(v)) for v in losses.values())
    train_backward(cache)


def test_predict_outputs_in_original_coordinates():
    cfg = tiny_config(box_score_thresh=0.0)
    params = init_params(cfg, dtype=np.float32)
    image = np.random.default_rng(0).random((3, 40, 70)).astype(np.float32)  # resized to 48 on the short side
    (result,) = predict(params, cfg, [image])
    D = len(result["scores"])
    assert result["boxes"].shape == (D, 4) and result["masks"].shape == (D, 40, 70)
    assert result["masks"].dtype == np.uint8 and set(np.unique(result["masks"])) <= {0, 1}
    assert np.all(result["boxes"][:, 2] <= 70 + 1e-3) and np.all(result["boxes"][:, 3] <= 40 + 1e-3)
    assert np.all(np.diff(result["scores"]) <= 0)


def test_float32_training_step_is_float32():
    cfg = tiny_config()
    params = init_params(cfg, dtype=np.float32)
    images, targets = tiny_batch(np.float32)
    losses, cache = train_forward(params, cfg, images, targets, np.random.default_rng(0))
    grads = train_backward(cache)
    assert all(g.dtype == np.float32 for g in grads.values())
    assert set(losses) == set(LOSS_NAMES)


@pytest.mark.parametrize("mutate,message", [
    (lambda im, t: ([im[0][None]] + im[1:], t), r"shape \(3, H, W\)"),
    (lambda im, t: ([(im[0] * 255).astype(np.uint8)] + im[1:], t), "float32 or float64"),
    (lambda im, t: ([np.where(im[0] > 0.5, np.nan, im[0])] + im[1:], t), "NaN"),
    (lambda im, t: (im, [dict(t[0], boxes=t[0]["boxes"][:, [2, 1, 0, 3]])] + t[1:]), "degenerate"),
    (lambda im, t: (im, [dict(t[0], boxes=t[0]["boxes"] + 30)] + t[1:]), "outside the image"),
    (lambda im, t: (im, [dict(t[0], masks=t[0]["masks"][:1])] + t[1:]), "one mask per box"),
    (lambda im, t: (im, [dict(t[0], labels=np.array([1, 3]))] + t[1:]), r"lie in 1..2"),
    (lambda im, t: (im, t[:1]), "2 images but 1 targets"),
])
def test_bad_training_input(mutate, message):
    cfg = tiny_config()
    params = init_params(cfg, dtype=np.float64)
    images, targets = mutate(*tiny_batch())
    with pytest.raises((ValueError, TypeError), match=message):
        train_forward(params, cfg, images, targets, np.random.default_rng(0))
