"""Balanced sampling of positive and negative training examples per image.

*Papers:* Ren et al., *Faster R-CNN*, NeurIPS 2015, Sec. 3.1.3 (the RPN loss uses 256 anchors per image, up to half
of them positive, padded with negatives); Girshick, *Fast R-CNN*, ICCV 2015, Sec. 2.3 and He et al., *Mask R-CNN*,
ICCV 2017, Sec. 3.1 (512 RoIs per image with a positive-to-negative ratio of 1:3).

Semantics of torchvision's `BalancedPositiveNegativeSampler`, for one image:

- `labels` (N,) ints: `>= 1` positive, `0` negative, `-1` ignored (never sampled);
- `num_pos = min(#positives, int(batch_size_per_image * positive_fraction))` positives drawn uniformly without
  replacement;
- `num_neg = min(#negatives, batch_size_per_image - num_pos)` negatives, so negatives fill the places positives
  could not; the batch may come out smaller than `batch_size_per_image` when there are too few of both.

Presets: the RPN uses `batch_size_per_image=256, positive_fraction=0.5`; the box head `512, 0.25`.

Randomness comes only from the `np.random.Generator` passed in (positives drawn first, then negatives), so the same
seed gives the same sample; there is no global random state.
"""
from __future__ import annotations

import numpy as np

RPN_BATCH_SIZE_PER_IMAGE, RPN_POSITIVE_FRACTION = 256, 0.5
HEAD_BATCH_SIZE_PER_IMAGE, HEAD_POSITIVE_FRACTION = 512, 0.25


def sample_balanced(
    labels: np.ndarray, batch_size_per_image: int, positive_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Choose the positives and negatives of one image for the loss.

    labels:               (N,) integer labels: >= 1 positive, 0 negative, -1 ignored.
    batch_size_per_image: how many examples at most (256 for the RPN, 512 for the box head).
    positive_fraction:    the largest fraction of them that may be positive (0.5 for the RPN, 0.25 for the box head).
    rng:                  the random generator to draw from, e.g. `np.random.default_rng(0)`.

    Returns two (N,) boolean masks `(positive, negative)`, disjoint, with `positive` only where `labels >= 1` and
    `negative` only where `labels == 0`.
    """
    if not isinstance(labels, np.ndarray) or not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be an integer NumPy array, got {type(labels).__name__} "
                        f"{getattr(labels, 'dtype', '')}".rstrip())
    if labels.ndim != 1:
        raise ValueError(f"labels must have 1 dimension (N,), got shape {labels.shape}")
    if not isinstance(batch_size_per_image, (int, np.integer)) or batch_size_per_image < 0:
        raise ValueError(f"batch_size_per_image must be a non-negative int, got {batch_size_per_image!r}")
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), got {type(rng).__name__}")

    positive = np.flatnonzero(labels >= 1)  # (n_pos,) candidates
    negative = np.flatnonzero(labels == 0)  # (n_neg,) candidates
    num_pos = min(positive.size, int(batch_size_per_image * positive_fraction))  # positives capped by the quota
    num_neg = min(negative.size, batch_size_per_image - num_pos)  # negatives fill the rest

    chosen_pos = positive[rng.permutation(positive.size)[:num_pos]]  # (num_pos,) uniform, no replacement
    chosen_neg = negative[rng.permutation(negative.size)[:num_neg]]  # (num_neg,)

    pos_mask = np.zeros(labels.shape, dtype=bool)  # (N,)
    neg_mask = np.zeros(labels.shape, dtype=bool)  # (N,)
    pos_mask[chosen_pos] = True
    neg_mask[chosen_neg] = True
    return pos_mask, neg_mask


def sample_recorded(labels: np.ndarray, positive_idx, negative_idx) -> tuple[np.ndarray, np.ndarray]:
    """The masks `sample_balanced` would return, for a draw made elsewhere (a test hook, not a sampler).

    A test that compares one training step with another implementation's (torchvision's, whose `randperm` NumPy cannot
    reproduce) injects the indices that implementation drew. They must agree with our labels: every recorded positive
    must be labelled positive here and every negative negative, so a disagreement between the two matchers is an error
    rather than a silent mismatch.
    """
    positive_idx, negative_idx = np.asarray(positive_idx, np.int64), np.asarray(negative_idx, np.int64)
    for name, idx, ok in (("positive", positive_idx, labels >= 1), ("negative", negative_idx, labels == 0)):
        if idx.size and (idx.min() < 0 or idx.max() >= labels.size):
            raise ValueError(f"recorded {name} indices must lie in [0, {labels.size}), got {idx.min()}..{idx.max()}")
        wrong = idx[~ok[idx]]
        if wrong.size:
            raise ValueError(f"recorded {name} samples {wrong[:5].tolist()} are labelled {labels[wrong[:5]].tolist()} "
                             f"here: the recorded draw does not match this matcher's labels")
    pos_mask = np.zeros(labels.shape, dtype=bool)  # (N,)
    neg_mask = np.zeros(labels.shape, dtype=bool)  # (N,)
    pos_mask[positive_idx] = True
    neg_mask[negative_idx] = True
    return pos_mask, neg_mask
