"""The backend switch (tinymask/ops/backend.py) and every compiled CPU kernel against the NumPy reference (tinymask/ops/).

One helper, `check_backends`, runs a layer's forward (and its backward, with a fixed upstream gradient) on the "numpy"
backend and on each other backend asked for, and compares every output. It is used for every op below, and by
tests/test_cuda_sim.py for the CUDA kernels. Numba compiles each kernel on first use (float32 and float64 once each)
and caches it on disk (`NUMBA_CACHE_DIR`), so the first run of this file is slower than the next ones.
"""
from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

import tinymask.ops.backend as backend_module
from tinymask.ops.backend import (available_backends, BACKENDS, describe_backends, ENV_VAR, get_backend, set_backend,
                                  use_backend)
from tinymask.layers.conv import conv2d_backward, conv2d_forward
from tinymask.layers.conv_transpose import conv_transpose2d_backward, conv_transpose2d_forward
from tinymask.layers.multiscale_roi import multiscale_roi_backward, multiscale_roi_forward
from tinymask.layers import roi_align_backward, roi_align_forward, roi_pool_backward, roi_pool_forward
from tinymask.layers.roi_warp import roi_warp_backward, roi_warp_forward
from tinymask.box_logic.mask_paste import paste_masks_in_image
from tinymask.box_logic.nms import batched_nms, nms
from tinymask.ops import get_ops, KERNELS

CPU_BACKENDS = [name for name in ("numba",) if available_backends()[name][0]]  # every compiled CPU backend here
DTYPES = [np.float64, np.float32]
TOL = {np.dtype(np.float64): 1e-12, np.dtype(np.float32): 2e-5}  # max |a - b| relative to max |reference|


@pytest.fixture(autouse=True)
def _restore_switch():
    """Each test starts with no backend selected in code and leaves none selected."""
    saved = backend_module._selected
    backend_module._selected = None
    yield
    backend_module._selected = saved


# ---------------------------------------------------------------------------------------------------------------------
# The helper
# ---------------------------------------------------------------------------------------------------------------------

