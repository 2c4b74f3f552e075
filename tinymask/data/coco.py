"""A reader for COCO-format instance segmentation datasets.

*Paper:* He et al., *Mask R-CNN*, ICCV 2017, Sec. 4 trains and evaluates on COCO (Lin et al., *Microsoft COCO:
Common Objects in Context*, ECCV 2014). The format is one JSON file (https://cocodataset.org/#format-data):

    {"images":      [{"id": 7, "file_name": "a.jpg", "width": 640, "height": 480}, ...],
     "annotations": [{"id": 1, "image_id": 7, "category_id": 17, "bbox": [x, y, w, h],
                      "segmentation": ..., "iscrowd": 0, "area": 1234.0}, ...],
     "categories":  [{"id": 17, "name": "cat"}, ...]}

## Segmentations come in three forms

- **polygons**: a list of flat `[x0, y0, x1, y1, ...]` lists (one object may have several parts), in the same
  continuous pixel coordinates as boxes; rasterised by `tinymask.evaluation.rle.polygons_to_mask`;
- **uncompressed RLE**: `{"size": [H, W], "counts": [n0, n1, ...]}`, run lengths of 0s and 1s alternately, reading
  the mask column by column (Fortran order); COCO uses it for crowd regions;
- **compressed RLE**: the same runs packed into a string, `{"size": [H, W], "counts": "Xc0a1..."}`.
Both RLE forms are decoded by `tinymask.evaluation.rle.rle_decode`, with pycocotools' semantics.

## Labels

Category ids can be any integers (COCO's 80 classes use ids 1..90 with gaps). The network needs contiguous labels
1..K (0 = background), so the categories sorted by id get labels 1, 2, ..., K: `category_id_to_label` maps one way,
`label_to_category_id` the other (detections go back to category ids before evaluation).

## Crowds

An annotation with `iscrowd: 1` marks a region with many objects (a crowd of people). As in COCO's evaluation it is
kept in the sample, flagged in `iscrowd`, because the evaluator must see it (a detection on a crowd is ignored,
neither true nor false positive). It is not a training target: `tinymask.data.transforms.training_targets(sample)` drops it.

## Boxes

The sample's boxes are the annotations' `bbox` [x, y, w, h], converted to (x, y, x + w, y + h), not recomputed from
the masks. Optional keys: `iscrowd` defaults to 0, `area` to the mask's area (only `to_coco_gt` needs it), and the
file may leave out "annotations" (a test set).

## Errors

The JSON is checked when the dataset is built and each image file when it is read. A malformed input raises
`CocoFormatError` naming the annotation file, the record (e.g. `annotations[12] (id=45)`) and the problem: missing
keys (named), a polygon with fewer than three points, an annotation pointing at an unknown image or category id,
a bbox with negative width or height, NaN or infinity in a bbox or polygon, an `iscrowd` other than 0 or 1, a
`file_name` that is not a string, an RLE whose size is not its image's, duplicate ids, and an image file that is
missing, unreadable, or not the size its record says.

Images are read with Pillow; grayscale, palette and RGBA images are converted to RGB (alpha is dropped).
"""
from __future__ import annotations

import json
import math
import os
from numbers import Real

import numpy as np
from PIL import Image

from tinymask.evaluation.rle import polygons_to_mask, rle_decode

IMAGE_KEYS = ("id", "file_name", "width", "height")
ANNOTATION_KEYS = ("id", "image_id", "category_id", "bbox", "segmentation")
CATEGORY_KEYS = ("id", "name")


class CocoFormatError(ValueError):
    """A malformed COCO annotation file or image; the message names the file and the record."""


def read_image_rgb(path: str) -> np.ndarray:
    """Read an image file as a (3, H, W) float32 RGB array in [0, 1] (grayscale, palette, RGBA converted)."""
    with Image.open(path) as im:
        if im.mode != "RGB":
            im = im.convert("RGB")  # L and P are expanded; RGBA's alpha channel is dropped
        pixels = np.asarray(im, dtype=np.float32)  # (H, W, 3) in 0..255
    return np.ascontiguousarray(pixels.transpose(2, 0, 1)) / np.float32(255.0)  # (3, H, W)


def _is_number(v) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool)


