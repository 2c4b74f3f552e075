"""The training loop: batches, flips, the forward and backward passes, SGD, evaluation and checkpoints.

*Paper:* He et al., *Mask R-CNN*, ICCV 2017, §3.1 "Training": the five losses are minimised jointly with SGD
(momentum 0.9, weight decay 1e-4, a step schedule), images flipped horizontally at random. · *Code:*
`tinymask/training/loop.py` · *Test:* `tests/test_train.py`

    from tinymask.training.loop import Recipe, train
    train(cfg, Recipe(iterations=2000), ShapesDataset("train", 1000), ShapesDataset("val", 100), "runs/shapes")

## One iteration

Iteration t (counting from 0) turns the model after t updates into the model after t + 1:

1. **Batch.** `batch_size` indices: epoch e = t // B_e (B_e = full batches per epoch), batch t % B_e of the
   permutation `epoch_order(n, seed, e)` (the last, incomplete batch of an epoch is dropped, so every batch is full).
2. **Augment.** Each sample is flipped left-right with probability `flip_prob`, drawing from
   `default_rng([seed, t, 1])`; crowd regions and empty boxes are dropped (`training_targets`).
3. **Forward**, with the anchor and RoI sampling drawing from `default_rng([seed, t, 2])`: the five losses.
4. **Backward**: the gradient of their sum (`train_backward`).
5. **Update**: `SGD.step` with the learning rate `schedule(t)` (`tinymask/training/optim.py`).

Every random number of iteration t comes from a generator made from `(seed, t)` alone, and the data order from
`(seed, epoch)` alone, so nothing random has to be saved: a run stopped after k iterations and resumed from its
checkpoint (parameters, momentum, k) computes exactly what the uninterrupted run would have, bit for bit.
(The third word of each seed names its purpose. It is not 0, because NumPy's `SeedSequence` treats `[s, e]` and
`[s, e, 0]` alike, and `[seed, epoch]` is the epoch order's.)

## A run's folder

    out/log.jsonl        one JSON line per iteration: "iteration" (updates done), "loss" (the total), the five loss
                         terms, "lr", "grad_norm", "time" and "data_time" (seconds); and one line per evaluation
                         with "box_AP", "mask_AP", ...
    out/loss_curves.png  the curves of log.jsonl, redrawn at each evaluation
    out/eval.json        the latest evaluation (tinymask/evaluation/evaluate.py)
    out/last/            the latest checkpoint          } each: weights.npz, config.json and (after an
    out/best/            the checkpoint of best mask AP }       evaluation) eval.json

**When.** Every `eval_every` iterations and at the end, the model is evaluated on the held-out set (COCO box and
mask AP, `tinymask/evaluation/evaluate.py`), `last/` is rewritten, and `best/` too if the mask AP is the best so far. Ctrl-C
writes `last/` before it stops (unless it lands inside an update, when the parameters are half-updated and the
previous `last/` is kept), so `--resume` loses nothing.

**A checkpoint** is a folder. `weights.npz` (`weights.save_npz`) holds the parameters under their own names, the
optimizer's velocities under `optimizer.velocity.<name>`, and a JSON metadata entry: the iteration, the recipe,
the data set's description, the seed, the best AP so far and the training time. It is read with
`allow_pickle=False`. `config.json` is the model's `MaskRCNNConfig`. `inference.load_model` reads such a folder
and keeps only the model's names.

**Writing it atomically.** A crash (or Ctrl-C, or a full disk) while a checkpoint is written must never leave a
half-written `last/` where a good one was. So the new checkpoint is written whole into `.last.new/`, every file
fsynced, and only then swapped in with two renames: `last/` → `.last.old/`, `.last.new/` → `last/`; then
`.last.old/` is deleted. A rename is atomic, so at any moment either `last/` is complete or it is missing and
`.last.old/` is the previous complete one; `load_checkpoint` falls back to it. A failure while writing deletes
`.last.new/` and leaves `last/` as it was.

## When the loss becomes NaN

A non-finite loss or gradient stops the run (`TrainingDiverged`), naming the loss and the iteration; nothing is
written after it, so `last/` is the last good checkpoint. The usual cause is a learning rate too high for the batch
size: Mask R-CNN uses 0.02 for 16 images; the linear scaling rule (Goyal et al. 2017) gives 0.02 × B / 16 for B
images.

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

import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from tinymask.config import MaskRCNNConfig
from tinymask.data.transforms import batch_indices, epoch_order, random_horizontal_flip, training_targets
from tinymask.evaluation.evaluate import evaluate_model, report_json, short_summary
from tinymask.model import init_params, is_trainable, LOSS_NAMES, train_backward, train_forward
from tinymask.training.optim import LRSchedule, SGD
from tinymask.weights.checkpoint import load_checkpoint, save_checkpoint

CONFIG_FILE, WEIGHTS_FILE, EVAL_FILE = "config.json", "weights.npz", "eval.json"
VELOCITY_PREFIX = "optimizer.velocity."
CHECKPOINT_FORMAT = "tinymask-checkpoint-1"
FLIP_STREAM, MODEL_STREAM = 1, 2  # the third word of the per-iteration seeds


# ---------------------------------------------------------------------------------------------------------------
# The recipe.
# ---------------------------------------------------------------------------------------------------------------

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


class TrainingDiverged(RuntimeError):
    """A loss or the gradient became NaN or infinite; the message says which, when, and what to do."""


# ---------------------------------------------------------------------------------------------------------------
# Data order and one batch.
# ---------------------------------------------------------------------------------------------------------------

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


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints.
# ---------------------------------------------------------------------------------------------------------------

def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------------------------
# Progress on stderr, and the loss plot.
# ---------------------------------------------------------------------------------------------------------------

def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


class ProgressBar:
    """One line on a terminal, redrawn in place with a carriage return: iteration, bar, it/s, ETA, lr, losses.

    When the stream is not a terminal (a log file, a CI job) it writes a full line every `every` iterations instead,
    so the log is readable. `message(text)` prints a line above the bar.
    """

    SHORT = {"loss_objectness": "obj", "loss_rpn_box_reg": "rpn_box", "loss_classifier": "cls",
             "loss_box_reg": "box", "loss_mask": "mask"}

    def __init__(self, total: int, start: int = 0, stream=None, enabled: bool = True, every: int | None = None):
        self.total, self.start = total, start
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.every = every or max(1, total // 50)
        self.times = []  # (iteration, time) of recent updates, for the rate
        self.line_open = False
        self.last_width = 0

    def update(self, iteration: int, losses: dict, lr: float) -> None:
        now = time.perf_counter()
        self.times = (self.times + [(iteration, now)])[-21:]
        if not self.enabled or not (self.tty or iteration % self.every == 0 or iteration == self.total):
            return
        rate = ((self.times[-1][0] - self.times[0][0]) / (self.times[-1][1] - self.times[0][1])
                if len(self.times) > 1 else float("nan"))
        eta = (self.total - iteration) / rate if rate > 0 else float("nan")
        width = 20
        filled = int(width * iteration / self.total)
        terms = " ".join(f"{self.SHORT.get(k, k)} {float(v):.3f}" for k, v in losses.items())
        total = sum(float(v) for v in losses.values())
        speed = f"{rate:.2f} it/s" if math.isfinite(rate) else "? it/s"
        line = (f"{iteration}/{self.total} [{'#' * filled}{'.' * (width - filled)}] {speed} ETA {_hms(eta)} | "
                f"lr {lr:.2e} | loss {total:.3f} ({terms})")
        if self.tty:  # cut to the terminal's width (a wrapped line cannot be redrawn) and pad over the last one
            line = line[:shutil.get_terminal_size().columns - 1]
            self.stream.write("\r" + line.ljust(self.last_width))
            self.last_width = len(line)
            self.line_open = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        self.times = []  # whatever happens between updates (an evaluation) is not training speed
        if not self.enabled:
            return
        self.close()
        self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.line_open:
            self.stream.write("\n")
            self.stream.flush()
            self.line_open, self.last_width = False, 0


def plot_losses(log_path, png_path) -> None:
    """Draw the loss curves of a log.jsonl into a PNG (`visualize.plot_loss_curves` when it is available)."""
    try:
        from tinymask.visualize import plot_loss_curves
    except ImportError:
        plot_loss_curves = None
    if plot_loss_curves is not None:
        plot_loss_curves(log_path, png_path)
        return
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    records = [json.loads(line) for line in open(log_path, encoding="utf-8") if line.strip()]
    records = [r for r in records if "loss" in r]
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    for name in ("loss", *LOSS_NAMES):
        ax.plot([r["iteration"] for r in records], [r[name] for r in records], label=name)
    ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.legend()
    fig.savefig(png_path)


# ---------------------------------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------------------------------

def _rewind_log(log_path: str, iteration: int) -> None:
    """Keep only the log lines of iterations <= `iteration`: a resumed run repeats the ones after its checkpoint."""
    if not os.path.exists(log_path):
        return
    kept = []
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the crash
            if record.get("iteration", 0) <= iteration:
                kept.append(line if line.endswith("\n") else line + "\n")
    with open(log_path, "w", encoding="utf-8") as f:
        f.writelines(kept)


def _diverged_message(what: str, iteration: int, lr: float, batch_size: int, last_dir: str,
                      last_iteration: int | None) -> str:
    kept = (f"The last good checkpoint (iteration {last_iteration}) is kept in {last_dir}"
            if last_iteration is not None else "No checkpoint had been written yet")
    return (f"training diverged at iteration {iteration} (lr {lr:.3g}): {what}. The usual cause is a learning "
            f"rate too high for the batch size ({batch_size} images; Mask R-CNN uses 0.02 for 16, i.e. about "
            f"{0.02 * batch_size / 16:.3g} for {batch_size}): lower --lr or lengthen the warm-up. {kept}.")


def train(cfg: MaskRCNNConfig, recipe: Recipe, train_set, val_set, out_dir, *, resume: bool = False,
          stop_after: int | None = None, data_info: dict | None = None, progress: bool = True,
          print_fn=print, params: dict | None = None, plot: bool = True) -> dict:
    """Train a model, evaluating on `val_set` and writing checkpoints into `out_dir` (see the module docstring).

    cfg, recipe:  the model and how to train it.
    train_set:    a data set of samples (`tinymask.data`); val_set: one for evaluation, or None (no AP, no best/).
    out_dir:      the run's folder (created). Without `resume` it must not hold a checkpoint yet.
    resume:       continue from `out_dir/last` (its parameters, momentum and iteration; `cfg` must match its
                  config.json). The recipe is the one given, so pass the checkpoint's (`metadata["recipe"]`) for an
                  exact continuation.
    stop_after:   stop (writing last/) once this many iterations are done, as if interrupted there; the schedule
                  still runs to `recipe.iterations`.
    data_info:    a JSON-serialisable description of the data, stored in the checkpoints (the CLI rebuilds the
                  data sets from it on --resume).
    params:       initial parameters (default: `init_params(cfg, recipe.seed)`); ignored when resuming.
    progress:     draw the progress bar on stderr; plot: redraw loss_curves.png at each evaluation and at the end.
    Returns a summary dict: "iteration", "bbox" and "segm" (the last evaluation's 12 stats, or None), "best",
    "seconds" (this session's wall time), "total_seconds" (across resumes), "out_dir".
    Raises TrainingDiverged when a loss or the gradient stops being finite.
    """
    session_start = time.perf_counter()
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    last_dir, best_dir = os.path.join(out_dir, "last"), os.path.join(out_dir, "best")
    log_path, png_path = os.path.join(out_dir, "log.jsonl"), os.path.join(out_dir, "loss_curves.png")
    gt = val_set.to_coco_gt() if val_set is not None else None
    n_train = len(train_set)
    if n_train < 1:
        raise ValueError("the training set is empty")

    # Start fresh or resume.
    best = {"mask_AP": None, "box_AP": None, "iteration": None}
    previous_seconds = 0.0
    if resume:
        params, saved_cfg, metadata, velocity = load_checkpoint(last_dir)
        if saved_cfg.to_dict() != cfg.to_dict():
            raise ValueError(f"the model config differs from the checkpoint's {os.path.join(last_dir, CONFIG_FILE)}")
        start = int(metadata["iteration"])
        best = metadata.get("best", best) or best
        previous_seconds = float(metadata.get("seconds", 0.0))
        _rewind_log(log_path, start)
    else:
        if os.path.exists(os.path.join(last_dir, WEIGHTS_FILE)):
            raise FileExistsError(f"{out_dir} already holds a run (last/); resume it with --resume or choose "
                                  f"another --out")
        params = init_params(cfg, seed=recipe.seed) if params is None else {k: v.copy() for k, v in params.items()}
        start, velocity = 0, None
        open(log_path, "w").close()
    optimizer = SGD(params, trainable=[k for k in params if is_trainable(k, cfg)], momentum=recipe.momentum,
                    weight_decay=recipe.weight_decay, clip_grad_norm=recipe.clip_grad_norm)
    if velocity is not None:
        optimizer.load_state_dict(velocity)
    schedule = recipe.schedule()
    end = max(start, recipe.iterations if stop_after is None else min(stop_after, recipe.iterations))
    if start >= recipe.iterations:
        print_fn(f"{out_dir} has done its {start} iterations already; nothing to train (raise --iterations to go on)")
    last_saved = start if resume else None
    last_report = None

    def metadata(iteration):
        return {"format": CHECKPOINT_FORMAT, "iteration": iteration, "recipe": recipe.to_dict(),
                "data": data_info or {}, "seed": recipe.seed, "best": best,
                "seconds": previous_seconds + time.perf_counter() - session_start,
                "rng": "per iteration t: default_rng([seed, t, 1]) flips, default_rng([seed, t, 2]) sampling; "
                       "order: epoch_order(n, seed, epoch)"}

    def checkpoint(iteration, report=None):
        nonlocal last_saved
        save_checkpoint(last_dir, params, cfg, metadata(iteration), optimizer.state_dict(),
                        report_json(report, {"iteration": iteration}) if report else None)
        last_saved = iteration

    def evaluate_now(iteration):
        nonlocal last_report
        bar.message(f"evaluating at iteration {iteration} on {len(val_set)} images ...")
        report = evaluate_model(params, cfg, val_set, recipe.eval_batch_size, gt=gt,
                                out_path=os.path.join(out_dir, EVAL_FILE), extra={"iteration": iteration})
        last_report = report
        b, m = report["bbox"].summary(), report["segm"].summary()
        record = {"iteration": iteration, "eval_seconds": round(report["seconds"], 3),
                  **{f"box_{k}": b[k] for k in ("AP", "AP50", "AP75")},
                  **{f"mask_{k}": m[k] for k in ("AP", "AP50", "AP75")}}
        log.write(json.dumps(record) + "\n")
        log.flush()
        bar.message(f"iteration {iteration}: {short_summary(report)} ({report['seconds']:.0f} s)")
        improved = best["mask_AP"] is None or m["AP"] > best["mask_AP"]
        if improved:
            best.update({"mask_AP": m["AP"], "box_AP": b["AP"], "iteration": iteration})
        checkpoint(iteration, report)
        if improved:
            save_checkpoint(best_dir, params, cfg, metadata(iteration), optimizer.state_dict(),
                            report_json(report, {"iteration": iteration}))

    def draw_curves():
        try:
            plot_losses(log_path, png_path)
        except Exception as e:  # a plot is not worth losing a run for
            bar.message(f"warning: could not draw {png_path}: {type(e).__name__}: {e}")

    bar = ProgressBar(recipe.iterations, start, enabled=progress)
    log = open(log_path, "a", encoding="utf-8")
    in_step = False
    done = start  # updates completed
    try:
        for t in range(start, end):
            tic = time.perf_counter()
            indices = batch_for_iteration(n_train, recipe.batch_size, recipe.seed, t)
            images, targets = load_batch(train_set, indices, recipe.seed, t, recipe.flip_prob)
            data_time = time.perf_counter() - tic
            lr = schedule(t)
            try:
                losses, cache = train_forward(params, cfg, images, targets,
                                              np.random.default_rng([recipe.seed, t, MODEL_STREAM]))
            except ValueError as e:  # the box logic refuses non-finite boxes, deltas and scores
                if "NaN or infinity" not in str(e):
                    raise
                raise TrainingDiverged(_diverged_message(f"the forward pass produced NaN or infinity ({e})", t + 1,
                                                         lr, recipe.batch_size, last_dir, last_saved)) from None
            losses = {k: float(v) for k, v in losses.items()}
            bad = [k for k, v in losses.items() if not math.isfinite(v)]
            if bad:
                raise TrainingDiverged(_diverged_message(f"{bad[0]} is {losses[bad[0]]}", t + 1, lr,
                                                         recipe.batch_size, last_dir, last_saved))
            grads = train_backward(cache)
            del cache
            in_step = True
            try:
                info = optimizer.step(params, grads, lr)
            except FloatingPointError as e:
                in_step = False  # step() checks the gradient before it changes anything
                raise TrainingDiverged(_diverged_message(str(e), t + 1, lr, recipe.batch_size, last_dir,
                                                         last_saved)) from None
            in_step = False
            done = t + 1
            record = {"iteration": t + 1, "loss": sum(losses.values()), **losses, "lr": lr,
                      "grad_norm": info["grad_norm"], "clip_scale": info["clip_scale"],
                      "time": round(time.perf_counter() - tic, 4),
                      "data_time": round(data_time, 4)}
            log.write(json.dumps(record) + "\n")
            log.flush()
            bar.update(done, losses, lr)
            if done == recipe.iterations or (recipe.eval_every and done % recipe.eval_every == 0):
                if val_set is not None:
                    evaluate_now(done)
                else:
                    checkpoint(done)
                if plot:
                    draw_curves()
        if last_saved != end:
            checkpoint(end)
            if plot:
                draw_curves()
    except KeyboardInterrupt:
        bar.close()
        if not in_step and done != last_saved:
            checkpoint(done)  # not inside an update: the parameters are those after `done` updates
        where = f"last/ holds iteration {last_saved}" if last_saved is not None else "no checkpoint was written"
        print_fn(f"interrupted after {done} iterations; {where}. "
                 f"Continue with: tinymask train --out {out_dir} --resume")
        raise
    finally:
        bar.close()
        log.close()

    seconds = time.perf_counter() - session_start
    summary = {"iteration": end, "bbox": None, "segm": None, "best": best, "seconds": seconds,
               "total_seconds": previous_seconds + seconds, "out_dir": out_dir}
    if last_report is not None:
        summary["bbox"], summary["segm"] = last_report["bbox"].summary(), last_report["segm"].summary()
    if end >= recipe.iterations:
        if last_report is not None:
            print_fn(last_report["table"])
            print_fn(f"\nafter {end} iterations: {short_summary(last_report)}")
            print_fn(f"best mask AP {best['mask_AP']:.3f} at iteration {best['iteration']} ({best_dir})")
        print_fn(f"wall time {_hms(seconds)} this session, {_hms(previous_seconds + seconds)} in all; "
                 f"checkpoints in {out_dir}")
    else:
        print_fn(f"stopped after {end} of {recipe.iterations} iterations ({_hms(seconds)}); "
                 f"continue with --resume")
    return summary
