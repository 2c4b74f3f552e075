"""RoIWarp (Mask R-CNN Table 2c): RoIPool's rounding of the box, then RoIAlign's bilinear sampling."""
import numpy as np
import pytest

from tinymask.gradcheck import check_layer
from tinymask.layers.roi_align import roi_align_forward
from tinymask.layers.roi_warp import quantize_rois, roi_warp_backward, roi_warp_forward


def test_hand_example_rounding_is_the_only_difference():
    # On F[y, x] = 5y + x (5×5), bilinear sampling reads 5y + x exactly. The box [0.6, 0.6, 2.4, 2.4] is rounded to
    # [1, 1, 2, 2]; output 2×2 with one sample per bin puts the samples at 1.25 and 1.75 along each axis, so
    # out = 5·[1.25, 1.75]ᵀ + [1.25, 1.75] = [[7.5, 8], [10, 10.5]]. RoIAlign on the unrounded box samples at
    # 1.05 and 1.95 instead: [[6.3, 7.2], [10.8, 11.7]].
    F = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    rois = np.array([[0, 0.6, 0.6, 2.4, 2.4]])
    out, _ = roi_warp_forward(F, rois, output_size=2, spatial_scale=1.0, sampling_ratio=1)
    np.testing.assert_allclose(out[0, 0], [[7.5, 8.0], [10.0, 10.5]], atol=1e-12)
    out, _ = roi_align_forward(F, rois, output_size=2, spatial_scale=1.0, sampling_ratio=1)
    np.testing.assert_allclose(out[0, 0], [[6.3, 7.2], [10.8, 11.7]], atol=1e-12)


def test_quantize_rois_rounds_like_roi_pool():
    rois = np.array([[1, 2.5, 3.49, 10.0, 13.0], [0, -2.5, 0.0, 7.0, 9.0]])
    np.testing.assert_array_equal(quantize_rois(rois, 0.5), [[1, 1, 2, 5, 7], [0, -1, 0, 4, 5]])  # 1.25->1, 6.5->7


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("sampling_ratio", [2, -1])
def test_equals_roi_align_on_the_rounded_box(rng, mode, sampling_ratio):
    F = rng.standard_normal((2, 3, 8, 9))
    rois = np.array([[0, 1.3, 2.6, 13.9, 10.2], [1, 5.0, 0.4, 9.7, 15.1]])
    for scale in (1.0, 0.5):
        out, _ = roi_warp_forward(F, rois, output_size=(3, 2), spatial_scale=scale, sampling_ratio=sampling_ratio,
                                  mode=mode)
        ref, _ = roi_align_forward(F, quantize_rois(rois, scale), output_size=(3, 2), spatial_scale=1.0,
                                   sampling_ratio=sampling_ratio, mode=mode, aligned=False)
        np.testing.assert_array_equal(out, ref)
    # A box already on the grid is not moved: RoIWarp and RoIAlign(aligned=False) agree.
    grid_rois = np.array([[0, 2.0, 4.0, 12.0, 10.0]])
    out, _ = roi_warp_forward(F, grid_rois, output_size=3, spatial_scale=0.5, mode=mode)
    ref, _ = roi_align_forward(F, grid_rois, output_size=3, spatial_scale=0.5, mode=mode)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("sampling_ratio", [2, 0])
@pytest.mark.parametrize("output_size, spatial_scale", [((2, 3), 1.0), (3, 0.5)])
def test_gradcheck(rng, mode, sampling_ratio, output_size, spatial_scale):
    F = rng.standard_normal((2, 2, 6, 7))
    if mode == "max":
        F = F + 10.0 * np.arange(42).reshape(6, 7) ** 1.3 / 42  # distinct values: no ties in a bin
    # The output is linear in F for avg (wherever the samples sit), and piecewise linear for max, with kinks only at
    # ties, which the ramp rules out.
    rois = np.array([[0, 0.7, 1.3, 5.9, 4.6], [1, 2.15, 0.35, 6.45, 5.2], [1, -1.3, 2.2, 1.9, 3.1]])
    errors = check_layer(roi_warp_forward, roi_warp_backward, [F, rois], names=["features", "rois"],
                         kwargs=dict(output_size=output_size, spatial_scale=spatial_scale,
                                     sampling_ratio=sampling_ratio, mode=mode))
    assert list(errors) == ["features"]
    assert errors["features"] < 1e-7


def test_empty_and_degenerate(rng):
    F = rng.standard_normal((1, 2, 5, 5))
    out, cache = roi_warp_forward(F, np.zeros((0, 5)), output_size=2, spatial_scale=1.0)
    assert out.shape == (0, 2, 2, 2) and not roi_warp_backward(out, cache)[0].any()
    rois = np.array([[0, 2.2, 2.2, 2.2, 2.2], [0, 40, 40, 50, 50]])
    out, cache = roi_warp_forward(F, rois, output_size=3, spatial_scale=1.0)
    assert np.all(np.isfinite(out)) and np.all(out[1] == 0)
    assert np.all(np.isfinite(roi_warp_backward(np.ones_like(out), cache)[0]))


def test_inverted_box_raises_before_rounding(rng):
    # x1 < x0 by 0.1: both round to 1, but the box itself is wrong, and the error says so.
    F = rng.standard_normal((1, 1, 4, 4))
    with pytest.raises(ValueError, match="inverted"):
        roi_warp_forward(F, np.array([[0, 1.2, 0, 1.1, 2]]), output_size=2, spatial_scale=1.0)
