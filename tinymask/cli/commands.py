"""What each `tinymask` command does: read its options, call the library, print the outcome.

The command line is a thin layer: every step it takes is a library function a Python user can call too (training
`tinymask.training.loop.train`, evaluation `tinymask.evaluation.evaluate.evaluate_model`, loading
`tinymask.weights.checkpoint.load_model`, the ablations `tinymask.training.ablations.ablate`). The options are
declared in `tinymask/cli/parser.py`, and `tinymask/cli/app.py` turns errors into one line.

    tinymask demo     # run every layer forward and backward and gradient-check it, printing a table
    tinymask info     # versions of tinymask and its dependencies
    tinymask train    # train the `small` preset on the built-in shapes, report COCO AP on 100 held-out images
    tinymask train --data ann.json --images imgs/ --val-data val.json --val-images val/   # any COCO-format data
    tinymask train --out runs/x --resume       # continue an interrupted run exactly where its checkpoint left off
    tinymask eval --checkpoint runs/x/best     # COCO box and mask AP of a checkpoint, written to eval.json
    tinymask predict a.jpg b.png --checkpoint runs/x/best     # overlays and COCO results in predictions/
    tinymask export runs/x/best model.pth      # a PyTorch state dict for torchvision, written without PyTorch
    tinymask predict --data val.json --images val/ --checkpoint runs/x/best   # results.json with val.json's ids
    tinymask ablate                            # the paper's Table 2 ablations in miniature (docs/ablations.md)

Errors a user can fix (a missing file, a malformed annotation file, a config that does not fit) end the command
with a one-line message and exit status 1, not a traceback. `tinymask COMMAND --help` documents each command.
"""
from __future__ import annotations

import os
import sys
import time


def demo_command(args) -> int:
    from tinymask.gradcheck import check_every_layer

    print("tinymask demo: every layer's hand-written backward against central differences (float64).")
    print("A correct backward agrees to about 1e-9; a wrong one is off by order 1.\n")
    worst = 0.0
    for name, errors in check_every_layer(args.seed):
        worst = max(worst, *errors.values())
        print(f"  {name:52s} " + "  ".join(f"{k}: {v:.1e}" for k, v in errors.items()))
    ok = worst < 1e-7
    print(f"\nworst relative error {worst:.1e}: {'all gradients agree' if ok else 'SOME GRADIENT IS WRONG'}")
    return 0 if ok else 1


def info_command(args) -> int:
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

class UsageError(ValueError):
    """A wrong combination of options; reported in one line."""


RUNS_DIR = "runs"


def _pair(args, a: str, b: str) -> tuple:
    """Two options that go together (`--data` and `--images`): both or neither."""
    va, vb = getattr(args, a), getattr(args, b)
    if (va is None) != (vb is None):
        given, missing = (a, b) if va is not None else (b, a)
        raise UsageError(f"--{given.replace('_', '-')} needs --{missing.replace('_', '-')} too")
    return va, vb


def _data_info(args) -> dict:
    """The JSON description of the training and held-out data that a checkpoint stores (tinymask/data/describe.py)."""
    from tinymask.data.describe import SHAPES_DEFAULTS

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
             "eval_every": "eval_every", "seed": "seed", "trainable_backbone_layers": "trainable_backbone_layers"}
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


