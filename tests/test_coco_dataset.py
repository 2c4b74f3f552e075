"""Tests for tinymask/data/coco.py on small COCO-format datasets written into tmp_path: masks from polygons and
from both RLE forms, crowds, the label mapping both ways, grayscale / RGBA / JPEG images, empty images, and an error
naming the file and the record for each kind of malformed input."""
import copy
import json

import numpy as np
import pytest
from PIL import Image

from tinymask.data.coco import CocoDataset, CocoFormatError
from tinymask.data import check_sample
from tinymask.data.transforms import training_targets
from tinymask.evaluation.rle import rle_encode

RGB = (np.arange(6 * 8 * 3).reshape(6, 8, 3) * 5 % 256).astype(np.uint8)  # (H=6, W=8, 3)
GRAY = (np.arange(4 * 5).reshape(4, 5) * 12).astype(np.uint8)  # (H=4, W=5)
RGBA = np.concatenate([np.full((3, 4, 3), 200, np.uint8), np.full((3, 4, 1), 10, np.uint8)], axis=2)

# A mask on the 6 x 8 image for the compressed RLE, and a crowd mask for the uncompressed one.
DOG_MASK = np.zeros((6, 8), np.uint8)
DOG_MASK[2:5, 4:7] = 1
CROWD_MASK = np.zeros((6, 8), np.uint8)
CROWD_MASK[:, 7] = 1  # the last column: column-major runs are 42 zeros then 6 ones
CROWD_COUNTS = [42, 6]


def coco_dict():
    return {
        "images": [
            {"id": 10, "file_name": "rgb.png", "width": 8, "height": 6},
            {"id": 11, "file_name": "gray.png", "width": 5, "height": 4},
            {"id": 12, "file_name": "rgba.png", "width": 4, "height": 3},  # no annotations
            {"id": 13, "file_name": "photo.jpg", "width": 8, "height": 6},
            {"id": 14, "file_name": "tiny.png", "width": 3, "height": 3},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 3, "bbox": [1, 1, 3, 2], "iscrowd": 0, "area": 6.0,
             "segmentation": [[1, 1, 4, 1, 4, 3, 1, 3]]},  # a rectangle: pixels rows 1-2, columns 1-3
            {"id": 2, "image_id": 10, "category_id": 17, "bbox": [4, 2, 3, 3], "iscrowd": 0,
             "segmentation": rle_encode(DOG_MASK)},  # compressed; no "area": filled in by to_coco_gt
            {"id": 3, "image_id": 10, "category_id": 90, "bbox": [7, 0, 1, 6], "iscrowd": 1, "area": 6.0,
             "segmentation": {"size": [6, 8], "counts": CROWD_COUNTS}},  # uncompressed, a crowd
            {"id": 4, "image_id": 11, "category_id": 17, "bbox": [0, 0, 2, 2],
             "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2]]},  # no "iscrowd": defaults to 0
            {"id": 5, "image_id": 13, "category_id": 3, "bbox": [0, 0, 8, 6], "iscrowd": 0, "area": 8.0,
             "segmentation": [[0, 0, 2, 0, 2, 2, 0, 2], [6, 4, 8, 4, 8, 6, 6, 6]]},  # two parts
            {"id": 6, "image_id": 14, "category_id": 90, "bbox": [0, 0, 3, 3], "iscrowd": 0, "area": 4.0,
             "segmentation": {"size": [3, 3], "counts": "11112O"}},  # the golden example of tinymask/evaluation/rle.py
        ],
        "categories": [{"id": 90, "name": "zebra"}, {"id": 3, "name": "cat"}, {"id": 17, "name": "dog"}],
    }


def write_dataset(tmp_path, data=None):
    Image.fromarray(RGB).save(tmp_path / "rgb.png")
    Image.fromarray(GRAY, mode="L").save(tmp_path / "gray.png")
    Image.fromarray(RGBA, mode="RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(RGB).save(tmp_path / "photo.jpg", quality=95)
    Image.fromarray(np.zeros((3, 3, 3), np.uint8)).save(tmp_path / "tiny.png")
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(coco_dict() if data is None else data))
    return path


@pytest.fixture
def dataset(tmp_path):
    return CocoDataset(write_dataset(tmp_path), tmp_path)


