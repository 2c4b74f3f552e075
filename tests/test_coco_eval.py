"""Tests for tinymask/evaluation/coco_eval.py: hand-computed APs, edge cases and errors, and agreement with pycocotools' COCOeval
(every one of the 12 stats, the full precision and recall arrays) on synthetic datasets, for bbox and segm."""
import contextlib
import copy
import io

import numpy as np
import pytest

from tinymask.evaluation.coco_eval import (AREA_RANGES, evaluate, format_table, IOU_THRESHOLDS, MAX_DETS,
                                           RECALL_THRESHOLDS, STAT_NAMES)
from tinymask.evaluation.rle import polygons_to_mask, rle_area, rle_encode


# ---------------------------------------------------------------------------------------------------------------
# Small hand-made datasets
# ---------------------------------------------------------------------------------------------------------------

def box_polygon(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def tiny_gt(boxes_per_image, cats=((1, "cat"), (2, "dog")), size=(200, 200)):
    """boxes_per_image: {image_id: [(category_id, [x, y, w, h], iscrowd), ...]}; polygons are the boxes."""
    images = [{"id": i, "height": size[0], "width": size[1]} for i in boxes_per_image]
    anns = []
    for img, objs in boxes_per_image.items():
        for cat, (x, y, w, h), crowd in objs:
            anns.append({"id": len(anns) + 1, "image_id": img, "category_id": cat, "bbox": [x, y, w, h],
                         "area": float(w * h), "iscrowd": crowd, "segmentation": box_polygon(x, y, w, h)})
    return {"images": images, "annotations": anns, "categories": [{"id": c, "name": n} for c, n in cats]}


def det(img, cat, box, score, size=(200, 200)):
    """A detection carrying both a box and the box's mask, usable for bbox and segm evaluation."""
    x, y, w, h = box
    return {"image_id": img, "category_id": cat, "bbox": list(box), "score": score,
            "segmentation": rle_encode(polygons_to_mask(box_polygon(x, y, w, h), *size))}


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_perfect_detections(iou_type):
    gt = tiny_gt({1: [(1, [10, 10, 50, 40], 0), (2, [100, 100, 20, 20], 0)], 2: [(1, [5, 5, 120, 110], 0)]})
    dets = [det(a["image_id"], a["category_id"], a["bbox"], 0.9) for a in gt["annotations"]]
    r = evaluate(gt, dets, iou_type)
    s = r.summary()
    for name in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"):
        assert s[name] == pytest.approx(1.0, abs=1e-12), name
    assert r.per_class_ap == pytest.approx({1: 1.0, 2: 1.0})


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_false_positive_ranked_first(iou_type):
    # One gt; a miss (score .9) ranked above a hit (score .8).
    #   after 1 detection: TP=0, FP=1 -> precision 0,   recall 0
    #   after 2 detections: TP=1, FP=1 -> precision 1/2, recall 1
    # Envelope: precision at recall >= 0 is max(0, 1/2) = 1/2, so all 101 levels read 1/2 -> AP = 0.5 at every
    # IoU threshold. AR with 1 detection per image: only the miss is kept -> 0; with 10 or 100: 1.
    gt = tiny_gt({1: [(1, [10, 10, 50, 50], 0)]}, cats=((1, "a"),))
    dets = [det(1, 1, [120, 120, 50, 50], 0.9), det(1, 1, [10, 10, 50, 50], 0.8)]
    s = evaluate(gt, dets, iou_type).summary()
    assert s["AP"] == pytest.approx(0.5) and s["AP50"] == pytest.approx(0.5) and s["AP75"] == pytest.approx(0.5)
    assert s["AR1"] == 0.0 and s["AR10"] == 1.0 and s["AR100"] == 1.0
    assert s["APm"] == pytest.approx(0.5)  # area 2500 is medium
    assert s["APs"] == -1 and s["APl"] == -1  # no small or large gt: undefined


def test_101_point_interpolation_by_hand():
    # Two gt; detections ranked hit, miss, hit:
    #   n=1: P=1,   R=1/2     n=2: P=1/2, R=1/2     n=3: P=2/3, R=1
    # Envelope: [1, 2/3, 2/3]. Levels r = 0, .01, ..., .50 (51 of them) first reach recall at n=1 -> 1;
    # levels .51 ... 1 (50) first reach it at n=3 -> 2/3. AP = (51 * 1 + 50 * 2/3) / 101 = 0.834983...
    gt = tiny_gt({1: [(1, [10, 10, 40, 40], 0), (1, [100, 100, 40, 40], 0)]}, cats=((1, "a"),))
    dets = [det(1, 1, [10, 10, 40, 40], 0.9), det(1, 1, [150, 10, 40, 40], 0.8), det(1, 1, [100, 100, 40, 40], 0.7)]
    r = evaluate(gt, dets, "bbox")
    assert r.stats[0] == pytest.approx((51 + 50 * 2 / 3) / 101)
    np.testing.assert_allclose(r.precision[0, :, 0, 0, 2], np.where(RECALL_THRESHOLDS <= 0.5, 1.0, 2 / 3))


def test_no_detections_and_empty_category():
    gt = tiny_gt({1: [(1, [10, 10, 50, 50], 0)], 2: []}, cats=((1, "a"), (2, "never seen")))
    r = evaluate(gt, [], "bbox")
    assert r.stats[0] == 0.0 and r.stats[8] == 0.0  # AP and AR100: the only category with gt found nothing
    assert r.per_class_ap == {1: 0.0, 2: -1.0}
    assert r.per_class_ap_by_name == {"a": 0.0, "never seen": -1.0}
    assert (r.precision[:, :, 1] == -1).all() and (r.recall[:, 1] == -1).all()
    # the empty category stays out of the mean even when it has (necessarily false) detections
    dets = [det(1, 1, [10, 10, 50, 50], 0.9), det(2, 2, [0, 0, 30, 30], 0.8)]
    r = evaluate(gt, dets, "bbox")
    assert r.stats[0] == pytest.approx(1.0) and r.per_class_ap[2] == -1.0


def test_crowd_region_absorbs_detections():
    # A crowd region covering the right half of the image: detections inside it are ignored, not false positives,
    # and it may absorb any number of them (IoU for a crowd = |d ∩ g| / |d|, here 1).
    gt = tiny_gt({1: [(1, [10, 10, 40, 40], 0), (1, [100, 0, 100, 200], 1)]}, cats=((1, "a"),))
    hit = det(1, 1, [10, 10, 40, 40], 0.5)
    in_crowd = [det(1, 1, [110 + 10 * i, 20, 20, 20], 0.9) for i in range(5)]
    for iou_type in ("bbox", "segm"):
        assert evaluate(gt, in_crowd + [hit], iou_type).stats[0] == pytest.approx(1.0)
    # outside the crowd, the same detections are false positives ranked first: precision 1/6 at recall 1
    gt["annotations"][1]["iscrowd"] = 0
    gt["annotations"][1]["bbox"] = [0, 150, 10, 10]
    gt["annotations"][1]["segmentation"] = box_polygon(0, 150, 10, 10)
    r = evaluate(gt, in_crowd + [hit], "bbox")
    assert r.stats[1] == pytest.approx((51 * 1 / 6) / 101)  # AP50: recall 1/2 at precision 1/6, 1 never reached


def test_area_range_bounds_are_inclusive():
    # A 32 x 32 object (area exactly 32**2) is both small and medium, as in COCOeval; no large gt -> APl = -1.
    gt = tiny_gt({1: [(1, [10, 10, 32, 32], 0)]}, cats=((1, "a"),))
    s = evaluate(gt, [det(1, 1, [10, 10, 32, 32], 0.5)], "bbox").summary()
    assert s["APs"] == pytest.approx(1.0) and s["APm"] == pytest.approx(1.0) and s["APl"] == -1.0
    # An unmatched detection of large area does not hurt APs or APm (ignored there) but does hurt AP
    s = evaluate(gt, [det(1, 1, [100, 50, 99, 99], 0.9), det(1, 1, [10, 10, 32, 32], 0.5)], "bbox").summary()
    assert s["APs"] == pytest.approx(1.0) and s["APm"] == pytest.approx(1.0) and s["AP"] == pytest.approx(0.5)


def test_max_dets_keeps_best_scores_per_image():
    # 101 detections on one image: the hit has the lowest score and is cut by maxDets=100.
    gt = tiny_gt({1: [(1, [10, 10, 40, 40], 0)]}, cats=((1, "a"),))
    dets = [det(1, 1, [100, 100, 20, 20], 0.9)] * 100 + [det(1, 1, [10, 10, 40, 40], 0.1)]
    assert evaluate(gt, dets, "bbox").stats[8] == 0.0  # AR100
    assert evaluate(gt, dets[-2:], "bbox").stats[8] == 1.0


def test_errors():
    gt = tiny_gt({1: [(1, [10, 10, 50, 50], 0)]}, cats=((1, "a"),))
    with pytest.raises(ValueError, match="image_id 7"):
        evaluate(gt, [det(7, 1, [0, 0, 5, 5], 0.5)], "bbox")
    with pytest.raises(ValueError, match="category_id 9"):
        evaluate(gt, [det(1, 9, [0, 0, 5, 5], 0.5)], "bbox")
    with pytest.raises(ValueError, match="iou_type"):
        evaluate(gt, [], "keypoints")
    with pytest.raises(ValueError, match="'bbox'"):
        evaluate(gt, [{"image_id": 1, "category_id": 1, "score": 0.5}], "bbox")
    with pytest.raises(ValueError, match="score"):
        evaluate(gt, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 1, 1]}], "bbox")


