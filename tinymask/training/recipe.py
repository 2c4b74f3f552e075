"""How tinymask trains: the recipe (SGD, warm-up, steps), and why it clips the gradient.

*Paper:* He et al., *Mask R-CNN*, ICCV 2017, §3.1 "Training" (SGD with momentum 0.9, weight decay 1e-4, lr 0.02 for 16
images, steps at 120k and 160k); Goyal et al. 2017 (linear warm-up, the linear scaling rule). · *Code:*
`tinymask/training/recipe.py` · *Test:* `tests/test_train.py`, `tests/test_train_seeds.py`

## Why the gradient is clipped

The recipes tinymask ships train the `small` preset at lr 0.02 with 4 images (notebooks, `tinymask train`) or 2
(`tinymask ablate`): 4 and 8 times what the linear scaling rule gives. It learns faster so, but it runs close to
the edge: without clipping, the notebooks' recipe diverged to NaN at iteration 84 for seed 0 on one machine and
trained on another (the margin is a matter of rounding), and at lr 0.04 four seeds of four diverged, at iterations
32-65. Logged per iteration (losses, gradient norm per layer, the box head's inputs), every one of those
divergences goes the same way:

1. The FPN's outputs have no normalisation, and during the warm-up their scale grows: the RoI features the box
   head reads (7×7×C, flattened) go from an RMS of about 2 at initialisation to 8-16, while fc6's weights hardly
   change. The step that SGD takes on a fully connected layer grows with the square of its inputs' scale, so the
   box head's effective learning rate grows some 20-60 times.
2. One noisy batch then moves fc6 / fc7 / the class scores too far: `loss_classifier` jumps first (1.1 → 8.6 → 22
   → 212 in three iterations at seed 0, lr 0.04), with the box head's gradient most of the total norm
   (110 of 131).
3. The gradient flows back into the FPN and the backbone; their next step is larger still, and within 5-10
   iterations the weights overflow: a NaN gradient, or the RPN's deltas become infinite in the next forward pass
   ("deltas contains NaN or infinity"). The box decoding is not the cause: it clamps log-size deltas at
   log(1000/16) like torchvision; its input was already infinite.

The global gradient norm is clipped at `clip_grad_norm` = 10 (`SGD`, as `torch.nn.utils.clip_grad_norm_`), which
breaks step 2: a bad batch moves the weights at most lr × 10 (times the momentum's 1 / (1 − 0.9)). In normal
training at lr 0.02 the norm is 2-7 after the warm-up and above 10 in at most one update per 250; the updates it
does cut (76 of 2400 in the notebooks' recipe over 8 seeds) are nearly all early in the warm-up (norms 20-45 while
the lr is below 0.003), so runs that trained before train much as they did. With it, the notebooks' recipe trains
every seed of 8, and at lr 0.03 every seed of 4, where without it 3 of 4 diverge. `benchmarks/train_seeds.py` measures each shipped recipe over
seeds (how many diverge, the worst loss spike, the updates clipped); docs/usage.md has its table. Clipping is a
guard, not a licence: at lr 0.04 it stops the NaN, but the box head's ReLUs die and the loss stops falling.
Mask R-CNN does not clip (it trains at the scaled lr, with 16 images); set `clip_grad_norm=None`
(`--clip-grad-norm 0`) for its recipe, with lr 0.02 × B / 16.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

import numpy as np

from tinymask.training.optim import LRSchedule


@dataclass
class Recipe:
    """How to train (the model is described by `MaskRCNNConfig`). Defaults: the `small` preset on shapes, on a CPU.

    The paper's recipe (§3.1) is lr 0.02 for 16 images per batch, 160k iterations, a step at 120k, momentum 0.9,
    weight decay 1e-4. For 4 images per batch, the linear scaling rule gives 0.005; the narrow GroupNorm network of
    the `small` preset, trained from scratch on 128-pixel images, is stable at 0.02 after a warm-up and learns
    faster with it, and the global gradient norm is clipped at 10 (Mask R-CNN does not clip; "Why the gradient is
    clipped" above). The steps are placed at 70 % and 90 % of the run, whatever its length. Measured with
    `benchmarks/time_to_accuracy.py` (the default command, seed 0, 100 held-out images, this 2-core machine, idle):
    mask AP50 0.33 / 0.72 / 0.87 / 0.91 after 300 / 600 / 900 / 1200 iterations, 16.4 minutes to the evaluation at
    1200 (evaluations included); 0.92 (mask AP 0.73, box AP50 0.95) after all 1500 (measured before the clipping
    was added; it cuts only a few warm-up updates of such a run).
    """

    iterations: int = 1500  # total number of updates (6 epochs of the 1000 shapes images at batch 4)
    batch_size: int = 4  # images per update
    lr: float = 0.02  # base learning rate, after warm-up
    momentum: float = 0.9  # Mask R-CNN §3.1
    weight_decay: float = 1e-4  # Mask R-CNN §3.1; never on biases and norms (optim.decays_weight)
    warmup_iters: int = 200  # linear warm-up (Goyal et al. 2017); detectron2 uses 1000 of 90k
    warmup_factor: float = 0.001  # lr at iteration 0, as a fraction of `lr` (detectron2)
    decay_at: list = field(default_factory=lambda: [0.7, 0.9])  # steps, as fractions of `iterations`
    gamma: float = 0.1  # lr factor at each step (Mask R-CNN §3.1: "decreased by 10")
    clip_grad_norm: float | None = 10.0  # global-norm clipping, a guard against one bad batch (see "Why the
    #                                      gradient is clipped" above); Mask R-CNN does not clip; None: off
    trainable_backbone_layers: int | None = None  # fine-tuning: only the last N of the ResNet's 5 parts train
    #                                                  (torchvision's argument; tinymask/weights/transfer.py); None: all
    flip_prob: float = 0.5  # horizontal flip (detectron2's RandomFlip)
    eval_every: int = 300  # evaluate and write last/ every this many iterations (and at the end); 0: only at the end
    eval_batch_size: int = 4  # images per predict call during evaluation
    seed: int = 0  # initial weights, data order, flips, anchor and RoI sampling

    def __post_init__(self):
        for name in ("iterations", "batch_size", "eval_batch_size"):
            if not isinstance(getattr(self, name), (int, np.integer)) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.eval_every < 0 or self.warmup_iters < 0 or self.seed < 0:
            raise ValueError(f"eval_every, warmup_iters and seed must be >= 0, got {self.eval_every}, "
                             f"{self.warmup_iters}, {self.seed}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be positive or None, got {self.clip_grad_norm!r}")
        if self.trainable_backbone_layers is not None and self.trainable_backbone_layers not in range(6):
            raise ValueError(f"trainable_backbone_layers must be 0..5 (the ResNet's stem and four stages) or None, "
                             f"got {self.trainable_backbone_layers!r}")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError(f"flip_prob must be in [0, 1], got {self.flip_prob}")
        self.decay_at = [float(f) for f in self.decay_at]

    def schedule(self) -> LRSchedule:
        return LRSchedule.for_iterations(self.lr, self.iterations, self.warmup_iters, self.warmup_factor,
                                         self.decay_at, self.gamma)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Recipe":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown recipe field(s) {unknown}")
        return cls(**data)
