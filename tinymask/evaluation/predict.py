"""Using a trained model: load it, run it on image files, save pictures and COCO-format results.

*Paper:* He et al., *Mask R-CNN*, ICCV 2017, §3.1 "Inference" (`tinymask.model.predict` does the work; this module
is the plumbing around it). · *Code:* `tinymask/evaluation/predict.py` · *Test:* `tests/test_predict.py`

    params, cfg = load_model(checkpoint_dir="runs/shapes")           # config.json + weights.npz
    params, cfg = load_model(config_path="r50.json", weights_path="maskrcnn_resnet50_fpn_coco.pth")
    results = run_predict(["a.jpg", "b.png"], checkpoint_dir="runs/shapes", out_dir="out")
    # out/a.png, out/b.png: the detections drawn; out/results.json: COCO results for all images

Where a model comes from (a checkpoint folder, or a config plus a tinymask `.npz` or torchvision `.pth`) is explained
in `tinymask/weights/checkpoint.py`, whose `load_model` this module uses.

COCO results
------------
COCO's evaluation reads detections as a JSON list (https://cocodataset.org/#format-results), one entry per instance:

    {"image_id": 7, "category_id": 18, "bbox": [x, y, width, height], "score": 0.93,
     "segmentation": {"size": [H, W], "counts": "<compressed RLE>"}}

The box changes form: tinymask's `(x0, y0, x1, y1)` becomes `[x0, y0, x1 - x0, y1 - y0]` (continuous coordinates,
so no "+1"). Two ids must be the data set's for COCO's tools to accept the file (pycocotools' `loadRes` refuses
image ids its annotation file lacks):

- `category_id`: the network's contiguous label k becomes the category id it was trained for. A checkpoint knows
  them: `tinymask train` stores the data's `CocoDataset.label_to_category_id` in the model config as
  `category_ids` (label k -> `category_ids[k - 1]`); a config without them (the shapes data, torchvision's COCO
  weights) means the label is the category id. `tinymask eval` maps through the data set, and refuses a data set
  whose ids differ from the checkpoint's, so both write the same ids.
- `image_id`: given an annotation file (`annotations=`, `tinymask predict --data`), each image file is matched to
  the record of `images` with its file name (`match_image_ids`), and a file it does not list is an error before
  anything is written. Without one, the image ids are the images' positions 0, 1, ... (the file then cannot be
  scored against a COCO annotation file as it is).
"""
from __future__ import annotations

import os

import numpy as np

from tinymask._files import write_json
from tinymask.data.coco import CocoDataset, read_image_rgb
from tinymask.evaluation.rle import rle_encode
from tinymask.model import predict
from tinymask.weights.checkpoint import load_model

# ---------------------------------------------------------------------------------------------------------------
# COCO results.
# ---------------------------------------------------------------------------------------------------------------

def _check_binary(masks: np.ndarray) -> None:
    if masks.dtype.kind == "f" and np.any((masks > 0) & (masks < 1)):
        raise ValueError("masks hold soft probabilities; binarise them first (predict with mask_threshold=0.5)")


def detections_to_coco_results(result: dict, image_id: int, label_to_category_id=None) -> list[dict]:
    """One image's detections (an entry of `model.predict`) -> COCO results, one dict per instance.

    result:               {"boxes" (D, 4) x0, y0, x1, y1; "scores" (D,); "labels" (D,); "masks" (D, H, W) binary}.
                          Without "masks" the entries have no "segmentation" (box-only results).
    image_id:             the image's id in the data set.
    label_to_category_id: {label: category id}, e.g. `CocoDataset.label_to_category_id`; None: the label itself.
    Returns [{"image_id", "category_id", "bbox": [x, y, w, h], "score", "segmentation": {"size", "counts": str}}],
    plain Python numbers, ready for `json.dump`.
    """
    boxes = np.asarray(result["boxes"], dtype=np.float64).reshape(-1, 4)  # (D, 4)
    scores = np.asarray(result["scores"]).reshape(-1)  # (D,)
    labels = np.asarray(result["labels"]).reshape(-1)  # (D,)
    masks = result.get("masks")
    if masks is not None:
        masks = np.asarray(masks)
        _check_binary(masks)
    out = []
    for k, ((x0, y0, x1, y1), score, label) in enumerate(zip(boxes, scores, labels)):
        label = int(label)
        if label_to_category_id is not None and label not in label_to_category_id:
            raise KeyError(f"label {label} has no entry in label_to_category_id")
        entry = {"image_id": int(image_id),
                 "category_id": int(label_to_category_id[label]) if label_to_category_id is not None else label,
                 "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],  # (x0, y0, x1, y1) -> [x, y, w, h]
                 "score": float(score)}
        if masks is not None:
            entry["segmentation"] = rle_encode(masks[k])  # counts as a str, so the entry is JSON-ready
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------------------------
# The data set's ids: image ids by file name, category ids from the checkpoint.
# ---------------------------------------------------------------------------------------------------------------

