"""Paper Table 2 in miniature: train the ablation variants on synthetic shapes, print the paper's tables beside ours.

*Paper:* He et al., *Mask R-CNN*, ICCV 2017, §4.2 "Ablation Experiments" and Table 2 (a)–(e), all trained on COCO
trainval35k and reported as mask AP on minival. · *Code:* `tinymask/training/ablations.py` · *Command:* `tinymask ablate` ·
*Docs:* `docs/ablations.md` · *Notebook:* `notebooks/12_ablations.ipynb` · *Test:* `tests/test_ablate.py`

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

import io
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field

from tinymask._files import atomic_write
from tinymask._files import write_json, write_text
from tinymask.ops.threads import thread_environment

# ---------------------------------------------------------------------------------------------------------------
# The paper's numbers: Table 2 of Mask R-CNN (arXiv 1703.06870v3), mask AP / AP50 / AP75 on COCO minival.
# ---------------------------------------------------------------------------------------------------------------

METRICS = ("AP", "AP50", "AP75")


@dataclass(frozen=True)
class Row:
    label: str  # the row's name in the paper's table
    variant: str  # the key of the tinymask variant that plays it (VARIANTS)
    paper: tuple  # the paper's (AP, AP50, AP75) mask; None where the paper gives no figure
    paper_box: tuple | None = None  # the paper's box (AP, AP50, AP75), Table 2(d) only
    marks: tuple = ()  # extra columns of the paper's table (Table 2c: align? bilinear? agg.)


@dataclass(frozen=True)
class Table:
    key: str
    title: str
    paper_model: str
    ours_model: str
    rows: tuple
    deltas: tuple = ()  # (row a, row b): print "b − a" like the paper's Δ rows
    mark_names: tuple = ()
    box: bool = False  # also show box AP (Table 2d)


TABLES = {
    "a": Table("a", "Backbone architecture", "ResNet-50", "mini ResNet (1 block per stage)",
               (Row("C4", "c4", (30.3, 51.2, 31.5)),
                Row("FPN", "fpn", (33.6, 55.2, 35.3))),
               deltas=((0, 1),)),
    "b": Table("b", "Multinomial vs. independent masks", "ResNet-50-C4", "mini C4",
               (Row("softmax", "c4-softmax", (24.8, 44.1, 25.1)),
                Row("sigmoid", "c4", (30.3, 51.2, 31.5)),
                Row("class-agnostic (§4.2)", "c4-agnostic", (29.7, None, None))),
               deltas=((0, 1), (2, 1))),
    "c": Table("c", "RoIAlign at stride 16", "ResNet-50-C4", "mini C4",
               (Row("RoIPool", "c4-pool", (26.9, 48.8, 26.4), marks=("", "", "max")),
                Row("RoIWarp", "c4-warp-max", (27.2, 49.2, 27.1), marks=("", "x", "max")),
                Row("RoIWarp", "c4-warp-avg", (27.1, 48.9, 27.1), marks=("", "x", "ave")),
                Row("RoIAlign", "c4-align-max", (30.2, 51.0, 31.8), marks=("x", "x", "max")),
                Row("RoIAlign", "c4", (30.3, 51.2, 31.5), marks=("x", "x", "ave"))),
               deltas=((0, 4),), mark_names=("align?", "bilinear?", "agg.")),
    "d": Table("d", "RoIAlign at stride 32", "ResNet-50-C5", "mini C5",
               (Row("RoIPool", "c5-pool", (23.6, 46.5, 21.6), paper_box=(28.2, 52.7, 26.9)),
                Row("RoIAlign", "c5", (30.9, 51.8, 32.1), paper_box=(34.0, 55.3, 36.4))),
               deltas=((0, 1),), box=True),
    "e": Table("e", "Mask branch", "ResNet-50-FPN", "mini FPN",
               (Row("MLP  fc: 1024 -> 1024 -> K*28^2", "fpn-mlp", (31.5, 53.7, 32.8)),
                Row("FCN  conv: 256 x4 -> deconv -> K", "fpn", (33.6, 55.2, 35.3))),
               deltas=((0, 1),)),
}
PAPER_NOTE = ("paper: Mask R-CNN Table 2, mask AP on COCO minival (class-agnostic: §4.2); "
              "ours: mask AP x 100 on held-out shapes, mean ± std over seeds")

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
    from tinymask.ops.backend import use_backend
    from tinymask.data.shapes import ShapesDataset
    from tinymask.training.recipe import Recipe, TrainingDiverged
    from tinymask.training.loop import train
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
            log=print) -> list:
    """Every (variant, seed) run, `jobs` at a time in worker processes (each with cores // jobs BLAS threads)."""
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

    def report(r, done):
        if r["segm"] is None:
            what = f"DIVERGED ({r['diverged']})"
        else:
            what = f"mask AP {100 * r['segm']['AP']:5.1f}  AP75 {100 * r['segm']['AP75']:5.1f}"
        log(f"  [{done}/{len(todo)}] {r['variant']:13s} seed {r['seed']}: {what}  ({r['seconds']:.0f} s; "
            f"{time.perf_counter() - start:.0f} s so far)")

    payload, failed = asdict(setting), []
    if jobs <= 1:
        for i, (v, s) in enumerate(todo, 1):
            r = run_one(v, s, payload, os.fspath(out_dir), backend)
            results.append(r)
            report(r, i)
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

def mean_std(values: list) -> dict:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n, "values": values}


