"""One training step of torchvision's Mask R-CNN, replayed: the five losses and every gradient of their sum.

The fixture `tests/data/tiny_fpn_train_step.{json,npz}` (from ../shared/reference/torchvision; its README explains
every key) holds one float64 training step of a small torchvision Mask R-CNN — the same network as the inference
fixture of `test_torchvision_parity.py` — on an image whose instances put sampled RoIs on every level P2–P5 and
positive anchors on every RPN level P2–P6. It records the step's random choices and PyTorch autograd's gradients.

tinymask runs the same step with those choices injected through `train_forward`'s test hooks (`proposals=`: the
recorded RPN proposals, which autograd treats as constants too; `samples=`: the anchors and RoIs torchvision's
`randperm` drew, which NumPy cannot reproduce), then its hand-written `train_backward`. Everything else — anchors,
both matchers, the targets, the RoI levels, every layer forward and backward — is tinymask's own. A wiring bug in the
backward pass (a gradient sent to the wrong level, a branch's gradient dropped, a loss given the wrong channel) moves
some parameter's gradient, and the per-tensor comparison below names which.

Two details of the reference, from its README: it ran torchvision's pure-Python `roi_align`, whose samples beyond the
map read the edge value (`pooler_outside="edge"`; it matters for instance 4, whose box leaves the image), and it
scaled the ground-truth boxes by a float32 ratio, so the test gives tinymask the boxes that its float64 scaling turns
into the recorded resized boxes.
"""
import json

import numpy as np
import pytest

import tinymask.model

from tinymask.config import MaskRCNNConfig
from tinymask.box_logic.levels import assign_fpn_levels
from tinymask.model import backbone_forward, is_trainable, train_backward, train_forward
from tinymask.box_logic.resize import preprocess, preprocess_targets
from torchvision_fixture import DATA, regenerate_weights

TOL = 1e-9  # relative to each array's largest value; the reference's own run-to-run spread is 8e-16
LEVELS = ("P2", "P3", "P4", "P5", "P6")


def config_from_fixture(c: dict) -> MaskRCNNConfig:
    same = ["num_classes", "resnet_blocks", "width_per_group", "fpn_channels", "box_head_representation",
            "mask_head_layers", "min_size", "max_size", "anchor_sizes", "aspect_ratios", "rpn_fg_iou_thresh",
            "rpn_bg_iou_thresh", "rpn_batch_size_per_image", "rpn_positive_fraction", "box_fg_iou_thresh",
            "box_bg_iou_thresh", "box_batch_size_per_image", "box_positive_fraction", "pooler_aligned",
            "image_mean", "image_std", "size_divisible"]
    cfg = MaskRCNNConfig(**{k: c[k] for k in same}, rpn_box_beta=c["rpn_smooth_l1_beta"],
                         box_box_beta=c["box_smooth_l1_beta"], box_coder_weights=list(c["bbox_reg_weights"]),
                         pooler_sampling_ratio=c["box_pool"]["sampling_ratio"],
                         box_pool_size=c["box_pool"]["output_size"], mask_pool_size=c["mask_pool"]["output_size"],
                         norm="frozen_bn", pooler_outside="edge")
    assert cfg.mask_resolution == c["mask_target_size"]
    return cfg


