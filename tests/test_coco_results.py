"""COCO results that COCO's own tools accept: a model trained on a data set whose category ids have gaps (7 and 42)
remembers them in its checkpoint (`MaskRCNNConfig.category_ids`), and `tinymask predict --data` writes results.json
with the annotation file's image ids and those category ids, so pycocotools' `loadRes` takes it as it is and scores it
exactly as `tinymask.evaluation.evaluate.evaluate_model` does. Plus the id mapping's pieces and their errors."""
import json
import types

import numpy as np
import pytest
from PIL import Image

from tinymask.cli import main
from tinymask.config import MaskRCNNConfig
from tinymask.data.coco import CocoDataset
from tinymask.evaluation.evaluate import check_category_ids, dataset_category_ids, evaluate_model
from tinymask.evaluation.predict import check_results_categories, match_image_ids
from tinymask.evaluation.rle import rle_encode
from tinymask.weights.checkpoint import load_model
from tiny import tiny_config

CATEGORIES = [{"id": 42, "name": "disc"}, {"id": 7, "name": "square"}]  # sorted by id: label 1 = 7, label 2 = 42


def _image_and_annotations(index: int, image_id: int, first_ann_id: int):
    """A 48x48 noise image with a bright square (category 7) and a dark disc (category 42); their COCO records."""
    rng = np.random.default_rng(index)
    pixels = (rng.random((48, 48, 3)) * 80 + 90).astype(np.uint8)  # (H, W, 3)
    yy, xx = np.mgrid[:48, :48]
    x0, y0 = 2 + 2 * index, 3 + index
    square = np.zeros((48, 48), np.uint8)
    square[y0:y0 + 22, x0:x0 + 22] = 1
    cx, cy = 34 - index, 33 - index
    disc = ((xx - cx) ** 2 + (yy - cy) ** 2 <= 11 ** 2).astype(np.uint8)
    pixels[square == 1] = (250, 240, 60)
    pixels[disc == 1] = (20, 30, 160)
    anns = []
    for k, (mask, category) in enumerate(((square, 7), (disc, 42))):
        ys, xs = np.nonzero(mask)
        x, y = int(xs.min()), int(ys.min())
        anns.append({"id": first_ann_id + k, "image_id": image_id, "category_id": category,
                     "bbox": [x, y, int(xs.max()) + 1 - x, int(ys.max()) + 1 - y], "area": float(mask.sum()),
                     "iscrowd": 0, "segmentation": rle_encode(mask)})
    return pixels, anns


