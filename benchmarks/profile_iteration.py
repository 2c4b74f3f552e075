"""Where one training iteration's time goes: a per-stage profile of the `small` preset as `tinymask train` runs it.

    python benchmarks/profile_iteration.py                        # every available CPU backend, 10 timed iterations
    python benchmarks/profile_iteration.py --backend numba --iterations 20 --json profile.json

It runs the training loop's four steps — load a batch, `train_forward`, `train_backward`, the optimizer step — on the
shapes data set with the default recipe's batch (4 images of 128x128), after `--warmup` untimed iterations (Numba
compiles on its first calls). Inside the forward and the backward, each stage is timed by wrapping the function that
`tinymask.model` calls for it (the wrappers are put in `tinymask.model`'s namespace and taken out afterwards; the
model's code is not changed). A stage's time includes everything it calls: "RoI pooling" is every call of
`roi_features_forward`, box head and mask head features both. What no wrapper covers (concatenations, the sum of the
map gradients) is the "rest of forward / backward" row.

The last rows put the iteration against the machine: its counted GFLOP (convolutions, transposed convolutions and
fully connected layers, 3x the forward's for forward + backward; `bench_model.FlopCounter`) over its time, as a
fraction of the measured BLAS peak (`bench_model.blas_peak`, a float32 2048x2048 matmul with the same threads).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_kernels import machine, threads  # noqa: E402
from bench_model import FlopCounter, blas_peak  # noqa: E402

import tinymask.model as model
from tinymask.ops.backend import available_backends, use_backend
from tinymask.config import MaskRCNNConfig
from tinymask.data.shapes import ShapesDataset
from tinymask.model import init_params, is_trainable, train_backward, train_forward
from tinymask.training.optim import SGD
from tinymask.training.batches import batch_for_iteration, load_batch
from tinymask.training.recipe import Recipe

# (stage label, the function tinymask.model calls for it), in the order the data flows; forward, then backward.
FORWARD_STAGES = [
    ("preprocess (normalise, resize, pad)", "preprocess"),
    ("backbone: ResNet", "resnet_forward"),
    ("backbone: FPN", "fpn_forward"),
    ("RPN head (5 levels)", "rpn_head_forward"),
    ("anchors", "anchors_for_batch"),
    ("RPN targets (matcher)", "rpn_targets"),
    ("RPN losses (sampling)", "rpn_loss"),
    ("proposals (top-k, decode, NMS)", "rpn_proposals"),
    ("RoI sampling and targets", "select_training_rois"),
    ("RoI pooling (box + mask RoIAlign)", "roi_features_forward"),
    ("box head", "box_head_forward"),
    ("box losses", "box_loss"),
    ("mask head", "mask_head_forward"),
    ("mask targets", "mask_targets"),
    ("mask loss", "mask_loss"),
]
BACKWARD_STAGES = [
    ("mask head backward", "mask_head_backward"),
    ("box head backward", "box_head_backward"),
    ("RoI pooling backward", "multiscale_roi_backward"),
    ("RPN head backward", "rpn_head_backward"),
    ("FPN backward", "fpn_backward"),
    ("ResNet backward", "resnet_backward"),
]


class StageTimer:
    """`with StageTimer() as t:` wraps every stage function in `tinymask.model`; t.seconds[label] sums their time."""

    def __enter__(self):
        self.seconds = defaultdict(float)
        self._originals = {}
        for label, name in FORWARD_STAGES + BACKWARD_STAGES:
            original = getattr(model, name)
            self._originals[name] = original
            setattr(model, name, self._wrap(label, original))
        return self

    def _wrap(self, label, fn):
        def timed(*args, **kwargs):
            tic = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] += time.perf_counter() - tic
        return timed

    def __exit__(self, *exc):
        for name, original in self._originals.items():
            setattr(model, name, original)


def profile(backend: str, iterations: int, warmup: int) -> dict:
    """Time `iterations` training iterations of the small preset on `backend` -> {"rows": [(label, seconds per
    iteration)], "iteration": seconds, "gflop": per iteration}."""
    cfg = MaskRCNNConfig.preset("small")
    recipe = Recipe()
    data = ShapesDataset("train", 200, seed=0)
    params = init_params(cfg, seed=0)
    optimizer = SGD(params, trainable=[k for k in params if is_trainable(k, cfg)], momentum=recipe.momentum,
                    weight_decay=recipe.weight_decay, clip_grad_norm=recipe.clip_grad_norm)
    lr = 0.001  # a warm-up-sized step: the profile is of the work, not of the learning
    outer = defaultdict(float)
    with use_backend(backend):
        for t in range(warmup + iterations):
            timing = t >= warmup
            with StageTimer() as stages:
                tic = time.perf_counter()
                images, targets = load_batch(data, batch_for_iteration(len(data), recipe.batch_size, 0, t), 0, t,
                                             recipe.flip_prob)
                t1 = time.perf_counter()
                losses, cache = train_forward(params, cfg, images, targets, np.random.default_rng(t))
                t2 = time.perf_counter()
                grads = train_backward(cache)
                t3 = time.perf_counter()
                optimizer.step(params, grads, lr)
                t4 = time.perf_counter()
            if timing:
                for label, seconds in stages.seconds.items():
                    outer[label] += seconds
                outer["data loading (shapes, flip, targets)"] += t1 - tic
                outer["forward"] += t2 - t1
                outer["backward"] += t3 - t2
                outer["optimizer step (SGD, momentum, clipping)"] += t4 - t3
        with FlopCounter() as count:
            train_forward(params, cfg, images, targets, np.random.default_rng(0))
    per = {k: v / iterations for k, v in outer.items()}
    rows = [("data loading (shapes, flip, targets)", per["data loading (shapes, flip, targets)"])]
    fwd = [(label, per.get(label, 0.0)) for label, _ in FORWARD_STAGES]
    rows += fwd + [("rest of forward", per["forward"] - sum(s for _, s in fwd))]
    bwd = [(label, per.get(label, 0.0)) for label, _ in BACKWARD_STAGES]
    rows += bwd + [("rest of backward (loss weights, map sums)", per["backward"] - sum(s for _, s in bwd))]
    rows.append(("optimizer step (SGD, momentum, clipping)", per["optimizer step (SGD, momentum, clipping)"]))
    total = sum(s for _, s in rows)
    return {"backend": backend, "rows": rows, "iteration": total, "forward": per["forward"],
            "backward": per["backward"], "gflop": 3 * count.flops / 1e9}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", action="append", choices=("numpy", "numba"),
                        help="backend(s) to profile (default: every available CPU backend)")
    parser.add_argument("--iterations", type=int, default=10, help="timed iterations (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed iterations first (default 3)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.warmup < 0:
        parser.error("--iterations must be >= 1 and --warmup >= 0")
    backends = args.backend or [b for b in ("numpy", "numba") if b in available_backends()]
    print(f"machine: {machine()}\nthreads: {threads()}")
    peak = blas_peak(3)
    print(f"BLAS peak (float32 2048x2048 matmul): {peak:.1f} GFLOP/s\n")
    results = [profile(b, args.iterations, args.warmup) for b in backends]
    width = max(len(label) for label, _ in results[0]["rows"])
    print(f"small preset, batch 4 of 128x128, ms per iteration (mean of {args.iterations}, after {args.warmup} "
          f"untimed)")
    print(f"{'stage':<{width}}" + "".join(f" | {r['backend']:>8} ms | {'share':>5}" for r in results))
    for i, (label, _) in enumerate(results[0]["rows"]):
        cells = "".join(f" | {1e3 * r['rows'][i][1]:>11.1f} | {100 * r['rows'][i][1] / r['iteration']:>4.1f}%"
                        for r in results)
        print(f"{label:<{width}}{cells}")
    print(f"{'whole iteration':<{width}}" + "".join(f" | {1e3 * r['iteration']:>11.1f} | 100%" for r in results))
    for r in results:
        gflops = r["gflop"] / r["iteration"]
        print(f"{r['backend']}: {r['gflop']:.2f} GFLOP per iteration, {gflops:.1f} GFLOP/s = "
              f"{100 * gflops / peak:.0f}% of the BLAS peak (forward + backward alone: "
              f"{100 * r['gflop'] / (r['forward'] + r['backward']) / peak:.0f}%)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "blas_peak_gflops": peak, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
