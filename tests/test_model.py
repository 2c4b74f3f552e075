"""The assembled model: whole-model gradient check, every parameter trained, variants, empty images, bad input."""
import numpy as np
import pytest

from tinymask.model import init_params, is_trainable, LOSS_NAMES, predict, train_backward, train_forward
from tiny import tiny_batch, tiny_config


def total_loss(losses):
    return sum(float(v) for v in losses.values())


# ---------------------------------------------------------------------------------------------------------------
# The whole-model gradient check, on a geometry that exercises every route a gradient can take.
# ---------------------------------------------------------------------------------------------------------------

WIRING_SIZE = 64
WIRING_BOXES = (([[4, 6, 14, 16], [30, 8, 50, 26], [8, 24, 48, 62]], [1, 2, 2]),
                ([[3, 4, 61, 58], [40, 40, 49, 51]], [2, 1]))


def wiring_config(**overrides):
    """The tiny model on 64-px images, set so that a gradient check visits every FPN level: FPN Eq. 1's canonical size
    is 24 px instead of 224 (the boxes of `wiring_batch`, 10 to 58 px, then read P2, P3, P4 and P5), and the RPN
    samples every labelled anchor (1024 ≥ the 1023 anchors of a 64-px image), P6's included."""
    base = dict(min_size=WIRING_SIZE, max_size=WIRING_SIZE, fpn_canonical_size=24, rpn_batch_size_per_image=1024,
                box_batch_size_per_image=16, box_positive_fraction=0.5)
    return tiny_config(**{**base, **overrides})


def wiring_batch(dtype=np.float64):
    """Two 64-px images: five instances of 10 to 58 px, one per FPN level and a second on P2."""
    rng = np.random.default_rng(3)
    images, targets = [], []
    for boxes, labels in WIRING_BOXES:
        images.append(rng.random((3, WIRING_SIZE, WIRING_SIZE)).astype(dtype))
        masks = np.zeros((len(boxes), WIRING_SIZE, WIRING_SIZE), np.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes):
            m[y0 + 1:y1 - 1, x0 + 1:x1 - 2] = 1
        targets.append({"boxes": np.array(boxes, dtype), "labels": np.array(labels), "masks": masks})
    return images, targets


def levels_used(cache):
    """What the step below the gradient check really did, per pyramid level: (sampled anchors, positive anchors) per
    RPN level, and the number of box-head and mask-head RoIs pooled from each map."""
    counts = np.cumsum([0] + [H * W * A for (N, A, H, W) in cache["shapes"]])  # anchor index ranges per level

    def per_level(used):  # (N, T) bool -> (levels,)
        return np.bincount(np.searchsorted(counts, np.flatnonzero(used.any(axis=0)), side="right") - 1,
                           minlength=len(cache["shapes"]))

    sampled = per_level(cache["dobj_flat"] != 0)
    positive = per_level((cache["ddeltas_flat"] != 0).any(axis=-1))
    box = [len(idx) for idx, _ in cache["c_box_pool"][1]]
    mask = [len(idx) for idx, _ in cache["c_mask_pool"][1]] if cache["c_mask_pool"] is not None else []
    return sampled, positive, box, mask


def assert_every_level_exercised(cache):
    sampled, positive, box, mask = levels_used(cache)
    assert np.all(sampled > 0), f"sampled anchors per RPN level {sampled.tolist()}: some level gets no gradient"
    assert np.count_nonzero(positive) >= 4, f"positive anchors per RPN level {positive.tolist()}"
    assert len(box) == 4 and min(box) > 0, f"box-head RoIs per level P2..P5: {box}"
    assert len(mask) == 4 and min(mask) > 0, f"mask-head RoIs per level P2..P5: {mask}"


SMALL_INIT = ("cls_logits.weight", "bbox_pred.weight", "cls_score.weight", "fc_logits.weight")


