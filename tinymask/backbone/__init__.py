"""The backbone (Mask R-CNN Sec. 3, Fig. 4): ResNet stages C2..C5 (`resnet.py`) and the FPN on top (`fpn.py`).

- C4 backbone: `resnet_forward` with `ResNetConfig(return_stages=("C4",))`; the box head later runs stage 5 on RoI
  features with `resnet_stage_forward(params, prefix, rois_features, cfg, 5)`.
- ResNet-FPN backbone: `resnet_fpn_forward` -> {"P2", ..., "P6"}.
"""
from tinymask.backbone.fpn import (TORCHVISION_NAMES, fpn_backward, fpn_forward, fpn_param_shapes, init_fpn_params,
                                   resnet_fpn_backward, resnet_fpn_forward)
from tinymask.backbone.resnet import (DEPTH_BLOCKS, ResNetConfig, bottleneck_backward, bottleneck_forward,
                                      init_resnet_params, resnet_backward, resnet_forward, resnet_param_shapes,
                                      resnet_stage_backward, resnet_stage_forward, stem_backward, stem_forward)
