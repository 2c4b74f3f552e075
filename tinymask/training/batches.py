"""The data of each training iteration: which images, flipped or not, with which random numbers.

*Paper:* He et al., *Mask R-CNN*, ICCV 2017, §3.1 "Training" (images flipped horizontally at random). · *Code:*
`tinymask/training/batches.py` · *Test:* `tests/test_train.py`

Every random number of iteration t comes from a generator made from `(seed, t)` alone, and the data order from
`(seed, epoch)` alone, so nothing random has to be saved: a run stopped after k iterations and resumed from its
checkpoint (parameters, momentum, k) computes exactly what the uninterrupted run would have, bit for bit.
(The third word of each seed names its purpose. It is not 0, because NumPy's `SeedSequence` treats `[s, e]` and
`[s, e, 0]` alike, and `[seed, epoch]` is the epoch order's.)
"""
from __future__ import annotations

import numpy as np

from tinymask.data.transforms import batch_indices, epoch_order, random_horizontal_flip, training_targets

FLIP_STREAM, MODEL_STREAM = 1, 2  # the third word of the per-iteration seeds


def model_rng(seed: int, iteration: int) -> np.random.Generator:
    """The generator of iteration `iteration`'s anchor and RoI sampling."""
    return np.random.default_rng([seed, iteration, MODEL_STREAM])


def batch_for_iteration(num_items: int, batch_size: int, seed: int, iteration: int) -> np.ndarray:
    """The dataset indices of iteration `iteration`'s batch (see the module docstring). A data set smaller than
    one batch gives the whole (shuffled) set every time."""
    if num_items < 1:
        raise ValueError("the training set is empty")
    if num_items < batch_size:
        return epoch_order(num_items, seed, iteration)
    per_epoch = num_items // batch_size
    epoch, step = divmod(iteration, per_epoch)
    return batch_indices(num_items, batch_size, seed, epoch, drop_last=True)[step]


def load_batch(dataset, indices, seed: int, iteration: int, flip_prob: float):
    """(images, targets) for `train_forward`: samples flipped with `default_rng([seed, iteration, 1])`, crowds and
    empty boxes dropped."""
    rng = np.random.default_rng([seed, iteration, FLIP_STREAM])
    samples = [training_targets(random_horizontal_flip(dataset[int(i)], rng, flip_prob)) for i in indices]
    images = [s["image"] for s in samples]  # (3, H, W) float32 each
    targets = [{"boxes": s["boxes"], "labels": s["labels"], "masks": s["masks"]} for s in samples]
    return images, targets
