"""Model configuration as data: one dataclass, saved to and loaded from JSON.

Every default is torchvision's `maskrcnn_resnet50_fpn` (which follows the paper, Mask R-CNN §3.1 "Implementation
Details") unless its comment says otherwise; the comment names the source. A model of any width and depth is
described by such a file:

    cfg = MaskRCNNConfig.preset("small")
    cfg.save("small.json")
    cfg = MaskRCNNConfig.load("small.json")

Presets: `small` (a narrow GroupNorm ResNet-FPN that trains from scratch on a CPU), `resnet50_fpn` (torchvision's
`maskrcnn_resnet50_fpn`), `resnet50_c4` (the paper's ResNet-50-C4, Fig. 4 left), `resnext101_32x8d_fpn` (Table 2a's
best backbone, ResNeXt-101-FPN: torchvision's `resnext101_32x8d` body under the FPN).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

import numpy as np

from tinymask._files import write_json

BACKBONES = ("fpn", "c4", "c5")
NORMS = ("frozen_bn", "group_norm")
ROI_EXTRACTORS = ("align", "pool", "warp")
ROI_MODES = ("avg", "max")
MASK_HEADS = ("fcn", "mlp")
MASK_LOSSES = ("sigmoid", "softmax")

# Range checks of `MaskRCNNConfig.validate`, by field.
POSITIVE = ("min_size", "max_size", "size_divisible", "box_pool_size", "mask_pool_size", "fpn_channels",
            "fpn_canonical_size", "stem_channels", "base_channels", "width_per_group", "groups", "num_groups",
            "rpn_batch_size_per_image", "rpn_pre_nms_top_n_train", "rpn_pre_nms_top_n_test", "rpn_post_nms_top_n_train",
            "rpn_post_nms_top_n_test", "box_batch_size_per_image", "box_detections_per_img", "box_head_representation",
            "mask_mlp_hidden")
NON_NEGATIVE = ("mask_deconv_channels", "norm_eps", "rpn_box_beta", "box_box_beta")
UNIT_INTERVAL = ("rpn_fg_iou_thresh", "rpn_bg_iou_thresh", "rpn_positive_fraction", "rpn_nms_thresh", "rpn_score_thresh",
                 "box_fg_iou_thresh", "box_bg_iou_thresh", "box_positive_fraction", "box_score_thresh", "box_nms_thresh")
LIST_ITEMS = {"class_names": "str", "category_ids": "int", "resnet_blocks": "int", "anchor_sizes": "float",
              "aspect_ratios": "float", "box_coder_weights": "float", "mask_head_layers": "int", "image_mean": "float",
              "image_std": "float"}
KIND_WORDS = {"int": "an int", "float": "a number", "bool": "true or false", "str": "a string", "list": "a list"}
PLURAL_WORDS = {"int": "ints", "float": "numbers", "str": "strings"}


def _is_a(value, kind: str) -> bool:
    """Whether `value` is of the config's kind "int", "float" (any real number), "bool", "str" or "list", or
    "list | None"; a bool is not a number here (True would pass as 1)."""
    if kind.endswith(" | None"):
        return value is None or _is_a(value, kind[:-len(" | None")])
    if kind == "bool":
        return isinstance(value, (bool, np.bool_))
    if kind in ("int", "float"):
        if isinstance(value, (bool, np.bool_)):
            return False
        return isinstance(value, (int, np.integer) if kind == "int" else (int, float, np.integer, np.floating))
    return isinstance(value, {"str": str, "list": (list, tuple)}[kind])


@dataclass
class MaskRCNNConfig:
    # --- classes -------------------------------------------------------------------------------------------------
    num_classes: int = 91  # COCO's 90 category ids + background (torchvision); the shapes data set uses 4
    class_names: list = field(default_factory=list)  # index 0 = "background"; empty = unnamed
    category_ids: list | None = None  # the data set's category id of each label 1..K-1 (COCO's ids have gaps), set
    #                                   by `tinymask train` from the data; None: label == category id (the shapes
    #                                   data; torchvision's COCO weights, whose 91 labels are COCO's ids)

    # --- backbone (ResNet, He et al. 2016; FPN, Lin et al. 2017) --------------------------------------------------
    backbone: str = "fpn"  # "fpn" (Mask R-CNN Fig. 4 right) or "c4" (Fig. 4 left: stage 5 is the RoI head) or
    #                        "c5" (Table 2d: one stride-32 map, C5, with Fig. 4 right's heads)
    resnet_blocks: list = field(default_factory=lambda: [3, 4, 6, 3])  # ResNet-50 (ResNet Table 1); 101: [3,4,23,3]
    stem_channels: int = 64  # ResNet Table 1, conv1
    base_channels: int = 64  # planes of stage C2, doubled per stage; a block outputs 4 x planes (ResNet Table 1)
    width_per_group: int = 64  # inner width = planes * width_per_group / 64 * groups (torchvision)
    groups: int = 1  # ResNeXt cardinality (Xie et al. 2017): the blocks' 3x3 convs are grouped; 1 = ResNet. Not num_groups
    norm: str = "frozen_bn"  # torchvision's FrozenBatchNorm2d; "group_norm" to train from scratch (Wu & He 2018)
    num_groups: int = 32  # GN paper's default
    norm_eps: float = 1e-5  # torchvision FrozenBatchNorm2d / GroupNorm default
    stride_in_1x1: bool = False  # torchvision: stride in the 3x3; True = the original MSRA (Caffe) weights
    fpn_channels: int = 256  # FPN §3 ("d = 256")
    fpn_canonical_size: int = 224  # FPN Eq. 1: a RoI of side 224 (ImageNet's) maps to level fpn_canonical_level
    fpn_canonical_level: int = 4  # FPN Eq. 1: k0 = 4

    # --- anchors (Faster R-CNN §3.1; FPN §4.1: one size per level, three ratios) ---------------------------------
    anchor_sizes: list = field(default_factory=lambda: [32, 64, 128, 256, 512])  # P2..P6 (FPN §4.1)
    aspect_ratios: list = field(default_factory=lambda: [0.5, 1.0, 2.0])  # height / width (FPN §4.1)

    # --- RPN (Faster R-CNN §3.1.2 and §3.3; torchvision defaults) ------------------------------------------------
    rpn_fg_iou_thresh: float = 0.7  # Faster R-CNN §3.1.2
    rpn_bg_iou_thresh: float = 0.3  # Faster R-CNN §3.1.2
    rpn_batch_size_per_image: int = 256  # Faster R-CNN §3.1.3
    rpn_positive_fraction: float = 0.5  # Faster R-CNN §3.1.3 ("up to 1:1")
    rpn_pre_nms_top_n_train: int = 2000  # per level (torchvision)
    rpn_pre_nms_top_n_test: int = 1000  # per level (torchvision)
    rpn_post_nms_top_n_train: int = 2000  # per image (torchvision; FPN §5.1 uses 2000)
    rpn_post_nms_top_n_test: int = 1000  # per image (Mask R-CNN §3.1: 1000 proposals for FPN)
    rpn_nms_thresh: float = 0.7  # Faster R-CNN §3.3
    rpn_score_thresh: float = 0.0  # torchvision
    rpn_box_beta: float = 1 / 9  # smooth-L1 beta of the RPN box loss (torchvision)

    # --- RoI heads (Mask R-CNN §3.1 "Training") ------------------------------------------------------------------
    box_fg_iou_thresh: float = 0.5  # "positive if it has IoU with a ground-truth box of at least 0.5"
    box_bg_iou_thresh: float = 0.5  # everything below is background (torchvision)
    box_batch_size_per_image: int = 512  # Mask R-CNN §3.1: "N = 512 for FPN"
    box_positive_fraction: float = 0.25  # Mask R-CNN §3.1: "ratio of 1:3 of positive to negatives"
    box_coder_weights: list = field(default_factory=lambda: [10.0, 10.0, 5.0, 5.0])  # torchvision / Detectron
    box_box_beta: float = 1 / 9  # smooth-L1 beta of the head box loss (torchvision)
    box_score_thresh: float = 0.05  # torchvision
    box_nms_thresh: float = 0.5  # torchvision
    box_detections_per_img: int = 100  # Mask R-CNN §3.1 "Inference": top 100
    box_head_representation: int = 1024  # FPN §4.2: two 1024-d fc layers
    box_pool_size: int = 7  # 7x7 RoI features for the box head (Fig. 4)
    mask_pool_size: int = 14  # 14x14 RoI features for the mask head (Fig. 4); masks are 2x this (28x28)
    pooler_sampling_ratio: int = 2  # RoIAlign samples per bin side (torchvision); <= 0: adaptive
    pooler_aligned: bool = False  # torchvision's default; detectron2 uses True (half-pixel shift). RoIAlign only
    #                               (RoIPool and RoIWarp round the box); the mask targets follow it
    pooler_outside: str = "zero"  # a bilinear sample beyond one cell outside the map reads 0 (torchvision's C++/CUDA
    #                               kernels, detectron2); "edge": the edge value (torchvision's pure-Python roi_align);
    #                               the RoI features and the mask targets (both RoIAlign) follow it
    roi_extractor: str = "align"  # Table 2(c): "align" (RoIAlign), "pool" (RoIPool), "warp" (RoIWarp)
    roi_mode: str = "avg"  # Table 2(c): "avg" or "max" pooling of the bilinear samples (RoIPool: always max)

    # --- mask head (Mask R-CNN §3, Fig. 4; Table 2) ----------------------------------------------------------------
    mask_head: str = "fcn"  # Table 2(e): "fcn" (4 convs + deconv) or "mlp" (fully connected; FPN and C5 only)
    mask_head_layers: list = field(default_factory=lambda: [256, 256, 256, 256])  # Fig. 4: four 3x3 convs, 256 ch
    mask_deconv_channels: int = 0  # output width of the 2x2 deconv; 0 = the last conv's width (Fig. 4: 256); C4: 256
    mask_mlp_hidden: int = 1024  # Table 2(e) MLP: fc 1024 -> fc 1024 -> fc 28*28*K (width of its hidden layers)
    mask_loss: str = "sigmoid"  # Table 2(b): per-class "sigmoid" (the paper's choice) or multinomial "softmax"
    class_agnostic_mask: bool = False  # Table 2(b) / §4: one mask for all classes

    # --- image preprocessing (Mask R-CNN §3.1; torchvision GeneralizedRCNNTransform) -----------------------------
    min_size: int = 800  # shorter side (Mask R-CNN §3.1)
    max_size: int = 1333  # longer side cap (torchvision / Detectron)
    image_mean: list = field(default_factory=lambda: [0.485, 0.456, 0.406])  # ImageNet RGB mean (torchvision)
    image_std: list = field(default_factory=lambda: [0.229, 0.224, 0.225])  # ImageNet RGB std (torchvision)
    size_divisible: int = 32  # pad the batch to a multiple of the coarsest stride

    # ---------------------------------------------------------------------------------------------------------------
    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """Raise a ValueError naming the field for any value of the wrong type, out of its allowed set or range, or
        in a combination of switches that cannot run; each message says why and what to change."""
        self._check_types()
        choices = {"pooler_outside": ("zero", "edge"), "backbone": BACKBONES, "norm": NORMS,
                   "roi_extractor": ROI_EXTRACTORS, "roi_mode": ROI_MODES, "mask_head": MASK_HEADS,
                   "mask_loss": MASK_LOSSES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"config field {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes counts the background too and must be >= 2, got {self.num_classes}")
        if self.class_names and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} names for num_classes={self.num_classes} "
                             f"(index 0 is the background): give one name per class or none")
        self._check_category_ids()
        if len(self.resnet_blocks) != 4 or min(self.resnet_blocks) < 1:
            raise ValueError(f"resnet_blocks must be 4 positive block counts (C2..C5), got {self.resnet_blocks}")
        for name in POSITIVE:
            if getattr(self, name) < 1:
                raise ValueError(f"config field {name} must be positive, got {getattr(self, name)}")
        for name in NON_NEGATIVE:
            if getattr(self, name) < 0:
                raise ValueError(f"config field {name} must be >= 0, got {getattr(self, name)}")
        for name in UNIT_INTERVAL:
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"config field {name} is an IoU, a fraction or a probability and must lie in "
                                 f"[0, 1], got {getattr(self, name)}")
        for fg, bg in (("rpn_fg_iou_thresh", "rpn_bg_iou_thresh"), ("box_fg_iou_thresh", "box_bg_iou_thresh")):
            if getattr(self, bg) > getattr(self, fg):
                raise ValueError(f"config field {bg} ({getattr(self, bg)}) must not exceed {fg} "
                                 f"({getattr(self, fg)}): a box cannot be background above the foreground IoU")
        for name, count in (("anchor_sizes", 0), ("aspect_ratios", 0), ("box_coder_weights", 4), ("image_std", 3)):
            values = getattr(self, name)
            if not values or (count and len(values) != count) or min(values) <= 0:
                what = f"{count} positive numbers" if count else "a non-empty list of positive numbers"
                raise ValueError(f"config field {name} must be {what}, got {list(values)}")
        if len(self.image_mean) != 3:
            raise ValueError(f"config field image_mean must be 3 numbers (R, G, B), got {list(self.image_mean)}")
        if self.mask_head_layers and min(self.mask_head_layers) < 1:
            raise ValueError(f"config field mask_head_layers must hold positive widths (or be empty: no convs), got "
                             f"{list(self.mask_head_layers)}")
        if self.backbone == "fpn" and len(self.anchor_sizes) != 5:
            raise ValueError(f"the FPN backbone has 5 levels (P2..P6) and needs 5 anchor_sizes, got {self.anchor_sizes}")
        if self.norm == "group_norm":
            widths = [self.stem_channels] + [w for i in range(4) for w in (
                int(self.base_channels * 2 ** i * self.width_per_group / 64) * self.groups, self.base_channels * 2 ** i * 4)]
            bad = [w for w in widths if w % self.num_groups]
            if bad:
                raise ValueError(f"group norm with num_groups={self.num_groups} needs every width divisible by it; "
                                 f"these are not: {sorted(set(bad))}")
        self._check_combinations()

    def _check_types(self) -> None:
        """Each field must hold its declared type, as JSON gives it: an int where an int is declared (a float
        would break array shapes later), a real bool (the string "false" would be true), lists of numbers."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not _is_a(value, f.type):  # f.type: "int", "float", "bool", "str", "list" or "list | None"
                words = KIND_WORDS[f.type.replace(" | None", "")] + (" or null" if "None" in f.type else "")
                raise ValueError(f"config field {f.name} must be {words}, got {value!r} ({type(value).__name__})")
        for name, kind in LIST_ITEMS.items():
            if not all(_is_a(v, kind) for v in getattr(self, name) or ()):
                raise ValueError(f"config field {name} must be a list of {PLURAL_WORDS[kind]}, got "
                                 f"{getattr(self, name)!r}")

    def _check_category_ids(self) -> None:
        ids = self.category_ids
        if ids is None:
            return
        if len(ids) != self.num_classes - 1:
            raise ValueError(f"config field category_ids has {len(ids)} ids for num_classes={self.num_classes}: it "
                             f"needs one per label 1..{self.num_classes - 1} (the background has none), or null")
        repeated = sorted({int(i) for i in ids if list(ids).count(i) > 1})
        if repeated:
            raise ValueError(f"config field category_ids repeats {repeated}: two labels cannot stand for the same "
                             f"category")

    def label_to_category_id(self) -> dict | None:
        """{label: category id} for labels 1..K-1 from `category_ids`; None when the label is the category id."""
        return None if self.category_ids is None else {k + 1: int(c) for k, c in enumerate(self.category_ids)}

    def _check_combinations(self) -> None:
        """Refuse the combinations of switches that cannot run. Every other combination of backbone, mask_head,
        roi_extractor, roi_mode, mask_loss, class_agnostic_mask and pooler_aligned trains
        (tests/test_bad_input_model.py runs each); roi_mode is ignored by RoIPool (always max) and pooler_aligned
        by RoIPool and RoIWarp (they round the box instead), and the mask targets follow what the features do."""
        if self.backbone == "c4" and self.mask_head == "mlp":
            raise ValueError("mask_head='mlp' does not fit backbone='c4': C4's mask branch deconvolves res5's output "
                             "(Fig. 4 left), while the MLP of Table 2(e) is a variant of the FPN head, replacing its "
                             "convs on 14x14 RoIAlign features (Fig. 4 right). Use mask_head='fcn' with C4, or the "
                             "MLP with backbone='fpn' or 'c5'")
        if self.backbone == "c4" and self.box_pool_size % 2:
            raise ValueError(f"backbone='c4' needs an even box_pool_size, got {self.box_pool_size}: res5 halves the "
                             f"RoI features (stride 2) and the mask deconvolution doubles them back, so an odd size "
                             f"would give masks one pixel larger than their targets. Use 14 (Fig. 4 left) or another "
                             f"even size")
        if self.mask_loss == "softmax" and self.class_agnostic_mask:
            raise ValueError("a class-agnostic mask has one channel: the softmax mask loss needs one per class. Use "
                             "mask_loss='sigmoid' with class_agnostic_mask=True (Table 2b), or the softmax with "
                             "class_agnostic_mask=False")

    @property
    def mask_resolution(self) -> int:
        """Side of the predicted mask (Fig. 4): FPN: the 2x deconv doubles the 14x14 RoI features to 28x28;
        C4: res5 halves the 14x14 RoI features to 7x7 and the deconv doubles them back to 14x14. C5 is like FPN."""
        return self.box_pool_size if self.backbone == "c4" else 2 * self.mask_pool_size

    # --- presets ---------------------------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str) -> "MaskRCNNConfig":
        """`small`, `resnet50_fpn`, `resnet50_c4`, `resnext101_32x8d_fpn` (see the module docstring)."""
        if name == "resnet50_fpn":
            return cls()
        if name == "resnext101_32x8d_fpn":
            # Mask R-CNN Table 2(a)'s best backbone, ResNeXt-101-FPN: ResNet-101's blocks (ResNet Table 1) with
            # cardinality 32 and 8 channels per path (ResNeXt Sec. 5.1, "32×8d"); torchvision's `resnext101_32x8d`
            # shapes and names, so its ImageNet weights load. Everything else as resnet50_fpn (frozen BN, FPN 256).
            return cls(resnet_blocks=[3, 4, 23, 3], groups=32, width_per_group=8)
        if name == "resnet50_c4":
            # Mask R-CNN Fig. 4 left: C4 features (stride 16), stage 5 on 14x14 RoIs as the box head, 2048-d;
            # the mask branch deconvolves res5's 7x7 output to 14x14 masks. One level: 15 anchors per cell
            # (Faster R-CNN §3.1: sizes 32..512, three ratios). Mask R-CNN §3.1 "Implementation Details": "N is 64
            # for the C4 backbone" RoIs per image in training, and at test time "the proposal number is 300 for the
            # C4 backbone" (Detectron's C4 configs use 512 and 1000 instead). Pre-NMS top 12000 / 6000 and 2000
            # proposals in training: Detectron's C4 settings (the paper gives none).
            return cls(backbone="c4", anchor_sizes=[32, 64, 128, 256, 512], box_pool_size=14, mask_pool_size=14,
                       mask_head_layers=[], mask_deconv_channels=256, box_batch_size_per_image=64,
                       rpn_pre_nms_top_n_train=12000, rpn_pre_nms_top_n_test=6000,
                       rpn_post_nms_top_n_train=2000, rpn_post_nms_top_n_test=300)
        if name == "small":
            # tinymask's own CPU preset for the 128x128 shapes data set: a narrow GroupNorm ResNet (one block per
            # stage) trained from scratch, a 64-channel FPN, fewer proposals and RoIs. Anchor sizes halved since
            # the objects are small (8..64 pixels in a 128-pixel image kept at its size).
            return cls(num_classes=4, class_names=["background", "square", "circle", "triangle"],
                       resnet_blocks=[1, 1, 1, 1], stem_channels=32, base_channels=16, width_per_group=64,
                       norm="group_norm", num_groups=8, fpn_channels=64,
                       anchor_sizes=[16, 32, 64, 128, 256],
                       rpn_batch_size_per_image=128, rpn_pre_nms_top_n_train=600, rpn_pre_nms_top_n_test=300,
                       rpn_post_nms_top_n_train=300, rpn_post_nms_top_n_test=150,
                       box_batch_size_per_image=64, box_head_representation=256,
                       mask_head_layers=[64, 64, 64, 64], mask_mlp_hidden=256,
                       min_size=128, max_size=128, box_detections_per_img=20)
        raise ValueError(f"unknown preset {name!r}; choose from 'small', 'resnet50_fpn', 'resnet50_c4', "
                         f"'resnext101_32x8d_fpn'")

    # --- JSON ------------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "MaskRCNNConfig":
        if not isinstance(data, dict):
            raise ValueError(f"{source}: a config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown config field(s) {unknown}; known fields are listed in "
                             f"tinymask/config.py")
        return cls(**data)

    def save(self, path) -> None:
        """Write the config as JSON, atomically (a temporary file renamed into place)."""
        write_json(path, self.to_dict(), indent=2)

    @classmethod
    def load(cls, path) -> "MaskRCNNConfig":
        path = os.fspath(path)
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"config file not found: {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        return cls.from_dict(data, source=path)
