"""Tests for tinymask/evaluation/rle.py: golden hand examples, round trips, errors, and equality with pycocotools' mask API."""
import numpy as np
import pytest

from tinymask.evaluation.rle import (box_iou_xywh, counts_to_string, mask_iou, polygons_to_mask, rle_area, rle_counts,
                                     rle_decode, rle_encode, rle_to_bbox, segmentation_to_mask, segmentation_to_rle,
                                     string_to_counts)

# pycocotools' decode trips a NumPy 2 deprecation of its own; it is not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# ---------------------------------------------------------------------------------------------------------------
# Golden examples, checkable by hand
# ---------------------------------------------------------------------------------------------------------------

def test_golden_3x3():
    mask = np.array([[0, 1, 0],
                     [1, 1, 0],
                     [0, 0, 1]], dtype=bool)
    # column-major: 0 1 0 | 1 1 0 | 0 0 1 -> runs: one 0, one 1, one 0, two 1s, three 0s, one 1
    np.testing.assert_array_equal(rle_counts({"size": [3, 3], "counts": [1, 1, 1, 2, 3, 1]}), [1, 1, 1, 2, 3, 1])
    # coded numbers: 1, 1, 1, then deltas from two back: 2-1=1, 3-1=2, 1-2=-1 -> '1','1','1','1','2', and -1 is the
    # single 5-bit group 11111 (sign bit set, nothing more) -> chr(31 + 48) = 'O'
    rle = rle_encode(mask)
    assert rle == {"size": [3, 3], "counts": "11112O"}
    np.testing.assert_array_equal(rle_decode(rle), mask)
    assert rle_area(rle) == 4  # the runs of ones: 1 + 2 + 1
    np.testing.assert_array_equal(rle_to_bbox(rle), [0, 0, 3, 3])


def test_golden_single_pixel_and_long_run():
    # A 4 x 3 mask with one pixel at row 2, column 1: flat column-major index 1 * 4 + 2 = 6 -> counts [6, 1, 5].
    mask = np.zeros((4, 3), dtype=bool)
    mask[2, 1] = True
    assert rle_encode(mask)["counts"] == "615"
    np.testing.assert_array_equal(rle_to_bbox(rle_encode(mask)), [1, 2, 1, 1])  # x=1, y=2, w=1, h=1
    # A run of 40 needs two characters: 40 = 0b1_01000 -> low group 01000 (8) with "more" 0x20 -> chr(8+32+48) 'X',
    # then the group 00001 -> '1'.
    assert counts_to_string([40]) == "X1"
    assert rle_encode(np.zeros((5, 8), dtype=bool))["counts"] == "X1"
    # A mask starting with a 1 starts with a zero-length run of zeros.
    assert rle_counts(rle_encode(np.ones((2, 2), dtype=bool))).tolist() == [0, 4]


def test_string_coding_round_trip_with_large_and_negative_deltas(rng):
    for _ in range(50):
        counts = rng.integers(0, 10 ** rng.integers(1, 7), size=rng.integers(1, 30)).tolist()
        assert string_to_counts(counts_to_string(counts)) == counts
    assert string_to_counts(b"11112O") == [1, 1, 1, 2, 3, 1]  # bytes, as pycocotools returns


# ---------------------------------------------------------------------------------------------------------------
# Round trips and other forms
# ---------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(1, 1), (1, 17), (17, 1), (3, 3), (7, 5), (64, 48), (0, 5)])
def test_round_trip(rng, shape):
    masks = [np.zeros(shape, bool), np.ones(shape, bool)] + [rng.random(shape) < p for p in (0.05, 0.5, 0.95)]
    for mask in masks:
        rle = rle_encode(mask)
        assert isinstance(rle["counts"], str) and rle["size"] == list(shape)
        out = rle_decode(rle)
        assert out.shape == shape and out.dtype == bool
        np.testing.assert_array_equal(out, mask)
        assert rle_area(rle) == mask.sum()
        # the other two forms of counts decode to the same mask
        np.testing.assert_array_equal(rle_decode({"size": rle["size"], "counts": rle["counts"].encode()}), mask)
        uncompressed = {"size": rle["size"], "counts": rle_counts(rle).tolist()}
        np.testing.assert_array_equal(rle_decode(uncompressed), mask)
        assert segmentation_to_rle(uncompressed, *shape) == rle


