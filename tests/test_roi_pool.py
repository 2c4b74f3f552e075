"""RoIPool (Fast R-CNN §2.1): a hand example, a naive loop reference of torchvision's kernel, gradients, edge cases."""
import math

import numpy as np
import pytest

from tinymask.gradcheck import check_layer
from tinymask.layers.roi_pool import roi_pool_backward, roi_pool_forward, round_half_away


def test_hand_example_two_rois():
    # F = np.arange(16) as 4×4:      0  1  2  3
    #                                4  5  6  7
    #                                8  9 10 11
    #                               12 13 14 15
    # RoI A = [0, 0, 2, 2]: cells 0..2 inclusive (3 cells), 2 bins of 1.5 -> rows/cols {0,1} and {1,2}
    #   (floor(0)=0 .. ceil(1.5)=2, floor(1.5)=1 .. ceil(3)=3): maxes [[5, 6], [9, 10]].
    # RoI B = [1, 2, 3, 3]: columns 1..3 (3 cells -> {1,2}, {2,3}), rows 2..3 (2 cells -> {2}, {3}):
    #   maxes [[10, 11], [14, 15]].
    F = np.arange(16, dtype=np.float64).reshape(1, 1, 4, 4)
    rois = np.array([[0, 0, 0, 2, 2], [0, 1, 2, 3, 3]], dtype=np.float64)
    out, cache = roi_pool_forward(F, rois, output_size=2, spatial_scale=1.0)
    np.testing.assert_array_equal(out[:, 0], [[[5, 6], [9, 10]], [[10, 11], [14, 15]]])
    # Backward: every output's gradient lands on its max; cell 10 wins twice (A's bin (1,1) and B's bin (0,0)).
    dF, drois = roi_pool_backward(np.ones_like(out), cache)
    assert drois is None
    expected = np.zeros(16)
    expected[[5, 6, 9, 11, 14, 15]] = 1
    expected[10] = 2
    np.testing.assert_array_equal(dF.reshape(-1), expected)


def test_round_half_away_from_zero():
    # torchvision's kernel uses C's round(): 2.5 -> 3, unlike np.round's 2.5 -> 2.
    np.testing.assert_array_equal(round_half_away(np.array([0.5, 1.5, 2.5, -0.5, -2.5, 1.49])),
                                  [1, 2, 3, -1, -3, 1])


def naive_roi_pool(F, rois, oh, ow, scale):
    """torchvision's roi_pool kernel, one output at a time."""
    N, C, H, W = F.shape
    out = np.zeros((len(rois), C, oh, ow))
    arg = -np.ones((len(rois), C, oh, ow), dtype=int)

    def c_round(v):
        return int(math.floor(abs(v) + 0.5)) * (1 if v >= 0 else -1)

    for k, (b, x0, y0, x1, y1) in enumerate(rois):
        sw, sh, ew, eh = c_round(x0 * scale), c_round(y0 * scale), c_round(x1 * scale), c_round(y1 * scale)
        rw, rh = max(ew - sw + 1, 1), max(eh - sh + 1, 1)
        bh, bw = rh / oh, rw / ow
        for c in range(C):
            for p in range(oh):
                for q in range(ow):
                    hs = min(max(math.floor(p * bh) + sh, 0), H)
                    he = min(max(math.ceil((p + 1) * bh) + sh, 0), H)
                    ws = min(max(math.floor(q * bw) + sw, 0), W)
                    we = min(max(math.ceil((q + 1) * bw) + sw, 0), W)
                    best, idx = (0.0, -1) if (he <= hs or we <= ws) else (-np.inf, -1)
                    for h in range(hs, he):
                        for w in range(ws, we):
                            if F[int(b), c, h, w] > best:
                                best, idx = F[int(b), c, h, w], h * W + w
                    out[k, c, p, q], arg[k, c, p, q] = best, idx
    return out, arg