def assert_close(actual, expected, what):
    """Same shape and dtype, and equal to the dtype's tolerance (exactly, for integer arrays such as keep lists)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if not np.issubdtype(expected.dtype, np.floating):
        np.testing.assert_array_equal(actual, expected, err_msg=what)
        return
    scale = max(1.0, float(np.abs(expected).max(initial=0.0)))
    err = float(np.abs(actual.astype(np.float64) - expected).max(initial=0.0))
    assert err <= TOL[expected.dtype] * scale, f"{what}: max error {err:.3g} (scale {scale:.3g}, {expected.dtype})"


def check_backends(forward, backward=None, inputs=(), kwargs=None, *, backends=None, seed=0):
    """Compare `forward(*inputs, backend=b, **kwargs)` (and `backward(dout, cache)`) on each backend with "numpy".

    With a `backward`, `forward` returns `(out, cache)` and the backward gets one fixed random `dout` of the features'
    dtype; every gradient it returns is compared (None must stay None). Without one, `forward` returns the output
    (arrays, or a tuple of them). Returns the reference output.
    """
    kwargs = kwargs or {}
    backends = CPU_BACKENDS if backends is None else backends
    if not backends:
        pytest.skip("no compiled backend available")

    def run(name):
        result = forward(*inputs, backend=name, **kwargs)
        if backward is None:
            return result if isinstance(result, tuple) else (result,)
        out, cache = result
        dout = np.random.default_rng(seed).standard_normal(np.shape(out)).astype(np.asarray(out).dtype)
        return (out,) + tuple(backward(dout, cache))

    expected = run("numpy")
    for name in backends:
        actual = run(name)
        assert len(actual) == len(expected)
        for i, (a, e) in enumerate(zip(actual, expected)):
            what = f"{getattr(forward, '__name__', forward)} on {name!r}, output {i}"
            if e is None or a is None:
                assert a is None and e is None, f"{what}: None on one backend only"
            elif isinstance(e, list):  # multiscale: one gradient per map
                for l, (al, el) in enumerate(zip(a, e)):
                    assert_close(al, el, f"{what}[{l}]")
            else:
                assert_close(a, e, what)
    return expected


# ---------------------------------------------------------------------------------------------------------------------
# The kernel API: the same names and signatures in every backend module (tinygrad's layout)
# ---------------------------------------------------------------------------------------------------------------------

def _backend_modules():
    modules = [get_ops("numpy")] + [get_ops(name) for name in CPU_BACKENDS]
    if available_backends()["cuda"][0]:
        modules.append(get_ops("cuda"))
    else:  # the module imports without a GPU as long as numba-cuda is installed; check its signatures too
        import importlib.util
        if importlib.util.find_spec("numba_cuda") is not None:
            import importlib
            modules.append(importlib.import_module("tinymask.ops.cuda"))
    return modules


def test_every_backend_defines_every_kernel_with_one_signature():
    modules = _backend_modules()
    reference = modules[0]
    for module in modules:
        for name in KERNELS:
            assert hasattr(module, name), f"{module.__name__} lacks {name}"
            if name == "matmul":
                continue  # np.matmul is a ufunc: no Python signature to compare
            params = list(inspect.signature(getattr(module, name)).parameters)
            expected = list(inspect.signature(getattr(reference, name)).parameters)
            assert params == expected, f"{module.__name__}.{name}{params} differs from tinymask.ops.numpy {expected}"
    assert [m.NAME for m in modules[:1 + len(CPU_BACKENDS)]] == ["numpy"] + CPU_BACKENDS
    for module in modules:  # a simple kernel takes the arguments of the tuned kernel it stands beside
        for name in [n for n in dir(module) if n.endswith("_simple")]:
            tuned = name[:-len("_simple")]
            assert tuned in KERNELS, f"{module.__name__}.{name}: no kernel {tuned} to stand beside"
            assert (list(inspect.signature(getattr(module, name)).parameters)
                    == list(inspect.signature(getattr(module, tuned)).parameters)), f"{module.__name__}.{name}"
    simple = {"numba": ["roi_align_backward_simple", "roi_align_forward_simple"],
              "cuda": ["conv2d_backward_simple", "conv2d_forward_simple", "matmul_simple"]}
    for module in modules[1:]:
        assert sorted(n for n in dir(module) if n.endswith("_simple")) == simple[module.NAME]


# ---------------------------------------------------------------------------------------------------------------------
# Convolution and transposed convolution (im2col / col2im around the GEMM)
# ---------------------------------------------------------------------------------------------------------------------

CONV_CASES = [  # (x shape, w shape, stride, padding, dilation)
    ((2, 3, 9, 8), (4, 3, 3, 3), 1, 1, 1),
    ((2, 3, 9, 8), (4, 3, 3, 3), 2, 1, 1),
    ((1, 2, 11, 10), (3, 2, 3, 3), 1, 2, 2),  # dilated, as in a DeepLab-style head
    ((2, 3, 12, 13), (2, 3, 7, 7), 2, 3, 1),  # the ResNet stem's 7×7/2
    ((2, 4, 6, 7), (5, 4, 1, 1), 1, 0, 1),  # 1×1
    ((1, 2, 9, 10), (3, 2, 3, 2), (2, 1), (1, 0), (1, 2)),  # unequal height / width settings
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation", CONV_CASES)
def test_conv2d(dtype, x_shape, w_shape, stride, padding, dilation):
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[0]).astype(dtype)
    check_backends(conv2d_forward, conv2d_backward, (x, w, b), dict(stride=stride, padding=padding, dilation=dilation))


DECONV_CASES = [  # (x shape, w shape, stride, padding, output_padding, dilation)
    ((3, 4, 5, 5), (4, 2, 2, 2), 2, 0, 0, 1),  # the mask head's 2×2/2 deconv
    ((2, 3, 4, 5), (3, 2, 3, 3), 2, 1, 1, 1),
    ((1, 2, 4, 3), (2, 3, 3, 2), 1, 0, 0, 2),
    ((2, 2, 3, 4), (2, 2, 3, 3), 3, 1, 2, 1),  # output_padding >= stride - 1 rows that no window reads
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, stride, padding, output_padding, dilation", DECONV_CASES)
def test_conv_transpose2d(dtype, x_shape, w_shape, stride, padding, output_padding, dilation):
    rng = np.random.default_rng(2)
    x, w = rng.standard_normal(x_shape).astype(dtype), rng.standard_normal(w_shape).astype(dtype)
    b = rng.standard_normal(w_shape[1]).astype(dtype)
    check_backends(conv_transpose2d_forward, conv_transpose2d_backward, (x, w, b),
                   dict(stride=stride, padding=padding, output_padding=output_padding, dilation=dilation))


@pytest.mark.parametrize("dtype", DTYPES)
def test_im2col_col2im_and_conv_kernels(dtype):
    # The kernels on their own, including a non-contiguous input, which the wrappers must accept. On the CPU
    # backends conv2d_forward / _backward are the reference's im2col + GEMM steps: the same numbers, bit for bit.
    rng = np.random.default_rng(3)
    x_pad = rng.standard_normal((2, 3, 10, 9)).astype(dtype)[:, :, ::-1]  # a negative-stride view
    w = rng.standard_normal((4, 3, 3, 2)).astype(dtype)
    dout = rng.standard_normal((2, 4, 4, 7)).astype(dtype)
    ref = get_ops("numpy")
    expected, ref_saved = ref.conv2d_forward(x_pad, w, (2, 1), (1, 2))
    dx_ref, dw_ref = ref.conv2d_backward(dout, ref_saved, w, (2, 1), (1, 2))
    for name in CPU_BACKENDS:
        ops = get_ops(name)
        cols = ops.im2col(x_pad, (3, 2), (2, 1), (1, 2))
        assert_close(cols, ref.im2col(x_pad, (3, 2), (2, 1), (1, 2)), f"{name} im2col")
        assert_close(ops.col2im(cols, x_pad.shape, (3, 2), (2, 1), (1, 2), (4, 7)),
                     ref.col2im(cols, x_pad.shape, (3, 2), (2, 1), (1, 2), (4, 7)), f"{name} col2im")
        out, saved = ops.conv2d_forward(x_pad, w, (2, 1), (1, 2))
        dx_pad, dw = ops.conv2d_backward(dout, saved, w, (2, 1), (1, 2))
        for got, want, what in ((out, expected, "forward"), (dx_pad, dx_ref, "dx_pad"), (dw, dw_ref, "dw")):
            assert_close(got, want, f"{name} conv2d {what}")
            np.testing.assert_array_equal(got, want, err_msg=f"{name} conv2d {what}: not bit for bit")


# ---------------------------------------------------------------------------------------------------------------------
# RoIAlign, RoIWarp, RoIPool, and the FPN pooler through the global switch
# ---------------------------------------------------------------------------------------------------------------------

ROIS = np.array([
    [0, 0.7, 1.3, 9.9, 6.6],
    [1, 2.15, 0.35, 6.45, 5.2],
    [1, -1.3, 2.2, 1.9, 3.1],     # sub-cell height, past the left edge
    [0, -6.0, -5.0, 4.0, 3.0],    # reaches more than one cell outside: "zero" and "edge" differ
    [1, 3.0, 4.0, 5.0, 4.0],      # zero height
    [0, 2.0, 2.0, 2.0, 2.0],      # a point
    [1, 30.0, 30.0, 40.0, 45.0],  # entirely outside
    [0, 1.0, 0.5, 15.5, 11.0],    # large: adaptive sampling takes several samples per bin
])


def roi_features(dtype, mode, shape=(2, 3, 8, 11)):
    """Random features; for max, plus a large distinct ramp, so that no two samples of a bin nearly tie (float32 and
    float64 arithmetic would pick different winners of a near-tie)."""
    F = np.random.default_rng(4).standard_normal(shape)
    if mode == "max":
        F = F + 10.0 * np.arange(shape[2] * shape[3]).reshape(shape[2:]) ** 1.3 / shape[3]
    return F.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("outside", ["zero", "edge"])
def test_roi_align(dtype, mode, aligned, sampling_ratio, outside):
    check_backends(roi_align_forward, roi_align_backward, (roi_features(dtype, mode), ROIS),
                   dict(output_size=(3, 4), spatial_scale=0.8, sampling_ratio=sampling_ratio, aligned=aligned,
                        mode=mode, outside=outside))


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_align_mask_head_size_and_no_rois(dtype):
    rois = ROIS * [1, 2, 2, 2, 2]  # the same boxes, twice as large, on a map of stride 2
    check_backends(roi_align_forward, roi_align_backward, (roi_features(dtype, "avg", (2, 4, 20, 24)), rois),
                   dict(output_size=14, spatial_scale=0.5, sampling_ratio=2, aligned=True))
    check_backends(roi_align_forward, roi_align_backward, (roi_features(dtype, "avg"), np.zeros((0, 5))),
                   dict(output_size=7, spatial_scale=0.25))


@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_align_avg_over_several_channel_blocks(dtype):
    # The Numba avg kernels work on blocks of CHANNEL_BLOCK channels per thread: two full blocks and a narrower last
    # one, on two images, large enough to run on every thread.
    # Their per-thread scratch buffer is kept between calls: a larger map, a smaller one with fewer channels (whose
    # last block is narrower than the buffer), then the larger again, must each give the reference's numbers.
    from tinymask.ops.numba.roi_align import CHANNEL_BLOCK
    rois = np.concatenate([ROIS, ROIS[::-1] + [0, 1.5, 0.5, 1.5, 0.5]])
    for shape in [(2, 2 * CHANNEL_BLOCK + 6, 12, 15), (2, CHANNEL_BLOCK + 3, 9, 10), (2, 2 * CHANNEL_BLOCK + 6, 12, 15)]:
        check_backends(roi_align_forward, roi_align_backward, (roi_features(dtype, "avg", shape), rois),
                       dict(output_size=7, spatial_scale=0.8, sampling_ratio=2, aligned=False))


def roi_kernel_args(features, rois, output_size, spatial_scale, sampling_ratio=-1, aligned=False, mode="avg",
                    outside="zero"):
    """The arguments after `features` that roi_align_forward hands a backend's RoIAlign kernel."""
    from tinymask.layers.roi_align import check_roi_inputs
    rois, batch, size = check_roi_inputs(features, rois, output_size, spatial_scale)
    return rois, batch, size, spatial_scale, sampling_ratio, aligned, mode, outside == "zero"


