"""Stochastic gradient descent with momentum and weight decay, and the learning-rate schedule Mask R-CNN trains with.

*Paper:* He et al., *Mask R-CNN*, ICCV 2017, §3.1 "Training": "We train on 8 GPUs (so effective minibatch size is
16) for 160k iterations, with a learning rate of 0.02 which is decreased by 10 at the 120k iteration. We use a weight
decay of 0.0001 and momentum of 0.9." The linear warm-up comes from Goyal et al., *Accurate, Large Minibatch SGD*
(2017, §2.2), which Detectron and detectron2 use for every Mask R-CNN recipe. · *Code:* `tinymask/training/optim.py` ·
*Test:* `tests/test_optim.py`

## One step

For every trainable parameter p with gradient g (PyTorch's `torch.optim.SGD`, which detectron2 and torchvision use):

    g' = g + λ·p          weight decay λ: the gradient of the L2 penalty (λ/2)·||p||²; only for decayed parameters
    v  = μ·v + g'         momentum μ: v is a running sum of past gradients (the "velocity"), starting at 0
    p  = p − η_t·v        η_t: the learning rate of iteration t

The original Detectron (Caffe2) folds η into the velocity (v = μ·v + η·g', p = p − v); the two agree while η is
constant and differ only for a few iterations after each step of the schedule. We follow PyTorch.

**Which parameters decay.** The rule is by shape (`decays_weight`): a parameter with **one dimension or fewer** is not
decayed. Those are exactly the biases (of convolutions and fully connected layers) and the per-channel scale and
shift of the norms (GroupNorm's `weight` and `bias`; frozen BatchNorm's are not trained at all); every convolution
and fully connected weight has 2 or 4 dimensions, and all of those decay. Every trainable parameter keeps the same
learning rate. The references differ here, and tinymask matches none of them exactly:

- the original Detectron (`detectron/modeling/optimizer.py`, `add_single_gpu_param_update_ops`) hard-codes, for
  every bias, *no* weight decay *and* twice the learning rate (its gradient is scaled by 2, "mainly to match
  historical impl. details"); GroupNorm's parameters decay by `SOLVER.WEIGHT_DECAY_GN` (default 0). There is no
  config flag for the biases: `SOLVER.BIAS_WEIGHT_DECAY` and `SOLVER.BIAS_DOUBLE_LR` belong to a PyTorch port,
  roytseng-tw/Detectron.pytorch, where they default to Detectron's behaviour;
- detectron2 (`detectron2/solver/build.py`, `get_default_optimizer_params`) decays the biases like the weights by
  default (`SOLVER.WEIGHT_DECAY_BIAS = None` means "as `WEIGHT_DECAY`", `BIAS_LR_FACTOR = 1.0`; its docstring calls
  the two "legacy settings from Detectron1 that are not found useful") and leaves the norms undecayed
  (`SOLVER.WEIGHT_DECAY_NORM = 0.0`);
- torchvision's reference script (`references/detection/train.py`) decays every trainable parameter, biases and
  norms included, unless `--norm-weight-decay` is given (default: none, the same decay as `--weight-decay`).

tinymask keeps Detectron's "no decay on biases" and detectron2's "no decay on norms", and leaves out Detectron's
doubled bias learning rate, as detectron2 does. Why: shrinking a norm's scale towards 0 only fights the norm (the next
layer sees the same normalised activations times a smaller number), which matters here because the CPU recipes train
GroupNorm from scratch; and a bias does not take part in overfitting the way a weight does.

**Frozen parameters.** Parameters for which `model.is_trainable(name, cfg)` is False (frozen batch norm's statistics
and affine, §3.1) get no gradient from `train_backward` and are never touched.

**Gradient clipping (optional).** With `clip_grad_norm = c`, the gradients (before weight decay) are scaled by
`min(1, c / ||g||)`, where `||g||` is the global norm over all trainable parameters together, as
`torch.nn.utils.clip_grad_norm_` does. Clipping keeps one bad batch from throwing the weights far away; Mask R-CNN
itself does not clip, so `SGD` does not by default, but tinymask's training recipe does (`tinymask.training.recipe.Recipe`,
c = 10; its docstring says why). The returned `clip_scale` is logged, so a run shows how often it acted.

## The schedule: linear warm-up, then steps

    warm-up, t < T_w:   η_t = η · (f + (1 − f)·t / T_w)      f = warmup_factor (0.001), from η·f up to η
    afterwards:         η_t = η · γ^(number of steps s ≤ t)   γ = 0.1 at each step (Mask R-CNN §3.1)

(During warm-up the step factor applies too, so a step inside the warm-up still divides.) The steps are iteration
numbers; `LRSchedule.for_iterations` places them at fixed fractions of the run (70 % and 90 % by default, roughly
where detectron2's "1x" schedule puts them: 60k/80k and 210k/250k of 90k and 270k), so a shorter or longer run keeps
the same shape.

## State

The optimizer's state is one velocity array per trainable parameter, plain arrays that a checkpoint stores next to
the parameters (`state_dict` / `load_state_dict`), so that a resumed run continues exactly.
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

import numpy as np


def decays_weight(name: str, value: np.ndarray) -> bool:
    """Whether weight decay applies to this parameter: only to those with 2 or more dimensions (conv and fc
    weights), never to biases or norm scales and shifts (all 1-D); see "Which parameters decay" above for how this
    differs from Detectron, detectron2 and torchvision. `name` is unused; it is there so that a different rule (by
    name) can replace this one without changing the callers."""
    return np.ndim(value) >= 2


def global_norm(grads: dict) -> float:
    """sqrt(sum of squares) over every array of `grads`, computed in float64."""
    return math.sqrt(sum(float(np.sum(np.square(g, dtype=np.float64))) for g in grads.values()))


@dataclass
class LRSchedule:
    """The learning rate of each iteration: linear warm-up, then a step decay (see the module docstring).

    base_lr:       η, the rate after warm-up and before the first step.
    warmup_iters:  T_w, iterations of linear warm-up (0: none).
    warmup_factor: f, the fraction of η at iteration 0.
    steps:         iteration numbers at which the rate is multiplied by `gamma`, ascending.
    gamma:         γ, the factor at each step.
    """

    base_lr: float
    warmup_iters: int = 0
    warmup_factor: float = 0.001
    steps: list = field(default_factory=list)
    gamma: float = 0.1

    def __post_init__(self):
        if not self.base_lr > 0:
            raise ValueError(f"the learning rate must be positive, got {self.base_lr}")
        if self.warmup_iters < 0 or not 0 < self.warmup_factor <= 1:
            raise ValueError(f"warmup_iters must be >= 0 and warmup_factor in (0, 1], got {self.warmup_iters}, "
                             f"{self.warmup_factor}")
        if list(self.steps) != sorted(self.steps):
            raise ValueError(f"steps must be ascending, got {self.steps}")
        self.steps = [int(s) for s in self.steps]

    @classmethod
    def for_iterations(cls, base_lr: float, iterations: int, warmup_iters: int = 0, warmup_factor: float = 0.001,
                       decay_at=(0.7, 0.9), gamma: float = 0.1) -> "LRSchedule":
        """A schedule for a run of `iterations`, with steps at the fractions `decay_at` of it (rounded)."""
        steps = sorted({int(round(f * iterations)) for f in decay_at if 0 < f < 1})
        return cls(base_lr, warmup_iters, warmup_factor, steps, gamma)

    def __call__(self, iteration: int) -> float:
        lr = self.base_lr * self.gamma ** bisect.bisect_right(self.steps, iteration)  # one γ per step s <= t
        if iteration < self.warmup_iters:
            alpha = iteration / self.warmup_iters
            lr *= self.warmup_factor * (1 - alpha) + alpha  # f at t = 0, rising linearly to 1 at t = T_w
        return lr


class SGD:
    """SGD with momentum, decoupled-from-norms weight decay and optional global-norm clipping.

    params:          {name: array}, updated in place by `step`.
    trainable:       the names to train (e.g. those with `model.is_trainable`); default: all of `params`.
    momentum:        μ (0.9, Mask R-CNN §3.1).
    weight_decay:    λ (1e-4, Mask R-CNN §3.1), applied where `decays_weight` says so.
    clip_grad_norm:  c, or None for no clipping.

    The velocity arrays are created (zeros, in each parameter's dtype) on construction.
    """

    def __init__(self, params: dict, trainable=None, momentum: float = 0.9, weight_decay: float = 1e-4,
                 clip_grad_norm: float | None = None):
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if clip_grad_norm is not None and not clip_grad_norm > 0:
            raise ValueError(f"clip_grad_norm must be positive or None, got {clip_grad_norm}")
        names = list(params) if trainable is None else [k for k in params if k in set(trainable)]
        self.momentum, self.weight_decay, self.clip_grad_norm = momentum, weight_decay, clip_grad_norm
        self.decay = {k: decays_weight(k, params[k]) for k in names}  # {name: bool}
        self.velocity = {k: np.zeros_like(params[k]) for k in names}  # {name: array like the parameter}

    def gradient_norm(self, grads: dict) -> float:
        """||g||, the global norm of the trainable parameters' gradients (what clipping and the divergence guard read).

        Every trainable name must have a gradient (a missing one is a bug in a backward pass, so it raises)."""
        missing = [k for k in self.velocity if k not in grads]
        if missing:
            raise KeyError(f"no gradient for {len(missing)} trainable parameter(s), e.g. {missing[:3]}")
        return global_norm({k: grads[k] for k in self.velocity})

    def step(self, params: dict, grads: dict, lr: float, grad_norm: float | None = None) -> dict:
        """Update `params` in place from `grads` with learning rate `lr`.

        Gradients of names that do not train are ignored. `grad_norm`: `gradient_norm(grads)`, if the caller has it.
        A NaN or infinite gradient raises FloatingPointError before any parameter changes.
        Returns {"grad_norm": ||g|| before clipping, "clip_scale": factor}.
        """
        norm = self.gradient_norm(grads) if grad_norm is None else grad_norm
        if not math.isfinite(norm):  # checked before anything changes, so the parameters stay as they were
            bad = next(k for k in self.velocity if not np.all(np.isfinite(grads[k])))
            raise FloatingPointError(f"the gradient is not finite (first in {bad})")
        scale = 1.0
        if self.clip_grad_norm is not None and norm > self.clip_grad_norm:
            scale = self.clip_grad_norm / (norm + 1e-6)  # torch.nn.utils.clip_grad_norm_'s formula
        for name, v in self.velocity.items():
            p, g = params[name], grads[name]
            if scale != 1.0:
                g = g * np.asarray(scale, g.dtype)
            if self.decay[name] and self.weight_decay:
                g = g + np.asarray(self.weight_decay, p.dtype) * p  # g' = g + λ·p
            v *= np.asarray(self.momentum, v.dtype)  # v = μ·v + g'
            v += g
            p -= np.asarray(lr, p.dtype) * v  # p = p − η_t·v
        return {"grad_norm": norm, "clip_scale": scale}

    # --- checkpointing ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """{name: velocity array}: everything `step` depends on besides the hyperparameters."""
        return dict(self.velocity)

    def load_state_dict(self, state: dict) -> None:
        """Restore the velocities (copies); the names and shapes must be exactly this optimizer's."""
        if set(state) != set(self.velocity):
            extra, missing = sorted(set(state) - set(self.velocity)), sorted(set(self.velocity) - set(state))
            raise ValueError(f"optimizer state does not match the trainable parameters: missing {missing[:3]}, "
                             f"unexpected {extra[:3]}")
        for k, v in state.items():
            if v.shape != self.velocity[k].shape:
                raise ValueError(f"optimizer state {k} has shape {v.shape}, expected {self.velocity[k].shape}")
            self.velocity[k] = np.array(v, dtype=self.velocity[k].dtype)
