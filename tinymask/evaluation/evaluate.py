"""Evaluate a model on a data set with COCO's box and mask AP.

*Paper:* He et al., *Mask R-CNN*, ICCV 2017, §4: results are "COCO metrics including AP (averaged over IoU
thresholds), AP50, AP75, and APS, APM, APL", for boxes (Table 3, "AP^bb") and for masks (Tables 1-2).
· *Code:* `tinymask/evaluation/evaluate.py` (this plumbing), `tinymask/evaluation/coco_eval.py` (the metric itself) ·
*Test:* `tests/test_evaluate.py`

    report = evaluate_model(params, cfg, ShapesDataset("val", 100), out_path="eval.json")
    print(report["table"])
    report["segm"].summary()["AP"]          # mask AP@[.5:.95]

Three steps:

1. **Predict** every image of the data set (§3.1 "Inference"), a few images per call to `model.predict`.
2. **Convert to COCO results**, one entry per detected instance (https://cocodataset.org/#format-results):
   `{"image_id", "category_id", "bbox": [x, y, w, h], "score", "segmentation": compressed RLE}`. The box
   `(x0, y0, x1, y1)` becomes `[x0, y0, x1 − x0, y1 − y0]` (continuous coordinates: no "+1"); the network's
   contiguous label k becomes the data set's category id `dataset.label_to_category_id[k]` (a model whose config
   has `category_ids` must agree with it: `check_category_ids`; `tinymask predict --data` writes the same ids from
   the checkpoint alone); the binary mask
   (H, W) becomes a compressed RLE string (`rle.rle_encode`).
3. **Evaluate** these results twice against `dataset.to_coco_gt()`: `iou_type="bbox"` (box IoU) and
   `iou_type="segm"` (mask IoU), with `coco_eval.evaluate`.
"""
from __future__ import annotations

import time

from tinymask._files import write_json
from tinymask.evaluation.coco_eval import STAT_NAMES, evaluate, format_table
from tinymask.evaluation.predict import detections_to_coco_results
from tinymask.model import predict


def dataset_category_ids(dataset) -> list | None:
    """The category id of each label 1..K-1 of a data set (`CocoDataset.label_to_category_id`), or None for one
    whose labels are its category ids (the shapes data set): what `tinymask train` stores as `cfg.category_ids`."""
    mapping = getattr(dataset, "label_to_category_id", None)
    return None if mapping is None else [mapping[k] for k in sorted(mapping)]


def check_category_ids(cfg, dataset, what: str = "the data set") -> None:
    """ValueError when the model's labels stand for other category ids (`cfg.category_ids`) than `dataset`'s: its
    detections would be scored against the wrong categories. Nothing to check when either side has none."""
    ids, model_ids = dataset_category_ids(dataset), getattr(cfg, "category_ids", None)
    if model_ids is not None and ids is not None and [int(i) for i in model_ids] != ids:
        raise ValueError(f"the model's labels 1..{len(model_ids)} stand for category ids {list(model_ids)}, but "
                         f"{what}'s labels for {ids}: it was trained on other categories")


def predict_dataset(params, cfg, dataset, batch_size: int = 4, progress=None) -> list[dict]:
    """COCO results for every image of `dataset`, predicting `batch_size` images per call.

    progress: optional callable `progress(done, total)` called after each batch (the training loop's bar uses it).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    check_category_ids(cfg, dataset)
    mapping = getattr(dataset, "label_to_category_id", None)
    results = []
    for start in range(0, len(dataset), batch_size):
        samples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        outputs = predict(params, cfg, [s["image"] for s in samples])
        for sample, out in zip(samples, outputs):
            results.extend(detections_to_coco_results(out, sample["image_id"], mapping))
        if progress is not None:
            progress(start + len(samples), len(dataset))
    return results


def evaluate_model(params, cfg, dataset, batch_size: int = 4, out_path=None, gt: dict | None = None,
                   progress=None, extra: dict | None = None) -> dict:
    """Predict `dataset` and score the predictions with COCO box and mask AP.

    gt:       the ground truth (`dataset.to_coco_gt()`), if the caller already has it (the training loop keeps it,
              since generating it again at every evaluation would cost time).
    out_path: if given, `eval.json` is written there (atomically); see `report_json`.
    extra:    more entries for eval.json (the training loop adds the iteration).
    Returns {"bbox": CocoEvalResult, "segm": CocoEvalResult, "table": str, "results": [COCO result dicts],
    "num_images": int, "seconds": float}.
    """
    start = time.perf_counter()
    if gt is None:
        gt = dataset.to_coco_gt()
    results = predict_dataset(params, cfg, dataset, batch_size, progress)
    box = evaluate(gt, results, iou_type="bbox")
    mask = evaluate(gt, results, iou_type="segm")
    table = "\n".join(["bbox (box AP)", format_table(box), "", "segm (mask AP)", format_table(mask)])
    report = {"bbox": box, "segm": mask, "table": table, "results": results, "num_images": len(dataset),
              "seconds": time.perf_counter() - start}
    if out_path is not None:
        write_json(out_path, report_json(report, extra))
    return report


def report_json(report: dict, extra: dict | None = None) -> dict:
    """The JSON form of a report (what eval.json holds): the 12 stats and per-class AP of both iou types."""
    out = dict(extra or {})
    out["num_images"] = report["num_images"]
    out["num_detections"] = len(report["results"])
    out["seconds"] = round(report["seconds"], 3)
    for key in ("bbox", "segm"):
        r = report[key]
        out[key] = dict(zip(STAT_NAMES, (float(s) for s in r.stats)))
        out[key]["per_class_AP"] = {str(name): float(r.per_class_ap[cid])
                                    for cid, name in zip(r.category_ids, r.category_names)}
    return out


def short_summary(report: dict) -> str:
    """One line: box and mask AP, AP50, AP75."""
    b, m = report["bbox"].summary(), report["segm"].summary()
    return (f"box AP {b['AP']:.3f} AP50 {b['AP50']:.3f} AP75 {b['AP75']:.3f} | "
            f"mask AP {m['AP']:.3f} AP50 {m['AP50']:.3f} AP75 {m['AP75']:.3f}")


