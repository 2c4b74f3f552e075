"""Bad input to the layers and to the resize path: every case names the exception and the words of its message.

- a backward given a `dout` of the wrong shape, or not a float array, fails at its door (`check_dout`), naming the
  layer and its forward's output shape;
- finite-check mode (`tinymask.layers.finite_checks`) refuses NaN and infinity in inputs, outputs, douts and
  gradients with a `FloatingPointError` that names the layer, the array and the first bad index; it is off by
  default, and then NaN passes through silently;
- the always-on checks: wrong ndim, dtype, channels, settings, RoIs; the losses' arguments;
- images of extreme aspect ratio: resized to one pixel thick instead of crashing (`resized_size`), in prediction and
  in training.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinymask.box_logic.resize import check_image, preprocess, resized_size
from tinymask.config import MaskRCNNConfig
from tinymask.layers import finite_checks
from tinymask.layers.activations import relu_backward, relu_forward, sigmoid_backward, sigmoid_forward
from tinymask.layers.conv import conv2d_backward, conv2d_backward_naive, conv2d_forward, conv2d_forward_naive
from tinymask.layers.conv_transpose import (conv_transpose2d_backward, conv_transpose2d_backward_naive,
                                            conv_transpose2d_forward, conv_transpose2d_forward_naive)
from tinymask.layers.linear import linear_backward, linear_forward
from tinymask.layers.losses import binary_cross_entropy_with_logits, smooth_l1, softmax_cross_entropy
from tinymask.layers.multiscale_roi import multiscale_roi_backward, multiscale_roi_forward
from tinymask.layers.named import named_conv_backward, named_conv_forward
from tinymask.layers.norm import (frozen_batch_norm_backward, frozen_batch_norm_forward, group_norm_backward,
                                  group_norm_forward)
from tinymask.layers.pooling import (global_avg_pool_backward, global_avg_pool_forward, max_pool2d_backward,
                                     max_pool2d_forward)
from tinymask.layers.roi_align import roi_align_backward, roi_align_forward
from tinymask.layers.roi_align_naive import roi_align_backward_naive, roi_align_forward_naive
from tinymask.layers.roi_pool import roi_pool_backward, roi_pool_forward
from tinymask.layers.roi_warp import roi_warp_backward, roi_warp_forward
from tinymask.layers.upsample import upsample_nearest_backward, upsample_nearest_forward
from tinymask.model import init_params, predict, train_forward

ROOT = Path(__file__).resolve().parent.parent
ROIS = np.array([[0, 1.0, 1.0, 6.0, 6.0], [1, 0.0, 2.0, 5.0, 7.0]])  # (2, 5) on 8x8 maps, batch of 2
ROI_KW = dict(output_size=2, spatial_scale=1.0)


# --------------------------------------------------------------------------------------------------------------------
# One small call of every layer: (forward, backward, args, kwargs, index of the main input in args, forward's name
# in messages, backward's name in messages)
# --------------------------------------------------------------------------------------------------------------------

def _layer(name, rng):
    n = rng.standard_normal
    conv = [n((2, 3, 6, 6)), n((4, 3, 3, 3)), n(4)]
    deconv = [n((1, 3, 4, 4)), n((3, 2, 2, 2)), n(2)]
    feats = n((2, 3, 8, 8))
    table = {
        "conv2d": (conv2d_forward, conv2d_backward, conv, dict(padding=1)),
        "conv2d_naive": (conv2d_forward_naive, conv2d_backward_naive, conv, dict(stride=2)),
        "conv_transpose2d": (conv_transpose2d_forward, conv_transpose2d_backward, deconv, dict(stride=2)),
        "conv_transpose2d_naive": (conv_transpose2d_forward_naive, conv_transpose2d_backward_naive, deconv,
                                   dict(stride=2, padding=1)),
        "linear": (linear_forward, linear_backward, [n((3, 5)), n((4, 5)), n(4)], {}),
        "relu": (relu_forward, relu_backward, [n((2, 3, 4))], {}),
        "sigmoid": (sigmoid_forward, sigmoid_backward, [n((2, 3))], {}),
        "max_pool2d": (max_pool2d_forward, max_pool2d_backward, [n((1, 2, 6, 6))],
                       dict(kernel_size=3, stride=2, padding=1)),
        "global_avg_pool": (global_avg_pool_forward, global_avg_pool_backward, [n((2, 3, 4, 4))], {}),
        "frozen_batch_norm": (frozen_batch_norm_forward, frozen_batch_norm_backward,
                              [n((2, 3, 4, 4)), n(3), n(3), n(3), 1.0 + rng.random(3)], {}),
        "group_norm": (group_norm_forward, group_norm_backward, [n((2, 4, 3, 3)), n(4), n(4)], dict(num_groups=2)),
        "upsample_nearest": (upsample_nearest_forward, upsample_nearest_backward, [n((1, 2, 3, 3))],
                             dict(scale_factor=2)),
        "roi_align": (roi_align_forward, roi_align_backward, [feats, ROIS], dict(ROI_KW, sampling_ratio=2)),
        "roi_align_naive": (roi_align_forward_naive, roi_align_backward_naive, [feats, ROIS],
                            dict(ROI_KW, sampling_ratio=2)),
        "roi_pool": (roi_pool_forward, roi_pool_backward, [feats, ROIS], ROI_KW),
        "roi_warp": (roi_warp_forward, roi_warp_backward, [feats, ROIS], dict(ROI_KW, mode="max")),
        "multiscale_roi": (multiscale_roi_forward, multiscale_roi_backward, [[n((2, 3, 16, 16)), n((2, 3, 8, 8))],
                           ROIS * [1, 4, 4, 4, 4]], dict(scales=[1 / 4, 1 / 8], output_size=2, sampling_ratio=2)),
        "named_conv": (named_conv_forward, named_conv_backward, [{"c.weight": n((4, 3, 3, 3))}, "c", n((2, 3, 6, 6))],
                       dict(padding=1)),
    }
    forward, backward, args, kwargs = table[name]
    main = 2 if name == "named_conv" else 0  # the array input a NaN is planted in
    fwd_name, bwd_name = forward.__name__, backward.__name__
    if name == "named_conv":
        fwd_name, bwd_name = "named_conv_forward[c]", "named_conv_backward[c]"
    return forward, backward, args, kwargs, main, fwd_name, bwd_name


LAYERS = ["conv2d", "conv2d_naive", "conv_transpose2d", "conv_transpose2d_naive", "linear", "relu", "sigmoid",
          "max_pool2d", "global_avg_pool", "frozen_batch_norm", "group_norm", "upsample_nearest", "roi_align",
          "roi_align_naive", "roi_pool", "roi_warp", "multiscale_roi", "named_conv"]


# --------------------------------------------------------------------------------------------------------------------
# dout: shape and type
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", LAYERS)
def test_dout_of_the_wrong_shape_names_the_layer_and_both_shapes(name, rng):
    forward, backward, args, kwargs, _, fwd_name, bwd_name = _layer(name, rng)
    out, cache = forward(*args, **kwargs)
    bad = np.ones(out.shape[:-1] + (out.shape[-1] + 1,))  # one column too many
    message = f"{bwd_name}: dout has shape {bad.shape} but {fwd_name}'s output was {out.shape}"
    with pytest.raises(ValueError, match=re.escape(message)):
        backward(bad, cache)
    backward(np.ones(out.shape), cache)  # the right shape still works


@pytest.mark.parametrize("name", LAYERS)
def test_dout_of_an_integer_dtype_is_a_type_error(name, rng):
    forward, backward, args, kwargs, _, _, bwd_name = _layer(name, rng)
    out, cache = forward(*args, **kwargs)
    with pytest.raises(TypeError, match=re.escape(f"{bwd_name}: dout must be float32 or float64, got dtype int64")):
        backward(np.ones(out.shape, dtype=np.int64), cache)


@pytest.mark.parametrize("name", ["conv2d", "linear", "relu", "roi_align", "multiscale_roi"])
def test_dout_that_is_not_an_array_is_a_type_error(name, rng):
    forward, backward, args, kwargs, _, _, bwd_name = _layer(name, rng)
    out, cache = forward(*args, **kwargs)
    with pytest.raises(TypeError, match=re.escape(f"{bwd_name}: dout must be a NumPy array") + ".*got list"):
        backward(np.ones(out.shape).tolist(), cache)


def test_the_issue_s_example_message():
    x, w = np.ones((2, 3, 6, 6)), np.ones((4, 3, 3, 3))
    out, cache = conv2d_forward(x, w)  # (2, 4, 4, 4)
    with pytest.raises(ValueError) as info:
        conv2d_backward(np.ones((2, 4, 5, 5)), cache)
    assert str(info.value) == ("conv2d_backward: dout has shape (2, 4, 5, 5) but conv2d_forward's output was "
                               "(2, 4, 4, 4)")


def test_dout_of_the_other_float_dtype_is_accepted(rng):
    out, cache = roi_align_forward(rng.standard_normal((2, 3, 8, 8)), ROIS, **ROI_KW)
    dfeatures, _ = roi_align_backward(np.ones(out.shape, dtype=np.float32), cache)
    assert dfeatures.dtype == np.float64  # RoIAlign's gradient has the features' dtype


# --------------------------------------------------------------------------------------------------------------------
# Finite-check mode
# --------------------------------------------------------------------------------------------------------------------

def _plant_nan(args, main):
    """`args` with a NaN planted in the main input (in its last map for a list of maps): (args, name suffix, index)."""
    args = list(args)
    x = args[main]
    if isinstance(x, list):
        x = [m.copy() for m in x]
        x[-1][0, 1, 2, 3] = np.nan
        args[main] = x
        return args, f"[{len(x) - 1}]", (0, 1, 2, 3)
    x = x.copy()
    index = (0,) * (x.ndim - 1) + (1,)
    x[index] = np.nan
    args[main] = x
    return args, "", index


@pytest.mark.parametrize("name", LAYERS)
def test_finite_checks_refuse_nan_in_a_forward_input(name, rng):
    forward, _, args, kwargs, main, _, _ = _layer(name, rng)
    args, suffix, index = _plant_nan(args, main)
    arg_name = {0: "x", 2: "x"}[main] if name not in ("roi_align", "roi_align_naive", "roi_pool", "roi_warp",
                                                      "multiscale_roi") else "features"
    message = f"{forward.__name__}: {arg_name}{suffix} contains nan at index {index}"
    with finite_checks(), pytest.raises(FloatingPointError, match=re.escape(message)):
        forward(*args, **kwargs)


@pytest.mark.parametrize("name", LAYERS)
def test_finite_checks_refuse_nan_in_dout(name, rng):
    forward, backward, args, kwargs, _, _, _ = _layer(name, rng)
    out, cache = forward(*args, **kwargs)
    dout = np.ones(out.shape)
    dout.flat[-1] = np.inf
    last = tuple(int(i) for i in np.unravel_index(dout.size - 1, dout.shape))
    with finite_checks(), pytest.raises(FloatingPointError, match=re.escape(f"{backward.__name__}: dout contains inf "
                                                                           f"at index {last}")):
        backward(dout, cache)


def test_finite_checks_are_off_by_default_and_nan_then_passes_silently():
    code = "import tinymask.layers as L, numpy as np; print(L.finite_checks.enabled(), " \
           "L.relu_forward(np.array([np.nan, 1.0]))[0])"
    env = {k: v for k, v in os.environ.items() if k != "TINYMASK_CHECK_FINITE"}
    env["PYTHONPATH"] = str(ROOT)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert run.stdout.split() == ["False", "[nan", "1.]"]
    env["TINYMASK_CHECK_FINITE"] = "1"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert "FloatingPointError: relu_forward: x contains nan at index (0,)" in run.stderr


def test_finite_checks_as_a_call_and_as_nested_blocks():
    before = finite_checks.enabled()
    try:
        finite_checks(False)
        assert not finite_checks.enabled()
        out, _ = relu_forward(np.array([np.nan]))  # off: no check
        assert np.isnan(out[0]) or out[0] == 0
        with finite_checks():
            assert finite_checks.enabled()
            with finite_checks(False):
                relu_forward(np.array([np.nan]))
            with pytest.raises(FloatingPointError, match="relu_forward: x contains nan"):
                relu_forward(np.array([np.nan]))
        assert not finite_checks.enabled()  # the block restored the setting
        finite_checks(True)
        assert finite_checks.enabled()  # a plain call lasts
    finally:
        finite_checks(before)


def test_finite_checks_catch_an_output_that_overflows():
    x, w = np.full((1, 2), 1e200), np.full((3, 2), 1e200)  # finite inputs, x @ wᵀ overflows to inf
    with finite_checks(), np.errstate(over="ignore"), pytest.raises(
            FloatingPointError, match=re.escape("linear_forward: out contains inf at index (0, 0)")):
        linear_forward(x, w)


def test_finite_checks_catch_a_gradient_that_overflows():
    x, w = np.ones((1, 2)), np.full((3, 2), 1e200)
    out, cache = linear_forward(x, w)
    with finite_checks(), np.errstate(over="ignore"), pytest.raises(
            FloatingPointError, match=re.escape("linear_backward: dx contains inf")):
        linear_backward(np.full(out.shape, 1e200), cache)


@pytest.mark.parametrize("loss,args,message", [
    (softmax_cross_entropy, (np.array([[0.0, np.nan]]), np.array([1])), "softmax_cross_entropy: logits contains nan"),
    (smooth_l1, (np.zeros(3), np.array([0.0, np.inf, 0.0])), "smooth_l1: target contains inf at index (1,)"),
    (binary_cross_entropy_with_logits, (np.array([np.nan]), np.array([1.0])),
     "binary_cross_entropy_with_logits: logits contains nan"),
])
def test_finite_checks_cover_the_losses(loss, args, message):
    with finite_checks(), pytest.raises(FloatingPointError, match=re.escape(message)):
        loss(*args)


# --------------------------------------------------------------------------------------------------------------------
# The always-on checks: ndim, dtype, channels, settings, RoIs, losses
# --------------------------------------------------------------------------------------------------------------------

X4, W4 = np.zeros((1, 3, 5, 5)), np.zeros((2, 3, 3, 3))
FEATS = np.zeros((2, 3, 8, 8))

ALWAYS = {
    "conv ndim": (lambda: conv2d_forward(np.zeros((3, 5, 5)), W4), ValueError,
                  r"x must have 4 dimensions \(N, C, H, W\)"),
    "conv dtype": (lambda: conv2d_forward(X4.astype(np.int32), W4), TypeError, "x must be float32 or float64"),
    "conv channels": (lambda: conv2d_forward(np.zeros((1, 4, 5, 5)), W4), ValueError,
                      "channel mismatch: x has 4 channels but w expects 3"),
    "conv mixed dtypes": (lambda: conv2d_forward(X4.astype(np.float32), W4), TypeError, "share one dtype"),
    "conv stride 0": (lambda: conv2d_forward(X4, W4, stride=0), ValueError, "need stride >= 1"),
    "conv negative padding": (lambda: conv2d_forward(X4, W4, padding=-1), ValueError, "padding >= 0"),
    "conv dilation 0": (lambda: conv2d_forward(X4, W4, dilation=0), ValueError, "dilation >= 1"),
    "conv_transpose stride -1": (lambda: conv_transpose2d_forward(np.zeros((1, 3, 4, 4)), np.zeros((3, 2, 2, 2)),
                                                                  stride=-1), ValueError, "need stride >= 1"),
    "conv_transpose channels": (lambda: conv_transpose2d_forward(np.zeros((1, 2, 4, 4)), np.zeros((3, 2, 2, 2))),
                                ValueError, r"x has 2 channels but w expects 3.*\(C_in, C_out, kH, kW\)"),
    "linear features": (lambda: linear_forward(np.zeros((2, 5)), np.zeros((3, 4))), ValueError,
                        "feature mismatch: x has 5 features but w expects 4"),
    "linear ndim": (lambda: linear_forward(np.zeros(5), np.zeros((3, 5))), ValueError, "x must have 2 dimensions"),
    "max_pool kernel 0": (lambda: max_pool2d_forward(X4, kernel_size=0), ValueError, "need kernel_size >= 1"),
    "max_pool stride 0": (lambda: max_pool2d_forward(X4, kernel_size=2, stride=0), ValueError, "stride >= 1"),
    "max_pool kernel too big": (lambda: max_pool2d_forward(X4, kernel_size=7), ValueError,
                                "larger than the padded input"),
    "group_norm groups": (lambda: group_norm_forward(np.zeros((1, 6, 2, 2)), np.ones(6), np.zeros(6), num_groups=4),
                          ValueError, "6 channels cannot be split into 4 groups"),
    "frozen_bn channels": (lambda: frozen_batch_norm_forward(X4, np.ones(2), np.ones(3), np.ones(3), np.ones(3)),
                           ValueError, "weight has 2 entries but x has 3 channels"),
    "upsample size 0": (lambda: upsample_nearest_forward(X4, size=(0, 4)), ValueError, "output size must be positive"),
    "relu list": (lambda: relu_forward([1.0, -1.0]), TypeError, "x must be a NumPy array, got list"),
    "rois (K, 4)": (lambda: roi_align_forward(FEATS, np.zeros((2, 4)), **ROI_KW), ValueError,
                    r"rois must have shape \(K, 5\)"),
    "rois batch index out of range": (lambda: roi_pool_forward(FEATS, np.array([[2, 0, 0, 4, 4.0]]), **ROI_KW),
                                      ValueError, r"batch index 2 in rois row 0 is out of range \[0, 2\)"),
    "rois NaN coordinate": (lambda: roi_warp_forward(FEATS, np.array([[0, 0, np.nan, 4, 4.0]]), **ROI_KW),
                            ValueError, r"rois contains NaN or infinity \(first at row 0, column 2\)"),
    "rois fractional batch index": (lambda: roi_align_forward(FEATS, np.array([[0.5, 0, 0, 4, 4]]), **ROI_KW),
                                    ValueError, "must hold integer values"),
    "rois inverted box": (lambda: roi_align_forward(FEATS, np.array([[0, 4, 0, 1, 4.0]]), **ROI_KW), ValueError,
                          "inverted box"),
    "roi output_size 0": (lambda: roi_pool_forward(FEATS, ROIS, output_size=0, spatial_scale=1.0), ValueError,
                          "output_size must be positive"),
    "roi spatial_scale 0": (lambda: roi_align_forward(FEATS, ROIS, output_size=2, spatial_scale=0.0), ValueError,
                            "spatial_scale must be a positive finite number"),
    "multiscale scales": (lambda: multiscale_roi_forward([FEATS], ROIS, scales=[1, 0.5], output_size=2), ValueError,
                          "got 2 scales for 1 feature maps"),
    "multiscale method": (lambda: multiscale_roi_forward([FEATS], ROIS, scales=[1.0], output_size=2, method="crop"),
                          ValueError, "method must be one of"),
    "cross-entropy labels out of range": (lambda: softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3])),
                                          ValueError, r"labels must lie in \[0, 3\)"),
    "cross-entropy float labels": (lambda: softmax_cross_entropy(np.zeros((2, 3)), np.array([0.0, 1.0])),
                                   TypeError, "labels must be integers"),
    "smooth_l1 shapes": (lambda: smooth_l1(np.zeros(3), np.zeros(4)), ValueError, "must have the same shape"),
    "smooth_l1 beta": (lambda: smooth_l1(np.zeros(3), np.zeros(3), beta=-1.0), ValueError, "beta must be >= 0"),
    "bce targets": (lambda: binary_cross_entropy_with_logits(np.zeros(2), np.array([0.0, 2.0])), ValueError,
                    r"targets must lie in \[0, 1\]"),
}


@pytest.mark.parametrize("case", list(ALWAYS))
def test_always_on_checks(case):
    call, error, words = ALWAYS[case]
    with pytest.raises(error, match=words):
        call()


# --------------------------------------------------------------------------------------------------------------------
# Resizing: bad images, and images of extreme aspect ratio
# --------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("image,error,words", [
    (np.zeros((3, 10, 20), dtype=np.uint8), TypeError, "convert uint8 images"),
    (np.zeros((10, 20)), ValueError, r"must have shape \(3, H, W\)"),
    (np.zeros((3, 0, 20)), ValueError, "is empty"),
    (np.full((3, 2, 2), np.nan), ValueError, r"contains NaN or infinity \(first at index \(0, 0, 0\)\)"),
])
def test_bad_images(image, error, words):
    with pytest.raises(error, match=words):
        check_image(image)


@pytest.mark.parametrize("hw,min_size,max_size,expected", [
    ((480, 640), 800, 1333, (800, 1066)),  # the common case: unchanged
    ((128, 96), 128, 128, (128, 96)),
    ((10, 2000), 128, 128, (1, 128)),  # 0.64 rows: clamped to 1
    ((2000, 10), 128, 128, (128, 1)),
    ((1, 100000), 800, 1333, (1, 1333)),
])
def test_resized_size_keeps_every_side_at_least_one_pixel(hw, min_size, max_size, expected):
    assert resized_size(hw, min_size, max_size)[0] == expected


def test_preprocess_of_a_banner_pads_to_the_stride():
    batch, sizes, originals = preprocess([np.full((3, 10, 2000), 0.5)], MaskRCNNConfig.preset("small"))
    assert batch.shape == (1, 3, 32, 128) and sizes == [(1, 128)] and originals == [(10, 2000)]


@pytest.fixture(scope="module")
def small():
    cfg = MaskRCNNConfig.preset("small")
    return cfg, init_params(cfg, seed=0)


@pytest.mark.parametrize("hw", [(10, 2000), (2000, 10)])
def test_predict_on_extreme_aspect_ratios(small, hw):
    cfg, params = small
    image = np.random.default_rng(0).random((3,) + hw).astype(np.float32)
    result = predict(params, cfg, [image])[0]
    assert result["masks"].shape[1:] == hw
    assert len(result["boxes"]) == len(result["masks"])
    H, W = hw
    boxes = result["boxes"]
    assert np.all((boxes[:, [0, 2]] >= 0) & (boxes[:, [0, 2]] <= W) & (boxes[:, [1, 3]] >= 0) & (boxes[:, [1, 3]] <= H))


@pytest.mark.parametrize("hw,box", [((10, 2000), [100.0, 2.0, 400.0, 8.0]), ((2000, 10), [2.0, 100.0, 8.0, 400.0])])
def test_train_forward_on_extreme_aspect_ratios(small, hw, box):
    cfg, params = small
    image = np.random.default_rng(0).random((3,) + hw).astype(np.float32)
    masks = np.zeros((1,) + hw, dtype=np.uint8)
    x0, y0, x1, y1 = (int(v) for v in box)
    masks[0, y0:y1, x0:x1] = 1
    target = {"boxes": np.array([box], dtype=np.float32), "labels": np.array([1]), "masks": masks}
    losses, _ = train_forward(params, cfg, [image], [target], np.random.default_rng(0))
    assert all(np.isfinite(v) for v in losses.values()), losses
