"""ResNeXt (Xie et al., *Aggregated Residual Transformations for Deep Neural Networks*, CVPR 2017): the grouped
convolution (float64 gradient checks, naive against fast, every compiled backend, bad input) and the ResNeXt backbone
(parameter shapes by torchvision's formula, its published parameter counts, the `resnext101_32x8d_fpn` preset, one
grouped block and the whole model checked numerically).

The grouped convolution against PyTorch's `F.conv2d(groups=...)` is in tests/test_torch_crosscheck.py.
"""

import numpy as np
import pytest

from tinymask.backbone.resnet import (bottleneck_backward, bottleneck_forward, resnet_forward, resnet_param_shapes,
                                      ResNetConfig)
from tinymask.config import MaskRCNNConfig
from tinymask.gradcheck import check_layer, check_named
from tinymask.layers.conv import conv2d_backward, conv2d_backward_naive, conv2d_forward, conv2d_forward_naive
from tinymask.layers.named import named_conv_forward
from tinymask.model import init_params, resnet_config
from test_backends import check_backends
from test_model import assert_gradients_match, check_whole_model, wiring_config
from torchvision_fixture import regenerate_weights

TOL = 1e-7

# ---------------------------------------------------------------------------------------------------------------
# The grouped convolution
# ---------------------------------------------------------------------------------------------------------------

GROUPED = [  # (x shape, w shape, settings): w is (F, C / groups, kH, kW)
    ((2, 4, 7, 6), (6, 2, 3, 3), dict(padding=1, groups=2)),  # ResNeXt's 3×3: 2 paths
    ((2, 6, 9, 8), (6, 2, 3, 3), dict(stride=2, padding=1, groups=3)),  # with the stage's stride
    ((1, 4, 6, 7), (4, 1, 3, 2), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=4)),  # depthwise
    ((2, 4, 5, 5), (8, 4, 1, 1), dict(groups=1)),  # groups=1: the ordinary path
]


@pytest.mark.parametrize("x_shape, w_shape, kw", GROUPED)
@pytest.mark.parametrize("bias", [True, False])
def test_grouped_conv_gradients(rng, x_shape, w_shape, kw, bias):
    x, w = rng.standard_normal(x_shape), rng.standard_normal(w_shape)
    b = rng.standard_normal(w_shape[0]) if bias else None
    for forward, backward in ((conv2d_forward, conv2d_backward), (conv2d_forward_naive, conv2d_backward_naive)):
        errors = check_layer(forward, backward, [x, w, b], kwargs=kw, names=["x", "w", "b"])
        assert max(errors.values()) < TOL, (forward.__name__, errors)


@pytest.mark.parametrize("x_shape, w_shape, kw", GROUPED)
def test_grouped_conv_fast_equals_naive(rng, x_shape, w_shape, kw):
    x, w, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])
    out, cache = conv2d_forward(x, w, b, **kw)
    ref, ref_cache = conv2d_forward_naive(x, w, b, **kw)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
    dout = rng.standard_normal(out.shape)
    for fast, slow in zip(conv2d_backward(dout, cache), conv2d_backward_naive(dout, ref_cache)):
        np.testing.assert_allclose(fast, slow, rtol=1e-12, atol=1e-12)