def train_command(args) -> int:
    from tinymask.data.describe import datasets_from_description
    from tinymask.evaluation.evaluate import dataset_category_ids
    from tinymask.training.loop import train
    from tinymask.training.recipe import Recipe
    from tinymask.weights.checkpoint import load_checkpoint

    params = None
    if args.resume:
        if args.config or args.preset or args.data or args.images or args.val_data or args.val_images or \
                args.num_train is not None or args.num_val is not None or args.difficulty is not None or \
                args.init_weights:
            raise UsageError("--resume continues a run with its own model and data; leave out --config, --preset, "
                             "--data, --images, --val-data, --val-images, --num-train, --num-val, --difficulty "
                             "and --init-weights")
        out = args.out or _latest_run()
        _, cfg, metadata, _ = load_checkpoint(os.path.join(out, "last"))
        info = metadata.get("data") or {}
        if "recipe" not in metadata or not info:
            raise UsageError(f"{out}/last is not a checkpoint of `tinymask train` (no recipe or data in it)")
        overrides = _recipe_overrides(args)
        if "seed" in overrides:
            raise UsageError("--seed cannot change on --resume: the run's randomness comes from its seed")
        recipe = Recipe.from_dict({**metadata["recipe"], **overrides})
        train_set, val_set = datasets_from_description(info)
        print(f"resuming {out} at iteration {metadata['iteration']} of {recipe.iterations}"
              + (f" (changed: {', '.join(f'{k}={v}' for k, v in overrides.items())})" if overrides else ""))
    else:
        if args.config and args.preset:
            raise UsageError("give --config or --preset, not both")
        info = _data_info(args)
        train_set, val_set = datasets_from_description(info)
        cfg = _model_config(args, train_set.class_names)
        cfg.category_ids = dataset_category_ids(train_set)  # label -> category id, for results.json (None: shapes)
        cfg.validate()
        recipe = Recipe(**_recipe_overrides(args))
        out = args.out or os.path.join(RUNS_DIR, time.strftime("%Y%m%d-%H%M%S"))
        if args.init_weights:
            params = _initial_params(args.init_weights, cfg, recipe.seed, out)
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
          progress=not args.no_progress, params=params)
    return 0


def _initial_params(path: str, cfg, seed: int, out: str) -> dict:
    """--init-weights: the parameters to fine-tune from (tinymask/weights/transfer.py). Prints what was initialised
    afresh or skipped, and writes every name of each kind to OUT/init_weights.json."""
    from tinymask._files import write_json
    from tinymask.weights.transfer import format_report, init_from, read_source_weights

    params, report = init_from(read_source_weights(path), cfg, seed)
    if not report["loaded"]:
        raise UsageError(f"no parameter of {path} fits this model (is it a Mask R-CNN of the same architecture? "
                         f"--preset or --config must match it)")
    print(format_report(report, path))
    write_json(os.path.join(out, "init_weights.json"), {"source": os.path.abspath(path), **report})
    print(f"  the full lists: {os.path.join(out, 'init_weights.json')}")
    return params


def _load_model(args):
    """(params, cfg, checkpoint metadata or {}) from --checkpoint, or --config with --weights."""
    from tinymask.weights.checkpoint import checkpoint_metadata, load_model
    from tinymask.weights.errors import ParamsMismatchError

    weights = _pair(args, "config", "weights")
    if (args.checkpoint is None) == (weights[0] is None):
        raise UsageError("give --checkpoint DIR, or --config C.json with --weights W (.npz or .pth)")
    try:
        if args.checkpoint is not None:
            params, cfg = load_model(checkpoint_dir=args.checkpoint)
            return params, cfg, checkpoint_metadata(args.checkpoint)
        params, cfg = load_model(config_path=args.config, weights_path=args.weights)
        return params, cfg, {}
    except ParamsMismatchError as e:  # its first line has the counts; the listing follows on the next lines
        raise ParamsMismatchError(str(e).splitlines()[0]) from None


def eval_command(args) -> int:
    from tinymask.data.describe import SHAPES_DEFAULTS, datasets_from_description
    from tinymask.evaluation.evaluate import evaluate_model

    params, cfg, metadata = _load_model(args)
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
            dataset = datasets_from_description(info)[1]
        else:
            info = dict(SHAPES_DEFAULTS, **(info if info.get("kind") == "shapes" else {}))
            dataset = ShapesDataset("val", args.num_val or info["num_val"] or 100, seed=info["seed"],
                                    image_size=info["image_size"], difficulty=info["difficulty"])
    if len(dataset.class_names) != cfg.num_classes:
        raise UsageError(f"the model has {cfg.num_classes - 1} classes but the data set has "
                         f"{len(dataset.class_names) - 1}")
    out = args.out or os.path.join(args.checkpoint if args.checkpoint else ".", "eval.json")
    print(f"evaluating on {len(dataset)} images of {dataset!r} ...", file=sys.stderr)
    from tqdm import tqdm

    with tqdm(total=len(dataset), unit="img", file=sys.stderr, disable=args.no_progress) as bar:
        report = evaluate_model(params, cfg, dataset, args.batch_size, out_path=out,
                                extra={"iteration": metadata.get("iteration")} if metadata else None,
                                progress=lambda done, total: bar.update(done - bar.n))
    print(report["table"])
    print(f"\nwrote {out} ({report['seconds']:.0f} s)")
    return 0