def test_result_shapes_and_table():
    gt = tiny_gt({1: [(1, [10, 10, 50, 50], 0)]})
    r = evaluate(gt, [det(1, 1, [12, 10, 50, 50], 0.5)], "segm")
    T, R, K, A, M = IOU_THRESHOLDS.size, RECALL_THRESHOLDS.size, 2, len(AREA_RANGES), len(MAX_DETS)
    assert (T, R, K, A, M) == (10, 101, 2, 4, 3)
    assert r.precision.shape == (T, R, K, A, M) and r.scores.shape == (T, R, K, A, M)
    assert r.recall.shape == (T, K, A, M) and r.stats.shape == (12,)
    table = format_table(r)
    assert " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = " in table
    assert " Average Recall     (AR) @[ IoU=0.50:0.95 | area= small | maxDets=100 ] = " in table
    assert " Average Precision  (AP) @[ IoU=0.75      | area=   all | maxDets=100 ] = " in table
    assert "dog" in table and len(table.splitlines()) == 12 + 2 + K
    assert list(r.summary()) == list(STAT_NAMES)


# ---------------------------------------------------------------------------------------------------------------
# Synthetic datasets, checked against pycocotools
# ---------------------------------------------------------------------------------------------------------------

CATS = [{"id": 1, "name": "circle"}, {"id": 3, "name": "square"}, {"id": 4, "name": "blob"},
        {"id": 8, "name": "unlabelled"}]  # category 8 never has gt, only detections