class CocoDataset:
    """The images of a COCO-format annotation file, in the file's order, as samples.

    annotations_json_path: the JSON file.
    images_dir:            the folder the images' `file_name`s are relative to.

    `dataset[i]` reads image i and decodes its masks (nothing is cached); `image_id` is the image's COCO id.
    """

    def __init__(self, annotations_json_path, images_dir):
        self.annotations_path = os.fspath(annotations_json_path)
        self.images_dir = os.fspath(images_dir)
        try:
            with open(self.annotations_path, encoding="utf-8") as f:
                data = json.load(f)
        except (OSError, ValueError) as err:
            raise CocoFormatError(f"{self.annotations_path}: cannot read the annotation file: {err}") from err
        if not isinstance(data, dict):
            raise CocoFormatError(f"{self.annotations_path}: the top level must be a JSON object, "
                                  f"got {type(data).__name__}")
        self._require(data, ("images", "categories"), "the top level")
        self._data = data

        # Categories: sorted by id -> labels 1..K.
        categories = self._records(data, "categories", CATEGORY_KEYS)
        by_id = {}
        for where, cat in categories:
            if not isinstance(cat["id"], int) or isinstance(cat["id"], bool):
                raise self._error(where, f"id must be an int, got {cat['id']!r}")
            if cat["id"] in by_id:
                raise self._error(where, f"duplicate category id {cat['id']!r}")
            by_id[cat["id"]] = cat
        ids = sorted(by_id)
        self.category_id_to_label = {cid: k + 1 for k, cid in enumerate(ids)}
        self.label_to_category_id = {k + 1: cid for k, cid in enumerate(ids)}
        self.class_names = ["background"] + [str(by_id[cid]["name"]) for cid in ids]

        # Images, in file order.
        self.images = []  # the image records
        self._image_index = {}  # image id -> position in self.images
        for where, img in self._records(data, "images", IMAGE_KEYS):
            if not isinstance(img["id"], int) or isinstance(img["id"], bool):
                raise self._error(where, f"id must be an int, got {img['id']!r}")
            if img["id"] in self._image_index:
                raise self._error(where, f"duplicate image id {img['id']!r}")
            for key in ("width", "height"):
                if not isinstance(img[key], int) or isinstance(img[key], bool) or img[key] < 1:
                    raise self._error(where, f"{key} must be a positive int, got {img[key]!r}")
            if not isinstance(img["file_name"], str) or not img["file_name"]:
                raise self._error(where, f"file_name must be a non-empty string (a path relative to the images "
                                         f"folder), got {img['file_name']!r}")
            self._image_index[img["id"]] = len(self.images)
            self.images.append(img)

        # Annotations, checked and grouped by image.
        self._annotations = [[] for _ in self.images]  # per image: its (where, annotation record) pairs
        seen = set()
        for where, ann in self._records(data, "annotations", ANNOTATION_KEYS, optional=True):
            if ann["id"] in seen:
                raise self._error(where, f"duplicate annotation id {ann['id']!r}")
            seen.add(ann["id"])
            if ann["image_id"] not in self._image_index:
                raise self._error(where, f"image_id {ann['image_id']!r} names no image in 'images'")
            if ann["category_id"] not in self.category_id_to_label:
                raise self._error(where, f"category_id {ann['category_id']!r} names no category in 'categories'")
            self._check_bbox(ann["bbox"], where)
            if ann.get("iscrowd", 0) not in (0, 1):  # True and False compare equal to 1 and 0
                raise self._error(where, f"iscrowd must be 0 or 1, got {ann['iscrowd']!r}")
            img = self.images[self._image_index[ann["image_id"]]]
            self._check_segmentation(ann["segmentation"], img["height"], img["width"], where)
            self._annotations[self._image_index[ann["image_id"]]].append((where, ann))

    # ------------------------------------------------------------------------------------------------- checks

    def _error(self, where: str, problem: str) -> CocoFormatError:
        return CocoFormatError(f"{self.annotations_path}: {where}: {problem}")

    def _require(self, record, keys, where):
        if not isinstance(record, dict):
            raise self._error(where, f"must be a JSON object, got {type(record).__name__}")
        missing = [k for k in keys if k not in record]
        if missing:
            raise self._error(where, f"missing key(s) {', '.join(repr(k) for k in missing)}")

    def _records(self, data, section, keys, optional=False):
        """[(where, record)] of a top-level list, each checked for its required keys."""
        records = data.get(section, []) if optional else data[section]
        if not isinstance(records, list):
            raise self._error(f"'{section}'", f"must be a list, got {type(records).__name__}")
        out = []
        for i, rec in enumerate(records):
            where = f"{section}[{i}]" + (f" (id={rec['id']!r})" if isinstance(rec, dict) and "id" in rec else "")
            self._require(rec, keys, where)
            out.append((where, rec))
        return out

    def _check_bbox(self, bbox, where):
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise self._error(where, f"bbox must be a list of 4 numbers [x, y, width, height], got {bbox!r}")
        if not all(math.isfinite(v) for v in bbox):
            raise self._error(where, f"bbox {bbox} contains NaN or infinity")
        if bbox[2] < 0:
            raise self._error(where, f"bbox {bbox} has negative width {bbox[2]}")
        if bbox[3] < 0:
            raise self._error(where, f"bbox {bbox} has negative height {bbox[3]}")

    def _check_segmentation(self, seg, height, width, where):
        if isinstance(seg, list):  # polygons
            if not seg:
                raise self._error(where, "segmentation is an empty list of polygons")
            for p, poly in enumerate(seg):
                if not (isinstance(poly, list) and all(_is_number(v) for v in poly)):
                    raise self._error(where, f"segmentation polygon {p} must be a flat list of numbers "
                                             f"[x0, y0, x1, y1, ...]")
                if not all(math.isfinite(v) for v in poly):
                    raise self._error(where, f"segmentation polygon {p} contains NaN or infinity")
                if len(poly) % 2:
                    raise self._error(where, f"segmentation polygon {p} has an odd number of coordinates "
                                             f"({len(poly)})")
                if len(poly) < 6:
                    raise self._error(where, f"segmentation polygon {p} has {len(poly) // 2} point(s); "
                                             f"a polygon needs at least 3")
        elif isinstance(seg, dict):  # RLE
            missing = [k for k in ("size", "counts") if k not in seg]
            if missing:
                raise self._error(where, f"RLE segmentation is missing key(s) {', '.join(repr(k) for k in missing)}")
            if not isinstance(seg["size"], list) or seg["size"] != [height, width]:
                raise self._error(where, f"RLE size {seg['size']} is not its image's [height, width] = "
                                         f"[{height}, {width}]")
            if not isinstance(seg["counts"], (str, list)):
                raise self._error(where, f"RLE counts must be a string (compressed) or a list of ints "
                                         f"(uncompressed), got {type(seg['counts']).__name__}")
        else:
            raise self._error(where, f"segmentation must be a list of polygons or an RLE dict, "
                                     f"got {type(seg).__name__}")

    # ------------------------------------------------------------------------------------------------ samples

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return (f"CocoDataset({self.annotations_path!r}, {self.images_dir!r}): {len(self)} images, "
                f"{len(self.class_names) - 1} classes")

    def image_path(self, index: int) -> str:
        return os.path.join(self.images_dir, self.images[index]["file_name"])

    def decode_mask(self, ann: dict, height: int, width: int) -> np.ndarray:
        """(H, W) uint8 mask of one annotation's segmentation (polygons or RLE)."""
        seg = ann["segmentation"]
        mask = polygons_to_mask(seg, height, width) if isinstance(seg, list) else rle_decode(seg)
        return np.asarray(mask, dtype=np.uint8).reshape(height, width)

    def __getitem__(self, index: int) -> dict:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        index = int(index) % len(self)
        img = self.images[index]
        where = f"images[{index}] (id={img['id']!r})"
        path = self.image_path(index)
        try:
            image = read_image_rgb(path)  # (3, H, W)
        except (OSError, ValueError) as err:  # missing file, not an image, truncated
            raise self._error(where, f"cannot read image file {path!r}: {err}") from err
        if image.shape[1:] != (img["height"], img["width"]):
            raise self._error(where, f"image file {path!r} is {image.shape[2]}x{image.shape[1]} (width x height) "
                                     f"but the record says {img['width']}x{img['height']}")

        anns = [a for _, a in self._annotations[index]]
        h, w = img["height"], img["width"]
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(-1, 4)  # (G, 4) x, y, w, h
        boxes[:, 2:] += boxes[:, :2]  # (G, 4) x0, y0, x1, y1
        masks = np.zeros((len(anns), h, w), dtype=np.uint8)  # (G, H, W)
        for g, (ann_where, a) in enumerate(self._annotations[index]):
            try:
                masks[g] = self.decode_mask(a, h, w)
            except ValueError as err:  # e.g. RLE counts that do not add up to H * W
                raise self._error(ann_where, f"cannot decode segmentation: {err}") from err
        return {
            "image": image,
            "boxes": boxes,
            "labels": np.array([self.category_id_to_label[a["category_id"]] for a in anns], dtype=np.int64),
            "masks": masks,
            "iscrowd": np.array([bool(a.get("iscrowd", 0)) for a in anns], dtype=bool),
            "image_id": img["id"],
        }

    def to_coco_gt(self) -> dict:
        """The ground truth as a COCO-format dict for the evaluator: the file's own records (category ids, not
        labels), with `iscrowd` defaulted to 0 and a missing `area` filled in with the mask's area."""
        annotations = []
        for index, anns in enumerate(self._annotations):
            img = self.images[index]
            for _, a in anns:
                a = dict(a)
                a.setdefault("iscrowd", 0)
                if "area" not in a:
                    a["area"] = float(self.decode_mask(a, img["height"], img["width"]).sum())
                annotations.append(a)
        return {
            "info": self._data.get("info", {}),
            "images": [dict(img) for img in self.images],
            "annotations": annotations,
            "categories": [dict(c) for c in self._data["categories"]],
        }
