"""COCO evaluation: AP@[.5:.95], AP50, AP75, AP and AR by object size, written from the definitions.

*Reference:* Lin et al., *Microsoft COCO: Common Objects in Context*, ECCV 2014, and the official evaluation code
(`pycocotools`' `COCOeval`). Mask R-CNN's tables (He et al., ICCV 2017, Tables 1-3) report these numbers, "AP" for
boxes (`iou_type="bbox"`) and for masks (`iou_type="segm"`, where the IoU is computed between masks).
`tests/test_coco_eval.py` checks every number against `COCOeval` on synthetic datasets.

How the numbers are defined, step by step
-----------------------------------------
1. **Matching, per image and per category.** Keep the image's `max_det = 100` best-scoring detections of the
   category (ties keep their input order: a stable sort). Visit them from the best score down; each takes the
   still-unmatched ground truth (gt) with which its IoU is largest, provided the IoU reaches the threshold `t`.
   A gt is matched at most once, so a duplicate detection of an object is a false positive. This is done for each
   of the ten IoU thresholds `t = .50, .55, ..., .95` separately.
2. **Ignored objects.** Some gt are *ignored*: they can be matched, but a detection matched to one counts neither
   as a true nor as a false positive, and they are not among the objects to be found. They are
   - **crowd regions** (`iscrowd=1`): one region for a group of objects too dense to outline one by one. Their IoU is
     `|d ∩ g| / |d|` (how much of the detection lies inside the crowd), and they may be matched by any number of
     detections, so that detecting people inside a crowd is not punished;
   - gt whose area lies **outside the area range** being evaluated: `small` is area in [0, 32²], `medium` in
     [32², 96²], `large` in [96², 1e5²] (bounds included, in pixels; the gt's `area` field is used). A detection
     that matches no gt and whose own area is outside the range is ignored too: it may well be a correct detection
     of an object of another size.
   A detection prefers a regular gt: it is matched to an ignored gt only when no regular gt reaches the threshold.
3. **The precision/recall curve, per category.** Pool the detections of all images, sort them by score (stable) and
   walk down the list: after the first `n` detections, `recall = TP / (number of non-ignored gt)` and
   `precision = TP / (TP + FP)`. Ignored detections are skipped.
4. **Interpolated AP.** Replace the precision at each point by the best precision at any recall at least as large
   (the *monotone envelope*, which removes the curve's zig-zags), then read it at the 101 recall levels
   `r = 0, .01, ..., 1` (at the first point whose recall reaches `r`; 0 if the curve never reaches it) and average.
   PASCAL VOC 2007 used 11 levels; COCO's 101 levels, both ends included, follow the area under the curve more
   closely. AR is the recall reached at the end of the list (with at most 1, 10 or 100 detections per image and
   category).
5. **Averages.** AP@[.5:.95], the headline "AP", averages this AP over the ten IoU thresholds and over the
   categories: it rewards precise localisation, where AP50 (the PASCAL metric) accepts any box with IoU >= .5. A
   category without any (non-ignored) gt in the range has no defined AP; it is stored as -1 and left out of the
   means, and a stat with nothing defined at all is -1.

Worked example (the test `test_false_positive_ranked_first` checks it): one gt, two detections; the first (score
.9) misses, the second (score .8) matches. After one detection, precision 0 and recall 0; after two, precision 1/2,
recall 1. The envelope gives precision 1/2 at every recall level, so AP = 1/2 at every threshold.

Where tinymask differs from pycocotools, deliberately
-----------------------------------------------------
- A segm detection's area is always its mask's area. pycocotools uses the box area when the results also carry a
  `bbox` (detectron2 removes the boxes for this reason before calling it); without `bbox`, both agree.
- A detection on an image or of a category not in the gt raises `ValueError` (pycocotools asserts on the first and
  silently drops the second); no detections at all gives AP 0 (pycocotools cannot load an empty result list).
- A gt without an `area` field gets its mask's area (segm) or its box's `w * h` (bbox); pycocotools requires it.
  A gt without `iscrowd` counts as not crowd.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from tinymask.evaluation.rle import box_iou_xywh, mask_iou, segmentation_to_mask

#: (T,) IoU thresholds .50:.05:.95, built as COCOeval builds them so that the floats are identical.
IOU_THRESHOLDS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1)
#: (R,) the 101 recall levels at which precision is read.
RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round(1.0 / 0.01)) + 1)
#: (M,) at most this many detections per image and category.
MAX_DETS = (1, 10, 100)
#: (A,) area ranges in pixels, bounds included: (label, low, high).
AREA_RANGES = (("all", 0.0, 1e5**2), ("small", 0.0, 32.0**2), ("medium", 32.0**2, 96.0**2), ("large", 96.0**2, 1e5**2))
#: Names of the 12 standard numbers, in COCO's order.
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
# Each stat as (is_ap, IoU-threshold index or None for all, area index, maxDets index).
_STAT_DEFS = ((1, None, 0, 2), (1, 0, 0, 2), (1, 5, 0, 2), (1, None, 1, 2), (1, None, 2, 2), (1, None, 3, 2),
              (0, None, 0, 0), (0, None, 0, 1), (0, None, 0, 2), (0, None, 1, 2), (0, None, 2, 2), (0, None, 3, 2))


@dataclass
class CocoEvalResult:
    """What `evaluate` returns. T = 10 IoU thresholds, R = 101 recall levels, K categories (sorted by id),
    A = 4 area ranges (all, small, medium, large), M = 3 maxDets (1, 10, 100). -1 marks undefined entries."""

    iou_type: str
    stats: np.ndarray  # (12,) in the order of STAT_NAMES
    per_class_ap: dict  # category id -> AP@[.5:.95] (area all, 100 detections); -1 if the category has no gt
    per_class_ap_by_name: dict  # category name -> the same
    category_ids: list  # (K,) the K axis of the arrays below
    category_names: list  # (K,)
    precision: np.ndarray  # (T, R, K, A, M) interpolated precision at each recall level
    recall: np.ndarray  # (T, K, A, M) recall reached with at most M detections per image
    scores: np.ndarray  # (T, R, K, A, M) detection score at which each precision was read
    iou_thresholds: np.ndarray = field(default_factory=lambda: IOU_THRESHOLDS.copy())  # (T,)
    recall_thresholds: np.ndarray = field(default_factory=lambda: RECALL_THRESHOLDS.copy())  # (R,)

    def summary(self) -> dict:
        """The 12 stats as a dict {"AP": ..., "AP50": ..., ...}."""
        return dict(zip(STAT_NAMES, (float(s) for s in self.stats)))


class _ImageEval(NamedTuple):
    """Matching result for one image, one category and one area range; D detections (best first), G gt."""

    scores: np.ndarray  # (D,)
    matched: np.ndarray  # (T, D) bool, matched to some gt at threshold t
    dt_ignore: np.ndarray  # (T, D) bool, counts neither as TP nor FP
    gt_ignore: np.ndarray  # (G,) bool


# ---------------------------------------------------------------------------------------------------------------
# The entry point
# ---------------------------------------------------------------------------------------------------------------

def evaluate(gt: dict, detections: list, iou_type: str = "bbox") -> CocoEvalResult:
    """Evaluate detections against a COCO-format ground truth, as `COCOeval` (evaluate, accumulate, summarize).

    gt:         a COCO instances json as a dict, with "images" (id; height and width for segm), "annotations"
                (id, image_id, category_id, bbox [x, y, w, h] or segmentation, area, iscrowd) and "categories"
                (id, name).
    detections: a list of result dicts {"image_id", "category_id", "score", and "bbox": [x, y, w, h] for bbox or
                "segmentation": RLE (or polygons) for segm}, as written to a COCO results json.
    iou_type:   "bbox" or "segm".
    """
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    images, cat_ids, cat_names = _read_images_and_categories(gt, iou_type)
    gt_groups = _group(gt["annotations"], images, cat_ids, "gt annotation", iou_type)
    dt_groups = _group(detections, images, cat_ids, "detection", iou_type)
    img_ids = sorted(images)

    evals = [[[] for _ in AREA_RANGES] for _ in cat_ids]  # [K][A] -> list of _ImageEval, images in sorted order
    for k, cat in enumerate(cat_ids):
        for img in img_ids:
            gts, dts = gt_groups.get((img, cat), []), dt_groups.get((img, cat), [])
            if not gts and not dts:
                continue  # nothing to evaluate here (COCOeval's `None`)
            ious, gt_area, gt_crowd, dt_area, dt_score = _prepare_image(gts, dts, images[img], iou_type)
            for a, (_, lo, hi) in enumerate(AREA_RANGES):
                evals[k][a].append(_evaluate_image(ious, gt_area, gt_crowd, dt_area, dt_score, lo, hi))

    precision, recall, scores = _accumulate(evals)
    stats = np.array([_summarize(precision, recall, *d) for d in _STAT_DEFS])  # (12,)
    per_class = [_mean_defined(precision[:, :, k, 0, -1]) for k in range(len(cat_ids))]  # (K,)
    return CocoEvalResult(
        iou_type=iou_type, stats=stats,
        per_class_ap=dict(zip(cat_ids, per_class)), per_class_ap_by_name=dict(zip(cat_names, per_class)),
        category_ids=list(cat_ids), category_names=list(cat_names),
        precision=precision, recall=recall, scores=scores,
    )


# ---------------------------------------------------------------------------------------------------------------
# Reading the inputs
# ---------------------------------------------------------------------------------------------------------------

def _read_images_and_categories(gt: dict, iou_type: str):
    """images: {id: (H, W) or None}; categories sorted by id, with their names."""
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise ValueError(f"gt must be a COCO instances dict with key {key!r}")
    images = {}
    for im in gt["images"]:
        if iou_type == "segm" and ("height" not in im or "width" not in im):
            raise ValueError(f"image {im.get('id')!r} needs 'height' and 'width' for segm evaluation")
        images[im["id"]] = (int(im["height"]), int(im["width"])) if "height" in im and "width" in im else None
    cats = {c["id"]: c.get("name", str(c["id"])) for c in gt["categories"]}
    if len(cats) != len(gt["categories"]):
        raise ValueError("gt has duplicate category ids")
    cat_ids = sorted(cats)
    return images, cat_ids, [cats[c] for c in cat_ids]


def _group(items: list, images: dict, cat_ids: list, what: str, iou_type: str) -> dict:
    """{(image_id, category_id): [item, ...]} keeping the input order; checks ids and the needed fields."""
    known_cats = set(cat_ids)
    needed = "bbox" if iou_type == "bbox" else "segmentation"
    groups: dict = {}
    for i, item in enumerate(items):
        img, cat = item.get("image_id"), item.get("category_id")
        if img not in images:
            raise ValueError(f"{what} {i} is on image_id {img!r}, which is not among the gt images")
        if cat not in known_cats:
            raise ValueError(f"{what} {i} has category_id {cat!r}, which is not among the gt categories {cat_ids}")
        if needed not in item:
            raise ValueError(f"{what} {i} has no {needed!r}, needed for iou_type={iou_type!r}")
        if what == "detection" and not np.isfinite(item.get("score", np.nan)):
            raise ValueError(f"detection {i} needs a finite 'score', got {item.get('score')!r}")
        groups.setdefault((img, cat), []).append(item)
    return groups


def _prepare_image(gts: list, dts: list, image_size, iou_type: str):
    """Everything the matching needs for one image and one category.

    Returns ious (D, G), gt_area (G,), gt_crowd (G,) bool, dt_area (D,), dt_score (D,), the detections sorted by
    score (stable) and cut to the best MAX_DETS[-1].
    """
    order = np.argsort([-d["score"] for d in dts], kind="stable")[: MAX_DETS[-1]]  # best first, ties in input order
    dts = [dts[i] for i in order]
    dt_score = np.array([d["score"] for d in dts], dtype=np.float64)  # (D,)
    gt_crowd = np.array([bool(g.get("iscrowd", 0)) for g in gts], dtype=bool)  # (G,)
    if iou_type == "bbox":
        gt_boxes = np.array([g["bbox"] for g in gts], dtype=np.float64).reshape(-1, 4)  # (G, 4) [x, y, w, h]
        dt_boxes = np.array([d["bbox"] for d in dts], dtype=np.float64).reshape(-1, 4)  # (D, 4)
        ious = box_iou_xywh(dt_boxes, gt_boxes, gt_crowd)  # (D, G)
        dt_area = dt_boxes[:, 2] * dt_boxes[:, 3]  # (D,)
        gt_fallback = gt_boxes[:, 2] * gt_boxes[:, 3]  # (G,)
    else:
        h, w = image_size
        gt_masks = np.array([segmentation_to_mask(g["segmentation"], h, w) for g in gts], dtype=bool).reshape(-1, h, w)
        dt_masks = np.array([segmentation_to_mask(d["segmentation"], h, w) for d in dts], dtype=bool).reshape(-1, h, w)
        ious = mask_iou(dt_masks, gt_masks, gt_crowd)  # (D, G)
        dt_area = dt_masks.sum(axis=(1, 2)).astype(np.float64)  # (D,)
        gt_fallback = gt_masks.sum(axis=(1, 2)).astype(np.float64)  # (G,)
    gt_area = np.array([g.get("area", f) for g, f in zip(gts, gt_fallback)], dtype=np.float64)  # (G,)
    return ious, gt_area, gt_crowd, dt_area, dt_score


# ---------------------------------------------------------------------------------------------------------------
# Step 1-2: matching one image
# ---------------------------------------------------------------------------------------------------------------

def _evaluate_image(ious, gt_area, gt_crowd, dt_area, dt_score, lo: float, hi: float) -> _ImageEval:
    """Match one image's detections of one category for one area range [lo, hi], at all IoU thresholds."""
    gt_ignore = gt_crowd | (gt_area < lo) | (gt_area > hi)  # (G,) crowd, or outside the area range
    order = np.argsort(gt_ignore, kind="stable")  # (G,) regular gt first, as COCOeval sorts them
    gt_ignore, gt_crowd, ious = gt_ignore[order], gt_crowd[order], ious[:, order]
    match = _greedy_match(ious, gt_ignore, gt_crowd)  # (T, D) gt index or -1
    matched = match >= 0  # (T, D)
    dt_ignore = np.zeros(match.shape, dtype=bool)  # (T, D)
    if gt_ignore.size:
        dt_ignore = matched & gt_ignore[np.maximum(match, 0)]  # matched to an ignored gt
    outside = (dt_area < lo) | (dt_area > hi)  # (D,)
    dt_ignore |= ~matched & outside[None, :]  # unmatched and of another size
    return _ImageEval(dt_score, matched, dt_ignore, gt_ignore)