def random_polygon(rng, x, y, w, h, n=10, min_radius=0.6):
    """A star-shaped polygon inside the box (x, y, w, h), as a flat list."""
    angle = np.sort(rng.uniform(0, 2 * np.pi, n))
    radius = rng.uniform(min_radius, 1.0, n)
    px = x + w / 2 + radius * np.cos(angle) * w / 2
    py = y + h / 2 + radius * np.sin(angle) * h / 2
    return np.stack([px, py], axis=1).ravel().round(2).tolist()


def random_size(rng, H, W):
    kind = rng.integers(3)  # small, medium, large
    lo, hi = [(3, 30), (33, 90), (115, min(H, W) - 2)][kind]
    return rng.uniform(lo, hi, 2)


def synthetic_dataset(seed, n_images=8):
    """A gt dict and matching detections exercising crowds, empty images and categories, ties, >100 detections."""
    rng = np.random.default_rng(seed)
    img_ids = [int(i) for i in rng.permutation(np.arange(1, 40))[:n_images]]  # unsorted, non-contiguous
    images, anns, dets = [], [], []
    for n, img in enumerate(img_ids):
        H, W = int(rng.integers(125, 160)), int(rng.integers(125, 180))
        images.append({"id": img, "height": H, "width": W})
        n_obj = 0 if n in (1, 4) else int(rng.integers(1, 7))  # images 1 and 4 have no gt
        for _ in range(n_obj):
            cat = int(rng.choice([1, 3, 4]))
            w, h = random_size(rng, H, W)
            x, y = rng.uniform(0, W - w), rng.uniform(0, H - h)
            polys = [random_polygon(rng, x, y, w, h, min_radius=0.6 if w * h < 96**2 else 0.95)]
            if rng.random() < 0.2:  # a second part
                polys.append(random_polygon(rng, x, y, w / 3, h / 3, n=5))
            mask = polygons_to_mask(polys, H, W)
            segm = polys if rng.random() < 0.7 else rle_encode(mask)  # polygons or compressed RLE
            anns.append({"image_id": img, "category_id": cat, "iscrowd": 0, "segmentation": segm,
                         "area": float(mask.sum()), "bbox": [float(x), float(y), float(w), float(h)]})
            add_detections(rng, dets, img, cat, x, y, w, h, H, W, outline=polys[0])
        if n % 3 == 2:  # a crowd region, as COCO stores them: uncompressed RLE
            x, y, w, h = rng.uniform(0, W / 2), rng.uniform(0, H / 2), W / 2, H / 2
            mask = polygons_to_mask(box_polygon(x, y, w, h), H, W)
            counts = [int(c) for c in np.diff(np.flatnonzero(np.diff(np.r_[-1, mask.T.ravel(), -1]) != 0))]
            counts = [0] + counts if mask[0, 0] else counts
            anns.append({"image_id": img, "category_id": 1, "iscrowd": 1, "area": float(mask.sum()),
                         "segmentation": {"size": [H, W], "counts": counts}, "bbox": [x, y, w, h]})
            for _ in range(3):  # detections inside the crowd
                add_detections(rng, dets, img, 1, x + w / 4, y + h / 4, w / 4, h / 4, H, W, p_hit=1.0)
        for _ in range(int(rng.integers(0, 4))):  # false positives, some of the gt-less category 8
            w, h = random_size(rng, H, W)
            add_detections(rng, dets, img, int(rng.choice([1, 3, 4, 8])), rng.uniform(0, W - w),
                           rng.uniform(0, H - h), w, h, H, W, p_hit=1.0)
        if n == 0:  # more than 100 detections of one category on one image
            for _ in range(130):
                w, h = rng.uniform(3, 40, 2)
                add_detections(rng, dets, img, 3, rng.uniform(0, W - w), rng.uniform(0, H - h), w, h, H, W, p_hit=1.0)
    for i, a in enumerate(anns):
        a["id"] = i + 1
    return {"images": images, "annotations": anns, "categories": CATS}, dets


