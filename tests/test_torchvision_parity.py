"""A whole torchvision Mask R-CNN, reproduced stage by stage in float64 (tests/data/tiny_fpn_model.*).

The weights are regenerated from the json's seed (tests/torchvision_fixture.py); the config comes from the json. The
reference ran torchvision's pure-Python roi_align, whose samples past the map's edge read the edge value, hence
pooler_outside="edge" (see tinymask/layers/roi_align.py); everything else is torchvision's default.
"""
import numpy as np
import pytest

from tinymask.config import MaskRCNNConfig
from tinymask.gradcheck import rel_error
from tinymask.model import predict
from torchvision_fixture import load_tiny_fpn_model

TOL = 1e-6


def config_from_fixture(c: dict) -> MaskRCNNConfig:
    keys = ["num_classes", "resnet_blocks", "width_per_group", "fpn_channels", "box_head_representation",
            "mask_head_layers", "min_size", "max_size", "anchor_sizes", "aspect_ratios", "rpn_pre_nms_top_n_test",
            "rpn_post_nms_top_n_test", "rpn_nms_thresh", "box_score_thresh", "box_nms_thresh",
            "box_detections_per_img", "pooler_sampling_ratio", "pooler_aligned", "box_pool_size", "mask_pool_size"]
    return MaskRCNNConfig(**{k: c[k] for k in keys}, pooler_outside="edge")


@pytest.fixture(scope="module")
def run():
    meta, params, ref = load_tiny_fpn_model()
    cfg = config_from_fixture(meta["config"])
    results, stages = predict(params, cfg, [ref["image"]], mask_threshold=None, return_stages=True)
    return results[0], stages, ref


def close(ours, ref):
    ours = np.asarray(ours)
    assert ours.shape == ref.shape, (ours.shape, ref.shape)
    return rel_error(ours, ref) <= TOL and np.allclose(ours, ref, rtol=TOL, atol=TOL * max(1.0, np.abs(ref).max()))


def test_preprocessing(run):
    _, stages, ref = run
    assert close(stages["batch"], ref["transformed"])
    assert tuple(stages["image_sizes"][0]) == tuple(ref["image_size"])


def test_fpn_features(run):
    _, stages, ref = run
    for i, key in enumerate(["features.0", "features.1", "features.2", "features.3", "features.pool"]):
        assert close(stages["rpn_maps"][i], ref[key]), key


def test_rpn_outputs_and_anchors(run):
    _, stages, ref = run
    for l in range(5):
        assert close(stages["objectness"][l], ref[f"rpn.objectness.{l}"])
        assert close(stages["deltas"][l], ref[f"rpn.deltas.{l}"])
    np.testing.assert_array_equal(stages["anchors"], ref["anchors"])
    assert close(stages["proposals"][0], ref["proposals"])


def test_box_head(run):
    _, stages, ref = run
    assert close(stages["box_features"][:64], ref["box_roi_features_first64"])
    assert close(stages["class_logits"], ref["class_logits"])
    assert close(stages["box_regression"], ref["box_regression"])


def test_detections_and_masks(run):
    result, stages, ref = run
    det = stages["detections"][0]
    assert close(det["boxes"], ref["det.boxes"])
    assert close(det["scores"], ref["det.scores"])
    np.testing.assert_array_equal(det["labels"], ref["det.labels"])
    assert close(stages["mask_logits"], ref["det.mask_logits"])
    assert close(result["boxes"], ref["out.boxes"])
    assert close(result["scores"], ref["out.scores"])
    np.testing.assert_array_equal(result["labels"], ref["out.labels"])
    assert close(result["masks"], ref["out.masks"][:, 0])