def _greedy_match(ious: np.ndarray, gt_ignore: np.ndarray, gt_crowd: np.ndarray) -> np.ndarray:
    """Greedy matching, best detection first, at all T thresholds at once (one loop over detections).

    ious: (D, G) with rows best detection first and columns regular gt first. A detection takes, among the gt it
    may still take (unmatched, or crowd) whose IoU reaches the threshold, the one of largest IoU, looking at ignored
    gt only when no regular one qualifies; of equal IoUs the later gt wins (as COCOeval's `>=` update does).
    Returns (T, D) the matched gt's column, or -1.
    """
    n_dt, n_gt = ious.shape
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]  # (T, 1) COCOeval caps 1.0 just below 1
    match = np.full((IOU_THRESHOLDS.size, n_dt), -1, dtype=np.int64)  # (T, D)
    if n_gt == 0:
        return match
    taken = np.zeros((IOU_THRESHOLDS.size, n_gt), dtype=bool)  # (T, G)
    for d in range(n_dt):
        allowed = (~taken | gt_crowd) & (ious[d] >= thresholds)  # (T, G) a crowd can be matched many times
        regular = allowed & ~gt_ignore  # (T, G)
        pool = np.where(regular.any(axis=1, keepdims=True), regular, allowed)  # (T, G) ignored gt only as a fallback
        found = pool.any(axis=1)  # (T,)
        best = n_gt - 1 - np.argmax(np.where(pool, ious[d], -1.0)[:, ::-1], axis=1)  # (T,) last largest IoU
        match[found, d] = best[found]
        taken[found, best[found]] = True
    return match