def aggregate(results: list, tables) -> dict:
    """Per table and row: our mask (and box) AP/AP50/AP75 over seeds (x 100), the paper's, and the Δ rows."""
    by_variant = {}
    for r in results:
        by_variant.setdefault(r["variant"], []).append(r)
    out = {}
    for key in tables:
        t = TABLES[key]
        rows = []
        for row in t.rows:
            runs = sorted(by_variant.get(row.variant, []), key=lambda r: r["seed"])
            if not runs:
                raise ValueError(f"no result for variant {row.variant} of Table 2({key})")
            done = [r for r in runs if r["segm"] is not None]  # a diverged run has no AP: it is listed, not averaged
            ours = None if not done else {
                "mask": {m: mean_std([100 * r["segm"][m] for r in done]) for m in METRICS},
                "box": {m: mean_std([100 * r["bbox"][m] for r in done]) for m in METRICS}}
            rows.append({"label": row.label, "variant": row.variant, "marks": list(row.marks),
                         "seeds": [r["seed"] for r in done], "diverged": [r["seed"] for r in runs if r["segm"] is None],
                         "ours": ours,
                         "paper": {"mask": dict(zip(METRICS, row.paper)),
                                   "box": dict(zip(METRICS, row.paper_box)) if row.paper_box else None}})
        deltas = []
        for a, b in t.deltas:
            d = {"from": rows[a]["label"] + (f" {rows[a]['marks'][-1]}" if rows[a]["marks"] else ""),
                 "to": rows[b]["label"] + (f" {rows[b]['marks'][-1]}" if rows[b]["marks"] else ""),
                 "rows": [a, b]}
            for kind in ("mask", "box"):
                d[kind] = {}
                for m in METRICS:
                    pa, pb = (rows[a]["paper"][kind] or {}).get(m), (rows[b]["paper"][kind] or {}).get(m)
                    d[kind][m] = {"ours": None, "se": None,
                                  "paper": None if pa is None or pb is None else round(pb - pa, 1)}
                    if rows[a]["ours"] is None or rows[b]["ours"] is None:
                        continue  # every seed of one row diverged
                    x, y = rows[a]["ours"][kind][m], rows[b]["ours"][kind][m]
                    d[kind][m]["ours"] = y["mean"] - x["mean"]
                    d[kind][m]["se"] = math.sqrt(x["std"] ** 2 / x["n"] + y["std"] ** 2 / y["n"])
            deltas.append(d)
        out[key] = {"title": t.title, "paper_model": t.paper_model, "ours_model": t.ours_model,
                    "mark_names": list(t.mark_names), "box": t.box, "rows": rows, "deltas": deltas}
    return out


