"""evaluate.py: predictions -> COCO results -> box and mask AP (well-formed numbers, not the model's accuracy)."""
import json

import numpy as np
import pytest

import tinymask.evaluation.evaluate as E
from tinymask.config import MaskRCNNConfig
from tinymask.data.shapes import ShapesDataset
from tinymask.model import init_params
from tinymask.evaluation.rle import rle_decode
from tiny import tiny_shapes_config
from tinymask.evaluation.predict import detections_to_coco_results

def tiny_config(**overrides) -> MaskRCNNConfig:
    """tests/tiny.py's model with the shapes data set's four classes."""
    return tiny_shapes_config(**overrides)


def test_coco_results_by_hand():
    mask = np.zeros((6, 8), np.uint8)
    mask[2:5, 1:4] = 1
    result = {"boxes": np.array([[1.0, 2.0, 4.0, 5.0]], np.float32), "scores": np.array([0.75], np.float32),
              "labels": np.array([2]), "masks": mask[None]}
    (entry,) = detections_to_coco_results(result, image_id=7, label_to_category_id={1: 10, 2: 42})
    assert entry["image_id"] == 7 and entry["category_id"] == 42  # label 2 -> category id 42
    assert entry["bbox"] == [1.0, 2.0, 3.0, 3.0]  # (x0, y0, x1, y1) -> [x, y, w, h]
    assert entry["score"] == 0.75
    assert entry["segmentation"]["size"] == [6, 8] and isinstance(entry["segmentation"]["counts"], str)
    np.testing.assert_array_equal(rle_decode(entry["segmentation"]), mask)
    json.dumps(entry)  # plain Python numbers
    assert detections_to_coco_results(result, 7)[0]["category_id"] == 2  # no mapping: the label itself


def test_perfect_predictions_score_one(monkeypatch):
    """The ground truth fed back as detections must score AP 1 for boxes and masks: checks the whole conversion."""
    dataset = ShapesDataset("val", 5, image_size=64)

    def oracle(params, cfg, images):
        out = []
        for image in images:
            sample = next(s for s in (dataset[i] for i in range(len(dataset))) if np.array_equal(s["image"], image))
            out.append({"boxes": sample["boxes"], "scores": np.linspace(0.9, 0.5, len(sample["labels"])),
                        "labels": sample["labels"], "masks": sample["masks"]})
        return out
    monkeypatch.setattr(E, "predict", oracle)
    report = E.evaluate_model(None, None, dataset, batch_size=2)
    assert report["bbox"].summary()["AP"] == pytest.approx(1.0)
    assert report["segm"].summary()["AP"] == pytest.approx(1.0)
    assert len(report["results"]) == sum(len(dataset[i]["labels"]) for i in range(len(dataset)))


def test_evaluate_tiny_model_is_well_formed(tmp_path):
    cfg = tiny_config(box_score_thresh=0.0)
    params = init_params(cfg, seed=0)
    dataset = ShapesDataset("val", 3, image_size=48)
    calls = []
    report = E.evaluate_model(params, cfg, dataset, batch_size=2, out_path=tmp_path / "eval.json",
                              progress=lambda done, total: calls.append((done, total)), extra={"iteration": 5})
    assert calls == [(2, 3), (3, 3)]  # two predict calls of at most 2 images
    for key in ("bbox", "segm"):
        stats = report[key].stats
        assert stats.shape == (12,) and np.all((stats >= -1) & (stats <= 1))
    assert "bbox (box AP)" in report["table"] and "segm (mask AP)" in report["table"]
    assert "Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ]" in report["table"]
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["iteration"] == 5 and saved["num_images"] == 3
    assert set(saved["bbox"]) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "per_class_AP"}
    assert set(saved["segm"]["per_class_AP"]) == {"square", "circle", "triangle"}
    assert "mask AP" in E.short_summary(report) and "box AP" in E.short_summary(report)


def test_batch_size_must_be_positive():
    with pytest.raises(ValueError, match="batch_size"):
        E.predict_dataset({}, None, ShapesDataset("val", 1, image_size=48), batch_size=0)