def check_roi_align_kernels(ops, forward, backward, features, geometry, what, seed=0):
    """A backend's RoIAlign kernel pair (`ops.<forward>`, `ops.<backward>`) against the NumPy reference's, on one
    case; also runs the backend's tuned backward on this pair's `saved`, which must be interchangeable."""
    ref = get_ops("numpy")
    expected, ref_saved = ref.roi_align_forward(features, *geometry)
    dout = np.random.default_rng(seed).standard_normal(expected.shape).astype(features.dtype)
    dF_ref = ref.roi_align_backward(dout, ref_saved, features.shape, *geometry)
    out, saved = getattr(ops, forward)(features, *geometry)
    assert_close(out, expected, f"{what}: {forward}")
    assert_close(getattr(ops, backward)(dout, saved, features.shape, *geometry), dF_ref, f"{what}: {backward}")
    assert_close(ops.roi_align_backward(dout, saved, features.shape, *geometry), dF_ref, f"{what}: saved swapped")


@pytest.mark.skipif(not CPU_BACKENDS, reason="numba not installed")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [-1, 2])
@pytest.mark.parametrize("outside", ["zero", "edge"])
def test_numba_roi_align_simple_kernels(dtype, mode, aligned, sampling_ratio, outside):
    # The simple kernels (each output element from its bin's bilinear samples; the backward split over feature
    # planes) against the NumPy reference: the RoIs of test_roi_align (past the map's edges, zero-sized, a point,
    # outside) and the same shifted, on a small map and on one of two full channel blocks and a narrower third.
    from tinymask.ops.numba.roi_align import CHANNEL_BLOCK
    nb = get_ops("numba")
    rois = np.concatenate([ROIS, ROIS[::-1] + [0, 1.5, 0.5, 1.5, 0.5]])
    for shape in [(2, 3, 8, 11), (2, 2 * CHANNEL_BLOCK + 6, 12, 15)]:
        F = roi_features(dtype, mode, shape)
        geometry = roi_kernel_args(F, rois, (3, 4), 0.8, sampling_ratio, aligned, mode, outside)
        check_roi_align_kernels(nb, "roi_align_forward_simple", "roi_align_backward_simple", F, geometry,
                                f"numba simple, {shape}")