def check_whole_model(cfg, batch=wiring_batch, picks=2, seed=0, max_params=None, h=1e-6, always=()):
    """Analytic vs central-difference gradient of the total loss, per parameter tensor.

    The parameters are made to give every route a sizeable gradient: the output layers initialised at 0.01 or 0.001
    scaled ×30 (every loss term matters) and every bias random (ReLUs away from their kink at 0, including on RoIs whose features are all zero).
    Each trainable tensor must get a gradient that is not all zero; then `picks` of its non-zero entries and one
    entry drawn uniformly (zero or not) are checked against central differences, with the proposals held fixed (the
    RPN's top-k and NMS are not differentiable). With `max_params`, that many tensors drawn at random are checked,
    plus every tensor whose name contains one of the strings in `always`. Returns ({name: (analytic, numeric, max |gradient| of the whole
    tensor)}, losses, cache).
    """
    params = init_params(cfg, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 7)
    for k in params:
        if k.endswith(SMALL_INIT):
            params[k] = params[k] * 30
        if k.endswith(".bias") and is_trainable(k, cfg):
            params[k] = params[k] + 0.1 * rng.standard_normal(params[k].shape)
    images, targets = batch()
    losses, cache = train_forward(params, cfg, images, targets, np.random.default_rng(0))
    proposals = cache["proposals"]
    grads = train_backward(cache)
    trainable = {k for k in params if is_trainable(k, cfg)}
    assert set(grads) == trainable, f"parameters without a gradient: {sorted(trainable - set(grads))}"
    dead = sorted(k for k in trainable if not np.any(grads[k]))
    assert not dead, f"trainable tensors whose gradient is all zero: {dead}"

    def loss_now():
        out, _ = train_forward(params, cfg, images, targets, np.random.default_rng(0), proposals=proposals)
        return total_loss(out)

    rng = np.random.default_rng(1)
    names = sorted(trainable)
    if max_params is not None:
        drawn = rng.choice(names, size=min(max_params, len(names)), replace=False)
        names = sorted(set(drawn) | {n for n in names if any(part in n for part in always)})
    checked = {}
    for name in names:
        flat, gflat = params[name].reshape(-1), grads[name].reshape(-1)
        nonzero = np.flatnonzero(gflat)
        idx = np.unique(np.concatenate([rng.choice(nonzero, size=min(picks, nonzero.size), replace=False),
                                        rng.choice(flat.size, size=1)]))
        numeric = []
        for i in idx:
            old = flat[i]
            flat[i] = old + h
            plus = loss_now()
            flat[i] = old - h
            minus = loss_now()
            flat[i] = old
            numeric.append((plus - minus) / (2 * h))
        checked[name] = (gflat[idx].copy(), np.array(numeric), float(np.abs(gflat).max()))
    return checked, losses, cache


def per_tensor_errors(checked, atol=1e-9):
    """{name: max_i |a_i − n_i| / (max |gradient of the tensor| + atol)}: each tensor against its own scale; atol is
    the central difference's rounding floor (ε·L/h ≈ 1e-10 for a loss of order 1)."""
    return {name: float(np.max(np.abs(a - n)) / (scale + atol)) for name, (a, n, scale) in checked.items()}


def assert_gradients_match(checked, tol=1e-5):
    errors = per_tensor_errors(checked)
    bad = {k: (e, checked[k]) for k, e in errors.items() if not e <= tol}
    assert not bad, bad


def test_whole_model_gradient_fpn():
    checked, losses, cache = check_whole_model(wiring_config())
    assert all(float(v) > 1e-3 for v in losses.values()), losses
    assert_every_level_exercised(cache)
    assert_gradients_match(checked)
    for part in ("body.conv1", "layer1", "layer2", "layer3", "layer4", "fpn", "rpn.head", "box_head",
                 "box_predictor", "mask_head", "mask_predictor"):
        assert any(part in n for n in checked), part


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
    checked, _, cache = check_whole_model(wiring_config(**overrides), picks=1, max_params=24)
    assert_every_level_exercised(cache)
    assert_gradients_match(checked)


def test_whole_model_gradient_c4():
    cfg = wiring_config(backbone="c4", anchor_sizes=[8, 16, 32], box_pool_size=4, mask_pool_size=4,
                        mask_head_layers=[], mask_deconv_channels=4)
    checked, _, cache = check_whole_model(cfg)
    assert_gradients_match(checked)
    for part in ("layer3", "layer4", "rpn.head", "box_predictor", "mask_predictor"):
        assert any(part in n for n in checked), part


@pytest.mark.parametrize("extractor", ["align", "pool"])
def test_whole_model_gradient_c5(extractor):
    """Table 2(d)'s backbone: one stride-32 map (C5) and the FPN-style heads."""
    cfg = wiring_config(backbone="c5", anchor_sizes=[8, 16, 32], roi_extractor=extractor)
    checked, _, _ = check_whole_model(cfg)
    assert_gradients_match(checked)
    assert not any("fpn" in n for n in checked)
    for part in ("layer4", "box_head", "mask_head", "rpn.head"):
        assert any(part in n for n in checked), part


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
    from tinymask.box_logic.levels import assign_fpn_levels
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
