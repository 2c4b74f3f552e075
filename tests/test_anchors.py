"""Tests for tinymask/box_logic/anchors.py: hand-checked base anchors, order and count, and torchvision's anchors exactly."""
import json
from pathlib import Path

import numpy as np
import pytest

from tinymask.box_logic.anchors import anchors_for_image, base_anchors, grid_anchors

DATA = Path(__file__).parent / "data"


def test_base_anchors_size_32_by_hand():
    # r = h / w, h = s * sqrt(r), w = s / sqrt(r), box [-w, -h, w, h] / 2 rounded:
    #   r = 0.5: w = 32 * 1.41421 = 45.25, h = 32 * 0.70711 = 22.63 -> halves 22.63, 11.31 -> [-23, -11, 23, 11]
    #   r = 1:   w = h = 32                                          -> [-16, -16, 16, 16]
    #   r = 2:   w = 22.63, h = 45.25                                -> [-11, -23, 11, 23]
    expected = [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]]
    np.testing.assert_array_equal(base_anchors((32,), (0.5, 1.0, 2.0)), expected)


def test_base_anchors_are_ratio_major():
    # sizes (32, 64), ratios (0.5, 1): order (r0, s0), (r0, s1), (r1, s0), (r1, s1).
    # r = 0.5, s = 64: w = 90.51, h = 45.25 -> halves 45.25, 22.63 -> [-45, -23, 45, 23]
    expected = [[-23, -11, 23, 11], [-45, -23, 45, 23], [-16, -16, 16, 16], [-32, -32, 32, 32]]
    np.testing.assert_array_equal(base_anchors((32, 64), (0.5, 1.0)), expected)


def test_base_anchors_round_half_to_even():
    # size 5, ratio 1: halves are exactly 2.5 -> 2 (even), not 3; size 3: 1.5 -> 2.
    np.testing.assert_array_equal(base_anchors((5, 3), (1.0,)), [[-2, -2, 2, 2], [-2, -2, 2, 2]])


def test_base_anchors_dtype():
    assert base_anchors((32,), (1.0,), dtype=np.float32).dtype == np.float32
    assert anchors_for_image((64, 64), [(2, 2)], ((32,),), (1.0,), dtype=np.float32)[0].dtype == np.float32


def test_grid_order_cell_major_then_anchor():
    base = base_anchors((32,), (0.5, 1.0, 2.0))  # A = 3
    # image 64 x 96 with a 2 x 3 map: stride 32 both ways. Anchor (y * W + x) * A + a = base[a] + (32x, 32y, 32x, 32y).
    anchors, counts = anchors_for_image((64, 96), [(2, 3)], ((32,),), (0.5, 1.0, 2.0))
    assert anchors.shape == (18, 4) and counts == [18]
    for y in range(2):
        for x in range(3):
            for a in range(3):
                np.testing.assert_array_equal(anchors[(y * 3 + x) * 3 + a], base[a] + [32 * x, 32 * y, 32 * x, 32 * y])
    # the first cell's anchors sit at (0, 0): no half-cell offset
    np.testing.assert_array_equal(anchors[:3], base)


def test_stride_is_integer_division_per_axis():
    base = base_anchors((16,), (1.0,))  # [-8, -8, 8, 8]
    # height 100 // 3 = 33, width 96 // 4 = 24: the last cell (y=2, x=3) is centred at (72, 66)
    anchors, _ = anchors_for_image((100, 96), [(3, 4)], ((16,),), (1.0,))
    np.testing.assert_array_equal(anchors[-1], [72 - 8, 66 - 8, 72 + 8, 66 + 8])
    np.testing.assert_array_equal(anchors, grid_anchors(base, (3, 4), (33, 24)))


def test_levels_are_concatenated_in_order():
    anchors, counts = anchors_for_image((64, 64), [(4, 4), (2, 2)], ((32,), (64,)), ((0.5, 1.0, 2.0), (1.0,)))
    assert counts == [4 * 4 * 3, 2 * 2 * 1]
    assert anchors.shape == (52, 4)
    np.testing.assert_array_equal(anchors[48:], grid_anchors(base_anchors((64,), (1.0,)), (2, 2), (32, 32)))


def test_matches_torchvision_tiny_fpn_exactly():
    config = json.loads((DATA / "tiny_fpn_model.json").read_text())["config"]
    with np.load(DATA / "tiny_fpn_model.npz") as model:
        image_hw = model["transformed"].shape[-2:]  # the padded batch, (160, 224)
        feature_hws = [model[f"features.{k}"].shape[-2:] for k in ("0", "1", "2", "3", "pool")]
        expected = model["anchors"]
    sizes = [(s,) for s in config["anchor_sizes"]]  # one size per level
    anchors, counts = anchors_for_image(image_hw, feature_hws, sizes, config["aspect_ratios"])
    assert counts == [h * w * 3 for h, w in feature_hws]
    np.testing.assert_array_equal(anchors, expected)


def test_bad_input():
    with pytest.raises(ValueError, match="sizes must give one sequence of sizes per level"):
        anchors_for_image((64, 64), [(4, 4), (2, 2)], ((32,),))
    with pytest.raises(ValueError, match="aspect_ratios must be"):
        anchors_for_image((64, 64), [(4, 4)], ((32,),), ((0.5,), (1.0,)))
    with pytest.raises(TypeError, match="image_hw must be a pair of ints"):
        anchors_for_image((64.0, 64), [(4, 4)], ((32,),))
    with pytest.raises(TypeError, match=r"feature_hws\[1\] must be a pair of ints"):
        anchors_for_image((64, 64), [(4, 4), (2,)], ((32,), (64,)))
    with pytest.raises(ValueError, match="feature size"):
        anchors_for_image((64, 64), [(128, 4)], ((32,),))
    with pytest.raises(ValueError, match="positive"):
        base_anchors((32,), (0.0,))
    with pytest.raises(TypeError, match="sizes must be a non-empty sequence"):
        base_anchors(32, (1.0,))
