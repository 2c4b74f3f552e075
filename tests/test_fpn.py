"""FPN: gradient checks w.r.t. C2..C5 and every parameter (float64, sides that are not multiples of 32), the whole
ResNet-FPN backbone against torchvision's outputs, shapes and names at full size (float32), bad input."""
import json
from pathlib import Path

import numpy as np
import pytest

from tinymask.backbone.fpn import (fpn_backward, fpn_forward, fpn_param_shapes, init_fpn_params, resnet_fpn_backward,
                                   resnet_fpn_forward, TORCHVISION_NAMES)
from tinymask.backbone.resnet import init_resnet_params, resnet_param_shapes, ResNetConfig
from tinymask.gradcheck import check_named, rel_error
from torchvision_fixture import load_tiny_fpn_model, regenerate_weights

TOL = 1e-7
DATA = Path(__file__).parent / "data"


check_grads = check_named  # the dict form of check_layer (tinymask/gradcheck.py)


# C2..C5 of a 35×45 image (strides 4..32, rounded up): 9×12, 5×6, 3×3, 2×2; P6 is 1×1. The rows go 2 -> 3 -> 5 -> 9,
# so the top-down resize is never an exact ×2 upsample.
C_SHAPES = {"C2": (2, 4, 9, 12), "C3": (2, 6, 5, 6), "C4": (2, 8, 3, 3), "C5": (2, 10, 2, 2)}


def tiny_fpn(rng, out_channels=3):
    features = {k: rng.standard_normal(s) for k, s in C_SHAPES.items()}
    params = regenerate_weights(fpn_param_shapes([s[1] for s in C_SHAPES.values()], out_channels), seed=4)
    return features, params


def test_fpn_gradients(rng):
    features, params = tiny_fpn(rng)
    sizes = [s[2:] for s in C_SHAPES.values()]
    assert any(2 * h != h_fine or 2 * w != w_fine for (h_fine, w_fine), (h, w) in zip(sizes, sizes[1:]))
    wrt = {**features, **params}

    def backward(douts, cache):
        dfeatures, grads = fpn_backward(douts, cache)
        assert set(grads) == set(params)
        return {**dfeatures, **grads}

    errors = check_grads(lambda: fpn_forward(params, features), backward, wrt)
    assert max(errors.values()) < TOL, errors


def test_fpn_shapes_and_missing_gradients(rng):
    features, params = tiny_fpn(rng)
    pyramid, cache = fpn_forward(params, features)
    assert list(pyramid) == ["P2", "P3", "P4", "P5", "P6"]
    for k in (2, 3, 4, 5):
        assert pyramid[f"P{k}"].shape == (2, 3) + C_SHAPES[f"C{k}"][2:]
    assert pyramid["P6"].shape == (2, 3, 1, 1)
    np.testing.assert_array_equal(pyramid["P6"], pyramid["P5"][:, :, ::2, ::2])  # kernel-1 max pool = subsampling
    # a missing entry is a zero gradient
    d6 = rng.standard_normal(pyramid["P6"].shape)
    dfeat, grads = fpn_backward({"P6": d6}, cache)
    zeros = {k: np.zeros_like(v) for k, v in pyramid.items()}
    dfeat_full, grads_full = fpn_backward({**zeros, "P6": d6}, cache)
    for k in dfeat:
        np.testing.assert_array_equal(dfeat[k], dfeat_full[k])
    assert set(grads) == set(grads_full) == set(params)


def test_fpn_on_fewer_levels(rng):
    """C3..C5 only (torchvision's returned_layers=[2, 3, 4]): three laterals, P3..P5 and P6."""
    features = {k: rng.standard_normal(s) for k, s in C_SHAPES.items() if k != "C2"}
    params = regenerate_weights(fpn_param_shapes([6, 8, 10], 3), seed=5)
    pyramid, cache = fpn_forward(params, features)
    assert list(pyramid) == ["P3", "P4", "P5", "P6"]
    dfeat, _ = fpn_backward({"P3": np.ones_like(pyramid["P3"])}, cache)
    assert {k: v.shape for k, v in dfeat.items()} == {k: v.shape for k, v in features.items()}


def test_resnet_fpn_gradients(rng):
    """The whole ResNet-FPN backbone, w.r.t. the image (13×18: every level rounds up) and a few parameters."""
    cfg = ResNetConfig(blocks=(1, 1, 1, 1), stem_channels=4, base_channels=2)
    params = regenerate_weights({**resnet_param_shapes(cfg), **fpn_param_shapes([8, 16, 32, 64], 3)}, seed=6)
    x = rng.standard_normal((1, 3, 13, 18))
    wrt = {"x": x, **{k: params[k] for k in ("backbone.body.layer2.0.conv1.weight",
                                             "backbone.fpn.inner_blocks.3.0.bias",
                                             "backbone.fpn.layer_blocks.0.0.bias")}}

    def backward(douts, cache):
        dx, grads = resnet_fpn_backward(douts, cache)
        return {"x": dx, **grads}

    errors = check_grads(lambda: resnet_fpn_forward(params, x, cfg), backward, wrt)
    assert max(errors.values()) < TOL, errors