def test_label_mapping_both_ways(dataset):
    assert dataset.class_names == ["background", "cat", "dog", "zebra"]  # categories sorted by id: 3, 17, 90
    assert dataset.category_id_to_label == {3: 1, 17: 2, 90: 3}
    assert dataset.label_to_category_id == {1: 3, 2: 17, 3: 90}
    assert len(dataset) == 5


def test_rgb_image_polygon_and_both_rle_forms_and_crowd(dataset):
    s = dataset[0]
    check_sample(s, num_classes=3)
    assert s["image_id"] == 10 and s["image"].shape == (3, 6, 8)
    assert np.array_equal(s["image"], RGB.transpose(2, 0, 1).astype(np.float32) / 255)  # PNG is lossless
    assert s["labels"].tolist() == [1, 2, 3]  # cat, dog, zebra
    assert s["boxes"].tolist() == [[1, 1, 4, 3], [4, 2, 7, 5], [7, 0, 8, 6]]  # [x, y, w, h] -> (x0, y0, x1, y1)
    assert s["iscrowd"].tolist() == [False, False, True]
    polygon = np.zeros((6, 8), np.uint8)
    polygon[1:3, 1:4] = 1  # pixel centres 1.5..3.5 lie in [1, 4], 1.5..2.5 in [1, 3]
    assert np.array_equal(s["masks"][0], polygon)
    assert np.array_equal(s["masks"][1], DOG_MASK)  # compressed RLE
    assert np.array_equal(s["masks"][2], CROWD_MASK)  # uncompressed RLE
    t = training_targets(s)  # the crowd is not a training target
    assert t["labels"].tolist() == [1, 2] and t["masks"].shape == (2, 6, 8)


def test_golden_compressed_rle(dataset):
    s = dataset[4]
    assert s["masks"][0].tolist() == [[0, 1, 0], [1, 1, 0], [0, 0, 1]]


def test_grayscale_image_becomes_rgb(dataset):
    s = dataset[1]
    check_sample(s)
    assert s["image"].shape == (3, 4, 5)
    for c in range(3):
        assert np.array_equal(s["image"][c], GRAY.astype(np.float32) / 255)
    assert s["iscrowd"].tolist() == [False]
    assert s["masks"][0].tolist() == [[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0] * 5, [0] * 5]


def test_rgba_image_without_annotations_is_an_empty_sample(dataset):
    s = dataset[2]
    check_sample(s)
    assert s["image"].shape == (3, 3, 4) and np.allclose(s["image"], 200 / 255)  # alpha dropped
    assert s["boxes"].shape == (0, 4) and s["boxes"].dtype == np.float32
    assert s["labels"].shape == (0,) and s["labels"].dtype == np.int64
    assert s["masks"].shape == (0, 3, 4) and s["masks"].dtype == np.uint8
    assert s["iscrowd"].shape == (0,) and s["iscrowd"].dtype == bool


def test_jpeg_image_and_a_two_part_polygon(dataset):
    s = dataset[3]
    check_sample(s)
    assert np.abs(s["image"] - RGB.transpose(2, 0, 1) / 255).mean() < 0.05  # JPEG is lossy
    mask = s["masks"][0]
    assert mask.sum() == 8 and mask[:2, :2].all() and mask[4:, 6:].all()


def test_to_coco_gt_keeps_category_ids_and_fills_area(dataset):
    gt = json.loads(json.dumps(dataset.to_coco_gt()))
    assert [a["category_id"] for a in gt["annotations"]] == [3, 17, 90, 17, 3, 90]
    assert [a["iscrowd"] for a in gt["annotations"]] == [0, 0, 1, 0, 0, 0]
    assert gt["annotations"][1]["area"] == DOG_MASK.sum()  # was missing, computed from the mask
    assert gt["annotations"][3]["area"] == 4
    assert [img["id"] for img in gt["images"]] == [10, 11, 12, 13, 14]
    assert {c["id"] for c in gt["categories"]} == {3, 17, 90}


# ---------------------------------------------------------------------------------------------------------------
# Malformed input: (edit the dict, words the message must contain). Every message also names the JSON file.

