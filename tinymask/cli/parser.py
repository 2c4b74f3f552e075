"""The options of every `tinymask` command, with their help texts; each command's function is in commands.py."""
from __future__ import annotations

import argparse
import os

from tinymask.cli.commands import (RUNS_DIR, ablate_command, demo_command, eval_command, export_command, info_command,
                                   predict_command, train_command)

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
    demo.set_defaults(func=demo_command)
    info = sub.add_parser("info", help="print versions")
    info.set_defaults(func=info_command)

    _add_train(sub)
    _add_eval(sub)
    _add_predict(sub)
    _add_export(sub)
    _add_ablate(sub)
    for command in sub.choices.values():
        command.add_argument("--debug", action="store_true", help="on an error, print its traceback too")
    return parser


def _add_train(sub) -> None:
    from tinymask.data.describe import SHAPES_DEFAULTS
    from tinymask.training.recipe import Recipe

    r = Recipe()
    t = sub.add_parser("train", help="train a model (default: the small preset on the built-in shapes)",
                       description="Train Mask R-CNN, evaluate it with COCO box and mask AP on held-out images,\n"
                                   "and keep the last and the best checkpoints.",
                       epilog=TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = t.add_argument_group("model")
    g.add_argument("--preset", choices=("small", "resnet50_fpn", "resnet50_c4", "resnext101_32x8d_fpn"),
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
    g = t.add_argument_group("fine-tuning (docs/usage.md)")
    g.add_argument("--init-weights", metavar="FILE", help="start from these weights instead of a random "
                                                           "initialisation: a torchvision .pth, a tinymask .npz or "
                                                           "checkpoint folder; the class-dependent predictors start "
                                                           "afresh")
    g.add_argument("--trainable-backbone-layers", type=int, metavar="N", choices=range(6),
                   help="train only the last N of the ResNet's 5 parts (stem, layer1..layer4), as torchvision; "
                        "default all")
    g = t.add_argument_group("run")
    g.add_argument("--out", metavar="DIR", help=f"the run's folder (default {RUNS_DIR}/<date-time>)")
    g.add_argument("--resume", action="store_true", help="continue the run in --out (default: the newest in "
                                                         f"{RUNS_DIR}/) from its last/ checkpoint; recipe options "
                                                         "given with it change the run from there")
    g.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    _add_threads(g)
    _add_backend(g)
    t.set_defaults(func=train_command)


def _add_eval(sub) -> None:
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
    e.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    e.add_argument("--out", metavar="FILE.json", help="where to write the results (default: eval.json in the "
                                                      "checkpoint folder, or ./eval.json)")
    _add_threads(e)
    _add_backend(e)
    e.set_defaults(func=eval_command)


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="detect and segment image files, draw the results",
                       description="Run a model on image files; write an overlay PNG per image and the "
                                   "detections as COCO results (results.json) into --out. Category ids are the "
                                   "checkpoint's (those of the data it was trained on); image ids those of --data, "
                                   "else the images' positions 0, 1, ... (which match no COCO annotation file).")
    p.add_argument("images", nargs="*", metavar="IMAGE", help="image files (PNG, JPEG, ...) or folders of them")
    _add_model_source(p, "run")
    p.add_argument("--data", metavar="ANN.json", help="COCO-format annotation file listing the images: results.json "
                                                      "gets its image ids (matched by file name)")
    p.add_argument("--images", dest="images_dir", metavar="DIR", help="with --data: predict every image it lists, "
                                                                      "in this folder")
    p.add_argument("--out", default="predictions", metavar="DIR", help="output folder (default predictions)")
    p.add_argument("--score-threshold", type=float, default=0.5, metavar="S",
                   help="keep detections scoring at least S (default 0.5)")
    _add_threads(p)
    _add_backend(p)
    p.set_defaults(func=predict_command)


def _add_export(sub) -> None:
    x = sub.add_parser("export", help="write a model as a PyTorch state dict (.pth) for torchvision",
                       description="Write a model's parameters as a torch.save file, without PyTorch: "
                                   "torch.load(OUT, weights_only=True) returns an OrderedDict of tensors under "
                                   "torchvision's names, which torchvision's MaskRCNN of the same architecture "
                                   "loads with load_state_dict(strict=True). The optimizer's momentum is left out.",
                       epilog="examples:\n  tinymask export runs/x/best model.pth\n"
                              "  tinymask export --config r50.json --weights w.npz model.pth",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    x.add_argument("checkpoint", nargs="?", metavar="CHECKPOINT",
                   help="a checkpoint folder (config.json + weights.npz); or give --config and --weights")
    x.add_argument("out", metavar="OUT.pth", help="the file to write (.pth or .pt)")
    x.add_argument("--config", metavar="C.json", help="a model config (MaskRCNNConfig JSON), with --weights")
    x.add_argument("--weights", metavar="W", help="weights for --config: a tinymask .npz or a torchvision .pth")
    x.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    x.set_defaults(func=export_command)


def _add_ablate(sub) -> None:
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
    a.add_argument("--no-progress", action="store_true", help="no progress bar of finished runs on stderr")
    a.add_argument("--out", default=os.path.join(RUNS_DIR, "ablate"), metavar="DIR",
                   help="folder for the runs and the tables (default runs/ablate)")
    a.set_defaults(func=ablate_command)