# ---------------------------------------------------------------------------------------------------------------
# Steps 3-5: precision/recall curves and their averages
# ---------------------------------------------------------------------------------------------------------------

def _accumulate(evals):
    """Per category, area range and maxDets: the interpolated precision at the 101 recall levels, and the recall.

    Returns precision (T, R, K, A, M), recall (T, K, A, M), scores (T, R, K, A, M); -1 where undefined.
    """
    n_t, n_r, n_k, n_a, n_m = IOU_THRESHOLDS.size, RECALL_THRESHOLDS.size, len(evals), len(AREA_RANGES), len(MAX_DETS)
    precision = -np.ones((n_t, n_r, n_k, n_a, n_m))
    recall = -np.ones((n_t, n_k, n_a, n_m))
    scores = -np.ones((n_t, n_r, n_k, n_a, n_m))
    for k in range(n_k):
        for a in range(n_a):
            for m, max_det in enumerate(MAX_DETS):
                curve = _pr_curve(evals[k][a], max_det)
                if curve is not None:
                    precision[:, :, k, a, m], recall[:, k, a, m], scores[:, :, k, a, m] = curve
    return precision, recall, scores


def _pr_curve(per_image: list, max_det: int):
    """Pool the images' best `max_det` detections, sort by score, and read the curve. None if no regular gt."""
    if not per_image:
        return None
    n_gt = sum(int(np.count_nonzero(~e.gt_ignore)) for e in per_image)  # objects to find
    if n_gt == 0:
        return None
    score = np.concatenate([e.scores[:max_det] for e in per_image])  # (N,)
    order = np.argsort(-score, kind="mergesort")  # (N,) best first; ties keep image order
    matched = np.concatenate([e.matched[:, :max_det] for e in per_image], axis=1)[:, order]  # (T, N)
    ignored = np.concatenate([e.dt_ignore[:, :max_det] for e in per_image], axis=1)[:, order]  # (T, N)
    tp = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)  # (T, N) true positives among the first n
    fp = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)  # (T, N) false positives
    rc = tp / n_gt  # (T, N) recall
    pr = tp / (fp + tp + np.spacing(1))  # (T, N) precision (spacing(1) avoids 0/0 as COCOeval does)
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # monotone envelope: best precision at recall >= rc
    n = score.size
    recall = rc[:, -1] if n else np.zeros(IOU_THRESHOLDS.size)  # (T,)
    precision = np.zeros((IOU_THRESHOLDS.size, RECALL_THRESHOLDS.size))  # (T, R) 0 at levels never reached
    at_score = np.zeros_like(precision)
    for t in range(IOU_THRESHOLDS.size):
        idx = np.searchsorted(rc[t], RECALL_THRESHOLDS, side="left")  # (R,) first point reaching each level
        reached = idx < n
        precision[t, reached] = pr[t, idx[reached]]
        at_score[t, reached] = score[order][idx[reached]]
    return precision, recall, at_score


