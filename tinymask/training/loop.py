"""The training loop: each iteration's batch, forward, backward and SGD step, in a few lines.

*Paper:* He et al., *Mask R-CNN*, ICCV 2017, §3.1 "Training": the five losses are minimised jointly with SGD
(momentum 0.9, weight decay 1e-4, a step schedule), images flipped horizontally at random. · *Code:*
`tinymask/training/loop.py` · *Test:* `tests/test_train.py`

    from tinymask.training import Recipe, train
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

A checkpoint's contents, and how it is written so that a crash never leaves half of one, are in
`tinymask/weights/checkpoint.py`. A run that diverges stops with `TrainingDiverged` (`tinymask/training/divergence.py`); why the recipe clips the gradient
is in `tinymask/training/recipe.py`.
"""
from __future__ import annotations

import time

import numpy as np

from tinymask.config import MaskRCNNConfig
from tinymask.evaluation.evaluate import check_category_ids
from tinymask.model import train_backward, train_forward
from tinymask.training.batches import batch_for_iteration, load_batch, model_rng
from tinymask.training.recipe import Recipe
from tinymask.training.run import TrainingRun


def train(cfg: MaskRCNNConfig, recipe: Recipe, train_set, val_set, out_dir, *, resume: bool = False,
          stop_after: int | None = None, data_info: dict | None = None, progress: bool = True,
          print_fn=print, params: dict | None = None, plot: bool = True) -> dict:
    """Train a model, evaluating on `val_set` and writing checkpoints into `out_dir` (see the module docstring).

    cfg, recipe:  the model and how to train it. `cfg.category_ids` (if set) must be the data's
                  (`tinymask.evaluation.evaluate.dataset_category_ids(train_set)`; `tinymask train` sets it).
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
    Raises TrainingDiverged when a loss or the gradient stops being finite or jumps orders of magnitude above its
    recent values (`tinymask/training/divergence.py`), before that iteration's update or any later checkpoint.
    """
    if len(train_set) < 1:
        raise ValueError("the training set is empty")
    check_category_ids(cfg, train_set, "the training set")  # cfg.category_ids: what results.json will say
    if val_set is not None:
        check_category_ids(cfg, val_set, "the held-out set")  # before training, not at the first evaluation
    run = TrainingRun(cfg, recipe, val_set, out_dir, data_info=data_info, progress=progress, print_fn=print_fn,
                      plot=plot)
    run.begin(resume=resume, params=params)
    end = max(run.start, recipe.iterations if stop_after is None else min(stop_after, recipe.iterations))
    schedule = recipe.schedule()
    params, optimizer = run.params, run.optimizer
    done, in_step = run.start, False  # updates completed; whether the parameters are half-updated
    try:
        for t in range(run.start, end):
            tic = time.perf_counter()
            images, targets = load_batch(train_set, batch_for_iteration(len(train_set), recipe.batch_size,
                                                                        recipe.seed, t),
                                         recipe.seed, t, recipe.flip_prob)
            data_seconds = time.perf_counter() - tic
            lr = schedule(t)
            with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # the guard reports a blow-up
                losses, cache = forward(run, params, cfg, images, targets, model_rng(recipe.seed, t), t + 1, lr)
                grads = train_backward(cache)
                del cache
                in_step = True
                info = step(run, optimizer, params, grads, lr, t + 1)
            in_step, done = False, t + 1
            run.log_iteration(done, losses, lr, info, time.perf_counter() - tic, data_seconds)
            if run.is_checkpoint_iteration(done):
                run.evaluate_and_checkpoint(done)
        if run.last_saved != end:
            run.checkpoint(end)
            run.draw_curves()
    except KeyboardInterrupt:
        run.interrupted(done, in_step)
        raise
    finally:
        run.close()
    return run.summary(end)


def forward(run: TrainingRun, params, cfg, images, targets, rng, iteration: int, lr: float):
    """`train_forward` -> ({loss name: float}, cache); TrainingDiverged when a loss is not finite or far above its
    recent values (`tinymask/training/divergence.py`), or the box logic's input is not finite (the box logic refuses
    NaN boxes, deltas and scores with a ValueError that says so)."""
    try:
        losses, cache = train_forward(params, cfg, images, targets, rng)
    except ValueError as e:
        if "NaN or infinity" not in str(e):
            raise
        raise run.diverged(f"the forward pass produced NaN or infinity ({e})", iteration, lr) from None
    losses = {k: float(v) for k, v in losses.items()}
    why = run.guard.check_losses(losses)
    if why:
        raise run.diverged(why, iteration, lr)
    return losses, cache


def step(run: TrainingRun, optimizer, params, grads, lr: float, iteration: int) -> dict:
    """One SGD update (`tinymask.training.optim.SGD.step`), after the gradient's norm passed the divergence guard;
    when it does not, TrainingDiverged, and the parameters are still those of the last update."""
    norm = optimizer.gradient_norm(grads)
    why = run.guard.check_grad_norm(norm)
    if why:
        raise run.diverged(why, iteration, lr)
    return optimizer.step(params, grads, lr, grad_norm=norm)