def test_matches_naive_kernel_loop(rng):
    F = rng.standard_normal((2, 3, 7, 9))
    F[0, 1, 2:4, 2:4] = 1.5  # a plateau: ties go to the first cell in row-major order
    rois = np.array([
        [0, 0.0, 0.0, 8.0, 6.0],
        [1, 2.5, 1.5, 7.4, 9.9],     # .5 coordinates: rounded away from zero; reaches past the bottom
        [0, -3.0, -2.0, 2.0, 3.0],    # reaches past the top-left
        [1, 4.2, 4.2, 4.3, 4.3],      # sub-pixel: one cell
        [0, 20.0, 20.0, 30.0, 30.0],  # outside: every bin empty -> 0
        [0, 1.0, 1.0, 5.0, 5.0],      # the plateau
    ])
    for scale, (oh, ow) in [(1.0, (3, 3)), (0.5, (2, 3)), (2.0, (4, 2)), (1.0, (7, 7))]:
        out, cache = roi_pool_forward(F, rois, output_size=(oh, ow), spatial_scale=scale)
        ref, arg = naive_roi_pool(F, rois, oh, ow, scale)
        np.testing.assert_array_equal(out, ref)
        np.testing.assert_array_equal(cache[3], arg)


@pytest.mark.parametrize("output_size, spatial_scale", [(2, 1.0), ((3, 2), 0.5), (3, 1.3)])
def test_gradcheck(rng, output_size, spatial_scale):
    # Distinct values (random plus a large ramp), so no bin has a tie and the max is differentiable.
    F = rng.standard_normal((2, 2, 6, 7)) + 5.0 * np.arange(42).reshape(6, 7) ** 1.2 / 42
    rois = np.array([[0, 0.7, 1.3, 5.9, 4.6], [1, 2.15, 0.35, 6.45, 5.2], [1, -1.3, 2.2, 1.9, 3.1]])
    errors = check_layer(roi_pool_forward, roi_pool_backward, [F, rois], names=["features", "rois"],
                         kwargs=dict(output_size=output_size, spatial_scale=spatial_scale))
    assert list(errors) == ["features"]
    assert errors["features"] < 1e-7


def test_empty_bins_are_zero_without_gradient(rng):
    F = rng.standard_normal((1, 2, 4, 4)) - 10.0  # all negative: an empty bin's 0 is not some cell's max
    rois = np.array([[0, 10, 10, 12, 12], [0, -8, -8, -5, -5]], dtype=np.float64)
    out, cache = roi_pool_forward(F, rois, output_size=3, spatial_scale=1.0)
    assert np.all(out == 0)
    assert not roi_pool_backward(np.ones_like(out), cache)[0].any()


def test_empty_roi_list(rng):
    F = rng.standard_normal((2, 3, 5, 5))
    out, cache = roi_pool_forward(F, np.zeros((0, 5)), output_size=(2, 4), spatial_scale=1.0)
    assert out.shape == (0, 3, 2, 4)
    assert not roi_pool_backward(out, cache)[0].any()


def test_zero_area_roi_is_one_cell(rng):
    F = rng.standard_normal((1, 1, 5, 5))
    out, _ = roi_pool_forward(F, np.array([[0, 2.2, 3.1, 2.2, 3.1]]), output_size=2, spatial_scale=1.0)
    assert np.all(out == F[0, 0, 3, 2])  # rounded to cell (row 3, column 2); every bin covers it


def test_bad_input(rng):
    F = rng.standard_normal((2, 1, 4, 4))
    with pytest.raises(ValueError, match="inverted"):
        roi_pool_forward(F, np.array([[0, 3, 0, 1, 1.0]]), output_size=2, spatial_scale=1.0)
    with pytest.raises(ValueError, match="out of range"):
        roi_pool_forward(F, np.array([[2, 0, 0, 1, 1.0]]), output_size=2, spatial_scale=1.0)
    with pytest.raises(TypeError, match="float32 or float64"):
        roi_pool_forward(F.astype(np.int32), np.array([[0, 0, 0, 1, 1.0]]), output_size=2, spatial_scale=1.0)
