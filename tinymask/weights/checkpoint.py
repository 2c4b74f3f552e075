"""Checkpoints: the folders a training run writes (weights, optimizer state, config, metadata), and loading a model.

*Paper:* none: plumbing. · *Code:* `tinymask/weights/checkpoint.py` · *Test:* `tests/test_train.py`,
`tests/test_predict.py`

    params, cfg = load_model(checkpoint_dir="runs/shapes/best")      # config.json + weights.npz
    params, cfg = load_model(config_path="r50.json", weights_path="maskrcnn_resnet50_fpn_coco.pth")

## A checkpoint

A checkpoint is a folder. `weights.npz` (`tinymask.weights.npz.save_npz`) holds the parameters under their own names,
the optimizer's velocities under `optimizer.velocity.<name>`, and a JSON metadata entry: the iteration, the recipe,
the data set's description, the seed, the best AP so far and the training time. It is read with
`allow_pickle=False`. `config.json` is the model's `MaskRCNNConfig`, including what its labels mean
(`class_names`, and `category_ids`: the data set's category id of each label, for COCO results); `eval.json` the
evaluation at that iteration.

**Writing it atomically.** A crash (or Ctrl-C, or a full disk) while a checkpoint is written must never leave a
half-written `last/` where a good one was. So the new checkpoint is written whole into `.last.new/`, every file
fsynced, and only then swapped in with two renames: `last/` → `.last.old/`, `.last.new/` → `last/`; then
`.last.old/` is deleted. A rename is atomic, so at any moment either `last/` is complete or it is missing and
`.last.old/` is the previous complete one; `resolve_checkpoint` falls back to it. A failure while writing deletes
`.last.new/` and leaves `last/` as it was.

## Where a model comes from

A model is a config (`MaskRCNNConfig`, the architecture) plus parameters (a flat `{name: array}` dict whose names
are torchvision's state-dict names). Two sources:

- a **checkpoint folder** as above; the optimizer's momentum (`optimizer.velocity.*`) is left out.
- a **config JSON plus a weights file**: a tinymask `.npz`, or a `.pth` that `torch.save(model.state_dict())` wrote
  for torchvision's `maskrcnn_resnet50_fpn` (read without PyTorch by `load_torch_state_dict`, which also drops
  BatchNorm's `num_batches_tracked` counters and renames old key spellings). Since tinymask uses torchvision's names,
  frozen batch norm's `weight`, `bias`, `running_mean`, `running_var` line up one for one; a .pth must match the model
  exactly.

Either way the parameters are checked against the names and shapes `init_params(cfg)` gives (`check_params_match`):
a missing, unexpected or wrongly shaped entry raises `ParamsMismatchError` listing them all. The parameters keep the
dtype they were saved in, so a model saved and loaded again predicts bit for bit the same.
"""
from __future__ import annotations

import os
import shutil

import numpy as np

from tinymask._files import fsync_dir, write_error, write_json
from tinymask.config import MaskRCNNConfig
from tinymask.model import init_params
from tinymask.weights.files import NPZ_EXTENSIONS, check_params_match, load_weights
from tinymask.weights.npz import load_npz, save_npz

CONFIG_FILE, WEIGHTS_FILE, EVAL_FILE = "config.json", "weights.npz", "eval.json"
VELOCITY_PREFIX = "optimizer.velocity."
CHECKPOINT_FORMAT = "tinymask-checkpoint-1"


def save_checkpoint(directory, params: dict, cfg: MaskRCNNConfig, metadata: dict, optimizer_state: dict | None = None,
                    eval_report: dict | None = None) -> None:
    """Write a checkpoint folder atomically (see "Writing it atomically" in the module docstring).

    directory:       e.g. "runs/shapes/last"; its parent must exist.
    params:          {name: array}.
    metadata:        a JSON-serialisable dict (iteration, recipe, ...), stored inside weights.npz.
    optimizer_state: {name: velocity}, stored as `optimizer.velocity.<name>`.
    eval_report:     a dict written as eval.json beside the weights.
    """
    directory = os.path.abspath(os.fspath(directory))
    parent, name = os.path.split(directory)
    new, old = os.path.join(parent, f".{name}.new"), os.path.join(parent, f".{name}.old")
    shutil.rmtree(new, ignore_errors=True)  # left over from a crash: incomplete by definition
    arrays = dict(params)
    arrays.update({VELOCITY_PREFIX + k: v for k, v in (optimizer_state or {}).items()})
    try:
        os.makedirs(new)
        save_npz(os.path.join(new, WEIGHTS_FILE), arrays, metadata)  # fsynced
        cfg.save(os.path.join(new, CONFIG_FILE))  # fsynced
        if eval_report is not None:
            write_json(os.path.join(new, EVAL_FILE), eval_report)  # fsynced
        fsync_dir(new)
    except BaseException as e:
        shutil.rmtree(new, ignore_errors=True)
        if isinstance(e, OSError):  # a full or read-only disk: nothing of the old checkpoint was touched yet
            kept = " (the previous checkpoint is intact)" if os.path.isdir(directory) else ""
            raise write_error(directory, e, kept) from e
        raise
    if os.path.isdir(directory):
        shutil.rmtree(old, ignore_errors=True)
        os.rename(directory, old)  # from here until the next rename, `old` is the complete previous checkpoint
    os.rename(new, directory)
    fsync_dir(parent)
    shutil.rmtree(old, ignore_errors=True)



