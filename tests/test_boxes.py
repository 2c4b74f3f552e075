"""Tests for tinymask/box_logic/boxes.py: box coding (Faster R-CNN Eq. 2) and IoU against torchvision, hand cases, bad input."""
import math
from pathlib import Path

import numpy as np
import pytest

from tinymask.box_logic.boxes import (box_area, box_iou, check_boxes, clip_boxes, decode_boxes, DEFAULT_CLAMP,
                                      encode_boxes, remove_small_boxes)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def ops():
    with np.load(DATA / "ops.npz") as data:
        return {k: data[k] for k in data.files if k.startswith("boxes.")}


WEIGHTS = {"w1": (1.0, 1.0, 1.0, 1.0), "w10": (10.0, 10.0, 5.0, 5.0)}


# ---- against torchvision (float64, 1e-10) ------------------------------------------------------------------------

@pytest.mark.parametrize("key", ["w1", "w10"])
def test_encode_matches_torchvision(ops, key):
    # BoxCoder(weights).encode_single(gt, anchors): the targets that move each anchor onto its gt box.
    t = encode_boxes(ops["boxes.gt"], ops["boxes.anchors"], WEIGHTS[key])
    np.testing.assert_allclose(t, ops[f"boxes.encode.{key}"], rtol=0, atol=1e-10)


@pytest.mark.parametrize("key", ["w1", "w10"])
def test_decode_matches_torchvision(ops, key):
    deltas = ops[f"boxes.deltas.{key}"]
    out = decode_boxes(deltas, ops["boxes.anchors"], WEIGHTS[key])
    np.testing.assert_allclose(out, ops[f"boxes.decode.{key}"], rtol=0, atol=1e-10)


def test_decode_row0_hits_the_clamp(ops):
    # Row 0 has dw = dh = 20 (weights 1): exp(20) would make the box 5e8 times wider; the clamp stops at 1000/16.
    anchor = ops["boxes.anchors"][0]
    deltas = ops["boxes.deltas.w1"]
    assert deltas[0, 2] == 20 and deltas[0, 3] == 20
    box = decode_boxes(deltas, ops["boxes.anchors"])[0]
    assert math.isclose(box[2] - box[0], 62.5 * (anchor[2] - anchor[0]), rel_tol=1e-12)
    assert math.isclose(box[3] - box[1], 62.5 * (anchor[3] - anchor[1]), rel_tol=1e-12)
    assert math.isclose(DEFAULT_CLAMP, math.log(62.5))


def test_iou_matches_torchvision(ops):
    np.testing.assert_allclose(box_iou(ops["boxes.anchors"], ops["boxes.gt"]), ops["boxes.iou"], rtol=0, atol=1e-10)


# ---- hand cases --------------------------------------------------------------------------------------------------

def test_encode_hand_case():
    # Anchor: centre (5, 5), 10 x 10. Target: centre (7, 4), 20 x 5.
    # Eq. (2): t_x = (7 - 5) / 10 = 0.2, t_y = (4 - 5) / 10 = -0.1, t_w = log(20 / 10), t_h = log(5 / 10).
    anchor = np.array([[0.0, 0.0, 10.0, 10.0]])
    gt = np.array([[-3.0, 1.5, 17.0, 6.5]])
    np.testing.assert_allclose(encode_boxes(gt, anchor), [[0.2, -0.1, math.log(2), math.log(0.5)]], atol=1e-15)
    # with weights (10, 10, 5, 5) every component is multiplied by its weight
    np.testing.assert_allclose(
        encode_boxes(gt, anchor, (10, 10, 5, 5)), [[2.0, -1.0, 5 * math.log(2), 5 * math.log(0.5)]], atol=1e-14
    )


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_encode_decode_round_trip(weights):
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 100, size=(50, 2))
    anchors = np.concatenate([xy, xy + rng.uniform(1, 50, size=(50, 2))], axis=1)
    xy = rng.uniform(0, 100, size=(50, 2))
    gt = np.concatenate([xy, xy + rng.uniform(1, 50, size=(50, 2))], axis=1)
    np.testing.assert_allclose(decode_boxes(encode_boxes(gt, anchors, weights), anchors, weights), gt, atol=1e-10)


def test_decode_per_class_equals_decode_of_each_block():
    # (N, 4K) deltas: class k's deltas are columns 4k..4k+3 and its boxes come back in the same columns.
    rng = np.random.default_rng(1)
    boxes = np.array([[0.0, 0.0, 10.0, 20.0], [5.0, 5.0, 6.0, 9.0], [3.0, 4.0, 3.0, 8.0]])  # last one zero-width
    deltas = rng.normal(size=(3, 12))
    out = decode_boxes(deltas, boxes, (10, 10, 5, 5))
    assert out.shape == (3, 12)
    for k in range(3):
        block = slice(4 * k, 4 * k + 4)
        np.testing.assert_array_equal(out[:, block], decode_boxes(deltas[:, block], boxes, (10, 10, 5, 5)))


def test_zero_deltas_give_back_the_boxes():
    boxes = np.array([[1.0, 2.0, 5.0, 9.0]])
    np.testing.assert_allclose(decode_boxes(np.zeros((1, 4)), boxes), boxes)