def add_detections(rng, dets, img, cat, x, y, w, h, H, W, p_hit=0.8, outline=None):
    """0-2 jittered copies of a box (and of the object's outline, if given, else a random shape in the box);
    scores rounded to 0.1 so that ties are common."""
    for _ in range(int(rng.integers(0, 3)) if p_hit < 1 else 1):
        jx, jy = rng.normal(0, 0.1 * w), rng.normal(0, 0.1 * h)
        sx, sy = rng.uniform(0.8, 1.2, 2)
        bw, bh = w * sx, h * sy
        bx, by = float(np.clip(x + jx, 0, W - 1)), float(np.clip(y + jy, 0, H - 1))
        bw, bh = float(min(bw, W - bx)), float(min(bh, H - by))
        if outline is None:
            poly = random_polygon(rng, bx, by, bw, bh)
        else:  # the object's outline, moved and stretched like the box
            xy = np.reshape(outline, (-1, 2))
            poly = ((xy - [x, y]) * [sx, sy] + [bx, by]).ravel().tolist()
        mask = polygons_to_mask([poly], H, W)
        dets.append({"image_id": img, "category_id": cat, "score": float(np.round(rng.uniform(0.05, 1.0), 1)),
                     "bbox": [bx, by, bw, bh], "segmentation": rle_encode(mask)})


