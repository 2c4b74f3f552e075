"""Does every recipe tinymask ships train without diverging? Each recipe over N seeds, to the end of its schedule.

    python benchmarks/train_seeds.py                                  # every recipe, 8 seeds (hours on 2 cores)
    python benchmarks/train_seeds.py --recipes notebook --seeds 8     # the notebooks' 300-iteration run
    python benchmarks/train_seeds.py --recipes notebook --lr 0.04     # the same at twice the lr: the margin
    python benchmarks/train_seeds.py --quick                          # 2 seeds, at most 100 iterations each
    python benchmarks/train_seeds.py --jobs 2 --json runs/seeds.json  # two runs at a time; the results as JSON
    python benchmarks/train_seeds.py --recipes default --seeds 2 --first-seed 2   # seeds 2 and 3

Each run is `tinymask.training.loop.train` itself (no evaluation, so only the training loop is timed), in a temporary
folder, with one BLAS thread per worker. A run *diverges* when the loop raises `TrainingDiverged` (a loss or the
gradient stopped being finite, or the forward pass produced NaN or infinity). From its log.jsonl the table also
gives, per recipe:

- **worst spike**: the largest `loss_t / median(loss_{t-20} .. loss_{t-1})` over the run (after the first 20
  iterations), with the loss term that jumped most at that iteration. A healthy run stays below about 2; a run that
  is about to diverge goes through 10, 100, 10⁶ in a few iterations.
- **max ‖g‖**: the largest global gradient norm after the warm-up (before clipping, if the recipe clips), and how
  many updates were clipped.
- **final loss**: the mean total loss of the last 20 iterations, mean and spread over the seeds; a run that did not
  diverge but stopped learning (a "dead" head, docs/ablations.md) shows here.

The recipes (`RECIPES`) are the ones the project ships: `default` (`tinymask train` with no options), `notebook`
(notebooks 01 and 08: 300 iterations), `notebook-brief` (05, 09, 10: 150 iterations), and `ablate-<variant>`
(`tinymask ablate`'s quick setting for that variant; `--ablate-setting full` for the full one). Options override
any recipe field (`--lr`, `--warmup`, `--clip-grad-norm`, `--iterations`) to measure the margin.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

SPIKE_WINDOW = 20  # iterations in the running median a spike is measured against

#: the notebooks' training cells (notebooks/01_tour.py, ...) of 01 and 08 (300 iterations) and of 05, 09, 10 (150). The
#: test tests/test_train_seeds.py checks that the notebook sources still say so.
NOTEBOOK_RECIPE = dict(batch_size=4, warmup_iters=50, eval_every=0)


def recipe_names() -> list:
    from tinymask.training.ablations import VARIANTS
    return ["default", "notebook", "notebook-brief"] + [f"ablate-{v}" for v in VARIANTS]


def build(name: str, seed: int, overrides: dict, ablate_setting: str = "quick", num_train: int | None = None):
    """(cfg, Recipe, train_set) of a shipped recipe for one seed, with `overrides` (Recipe fields) applied."""
    from tinymask.config import MaskRCNNConfig
    from tinymask.data.shapes import ShapesDataset
    from tinymask.training.recipe import Recipe

    if name.startswith("ablate-"):
        from tinymask.training.ablations import make_setting, variant_config
        s = make_setting(ablate_setting)
        data = dict(seed=0, image_size=s.image_size, difficulty=s.difficulty)
        train_set = ShapesDataset("train", num_train or s.num_train, **data)
        cfg = variant_config(name[len("ablate-"):], train_set.class_names, s.image_size)
        fields = dict(iterations=s.iterations, batch_size=s.batch_size, lr=s.lr,
                      warmup_iters=min(s.warmup_iters, s.iterations), eval_every=0,
                      clip_grad_norm=s.clip_grad_norm)  # as tinymask.training.ablations.run_one builds it
    else:
        from tinymask.data.describe import SHAPES_DEFAULTS as d
        train_set = ShapesDataset("train", num_train or d["num_train"], seed=d["seed"], image_size=d["image_size"],
                                  difficulty=d["difficulty"])
        cfg = MaskRCNNConfig.preset("small")
        if name == "default":
            fields = {}
        elif name in ("notebook", "notebook-brief"):
            fields = dict(NOTEBOOK_RECIPE, iterations=300 if name == "notebook" else 150)
        else:
            raise ValueError(f"unknown recipe {name!r}; known: {recipe_names()}")
    fields.update(overrides)
    if "iterations" in overrides and "warmup_iters" not in overrides:
        base = Recipe(**{k: v for k, v in fields.items() if k != "iterations"})
        fields["warmup_iters"] = min(base.warmup_iters, fields["iterations"])
    return cfg, Recipe(**{**fields, "seed": seed}), train_set


def spike_stats(steps: list) -> dict:
    """Worst loss spike, the term behind it, max gradient norm after warm-up, clipped updates, final loss."""
    worst, at, term = 1.0, None, None
    losses = [s["loss"] for s in steps]
    for i in range(SPIKE_WINDOW, len(steps)):
        ratio = losses[i] / statistics.median(losses[i - SPIKE_WINDOW:i])
        if ratio > worst:
            prev = steps[i - SPIKE_WINDOW:i]
            worst, at = ratio, steps[i]["iteration"]
            term = max((k for k in steps[i] if k.startswith("loss_")),
                       key=lambda k: steps[i][k] / max(statistics.median(p[k] for p in prev), 1e-6))
    warm = [s for s in steps if s["lr"] >= max(x["lr"] for x in steps) * 0.999] or steps
    return {"worst_spike": worst, "spike_at": at, "spike_term": term,
            "max_grad_norm": max((s["grad_norm"] for s in warm), default=float("nan")),
            "clipped": sum(1 for s in steps if s.get("clip_scale", 1.0) < 1.0),
            "final_loss": statistics.mean(losses[-SPIKE_WINDOW:]) if losses else float("nan")}


def run_one(name: str, seed: int, overrides: dict, ablate_setting: str = "quick", num_train: int | None = None) -> dict:
    """Train one recipe with one seed in a temporary folder; the result as a dict (see the module docstring)."""
    from tinymask.training.loop import train
    from tinymask.training.divergence import TrainingDiverged

    cfg, recipe, train_set = build(name, seed, overrides, ablate_setting, num_train)
    start = time.perf_counter()
    diverged = None
    with tempfile.TemporaryDirectory(prefix="tinymask-seeds-") as out:
        try:
            train(cfg, recipe, train_set, None, out, progress=False, plot=False, print_fn=lambda *a, **k: None)
        except TrainingDiverged as e:
            diverged = str(e).split(". ")[0]
        with open(os.path.join(out, "log.jsonl")) as f:
            steps = [r for r in map(json.loads, filter(str.strip, f)) if "loss" in r]
    return {"recipe": name, "seed": seed, "iterations": recipe.iterations, "done": len(steps), "lr": recipe.lr,
            "batch_size": recipe.batch_size, "warmup_iters": recipe.warmup_iters,
            "clip_grad_norm": recipe.clip_grad_norm, "diverged": diverged,
            "seconds": round(time.perf_counter() - start, 1), **spike_stats(steps)}


def _init_worker():
    from tinymask.ops.threads import limit_threads
    limit_threads(1)


def table(results: list) -> str:
    """One row per recipe: runs, diverged, worst spike, max |g|, clipped updates, final loss."""
    rows = ["| recipe | lr | batch | warm-up | clip | iterations | seeds | diverged | worst spike (at, term) | "
            "max ‖g‖ after warm-up | clipped updates | final loss |",
            "|:--|--:|--:|--:|--:|--:|--:|:--|:--|--:|--:|:--|"]
    for name in dict.fromkeys(r["recipe"] for r in results):
        rs = [r for r in results if r["recipe"] == name]
        bad = [r for r in rs if r["diverged"]]
        w = max(rs, key=lambda r: r["worst_spike"])
        finals = [r["final_loss"] for r in rs if not r["diverged"]]
        final = (f"{statistics.mean(finals):.3f} ± {statistics.stdev(finals):.3f}" if len(finals) > 1 else
                 f"{finals[0]:.3f}" if finals else "-")
        div = (f"**{len(bad)}** (seeds {', '.join(str(r['seed']) for r in bad)}; "
               f"at {', '.join(str(r['done'] + 1) for r in bad)})" if bad else "0")
        spike = f"x{w['worst_spike']:.3g} (seed {w['seed']}, it {w['spike_at']}, {w['spike_term']})"
        rows.append(f"| {name} | {rs[0]['lr']:g} | {rs[0]['batch_size']} | {rs[0]['warmup_iters']} | "
                    f"{rs[0]['clip_grad_norm'] or '-'} | {rs[0]['iterations']} | {len(rs)} | {div} | {spike} | "
                    f"{max(r['max_grad_norm'] for r in rs):.3g} | {sum(r['clipped'] for r in rs)} | {final} |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipes", default="default,notebook,notebook-brief,ablate-fpn,ablate-fpn-mlp,ablate-c4",
                   help=f"comma-separated; 'all' for every one of: {', '.join(recipe_names())}")
    p.add_argument("--seeds", type=int, default=8, help="seeds 0 .. N-1 (default 8)")
    p.add_argument("--first-seed", type=int, default=0, metavar="S",
                   help="start at seed S instead: seeds S .. S+N-1 (to add seeds to an earlier table)")
    p.add_argument("--quick", action="store_true", help="2 seeds and at most 100 iterations per run")
    p.add_argument("--iterations", type=int, help="override every recipe's length (its warm-up and steps follow)")
    p.add_argument("--lr", type=float, help="override every recipe's learning rate (e.g. twice it: the margin)")
    p.add_argument("--warmup", type=int, help="override the warm-up length")
    p.add_argument("--clip-grad-norm", type=float, help="override the clipping (0: none)")
    p.add_argument("--num-train", type=int, help="fewer training images (a smoke test)")
    p.add_argument("--ablate-setting", default="quick", choices=["quick", "full"])
    p.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process with one thread")
    p.add_argument("--json", help="write every run's result to this file")
    args = p.parse_args(argv)

    names = recipe_names() if args.recipes == "all" else [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in recipe_names()]
    if unknown:
        p.error(f"unknown recipe(s) {unknown}; known: {', '.join(recipe_names())}")
    seeds = 2 if args.quick and args.seeds == 8 else args.seeds
    if seeds < 1 or args.first_seed < 0:
        p.error(f"--seeds must be >= 1 and --first-seed >= 0, got {seeds} and {args.first_seed}")
    overrides = {k: v for k, v in (("iterations", args.iterations), ("lr", args.lr), ("warmup_iters", args.warmup))
                 if v is not None}
    if args.clip_grad_norm is not None:
        overrides["clip_grad_norm"] = args.clip_grad_norm or None
    jobs = []
    for name in names:
        o = dict(overrides)
        if args.quick and "iterations" not in o:
            full = build(name, 0, {}, args.ablate_setting, num_train=1)[1].iterations
            if full > 100:
                o["iterations"] = 100
        jobs += [(name, s, o, args.ablate_setting, args.num_train)
                 for s in range(args.first_seed, args.first_seed + seeds)]
    print(f"{len(jobs)} runs ({', '.join(names)}; seeds {args.first_seed}..{args.first_seed + seeds - 1}), "
          f"{args.jobs} at a time", file=sys.stderr)
    results = []

    def report(r):
        results.append(r)
        status = f"DIVERGED at {r['done'] + 1}: {r['diverged']}" if r["diverged"] else "ok"
        print(f"  {r['recipe']} seed {r['seed']}: {status}; worst spike x{r['worst_spike']:.3g}, final loss "
              f"{r['final_loss']:.3f}, {r['seconds']:.0f} s", file=sys.stderr, flush=True)

    if args.jobs > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_init_worker) as pool:
            for r in pool.map(run_one, *zip(*jobs)):
                report(r)
    else:
        for job in jobs:
            report(run_one(*job))
    results.sort(key=lambda r: (names.index(r["recipe"]), r["seed"]))
    print(table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 1 if any(r["diverged"] for r in results) else 0


if __name__ == "__main__":
    from tinymask.ops.threads import limit_threads
    limit_threads(int(os.environ.get("TINYMASK_SEEDS_THREADS", "1")))
    sys.exit(main())