def resolve_checkpoint(directory) -> str:
    """The folder to read: `directory`, or its `.name.old` twin when a crash came between the two renames."""
    directory = os.path.abspath(os.fspath(directory))
    if os.path.isfile(os.path.join(directory, WEIGHTS_FILE)):
        return directory
    parent, name = os.path.split(directory)
    old = os.path.join(parent, f".{name}.old")
    if os.path.isfile(os.path.join(old, WEIGHTS_FILE)):
        return old
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"checkpoint folder not found: {directory}")
    raise FileNotFoundError(f"checkpoint folder {directory} lacks {WEIGHTS_FILE} (a checkpoint holds {CONFIG_FILE} "
                            f"and {WEIGHTS_FILE})")



def load_checkpoint(directory) -> tuple[dict, MaskRCNNConfig, dict, dict]:
    """Read a checkpoint folder: (params, cfg, metadata, optimizer_state). Raises FileNotFoundError naming what is
    missing; the arrays are read without unpickling."""
    directory = resolve_checkpoint(directory)
    config_path = os.path.join(directory, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"checkpoint folder {directory} lacks {CONFIG_FILE} (a checkpoint holds {CONFIG_FILE} "
                                f"and {WEIGHTS_FILE})")
    cfg = MaskRCNNConfig.load(config_path)
    arrays, metadata = load_npz(os.path.join(directory, WEIGHTS_FILE))
    params = {k: v for k, v in arrays.items() if not k.startswith(VELOCITY_PREFIX)}
    velocity = {k[len(VELOCITY_PREFIX):]: v for k, v in arrays.items() if k.startswith(VELOCITY_PREFIX)}
    return params, cfg, metadata, velocity


def expected_shapes(cfg: MaskRCNNConfig) -> dict[str, tuple[int, ...]]:
    """{name: shape} of every parameter a model of this config has (from a throwaway `init_params`)."""
    return {name: value.shape for name, value in init_params(cfg).items()}



def _read_params(weights_path: str) -> dict[str, np.ndarray]:
    """The model's parameters from a weights file: an .npz without the optimizer's momentum (a checkpoint's
    `optimizer.velocity.*`), a .pth without BatchNorm's step counters. Anything else in the file must be the model's:
    `load_model` refuses a name the model does not have, the same for every command."""
    if os.path.splitext(weights_path)[1].lower() in NPZ_EXTENSIONS:
        stored, _metadata = load_npz(weights_path)
        return {name: value for name, value in stored.items() if not name.startswith(VELOCITY_PREFIX)}
    params = load_weights(weights_path)  # .pth: num_batches_tracked already dropped, old spellings renamed
    return {name: value for name, value in params.items() if not name.endswith("num_batches_tracked")}


def load_model(checkpoint_dir=None, config_path=None, weights_path=None) -> tuple[dict, MaskRCNNConfig]:
    """Load a model: `checkpoint_dir` (holding config.json and weights.npz), or `config_path` and `weights_path`.

    weights_path: a tinymask `.npz` or a torchvision `.pth` state dict (see the module docstring).
    Returns (params, cfg), ready for `model.predict(params, cfg, images)`.
    Raises ValueError for a wrong combination of arguments, FileNotFoundError naming a missing file, and
    `ParamsMismatchError` (listing every missing, unexpected and wrongly shaped parameter) when the weights
    do not fit the config.
    """
    if checkpoint_dir is not None:
        if config_path is not None or weights_path is not None:
            raise ValueError("give either checkpoint_dir, or config_path and weights_path, not both")
        folder = resolve_checkpoint(checkpoint_dir)
        config_path, weights_path = os.path.join(folder, CONFIG_FILE), os.path.join(folder, WEIGHTS_FILE)
        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"checkpoint folder {folder} lacks {CONFIG_FILE} (a checkpoint holds "
                                    f"{CONFIG_FILE} and {WEIGHTS_FILE})")
    elif config_path is None or weights_path is None:
        raise ValueError("give checkpoint_dir, or both config_path and weights_path")
    cfg = MaskRCNNConfig.load(config_path)
    shapes = expected_shapes(cfg)
    params = _read_params(os.fspath(weights_path))
    try:
        check_params_match(params, shapes)
    except ValueError as e:
        raise type(e)(f"{os.fspath(weights_path)} does not fit the model of {os.fspath(config_path)}: {e}") from None
    return {name: params[name] for name in shapes}, cfg  # in init_params' order


def checkpoint_metadata(directory) -> dict:
    """The metadata dict stored in a checkpoint folder's weights.npz (iteration, recipe, data, ...)."""
    return load_npz(os.path.join(resolve_checkpoint(directory), WEIGHTS_FILE))[1]
