"""The RoI heads on their own: gradient checks of the box head and the mask heads, and the mask loss's routing.

The whole-model check (tests/test_model.py) samples a few entries of each parameter; these check every entry of every
parameter and of the input, per tensor, in float64, with a random upstream gradient on *each* output:

- the FPN box head (`tinymask.heads.box_head`): fc6 → fc7 → two predictors that read the same fc7 features, so a backward
  that drops either predictor's gradient into fc7 fails (class scores and box deltas get independent upstream
  gradients);
- the mask heads (`tinymask.heads.mask_head`): the FCN of Fig. 4 (right) and the MLP of Table 2(e);
- the C4 head (`tinymask.heads.c4_head`, Fig. 4 left): ResNet stage 5 read by the box predictors *and* by the mask head on
  the positive rows, so the mask branch's gradient must reach stage 5 too.

Every bias is random and non-zero (and every weight perturbed), so that no ReLU input sits on its kink and no
gradient is zero by construction; each tensor's gradient is asserted non-zero.

Then one training step of the tiny model: the mask loss must train exactly the ground-truth class's channel of each
positive RoI (§3, "decoupling"), and its value must be the binary cross-entropy of those channels, recomputed here.
"""
import numpy as np
import pytest

import tinymask.model as model
from tinymask.heads import c4_head
from tinymask.heads.c4_head import c4_head_backward, c4_head_forward
from tinymask.gradcheck import check_named
from tinymask.heads.mask_head import init_mask_head_params, mask_head_backward, mask_head_forward
from tinymask.box_logic.mask_targets import project_masks_on_boxes
from tinymask.heads.box_head import box_head_backward, box_head_forward, init_box_head_params
from tiny import tiny_batch, tiny_config

TOL = 1e-7  # float64 central differences on these sizes agree to ~1e-9


def randomise(params: dict, rng, scale=0.1) -> dict:
    """float64 copies, every entry moved by scale·N(0, 1): zero biases become random ones, ReLUs leave their kinks."""
    return {k: v.astype(np.float64) + scale * rng.standard_normal(v.shape) for k, v in params.items()}


def check_head(forward, backward, x, params):
    """Central differences against `backward` for the input and every parameter, one relative error per tensor.

    forward() -> ({output name: array}, cache) reads `x` and `params` (nudged in place); backward(douts, cache) ->
    (dx, {name: gradient}). Asserts that every parameter gets a gradient, that none is all zero, and that each
    tensor's error is below TOL.
    """
    analytic = {}

    def backward_and_keep(douts, cache):
        dx, grads = backward(douts, cache)
        analytic.update(roi_features=dx, **grads)
        return analytic

    wrt = {"roi_features": x, **params}
    errors = check_named(forward, backward_and_keep, wrt)
    assert set(analytic) == set(wrt), f"no gradient for {sorted(set(wrt) - set(analytic))}"
    zero = [k for k, g in analytic.items() if not np.any(g)]
    assert not zero, f"all-zero gradients: {zero}"
    bad = {k: e for k, e in errors.items() if not e < TOL}
    assert not bad, bad
    return errors


# ---------------------------------------------------------------------------------------------------------------
# Box head (FPN): both predictors feed fc7
# ---------------------------------------------------------------------------------------------------------------

def test_box_head_gradients(rng):
    C, P, rep, K = 3, 3, 6, 4  # (R, C, P, P) RoI features, fc width, classes
    params = randomise(init_box_head_params(C * P * P, rep, K, rng, np.float64), rng, scale=0.3)
    x = rng.standard_normal((3, C, P, P))

    def forward():
        logits, regression, cache = box_head_forward(params, x)
        return {"class_logits": logits, "box_regression": regression}, cache

    def backward(douts, cache):
        return box_head_backward(douts["class_logits"], douts["box_regression"], cache)

    check_head(forward, backward, x, params)


# ---------------------------------------------------------------------------------------------------------------
# Mask heads: FCN (Fig. 4 right) and MLP (Table 2e)
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["fcn", "mlp"])
def test_mask_head_gradients(rng, head):
    cfg = tiny_config(mask_head=head)  # 4 channels in, 4×4 RoI features, 3 classes; FCN: convs [4, 4]; MLP: 6 wide
    params = randomise(init_mask_head_params(cfg.fpn_channels, cfg, rng, np.float64), rng)
    x = rng.standard_normal((2, cfg.fpn_channels, cfg.mask_pool_size, cfg.mask_pool_size))

    def forward():
        logits, cache = mask_head_forward(params, x, cfg)  # (R, K, M, M)
        return {"mask_logits": logits}, cache

    def backward(douts, cache):
        return mask_head_backward(douts["mask_logits"], cache)

    logits, _ = mask_head_forward(params, x, cfg)
    assert logits.shape == (2, cfg.num_classes, cfg.mask_resolution, cfg.mask_resolution)
    names = set(params)
    assert any(".fc1." in k for k in names) == (head == "mlp")
    check_head(forward, backward, x, params)


