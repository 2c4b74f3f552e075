"""ResNet backbone: gradient checks of the stem, the bottleneck block and a whole small network (float64), shapes of
ResNet-50/101 and the C4 backbone (float32), parameter names and shapes against torchvision's, initialisation, bad
input, and one block against PyTorch when it is installed."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from tinymask.backbone.resnet import (bottleneck_backward, bottleneck_forward, DEPTH_BLOCKS, init_resnet_params,
                                      resnet_backward, resnet_forward, resnet_param_shapes, resnet_stage_backward,
                                      resnet_stage_forward, ResNetConfig, stem_backward, stem_forward)
from tinymask.gradcheck import check_named
from torchvision_fixture import regenerate_weights

TOL = 1e-7
DATA = Path(__file__).parent / "data"
# A ResNet small enough to check numerically: stem 4 channels, planes 2, 4, 8, 16 (outputs 8 .. 64 channels).
TINY = ResNetConfig(blocks=(1, 2, 1, 1), stem_channels=4, base_channels=2, num_groups=2)


check_grads = check_named  # the dict form of check_layer (tinymask/gradcheck.py)


def random_params(shapes: dict, seed=0) -> dict:
    """Random float64 parameters (non-trivial BN statistics, γ near 1) by the torchvision fixture's rule."""
    return regenerate_weights(shapes, seed)


# ---------------------------------------------------------------------------------------------------------------
# Gradient checks
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["frozen_bn", "group_norm"])
def test_stem_gradients(rng, norm):
    cfg = dataclasses.replace(TINY, norm=norm)
    shapes = {k: s for k, s in resnet_param_shapes(cfg, prefix="").items() if k.startswith(("conv1", "bn1"))}
    params = random_params(shapes)
    x = rng.standard_normal((2, 3, 11, 14))
    wrt = {"x": x, "conv1.weight": params["conv1.weight"]}
    if norm == "group_norm":
        wrt.update({"bn1.weight": params["bn1.weight"], "bn1.bias": params["bn1.bias"]})

    def forward():
        out, cache = stem_forward(params, "", x, cfg)
        return {"out": out}, cache

    def backward(douts, cache):
        dx, grads = stem_backward(douts["out"], cache)
        assert set(grads) == set(wrt) - {"x"}  # frozen BN: no gradient for its constants
        return {"x": dx, **grads}

    errors = check_grads(forward, backward, wrt)
    assert max(errors.values()) < TOL, errors


BLOCK_CASES = [
    # (name, C_in, planes, stride, stride_in_1x1)
    ("identity", 8, 2, 1, False),
    ("projection, channels change", 4, 2, 1, False),  # the first block of C2: stride 1 but 4 -> 8 channels
    ("projection, stride in 3x3", 4, 2, 2, False),
    ("projection, stride in 1x1", 4, 2, 2, True),
]