def _ours(row: dict, kind: str, metric: str, markdown: bool) -> str:
    """Our cell: mean ± std over the seeds that trained; "*" when some seeds diverged, "diverged" when all did."""
    if row["ours"] is None:
        return "diverged"
    s = row["ours"][kind][metric]
    star = "*" if row.get("diverged") else ""
    return f"{s['mean']:.1f} ± {s['std']:.1f}{star}" if markdown else f"{s['mean']:5.1f} ±{s['std']:4.1f}{star}"


def _delta(d: dict, kind: str, metric: str, markdown: bool) -> str:
    v = d[kind][metric]
    if v["ours"] is None:
        return "-"
    return f"**{v['ours']:+.1f}** ± {v['se']:.1f}" if markdown else f"{v['ours']:+6.1f} ±{v['se']:3.1f}"


def _diverged_note(t: dict) -> list:
    return [f"* {r['label']}: seed(s) {', '.join(map(str, r['diverged']))} diverged (the loss became NaN), left out"
            for r in t["rows"] if r.get("diverged")]


def _paper(v) -> str:
    return "   - " if v is None else f"{v:5.1f}"


def format_table(key: str, t: dict, markdown: bool = False) -> str:
    """One table in the paper's layout: the paper's columns, ours (mean ± std) and the paper's side by side."""
    kinds = ["mask", "box"] if t["box"] else ["mask"]
    head = f"Table 2({key}) {t['title']} — paper: {t['paper_model']}; ours: {t['ours_model']}"
    cols = []
    for kind in kinds:
        pre = "" if kind == "mask" else "box "
        cols += [f"{pre}{m}" for m in METRICS]
    if markdown:
        lines = [f"**{head}**", ""]
        header = ["", *t["mark_names"]] + [f"ours {c}" for c in cols] + [f"paper {c}" for c in cols]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "|".join([":--"] + [":-:"] * (len(header) - 1)) + "|")
        for r in t["rows"]:
            ours = [_ours(r, k, m, True) for k in kinds for m in METRICS]
            paper = [_paper((r["paper"][k] or {}).get(m)).strip() for k in kinds for m in METRICS]
            lines.append("| " + " | ".join([r["label"], *r["marks"], *ours, *paper]) + " |")
        for d in t["deltas"]:
            ours = [_delta(d, k, m, True) for k in kinds for m in METRICS]
            paper = ["-" if d[k][m]["paper"] is None else f"{d[k][m]['paper']:+.1f}" for k in kinds for m in METRICS]
            lines.append("| " + " | ".join([f"Δ {d['to']} − {d['from']}", *[""] * len(t["mark_names"]), *ours,
                                             *paper]) + " |")
        notes = _diverged_note(t)
        return "\n".join(lines + ([""] + [n + "  " for n in notes] if notes else []))
    marks_w = [max(len(n), 3) for n in t["mark_names"]]
    delta_labels = [f"Δ {d['to']} − {d['from']}" for d in t["deltas"]]
    label_w = max(len(x) for x in [r["label"] for r in t["rows"]] + delta_labels) + 2
    pw = [max(7, len(c)) + 1 for c in cols]  # paper column widths
    bar = " " * (label_w + sum(w + 1 for w in marks_w))
    lines = [head]
    lines.append(bar + "  | " + f"{'ours: mean ±std over seeds':^{12 * len(cols)}}" + "  | " + f"{'paper':^{sum(pw)}}")
    top = " " * label_w + "".join(f"{n:>{w + 1}}" for n, w in zip(t["mark_names"], marks_w))
    top += "  | " + "".join(f"{c:>12}" for c in cols) + "  | " + "".join(f"{c:>{w}}" for c, w in zip(cols, pw))
    lines.append(top)
    cells = [(k, m) for k in kinds for m in METRICS]
    for r in t["rows"]:
        s = f"{r['label']:<{label_w}}" + "".join(f"{m:>{w + 1}}" for m, w in zip(r["marks"], marks_w))
        s += "  | " + "".join(f"{_ours(r, k, m, False):>12}" for k, m in cells)
        s += "  | " + "".join(f"{_paper((r['paper'][k] or {}).get(m)):>{w}}" for (k, m), w in zip(cells, pw))
        lines.append(s)
    for d, label in zip(t["deltas"], delta_labels):
        s = f"{label:<{label_w}}" + " " * sum(w + 1 for w in marks_w)
        s += "  | " + "".join(_delta(d, k, m, False).rjust(12) for k, m in cells)
        s += "  | " + "".join(("-" if d[k][m]["paper"] is None else f"{d[k][m]['paper']:+.1f}").rjust(w)
                              for (k, m), w in zip(cells, pw))
        lines.append(s)
    if t["deltas"]:
        lines.append("(Δ: a difference of means, ± its standard error over seeds)")
    return "\n".join(lines + _diverged_note(t))