# ---------------------------------------------------------------------------------------------------------------
# Parity with torchvision
# ---------------------------------------------------------------------------------------------------------------

def test_matches_torchvision_features():
    """ResNet [1,1,1,1], width_per_group 16, frozen BN + FPN 32 on the fixture's batch: torchvision's 5 maps."""
    meta, params, arrays = load_tiny_fpn_model()
    assert len(params) == len(meta["state_dict"]) == 127
    cfg = ResNetConfig(blocks=tuple(meta["config"]["resnet_blocks"]),
                       width_per_group=meta["config"]["width_per_group"], norm="frozen_bn", eps=1e-5)
    pyramid, _ = resnet_fpn_forward(params, arrays["transformed"], cfg)  # (1, 3, 160, 224)
    for ours, theirs in TORCHVISION_NAMES.items():
        ref = arrays[f"features.{theirs}"]
        assert pyramid[ours].shape == ref.shape
        assert rel_error(pyramid[ours], ref) <= 1e-6, ours
        np.testing.assert_allclose(pyramid[ours], ref, rtol=1e-6, atol=1e-9 * np.abs(ref).max())


# ---------------------------------------------------------------------------------------------------------------
# Full size: shapes and torchvision names
# ---------------------------------------------------------------------------------------------------------------

def test_fpn_param_shapes_match_torchvision():
    keys = json.loads((DATA / "maskrcnn_resnet50_fpn_state_dict_keys.json").read_text())
    expected = {name: tuple(shape) for name, shape in keys
                if name.startswith("backbone.") and not name.endswith("num_batches_tracked")}
    shapes = {**resnet_param_shapes(ResNetConfig(depth=50)), **fpn_param_shapes([256, 512, 1024, 2048], 256)}
    assert list(shapes.items()) == list(expected.items())


@pytest.mark.parametrize("depth", [50, 101])
def test_resnet_fpn_shapes(depth):
    rng = np.random.default_rng(0)
    cfg = ResNetConfig(depth=depth)
    params = {**init_resnet_params(cfg, rng), **init_fpn_params([256, 512, 1024, 2048], 256, rng)}
    x = rng.standard_normal((1, 3, 100, 130)).astype(np.float32)
    pyramid, _ = resnet_fpn_forward(params, x, cfg)
    sides = {2: (25, 33), 3: (13, 17), 4: (7, 9), 5: (4, 5), 6: (2, 3)}  # ⌈100/2^k⌉ × ⌈130/2^k⌉
    assert {k: v.shape for k, v in pyramid.items()} == {f"P{k}": (1, 256) + s for k, s in sides.items()}
    assert all(v.dtype == np.float32 for v in pyramid.values())


def test_init_fpn_params(rng):
    params = init_fpn_params([256, 512], 64, rng, np.float64)
    w = params["backbone.fpn.inner_blocks.1.0.weight"]  # (64, 512, 1, 1): bound √(3/512)
    assert w.shape == (64, 512, 1, 1) and np.abs(w).max() <= np.sqrt(3 / 512)
    assert abs(w.std() - np.sqrt(1 / 512)) < 0.02 * np.sqrt(1 / 512)  # uniform ±b has std b/√3 = √(1/fan_in)
    assert np.all(params["backbone.fpn.layer_blocks.0.0.bias"] == 0)
    assert params["backbone.fpn.layer_blocks.1.0.weight"].shape == (64, 64, 3, 3)


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------

def test_bad_input(rng):
    features, params = tiny_fpn(rng)
    with pytest.raises(ValueError, match="consecutive"):
        fpn_forward(params, {k: v for k, v in features.items() if k != "C3"})
    with pytest.raises(ValueError, match="consecutive"):
        fpn_forward(params, {**features, "P2": features["C2"]})
    with pytest.raises(KeyError, match=r"backbone\.fpn\.layer_blocks\.2\.0\.bias"):
        fpn_forward({k: v for k, v in params.items() if k != "backbone.fpn.layer_blocks.2.0.bias"}, features)
    with pytest.raises(ValueError, match=r"inner_blocks\.1\.0\.weight .* expects 6 input channels, got 5"):
        fpn_forward(params, {**features, "C3": features["C3"][:, :5]})
    pyramid, cache = fpn_forward(params, features)
    with pytest.raises(ValueError, match="'P7'"):
        fpn_backward({"P7": pyramid["P6"]}, cache)
    with pytest.raises(ValueError, match="shape"):
        fpn_backward({"P3": pyramid["P2"]}, cache)