@pytest.mark.skipif(not CPU_BACKENDS, reason="numba not installed")
@pytest.mark.parametrize("dtype", DTYPES)
def test_numba_roi_align_simple_kernels_mask_head_size_and_no_rois(dtype):
    nb = get_ops("numba")
    F = roi_features(dtype, "avg", (2, 4, 20, 24))
    geometry = roi_kernel_args(F, ROIS * [1, 2, 2, 2, 2], 14, 0.5, 2, aligned=True)
    check_roi_align_kernels(nb, "roi_align_forward_simple", "roi_align_backward_simple", F, geometry, "14x14")
    geometry = roi_kernel_args(F, np.zeros((0, 5)), 7, 0.25)
    check_roi_align_kernels(nb, "roi_align_forward_simple", "roi_align_backward_simple", F, geometry, "no RoIs")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_warp(dtype, mode):
    check_backends(roi_warp_forward, roi_warp_backward, (roi_features(dtype, mode), ROIS),
                   dict(output_size=3, spatial_scale=0.7, sampling_ratio=2, mode=mode))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output_size, spatial_scale", [(2, 1.0), ((3, 2), 0.5), (4, 1.3)])
def test_roi_pool(dtype, output_size, spatial_scale):
    F = roi_features(dtype, "avg")
    F[0, 1, 2:5, 2:5] = 1.5  # a plateau: ties go to the first cell, on every backend
    ref = check_backends(roi_pool_forward, roi_pool_backward, (F, ROIS),
                         dict(output_size=output_size, spatial_scale=spatial_scale))
    for name in CPU_BACKENDS:  # the winners themselves, not only the values
        _, cache = roi_pool_forward(F, ROIS, output_size=output_size, spatial_scale=spatial_scale, backend=name)
        _, ref_cache = roi_pool_forward(F, ROIS, output_size=output_size, spatial_scale=spatial_scale,
                                        backend="numpy")
        np.testing.assert_array_equal(cache[3], ref_cache[3])
    assert ref[0].shape == (len(ROIS), 3) + ((output_size,) * 2 if isinstance(output_size, int) else output_size)