# ---------------------------------------------------------------------------------------------------------------
# C4 head (Fig. 4 left): stage 5, the box predictors, and the mask head on the positive rows of stage 5's output
# ---------------------------------------------------------------------------------------------------------------

def test_c4_head_gradients_with_mask_branch(rng):
    cfg = tiny_config(backbone="c4", base_channels=1, num_groups=1, box_pool_size=4, mask_head_layers=[],
                      mask_deconv_channels=3)  # stage 5: 16 -> 32 channels, 4×4 RoIs -> 2×2; masks 4×4
    rcfg = model.resnet_config(cfg)
    full = model.init_params(cfg, seed=0, dtype=np.float64)
    keep = (c4_head.STAGE5, "roi_heads.box_predictor.", "roi_heads.mask_predictor.", "roi_heads.mask_head.")
    params = randomise({k: v for k, v in full.items() if k.startswith(keep) and model.is_trainable(k, cfg)}, rng)
    assert any(k.startswith(c4_head.STAGE5) for k in params) and any("mask_predictor" in k for k in params)
    R, positive = 3, np.array([True, False, True])  # the mask head reads rows 0 and 2 of stage 5's output
    x = rng.standard_normal((R, rcfg.out_channels(4), cfg.box_pool_size, cfg.box_pool_size))  # (R, 16, 4, 4)

    def forward():
        res5, logits, regression, c_box = c4_head_forward(params, x, rcfg)  # res5 (R, 32, 2, 2)
        mask_logits, c_mask = mask_head_forward(params, res5[positive], cfg)  # (2, K, 4, 4)
        return {"class_logits": logits, "box_regression": regression, "mask_logits": mask_logits}, (c_box, c_mask)

    def backward(douts, cache):
        c_box, c_mask = cache
        dmask_feats, grads = mask_head_backward(douts["mask_logits"], c_mask)
        dres5 = np.zeros(c_box["res5_shape"])
        dres5[positive] = dmask_feats  # as tinymask.model.train_backward scatters it
        dx, g = c4_head_backward(douts["class_logits"], douts["box_regression"], dres5, c_box)
        return dx, {**grads, **g}

    outs, _ = forward()
    assert outs["mask_logits"].shape == (2, cfg.num_classes, cfg.mask_resolution, cfg.mask_resolution)
    check_head(forward, backward, x, params)


# ---------------------------------------------------------------------------------------------------------------
# The mask loss in a training step: exactly the ground-truth class's channel
# ---------------------------------------------------------------------------------------------------------------

def test_mask_loss_trains_only_the_ground_truth_channel(monkeypatch):
    cfg = tiny_config()
    assert cfg.min_size == cfg.max_size == 48  # the images are not resized: RoIs and masks share coordinates
    params = model.init_params(cfg, seed=0, dtype=np.float64)
    images, targets = tiny_batch()
    recorded = []
    real_forward = model.mask_head_forward

    def recording_forward(*args, **kwargs):  # keep the mask logits that the training step computes
        out = real_forward(*args, **kwargs)
        recorded.append(out[0].copy())
        return out

    monkeypatch.setattr(model, "mask_head_forward", recording_forward)
    losses, cache = model.train_forward(params, cfg, images, targets, np.random.default_rng(0))
    (logits,) = recorded  # (P, K, M, M)
    dlogits = cache["dmask_logits"]
    assert dlogits.shape == logits.shape

    # Each positive RoI's class, from the ground truth it matched (not from the RoI labels the model passed on).
    M = cfg.mask_resolution
    classes, mask_targets = [], []
    for r, t in zip(cache["rois"], targets):
        pos = r["labels"] > 0
        idx = r["matched_idxs"][pos]
        classes.append(t["labels"][idx])
        mask_targets.append(project_masks_on_boxes(t["masks"], r["boxes"][pos], idx, M))
    classes = np.concatenate(classes)  # (P,)
    mask_targets = np.clip(np.concatenate(mask_targets), 0.0, 1.0)  # (P, M, M)
    P = len(classes)
    assert P == logits.shape[0] and set(classes) == {1, 2}, classes  # both classes present: a shifted channel shows

    # The gradient lives on channel = class of each positive RoI, and nowhere else.
    channel_has_grad = np.any(dlogits != 0, axis=(2, 3))  # (P, K)
    expected = np.zeros_like(channel_has_grad)
    expected[np.arange(P), classes] = True
    np.testing.assert_array_equal(channel_has_grad, expected)

    # The loss is the mean binary cross-entropy of exactly those channels against the targets (§3).
    z = logits[np.arange(P), classes]  # (P, M, M)
    bce = np.maximum(z, 0) - z * mask_targets + np.log1p(np.exp(-np.abs(z)))
    assert float(losses["loss_mask"]) == pytest.approx(bce.mean(), rel=1e-12)
    np.testing.assert_allclose(dlogits[np.arange(P), classes], (1 / (1 + np.exp(-z)) - mask_targets) / z.size,
                               rtol=1e-10, atol=1e-15)