def _summarize(precision, recall, is_ap: int, t, a: int, m: int) -> float:
    """One of the 12 stats: the mean of the defined (> -1) entries over thresholds (or one), levels and categories."""
    s = precision[..., a, m] if is_ap else recall[..., a, m]  # (T, R, K) or (T, K)
    return _mean_defined(s if t is None else s[t])


def _mean_defined(s: np.ndarray) -> float:
    defined = s[s > -1]
    return float(np.mean(defined)) if defined.size else -1.0


# ---------------------------------------------------------------------------------------------------------------
# Printing
# ---------------------------------------------------------------------------------------------------------------

def format_table(result: CocoEvalResult, per_class: bool = True) -> str:
    """The 12 stats in COCOeval's familiar layout, then (optionally) the AP of every category. `print` it."""
    lines = []
    for value, (is_ap, t, a, m) in zip(result.stats, _STAT_DEFS):
        title = "Average Precision  (AP)" if is_ap else "Average Recall     (AR)"
        iou = f"{IOU_THRESHOLDS[0]:0.2f}:{IOU_THRESHOLDS[-1]:0.2f}" if t is None else f"{IOU_THRESHOLDS[t]:0.2f}"
        lines.append(f" {title} @[ IoU={iou:<9} | area={AREA_RANGES[a][0]:>6s} | maxDets={MAX_DETS[m]:>3d} ] = "
                     f"{value:0.3f}")
    if per_class:
        lines.append("")
        lines.append(f" {'category':<24} {'id':>5}  AP@[.5:.95]")
        for cat, name in zip(result.category_ids, result.category_names):
            lines.append(f" {name:<24} {cat!s:>5}  {result.per_class_ap[cat]:0.3f}")
    return "\n".join(lines)
