"""Matching proposals (or anchors) to ground-truth boxes by IoU.

*Papers:* Ren et al., *Faster R-CNN*, NeurIPS 2015, Sec. 3.1.2 (RPN labels: positive above IoU 0.7, plus the anchor
with the highest IoU for each ground-truth box; negative below 0.3; the rest ignored); Girshick, *Fast R-CNN*, ICCV
2015, Sec. 2.3 and He et al., *Mask R-CNN*, ICCV 2017, Sec. 3.1 (an RoI is positive when its IoU with a ground-truth
box is at least 0.5, negative otherwise).

Input: an IoU matrix `iou` of shape **(G, P)**, ground-truth boxes by rows and proposals by columns, i.e.
`box_iou(gt_boxes, proposals)` (torchvision's orientation). Output: `matches`, shape (P,), int64, one entry per
proposal:

- `g >= 0`: the proposal is matched to ground-truth box g (its best IoU is >= `high_threshold`);
- `BELOW_LOW_THRESHOLD = -1`: best IoU < `low_threshold` (background);
- `BETWEEN_THRESHOLDS = -2`: `low_threshold <= best IoU < high_threshold` (ignored in training).

`allow_low_quality_matches` (the RPN's "highest IoU for each ground-truth box" rule), exactly as torchvision does it:
for each ground-truth box g, take **every** proposal whose IoU with g equals g's highest IoU (ties included), and
give each of them back the match it would have had without thresholds, i.e. its own best ground-truth box (the first
one, on ties). Two consequences worth knowing:

- a proposal promoted because of g may end up matched to another box g' it overlaps more;
- if g overlaps no proposal at all, its highest IoU is 0, so every proposal with IoU 0 to g is "promoted" and
  matched to its own best box (box 0 when it overlaps none). torchvision and detectron2 behave this way; we keep it.

Empty inputs: with no ground-truth boxes every proposal is background (-1); with no proposals the result is empty.
(torchvision's Matcher raises on both; its RPN and RoI heads handle "no ground truth" before calling it, in the same
way.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from tinymask._validate import check_float_array

BELOW_LOW_THRESHOLD = -1
BETWEEN_THRESHOLDS = -2


@dataclass(frozen=True)
class Matcher:
    """Assign each proposal a ground-truth index, -1 (below low) or -2 (between thresholds); see the module doc."""

    high_threshold: float
    low_threshold: float
    allow_low_quality_matches: bool = False

    def __post_init__(self):
        if not self.low_threshold <= self.high_threshold:
            raise ValueError(
                f"low_threshold ({self.low_threshold}) must not exceed high_threshold ({self.high_threshold})"
            )

    def __call__(self, iou: np.ndarray) -> np.ndarray:
        """iou: (G, P) IoU of every ground-truth box (rows) with every proposal (columns). Returns (P,) int64."""
        check_float_array(iou, "iou", ndim=2, shape_doc="(G, P): ground-truth boxes by proposals")
        if np.any(np.isnan(iou)):
            raise ValueError("iou contains NaN")
        num_gt, num_proposals = iou.shape
        if num_proposals == 0:
            return np.zeros((0,), dtype=np.int64)
        if num_gt == 0:
            return np.full((num_proposals,), BELOW_LOW_THRESHOLD, dtype=np.int64)

        best_gt = iou.argmax(axis=0)  # (P,) first best ground truth of each proposal
        best_iou = iou[best_gt, np.arange(num_proposals)]  # (P,)
        matches = best_gt.astype(np.int64)  # (P,)
        matches[best_iou < self.low_threshold] = BELOW_LOW_THRESHOLD
        matches[(best_iou >= self.low_threshold) & (best_iou < self.high_threshold)] = BETWEEN_THRESHOLDS

        if self.allow_low_quality_matches:
            best_per_gt = iou.max(axis=1)  # (G,) highest IoU each ground-truth box reaches
            is_best_for_some_gt = np.any(iou == best_per_gt[:, None], axis=0)  # (P,) ties included
            matches[is_best_for_some_gt] = best_gt[is_best_for_some_gt]  # back to the proposal's own best box
        return matches


#: Faster R-CNN's RPN: positive at IoU >= 0.7, negative below 0.3, plus each ground truth's best anchors.
RPN_MATCHER = Matcher(high_threshold=0.7, low_threshold=0.3, allow_low_quality_matches=True)
#: The box and mask heads: positive at IoU >= 0.5, negative below 0.5, no low-quality matches.
HEAD_MATCHER = Matcher(high_threshold=0.5, low_threshold=0.5, allow_low_quality_matches=False)