@pytest.mark.parametrize("norm", ["frozen_bn", "group_norm"])
@pytest.mark.parametrize("case", BLOCK_CASES, ids=[c[0] for c in BLOCK_CASES])
def test_bottleneck_gradients(rng, case, norm):
    _, c_in, planes, stride, in_1x1 = case
    cfg = ResNetConfig(blocks=(1, 1, 1, 1), norm=norm, num_groups=2, stride_in_1x1=in_1x1)
    width, c_out = planes, 4 * planes
    shapes = {"conv1.weight": (width, c_in, 1, 1), "conv2.weight": (width, width, 3, 3),
              "conv3.weight": (c_out, width, 1, 1)}
    norms = {"bn1": width, "bn2": width, "bn3": c_out}
    if case[0] != "identity":
        shapes["downsample.0.weight"] = (c_out, c_in, 1, 1)
        norms["downsample.1"] = c_out
    for name, c in norms.items():
        shapes.update({f"{name}.weight": (c,), f"{name}.bias": (c,)})
        if norm == "frozen_bn":
            shapes.update({f"{name}.running_mean": (c,), f"{name}.running_var": (c,)})
    params = random_params(shapes, seed=1)
    x = rng.standard_normal((2, c_in, 7, 9))
    wrt = {"x": x, **{k: v for k, v in params.items() if v.ndim == 4 or norm == "group_norm"}}

    def forward():
        out, cache = bottleneck_forward(params, "", x, cfg, planes=planes, stride=stride)
        return {"out": out}, cache

    def backward(douts, cache):
        dx, grads = bottleneck_backward(douts["out"], cache)
        assert set(grads) == set(wrt) - {"x"}
        return {"x": dx, **grads}

    out = forward()[0]["out"]
    assert out.shape == (2, c_out, -(-7 // stride), -(-9 // stride))
    errors = check_grads(forward, backward, wrt)
    assert max(errors.values()) < TOL, errors


def test_stride_placement_changes_the_block(rng):
    """stride_in_1x1 moves the stride: same output shape, a different function, so the flag is really used."""
    cfg = dataclasses.replace(TINY, return_stages=("C3",))
    params = random_params(resnet_param_shapes(cfg))
    x = rng.standard_normal((1, 8, 9, 11))  # C2 of TINY
    a, _ = bottleneck_forward(params, "backbone.body.layer2.0.", x, cfg, planes=4, stride=2)
    b, _ = bottleneck_forward(params, "backbone.body.layer2.0.", x, dataclasses.replace(cfg, stride_in_1x1=True),
                              planes=4, stride=2)
    assert a.shape == b.shape == (1, 16, 5, 6)
    assert not np.allclose(a, b)


@pytest.mark.parametrize("norm", ["frozen_bn", "group_norm"])
def test_resnet_gradients(rng, norm):
    """A whole ResNet returning C2..C5 (16×20 input: C2 4×5, C3 2×3, C4 1×2, C5 1×1); stage 3 has two blocks, so an
    identity block is inside. Frozen BN: w.r.t. the image and a conv of every stage. Group norm: w.r.t. γ / β of
    every stage, the stem's included, whose gradient crosses every group norm's dx on its way back."""
    cfg = dataclasses.replace(TINY, norm=norm)
    params = random_params(resnet_param_shapes(cfg), seed=2)
    x = rng.standard_normal((1, 3, 16, 20))
    p = "backbone.body."
    if norm == "frozen_bn":
        names = ["x", f"{p}conv1.weight", f"{p}layer1.0.conv1.weight", f"{p}layer1.0.downsample.0.weight",
                 f"{p}layer2.0.conv2.weight", f"{p}layer2.1.conv3.weight", f"{p}layer3.0.conv1.weight",
                 f"{p}layer4.0.conv1.weight"]
    else:
        names = [f"{p}bn1.weight", f"{p}bn1.bias", f"{p}layer1.0.bn3.weight", f"{p}layer1.0.downsample.1.bias",
                 f"{p}layer2.1.bn1.weight", f"{p}layer2.1.bn2.bias", f"{p}layer3.0.bn2.weight",
                 f"{p}layer4.0.bn1.bias", f"{p}layer4.0.downsample.1.weight", f"{p}layer1.0.conv3.weight"]
    wrt = {n: x if n == "x" else params[n] for n in names}

    def backward(douts, cache):
        dx, grads = resnet_backward(douts, cache)
        return {"x": dx, **grads}

    errors = check_grads(lambda: resnet_forward(params, x, cfg), backward, wrt)
    assert max(errors.values()) < TOL, errors


def test_resnet_gradient_keys(rng):
    """Gradients for exactly the trainable entries: convs always, γ/β only under group norm."""
    for norm in ("frozen_bn", "group_norm"):
        cfg = dataclasses.replace(TINY, norm=norm)
        params = random_params(resnet_param_shapes(cfg))
        feats, cache = resnet_forward(params, rng.standard_normal((1, 3, 16, 20)), cfg)
        _, grads = resnet_backward({k: np.ones_like(v) for k, v in feats.items()}, cache)
        expected = {k for k, v in params.items() if v.ndim == 4 or norm == "group_norm"}
        assert set(grads) == expected
        assert all(grads[k].shape == params[k].shape for k in grads)


def test_missing_feature_gradients_are_zero(rng):
    params = random_params(resnet_param_shapes(TINY))
    feats, cache = resnet_forward(params, rng.standard_normal((1, 3, 16, 20)), TINY)
    d3 = rng.standard_normal(feats["C3"].shape)
    dx, grads = resnet_backward({"C3": d3}, cache)
    zeros = {k: np.zeros_like(v) for k, v in feats.items()}
    dx_full, grads_full = resnet_backward({**zeros, "C3": d3}, cache)
    np.testing.assert_array_equal(dx, dx_full)
    assert set(grads) == set(grads_full)
    assert np.all(grads["backbone.body.layer4.0.conv1.weight"] == 0)  # stage 5 only fed C5, whose gradient is 0


def test_stage_runs_alone_on_roi_features(rng):
    """Stage 5 on a batch of 14×14 RoI features (the C4 model's box head, Mask R-CNN Fig. 4 left) -> 7×7."""
    cfg = dataclasses.replace(TINY, blocks=(1, 1, 1, 2))
    params = random_params(resnet_param_shapes(cfg))
    rois = rng.standard_normal((3, cfg.in_channels(5), 14, 14))
    out, cache = resnet_stage_forward(params, "backbone.body.layer4.", rois, cfg, 5)
    assert out.shape == (3, cfg.out_channels(5), 7, 7)
    dx, grads = resnet_stage_backward(np.ones_like(out), cache)
    assert dx.shape == rois.shape
    assert {k.split(".")[3] for k in grads} == {"0", "1"}  # both blocks of layer4 got gradients


# ---------------------------------------------------------------------------------------------------------------
# Shapes, names and initialisation at full size (float32)
# ---------------------------------------------------------------------------------------------------------------

def ceil_div(a, b):
    return -(-a // b)


@pytest.mark.parametrize("depth", [50, 101])
def test_resnet_shapes(depth):
    cfg = ResNetConfig(depth=depth)
    params = init_resnet_params(cfg, np.random.default_rng(0), np.float32)
    x = np.random.default_rng(1).standard_normal((1, 3, 100, 130)).astype(np.float32)
    feats, cache = resnet_forward(params, x, cfg)
    for k, channels in zip((2, 3, 4, 5), (256, 512, 1024, 2048)):
        assert feats[f"C{k}"].shape == (1, channels, ceil_div(100, 2 ** k), ceil_div(130, 2 ** k))  # 25×33 .. 4×5
        assert feats[f"C{k}"].dtype == np.float32
    n_blocks = sum(1 for k in params if k.endswith(".conv1.weight")) - 1  # minus the stem
    assert n_blocks == sum(DEPTH_BLOCKS[depth])
    if depth == 50:  # float32 stays float32 on the way back (one depth is enough)
        dx, grads = resnet_backward({"C5": np.ones_like(feats["C5"])}, cache)
        assert dx.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())


def test_c4_backbone_stops_at_stage_4():
    cfg = ResNetConfig(return_stages=("C4",))
    params = init_resnet_params(cfg, np.random.default_rng(0))
    assert not any(".layer4." in k for k in params)  # stage 5 is the box head's, not the backbone's
    feats, cache = resnet_forward(params, np.zeros((1, 3, 100, 130), np.float32), cfg)
    assert list(feats) == ["C4"] and feats["C4"].shape == (1, 1024, 7, 9)
    _, grads = resnet_backward({"C4": np.ones_like(feats["C4"])}, cache)
    assert set(grads) == {k for k, v in params.items() if v.ndim == 4}


def test_param_shapes_match_torchvision():
    """Every backbone.body.* key of torchvision's maskrcnn_resnet50_fpn, in order, with its shape."""
    keys = json.loads((DATA / "maskrcnn_resnet50_fpn_state_dict_keys.json").read_text())
    expected = {name: tuple(shape) for name, shape in keys
                if name.startswith("backbone.body.") and not name.endswith("num_batches_tracked")}
    shapes = resnet_param_shapes(ResNetConfig(depth=50))
    assert list(shapes.items()) == list(expected.items())


@pytest.mark.parametrize("depth,n_params", [(50, 25_557_032), (101, 44_549_160)])
def test_param_count(depth, n_params):
    """Convs and BN affines plus the classifier's fc (2048·1000 + 1000) give torchvision's published counts."""
    shapes = resnet_param_shapes(ResNetConfig(depth=depth))
    n = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(("running_mean", "running_var")))
    assert n + 2048 * 1000 + 1000 == n_params


def test_init(rng):
    cfg = ResNetConfig(blocks=(1, 1, 1, 1))
    params = init_resnet_params(cfg, rng, np.float64)
    assert np.all(params["backbone.body.bn1.weight"] == 1) and np.all(params["backbone.body.bn1.running_var"] == 1)
    assert np.all(params["backbone.body.bn1.bias"] == 0) and np.all(params["backbone.body.bn1.running_mean"] == 0)
    w = params["backbone.body.layer3.0.conv2.weight"]  # (256, 256, 3, 3): fan_out 2304
    assert w.shape == (256, 256, 3, 3) and abs(w.std() - np.sqrt(2 / 2304)) < 0.01 * np.sqrt(2 / 2304)
    gn = init_resnet_params(dataclasses.replace(cfg, norm="group_norm"), rng, zero_init_residual=True)
    assert not any("running" in k for k in gn)
    assert np.all(gn["backbone.body.layer1.0.bn3.weight"] == 0) and np.all(gn["backbone.body.layer1.0.bn2.weight"] == 1)
    with pytest.raises(ValueError, match="frozen BN"):
        init_resnet_params(cfg, rng, zero_init_residual=True)


# ---------------------------------------------------------------------------------------------------------------
# Bad input
# ---------------------------------------------------------------------------------------------------------------

def test_bad_input(rng):
    params = random_params(resnet_param_shapes(TINY))
    with pytest.raises(ValueError, match=r"conv1\.weight .* expects 3 input channels, got 4"):
        resnet_forward(params, rng.standard_normal((1, 4, 16, 20)), TINY)
    incomplete = {k: v for k, v in params.items() if k != "backbone.body.layer2.0.bn2.running_var"}
    with pytest.raises(KeyError, match=r"backbone\.body\.layer2\.0\.bn2\.running_var"):
        resnet_forward(incomplete, rng.standard_normal((1, 3, 16, 20)), TINY)
    with pytest.raises(ValueError, match="unknown norm 'batch_norm'"):
        ResNetConfig(norm="batch_norm")
    with pytest.raises(ValueError, match="depth"):
        ResNetConfig(depth=34)
    with pytest.raises(ValueError, match="return_stages"):
        ResNetConfig(return_stages=("C6",))
    feats, cache = resnet_forward(params, rng.standard_normal((1, 3, 16, 20)), TINY)
    with pytest.raises(ValueError, match="'P2'"):
        resnet_backward({"P2": feats["C2"]}, cache)
    with pytest.raises(ValueError, match="shape"):
        resnet_backward({"C2": feats["C3"]}, cache)


# ---------------------------------------------------------------------------------------------------------------
# Optional: one block against PyTorch's autograd
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["frozen_bn", "group_norm"])
@pytest.mark.parametrize("stride_in_1x1, groups", [(False, 1), (True, 1), (False, 2)])  # groups 2: ResNeXt
def test_bottleneck_matches_torch(rng, norm, stride_in_1x1, groups):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    cfg = ResNetConfig(blocks=(1, 1, 1, 1), norm=norm, num_groups=4, stride_in_1x1=stride_in_1x1, groups=groups)
    c_in, width, c_out = 8, 4 * groups, 16  # torchvision: width = int(planes · base_width / 64) · groups
    shapes = {"conv1.weight": (width, c_in, 1, 1), "conv2.weight": (width, width // groups, 3, 3),
              "conv3.weight": (c_out, width, 1, 1), "downsample.0.weight": (c_out, c_in, 1, 1)}
    for name, c in {"bn1": width, "bn2": width, "bn3": c_out, "downsample.1": c_out}.items():
        shapes.update({f"{name}.weight": (c,), f"{name}.bias": (c,)})
        if norm == "frozen_bn":
            shapes.update({f"{name}.running_mean": (c,), f"{name}.running_var": (c,)})
    params = random_params(shapes, seed=3)
    x = rng.standard_normal((2, c_in, 11, 10))
    out, cache = bottleneck_forward(params, "", x, cfg, planes=4, stride=2)
    dout = rng.standard_normal(out.shape)
    dx, grads = bottleneck_backward(dout, cache)

    t = {k: torch.tensor(v, requires_grad=k in grads) for k, v in params.items()}  # BN statistics: constants
    tx = torch.tensor(x, requires_grad=True)

    def norm_t(y, name):
        if norm == "group_norm":
            return F.group_norm(y, 4, t[f"{name}.weight"], t[f"{name}.bias"], eps=1e-5)
        return F.batch_norm(y, t[f"{name}.running_mean"], t[f"{name}.running_var"], t[f"{name}.weight"],
                            t[f"{name}.bias"], training=False, eps=1e-5)

    s1, s3 = (2, 1) if stride_in_1x1 else (1, 2)
    y = F.relu(norm_t(F.conv2d(tx, t["conv1.weight"], stride=s1), "bn1"))
    y = F.relu(norm_t(F.conv2d(y, t["conv2.weight"], stride=s3, padding=1, groups=groups), "bn2"))
    y = norm_t(F.conv2d(y, t["conv3.weight"]), "bn3")
    y = F.relu(y + norm_t(F.conv2d(tx, t["downsample.0.weight"], stride=2), "downsample.1"))
    y.backward(torch.tensor(dout))

    np.testing.assert_allclose(out, y.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-10, atol=1e-12)
    for k, g in grads.items():
        np.testing.assert_allclose(g, t[k].grad.numpy(), rtol=1e-10, atol=1e-12, err_msg=k)
