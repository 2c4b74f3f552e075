"""The tiny model that the model, training, evaluation, CLI and inference tests share.

Every component is present with a few channels each, so a float64 central-difference check of the whole model
runs in seconds; 48x48 images.
"""
import numpy as np

from tinymask.config import MaskRCNNConfig

SHAPES_CLASSES = ["background", "square", "circle", "triangle"]


def tiny_config(**overrides) -> MaskRCNNConfig:
    base = dict(num_classes=3, resnet_blocks=[1, 1, 1, 1], stem_channels=4, base_channels=2, width_per_group=64,
                norm="group_norm", num_groups=2, fpn_channels=4, anchor_sizes=[8, 16, 32, 64, 128],
                rpn_batch_size_per_image=32, rpn_pre_nms_top_n_train=50, rpn_post_nms_top_n_train=20,
                rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=20, box_batch_size_per_image=8,
                box_head_representation=6, box_pool_size=3, mask_pool_size=4, mask_head_layers=[4, 4],
                mask_mlp_hidden=6, min_size=48, max_size=48)
    base.update(overrides)
    return MaskRCNNConfig(**base)


def tiny_shapes_config(**overrides) -> MaskRCNNConfig:
    """The tiny model with the shapes data set's four classes (background, square, circle, triangle)."""
    return tiny_config(**{"num_classes": 4, "class_names": SHAPES_CLASSES, **overrides})


def tiny_batch(dtype=np.float64):
    """Two 48×48 images, three instances of classes 1 and 2 (the tiny model's K = 3 includes background)."""
    rng = np.random.default_rng(3)
    images, targets = [], []
    for boxes, labels in (([[4, 6, 30, 28], [20, 18, 44, 46]], [1, 2]), ([[10, 8, 40, 30]], [2])):
        image = rng.random((3, 48, 48)).astype(dtype)
        masks = np.zeros((len(boxes), 48, 48), np.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes):
            m[y0 + 2:y1 - 2, x0 + 1:x1 - 3] = 1
        images.append(image)
        targets.append({"boxes": np.array(boxes, dtype), "labels": np.array(labels), "masks": masks})
    return images, targets
