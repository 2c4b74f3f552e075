"""RoIAlign (Mask R-CNN §3): golden values, torchvision's numbers, a naive loop reference, gradients, edge cases."""

import numpy as np
import pytest

from tinymask.gradcheck import check_layer
from tinymask.layers.roi_align_naive import roi_align_backward_naive, roi_align_forward_naive
from tinymask.layers.roi_align import (linear_interp_1d, roi_align_backward, roi_align_forward, roi_bins_1d,
                                       sample_coords)

OPS = np.load(__file__.rsplit("/", 1)[0] + "/data/ops.npz")


# ---------------------------------------------------------------------------------------------------------------------
# Golden values a reader can check by hand
# ---------------------------------------------------------------------------------------------------------------------

def test_golden_5x5_aligned_false_and_true():
    # The map is F[y, x] = 5y + x (np.arange(25) as 5×5), which bilinear interpolation reproduces exactly at any
    # (y, x) inside the map, so every sample reads 5y + x. Box [1, 1, 3, 3], output 4×4, adaptive sampling:
    # the RoI is 2 cells wide, bins are 0.5 wide, grid = ceil(2 / 4) = 1 sample per bin, at the bin centre.
    F = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    rois = np.array([[0, 1, 1, 3, 3]], dtype=np.float64)

    # aligned=False: the box is used as is, bin centres at 1 + 0.25, 1.75, 2.25, 2.75 along each axis,
    # so out[i, j] = 5·(1.25 + 0.5 i) + (1.25 + 0.5 j) = 7.5 + 2.5 i + 0.5 j.
    out, _ = roi_align_forward(F, rois, output_size=4, spatial_scale=1.0, sampling_ratio=0, aligned=False)
    i, j = np.mgrid[0:4, 0:4]
    np.testing.assert_allclose(out[0, 0], 7.5 + 2.5 * i + 0.5 * j, rtol=0, atol=1e-12)

    # aligned=True: the box is shifted by -0.5 to [0.5, 2.5], bin centres at 0.75, 1.25, 1.75, 2.25,
    # so out[i, j] = 5·(0.75 + 0.5 i) + (0.75 + 0.5 j) = 4.5 + 2.5 i + 0.5 j: an upsampling of pixels
    # [[6, 7], [11, 12]], the four pixels the box [1, 3) × [1, 3) actually covers.
    out, _ = roi_align_forward(F, rois, output_size=4, spatial_scale=1.0, sampling_ratio=0, aligned=True)
    np.testing.assert_allclose(out[0, 0], 4.5 + 2.5 * i + 0.5 * j, rtol=0, atol=1e-12)

    # The same numbers, as detectron2's tests/layers/test_roi_align.py writes them out (first and last rows).
    np.testing.assert_allclose(out[0, 0, 0], [4.5, 5.0, 5.5, 6.0])
    np.testing.assert_allclose(out[0, 0, 3], [12.0, 12.5, 13.0, 13.5])
    out, _ = roi_align_forward(F, rois, output_size=4, spatial_scale=1.0, sampling_ratio=0, aligned=False)
    np.testing.assert_allclose(out[0, 0, 0], [7.5, 8, 8.5, 9])
    np.testing.assert_allclose(out[0, 0, 3], [15, 15.5, 16, 16.5])


def test_outside_rule_by_hand():
    # Rows are identical, columns read 10, 20, 30. Box x in [-3, 1], y in [0, 1], output 1×4, one sample per bin:
    # the samples sit at x = -2.5, -1.5, -0.5, 0.5 (y = 0.5 reads any row, all rows are equal).
    # x = -2.5 and -1.5 are more than one cell outside: 0 with outside="zero" (torchvision's kernels), the clamped
    # edge value 10 with outside="edge" (torchvision's pure-Python path). x = -0.5 clamps to 0 -> 10 in both;
    # x = 0.5 -> halfway between 10 and 20 = 15.
    F = np.tile(np.array([10.0, 20.0, 30.0]), (1, 1, 3, 1))  # (1, 1, 3, 3)
    rois = np.array([[0, -3, 0, 1, 1]], dtype=np.float64)
    kw = dict(output_size=(1, 4), spatial_scale=1.0, sampling_ratio=1)
    out, _ = roi_align_forward(F, rois, **kw)
    np.testing.assert_array_equal(out[0, 0, 0], [0, 0, 10, 15])
    out, _ = roi_align_forward(F, rois, outside="edge", **kw)
    np.testing.assert_array_equal(out[0, 0, 0], [10, 10, 10, 15])


