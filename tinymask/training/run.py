"""A training run's bookkeeping, beside the loop: its folder, log, progress bar, evaluations and checkpoints.

*Code:* `tinymask/training/run.py` · *Test:* `tests/test_train.py`

`tinymask.training.loop.train` keeps the maths (forward, backward, step) in view and hands everything else to a
`TrainingRun`: where the run starts (fresh or resumed from `last/`), writing one log line per iteration, evaluating and
checkpointing on schedule, saving what it can on Ctrl-C, and the summary at the end. The folder's layout is in
`tinymask/training/loop.py`'s docstring; a checkpoint's in `tinymask/weights/checkpoint.py`'s.
"""
from __future__ import annotations

import json
import os
import sys
import time

from tqdm import tqdm

from tinymask._files import write_error, write_text
from tinymask.config import MaskRCNNConfig
from tinymask.evaluation.evaluate import evaluate_model, report_json, short_summary
from tinymask.model import init_params, is_trainable
from tinymask.training.divergence import DivergenceGuard, TrainingDiverged, diverged_message
from tinymask.training.optim import SGD
from tinymask.training.recipe import Recipe
from tinymask.visualize import plot_loss_curves
from tinymask.weights.checkpoint import (CHECKPOINT_FORMAT, CONFIG_FILE, EVAL_FILE, WEIGHTS_FILE, load_checkpoint,
                                         save_checkpoint)
from tinymask.weights.transfer import trains_with

SHORT_NAMES = {"loss_objectness": "obj", "loss_rpn_box_reg": "rpn_box", "loss_classifier": "cls",
               "loss_box_reg": "box", "loss_mask": "mask"}