def read_annotations(annotations, images_dir=None) -> CocoDataset:
    """A CocoDataset as given, or read from an annotation file (its images relative to `images_dir`, by default the
    file's folder; only the records are read here, not the images)."""
    if isinstance(annotations, CocoDataset):
        return annotations
    path = os.fspath(annotations)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"annotation file not found: {path}")
    return CocoDataset(path, os.path.dirname(os.path.abspath(path)) if images_dir is None else images_dir)


def _slashes(path: str) -> str:
    return os.path.normpath(path).replace(os.sep, "/")


def match_image_ids(image_paths, coco: CocoDataset) -> list[int]:
    """The COCO image id of each image file: the record of `coco.images` whose `file_name` has the file's name
    (when several records share the name, e.g. "a/1.jpg" and "b/1.jpg", the one whose `file_name` ends the path,
    the longest if several do).

    Raises ValueError naming the first file that no record (or more than one) matches.
    """
    by_name = {}  # base name -> the image records with it
    for record in coco.images:
        by_name.setdefault(os.path.basename(_slashes(record["file_name"])), []).append(record)
    ids = []
    for path in (os.fspath(p) for p in image_paths):
        full = _slashes(os.path.abspath(path))
        found = by_name.get(os.path.basename(full), [])
        if len(found) > 1:  # the records whose file_name ends the path, the longest such file_name
            found = [r for r in found if full.endswith("/" + _slashes(r["file_name"]).lstrip("/"))]
            longest = max((len(_slashes(r["file_name"])) for r in found), default=0)
            found = [r for r in found if len(_slashes(r["file_name"])) == longest]
        if len(found) != 1:
            how = "is not listed in" if not found else "matches more than one record of"
            raise ValueError(f"{path} {how} the images of {coco.annotations_path} (matched by file name), so it has "
                             f"no image id there (nothing was written)")
        ids.append(found[0]["id"])
    return ids


def check_results_categories(mapping, num_classes: int, coco: CocoDataset) -> None:
    """ValueError unless the category ids results.json will carry (`mapping` {label: id}, or the labels 1..K-1
    themselves when None) cover `coco`'s categories: a model trained on other data, or a checkpoint without
    `category_ids` whose data had other ids."""
    known = sorted(coco.category_id_to_label)
    if mapping is not None:
        missing = sorted(set(mapping.values()) - set(known))
        if missing:
            raise ValueError(f"the model's category ids {missing} are not categories of {coco.annotations_path} "
                             f"(its ids: {known}): the model was trained on other data")
    elif not set(known) <= set(range(1, num_classes)):
        fix = f'; if its labels 1..{num_classes - 1} are these categories in this order, add "category_ids": ' \
              f'{known} to its config.json' if len(known) == num_classes - 1 else ""
        raise ValueError(f"the model has no category_ids, so its labels 1..{num_classes - 1} are taken as category "
                         f"ids, but {coco.annotations_path}'s categories are {known}{fix}")