def run_cocoeval(gt, dets, iou_type):
    """pycocotools' COCOeval on in-memory dicts; segm results go without "bbox" so that it uses the mask area."""
    coco_mod = pytest.importorskip("pycocotools.coco")
    cocoeval_mod = pytest.importorskip("pycocotools.cocoeval")
    dets = copy.deepcopy(dets)
    for d in dets:
        d.pop("segmentation" if iou_type == "bbox" else "bbox")
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = coco_mod.COCO()
        coco_gt.dataset = copy.deepcopy(gt)
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        e = cocoeval_mod.COCOeval(coco_gt, coco_dt, iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_pycocotools(seed, iou_type):
    gt, dets = synthetic_dataset(seed)
    ours = evaluate(gt, dets, iou_type)
    ref = run_cocoeval(gt, dets, iou_type)
    np.testing.assert_allclose(ours.stats, ref.stats, atol=1e-4, rtol=0)
    np.testing.assert_allclose(ours.stats, ref.stats, atol=1e-12, rtol=0)  # in fact identical
    np.testing.assert_allclose(ours.precision, ref.eval["precision"], atol=1e-12, rtol=0)
    np.testing.assert_allclose(ours.recall, ref.eval["recall"], atol=1e-12, rtol=0)
    np.testing.assert_allclose(ours.scores, ref.eval["scores"], atol=1e-12, rtol=0)
    assert ours.per_class_ap[8] == -1  # the category without gt
    for k, cat in enumerate(ours.category_ids):
        p = ref.eval["precision"][:, :, k, 0, -1]
        assert ours.per_class_ap[cat] == pytest.approx(np.mean(p[p > -1]) if (p > -1).any() else -1, abs=1e-12)


def test_synthetic_dataset_covers_the_cases():
    """The datasets above really contain what the cross-check is meant to exercise."""
    gt, dets = synthetic_dataset(0)
    img_with_gt = {a["image_id"] for a in gt["annotations"]}
    assert len(img_with_gt) < len(gt["images"])  # images without gt
    assert any(a["iscrowd"] for a in gt["annotations"])
    assert any(isinstance(a["segmentation"], dict) for a in gt["annotations"] if not a["iscrowd"])  # RLE gt
    assert any(isinstance(a["segmentation"], list) for a in gt["annotations"])  # polygon gt
    areas = np.array([a["area"] for a in gt["annotations"]])
    assert (areas < 32**2).any() and ((areas > 32**2) & (areas < 96**2)).any() and (areas > 96**2).any()
    per_image_cat = {}
    for d in dets:
        per_image_cat[d["image_id"], d["category_id"]] = per_image_cat.get((d["image_id"], d["category_id"]), 0) + 1
    assert max(per_image_cat.values()) > 100
    assert len({d["score"] for d in dets}) < len(dets) // 5  # many ties
    assert any(d["category_id"] == 8 for d in dets)
    assert {d["image_id"] for d in dets} - img_with_gt  # detections on images without gt
    assert all(rle_area(d["segmentation"]) > 0 for d in dets)