def test_bbox_matches_the_decoded_mask(rng):
    for _ in range(100):
        h, w = rng.integers(1, 12, size=2)
        mask = rng.random((h, w)) < rng.choice([0.02, 0.1, 0.5])
        rows, cols = np.nonzero(mask)
        expected = [0, 0, 0, 0] if rows.size == 0 else \
            [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
        np.testing.assert_array_equal(rle_to_bbox(rle_encode(mask)), expected)


def test_bad_inputs():
    with pytest.raises(ValueError, match="add up to"):
        rle_decode({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(ValueError, match="ends in the middle"):
        string_to_counts("X")  # 'X' says "more follows"
    with pytest.raises(ValueError, match="at least 3"):
        polygons_to_mask([[0, 0, 5, 5]], 10, 10)
    with pytest.raises(ValueError, match="odd number"):
        polygons_to_mask([[0, 0, 5, 5, 1]], 10, 10)
    with pytest.raises(ValueError, match="does not match"):
        segmentation_to_rle(rle_encode(np.zeros((3, 4), bool)), 4, 3)
    with pytest.raises(TypeError, match="dict"):
        rle_decode([1, 2, 3])


# ---------------------------------------------------------------------------------------------------------------
# Polygons and IoU without pycocotools
# ---------------------------------------------------------------------------------------------------------------

def test_polygon_hand_cases():
    # A 2 x 2 square from (0, 0) to (2, 2) covers the four pixels whose centres are inside it.
    expected = np.zeros((4, 4), bool)
    expected[:2, :2] = True
    np.testing.assert_array_equal(polygons_to_mask([[0, 0, 2, 0, 2, 2, 0, 2]], 4, 4), expected)
    # The vertex order (clockwise or not) does not matter; a flat polygon is accepted as one polygon.
    np.testing.assert_array_equal(polygons_to_mask([0, 0, 0, 2, 2, 2, 2, 0], 4, 4), expected)
    # Two parts are merged by union; a part outside the image is clipped away.
    two = polygons_to_mask([[0, 0, 2, 0, 2, 2, 0, 2], [3, 3, 9, 3, 9, 9, 3, 9]], 4, 4)
    expected[3, 3] = True
    np.testing.assert_array_equal(two, expected)
    # A right triangle with legs of 4: pixel centres (j+.5, i+.5) with j + i + 1 < 4 are inside.
    tri = polygons_to_mask([[0, 0, 4, 0, 0, 4]], 4, 4)
    i, j = np.mgrid[:4, :4]
    np.testing.assert_array_equal(tri, i + j + 1 < 4)
    np.testing.assert_array_equal(segmentation_to_mask([[0, 0, 4, 0, 0, 4]], 4, 4), tri)


def test_mask_iou_brute_force(rng):
    h, w = 9, 7
    dt = rng.random((5, h, w)) < 0.4
    gt = rng.random((4, h, w)) < 0.4
    gt[3] = False  # an empty gt
    crowd = np.array([0, 1, 0, 1], bool)
    expected = np.zeros((5, 4))
    for d in range(5):
        for g in range(4):
            inter = (dt[d] & gt[g]).sum()
            union = dt[d].sum() if crowd[g] else (dt[d] | gt[g]).sum()
            expected[d, g] = inter / union if inter else 0.0
    np.testing.assert_array_equal(mask_iou(dt, gt, crowd), expected)
    # RLE lists give the same
    as_rles = mask_iou([rle_encode(m) for m in dt], [rle_encode(m) for m in gt], crowd)
    np.testing.assert_array_equal(as_rles, expected)
    assert mask_iou(dt, gt[:0], []).shape == (5, 0)


def test_box_iou_xywh_hand():
    dt = [[0, 0, 10, 10]]
    gt = [[5, 0, 10, 10], [0, 0, 100, 100], [20, 20, 5, 5]]
    # [5,0,10,10]: inter 5*10 = 50, union 100+100-50 = 150 -> 1/3.
    # [0,0,100,100] as a crowd: inter 100 / area(dt) 100 = 1 (as a normal gt it would be 0.01). Disjoint: 0.
    np.testing.assert_allclose(box_iou_xywh(dt, gt, [0, 1, 0]), [[1 / 3, 1.0, 0.0]])
    np.testing.assert_allclose(box_iou_xywh(dt, gt, [0, 0, 0]), [[1 / 3, 0.01, 0.0]])


# ---------------------------------------------------------------------------------------------------------------
# Equality with pycocotools (skipped when it is not installed)
# ---------------------------------------------------------------------------------------------------------------

@pytest.fixture
def cocomask():
    return pytest.importorskip("pycocotools.mask")


def random_masks(rng, n=60):
    for _ in range(n):
        h, w = rng.integers(1, 40, size=2)
        yield rng.random((h, w)) < rng.choice([0.0, 0.03, 0.3, 0.7, 1.0])


def test_encode_decode_area_bbox_match_pycocotools(rng, cocomask):
    for mask in random_masks(rng):
        ref = cocomask.encode(np.asfortranarray(mask.astype(np.uint8)))
        ours = rle_encode(mask)
        assert ours["counts"] == ref["counts"].decode() and ours["size"] == list(ref["size"])
        np.testing.assert_array_equal(rle_decode(ref), cocomask.decode(ref))  # ours decodes theirs
        np.testing.assert_array_equal(cocomask.decode({"size": ours["size"], "counts": ours["counts"].encode()}),
                                      mask)  # theirs decodes ours
        assert rle_area(ours) == cocomask.area(ref)
        np.testing.assert_array_equal(rle_to_bbox(ours), cocomask.toBbox(ref))


def test_uncompressed_rle_matches_pycocotools(rng, cocomask):
    for mask in random_masks(rng, 20):
        h, w = mask.shape
        uncompressed = {"size": [h, w], "counts": rle_counts(rle_encode(mask)).tolist()}
        ref = cocomask.frPyObjects(uncompressed, h, w)
        assert segmentation_to_rle(uncompressed, h, w)["counts"] == ref["counts"].decode()


def polygon_cases(rng):
    """Polygons that stress the rasteriser: random, concave, self-intersecting, partly outside, negative and
    half-pixel coordinates, repeated vertices, axis-aligned edges, slivers, tiny and huge."""
    for _ in range(300):
        k = int(rng.integers(3, 12))
        yield rng.uniform(-5, 45, 2 * k)  # random, usually self-intersecting, often partly outside
    for _ in range(100):
        k = int(rng.integers(3, 8))
        yield np.round(rng.uniform(-2, 42, 2 * k) * 2) / 2  # on the half-pixel grid: ties everywhere
    for _ in range(100):
        k = int(rng.integers(3, 8))
        yield np.round(rng.uniform(0, 40, 2 * k), 1)
    for _ in range(50):
        xy = rng.uniform(0, 40, (int(rng.integers(3, 7)), 2))
        yield np.repeat(xy, rng.integers(1, 3, len(xy)), axis=0).ravel()  # repeated vertices
    yield [5, 5, 30, 5, 30, 30, 5, 30]  # axis-aligned square
    yield [10.5, 0.5, 10.5, 20.5, 30.5, 20.5]  # edges on pixel centres
    yield [0, 0, 40, 0.2, 0, 0.4]  # a sliver
    yield [3.1, 3.1, 3.3, 3.1, 3.2, 3.3]  # smaller than a pixel
    yield [-100, -100, 500, -90, 200, 400]  # far larger than the image
    yield [12, 12, 12, 12, 12, 12]  # all three points equal


def test_polygons_match_pycocotools_exactly(rng, cocomask):
    n = 0
    for poly in polygon_cases(rng):
        poly = [float(v) for v in poly]
        h, w = (int(v) for v in rng.integers(1, 45, size=2))
        ref = cocomask.decode(cocomask.merge(cocomask.frPyObjects([poly], h, w)))
        np.testing.assert_array_equal(polygons_to_mask([poly], h, w), ref.astype(bool), err_msg=str((poly, h, w)))
        n += 1
    assert n > 500


def test_multi_part_polygons_match_pycocotools(rng, cocomask):
    for _ in range(30):
        parts = [rng.uniform(0, 30, 2 * int(rng.integers(3, 8))).tolist() for _ in range(int(rng.integers(2, 4)))]
        ref = cocomask.decode(cocomask.merge(cocomask.frPyObjects(parts, 25, 35)))
        np.testing.assert_array_equal(polygons_to_mask(parts, 25, 35), ref.astype(bool))
        assert segmentation_to_rle(parts, 25, 35)["counts"] == cocomask.encode(ref)["counts"].decode()


def test_iou_matches_pycocotools(rng, cocomask):
    for _ in range(10):
        h, w = (int(v) for v in rng.integers(5, 30, size=2))
        dt = rng.random((int(rng.integers(1, 6)), h, w)) < rng.uniform(0.1, 0.6)
        gt = rng.random((int(rng.integers(1, 6)), h, w)) < rng.uniform(0.1, 0.6)
        crowd = rng.random(len(gt)) < 0.5
        dt_rles = [cocomask.encode(np.asfortranarray(m.astype(np.uint8))) for m in dt]
        gt_rles = [cocomask.encode(np.asfortranarray(m.astype(np.uint8))) for m in gt]
        ref = cocomask.iou(dt_rles, gt_rles, crowd.astype(np.uint8).tolist())
        np.testing.assert_array_equal(mask_iou(dt, gt, crowd), ref)
        np.testing.assert_array_equal(mask_iou(dt_rles, gt_rles, crowd), ref)
        # boxes, with some that touch and some of zero size
        dt_boxes = np.round(rng.uniform(0, 20, (6, 4)), 1)
        gt_boxes = np.round(rng.uniform(0, 20, (4, 4)), 1)
        dt_boxes[0, 2] = 0.0
        gt_boxes[0] = [dt_boxes[1, 0] + dt_boxes[1, 2], dt_boxes[1, 1], 3.0, 3.0]  # touching dt 1 on the right
        crowd = rng.random(4) < 0.5
        ref = cocomask.iou(dt_boxes.tolist(), gt_boxes.tolist(), crowd.astype(np.uint8).tolist())
        np.testing.assert_array_equal(box_iou_xywh(dt_boxes, gt_boxes, crowd), ref)
