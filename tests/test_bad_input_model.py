"""Details of the model against the paper and torchvision, and the errors a wrong input gets.

1. The config refuses exactly the combinations of switches that cannot run (C4 with the MLP mask head, C4 with an
   odd box_pool_size, the softmax mask loss with a class-agnostic mask); every other one trains.
2. The mask targets follow `pooler_aligned` (detectron2's aligned targets); the default ones are unchanged.
3. The `resnet50_c4` preset samples and proposes what Mask R-CNN §3.1 says for C4.
4. The mask deconvolution is initialised as torchvision's `conv5_mask` (PyTorch's fan-out of a transposed conv).
5. Bad configs, model inputs and COCO files: each error's type and the words of its message.
"""
import itertools
import json

import numpy as np
import pytest
from PIL import Image

from tinymask.box_logic.mask_targets import project_masks_on_boxes
from tinymask.config import MaskRCNNConfig
from tinymask.data.coco import CocoDataset, CocoFormatError
from tinymask.heads.mask_head import DECONV, init_mask_head_params, mask_targets
from tinymask.layers.roi_align import roi_align_forward
from tinymask.model import init_params, predict, train_forward
from tiny import tiny_batch, tiny_config


@pytest.fixture(scope="module")
def tiny_model():
    cfg = tiny_config()
    return cfg, init_params(cfg, dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------------
# 1. Combinations of switches.
# ---------------------------------------------------------------------------------------------------------------

SWITCHES = dict(backbone=["fpn", "c4", "c5"], mask_head=["fcn", "mlp"], roi_extractor=["align", "pool", "warp"],
                roi_mode=["avg", "max"], mask_loss=["sigmoid", "softmax"], class_agnostic_mask=[False, True],
                pooler_aligned=[False, True])


def combination_config(**switches):
    """The tiny config with these switches; C4 with an even box_pool_size (its res5 halves it, the deconv doubles)."""
    return tiny_config(**switches, **({"box_pool_size": 4} if switches.get("backbone") == "c4" else {}))


def cannot_run(s) -> bool:
    return (s["backbone"] == "c4" and s["mask_head"] == "mlp") or (s["mask_loss"] == "softmax"
                                                                    and s["class_agnostic_mask"])


def test_config_refuses_exactly_the_combinations_that_cannot_run():
    refused = 0
    for values in itertools.product(*SWITCHES.values()):
        switches = dict(zip(SWITCHES, values))
        if cannot_run(switches):
            with pytest.raises(ValueError):
                combination_config(**switches)
            refused += 1
        else:
            combination_config(**switches)
    assert refused == 48 + 72 - 12  # C4 with the MLP, softmax with class-agnostic, minus the 12 that are both


def test_every_other_combination_trains():
    """One train_forward per combination of the switches that change the network's structure; roi_mode and
    pooler_aligned (which change only the sampling) take every value with every backbone and head along the way."""
    images, targets = tiny_batch()
    structural = ("backbone", "mask_head", "roi_extractor", "mask_loss", "class_agnostic_mask")
    runs = 0
    for values in itertools.product(*(SWITCHES[k] for k in structural)):
        switches = dict(zip(structural, values), roi_mode=SWITCHES["roi_mode"][runs % 2],
                        pooler_aligned=SWITCHES["pooler_aligned"][(runs // 2) % 2])
        if cannot_run(switches):
            continue
        cfg = combination_config(**switches)
        losses, cache = train_forward(init_params(cfg, dtype=np.float64), cfg, images, targets,
                                      np.random.default_rng(0))
        assert all(np.isfinite(float(v)) for v in losses.values()), switches
        assert cache["outputs"]["mask_logits"].shape[-1] == cfg.mask_resolution, switches
        runs += 1
    assert runs == 72 - 12 - 18 + 3  # 72 structures, minus C4 with the MLP, minus softmax with class-agnostic


def test_c4_with_the_mlp_mask_head_says_why_and_what_to_do():
    with pytest.raises(ValueError, match=r"C4's mask branch deconvolves res5's output.*Table 2\(e\).*"
                                         r"Use mask_head='fcn' with C4"):
        MaskRCNNConfig(backbone="c4", mask_head="mlp", box_pool_size=14)
    with pytest.raises(ValueError, match="mask_head='mlp' does not fit backbone='c4'"):
        MaskRCNNConfig.from_dict({**MaskRCNNConfig.preset("resnet50_c4").to_dict(), "mask_head": "mlp"})
    MaskRCNNConfig(backbone="c5", mask_head="mlp", anchor_sizes=[32, 64])  # C5 keeps FPN's heads: the MLP fits


def test_c4_with_an_odd_box_pool_size_is_refused():
    with pytest.raises(ValueError, match=r"backbone='c4' needs an even box_pool_size, got 7.*Use 14"):
        MaskRCNNConfig(backbone="c4", box_pool_size=7)


def test_softmax_with_a_class_agnostic_mask_says_what_to_do():
    with pytest.raises(ValueError, match="softmax mask loss needs one per class. Use mask_loss='sigmoid'"):
        MaskRCNNConfig(mask_loss="softmax", class_agnostic_mask=True)


# ---------------------------------------------------------------------------------------------------------------
# 2. Mask targets follow pooler_aligned.
# ---------------------------------------------------------------------------------------------------------------

def exact_box_mask(M):
    """A 40x40 mask covering exactly the pixels of the box [4, 6, 4 + 2M, 6 + M] (2 and 1 pixels per target cell)."""
    mask = np.zeros((1, 40, 40), np.uint8)
    mask[0, 6:6 + M, 4:4 + 2 * M] = 1
    return mask, np.array([[4.0, 6.0, 4.0 + 2 * M, 6.0 + M]])


def test_aligned_targets_of_a_mask_covering_exactly_the_box_are_all_ones():
    cfg = tiny_config(pooler_aligned=True)
    M = cfg.mask_resolution
    mask, box = exact_box_mask(M)
    aligned = mask_targets([box], [np.array([0])], [mask], cfg)
    np.testing.assert_array_equal(aligned, np.ones((1, M, M)))
    # Unaligned (torchvision's): every sample reads half a pixel right of and below its place, so the last row and
    # column straddle the mask's edge; inside, the target is still 1.
    unaligned = mask_targets([box], [np.array([0])], [mask], tiny_config())
    np.testing.assert_array_equal(unaligned[0, :-1, :-1], 1.0)
    np.testing.assert_allclose(unaligned[0, -1, :-1], 0.5)
    np.testing.assert_allclose(unaligned[0, :-1, -1], 0.75)  # 2 samples per cell across: (1 + 0.5) / 2
    # RoIPool and RoIWarp round the box and ignore pooler_aligned, and so do their targets.
    for extractor in ("pool", "warp"):
        same = mask_targets([box], [np.array([0])], [mask], tiny_config(pooler_aligned=True, roi_extractor=extractor))
        np.testing.assert_array_equal(same, unaligned)


def test_default_targets_are_unchanged():
    """pooler_aligned=False gives bit for bit what tinymask computed before: RoIAlign with aligned=False."""
    rng = np.random.default_rng(0)
    masks = (rng.random((3, 30, 40)) > 0.5).astype(np.uint8)
    boxes = np.array([[2.3, 4.1, 20.7, 25.2], [0.0, 0.0, 40.0, 30.0], [10.5, 3.2, 39.9, 12.8]])
    idx = np.array([2, 0, 1])
    cfg = tiny_config()
    rois = np.concatenate([idx[:, None].astype(np.float64), boxes], axis=1)
    before, _ = roi_align_forward(masks[:, None].astype(np.float64), rois, output_size=cfg.mask_resolution,
                                  spatial_scale=1.0, sampling_ratio=-1, aligned=False, outside=cfg.pooler_outside)
    np.testing.assert_array_equal(mask_targets([boxes], [idx], [masks], cfg), np.clip(before[:, 0], 0, 1))
    np.testing.assert_array_equal(project_masks_on_boxes(masks, boxes, idx, 8), project_masks_on_boxes(
        masks, boxes, idx, 8, aligned=False))


def test_the_model_trains_on_aligned_targets_when_its_features_are_aligned():
    images, targets = tiny_batch()  # 48x48, kept at that size: the targets' masks are the images'
    for aligned in (False, True):
        cfg = tiny_config(pooler_aligned=aligned)
        _, cache = train_forward(init_params(cfg, dtype=np.float64), cfg, images, targets, np.random.default_rng(0))
        expected = np.concatenate([
            project_masks_on_boxes(t["masks"], r["boxes"][r["labels"] > 0], r["matched_idxs"][r["labels"] > 0],
                                   cfg.mask_resolution, aligned=aligned) for r, t in zip(cache["rois"], targets)])
        np.testing.assert_array_equal(cache["outputs"]["mask_targets"], np.clip(expected, 0, 1))


# ---------------------------------------------------------------------------------------------------------------
# 3. and 5. Presets and the deconvolution's initialisation.
# ---------------------------------------------------------------------------------------------------------------

def test_c4_preset_follows_the_paper():
    """Mask R-CNN §3.1: "N is 64 for the C4 backbone ... and 512 for FPN"; "proposal number is 300 for the C4
    backbone ... and 1000 for FPN"."""
    c4, fpn = MaskRCNNConfig.preset("resnet50_c4"), MaskRCNNConfig.preset("resnet50_fpn")
    assert (c4.box_batch_size_per_image, c4.rpn_post_nms_top_n_test) == (64, 300)
    assert (fpn.box_batch_size_per_image, fpn.rpn_post_nms_top_n_test) == (512, 1000)


def test_deconv_init_uses_pytorchs_fan_out_of_a_transposed_conv():
    """torchvision: kaiming_normal_(conv5_mask.weight, mode="fan_out") with the weight (C_in, C_out, 2, 2), whose
    PyTorch fan-out is C_in·2·2. C4: 2048 -> 256, std sqrt(2 / 8192); FPN: 256 -> 256, std sqrt(2 / 1024)."""
    for preset, c_in in (("resnet50_c4", 2048), ("resnet50_fpn", 256)):
        w = init_mask_head_params(c_in, MaskRCNNConfig.preset(preset), np.random.default_rng(0))[f"{DECONV}.weight"]
        assert w.shape == (c_in, 256, 2, 2)
        np.testing.assert_allclose(w.std(), np.sqrt(2 / (c_in * 4)), rtol=0.01)


# ---------------------------------------------------------------------------------------------------------------
# 5. Bad configs.
# ---------------------------------------------------------------------------------------------------------------

BAD_CONFIGS = [
    ({"colour": 3}, "unknown config field"),
    ({"num_classes": "4"}, r"num_classes must be an int, got '4' \(str\)"),
    ({"num_classes": 3.0}, "num_classes must be an int, got 3.0"),
    ({"pooler_aligned": "false"}, "pooler_aligned must be true or false"),
    ({"num_classes": 3, "class_names": ["background", "cat"]}, "class_names has 2 names for num_classes=3"),
    ({"class_names": [0, 1, 2], "num_classes": 3}, "class_names must be a list of strings"),
    ({"resnet_blocks": [1.5, 1, 1, 1]}, "resnet_blocks must be a list of ints"),
    ({"resnet_blocks": [1, 1, 1]}, "4 positive block counts"),
    ({"backbone": "vgg"}, "backbone must be one of"),
    ({"anchor_sizes": [32, 64]}, "needs 5 anchor_sizes"),
    ({"backbone": "c4", "anchor_sizes": []}, "anchor_sizes must be a non-empty list of positive numbers"),
    ({"aspect_ratios": []}, "aspect_ratios must be a non-empty list of positive numbers"),
    ({"aspect_ratios": [-1.0, 1.0]}, "aspect_ratios must be a non-empty list of positive numbers"),
    ({"anchor_sizes": [0, 64, 128, 256, 512]}, "anchor_sizes must be a non-empty list of positive numbers"),
    ({"image_std": [0.2, 0.0, 0.2]}, "image_std must be 3 positive numbers"),
    ({"image_mean": [0.5, 0.5]}, "image_mean must be 3 numbers"),
    ({"box_coder_weights": [10, 10, 5]}, "box_coder_weights must be 4 positive numbers"),
    ({"mask_head_layers": [256, 0]}, "mask_head_layers must hold positive widths"),
    ({"box_batch_size_per_image": 0}, "box_batch_size_per_image must be positive"),
    ({"num_groups": 0}, "num_groups must be positive"),
    ({"mask_deconv_channels": -1}, "mask_deconv_channels must be >= 0"),
    ({"rpn_fg_iou_thresh": 0.3, "rpn_bg_iou_thresh": 0.7}, "rpn_bg_iou_thresh .0.7. must not exceed"),
    ({"box_positive_fraction": 1.5}, r"box_positive_fraction .* must lie in \[0, 1\]"),
    ({"norm": "group_norm", "num_groups": 7}, "divisible"),
    ({"num_classes": 1}, "num_classes counts the background"),
]


@pytest.mark.parametrize("data,message", BAD_CONFIGS, ids=[m[:30] for _, m in BAD_CONFIGS])
def test_bad_config(tmp_path, data, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        MaskRCNNConfig.load(path)


def test_bad_presets_and_config_files(tmp_path):
    with pytest.raises(ValueError, match="unknown preset 'resnet18'; choose from 'small'"):
        MaskRCNNConfig.preset("resnet18")
    with pytest.raises(ValueError, match="a config must be a JSON object, got list"):
        MaskRCNNConfig.from_dict([1, 2])
    (tmp_path / "broken.json").write_text("{num_classes: 3")
    with pytest.raises(ValueError, match="broken.json is not valid JSON"):
        MaskRCNNConfig.load(tmp_path / "broken.json")


# ---------------------------------------------------------------------------------------------------------------
# 5. Bad model inputs: (change to (images, targets), error type, message words).
# ---------------------------------------------------------------------------------------------------------------

def first(targets, **changes):
    return [dict(targets[0], **changes)] + targets[1:]


BAD_TRAINING_INPUTS = {
    "image of ndim 2": (lambda im, t: ([im[0][0]] + im[1:], t), ValueError, r"shape \(3, H, W\)"),
    "image of 4 channels": (lambda im, t: ([np.concatenate([im[0], im[0][:1]])] + im[1:], t), ValueError,
                            r"shape \(3, H, W\) \(RGB"),
    "uint8 image": (lambda im, t: ([(im[0] * 255).astype(np.uint8)] + im[1:], t), TypeError, "divide|/ 255"),
    "image with NaN": (lambda im, t: ([np.where(im[0] > 0.9, np.nan, im[0])] + im[1:], t), ValueError,
                       "NaN or infinity"),
    "0..255 float image": (lambda im, t: ([im[0] * 255] + im[1:], t), ValueError, r"values in \[0, 1\].*by 255"),
    "image as a list": (lambda im, t: ([im[0].tolist()] + im[1:], t), TypeError, "must be a NumPy array"),
    "no images": (lambda im, t: ([], []), ValueError, "empty batch"),
    "targets missing": (lambda im, t: (im, t[:1]), ValueError, "2 images but 1 targets"),
    "target not a dict": (lambda im, t: (im, [list(t[0].values())] + t[1:]), TypeError, "must be a dict"),
    "no masks": (lambda im, t: (im, [{k: v for k, v in t[0].items() if k != "masks"}] + t[1:]), ValueError,
                 "has no 'masks'"),
    "boxes as a list": (lambda im, t: (im, first(t, boxes=t[0]["boxes"].tolist())), TypeError,
                        r"\['boxes'\] must be a NumPy array"),
    "int boxes": (lambda im, t: (im, first(t, boxes=t[0]["boxes"].astype(int))), TypeError, "must be float"),
    "boxes of shape (G, 5)": (lambda im, t: (im, first(t, boxes=np.zeros((2, 5)))), ValueError,
                              r"shape \(G, 4\)"),
    "box outside the image": (lambda im, t: (im, first(t, boxes=t[0]["boxes"] + [0, 0, 10, 0])), ValueError,
                              "box 1 .* lies outside the image"),
    "inverted box": (lambda im, t: (im, first(t, boxes=t[0]["boxes"][:, [2, 1, 0, 3]])), ValueError, "degenerate"),
    "box with NaN": (lambda im, t: (im, first(t, boxes=t[0]["boxes"] * [1, np.nan, 1, 1])), ValueError,
                     "NaN or infinity"),
    "label out of range": (lambda im, t: (im, first(t, labels=np.array([1, 3]))), ValueError, r"lie in 1..2"),
    "label 0": (lambda im, t: (im, first(t, labels=np.array([0, 1]))), ValueError, "0 is the background"),
    "float labels": (lambda im, t: (im, first(t, labels=np.array([1.0, 2.0]))), ValueError, "2 integers"),
    "masks of the wrong size": (lambda im, t: (im, first(t, masks=t[0]["masks"][:, :40])), ValueError,
                                "one mask per box, the image's size"),
    "masks of 0 and 255": (lambda im, t: (im, first(t, masks=t[0]["masks"] * 255)), ValueError,
                           r"must be binary.*\[255\].*masks > 0"),
    "soft masks": (lambda im, t: (im, first(t, masks=t[0]["masks"] * 0.5)), ValueError, "must be binary"),
}


@pytest.mark.parametrize("case", list(BAD_TRAINING_INPUTS))
def test_bad_training_input(tiny_model, case):
    change, error, message = BAD_TRAINING_INPUTS[case]
    cfg, params = tiny_model
    images, targets = change(*tiny_batch())
    with pytest.raises(error, match=message):
        train_forward(params, cfg, images, targets, np.random.default_rng(0))


def test_empty_targets_are_valid_and_bool_masks_too(tiny_model):
    cfg, params = tiny_model
    images, targets = tiny_batch()
    empty = {"boxes": np.zeros((0, 4)), "labels": np.zeros(0, np.int64), "masks": np.zeros((0, 48, 48), np.uint8)}
    losses, _ = train_forward(params, cfg, images[1:], [empty], np.random.default_rng(0))
    assert float(losses["loss_mask"]) == 0.0 and np.isfinite(float(losses["loss_objectness"]))
    as_bool = [dict(t, masks=t["masks"].astype(bool)) for t in targets]
    a, _ = train_forward(params, cfg, images, targets, np.random.default_rng(0))
    b, _ = train_forward(params, cfg, images, as_bool, np.random.default_rng(0))
    assert a == b


@pytest.mark.parametrize("images,error,message", [
    ([], ValueError, "empty list of images"),
    ([np.zeros((1, 3, 48, 48))], ValueError, r"shape \(3, H, W\)"),
    ([np.full((3, 8, 8), 2.0)], ValueError, r"values in \[0, 1\], got \[2, 2\]"),
])
def test_bad_inference_input(tiny_model, images, error, message):
    cfg, params = tiny_model
    with pytest.raises(error, match=message):
        predict(params, cfg, images)


# ---------------------------------------------------------------------------------------------------------------
# 5. Bad COCO files: (edit of a valid file, message words). Every message names the file and the record.
# ---------------------------------------------------------------------------------------------------------------

def coco_file(tmp_path, edit=None):
    data = {"images": [{"id": 1, "file_name": "a.png", "width": 6, "height": 4}],
            "annotations": [{"id": 7, "image_id": 1, "category_id": 5, "bbox": [1, 1, 3, 2], "iscrowd": 0,
                             "segmentation": [[1, 1, 4, 1, 4, 3, 1, 3]]}],
            "categories": [{"id": 5, "name": "box"}]}
    if edit:
        edit(data)
    Image.fromarray(np.zeros((4, 6, 3), np.uint8)).save(tmp_path / "a.png")
    path = tmp_path / "instances.json"
    path.write_text(json.dumps(data))
    return path


def annotation(**changes):
    return lambda d: d["annotations"][0].update(changes)


BAD_COCO = {
    "images not a list": (lambda d: d.update(images={"id": 1}), "'images': must be a list, got dict"),
    "no categories": (lambda d: d.pop("categories"), "the top level: missing key.*'categories'"),
    "annotation without segmentation": (lambda d: d["annotations"][0].pop("segmentation"),
                                        r"annotations\[0\] \(id=7\): missing key\(s\) 'segmentation'"),
    "unknown category id": (annotation(category_id=6), "category_id 6 names no category"),
    "unknown image id": (annotation(image_id=2), "image_id 2 names no image"),
    "polygon of two points": (annotation(segmentation=[[1, 1, 4, 1]]), r"has 2 point\(s\); a polygon needs at least 3"),
    "polygon of odd length": (annotation(segmentation=[[1, 1, 4, 1, 4]]), "odd number of coordinates"),
    "no polygons": (annotation(segmentation=[]), "empty list of polygons"),
    "polygon with infinity": (annotation(segmentation=[[1, 1, 4, 1, float("inf"), 3]]), "polygon 0 contains NaN"),
    "bbox with NaN": (annotation(bbox=[1, float("nan"), 3, 2]), "bbox .* contains NaN or infinity"),
    "bbox of 3 numbers": (annotation(bbox=[1, 1, 3]), r"bbox must be a list of 4 numbers"),
    "iscrowd a string": (annotation(iscrowd="no"), "iscrowd must be 0 or 1, got 'no'"),
    "file_name a number": (lambda d: d["images"][0].update(file_name=3), "file_name must be a non-empty string"),
    "RLE of the wrong size": (annotation(segmentation={"size": [6, 4], "counts": [24]}), r"RLE size \[6, 4\]"),
    "duplicate annotation id": (lambda d: d["annotations"].append(dict(d["annotations"][0])),
                                "duplicate annotation id 7"),
}


@pytest.mark.parametrize("case", list(BAD_COCO))
def test_bad_coco_file(tmp_path, case):
    edit, message = BAD_COCO[case]
    path = coco_file(tmp_path, edit)
    with pytest.raises(CocoFormatError, match=message) as info:
        CocoDataset(path, tmp_path)
    assert "instances.json" in str(info.value)


def test_coco_file_that_is_not_json_or_whose_image_is_missing_or_wrong(tmp_path):
    (tmp_path / "broken.json").write_text('{"images": [')
    with pytest.raises(CocoFormatError, match="broken.json: cannot read the annotation file"):
        CocoDataset(tmp_path / "broken.json", tmp_path)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(CocoFormatError, match="list.json: the top level must be a JSON object, got list"):
        CocoDataset(tmp_path / "list.json", tmp_path)
    dataset = CocoDataset(coco_file(tmp_path), tmp_path)
    assert dataset[0]["masks"].sum() == 6  # the valid file reads
    Image.fromarray(np.zeros((5, 6, 3), np.uint8)).save(tmp_path / "a.png")
    with pytest.raises(CocoFormatError, match=r"images\[0\] \(id=1\): image file .*a.png' is 6x5 .* says 6x4"):
        dataset[0]
    (tmp_path / "a.png").unlink()
    with pytest.raises(CocoFormatError, match=r"images\[0\] \(id=1\): cannot read image file .*a.png"):
        dataset[0]