def test_grouped_conv_is_convs_side_by_side(rng):
    """Group g's output channels are an ordinary convolution of group g's input channels with group g's filters."""
    x, w = rng.standard_normal((2, 6, 5, 5)), rng.standard_normal((9, 2, 3, 3))
    out, _ = conv2d_forward(x, w, padding=1, groups=3)  # (2, 9, 5, 5)
    for g in range(3):
        part, _ = conv2d_forward(x[:, 2 * g:2 * g + 2], w[3 * g:3 * g + 3], padding=1)
        np.testing.assert_array_equal(out[:, 3 * g:3 * g + 3], part)
    with_groups_1, _ = conv2d_forward(x, rng.standard_normal((4, 6, 3, 3)), padding=1, groups=1)
    assert with_groups_1.shape == (2, 4, 5, 5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_grouped_conv_on_compiled_backends(dtype):
    """The groups stay in the layer, so each backend runs plain convolutions; the results agree with "numpy"."""
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal((2, 6, 9, 8)).astype(dtype), rng.standard_normal((6, 2, 3, 3)).astype(dtype)
    b = rng.standard_normal(6).astype(dtype)
    check_backends(conv2d_forward, conv2d_backward, (x, w, b), dict(stride=2, padding=1, groups=3))


X, W = np.zeros((1, 6, 5, 5)), np.zeros((4, 3, 3, 3))
BAD = {
    "C not divisible": (lambda: conv2d_forward(np.zeros((1, 5, 5, 5)), W, groups=2), "must divide the input channels"),
    "F not divisible": (lambda: conv2d_forward(X, np.zeros((3, 3, 3, 3)), groups=2), "must divide the output channels"),
    "w's second dim": (lambda: conv2d_forward(X, np.zeros((4, 6, 3, 3)), groups=2), r"C / groups = 6 / 2 = 3"),
    "groups 0": (lambda: conv2d_forward(X, W, groups=0), "groups must be a positive int"),
    "groups float": (lambda: conv2d_forward(X, W, groups=2.0), "groups must be a positive int"),
    "naive, C not divisible": (lambda: conv2d_forward_naive(np.zeros((1, 5, 5, 5)), W, groups=2),
                               "must divide the input channels"),
    "named conv": (lambda: named_conv_forward({"c.weight": W}, "c", np.zeros((1, 4, 5, 5)), groups=2),
                   r"expects 6 input channels \(3 per group × groups=2\), got 4"),
    "config groups": (lambda: ResNetConfig(groups=0), "groups .* must be a positive int"),
    "model config groups": (lambda: MaskRCNNConfig(groups=0), "groups must be positive"),
    "group norm width": (lambda: MaskRCNNConfig(norm="group_norm", num_groups=4, stem_channels=4, base_channels=2,
                                                 groups=3), r"divisible by it; these are not: \[6\]"),
}


@pytest.mark.parametrize("case", BAD)
def test_bad_groups(case):
    call, words = BAD[case]
    with pytest.raises(ValueError, match=words):
        call()


def test_group_norm_check_counts_the_cardinality():
    """Group norm's divisibility check sees the grouped widths: C2's 2·2 = 4 channels divide into 4 norm groups."""
    MaskRCNNConfig(norm="group_norm", num_groups=4, stem_channels=4, base_channels=2, groups=2)
    with pytest.raises(ValueError, match=r"these are not: \[2\]"):
        MaskRCNNConfig(norm="group_norm", num_groups=4, stem_channels=4, base_channels=2, groups=1)


# ---------------------------------------------------------------------------------------------------------------
# The ResNeXt backbone: torchvision's shapes
# ---------------------------------------------------------------------------------------------------------------

def torchvision_width(planes, width_per_group, groups):
    """torchvision's Bottleneck: `width = int(planes * (base_width / 64.0)) * groups`."""
    return int(planes * (width_per_group / 64.0)) * groups


def test_preset_resnext101_32x8d_fpn_shapes():
    cfg = MaskRCNNConfig.preset("resnext101_32x8d_fpn")
    assert (cfg.resnet_blocks, cfg.groups, cfg.width_per_group, cfg.norm, cfg.fpn_channels, cfg.backbone) == \
        ([3, 4, 23, 3], 32, 8, "frozen_bn", 256, "fpn")
    shapes = resnet_param_shapes(resnet_config(cfg))
    for layer, planes, blocks in ((1, 64, 3), (2, 128, 4), (3, 256, 23), (4, 512, 3)):
        width = torchvision_width(planes, 8, 32)  # 256, 512, 1024, 2048
        c_in = 64 if layer == 1 else 4 * planes // 2
        p = f"backbone.body.layer{layer}."
        assert shapes[f"{p}0.conv1.weight"] == (width, c_in, 1, 1)
        assert shapes[f"{p}0.conv2.weight"] == (width, width // 32, 3, 3)  # grouped: width / groups per filter
        assert shapes[f"{p}0.bn2.running_var"] == (width,)
        assert shapes[f"{p}{blocks - 1}.conv3.weight"] == (4 * planes, width, 1, 1)
        assert shapes[f"{p}0.downsample.0.weight"] == (4 * planes, c_in, 1, 1)
        assert f"{p}{blocks}.conv1.weight" not in shapes
    assert shapes["backbone.body.layer1.0.conv2.weight"] == (256, 8, 3, 3)
    assert shapes["backbone.body.layer4.2.conv2.weight"] == (2048, 64, 3, 3)


@pytest.mark.parametrize("depth, groups, width_per_group, n_params", [
    (50, 32, 4, 25_028_904),  # torchvision resnext50_32x4d
    (101, 32, 8, 88_791_336),  # torchvision resnext101_32x8d
])
def test_resnext_param_count(depth, groups, width_per_group, n_params):
    """Convs and BN affines plus the classifier's fc (2048·1000 + 1000) give torchvision's published counts."""
    shapes = resnet_param_shapes(ResNetConfig(depth=depth, groups=groups, width_per_group=width_per_group))
    n = sum(int(np.prod(s)) for k, s in shapes.items() if not k.endswith(("running_mean", "running_var")))
    assert n + 2048 * 1000 + 1000 == n_params


def test_resnext_forward_shapes():
    """A narrow ResNeXt (4 paths of 2 channels in C2) runs end to end with torchvision's key names."""
    cfg = ResNetConfig(blocks=(1, 1, 1, 1), stem_channels=8, base_channels=4, groups=4, width_per_group=32)
    params = {k: v.astype(np.float32) for k, v in regenerate_weights(resnet_param_shapes(cfg), 0).items()}
    assert params["backbone.body.layer1.0.conv2.weight"].shape == (8, 2, 3, 3)  # width int(4·32/64)·4 = 8
    feats, _ = resnet_forward(params, np.ones((1, 3, 32, 32), np.float32), cfg)
    assert {k: v.shape for k, v in feats.items()} == {"C2": (1, 16, 8, 8), "C3": (1, 32, 4, 4),
                                                      "C4": (1, 64, 2, 2), "C5": (1, 128, 1, 1)}


# ---------------------------------------------------------------------------------------------------------------
# Gradient checks: one grouped block, the whole model
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("norm", ["frozen_bn", "group_norm"])
def test_resnext_bottleneck_gradients(rng, norm):
    """The first block of C3 (stride 2, projection shortcut) with 3 paths of 2 channels."""
    cfg = ResNetConfig(blocks=(1, 1, 1, 1), base_channels=2, norm=norm, num_groups=2, groups=3, width_per_group=32,
                       return_stages=("C3",))
    prefix = "backbone.body.layer2.0."
    shapes = {k[len(prefix):]: s for k, s in resnet_param_shapes(cfg).items() if k.startswith(prefix)}
    assert shapes["conv2.weight"] == (torchvision_width(4, 32, 3), 2, 3, 3)  # (6, 2, 3, 3)
    params = regenerate_weights(shapes, 1)
    x = rng.standard_normal((2, 8, 7, 9))  # C2: 4 · 2 channels
    wrt = {"x": x, **{k: v for k, v in params.items() if v.ndim == 4 or norm == "group_norm"}}

    def forward():
        out, cache = bottleneck_forward(params, "", x, cfg, planes=4, stride=2)
        return {"out": out}, cache

    def backward(douts, cache):
        dx, grads = bottleneck_backward(douts["out"], cache)
        assert set(grads) == set(wrt) - {"x"}
        return {"x": dx, **grads}

    assert forward()[0]["out"].shape == (2, 16, 4, 5)
    errors = check_named(forward, backward, wrt)
    assert max(errors.values()) < TOL, errors


def test_whole_model_gradient_resnext():
    """The tiny model with a 2-path ResNeXt body (float64): every trainable tensor gets a gradient; the four grouped
    3×3 convs and 12 other tensors drawn at random are checked against central differences."""
    cfg = wiring_config(groups=2)
    assert init_params(cfg)["backbone.body.layer1.0.conv2.weight"].shape == (4, 2, 3, 3)
    checked, losses, _ = check_whole_model(cfg, picks=1, max_params=12, always=(".conv2.weight",))
    assert all(float(v) > 1e-3 for v in losses.values()), losses
    assert_gradients_match(checked)
    assert all(f"layer{i}.0.conv2.weight" in " ".join(checked) for i in (1, 2, 3, 4))
