"""Tests for tinymask/box_logic/bilinear.py: identity, hand-derived 2x2 -> 4x4 and 4 -> 2, per-pixel reference, bad input.

(The comparison with PyTorch itself happens through `paste.out` in test_mask_paste.py, which resizes with it.)
"""
import math

import numpy as np
import pytest

from tinymask.box_logic.bilinear import bilinear_resize, linear_weights


def reference_resize(x, out_h, out_w):
    """PyTorch's align_corners=False bilinear, one output pixel at a time (slow, for checking)."""
    in_h, in_w = x.shape
    out = np.zeros((out_h, out_w))
    for i in range(out_h):
        sy = max((i + 0.5) * in_h / out_h - 0.5, 0.0)
        y0 = min(math.floor(sy), in_h - 1)
        y1 = min(y0 + 1, in_h - 1)
        ly = sy - y0
        for j in range(out_w):
            sx = max((j + 0.5) * in_w / out_w - 0.5, 0.0)
            x0 = min(math.floor(sx), in_w - 1)
            x1 = min(x0 + 1, in_w - 1)
            lx = sx - x0
            top = (1 - lx) * x[y0, x0] + lx * x[y0, x1]
            bottom = (1 - lx) * x[y1, x0] + lx * x[y1, x1]
            out[i, j] = (1 - ly) * top + ly * bottom
    return out


def test_identity_at_same_size():
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 7))
    np.testing.assert_array_equal(bilinear_resize(x, (5, 7)), x)


def test_2x2_to_4x4_by_hand():
    # Along one axis, 2 -> 4: src = (d + 0.5) * 2/4 - 0.5 = -0.25 (-> 0), 0.25, 0.75, 1.25 (right neighbour clamped),
    # so a pair [p, q] becomes [p, 0.75 p + 0.25 q, 0.25 p + 0.75 q, q].
    # Rows of [[0, 1], [2, 3]]: [0, 0.25, 0.75, 1] and [2, 2.25, 2.75, 3]; then the same blend down the columns.
    x = np.array([[0.0, 1.0], [2.0, 3.0]])
    expected = np.array([
        [0.0, 0.25, 0.75, 1.0],
        [0.5, 0.75, 1.25, 1.5],
        [1.5, 1.75, 2.25, 2.5],
        [2.0, 2.25, 2.75, 3.0],
    ])
    np.testing.assert_allclose(bilinear_resize(x, (4, 4)), expected, atol=1e-15)


def test_4_to_2_averages_pairs():
    # 4 -> 2: src = (d + 0.5) * 2 - 0.5 = 0.5, 2.5: the mean of pixels (0, 1) and of (2, 3).
    x = np.array([[1.0, 3.0, 10.0, 20.0]])
    np.testing.assert_allclose(bilinear_resize(x, (1, 2)), [[2.0, 15.0]])


def test_linear_weights():
    i0, i1, w0, w1 = linear_weights(2, 4)
    np.testing.assert_array_equal(i0, [0, 0, 0, 1])
    np.testing.assert_array_equal(i1, [1, 1, 1, 1])
    np.testing.assert_allclose(w1, [0.0, 0.25, 0.75, 0.25])
    np.testing.assert_allclose(w0 + w1, 1.0)


@pytest.mark.parametrize("in_hw, out_hw", [((5, 7), (11, 3)), ((1, 1), (3, 4)), ((30, 30), (17, 45)), ((6, 2), (6, 9))])
def test_against_per_pixel_reference(in_hw, out_hw):
    x = np.random.default_rng(1).normal(size=in_hw)
    np.testing.assert_allclose(bilinear_resize(x, out_hw), reference_resize(x, *out_hw), rtol=0, atol=1e-13)


def test_leading_axes_are_independent():
    x = np.random.default_rng(2).normal(size=(2, 3, 6, 5))
    out = bilinear_resize(x, (9, 4))
    assert out.shape == (2, 3, 9, 4)
    for n in range(2):
        for c in range(3):
            np.testing.assert_array_equal(out[n, c], bilinear_resize(x[n, c], (9, 4)))


def test_keeps_dtype():
    x = np.ones((3, 4), dtype=np.float32)
    out = bilinear_resize(x, (5, 6))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, 1.0)


def test_bad_input():
    with pytest.raises(TypeError, match="x must be float32 or float64"):
        bilinear_resize(np.ones((3, 3), dtype=np.uint8), (2, 2))
    with pytest.raises(TypeError, match="x must be a NumPy array"):
        bilinear_resize([[1.0]], (2, 2))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        bilinear_resize(np.ones(3), (2, 2))
    with pytest.raises(TypeError, match="out_hw must be a pair of ints"):
        bilinear_resize(np.ones((3, 3)), (2.0, 2))
    with pytest.raises(ValueError, match="out_hw must be positive"):
        bilinear_resize(np.ones((3, 3)), (0, 2))
    with pytest.raises(ValueError, match="non-empty"):
        bilinear_resize(np.ones((0, 3)), (2, 2))
