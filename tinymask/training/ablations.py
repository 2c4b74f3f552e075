"""Paper Table 2 in miniature: train the ablation variants on synthetic shapes, print the paper's tables beside ours.

*Paper:* He et al., *Mask R-CNN*, ICCV 2017, §4.2 "Ablation Experiments" and Table 2 (a)–(e), all trained on COCO
trainval35k and reported as mask AP on minival. · *Code:* `tinymask/training/ablations.py` · *Command:* `tinymask ablate` ·
*Docs:* `docs/ablations.md` · *Notebook:* `notebooks/12_ablations.ipynb` · *Test:* `tests/test_ablations.py`

    tinymask ablate                      # the quick setting: every table, 2 seeds (about 15 minutes on 2 cores)
    tinymask ablate --setting full       # the setting whose results are in docs/ablations.md
    tinymask ablate --tables c d         # only Table 2(c) and 2(d)

## What is compared

Each table changes one thing and keeps the rest fixed, as the paper does:

- (a) backbone: C4 (RoIs on the stride-16 map, ResNet stage 5 as the head) vs FPN;
- (b) mask loss: per-class sigmoid vs multinomial softmax, and (§4.2) class-specific vs class-agnostic masks;
- (c) RoI features at stride 16 (C4): RoIPool, RoIWarp (max, average), RoIAlign (max, average);
- (d) the same question at stride 32 (C5, with Fig. 4 right's heads): RoIPool vs RoIAlign, mask and box AP;
- (e) mask head on FPN: the FCN (four 3×3 convs + deconv) vs an MLP (fc → fc → fc to K·28·28).

The models are the paper's architectures at CPU widths (`mini_config`): a one-block-per-stage GroupNorm ResNet with
16-channel stem and stage widths 32/64/128/256, trained from scratch. C4 pools 14×14 RoIs and runs stage 5 on them,
the mask branch deconvolving its 7×7 output to 14×14 masks; FPN and C5 pool 7×7 for a 2-fc box head and 14×14 for
the mask head (28×28 masks). The variants of one table differ only in the switch the table is about.

**The data** are shapes drawn at 256×256 (objects of about 30–130 pixels), so that an object spans a few cells of
the stride-16 map and one to three of the stride-32 map, roughly as a COCO object does in an 800-pixel image. At
128 pixels the C4 and C5 maps are 8×8 and 4×4 and no RoI extractor learns much; the `hard` variant (smaller objects,
six classes, more overlap) is offered with `--difficulty hard`.

## How a cell is measured

Every variant is trained once per seed (the seed sets the initial weights, the data order, the flips and the
sampling) with the same recipe and data, then evaluated with COCO mask AP (0.5:0.95), AP50 and AP75 on held-out
images (`tinymask.evaluation.evaluate`). A cell is the mean over the seeds ± their standard deviation; a Δ row is the
difference of two rows' means ± its standard error √(s₁²/n₁ + s₂²/n₂), so a reader can tell a gap from noise
(|Δ| below about two standard errors is not a result). AP50 saturates on shapes sooner than AP and AP75, which are
the columns to read.

**Settings** (`SETTINGS`): `quick` trains every variant 300 iterations with 2 seeds (about 15 minutes on a 2-core
machine, two runs at a time); `full` trains 800 iterations with 3 seeds (about an hour), the setting behind
docs/ablations.md. Both use batch 2, lr 0.02 with 100 iterations of linear warm-up and steps at 70 % and 90 %
(`tinymask.training.loop`), and clip the gradient's global norm at 5, which the paper does not: without it three of the six
full-setting FPN runs failed (docs/ablations.md; `--clip-grad-norm 0` turns it off). A run whose loss becomes NaN
is recorded as diverged and left out of its row's mean (marked *).

Runs go to `OUT/runs/<variant>/seed<k>/` (a normal training folder: log.jsonl, last/, eval.json) with their result
in `result.json`. A finished run is reused when the command is run again with the same setting, so an interrupted
ablation continues where it stopped (an interrupted run resumes from its last/ checkpoint). The tables are written
to `OUT/ablations.json`, `OUT/ablations.md` and `OUT/ablations.png`.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field

from tqdm import tqdm

from tinymask._files import write_json
from tinymask.ops.threads import thread_environment
from tinymask.training.ablation_report import PAPER_NOTE, TABLES, aggregate, format_table, machine_info, write_outputs

# ---------------------------------------------------------------------------------------------------------------
# The paper's numbers: Table 2 of Mask R-CNN (arXiv 1703.06870v3), mask AP / AP50 / AP75 on COCO minival.
# ---------------------------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------------------------
# The variants: which backbone, and which config switches.
# ---------------------------------------------------------------------------------------------------------------

VARIANTS = {
    "c4": ("c4", {}),
    "c4-softmax": ("c4", {"mask_loss": "softmax"}),
    "c4-agnostic": ("c4", {"class_agnostic_mask": True}),
    "c4-pool": ("c4", {"roi_extractor": "pool", "roi_mode": "max"}),
    "c4-warp-max": ("c4", {"roi_extractor": "warp", "roi_mode": "max"}),
    "c4-warp-avg": ("c4", {"roi_extractor": "warp", "roi_mode": "avg"}),
    "c4-align-max": ("c4", {"roi_extractor": "align", "roi_mode": "max"}),
    "c5": ("c5", {}),
    "c5-pool": ("c5", {"roi_extractor": "pool", "roi_mode": "max"}),
    "fpn": ("fpn", {}),
    "fpn-mlp": ("fpn", {"mask_head": "mlp"}),
}


def mini_config(backbone: str, class_names, image_size: int = 256, **overrides):
    """The paper's architectures at CPU widths (see the module docstring), for the classes of the data and square
    images of `image_size` pixels (kept at that size)."""
    from tinymask.config import MaskRCNNConfig

    d = MaskRCNNConfig.preset("small").to_dict()
    d.update(num_classes=len(class_names), class_names=list(class_names),
             stem_channels=16, base_channels=8, num_groups=8,  # stage outputs 32, 64, 128, 256 channels
             fpn_channels=32, box_head_representation=128, mask_head_layers=[32, 32, 32, 32], mask_mlp_hidden=128,
             rpn_batch_size_per_image=64, box_batch_size_per_image=32, min_size=image_size, max_size=image_size)
    if backbone == "c4":  # Fig. 4 left: 14x14 RoIs through stage 5 (-> 7x7), the mask branch a deconv to 14x14
        d.update(backbone="c4", anchor_sizes=[16, 32, 64, 128], box_pool_size=14, mask_pool_size=14,
                 mask_head_layers=[], mask_deconv_channels=32)
    elif backbone == "c5":  # Table 2(d): one stride-32 map with Fig. 4 right's heads
        d.update(backbone="c5", anchor_sizes=[16, 32, 64, 128])
    elif backbone != "fpn":
        raise ValueError(f"backbone must be 'c4', 'c5' or 'fpn', got {backbone!r}")
    d.update(overrides)
    return MaskRCNNConfig(**d)


def variant_config(variant: str, class_names, image_size: int = 256):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; known: {sorted(VARIANTS)}")
    backbone, overrides = VARIANTS[variant]
    return mini_config(backbone, class_names, image_size, **overrides)


# ---------------------------------------------------------------------------------------------------------------
# Settings.
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class Setting:
    """How much to train each variant. `quick` fits in about 15 minutes on a 2-core machine; `full` is the setting
    behind docs/ablations.md."""
    name: str = "quick"
    iterations: int = 300
    seeds: list = field(default_factory=lambda: [0, 1])
    num_train: int = 500
    num_val: int = 50
    difficulty: str = "easy"
    image_size: int = 256
    batch_size: int = 2
    lr: float = 0.02
    warmup_iters: int = 100  # quick: 50 let an FPN run diverge (NaN at iteration 65); full ran with 100
    clip_grad_norm: float | None = 5.0  # the paper does not clip; without it 3 of 6 full-setting FPN runs failed
    #                                     (docs/ablations.md); None (--clip-grad-norm 0): the paper's recipe

    def __post_init__(self):
        for name in ("iterations", "num_train", "num_val", "batch_size", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"setting {name} must be positive, got {getattr(self, name)}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers, got {self.seeds}")
        clip = self.clip_grad_norm
        if not self.lr > 0 or self.warmup_iters < 0 or (clip is not None and not clip > 0):
            raise ValueError(f"lr and clip_grad_norm must be positive and warmup_iters >= 0, got {self.lr}, "
                             f"{self.clip_grad_norm}, {self.warmup_iters}")
        if self.difficulty not in ("easy", "hard"):
            raise ValueError(f"difficulty must be 'easy' or 'hard', got {self.difficulty!r}")

    def run_spec(self, variant: str, seed: int) -> dict:
        """What one run's result depends on (a stored result is reused only when this matches)."""
        spec = {k: v for k, v in asdict(self).items() if k not in ("name", "seeds")}
        return {**spec, "variant": variant, "seed": seed}