def machine_info(jobs: int, backend: str) -> dict:
    import numpy as np
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "python": sys.version.split()[0], "numpy": np.__version__,
            "jobs": jobs, "backend": backend,
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)")}


def write_outputs(report: dict, out_dir) -> list:
    """ablations.json, ablations.md, ablations.png in `out_dir`; returns their paths."""
    out_dir = os.fspath(out_dir)
    paths = [os.path.join(out_dir, n) for n in ("ablations.json", "ablations.md", "ablations.png")]
    write_json(paths[0], report, indent=1)
    s = report["setting"]
    md = [f"# Mask R-CNN Table 2 in miniature ({s['name']} setting)", "",
          f"`{report['command']}` — {len(s['seeds'])} seeds × {s['iterations']} iterations per variant, batch "
          f"{s['batch_size']}, shapes `{s['difficulty']}` ({s['num_train']} training / {s['num_val']} held-out "
          f"images of {s['image_size']}×{s['image_size']}); {report['minutes']:.1f} min on "
          f"{report['machine']['cpus']} CPUs ({report['machine']['processor']}), backend "
          f"{report['machine']['backend']}, {report['machine']['jobs']} runs at a time.", "",
          PAPER_NOTE + ".", ""]
    for key, t in report["tables"].items():
        md += [format_table(key, t, markdown=True), ""]
    write_text(paths[1], "\n".join(md))
    plot_tables(report["tables"], paths[2])
    return paths


def plot_tables(tables: dict, path) -> None:
    """One panel per table: our mask AP and AP75 (bars with the seeds' std) next to the paper's (hatched)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tables), figsize=(4.2 * len(tables), 4.2), squeeze=False)
    for ax, (key, t) in zip(axes[0], tables.items()):
        n = len(t["rows"])
        labels = [r["label"].split("  ")[0] + (f"\n{r['marks'][-1]}" if r["marks"] else "") for r in t["rows"]]
        width = 0.2
        for j, (m, colour) in enumerate((("AP", "tab:blue"), ("AP75", "tab:orange"))):
            x = [i + (j - 1.5) * width for i in range(n)]
            ours = [r["ours"]["mask"][m] if r["ours"] else {"mean": 0.0, "std": 0.0} for r in t["rows"]]  # diverged: 0
            ax.bar(x, [o["mean"] for o in ours], width, yerr=[o["std"] for o in ours], color=colour, capsize=3,
                   label=f"ours {m}")
            x = [i + (j + 0.5) * width for i in range(n)]
            ax.bar(x, [r["paper"]["mask"][m] or 0 for r in t["rows"]], width, color=colour, alpha=0.35,
                   hatch="//", label=f"paper {m}")
        ax.set_xticks(range(n))
        ax.set_xticklabels(labels, fontsize=7)
        ax.set_title(f"Table 2({key}) {t['title']}", fontsize=9)
        ax.set_ylabel("mask AP x 100")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def ablate(setting: Setting, tables, out_dir, *, jobs: int = 1, backend: str | None = None, command: str = "",
           log=print) -> dict:
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
    results = run_all(setting, variants_for(tables), out_dir, jobs=jobs, backend=backend, log=log)
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
