"""The `tinymask` command line.

    tinymask demo     # run every layer forward and backward and gradient-check it, printing a table
    tinymask info     # versions of tinymask and its dependencies
    tinymask train    # train the `small` preset on the built-in shapes, report COCO AP on 100 held-out images
    tinymask train --data ann.json --images imgs/ --val-data val.json --val-images val/   # any COCO-format data
    tinymask train --out runs/x --resume       # continue an interrupted run exactly where its checkpoint left off
    tinymask eval --checkpoint runs/x/best     # COCO box and mask AP of a checkpoint, written to eval.json
    tinymask predict a.jpg b.png --checkpoint runs/x/best     # overlays and COCO results in predictions/
    tinymask ablate                            # the paper's Table 2 ablations in miniature (docs/ablations.md)

Errors a user can fix (a missing file, a malformed annotation file, a config that does not fit) end the command
with a one-line message and exit status 1, not a traceback. `tinymask COMMAND --help` documents each command.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time


def _demo(args) -> int:
    import numpy as np

    from tinymask import layers as L
    from tinymask.gradcheck import check_layer, check_loss
    from tinymask.layers.losses import binary_cross_entropy_with_logits, smooth_l1, softmax_cross_entropy

    rng = np.random.default_rng(args.seed)
    print("tinymask demo: every layer's hand-written backward against central differences (float64).")
    print("A correct backward agrees to about 1e-9; a wrong one is off by order 1.\n")
    x = rng.standard_normal((2, 3, 9, 8))
    checks = [
        ("conv2d 3x3, stride 2, padding 1", L.conv2d_forward, L.conv2d_backward,
         [x, rng.standard_normal((4, 3, 3, 3)), rng.standard_normal(4)], dict(stride=2, padding=1)),
        ("conv_transpose2d 2x2, stride 2 (mask head deconv)", L.conv_transpose2d_forward, L.conv_transpose2d_backward,
         [x, rng.standard_normal((3, 2, 2, 2)), rng.standard_normal(2)], dict(stride=2)),
        ("linear", L.linear_forward, L.linear_backward,
         [rng.standard_normal((5, 6)), rng.standard_normal((3, 6)), rng.standard_normal(3)], {}),
        ("relu", L.relu_forward, L.relu_backward, [x + np.sign(x) * 0.1], {}),
        ("sigmoid", L.sigmoid_forward, L.sigmoid_backward, [x], {}),
        ("max_pool2d 3x3, stride 2, padding 1 (ResNet stem)", L.max_pool2d_forward, L.max_pool2d_backward,
         [0.01 * rng.permutation(np.arange(x.size, dtype=float)).reshape(x.shape)], dict(kernel_size=3, stride=2, padding=1)),
        ("group_norm, 3 groups", L.group_norm_forward, L.group_norm_backward,
         [rng.standard_normal((2, 6, 4, 5)), rng.standard_normal(6), rng.standard_normal(6)], dict(num_groups=3)),
        ("upsample_nearest to 13x11 (FPN top-down)", L.upsample_nearest_forward, L.upsample_nearest_backward,
         [x], dict(size=(13, 11))),
    ]
    worst = 0.0
    for name, fwd, bwd, inputs, kwargs in checks:
        names = ["x", "w", "b"][:len(inputs)]
        errors = check_layer(fwd, bwd, inputs, kwargs=kwargs, names=names)
        worst = max(worst, *errors.values())
        print(f"  {name:52s} " + "  ".join(f"{k}: {v:.1e}" for k, v in errors.items()))
    labels = rng.integers(0, 4, 6)
    for name, fn, inputs in [("softmax_cross_entropy", softmax_cross_entropy, [rng.standard_normal((6, 4)), labels]),
                             ("smooth_l1 (beta 1/9)", lambda p, t: smooth_l1(p, t, beta=1 / 9),
                              [rng.standard_normal(8) + 1.0, np.zeros(8)]),
                             ("binary_cross_entropy_with_logits", binary_cross_entropy_with_logits,
                              [rng.standard_normal((3, 4)) * 3, (rng.random((3, 4)) > 0.5).astype(float)])]:
        err = check_loss(fn, inputs)
        worst = max(worst, err)
        print(f"  {name:52s} x: {err:.1e}")
    ok = worst < 1e-7
    print(f"\nworst relative error {worst:.1e}: {'all gradients agree' if ok else 'SOME GRADIENT IS WRONG'}")
    return 0 if ok else 1


def _info(args) -> int:
    import numba
    import numpy as np

    from tinymask import __version__
    from tinymask.ops.backend import describe_backends
    print(f"tinymask {__version__}\nnumpy {np.__version__}\nnumba {numba.__version__}\npython {sys.version.split()[0]}")
    print(describe_backends())
    return 0


# ---------------------------------------------------------------------------------------------------------------
# train / eval / predict
# ---------------------------------------------------------------------------------------------------------------

THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def limit_threads(n: int) -> bool:
    """Ask NumPy's BLAS (and Numba) to use `n` threads, by environment variables read when they load.

    Returns False (and changes nothing) when NumPy is already imported, since the BLAS reads them only once. That is
    why the CLI imports NumPy lazily. On a machine whose cores are busy with other work, a multi-threaded BLAS can
    be several times slower than one thread (its threads wait for each other); `--threads 1` avoids that.
    """
    if "numpy" in sys.modules:
        return False
    for name in THREAD_VARIABLES:
        os.environ[name] = str(n)
    return True


class UsageError(ValueError):
    """A wrong combination of options; reported in one line."""


RUNS_DIR = "runs"
SHAPES_DEFAULTS = dict(num_train=1000, num_val=100, difficulty="easy", seed=0, image_size=128)


def _pair(args, a: str, b: str) -> tuple:
    """Two options that go together (`--data` and `--images`): both or neither."""
    va, vb = getattr(args, a), getattr(args, b)
    if (va is None) != (vb is None):
        given, missing = (a, b) if va is not None else (b, a)
        raise UsageError(f"--{given.replace('_', '-')} needs --{missing.replace('_', '-')} too")
    return va, vb


def _data_info(args) -> dict:
    """The JSON description of the training and held-out data that a checkpoint stores."""
    data, images = _pair(args, "data", "images")
    val_data, val_images = _pair(args, "val_data", "val_images")
    if data is None:
        if val_data is not None:
            raise UsageError("--val-data is for COCO-format training data (--data/--images); the shapes data set "
                             "has its own held-out split (--num-val)")
        info = dict(SHAPES_DEFAULTS, kind="shapes")
        for key in ("num_train", "num_val", "difficulty"):
            if getattr(args, key) is not None:
                info[key] = getattr(args, key)
        if info["num_train"] < 1 or info["num_val"] < 0:
            raise UsageError("--num-train must be >= 1 and --num-val >= 0")
        return info
    if args.num_train is not None or args.num_val is not None or args.difficulty is not None:
        raise UsageError("--num-train, --num-val and --difficulty are for the shapes data set, not with --data")
    for path in (data, val_data):
        if path is not None and not os.path.isfile(path):
            raise FileNotFoundError(f"annotation file not found: {path}")
    for path in (images, val_images):
        if path is not None and not os.path.isdir(path):
            raise FileNotFoundError(f"image folder not found: {path}")
    absolute = lambda p: None if p is None else os.path.abspath(p)  # noqa: E731
    return {"kind": "coco", "train": [absolute(data), absolute(images)],
            "val": None if val_data is None else [absolute(val_data), absolute(val_images)]}


def _datasets(info: dict):
    """(train set, held-out set or None) from a data description."""
    from tinymask.data.coco import CocoDataset
    from tinymask.data.shapes import ShapesDataset

    if info.get("kind") == "shapes":
        common = dict(seed=info["seed"], image_size=info["image_size"], difficulty=info["difficulty"])
        val = ShapesDataset("val", info["num_val"], **common) if info["num_val"] else None
        return ShapesDataset("train", info["num_train"], **common), val
    if info.get("kind") == "coco":
        val = CocoDataset(*info["val"]) if info.get("val") else None
        return CocoDataset(*info["train"]), val
    raise UsageError(f"unknown data description {info!r}")


def _model_config(args, class_names: list):
    """The model config: a --config file (which must fit the data's classes) or a preset adapted to them."""
    from tinymask.config import MaskRCNNConfig

    if args.config is not None:
        cfg = MaskRCNNConfig.load(args.config)
        if cfg.num_classes != len(class_names):
            raise UsageError(f"{args.config} has num_classes={cfg.num_classes}, but the data set has "
                             f"{len(class_names) - 1} classes + background = {len(class_names)}")
        return cfg
    cfg = MaskRCNNConfig.preset(args.preset or "small")
    cfg.num_classes, cfg.class_names = len(class_names), list(class_names)
    cfg.validate()
    return cfg


def _recipe_overrides(args) -> dict:
    names = {"iterations": "iterations", "batch_size": "batch_size", "lr": "lr", "warmup": "warmup_iters",
             "weight_decay": "weight_decay", "momentum": "momentum", "clip_grad_norm": "clip_grad_norm",
             "eval_every": "eval_every", "seed": "seed"}
    out = {field: getattr(args, opt) for opt, field in names.items() if getattr(args, opt) is not None}
    if out.get("clip_grad_norm") == 0:  # --clip-grad-norm 0: no clipping
        out["clip_grad_norm"] = None
    return out


def _latest_run() -> str:
    runs = [os.path.join(RUNS_DIR, d) for d in os.listdir(RUNS_DIR)] if os.path.isdir(RUNS_DIR) else []
    runs = [d for d in runs if os.path.isdir(os.path.join(d, "last")) or os.path.isdir(os.path.join(d, ".last.old"))]
    if not runs:
        raise UsageError(f"--resume without --out continues the newest run under {RUNS_DIR}/, but there is none")
    return max(runs, key=os.path.getmtime)


def _train(args) -> int:
    from tinymask.training.loop import Recipe, train
    from tinymask.weights.checkpoint import load_checkpoint

    if args.resume:
        if args.config or args.preset or args.data or args.images or args.val_data or args.val_images or \
                args.num_train is not None or args.num_val is not None or args.difficulty is not None:
            raise UsageError("--resume continues a run with its own model and data; leave out --config, --preset, "
                             "--data, --images, --val-data, --val-images, --num-train, --num-val and --difficulty")
        out = args.out or _latest_run()
        _, cfg, metadata, _ = load_checkpoint(os.path.join(out, "last"))
        info = metadata.get("data") or {}
        if "recipe" not in metadata or not info:
            raise UsageError(f"{out}/last is not a checkpoint of `tinymask train` (no recipe or data in it)")
        overrides = _recipe_overrides(args)
        if "seed" in overrides:
            raise UsageError("--seed cannot change on --resume: the run's randomness comes from its seed")
        recipe = Recipe.from_dict({**metadata["recipe"], **overrides})
        train_set, val_set = _datasets(info)
        print(f"resuming {out} at iteration {metadata['iteration']} of {recipe.iterations}"
              + (f" (changed: {', '.join(f'{k}={v}' for k, v in overrides.items())})" if overrides else ""))
    else:
        if args.config and args.preset:
            raise UsageError("give --config or --preset, not both")
        info = _data_info(args)
        train_set, val_set = _datasets(info)
        cfg = _model_config(args, train_set.class_names)
        recipe = Recipe(**_recipe_overrides(args))
        out = args.out or os.path.join(RUNS_DIR, time.strftime("%Y%m%d-%H%M%S"))
        what = (f"shapes ({info['difficulty']}, {len(train_set)} training / {len(val_set) if val_set else 0} "
                f"held-out images)" if info["kind"] == "shapes" else
                f"{info['train'][0]} ({len(train_set)} images; held out: "
                f"{len(val_set) if val_set else 'none, so no AP and no best/'})")
        model = f"--config {args.config}" if args.config else f"the {args.preset or 'small'} preset"
        print(f"training {model} on {what}\n  {recipe.iterations} iterations of {recipe.batch_size} images, "
              f"lr {recipe.lr:g} (warm-up {recipe.warmup_iters}, x{recipe.gamma:g} at "
              f"{', '.join(str(s) for s in recipe.schedule().steps) or 'no step'}), evaluating every "
              f"{recipe.eval_every or recipe.iterations} iterations; writing to {out}")
    from tinymask.ops.backend import get_backend
    print(f"  kernels: {get_backend()} backend")
    train(cfg, recipe, train_set, val_set, out, resume=args.resume, data_info=info,
          progress=not args.no_progress)
    return 0


def _load_for_eval(args):
    """(params, cfg, checkpoint metadata or {}) from --checkpoint, or --config with --weights."""
    from tinymask.config import MaskRCNNConfig
    from tinymask.model import init_params
    from tinymask.weights.files import check_params_match, load_weights

    weights = _pair(args, "config", "weights")
    if (args.checkpoint is None) == (weights[0] is None):
        raise UsageError("give --checkpoint DIR, or --config C.json with --weights W (.npz or .pth)")
    if args.checkpoint is not None:
        from tinymask.weights.checkpoint import load_checkpoint

        params, cfg, metadata, _ = load_checkpoint(args.checkpoint)
        source = args.checkpoint
    else:
        cfg, params, metadata, source = MaskRCNNConfig.load(args.config), load_weights(args.weights), {}, args.weights
    shapes = {k: v.shape for k, v in init_params(cfg).items()}
    from tinymask.training.loop import VELOCITY_PREFIX
    params = {k: v for k, v in params.items()  # an optimizer's momentum and BN's counters are not the model
              if k in shapes or not (k.startswith(VELOCITY_PREFIX) or k.endswith("num_batches_tracked"))}
    try:
        check_params_match(params, shapes)
    except ValueError as e:
        raise ValueError(f"{source} does not fit its config: {str(e).splitlines()[0]}") from None
    return params, cfg, metadata


def _eval(args) -> int:
    from tinymask.evaluation.evaluate import evaluate_model

    params, cfg, metadata = _load_for_eval(args)
    data, images = _pair(args, "data", "images")
    if data is not None:
        from tinymask.data.coco import CocoDataset

        if not os.path.isfile(data):
            raise FileNotFoundError(f"annotation file not found: {data}")
        dataset = CocoDataset(data, images)
    else:
        from tinymask.data.shapes import ShapesDataset

        info = metadata.get("data") or dict(SHAPES_DEFAULTS, kind="shapes")
        if info.get("kind") == "coco" and args.num_val is None:
            if not info.get("val"):
                raise UsageError("this checkpoint was trained without held-out data; pass --data and --images")
            dataset = _datasets(info)[1]
        else:
            info = dict(SHAPES_DEFAULTS, **(info if info.get("kind") == "shapes" else {}))
            dataset = ShapesDataset("val", args.num_val or info["num_val"] or 100, seed=info["seed"],
                                    image_size=info["image_size"], difficulty=info["difficulty"])
    if len(dataset.class_names) != cfg.num_classes:
        raise UsageError(f"the model has {cfg.num_classes - 1} classes but the data set has "
                         f"{len(dataset.class_names) - 1}")
    out = args.out or os.path.join(args.checkpoint if args.checkpoint else ".", "eval.json")
    print(f"evaluating on {len(dataset)} images of {dataset!r} ...", file=sys.stderr)
    report = evaluate_model(params, cfg, dataset, args.batch_size, out_path=out,
                            extra={"iteration": metadata.get("iteration")} if metadata else None)
    print(report["table"])
    print(f"\nwrote {out} ({report['seconds']:.0f} s)")
    return 0


def _predict(args) -> int:
    try:
        from tinymask.evaluation.predict import run_predict
    except ImportError as e:
        raise UsageError(f"prediction is not available in this installation ({e})") from None
    weights = _pair(args, "config", "weights")
    if (args.checkpoint is None) == (weights[0] is None):
        raise UsageError("give --checkpoint DIR, or --config C.json with --weights W (.npz or .pth)")
    if args.checkpoint is not None:
        from tinymask.weights.checkpoint import resolve_checkpoint

        args.checkpoint = resolve_checkpoint(args.checkpoint)
    results = run_predict(args.images, checkpoint_dir=args.checkpoint, config_path=args.config,
                          weights_path=args.weights, out_dir=args.out, score_threshold=args.score_threshold)
    for path, result in zip(args.images, results):
        print(f"{path}: {len(result['scores'])} detection(s) with score >= {args.score_threshold:g}")
    print(f"wrote the overlays and results.json to {args.out}")
    return 0


TRAIN_EPILOG = """\
examples:
  tinymask train                                   # small preset, shapes, default recipe, runs/<timestamp>
  tinymask train --iterations 300 --out runs/quick # a shorter run (the lr steps move with it: 70 % and 90 %)
  tinymask train --data train.json --images train/ --val-data val.json --val-images val/
  tinymask train --out runs/quick --resume         # continue exactly where the last checkpoint left off

The run's folder gets log.jsonl (every loss, lr and time per iteration), loss_curves.png, eval.json, and two
checkpoints, last/ and best/ (by mask AP), each a folder with weights.npz and config.json that `tinymask eval`
and `tinymask predict` read."""


ABLATE_EPILOG = """examples:
  tinymask ablate                          # every table, quick setting
  tinymask ablate --setting full           # the setting behind docs/ablations.md
  tinymask ablate --tables c d --seeds 0 1 2 3   # RoIPool vs RoIAlign only, four seeds

Each run is an ordinary training folder in OUT/runs/<variant>/seed<k>/. A cell of a table is the mean over the
seeds with their standard deviation; a Δ row is a difference of means with its standard error."""


def _ablate(args) -> int:
    from tinymask.training.ablations import ablate, make_setting, TABLES

    setting = make_setting(args.setting, iterations=args.iterations, seeds=args.seeds, num_train=args.num_train,
                           num_val=args.num_val, difficulty=args.difficulty, image_size=args.image_size,
                           lr=args.lr, warmup_iters=args.warmup, clip_grad_norm=args.clip_grad_norm)
    jobs = args.jobs if args.jobs is not None else max(1, os.cpu_count() or 1)
    if jobs < 1:
        raise UsageError("--jobs must be >= 1")
    tables = [t for t in TABLES if t in args.tables]
    command = "tinymask ablate " + " ".join(sys.argv[1:][1:]) if sys.argv[1:2] == ["ablate"] else "tinymask ablate"
    try:
        ablate(setting, tables, args.out, jobs=jobs, backend=args.backend, command=command.strip())
    except RuntimeError as e:  # some runs failed; the finished ones are kept
        print(f"tinymask ablate: {e}", file=sys.stderr)
        return 1
    return 0


def _add_threads(p) -> None:
    p.add_argument("--threads", type=int, metavar="N", help="threads for NumPy's BLAS (default: its own choice, "
                                                           "usually every core; 1 is faster on a busy machine)")


def _add_backend(p) -> None:
    p.add_argument("--backend", choices=("numpy", "numba", "cuda"),
                   help="where the hot loops run (default: $TINYMASK_BACKEND, else numpy, the readable reference; "
                        "numba is the fast CPU choice; `tinymask info` lists what this machine has)")


def _add_model_source(p, what: str) -> None:
    p.add_argument("--checkpoint", metavar="DIR", help=f"a checkpoint folder (config.json + weights.npz) to {what}")
    p.add_argument("--config", metavar="C.json", help="a model config (MaskRCNNConfig JSON), with --weights")
    p.add_argument("--weights", metavar="W", help="weights for --config: a tinymask .npz or a torchvision .pth")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinymask", description="Mask R-CNN from scratch in NumPy.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="gradient-check every layer and print the errors")
    demo.add_argument("--seed", type=int, default=0, help="seed for the random inputs (default 0)")
    demo.set_defaults(func=_demo)
    info = sub.add_parser("info", help="print versions")
    info.set_defaults(func=_info)

    from tinymask.training.loop import Recipe
    r = Recipe()
    t = sub.add_parser("train", help="train a model (default: the small preset on the built-in shapes)",
                       description="Train Mask R-CNN, evaluate it with COCO box and mask AP on held-out images,\n"
                                   "and keep the last and the best checkpoints.",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = t.add_argument_group("model")
    g.add_argument("--preset", choices=("small", "resnet50_fpn", "resnet50_c4"),
                   help="a built-in model config (default small); its classes are set from the data")
    g.add_argument("--config", metavar="C.json", help="a model config file instead of a preset (its num_classes "
                                                       "must fit the data)")
    g = t.add_argument_group("data (default: the built-in shapes)")
    g.add_argument("--data", metavar="ANN.json", help="COCO-format annotation file of the training images")
    g.add_argument("--images", metavar="DIR", help="folder of the training images")
    g.add_argument("--val-data", metavar="ANN.json", help="COCO-format annotations of held-out images (for AP)")
    g.add_argument("--val-images", metavar="DIR", help="folder of the held-out images")
    g.add_argument("--num-train", type=int, metavar="N",
                   help=f"shapes: training images (default {SHAPES_DEFAULTS['num_train']})")
    g.add_argument("--num-val", type=int, metavar="N",
                   help=f"shapes: held-out images for AP (default {SHAPES_DEFAULTS['num_val']})")
    g.add_argument("--difficulty", choices=("easy", "hard"), help="shapes: easy (3 classes, default) or hard (6)")
    g = t.add_argument_group("recipe")
    g.add_argument("--iterations", type=int, metavar="N", help=f"updates in all (default {r.iterations})")
    g.add_argument("--batch-size", type=int, metavar="B", help=f"images per update (default {r.batch_size})")
    g.add_argument("--lr", type=float, help=f"learning rate after warm-up (default {r.lr:g}); divided by 10 at "
                                            f"{' and '.join(f'{f * 100:.0f}%%' for f in r.decay_at)} of the iterations")
    g.add_argument("--warmup", type=int, metavar="N", help=f"iterations of linear warm-up (default {r.warmup_iters})")
    g.add_argument("--momentum", type=float, metavar="M", help=f"SGD momentum (default {r.momentum:g})")
    g.add_argument("--weight-decay", type=float, metavar="WD", help=f"L2 weight decay, not on biases and norms "
                                                      f"(default {r.weight_decay:g})")
    g.add_argument("--clip-grad-norm", type=float, metavar="C", help="clip the gradient's global norm to C "
                                                                     "(default 10, a guard the paper does not use; "
                                                                     "0: no clipping)")
    g.add_argument("--eval-every", type=int, metavar="N", help=f"evaluate and checkpoint every N iterations "
                                                               f"(default {r.eval_every}; 0: only at the end)")
    g.add_argument("--seed", type=int, metavar="S",
                   help=f"initial weights, data order, flips, sampling (default {r.seed})")
    g = t.add_argument_group("run")
    g.add_argument("--out", metavar="DIR", help=f"the run's folder (default {RUNS_DIR}/<date-time>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out (default: the newest in "
                                                         f"{RUNS_DIR}/) from its last/ checkpoint; recipe options "
                                                         "given with it change the run from there")
    g.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _add_threads(g)
    _add_backend(g)
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="COCO box and mask AP of a trained model",
                       description="Predict a data set and print COCO box and mask AP (AP, AP50, AP75, by size, "
                                   "AR); write them to a JSON file. Default data: the held-out data the checkpoint "
                                   "was trained with (shapes: its val split).")
    _add_model_source(e, "evaluate")
    e.add_argument("--data", metavar="ANN.json", help="COCO-format annotations to evaluate on")
    e.add_argument("--images", metavar="DIR", help="folder of their images")
    e.add_argument("--num-val", type=int, metavar="N", help="shapes: how many held-out images (default: as trained, "
                                                            "else 100)")
    e.add_argument("--batch-size", type=int, default=4, metavar="B", help="images per predict call (default 4)")
    e.add_argument("--out", metavar="FILE.json", help="where to write the results (default: eval.json in the "
                                                      "checkpoint folder, or ./eval.json)")
    _add_threads(e)
    _add_backend(e)
    e.set_defaults(func=_eval)

    p = sub.add_parser("predict", help="detect and segment image files, draw the results",
                       description="Run a model on image files; write an overlay PNG per image and the "
                                   "detections as COCO results (results.json) into --out.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (PNG, JPEG, ...)")
    _add_model_source(p, "run")
    p.add_argument("--out", default="predictions", metavar="DIR", help="output folder (default predictions)")
    p.add_argument("--score-threshold", type=float, default=0.5, metavar="S",
                   help="keep detections scoring at least S (default 0.5)")
    _add_threads(p)
    _add_backend(p)
    p.set_defaults(func=_predict)

    a = sub.add_parser("ablate", help="reproduce the paper's Table 2 ablations in miniature on shapes",
                       description="Train the variants of Mask R-CNN Table 2 (a)-(e) on synthetic shapes, several "
                                   "seeds each, and print the paper's tables with its figures beside ours (mask AP "
                                   "mean and std over seeds). Writes ablations.json, ablations.md and "
                                   "ablations.png into --out; finished runs are reused, so an interrupted "
                                   "command continues where it stopped.",
                       epilog=ABLATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--setting", choices=("quick", "full"), default="quick",
                   help="quick: 2 seeds x 300 iterations (~15 min on 2 cores); full: 3 seeds x 900 (docs/ablations.md)")
    a.add_argument("--tables", nargs="+", choices=tuple("abcde"), default=list("abcde"), metavar="T",
                   help="which of Table 2 (a)-(e) to run (default all)")
    a.add_argument("--seeds", type=int, nargs="+", metavar="S", help="override the setting's seeds")
    a.add_argument("--iterations", type=int, metavar="N", help="override the setting's iterations per run")
    a.add_argument("--num-train", type=int, metavar="N", help="override the number of training images")
    a.add_argument("--num-val", type=int, metavar="N", help="override the number of held-out images")
    a.add_argument("--difficulty", choices=("easy", "hard"), help="shapes variant (default easy)")
    a.add_argument("--image-size", type=int, metavar="S", help="side of the shapes images (default 256)")
    a.add_argument("--lr", type=float, help="learning rate after warm-up (default 0.02)")
    a.add_argument("--warmup", type=int, metavar="N", help="warm-up iterations (default 100)")
    a.add_argument("--clip-grad-norm", type=float, metavar="C", help="clip the gradient's global norm (default 5; "
                                                                     "0: no clipping, as the paper)")
    a.add_argument("--jobs", type=int, metavar="J", help="runs at a time, each in its own process with "
                                                         "cores/J BLAS threads (default: the number of cores)")
    a.add_argument("--backend", choices=("numpy", "numba", "cuda"), help="kernels (default numba if it works)")
    a.add_argument("--out", default=os.path.join(RUNS_DIR, "ablate"), metavar="DIR",
                   help="folder for the runs and the tables (default runs/ablate)")
    a.set_defaults(func=_ablate)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = argparse.ArgumentParser(add_help=False)  # --threads must act before anything imports NumPy
    pre.add_argument("--threads")
    threads = pre.parse_known_args(argv)[0].threads
    if threads is not None and threads.isdigit() and int(threads) >= 1:
        limit_threads(int(threads))
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "threads", None) is not None and args.threads < 1:
        parser.error("--threads must be >= 1")

    from tinymask.training.loop import TrainingDiverged

    from tinymask.ops.backend import resolve_backend, use_backend

    backend = getattr(args, "backend", None) if args.command != "ablate" else None  # ablate passes it to its runs
    if backend is not None:
        try:
            resolve_backend(backend)
        except RuntimeError as e:  # not available here: the reason, e.g. "numba-cuda not installed"
            print(f"tinymask {args.command}: error: --backend {backend}: {e}", file=sys.stderr)
            return 1
    try:
        with use_backend(backend) if backend else contextlib.nullcontext():
            return args.func(args)
    except TrainingDiverged as e:
        print(f"tinymask {args.command}: {e}", file=sys.stderr)
        return 1
    except (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError, ValueError) as e:
        # user errors: missing files, malformed data or config, weights that do not fit (ValueError subclasses)
        message = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.strerror}: {e.filename}"
        print(f"tinymask {args.command}: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"tinymask {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