SETTINGS = {
    "quick": dict(name="quick", iterations=300, seeds=[0, 1], num_train=500, num_val=50),
    "full": dict(name="full", iterations=800, seeds=[0, 1, 2], num_train=1000, num_val=100),
}


def make_setting(name: str = "quick", **overrides) -> Setting:
    if name not in SETTINGS:
        raise ValueError(f"unknown setting {name!r}; choose from {sorted(SETTINGS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides.get("clip_grad_norm") == 0:  # --clip-grad-norm 0: no clipping, the paper's recipe
        overrides["clip_grad_norm"] = None
    return Setting(**{**SETTINGS[name], **overrides})


def variants_for(tables) -> list:
    """The variants the chosen tables need, each once, in table order."""
    out = []
    for key in tables:
        for row in TABLES[key].rows:
            if row.variant not in out:
                out.append(row.variant)
    return out


# ---------------------------------------------------------------------------------------------------------------
# One run: train a variant with one seed, evaluate it, store its result.
# ---------------------------------------------------------------------------------------------------------------

RESULT_FILE = "result.json"


def run_dir(out_dir, variant: str, seed: int) -> str:
    return os.path.join(os.fspath(out_dir), "runs", variant, f"seed{seed}")


def load_result(directory, spec: dict) -> dict | None:
    """A stored result of this spec, or None (missing, unreadable or of another setting)."""
    path = os.path.join(directory, RESULT_FILE)
    try:
        with open(path) as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None
    return result if result.get("spec") == spec else None


def run_one(variant: str, seed: int, setting: dict, out_dir: str, backend: str | None = None) -> dict:
    """Train `variant` with `seed` under `setting` (a Setting as a dict) and return its result (also written to
    OUT/runs/<variant>/seed<seed>/result.json). Runs in a worker process when `tinymask ablate --jobs` > 1."""
    from tinymask.data.shapes import ShapesDataset
    from tinymask.ops.backend import use_backend
    from tinymask.training.divergence import TrainingDiverged
    from tinymask.training.loop import train
    from tinymask.training.recipe import Recipe
    from tinymask.weights.checkpoint import WEIGHTS_FILE
    setting = Setting(**setting)
    spec = setting.run_spec(variant, seed)
    directory = run_dir(out_dir, variant, seed)
    stored = load_result(directory, spec)
    if stored is not None:
        return stored
    data = dict(seed=0, image_size=setting.image_size, difficulty=setting.difficulty)
    train_set = ShapesDataset("train", setting.num_train, **data)
    val_set = ShapesDataset("val", setting.num_val, **data)
    cfg = variant_config(variant, train_set.class_names, setting.image_size)
    recipe = Recipe(iterations=setting.iterations, batch_size=setting.batch_size, lr=setting.lr,
                    warmup_iters=min(setting.warmup_iters, setting.iterations), eval_every=0, seed=seed,
                    clip_grad_norm=setting.clip_grad_norm)
    resume = os.path.exists(os.path.join(directory, "last", WEIGHTS_FILE))
    if resume:  # an interrupted run of another setting cannot be continued: start it again
        try:
            with open(os.path.join(directory, "spec.json")) as f:
                resume = json.load(f) == spec
        except (OSError, ValueError):
            resume = False
        if not resume:
            shutil.rmtree(directory)
    os.makedirs(directory, exist_ok=True)
    write_json(os.path.join(directory, "spec.json"), spec, indent=1)
    start = time.perf_counter()
    try:
        with use_backend(backend or _default_backend()):
            summary = train(cfg, recipe, train_set, val_set, directory, resume=resume, progress=False, plot=False,
                            data_info={"dataset": "shapes", **data, "num_train": setting.num_train,
                                       "num_val": setting.num_val}, print_fn=lambda *a, **k: None)
    except TrainingDiverged as e:  # a result too: this variant, this seed, this recipe does not train
        result = {"variant": variant, "seed": seed, "spec": spec, "segm": None, "bbox": None,
                  "diverged": str(e).split(". ")[0], "seconds": round(time.perf_counter() - start, 1)}
        write_json(os.path.join(directory, RESULT_FILE), result, indent=1)
        return result
    if summary["segm"] is None:  # resumed after its training had ended (stopped inside the final evaluation)
        from tinymask.evaluation.evaluate import evaluate_model
        from tinymask.weights.checkpoint import load_checkpoint
        params = load_checkpoint(os.path.join(directory, "last"))[0]
        report = evaluate_model(params, cfg, val_set, recipe.eval_batch_size)
        summary["segm"], summary["bbox"] = report["segm"].summary(), report["bbox"].summary()
    result = {"variant": variant, "seed": seed, "spec": spec, "segm": summary["segm"], "bbox": summary["bbox"],
              "seconds": round(summary["total_seconds"], 1)}
    write_json(os.path.join(directory, RESULT_FILE), result, indent=1)
    return result


def _default_backend() -> str:
    """Numba when it works (its kernels make a training iteration of these models 1.5-2x faster), else NumPy."""
    from tinymask.ops.backend import available_backends
    return "numba" if "numba" in available_backends() else "numpy"


def run_all(setting: Setting, variants: list, out_dir, *, jobs: int = 1, backend: str | None = None,
            log=print, progress: bool = False) -> list:
    """Every (variant, seed) run, `jobs` at a time in worker processes (each with cores // jobs BLAS threads).

    log: prints a line per finished run; progress: also a tqdm bar of finished runs on stderr (the lines above it).
    """
    results, todo = [], []  # finished runs' results; (variant, seed) pairs still to train
    for v in variants:
        for s in setting.seeds:
            stored = load_result(run_dir(out_dir, v, s), setting.run_spec(v, s))
            if stored is not None:
                results.append(stored)
            else:
                todo.append((v, s))
    if results:
        log(f"reusing {len(results)} finished run(s) from {os.path.join(os.fspath(out_dir), 'runs')}")
    if not todo:
        return results
    log(f"training {len(todo)} of {len(variants) * len(setting.seeds)} run(s) ({len(variants)} variant(s) x "
        f"{len(setting.seeds)} seed(s)), {setting.iterations} iterations each, {jobs} at a time")
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="run", file=sys.stderr, disable=not progress, dynamic_ncols=True)

    def report(r, done):
        if r["segm"] is None:
            what = f"DIVERGED ({r['diverged']})"
        else:
            what = f"mask AP {100 * r['segm']['AP']:5.1f}  AP75 {100 * r['segm']['AP75']:5.1f}"
        line = (f"  [{done}/{len(todo)}] {r['variant']:13s} seed {r['seed']}: {what}  ({r['seconds']:.0f} s; "
                f"{time.perf_counter() - start:.0f} s so far)")
        if progress:
            bar.write(line, file=sys.stderr)  # above the bar
        else:
            log(line)
        bar.update(1)

    payload, failed = asdict(setting), []
    if jobs <= 1:
        for i, (v, s) in enumerate(todo, 1):
            r = run_one(v, s, payload, os.fspath(out_dir), backend)
            results.append(r)
            report(r, i)
        bar.close()
        return results
    import concurrent.futures as cf
    import multiprocessing as mp
    threads = max(1, (os.cpu_count() or 1) // jobs)
    saved = {k: os.environ.get(k) for k in thread_environment(threads)}
    os.environ.update(thread_environment(threads))  # read by each fresh (spawned) worker's BLAS and Numba
    try:
        with cf.ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
            futures = {pool.submit(run_one, v, s, payload, os.fspath(out_dir), backend): (v, s) for v, s in todo}
            for i, fut in enumerate(cf.as_completed(futures), 1):
                try:
                    r = fut.result()
                except Exception as e:  # the other runs go on; their results are kept for the next call
                    failed.append(f"{futures[fut][0]} seed {futures[fut][1]}: {type(e).__name__}: {e}")
                    log(f"  [{i}/{len(todo)}] {futures[fut][0]} seed {futures[fut][1]} FAILED: {e}")
                    continue
                results.append(r)
                report(r, i)
    finally:
        bar.close()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed (the finished ones are kept; run the command again to "
                           f"retry the others):\n  " + "\n  ".join(failed))
    return results


# ---------------------------------------------------------------------------------------------------------------
# Aggregation and the tables.
# ---------------------------------------------------------------------------------------------------------------

def ablate(setting: Setting, tables, out_dir, *, jobs: int = 1, backend: str | None = None, command: str = "",
           log=print, progress: bool = False) -> dict:
    """Run (or reuse) every run the tables need, print the tables, write JSON, Markdown and PNG. Returns the report."""
    tables = list(tables)
    bad = [t for t in tables if t not in TABLES]
    if bad or not tables:
        raise ValueError(f"tables must be among {sorted(TABLES)}, got {tables}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    backend = backend or _default_backend()
    os.makedirs(out_dir, exist_ok=True)
    start = time.perf_counter()
    results = run_all(setting, variants_for(tables), out_dir, jobs=jobs, backend=backend, log=log,
                      progress=progress)
    report = {"setting": asdict(setting), "command": command, "machine": machine_info(jobs, backend),
              "minutes": (time.perf_counter() - start) / 60,
              "run_minutes": sum(r["seconds"] for r in results) / 60,
              "tables": aggregate(results, tables),
              "runs": [{k: r[k] for k in ("variant", "seed", "segm", "bbox", "seconds")} for r in results]}
    log("")
    for key in tables:
        log(format_table(key, report["tables"][key]))
        log("")
    log(PAPER_NOTE)
    paths = write_outputs(report, out_dir)
    log("wrote " + ", ".join(paths))
    return report