def _delete(section, index, *keys):
    def edit(d):
        for k in keys:
            del d[section][index][k]
    return edit


def _set(section, index, key, value):
    def edit(d):
        d[section][index][key] = value
    return edit


MALFORMED = {
    "annotation missing keys": (_delete("annotations", 2, "bbox", "category_id"),
                                ["annotations[2] (id=3)", "missing key(s)", "'category_id'", "'bbox'"]),
    "image missing key": (_delete("images", 1, "file_name"), ["images[1] (id=11)", "missing key(s) 'file_name'"]),
    "category missing key": (_delete("categories", 0, "name"), ["categories[0] (id=90)", "'name'"]),
    "annotation missing id": (_delete("annotations", 0, "id"), ["annotations[0]", "missing key(s) 'id'"]),
    "polygon of two points": (_set("annotations", 3, "segmentation", [[0, 0, 2, 0, 2, 2, 0, 2], [0, 0, 1, 1]]),
                              ["annotations[3] (id=4)", "polygon 1 has 2 point(s)", "at least 3"]),
    "unknown image id": (_set("annotations", 1, "image_id", 99), ["annotations[1] (id=2)", "image_id 99"]),
    "unknown category id": (_set("annotations", 4, "category_id", 4), ["annotations[4] (id=5)", "category_id 4"]),
    "negative bbox width": (_set("annotations", 0, "bbox", [3, 1, -2, 2]),
                            ["annotations[0] (id=1)", "negative width -2"]),
    "negative bbox height": (_set("annotations", 0, "bbox", [3, 1, 2, -1]),
                             ["annotations[0] (id=1)", "negative height -1"]),
    "RLE of the wrong size": (_set("annotations", 2, "segmentation", {"size": [8, 6], "counts": CROWD_COUNTS}),
                              ["annotations[2] (id=3)", "RLE size [8, 6]", "[6, 8]"]),
    "duplicate image id": (_set("images", 1, "id", 10), ["images[1] (id=10)", "duplicate image id 10"]),
    "missing top-level key": (lambda d: d.pop("categories"), ["the top level", "'categories'"]),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_json_names_file_and_record(tmp_path, case):
    edit, words = MALFORMED[case]
    data = copy.deepcopy(coco_dict())
    edit(data)
    path = write_dataset(tmp_path, data)
    with pytest.raises(CocoFormatError) as info:
        CocoDataset(path, tmp_path)
    message = str(info.value)
    assert str(path) in message
    for w in words:
        assert w in message, (w, message)


def test_not_json_names_the_file(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{ not json")
    with pytest.raises(CocoFormatError, match="broken.json"):
        CocoDataset(path, tmp_path)


def test_missing_image_file_names_file_and_record(tmp_path):
    dataset = CocoDataset(write_dataset(tmp_path), tmp_path)
    (tmp_path / "gray.png").unlink()
    with pytest.raises(CocoFormatError) as info:
        dataset[1]
    message = str(info.value)
    assert "instances.json" in message and "images[1] (id=11)" in message and "gray.png" in message


def test_unreadable_image_file_names_file_and_record(tmp_path):
    dataset = CocoDataset(write_dataset(tmp_path), tmp_path)
    (tmp_path / "rgba.png").write_bytes(b"this is not a png")
    with pytest.raises(CocoFormatError) as info:
        dataset[2]
    message = str(info.value)
    assert "instances.json" in message and "images[2] (id=12)" in message and "rgba.png" in message


def test_image_of_the_wrong_size_names_file_and_record(tmp_path):
    data = coco_dict()
    data["images"][2]["width"] = 5
    dataset = CocoDataset(write_dataset(tmp_path, data), tmp_path)
    with pytest.raises(CocoFormatError, match=r"images\[2\] \(id=12\).*rgba.png.*4x3.*5x3"):
        dataset[2]


def test_rle_counts_that_do_not_add_up_name_the_record(tmp_path):
    data = coco_dict()
    data["annotations"][2]["segmentation"]["counts"] = [42, 5]
    dataset = CocoDataset(write_dataset(tmp_path, data), tmp_path)
    with pytest.raises(CocoFormatError, match=r"instances.json: annotations\[2\] \(id=3\)"):
        dataset[0]
