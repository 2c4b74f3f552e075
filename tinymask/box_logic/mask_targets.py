"""Mask-branch training targets: each positive proposal's ground-truth mask, cropped and resized to M×M.

Paper: He et al., *Mask R-CNN*, ICCV 2017, §3.1 "Training": "The mask target is the intersection between an RoI and
its associated ground-truth mask", and the mask loss is defined on M×M (28×28 in the FPN head). The target is
RoIAlign of the binary gt mask (as a float image, one channel) over the proposal: output M×M, spatial_scale 1,
adaptive sampling (`sampling_ratio=-1`), and `aligned` as the RoI features are pooled (`pooler_aligned`). So a target
is a soft mask in [0, 1] (values between 0 and 1 near the object's edge).

`aligned` (see `layers/roi_align.py`): with `aligned=False` (torchvision's `project_masks_on_boxes`, and tinymask's
default) the box's coordinates are used as array indices, and index i is the centre of pixel i, at i + 0.5 in
continuous coordinates: every sample reads the mask half a pixel to the right of and below where it lies in the box,
and a mask covering exactly the box's pixels gives a target whose last row and column read half outside the mask
(0.5, not 1). With `aligned=True` the box is first shifted by −0.5 pixel, the samples fall on the
cell centres, and that mask gives all ones when the box side is a whole number of pixels per cell; detectron2 makes
its targets this way (`BitMasks.crop_and_resize`: `ROIAlign((M, M), 1.0, 0, aligned=True)`, then binarised at 0.5,
which tinymask does not do: its targets stay soft, as torchvision's). The features and the targets then use the same
convention: `mask_targets` (tinymask/heads/mask_head.py) passes `aligned=True` exactly when the RoI features are
pooled with `aligned=True` (`pooler_aligned` with `roi_extractor="align"`; RoIPool and RoIWarp round the box instead
and ignore it), so that a pixel of the target and a cell of the features describe the same place of the image.

Coordinates: proposals `(x0, y0, x1, y1)` in image pixels, the same image the gt masks are drawn on. No gradient:
targets are constants of the loss.

`outside`: what a sample more than one pixel beyond the mask reads; see `layers/roi_align.py`. It only matters for
proposals reaching past the image border (training proposals are clipped to the image, so it never does there).
"zero" is what torchvision's compiled kernels give; "edge" is its pure-Python path, which produced our reference data.
"""
from __future__ import annotations

import numpy as np

from tinymask.layers.roi_align import roi_align_forward


def project_masks_on_boxes(gt_masks, boxes, matched_idxs, M, *, outside="zero", aligned=False):
    """gt_masks (G, H, W) (bool, int or float), boxes (P, 4), matched_idxs (P,) in [0, G) -> targets (P, M, M).

    Proposal p's target comes from gt mask `matched_idxs[p]`. The targets are float: the boxes' dtype if it is
    float32 or float64, else float64. `aligned`: RoIAlign's half-pixel shift (module docstring); False is
    torchvision's targets, True detectron2's.
    """
    gt_masks = np.asarray(gt_masks)
    boxes = np.asarray(boxes)
    matched_idxs = np.asarray(matched_idxs)
    if gt_masks.ndim != 3:
        raise ValueError(f"gt_masks must have shape (G, H, W), got shape {gt_masks.shape}")
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (P, 4), rows (x0, y0, x1, y1), got shape {boxes.shape}")
    if matched_idxs.shape != (boxes.shape[0],):
        raise ValueError(f"matched_idxs must have shape (P,) = ({boxes.shape[0]},), one per box, "
                         f"got shape {matched_idxs.shape}")
    if not isinstance(aligned, (bool, np.bool_)):
        raise TypeError(f"aligned must be True or False, got {aligned!r}")
    if not isinstance(M, (int, np.integer)) or M < 1:
        raise ValueError(f"M (the target size) must be a positive int, got {M!r}")
    if matched_idxs.size and not np.issubdtype(matched_idxs.dtype, np.integer):
        raise TypeError(f"matched_idxs must be integers, got dtype {matched_idxs.dtype}")
    G = gt_masks.shape[0]
    bad = np.flatnonzero((matched_idxs < 0) | (matched_idxs >= G))
    if bad.size:
        p = bad[0]
        raise ValueError(f"matched_idxs[{p}] = {matched_idxs[p]} is out of range: there are {G} gt masks")
    dtype = boxes.dtype if boxes.dtype in (np.float32, np.float64) else np.float64
    masks = gt_masks[:, None].astype(dtype)  # (G, 1, H, W): each gt mask is a one-channel "image" of the batch
    rois = np.concatenate([matched_idxs[:, None].astype(np.float64), boxes.astype(np.float64)], axis=1)  # (P, 5)
    out, _ = roi_align_forward(masks, rois, output_size=M, spatial_scale=1.0, sampling_ratio=-1,
                               aligned=bool(aligned), outside=outside)  # (P, 1, M, M)
    return out[:, 0]  # (P, M, M)