def _predict_images(args) -> list[str]:
    """The image files of `tinymask predict`: IMAGE... (files and folders), or every image --data lists in --images."""
    from tinymask.evaluation.predict import image_files, read_annotations

    if args.images_dir is not None:
        if args.data is None:
            raise UsageError("--images names the folder of the images that --data lists; give --data too (or pass "
                             "the folder as IMAGE to predict every image in it)")
        if args.images:
            raise UsageError("give image files (IMAGE ...) or --data with --images, not both")
        if not os.path.isdir(args.images_dir):
            raise FileNotFoundError(f"image folder not found: {args.images_dir}")
        coco = read_annotations(args.data, args.images_dir)
        if not len(coco):
            raise UsageError(f"{args.data} lists no images")
        return [coco.image_path(i) for i in range(len(coco))]
    if not args.images:
        raise UsageError("give image files or folders (IMAGE ...), or --data ANN.json with --images DIR")
    return image_files(args.images)  # folders become their image files


def predict_command(args) -> int:
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
    images = _predict_images(args)
    if args.data is None:
        print("warning: without --data, results.json's image ids are the images' positions (0, 1, ...), so it will "
              "not match a COCO annotation file; pass --data ANN.json for the data set's image ids", file=sys.stderr)
    results = run_predict(images, checkpoint_dir=args.checkpoint, config_path=args.config,
                          weights_path=args.weights, out_dir=args.out, score_threshold=args.score_threshold,
                          annotations=args.data)
    for path, result in zip(images, results):
        print(f"{path}: {len(result['scores'])} detection(s) with score >= {args.score_threshold:g}")
    print(f"wrote the overlays and results.json to {args.out}")
    return 0


def export_command(args) -> int:
    from tinymask.weights.files import TORCH_EXTENSIONS
    from tinymask.weights.torch_export import save_torch_state_dict, torchvision_state_dict

    if args.checkpoint is not None and (args.config is not None or args.weights is not None):
        raise UsageError("give a CHECKPOINT folder, or --config C.json with --weights W, not both")
    if os.path.splitext(args.out)[1].lower() not in TORCH_EXTENSIONS:
        raise UsageError(f"{args.out}: the output is a PyTorch file; give it the extension "
                         f"{' or '.join(TORCH_EXTENSIONS)}")
    if os.path.isdir(args.out):
        raise UsageError(f"{args.out} is a folder; give the file to write")
    if os.path.exists(args.out) and not args.force:
        raise UsageError(f"{args.out} exists; pass --force to overwrite it")
    if args.checkpoint is None and args.config is None and args.weights is None:
        raise UsageError("give a CHECKPOINT folder, or --config C.json with --weights W (.npz or .pth)")
    params, _, _ = _load_model(args)  # the model's parameters only: a checkpoint's optimizer.velocity.* is left out
    state = torchvision_state_dict(params)
    save_torch_state_dict(args.out, state)
    counters = len(state) - len(params)
    print(f"wrote {len(state)} tensors to {args.out} ({len(params)} parameters and buffers"
          + (f" + {counters} BatchNorm num_batches_tracked counters" if counters else "")
          + f", {os.path.getsize(args.out) / 2**20:.1f} MiB); read it with torch.load(path, weights_only=True)")
    return 0


def ablate_command(args) -> int:
    from tinymask.training.ablations import TABLES, ablate, make_setting

    setting = make_setting(args.setting, iterations=args.iterations, seeds=args.seeds, num_train=args.num_train,
                           num_val=args.num_val, difficulty=args.difficulty, image_size=args.image_size,
                           lr=args.lr, warmup_iters=args.warmup, clip_grad_norm=args.clip_grad_norm)
    jobs = args.jobs if args.jobs is not None else max(1, os.cpu_count() or 1)
    if jobs < 1:
        raise UsageError("--jobs must be >= 1")
    tables = [t for t in TABLES if t in args.tables]
    command = "tinymask ablate " + " ".join(sys.argv[1:][1:]) if sys.argv[1:2] == ["ablate"] else "tinymask ablate"
    try:
        ablate(setting, tables, args.out, jobs=jobs, backend=args.backend, command=command.strip(),
               progress=not args.no_progress)
    except RuntimeError as e:  # some runs failed; the finished ones are kept
        print(f"tinymask ablate: {e}", file=sys.stderr)
        return 1
    return 0