def test_iou_hand_cases():
    a = np.array([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = np.array([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0], [2.0, 0.0, 4.0, 2.0]])
    # [0,0,2,2] vs [1,1,3,3]: intersection 1, union 4 + 4 - 1 = 7. Identical: 1. Apart: 0. Touching edge: 0.
    # [0,0,1,1] vs [0,0,2,2]: 1 / 4.
    expected = np.array([[1 / 7, 1.0, 0.0, 0.0], [0.0, 0.25, 0.0, 0.0]])
    np.testing.assert_allclose(box_iou(a, b), expected, atol=1e-15)


def test_iou_of_zero_area_boxes_is_zero_not_nan():
    point = np.array([[1.0, 1.0, 1.0, 1.0]])
    line = np.array([[0.0, 1.0, 3.0, 1.0]])
    iou = box_iou(np.concatenate([point, line]), np.concatenate([point, line]))
    np.testing.assert_array_equal(iou, np.zeros((2, 2)))


def test_area_clip_and_small_boxes():
    boxes = np.array([[-5.0, 2.0, 10.0, 30.0], [1.0, 1.0, 1.5, 4.0], [50.0, 50.0, 60.0, 60.0], [2.0, 2.0, 3.0, 3.0]])
    np.testing.assert_array_equal(box_area(boxes), [15 * 28, 1.5, 100, 1])
    clipped = clip_boxes(boxes, (20, 40))  # height 20, width 40
    np.testing.assert_array_equal(
        clipped, [[0, 2, 10, 20], [1, 1, 1.5, 4], [40, 20, 40, 20], [2, 2, 3, 3]]
    )
    assert clipped is not boxes and boxes[0, 0] == -5  # the input is not modified
    # kept when both sides >= min_size: box 1 (width 0.5) goes, box 3 (exactly 1 x 1) stays
    keep = remove_small_boxes(boxes, 1.0)
    assert keep.dtype == np.int64
    np.testing.assert_array_equal(keep, [0, 2, 3])
    np.testing.assert_array_equal(remove_small_boxes(clipped, 1e-3), [0, 1, 3])  # the flattened box 2 goes


def test_float32_stays_float32():
    boxes = np.array([[0, 0, 4, 4], [1, 1, 5, 6]], dtype=np.float32)
    assert box_iou(boxes, boxes).dtype == np.float32
    assert encode_boxes(boxes, boxes).dtype == np.float32
    assert decode_boxes(np.zeros((2, 4), np.float32), boxes).dtype == np.float32
    assert clip_boxes(boxes, (3, 3)).dtype == np.float32


# ---- empty inputs --------------------------------------------------------------------------------------------------

def test_empty_inputs_give_empty_outputs():
    empty = np.zeros((0, 4))
    some = np.array([[0.0, 0.0, 1.0, 1.0]] * 3)
    assert box_iou(empty, some).shape == (0, 3)
    assert box_iou(some, empty).shape == (3, 0)
    assert box_area(empty).shape == (0,)
    assert encode_boxes(empty, empty).shape == (0, 4)
    assert decode_boxes(np.zeros((0, 8)), empty).shape == (0, 8)
    assert clip_boxes(empty, (5, 5)).shape == (0, 4)
    assert remove_small_boxes(empty, 1.0).shape == (0,)


# ---- bad input -----------------------------------------------------------------------------------------------------

def test_check_boxes_accepts_degenerate_boxes():
    boxes = np.array([[1.0, 1.0, 1.0, 5.0], [0.0, 2.0, 3.0, 2.0]])
    assert check_boxes(boxes, "gt") is boxes


@pytest.mark.parametrize(
    "boxes, error, words",
    [
        (np.zeros((3, 5)), ValueError, ["gt", "(N, 4)"]),
        (np.zeros((4,)), ValueError, ["gt", "2 dimensions"]),
        (np.zeros((2, 4), dtype=np.int64), TypeError, ["gt", "float"]),
        ([[0.0, 0.0, 1.0, 1.0]], TypeError, ["gt", "NumPy array"]),
        (np.array([[0.0, 0.0, np.nan, 1.0]]), ValueError, ["gt", "NaN"]),
        (np.array([[0.0, 0.0, np.inf, 1.0]]), ValueError, ["gt", "infinity"]),
        (np.array([[0.0, 0.0, 1.0, 1.0], [5.0, 0.0, 4.0, 1.0]]), ValueError, ["gt", "inverted", "row 1"]),
        (np.array([[0.0, 3.0, 1.0, 2.0]]), ValueError, ["gt", "inverted", "row 0"]),
    ],
)
def test_check_boxes_refuses(boxes, error, words):
    with pytest.raises(error) as info:
        check_boxes(boxes, "gt")
    for word in words:
        assert word in str(info.value)


def test_functions_name_the_bad_argument():
    good = np.array([[0.0, 0.0, 1.0, 1.0]])
    bad = np.array([[2.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="^b has an inverted box"):
        box_iou(good, bad)
    with pytest.raises(ValueError, match="^proposals has an inverted box"):
        encode_boxes(good, bad)
    with pytest.raises(ValueError, match="proposals needs positive widths"):
        encode_boxes(good, np.array([[0.0, 0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError, match="deltas must have shape"):
        decode_boxes(np.zeros((1, 5)), good)
    with pytest.raises(ValueError, match="deltas contains NaN"):
        decode_boxes(np.full((1, 4), np.nan), good)
    with pytest.raises(ValueError, match="same number of rows"):
        decode_boxes(np.zeros((2, 4)), good)
    with pytest.raises(TypeError, match="share one dtype"):
        box_iou(good, good.astype(np.float32))
    with pytest.raises(TypeError, match="weights"):
        encode_boxes(good, good, (1.0, 1.0))
    with pytest.raises(TypeError, match="image_hw"):
        clip_boxes(good, (5.0, 5.0))
