"""When a run diverges: stop before a blown-up model can be saved, say why, and point at a checkpoint that is good.

*Code:* `tinymask/training/divergence.py` · *Test:* `tests/test_train.py`

A run diverges when its updates stop making sense: the usual cause is a learning rate too high for the batch size
(Mask R-CNN uses 0.02 for 16 images; the linear scaling rule, Goyal et al. 2017, gives 0.02 × B / 16 for B images).
It does not always end in NaN: with a learning rate far too high the loss can reach 1e17 and the gradient norm 4e16
while every number is still finite, and a checkpoint written then would replace the last usable one with a model
that cannot recover. So every iteration is checked twice, and the run stops (`TrainingDiverged`) at the first that
fails, before its update is applied and before any checkpoint is written:

- **after the forward pass**: every loss must be finite, and the total loss at most `LOSS_FACTOR` (20) times the
  median of the last `WINDOW` (50) iterations' losses;
- **before the update**: the gradient must be finite, and its global norm at most `GRAD_FACTOR` (1000) times the
  median of the last `WINDOW` norms.

The comparisons start once `MIN_HISTORY` (10) iterations are known (a resumed run reads them back from its log), so the
first steps of a run, whose losses and gradients are the largest, are judged only on being finite. The factors are
wide on purpose. Measured with `benchmarks/train_seeds.py` over every shipped recipe and 8 seeds (docs/usage.md), a
healthy run's worst loss spike is 2.4 times its running median, and its gradient norm varies by a factor of about 20
between the warm-up and the end; a run that blows up passes 20× within a few iterations. Since nothing is written
after the check fails, `last/` holds the last checkpoint of a run that was still healthy, and the message says so.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np

LOSS_FACTOR = 20.0  # the total loss may reach this many times its recent median
GRAD_FACTOR = 1000.0  # the gradient's global norm may reach this many times its recent median
WINDOW = 50  # iterations in the running medians
MIN_HISTORY = 10  # iterations known before the comparisons start


class TrainingDiverged(RuntimeError):
    """The loss or the gradient stopped making sense (NaN, infinite, or orders of magnitude above its recent values);
    the message says which, when, and what to do."""


def diverged_message(what: str, iteration: int, lr: float, batch_size: int, last_dir: str,
                     last_iteration: int | None) -> str:
    kept = (f"The last good checkpoint (iteration {last_iteration}) is kept in {last_dir}"
            if last_iteration is not None else "No checkpoint had been written yet")
    return (f"training diverged at iteration {iteration} (lr {lr:.3g}): {what}. The usual cause is a learning "
            f"rate too high for the batch size ({batch_size} images; Mask R-CNN uses 0.02 for 16, i.e. about "
            f"{0.02 * batch_size / 16:.3g} for {batch_size}): lower --lr or lengthen the warm-up. {kept}.")


class DivergenceGuard:
    """The recent losses and gradient norms of a run, and the two checks of the module docstring.

    Each check returns None when the iteration is fine, else a sentence saying what went wrong.
    """

    def __init__(self, history: list[dict] = ()):
        self.losses = deque(maxlen=WINDOW)
        self.grad_norms = deque(maxlen=WINDOW)
        for record in history:  # log.jsonl records of earlier iterations (a resumed run)
            self.record(record.get("loss"), record.get("grad_norm"))

    def record(self, loss, grad_norm) -> None:
        """Remember an iteration that passed both checks."""
        if loss is not None and math.isfinite(loss):
            self.losses.append(float(loss))
        if grad_norm is not None and math.isfinite(grad_norm):
            self.grad_norms.append(float(grad_norm))

    def check_losses(self, losses: dict) -> str | None:
        bad = [k for k, v in losses.items() if not math.isfinite(v)]
        if bad:
            return f"{bad[0]} is {losses[bad[0]]}"
        total = sum(losses.values())
        if len(self.losses) >= MIN_HISTORY:
            typical = float(np.median(self.losses))
            if total > LOSS_FACTOR * typical:
                return (f"the loss jumped to {total:.4g}, {total / typical:.3g} times its median {typical:.4g} over "
                        f"the last {len(self.losses)} iterations (more than {LOSS_FACTOR:g} times counts as diverged)")
        return None

    def check_grad_norm(self, norm: float) -> str | None:
        if not math.isfinite(norm):
            return f"the gradient's norm is {norm}"
        if len(self.grad_norms) >= MIN_HISTORY:
            typical = float(np.median(self.grad_norms))
            if norm > GRAD_FACTOR * typical:
                return (f"the gradient's norm jumped to {norm:.4g}, {norm / typical:.3g} times its median "
                        f"{typical:.4g} over the last {len(self.grad_norms)} iterations (more than {GRAD_FACTOR:g} "
                        f"times counts as diverged)")
        return None