def rel(ours, ref) -> float:
    """max |ours − ref| / max |ref| (0 when both are zero)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    scale = np.abs(ref).max(initial=0.0)
    diff = np.abs(ours - ref).max(initial=0.0)
    return diff / scale if scale > 0 else diff


@pytest.fixture(scope="module")
def fixture():
    meta = json.loads((DATA / "tiny_fpn_train_step.json").read_text())
    with np.load(DATA / "tiny_fpn_train_step.npz") as npz:
        ref = {k: npz[k] for k in npz.files}
    params = regenerate_weights(meta["state_dict"], meta["seed"])
    cfg = config_from_fixture(meta["config"])
    (h, w), (h2, w2) = ref["image"].shape[1:], ref["train.image_size"]
    scale = np.array([w2 / w, h2 / h, w2 / w, h2 / h])  # tinymask's float64 ratio (torchvision's is float32)
    targets = [{"boxes": ref["train.gt.boxes"] / scale, "labels": ref["gt.labels"], "masks": ref["gt.masks"]}]
    roi_inds, roi_labels = ref["train.roi.sampled_inds"], ref["train.roi.labels"]
    samples = {"rpn": [(ref["train.rpn.sampled_pos_inds"], ref["train.rpn.sampled_neg_inds"])],
               "roi": [(roi_inds[roi_labels > 0], roi_inds[roi_labels == 0])]}
    return meta, params, cfg, ref, targets, samples


@pytest.fixture(scope="module")
def step(fixture):
    meta, params, cfg, ref, targets, samples = fixture
    with pytest.MonkeyPatch.context() as mp:
        # instance 4's box leaves the image on purpose (to put a RoI on P5); tinymask refuses such a box from a user
        # as a likely mistake, so its check is bypassed here, for this one step
        mp.setattr(tinymask.model, "check_targets", lambda *args: None)
        losses, cache = train_forward(params, cfg, [ref["image"]], targets, np.random.default_rng(0),
                                      proposals=[ref["train.rpn.proposals"]], samples=samples)
    grads, stages = train_backward(cache, return_stages=True)
    return losses, cache, grads, stages


def test_fixture_covers_every_level(fixture):
    """The geometry the wiring checks rely on: RoIs on P2–P5, positive anchors on P2–P6 (asserted, not assumed)."""
    meta, _, _, ref, _, _ = fixture
    assert set(ref["train.roi.levels"].tolist()) == {0, 1, 2, 3}
    assert set(ref["train.mask.levels"].tolist()) == {0, 1, 2, 3}
    counts = np.cumsum([0] + meta["counts"]["num_anchors_per_level"])
    pos_levels = np.searchsorted(counts, ref["train.rpn.sampled_pos_inds"], side="right") - 1
    assert set(pos_levels.tolist()) == {0, 1, 2, 3, 4}


def test_preprocessing_and_backbone(fixture):
    _, params, cfg, ref, targets, _ = fixture
    batch, image_sizes, original = preprocess([ref["image"]], cfg, np.float64)
    assert tuple(image_sizes[0]) == tuple(ref["train.image_size"])
    sums = [batch.sum(), (batch ** 2).sum()]
    assert rel(sums, ref["train.transformed.sums"]) < 1e-12
    (t,) = preprocess_targets(targets, original, image_sizes)
    assert rel(t["boxes"], ref["train.gt.boxes"]) < 1e-15
    np.testing.assert_array_equal(t["masks"], ref["train.gt.masks"])
    rpn_maps, _, _ = backbone_forward(params, cfg, batch)
    for m, name in zip(rpn_maps, ["0", "1", "2", "3", "pool"]):
        assert rel([m.sum(), (m ** 2).sum()], ref[f"train.features.{name}.sums"]) < 1e-12, name


def test_targets_and_sampled_rois(fixture, step):
    _, _, _, ref, _, _ = fixture
    _, cache, _, _ = step
    np.testing.assert_array_equal(cache["outputs"]["rpn_labels"][0], ref["train.rpn.anchor_labels"])
    (rois,) = cache["rois"]
    assert rel(rois["boxes"], ref["train.roi.proposals"]) < 1e-15
    np.testing.assert_array_equal(rois["labels"], ref["train.roi.labels"])
    pos = rois["labels"] > 0
    np.testing.assert_array_equal(rois["matched_idxs"][pos], ref["train.roi.matched_idxs"][pos])
    assert rel(rois["regression_targets"][pos], ref["train.roi.regression_targets"][pos]) < 1e-12
    levels = assign_fpn_levels(rois["boxes"], 2, 5) - 2
    np.testing.assert_array_equal(levels, ref["train.roi.levels"])


def test_head_outputs_and_mask_targets(fixture, step):
    _, _, _, ref, _, _ = fixture
    _, cache, _, _ = step
    out = cache["outputs"]
    assert rel(out["class_logits"], ref["train.roi.class_logits"]) < TOL
    assert rel(out["box_regression"], ref["train.roi.box_regression"]) < TOL
    assert rel(out["mask_targets"], ref["train.mask.targets"]) < 1e-12
    labels = ref["train.mask.labels"]
    assert rel(out["mask_logits"][np.arange(len(labels)), labels], ref["train.mask.logits"]) < TOL


def test_losses(fixture, step):
    _, _, _, ref, _, _ = fixture
    losses, *_ = step
    for name, value in losses.items():
        key = "train.loss_objectness_float64" if name == "loss_objectness" else f"train.{name}"
        assert abs(float(value) - float(ref[key])) <= 1e-12 * abs(float(ref[key])), (name, float(value), ref[key])
    assert abs(sum(float(v) for v in losses.values()) - float(ref["train.loss_total"])) < 1e-8  # float32 objectness


def test_gradients_reaching_the_pyramid_and_the_roi_features(fixture, step):
    _, _, _, ref, _, _ = fixture
    *_, stages = step
    d = {k: v.copy() for k, v in stages["maps"].items()}
    d["P5"][:, :, ::2, ::2] += d["P6"]  # P6 = P5[::2, ::2]: autograd's ∂L/∂P5 includes what comes back through P6
    for level, name in zip(LEVELS, ["0", "1", "2", "3", "pool"]):
        assert rel(d[level], ref[f"grad_wrt.features.{name}"]) < TOL, level
    assert rel(stages["box_features"], ref["grad_wrt.box_roi_features"]) < TOL
    assert rel(stages["mask_features"], ref["grad_wrt.mask_roi_features"]) < TOL


def test_every_parameter_gradient(fixture, step):
    """Per tensor: the full gradient (50 tensors), or 4096 sampled entries (9), then eight random projections and
    the norm of every one of the 59, each within TOL of autograd's, relative to that tensor's own scale."""
    meta, params, cfg, ref, _, _ = fixture
    *_, grads, _ = step
    trainable = {t["name"]: t for t in meta["trainable"]}
    assert {k for k in params if is_trainable(k, cfg)} == set(trainable)
    assert set(grads) == set(trainable)
    names = list(ref["grad.names"])
    failures = []
    for t, name in enumerate(names):
        info, g = trainable[name], grads[name]
        assert np.count_nonzero(g) == info["nonzero"] or abs(np.count_nonzero(g) - info["nonzero"]) <= 1e-3 * g.size, \
            (name, np.count_nonzero(g), info["nonzero"])
        if info["stored"] == "full":
            err = rel(g, ref[f"grad.{name}"])
        else:
            err = rel(g.reshape(-1)[ref[f"grad.{name}.idx"]], ref[f"grad.{name}.val"])
        R = np.random.default_rng(info["proj_seed"]).standard_normal((8,) + g.shape)  # the fixture's rule
        proj = (R.reshape(8, -1) @ g.reshape(-1))  # (8,) Σ grad · R_k
        err = max(err, rel(proj, ref["grad.proj"][t]), rel(np.sqrt((g ** 2).sum()), ref["grad.norm"][t]))
        if not err < TOL:
            failures.append((name, err))
    assert not failures, failures


def test_whole_backward_along_random_directions(fixture, step):
    """Σ_t ⟨grad_t, R_t[k]⟩ over all 59 tensors: the derivative of the loss along eight directions through every
    parameter at once."""
    meta, _, _, ref, _, _ = fixture
    *_, grads, _ = step
    total = np.zeros(8)
    for info in meta["trainable"]:
        g = grads[info["name"]]
        total += np.random.default_rng(info["proj_seed"]).standard_normal((8,) + g.shape).reshape(8, -1) @ g.reshape(-1)
    assert rel(total, ref["grad.proj"].sum(axis=0)) < TOL