@pytest.mark.parametrize("method", ["align", "pool"])
def test_multiscale_roi_under_the_global_switch(method):
    # multiscale_roi_forward has no backend= argument: the switch reaches it through use_backend.
    rng = np.random.default_rng(5)
    feats = [rng.standard_normal((1, 2, 32 // 2 ** l, 40 // 2 ** l)) for l in range(3)]
    boxes = rng.uniform(0, 100, (12, 2))
    rois = np.concatenate([np.zeros((12, 1)), boxes, boxes + rng.uniform(4, 120, (12, 2))], axis=1)
    kw = dict(scales=[1 / 4, 1 / 8, 1 / 16], output_size=3, method=method, canonical_size=64)
    out, cache = multiscale_roi_forward(feats, rois, **kw)
    d, _ = multiscale_roi_backward(np.ones_like(out), cache)
    for name in CPU_BACKENDS:
        with use_backend(name):
            out_b, cache_b = multiscale_roi_forward(feats, rois, **kw)
        d_b, _ = multiscale_roi_backward(np.ones_like(out), cache_b)  # outside the block: the cache knows its backend
        assert_close(out_b, out, f"multiscale {method} on {name}")
        for l in range(3):
            assert_close(d_b[l], d[l], f"multiscale {method} gradient, level {l}, on {name}")


# ---------------------------------------------------------------------------------------------------------------------
# Inference: mask pasting and NMS
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_paste_masks(dtype):
    rng = np.random.default_rng(6)
    masks = rng.random((6, 1, 7, 7)).astype(dtype)
    boxes = np.array([[3.2, 4.1, 20.7, 15.3], [-5.0, -3.0, 8.0, 6.0], [25.0, 18.0, 60.0, 50.0],  # inside, over 2 edges
                      [40.0, 40.0, 50.0, 50.0], [10.0, 10.0, 10.4, 10.2], [0.0, 0.0, 31.0, 23.0]], dtype=dtype)
    check_backends(paste_masks_in_image, None, (masks, boxes, (24, 32)))
    check_backends(paste_masks_in_image, None, (masks[:0], boxes[:0], (5, 6)))


def random_boxes(rng, n, dtype):
    xy = rng.uniform(0, 60, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(2, 30, (n, 2))], axis=1).astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("iou_threshold", [0.0, 0.3, 0.5, 0.7, 1.0])
def test_nms_keeps_the_same_boxes(dtype, iou_threshold):
    rng = np.random.default_rng(7)
    boxes = random_boxes(rng, 150, dtype)
    scores = np.round(rng.random(150), 1).astype(dtype)  # many equal scores: ties broken by index everywhere
    check_backends(nms, None, (boxes, scores, iou_threshold))
    groups = rng.integers(0, 4, 150)
    check_backends(batched_nms, None, (boxes, scores, groups, iou_threshold))


@pytest.mark.parametrize("dtype", DTYPES)
def test_nms_at_exactly_the_threshold(dtype):
    # IoU([0,0,2,1], [1,0,3,1]) = 1/3 computed in the boxes' dtype: a pair at exactly the threshold survives, on
    # every backend, whether the threshold arrives as a Python float or a NumPy scalar.
    boxes = np.array([[0, 0, 2, 1], [1, 0, 3, 1], [0.5, 0, 2.5, 1], [10, 10, 11, 11]], dtype=dtype)
    scores = np.array([0.9, 0.8, 0.7, 0.6], dtype=dtype)
    third = (np.float32(1) / np.float32(3)) if dtype == np.float32 else 1 / 3
    for threshold in (1 / 3, np.float64(1 / 3), third, 0.6):
        keep = check_backends(nms, None, (boxes, scores, threshold))[0]
        assert keep.dtype == np.int64
    check_backends(nms, None, (boxes[:0], scores[:0], 0.5))


# ---------------------------------------------------------------------------------------------------------------------
# The switch: argument > use_backend / set_backend > TINYMASK_BACKEND > "numpy"
# ---------------------------------------------------------------------------------------------------------------------

def _conv_backend(**kw):
    x, w = np.ones((1, 1, 3, 3)), np.ones((1, 1, 2, 2))
    return conv2d_forward(x, w, **kw)[1][-1]  # the cache records the backend that ran


def test_default_is_numpy(monkeypatch):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert get_backend() == "numpy" and _conv_backend() == "numpy"


@pytest.mark.skipif(not CPU_BACKENDS, reason="numba not installed")
def test_argument_context_setter_and_environment(monkeypatch):
    monkeypatch.setenv(ENV_VAR, "numba")
    assert get_backend() == "numba" and _conv_backend() == "numba"  # the environment variable
    assert _conv_backend(backend="numpy") == "numpy"  # the argument beats it
    with use_backend("numpy"):  # a block beats the environment
        assert get_backend() == "numpy" and _conv_backend() == "numpy"
        assert _conv_backend(backend="numba") == "numba"  # the argument beats the block
        with use_backend("numba"):
            assert _conv_backend() == "numba"
        assert get_backend() == "numpy"  # inner block restored
    assert get_backend() == "numba"  # outer block restored: back to the environment
    monkeypatch.delenv(ENV_VAR)
    set_backend("numba")
    assert get_backend() == "numba" and _conv_backend() == "numba"
    with pytest.raises(KeyError):
        with use_backend("numpy"):
            raise KeyError("an error inside the block")
    assert get_backend() == "numba"  # restored on the way out of an exception too


@pytest.mark.skipif(not CPU_BACKENDS, reason="numba not installed")
def test_backward_runs_on_the_forward_backend():
    F = roi_features(np.float64, "max")
    out, cache = roi_align_forward(F, ROIS, output_size=2, spatial_scale=1.0, mode="max", backend="numba")
    with use_backend("numpy"):  # the numba cache keeps arg-max indices, which only the numba backward reads
        d, _ = roi_align_backward(np.ones_like(out), cache)
    ref_out, ref_cache = roi_align_forward(F, ROIS, output_size=2, spatial_scale=1.0, mode="max")
    assert_close(d, roi_align_backward(np.ones_like(out), ref_cache)[0], "backward across a switch")


def test_bad_names_and_unavailable_backends(monkeypatch):
    with pytest.raises(ValueError, match="one of"):
        set_backend("torch")
    with pytest.raises(ValueError, match="one of"):
        conv2d_forward(np.ones((1, 1, 2, 2)), np.ones((1, 1, 1, 1)), backend="gpu")
    monkeypatch.setenv(ENV_VAR, "nunba")
    with pytest.raises(ValueError, match=ENV_VAR):
        get_backend()
    monkeypatch.delenv(ENV_VAR)
    ok, reason = available_backends()["cuda"]
    if not ok:  # asking for it says why it cannot run, and leaves the selection alone
        with pytest.raises(RuntimeError, match="not available"):
            set_backend("cuda")
        with pytest.raises(RuntimeError, match=re.escape(reason)):
            nms(np.zeros((1, 4)), np.zeros(1), 0.5, backend="cuda")
        assert get_backend() == "numpy"


def test_availability_report():
    report = available_backends()
    assert list(report) == list(BACKENDS)
    assert all(isinstance(ok, bool) and isinstance(reason, str) and reason for ok, reason in report.values())
    assert report["numpy"][0] is True
    text = describe_backends()
    assert text.splitlines()[0].startswith("backend: numpy")
    for name, (ok, reason) in report.items():
        assert any(line.split()[:2] == [name, "yes" if ok else "no"] and reason in line for line in text.splitlines())


def test_availability_reasons_when_packages_are_missing(monkeypatch):
    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "numba_cuda" else real(name, *a))
    backend_module._status.cache_clear()
    try:
        assert available_backends()["cuda"] == (False, "numba-cuda not installed (pip install 'tinymask[cuda]')")
        monkeypatch.setattr(importlib.util, "find_spec",
                            lambda name, *a: None if name.startswith("numba") else real(name, *a))
        backend_module._status.cache_clear()
        assert available_backends()["numba"][1].startswith("numba not installed")
        assert "numba-cuda not installed" in describe_backends() or "numba not installed" in describe_backends()
    finally:
        backend_module._status.cache_clear()