# ---------------------------------------------------------------------------------------------------------------
# Image files in, pictures and results.json out.
# ---------------------------------------------------------------------------------------------------------------

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def image_files(paths) -> list[str]:
    """The image files to predict: each path as given, or, for a folder, its image files (by extension, sorted).

    Raises FileNotFoundError for a path that does not exist, ValueError for a folder without images or no paths.
    """
    out = []
    for path in (os.fspath(p) for p in paths):
        if os.path.isdir(path):
            found = sorted(os.path.join(path, n) for n in os.listdir(path)
                           if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(path, n)))
            if not found:
                raise ValueError(f"the folder {path} holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
            out.extend(found)
        elif os.path.isfile(path):
            out.append(path)
        else:
            raise FileNotFoundError(f"image not found: {path}")
    if not out:
        raise ValueError("no images to predict")
    return out


def check_image_file(path) -> None:
    """ValueError naming the file when Pillow cannot read it as an image (its header only: fast)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception as e:  # UnidentifiedImageError, a truncated or corrupt file, ...
        raise ValueError(f"cannot read the image {path}: {type(e).__name__}: {e} (nothing was written)") from None


def read_image(path) -> np.ndarray:
    """An image file (PNG, JPEG, ...; grayscale, palette and RGBA become RGB) as (3, H, W) float32 in [0, 1].

    Raises FileNotFoundError or ValueError naming the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image not found: {path}")
    try:
        return read_image_rgb(path)
    except Exception as e:  # Pillow's UnidentifiedImageError, a truncated file, ...
        raise ValueError(f"cannot read the image {path}: {type(e).__name__}: {e}") from e


def keep_scores_above(result: dict, score_threshold: float) -> dict:
    """The detections of one image with score >= score_threshold (every array of the dict filtered alike)."""
    keep = np.asarray(result["scores"]) >= score_threshold  # (D,)
    return {k: (np.asarray(v)[keep] if k in ("boxes", "scores", "labels", "masks") else v) for k, v in result.items()}


def _overlay_names(image_paths: list[str]) -> list[str]:
    """`<stem>.png` for each image; ValueError if two images would write the same file."""
    names = [os.path.splitext(os.path.basename(p))[0] + ".png" for p in image_paths]
    seen = {}
    for path, name in zip(image_paths, names):
        if name in seen:
            raise ValueError(f"{seen[name]} and {path} would both be drawn to {name}; rename one of them")
        seen[name] = path
    return names


def save_overlay(image: np.ndarray, result: dict, class_names, path) -> None:
    """Draw one image's detections at (at least) 512 pixels on its long side and write the PNG atomically."""
    from matplotlib.figure import Figure

    from tinymask.visualize import draw_detections, save_figure

    h, w = image.shape[1:]
    scale = max(1.0, 512 / max(h, w))  # small images are enlarged so captions stay legible
    fig = Figure(figsize=(w * scale / 100, h * scale / 100))
    ax = fig.add_axes((0, 0, 1, 1))  # the image fills the whole picture
    draw_detections(ax, image, result["boxes"], result["labels"], result["scores"], result.get("masks"),
                    class_names or None)
    save_figure(fig, path, dpi=100)


def run_predict(image_paths, *, checkpoint_dir=None, config_path=None, weights_path=None, out_dir,
                score_threshold=0.5, annotations=None, image_ids=None, label_to_category_id=None) -> list[dict]:
    """Detect and segment image files; write an overlay per image and one COCO results file.

    image_paths:          image files (PNG, JPEG, ...) and folders of them (`image_files`).
    checkpoint_dir, config_path, weights_path: the model, as in `load_model`.
    out_dir:              created if needed; gets `<stem>.png` per image and `results.json` for all of them.
    score_threshold:      detections scoring below it are neither drawn nor written (0 keeps all that `predict`
                          returns, which already dropped those below `cfg.box_score_thresh`).
    annotations:          a COCO annotation file (or CocoDataset) listing the images: results.json gets its image
                          ids (`match_image_ids`), and the model's category ids must be its categories.
    image_ids:            the COCO image id of each image (instead of `annotations`); by default its index in
                          `image_paths`, which matches no COCO annotation file.
    label_to_category_id: {label: category id} for results.json; by default the checkpoint's
                          (`MaskRCNNConfig.label_to_category_id`), else the label itself.
    Returns the detections per image (as `model.predict` gives them, filtered by score), in `image_paths`' order.

    Every image is checked to be readable, and named by the annotation file, before the (slow) model runs and
    anything is written (a text file among the images fails with nothing written); files are written atomically.
    """
    image_paths = image_files(image_paths)
    coco = None if annotations is None else read_annotations(annotations)
    if coco is not None:
        if image_ids is not None:
            raise ValueError("give annotations or image_ids, not both")
        image_ids = match_image_ids(image_paths, coco)
    image_ids = list(range(len(image_paths))) if image_ids is None else list(image_ids)
    if len(image_ids) != len(image_paths):
        raise ValueError(f"got {len(image_ids)} image_ids for {len(image_paths)} images")
    for path in image_paths:  # every file is an image we can read, before anything is written
        check_image_file(path)
    overlay_names = _overlay_names(image_paths)
    params, cfg = load_model(checkpoint_dir, config_path, weights_path)
    mapping = cfg.label_to_category_id() if label_to_category_id is None else label_to_category_id
    if coco is not None:
        check_results_categories(mapping, cfg.num_classes, coco)
    os.makedirs(out_dir, exist_ok=True)

    results, coco_results = [], []
    for path, image_id, name in zip(image_paths, image_ids, overlay_names):
        image = read_image(path)  # (3, H, W) float32
        result = keep_scores_above(predict(params, cfg, [image])[0], score_threshold)
        save_overlay(image, result, cfg.class_names, os.path.join(out_dir, name))
        coco_results.extend(detections_to_coco_results(result, image_id, mapping))
        results.append(result)
    write_json(os.path.join(out_dir, "results.json"), coco_results, indent=None)
    return results