def hms(seconds: float) -> str:
    """12:34 or 1:02:03."""
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def rewind_log(log_path: str, iteration: int) -> list[dict]:
    """Keep only the log lines of iterations <= `iteration` (a resumed run repeats the ones after its checkpoint),
    rewriting the file atomically (a kill half-way leaves the old log); returns the kept records."""
    if not os.path.exists(log_path):
        return []
    kept, records = [], []
    with open(log_path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the crash
            if record.get("iteration", 0) <= iteration:
                kept.append(line if line.endswith("\n") else line + "\n")
                records.append(record)
    write_text(log_path, "".join(kept))
    return records


class TrainingRun:
    """The state of one run around the loop: parameters, optimizer, best AP, the log and the checkpoints."""

    def __init__(self, cfg: MaskRCNNConfig, recipe: Recipe, val_set, out_dir, *, data_info=None, progress=True,
                 print_fn=print, plot=True):
        self.session_start = time.perf_counter()
        self.cfg, self.recipe, self.val_set = cfg, recipe, val_set
        self.out_dir = os.fspath(out_dir)
        os.makedirs(self.out_dir, exist_ok=True)
        self.last_dir, self.best_dir = os.path.join(self.out_dir, "last"), os.path.join(self.out_dir, "best")
        self.log_path = os.path.join(self.out_dir, "log.jsonl")
        self.png_path = os.path.join(self.out_dir, "loss_curves.png")
        self.gt = val_set.to_coco_gt() if val_set is not None else None
        self.data_info, self.progress, self.print_fn, self.plot = data_info or {}, progress, print_fn, plot
        self.best = {"mask_AP": None, "box_AP": None, "iteration": None}
        self.previous_seconds = 0.0
        self.last_saved = None  # the iteration last/ holds
        self.last_report = None
        self.params = self.optimizer = self.log = self.bar = None
        self.start = 0
        self.guard = DivergenceGuard()

    # -- starting ---------------------------------------------------------------------------------------------

    def begin(self, *, resume: bool, params: dict | None) -> None:
        """Fresh parameters (or `params`), or those of `last/` when resuming; open the log and the progress bar."""
        velocity = None
        if resume:
            self.params, saved_cfg, metadata, velocity = load_checkpoint(self.last_dir)
            if saved_cfg.to_dict() != self.cfg.to_dict():
                raise ValueError(f"the model config differs from the checkpoint's "
                                 f"{os.path.join(self.last_dir, CONFIG_FILE)}")
            self.start = self.last_saved = int(metadata["iteration"])
            self.best = metadata.get("best", self.best) or self.best
            self.previous_seconds = float(metadata.get("seconds", 0.0))
            history = rewind_log(self.log_path, self.start)
            self.guard = DivergenceGuard([r for r in history if "loss" in r])
        else:
            if os.path.exists(os.path.join(self.last_dir, WEIGHTS_FILE)):
                raise FileExistsError(f"{self.out_dir} already holds a run (last/); resume it with --resume or "
                                      f"choose another --out")
            self.params = (init_params(self.cfg, seed=self.recipe.seed) if params is None
                           else {k: v.copy() for k, v in params.items()})
            open(self.log_path, "w").close()
        r = self.recipe
        trainable = [k for k in self.params
                     if is_trainable(k, self.cfg) and trains_with(k, r.trainable_backbone_layers)]
        self.optimizer = SGD(self.params, trainable=trainable,
                             momentum=r.momentum, weight_decay=r.weight_decay, clip_grad_norm=r.clip_grad_norm)
        if velocity is not None:
            self.optimizer.load_state_dict(velocity)
        if self.start >= r.iterations:
            self.print_fn(f"{self.out_dir} has done its {self.start} iterations already; nothing to train (raise "
                          f"--iterations to go on)")
        self.log = open(self.log_path, "a", encoding="utf-8")
        self.bar = tqdm(total=r.iterations, initial=self.start, disable=not self.progress, file=sys.stderr,
                        unit="it", dynamic_ncols=True, smoothing=0.1)

    # -- each iteration ---------------------------------------------------------------------------------------

    def diverged(self, what: str, iteration: int, lr: float) -> TrainingDiverged:
        """The error that stops a run at `iteration` (1-based), saying what to do and what is kept."""
        return TrainingDiverged(diverged_message(what, iteration, lr, self.recipe.batch_size, self.last_dir,
                                                 self.last_saved))

    def write_log(self, record: dict) -> None:
        try:
            self.log.write(json.dumps(record) + "\n")
            self.log.flush()
        except OSError as e:  # a full disk: say which file; the checkpoints are written elsewhere, atomically
            raise write_error(self.log_path, e, " (the checkpoints in last/ and best/ are intact)") from e

    def log_iteration(self, iteration: int, losses: dict, lr: float, step_info: dict, seconds: float,
                      data_seconds: float) -> None:
        """One line of log.jsonl, the progress bar moved on, and the divergence guard told the iteration was fine."""
        self.guard.record(sum(losses.values()), step_info["grad_norm"])
        self.write_log({"iteration": iteration, "loss": sum(losses.values()), **losses, "lr": lr,
                        "grad_norm": step_info["grad_norm"], "clip_scale": step_info["clip_scale"],
                        "time": round(seconds, 4), "data_time": round(data_seconds, 4)})
        terms = " ".join(f"{SHORT_NAMES.get(k, k)} {v:.3f}" for k, v in losses.items())
        self.bar.set_postfix_str(f"lr {lr:.2e} | loss {sum(losses.values()):.3f} ({terms})", refresh=False)
        self.bar.update(iteration - self.bar.n)

    def is_checkpoint_iteration(self, iteration: int) -> bool:
        every = self.recipe.eval_every
        return iteration == self.recipe.iterations or bool(every and iteration % every == 0)

    def message(self, text: str) -> None:
        """A line above the progress bar (shown only with the bar)."""
        if self.progress:
            self.bar.write(text, file=sys.stderr)

    # -- evaluation and checkpoints ---------------------------------------------------------------------------

    def metadata(self, iteration: int) -> dict:
        return {"format": CHECKPOINT_FORMAT, "iteration": iteration, "recipe": self.recipe.to_dict(),
                "data": self.data_info, "seed": self.recipe.seed, "best": self.best,
                "seconds": self.previous_seconds + time.perf_counter() - self.session_start,
                "rng": "per iteration t: default_rng([seed, t, 1]) flips, default_rng([seed, t, 2]) sampling; "
                       "order: epoch_order(n, seed, epoch)"}

    def checkpoint(self, iteration: int, report: dict | None = None) -> None:
        """Write last/ (atomically) with the parameters after `iteration` updates."""
        save_checkpoint(self.last_dir, self.params, self.cfg, self.metadata(iteration), self.optimizer.state_dict(),
                        report_json(report, {"iteration": iteration}) if report else None)
        self.last_saved = iteration

    def evaluate_and_checkpoint(self, iteration: int) -> None:
        """COCO AP on the held-out set (when there is one), then last/, and best/ when the mask AP improved."""
        if self.val_set is None:
            self.checkpoint(iteration)
        else:
            self.message(f"evaluating at iteration {iteration} on {len(self.val_set)} images ...")
            report = evaluate_model(self.params, self.cfg, self.val_set, self.recipe.eval_batch_size, gt=self.gt,
                                    out_path=os.path.join(self.out_dir, EVAL_FILE), extra={"iteration": iteration})
            self.last_report = report
            b, m = report["bbox"].summary(), report["segm"].summary()
            self.write_log({"iteration": iteration, "eval_seconds": round(report["seconds"], 3),
                            **{f"box_{k}": b[k] for k in ("AP", "AP50", "AP75")},
                            **{f"mask_{k}": m[k] for k in ("AP", "AP50", "AP75")}})
            self.message(f"iteration {iteration}: {short_summary(report)} ({report['seconds']:.0f} s)")
            improved = self.best["mask_AP"] is None or m["AP"] > self.best["mask_AP"]
            if improved:
                self.best.update({"mask_AP": m["AP"], "box_AP": b["AP"], "iteration": iteration})
            self.checkpoint(iteration, report)
            if improved:
                save_checkpoint(self.best_dir, self.params, self.cfg, self.metadata(iteration),
                                self.optimizer.state_dict(), report_json(report, {"iteration": iteration}))
        self.draw_curves()

    def draw_curves(self) -> None:
        if not self.plot:
            return
        try:
            plot_loss_curves(self.log_path, self.png_path)
        except Exception as e:  # a plot is not worth losing a run for
            self.message(f"warning: could not draw {self.png_path}: {type(e).__name__}: {e}")

    # -- ending -----------------------------------------------------------------------------------------------

    def interrupted(self, done: int, in_step: bool) -> None:
        """Ctrl-C: write last/ unless the parameters are half-updated, and say how to continue."""
        self.bar.close()
        if not in_step and done != self.last_saved:
            self.checkpoint(done)  # not inside an update: the parameters are those after `done` updates
        where = f"last/ holds iteration {self.last_saved}" if self.last_saved is not None else \
            "no checkpoint was written"
        self.print_fn(f"interrupted after {done} iterations; {where}. "
                      f"Continue with: tinymask train --out {self.out_dir} --resume")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.log is not None:
            self.log.close()

    def summary(self, end: int) -> dict:
        """Print the final table and times; return the summary dict `train` returns."""
        seconds = time.perf_counter() - self.session_start
        total = self.previous_seconds + seconds
        summary = {"iteration": end, "bbox": None, "segm": None, "best": self.best, "seconds": seconds,
                   "total_seconds": total, "out_dir": self.out_dir}
        report = self.last_report
        if report is not None:
            summary["bbox"], summary["segm"] = report["bbox"].summary(), report["segm"].summary()
        if end >= self.recipe.iterations:
            if report is not None:
                self.print_fn(report["table"])
                self.print_fn(f"\nafter {end} iterations: {short_summary(report)}")
                self.print_fn(f"best mask AP {self.best['mask_AP']:.3f} at iteration {self.best['iteration']} "
                              f"({self.best_dir})")
            self.print_fn(f"wall time {hms(seconds)} this session, {hms(total)} in all; checkpoints in "
                          f"{self.out_dir}")
        else:
            self.print_fn(f"stopped after {end} of {self.recipe.iterations} iterations ({hms(seconds)}); "
                          f"continue with --resume")
        return summary