# ---------------------------------------------------------------------------------------------------------------------
# torchvision 0.28 (tests/data/ops.npz; see /work/shared/reference/torchvision/README.md for how it was made)
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", range(36))
def test_matches_torchvision(case):
    # The fixture comes from torchvision's pure-Python _roi_align, which clamps every sample into the map (no "reads 0
    # beyond one cell" rule), so it is compared with outside="edge". Its gradient has NaN at F[0, :, 0, 0] in the
    # aligned=True adaptive cases: the zero-area RoI 6 has no samples, torchvision computes their positions as 0/0 and
    # the masked-out NaN leaks into the backward (0·NaN). The true gradient there is what the other RoIs give, and
    # RoI 6 gives exactly 0: checked below.
    spatial_scale, oh, ow, sampling_ratio, aligned = OPS["roi_align.cases"][case]
    x, rois = OPS["roi_align.input"], OPS["roi_align.rois"]
    kw = dict(output_size=(int(oh), int(ow)), spatial_scale=float(spatial_scale), sampling_ratio=int(sampling_ratio),
              aligned=bool(aligned), outside="edge")
    out, cache = roi_align_forward(x, rois, **kw)
    np.testing.assert_allclose(out, OPS[f"roi_align.{case}.out"], rtol=0, atol=1e-10)
    dx, drois = roi_align_backward(OPS[f"roi_align.{case}.grad_out"], cache)
    assert drois is None
    assert np.all(np.isfinite(dx))
    ref = OPS[f"roi_align.{case}.grad_input"]
    finite = np.isfinite(ref)
    np.testing.assert_allclose(dx[finite], ref[finite], rtol=0, atol=1e-10)
    if not finite.all():
        assert aligned and sampling_ratio <= 0 and (~finite).sum() == x.shape[1]
        out6, cache6 = roi_align_forward(x, rois[6:7], **kw)
        assert np.all(out6 == 0)
        assert np.all(roi_align_backward(OPS[f"roi_align.{case}.grad_out"][6:7], cache6)[0] == 0)


@pytest.mark.parametrize("case", [0, 5, 15, 22])
def test_outside_modes_agree_inside_the_map(case):
    # RoIs 0, 4, 5, 6 stay within one cell of the 13×17 map at scale ≤ 1: "zero" and "edge" give the same numbers.
    spatial_scale, oh, ow, sampling_ratio, aligned = OPS["roi_align.cases"][case]
    assert spatial_scale <= 1
    inside = [0, 4, 5, 6]
    kw = dict(output_size=(int(oh), int(ow)), spatial_scale=float(spatial_scale), sampling_ratio=int(sampling_ratio),
              aligned=bool(aligned))
    out, _ = roi_align_forward(OPS["roi_align.input"], OPS["roi_align.rois"][inside], **kw)
    np.testing.assert_allclose(out, OPS[f"roi_align.{case}.out"][inside], rtol=0, atol=1e-10)