def write_coco(folder, name: str, image_ids: list[int], first_index: int = 0):
    """Images `img<id>.png` in `folder` and the annotation file `folder/name`; returns its path."""
    images, annotations = [], []
    for i, image_id in enumerate(image_ids):
        pixels, anns = _image_and_annotations(first_index + i, image_id, 100 * image_id)
        Image.fromarray(pixels).save(folder / f"img{image_id}.png")
        images.append({"id": image_id, "file_name": f"img{image_id}.png", "width": 48, "height": 48})
        annotations.extend(anns)
    path = folder / name
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": CATEGORIES}))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained for a few iterations with `tinymask train` on 4 images; 2 held-out images with ids 501
    and 733. Every detection is kept (box_score_thresh 0), so both evaluators see the same, many, detections."""
    tmp = tmp_path_factory.mktemp("coco_results")
    images = tmp / "images"
    images.mkdir()
    train_json = write_coco(images, "train.json", [11, 12, 13, 14])
    val_json = write_coco(images, "val.json", [501, 733], first_index=4)
    config = tmp / "tiny.json"
    tiny_config(num_classes=3, box_score_thresh=0.0, rpn_post_nms_top_n_test=50, box_detections_per_img=100).save(config)
    run = tmp / "run"
    assert main(["train", "--config", str(config), "--data", str(train_json), "--images", str(images),
                 "--val-data", str(val_json), "--val-images", str(images), "--iterations", "40", "--batch-size", "2",
                 "--lr", "0.02", "--warmup", "5", "--eval-every", "0", "--out", str(run), "--no-progress"]) == 0
    return types.SimpleNamespace(tmp=tmp, images=images, val_json=val_json, checkpoint=run / "last")


def test_checkpoint_remembers_the_category_ids(trained):
    _, cfg = load_model(checkpoint_dir=trained.checkpoint)
    assert cfg.category_ids == [7, 42]
    assert cfg.label_to_category_id() == {1: 7, 2: 42}
    assert json.loads((trained.checkpoint / "config.json").read_text())["category_ids"] == [7, 42]


def test_pycocotools_accepts_predict_results_and_scores_them_as_tinymask_does(trained, capsys):
    coco_mod = pytest.importorskip("pycocotools.coco")
    from pycocotools.cocoeval import COCOeval

    out = trained.tmp / "pred"
    assert main(["predict", "--data", str(trained.val_json), "--images", str(trained.images), "--checkpoint",
                 str(trained.checkpoint), "--out", str(out), "--score-threshold", "0"]) == 0
    assert "warning" not in capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results and {r["image_id"] for r in results} <= {501, 733}
    assert {r["category_id"] for r in results} <= {7, 42}

    params, cfg = load_model(checkpoint_dir=trained.checkpoint)
    ours = evaluate_model(params, cfg, CocoDataset(trained.val_json, trained.images), batch_size=1)
    # eval and predict write the same ids for the same detections
    key = lambda r: (r["image_id"], r["category_id"], round(r["score"], 6))  # noqa: E731
    assert sorted(map(key, ours["results"])) == sorted(map(key, results))

    gt = coco_mod.COCO(str(trained.val_json))
    dt = gt.loadRes(results)  # refused ("Results do not correspond to current coco set") with positions as ids
    for iou_type in ("bbox", "segm"):
        e = COCOeval(gt, dt, iou_type)
        e.evaluate()
        e.accumulate()
        e.summarize()
        print(f"{iou_type}: pycocotools {np.round(e.stats, 6).tolist()}\n"
              f"{iou_type}: tinymask    {np.round(ours[iou_type].stats, 6).tolist()}")
        np.testing.assert_allclose(ours[iou_type].stats, e.stats, rtol=0, atol=1e-9)
    assert max(ours["segm"].stats.max(), ours["bbox"].stats.max()) > 0  # something was found: the check has teeth


def test_predict_without_data_warns_and_numbers_the_images(trained, capsys):
    out = trained.tmp / "pred_plain"
    assert main(["predict", str(trained.images / "img733.png"), "--checkpoint", str(trained.checkpoint),
                 "--out", str(out), "--score-threshold", "0"]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "warning: without --data" in err and "positions" in err
    results = json.loads((out / "results.json").read_text())
    assert {r["image_id"] for r in results} == {0}
    assert {r["category_id"] for r in results} <= {7, 42}  # the checkpoint's ids all the same


def test_predict_an_image_the_annotation_file_does_not_list_writes_nothing(trained, capsys):
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(trained.tmp / "stray.png")
    out = trained.tmp / "pred_stray"
    assert main(["predict", str(trained.images / "img501.png"), str(trained.tmp / "stray.png"), "--data",
                 str(trained.val_json), "--checkpoint", str(trained.checkpoint), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "stray.png is not listed in the images of" in err and "val.json" in err
    assert not out.exists()


def test_eval_refuses_a_data_set_with_other_category_ids(trained, tmp_path, capsys):
    data = json.loads(trained.val_json.read_text())
    for ann in data["annotations"]:
        ann["category_id"] = {7: 3, 42: 5}[ann["category_id"]]
    data["categories"] = [{"id": 3, "name": "a"}, {"id": 5, "name": "b"}]
    other = tmp_path / "other.json"
    other.write_text(json.dumps(data))
    assert main(["eval", "--checkpoint", str(trained.checkpoint), "--data", str(other), "--images",
                 str(trained.images), "--out", str(tmp_path / "e.json"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "stand for category ids [7, 42]" in err and "[3, 5]" in err
    # predict --data refuses it too, before anything is written
    assert main(["predict", str(trained.images / "img501.png"), "--data", str(other), "--checkpoint",
                 str(trained.checkpoint), "--out", str(tmp_path / "p")]) == 1
    assert "category ids [7, 42] are not categories of" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()


@pytest.mark.parametrize("argv,message", [
    (["predict", "--images", "{tmp}", "--checkpoint", "{tmp}"], "--images names the folder"),
    (["predict", "--checkpoint", "{tmp}"], "give image files or folders"),
    (["predict", "{tmp}/a.png", "--data", "{tmp}/ann.json", "--images", "{tmp}", "--checkpoint", "{tmp}"],
     "not both"),
])
def test_predict_option_errors(argv, message, tmp_path, capsys):
    (tmp_path / "weights.npz").write_bytes(b"")  # resolve_checkpoint finds a checkpoint; nothing reads it
    assert main([a.format(tmp=tmp_path) for a in argv]) == 1
    assert message in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------------
# The pieces, one by one.
# ---------------------------------------------------------------------------------------------------------------

def test_category_ids_in_the_config(tmp_path):
    cfg = tiny_config(num_classes=3, category_ids=[7, 42])
    cfg.save(tmp_path / "c.json")
    assert MaskRCNNConfig.load(tmp_path / "c.json") == cfg
    old = cfg.to_dict()
    del old["category_ids"]  # a config written before the field existed
    assert MaskRCNNConfig.from_dict(old).category_ids is None
    assert MaskRCNNConfig.from_dict(old).label_to_category_id() is None
    for bad, message in (([7], "has 1 ids for num_classes=3"), ([7, 7], "repeats [7]"),
                         ([7, 4.0], "list of ints"), ([7, True], "list of ints"), ("7", "a list or null")):
        with pytest.raises(ValueError, match="category_ids") as info:
            tiny_config(num_classes=3, category_ids=bad)
        assert message in str(info.value)


def test_match_image_ids_by_file_name(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": [
        {"id": 5, "file_name": "a/1.png", "width": 4, "height": 4},
        {"id": 9, "file_name": "b/1.png", "width": 4, "height": 4},
        {"id": 4, "file_name": "1.png", "width": 4, "height": 4},
        {"id": 3, "file_name": "2.png", "width": 4, "height": 4},
        {"id": 6, "file_name": "c/2.png", "width": 4, "height": 4},
        {"id": 7, "file_name": "c/2.png", "width": 4, "height": 4}], "categories": CATEGORIES}))
    coco = CocoDataset(path, tmp_path)
    assert match_image_ids([tmp_path / "elsewhere" / "2.png", "x/b/1.png", "a/1.png", "d/1.png"], coco) == \
        [3, 9, 5, 4]
    with pytest.raises(ValueError, match=r"3\.png is not listed in the images of .*ann\.json"):
        match_image_ids(["2.png", "3.png"], coco)
    with pytest.raises(ValueError, match="c/2.png matches more than one record"):
        match_image_ids(["c/2.png"], coco)


def test_results_categories_must_be_the_files(tmp_path):
    path = tmp_path / "ann.json"
    path.write_text(json.dumps({"images": [], "categories": CATEGORIES}))
    coco = CocoDataset(path, tmp_path)
    check_results_categories({1: 7, 2: 42}, 3, coco)
    check_results_categories(None, 91, coco)  # torchvision's COCO labels are the ids
    with pytest.raises(ValueError, match=r"category ids \[8\] are not categories"):
        check_results_categories({1: 7, 2: 8}, 3, coco)
    with pytest.raises(ValueError, match=r'no category_ids.*add "category_ids": \[7, 42\] to its config.json'):
        check_results_categories(None, 3, coco)  # a checkpoint from before category_ids existed


def test_dataset_category_ids_and_the_check():
    coco_like = types.SimpleNamespace(label_to_category_id={2: 42, 1: 7})
    assert dataset_category_ids(coco_like) == [7, 42]
    assert dataset_category_ids(object()) is None  # the shapes data: labels are ids
    check_category_ids(tiny_config(num_classes=3, category_ids=[7, 42]), coco_like)
    check_category_ids(tiny_config(num_classes=3), coco_like)  # no ids in the config: nothing to check
    with pytest.raises(ValueError, match=r"stand for category ids \[1, 2\], but the data set's labels for \[7, 42\]"):
        check_category_ids(tiny_config(num_classes=3, category_ids=[1, 2]), coco_like)