# ---------------------------------------------------------------------------------------------------------------------
# The paper-shaped reference (tinymask/layers/roi_align_naive.py): one sample at a time with its four corner weights
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("outside", ["zero", "edge"])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_matches_naive_four_corner_loop(rng, mode, outside, aligned, sampling_ratio):
    F = rng.standard_normal((2, 2, 6, 7))
    rois = np.array([
        [0, 1.3, 0.7, 9.1, 8.2],      # crosses the bottom-right edge
        [1, -4.2, -3.1, 2.6, 3.3],    # more than one cell outside top-left
        [1, 2.2, 2.9, 2.2, 2.9],      # zero area
        [0, 3.1, 1.4, 3.6, 1.7],      # sub-pixel
        [1, -9.0, 20.0, -5.0, 24.0],  # entirely outside
    ])
    for scale, size in [(1.0, (3, 2)), (0.5, 2)]:
        out, _ = roi_align_forward(F, rois, output_size=size, spatial_scale=scale, sampling_ratio=sampling_ratio,
                                   aligned=aligned, mode=mode, outside=outside)
        kw = dict(output_size=size, spatial_scale=scale, sampling_ratio=sampling_ratio, aligned=aligned, mode=mode,
                  outside=outside)
        ref, ref_cache = roi_align_forward_naive(F, rois, **kw)
        np.testing.assert_allclose(out, ref, rtol=0, atol=1e-12)
        dout = rng.standard_normal(out.shape)
        np.testing.assert_allclose(roi_align_backward(dout, roi_align_forward(F, rois, **kw)[1])[0],
                                   roi_align_backward_naive(dout, ref_cache)[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode", ["avg", "max"])
def test_naive_reference_passes_the_gradient_check(rng, mode):
    F = rng.permutation(np.arange(2 * 2 * 5 * 6, dtype=np.float64)).reshape(2, 2, 5, 6) / 10  # no ties for max
    rois = np.array([[0, 0.6, 1.1, 4.4, 3.9], [1, -1.5, 2.2, 3.1, 6.3]])
    kw = dict(output_size=2, spatial_scale=1.0, sampling_ratio=2, aligned=True, mode=mode)
    errors = check_layer(roi_align_forward_naive, roi_align_backward_naive, [F, rois], kwargs=kw,
                         names=["features", "rois"])
    assert set(errors) == {"features"} and errors["features"] < 1e-7, errors


def test_helpers_compile_with_numba_and_agree():
    # The scalar maths are written once: a Numba kernel calls them on scalars, NumPy on arrays.
    numba = pytest.importorskip("numba")
    interp = numba.njit(linear_interp_1d)
    bins = numba.njit(roi_bins_1d)
    coords = numba.njit(sample_coords)
    t = np.array([-2.5, -1.0, -0.3, 0.0, 2.25, 4.0, 4.6, 5.0, 5.5])
    for zero_outside in (True, False):
        arrays = linear_interp_1d(t, 5, zero_outside)
        for n, tn in enumerate(t):
            assert interp(tn, 5, zero_outside) == tuple(a[n] for a in arrays)
    for args in [(1.3, 9.1, 0.5, 7, -1, False), (2.2, 2.2, 1.0, 3, 0, True), (0.0, 4.0, 0.25, 2, 2, True)]:
        assert bins(*args) == roi_bins_1d(*args)
    assert coords(0.5, 0.25, 2, 3, 1) == sample_coords(0.5, 0.25, 2, 3, 1)


# ---------------------------------------------------------------------------------------------------------------------
# Gradients (float64, features only: boxes are constants)
# ---------------------------------------------------------------------------------------------------------------------

def features_for(mode, rng):
    """Random features; for max, plus a large distinct ramp so no two samples of a bin tie."""
    F = rng.standard_normal((2, 2, 6, 7))
    if mode == "max":
        F = F + 10.0 * np.arange(6 * 7).reshape(6, 7) ** 1.3 / 42
    return F


ROIS = np.array([
    [0, 0.7, 1.3, 5.9, 4.6],
    [1, 2.15, 0.35, 6.45, 5.2],
    [1, -1.3, 2.2, 1.9, 3.1],  # sub-cell height, reaching past the left edge
])


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
@pytest.mark.parametrize("output_size, spatial_scale", [((2, 3), 1.0), (3, 0.5), (2, 1.7)])
def test_gradcheck(rng, mode, aligned, sampling_ratio, output_size, spatial_scale):
    F = features_for(mode, rng)
    errors = check_layer(roi_align_forward, roi_align_backward, [F, ROIS], names=["features", "rois"],
                         kwargs=dict(output_size=output_size, spatial_scale=spatial_scale,
                                     sampling_ratio=sampling_ratio, aligned=aligned, mode=mode))
    assert list(errors) == ["features"]
    assert errors["features"] < 1e-7


@pytest.mark.parametrize("outside", ["zero", "edge"])
def test_gradcheck_outside(rng, outside):
    F = features_for("avg", rng)
    rois = np.array([[0, -4.3, -2.6, 3.1, 9.7], [1, 4.4, 3.3, 11.2, 8.1]])
    errors = check_layer(roi_align_forward, roi_align_backward, [F, rois],
                         kwargs=dict(output_size=3, spatial_scale=1.0, sampling_ratio=2, outside=outside))
    assert errors["input0"] < 1e-7


# ---------------------------------------------------------------------------------------------------------------------
# Edge cases: always defined, never NaN
# ---------------------------------------------------------------------------------------------------------------------

def test_empty_roi_list(rng):
    F = rng.standard_normal((2, 3, 5, 5))
    out, cache = roi_align_forward(F, np.zeros((0, 5)), output_size=(7, 6), spatial_scale=0.5)
    assert out.shape == (0, 3, 7, 6)
    dF, drois = roi_align_backward(np.zeros((0, 3, 7, 6)), cache)
    assert drois is None and dF.shape == F.shape and not dF.any()


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("sampling_ratio", [2, -1])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_degenerate_rois_are_finite(rng, aligned, sampling_ratio, mode):
    F = rng.standard_normal((1, 2, 5, 5))
    rois = np.array([
        [0, 3, 4, 5, 4],          # zero height (detectron2's empty box)
        [0, 2, 2, 2, 2],          # a point
        [0, 30, 30, 40, 45],      # fully outside
        [0, 1.1, 1.2, 1.15, 1.3],  # sub-pixel
    ], dtype=np.float64)
    out, cache = roi_align_forward(F, rois, output_size=7, spatial_scale=1.0, sampling_ratio=sampling_ratio,
                                   aligned=aligned, mode=mode)
    dF, _ = roi_align_backward(np.ones_like(out), cache)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(dF))
    assert np.all(out[2] == 0)  # more than one cell outside reads 0
    if aligned and sampling_ratio <= 0:  # no minimum size, adaptive grid of 0 samples: zeros, no gradient
        assert np.all(out[0] == 0) and np.all(out[1] == 0)
        _, c01 = roi_align_forward(F, rois[:2], output_size=7, spatial_scale=1.0, sampling_ratio=sampling_ratio,
                                   aligned=aligned, mode=mode)
        assert not roi_align_backward(np.ones((2, 2, 7, 7)), c01)[0].any()


def test_float32_features_with_float64_rois(rng):
    F = rng.standard_normal((1, 2, 6, 7)).astype(np.float32)
    out, cache = roi_align_forward(F, ROIS[:1], output_size=3, spatial_scale=1.0)
    assert out.dtype == np.float32
    assert roi_align_backward(np.ones_like(out), cache)[0].dtype == np.float32
    ref, _ = roi_align_forward(F.astype(np.float64), ROIS[:1], output_size=3, spatial_scale=1.0)
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


def test_integer_rois_accepted(rng):
    F = rng.standard_normal((2, 1, 5, 5))
    a, _ = roi_align_forward(F, np.array([[1, 0, 1, 3, 4]]), output_size=2, spatial_scale=1.0)
    b, _ = roi_align_forward(F, np.array([[1.0, 0, 1, 3, 4]]), output_size=2, spatial_scale=1.0)
    np.testing.assert_array_equal(a, b)


# ---------------------------------------------------------------------------------------------------------------------
# Bad input: a clear error naming the problem
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rois, error, message", [
    (np.zeros((2, 4)), ValueError, r"\(K, 5\)"),
    (np.zeros(5), ValueError, r"\(K, 5\)"),
    (np.array([[0.5, 0, 0, 1, 1]]), ValueError, "integer"),
    (np.array([[2, 0, 0, 1, 1]]), ValueError, "out of range"),
    (np.array([[-1, 0, 0, 1, 1]]), ValueError, "out of range"),
    (np.array([[0, 0, np.nan, 1, 1]]), ValueError, "NaN"),
    (np.array([[0, 0, 0, np.inf, 1]]), ValueError, "infinity"),
    (np.array([[0, 3, 0, 1, 1]]), ValueError, "inverted"),
    (np.array([[0, 0, 3, 1, 1]]), ValueError, "inverted"),
    (np.array([["0", "0", "0", "1", "1"]]), TypeError, "real numbers"),
    ([[0, 0, 0, 1, 1]], TypeError, "NumPy array"),
])
def test_bad_rois(rng, rois, error, message):
    F = rng.standard_normal((2, 1, 4, 4))
    with pytest.raises(error, match=message):
        roi_align_forward(F, rois, output_size=2, spatial_scale=1.0)


def test_inverted_box_raises_for_aligned_true_too(rng):
    F = rng.standard_normal((1, 1, 4, 4))
    with pytest.raises(ValueError, match="aligned=True"):
        roi_align_forward(F, np.array([[0, 3, 0, 1, 1.0]]), output_size=2, spatial_scale=1.0, aligned=True)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(features=np.zeros((1, 1, 4, 4), dtype=np.int64)), TypeError, "float32 or float64"),
    (dict(features=np.zeros((1, 4, 4))), ValueError, r"\(N, C, H, W\)"),
    (dict(output_size=0), ValueError, "output_size"),
    (dict(output_size=2.5), TypeError, "output_size"),
    (dict(spatial_scale=0.0), ValueError, "spatial_scale"),
    (dict(spatial_scale=float("nan")), ValueError, "spatial_scale"),
    (dict(mode="mean"), ValueError, "mode"),
    (dict(sampling_ratio=2.0), TypeError, "sampling_ratio"),
    (dict(outside="reflect"), ValueError, "outside"),
])
def test_bad_arguments(kwargs, error, message):
    args = dict(features=np.zeros((1, 1, 4, 4)), rois=np.array([[0, 0, 0, 2, 2.0]]), output_size=2,
                spatial_scale=1.0)
    args.update(kwargs)
    with pytest.raises(error, match=message):
        roi_align_forward(args.pop("features"), args.pop("rois"), **args)
