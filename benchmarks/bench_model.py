"""Time one training iteration and one inference of the whole model per backend, with the FLOPs they do and the
fraction of the machine's BLAS peak that reaches.

    python benchmarks/bench_model.py                     # small preset and resnet50_fpn, every available backend
    python benchmarks/bench_model.py --coretype-both     # twice: OPENBLAS_CORETYPE as set, then unset
    python benchmarks/bench_model.py --only small --repeat 5 --json out.json

Cases: the `small` preset as `tinymask train` runs it (a batch of 4 shapes images of 128x128; inference of one
image), and `resnet50_fpn` (torchvision's Mask R-CNN) on one 800x800 image, with random weights. For inference the
box score threshold is 0 so that every image yields its 100 detections and the mask head runs on all of them (random
weights score every class about 1/91, below the default threshold 0.05, and the mask head would never run).

**FLOPs** are counted while the pass runs, from the shapes of every convolution, transposed convolution and fully
connected layer it calls (2 FLOPs per multiply-add), by wrapping those layer functions. A training iteration counts
3x its forward's FLOPs: each of these layers' backward does two products of the forward's size (dx and dW). Norms,
ReLUs, RoIAlign, NMS, the losses and the box logic are not counted: few FLOPs, memory-bound. **BLAS peak** is the
best GFLOP/s of a float32 2048x2048 matrix product (`np.matmul`) with the same threads; "% peak" is the pass's
counted GFLOP/s against it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_conv import best_time, run_with_coretype_both  # noqa: E402  (best_time: best of `repeat` runs)
from bench_kernels import machine, threads  # noqa: E402

import tinymask  # noqa: E402
from tinymask.ops.backend import available_backends, use_backend
from tinymask.config import MaskRCNNConfig
from tinymask.data.shapes import ShapesDataset
from tinymask.model import init_params, predict, train_backward, train_forward

# ---------------------------------------------------------------------------------------------------------------------
# Counting FLOPs: wrap the GEMM-backed layers wherever tinymask imported them.
# ---------------------------------------------------------------------------------------------------------------------

COUNTED = {  # layer function -> forward FLOPs from (x, w, out)
    "conv2d_forward": lambda x, w, out: 2.0 * out.size * w.shape[1] * w.shape[2] * w.shape[3],
    "conv_transpose2d_forward": lambda x, w, out: 2.0 * x.size * w.shape[1] * w.shape[2] * w.shape[3],
    "linear_forward": lambda x, w, out: 2.0 * x.shape[0] * w.shape[0] * w.shape[1],
}


class FlopCounter:
    """`with FlopCounter() as c: ...` counts the forward FLOPs of every counted layer called inside, in c.flops."""

    def __enter__(self):
        self.flops, self._patched = 0.0, []
        originals = {}
        for name in COUNTED:
            for module in list(sys.modules.values()):
                if getattr(module, "__name__", "").startswith("tinymask") and hasattr(module, name):
                    originals.setdefault(name, getattr(module, name))
        for name, original in originals.items():
            wrapped = self._wrap(original, COUNTED[name])
            for module in list(sys.modules.values()):
                if getattr(module, "__name__", "").startswith("tinymask") and getattr(module, name, None) is original:
                    setattr(module, name, wrapped)
                    self._patched.append((module, name, original))
        return self

    def _wrap(self, fn, count):
        def wrapped(x, w, *args, **kwargs):
            result = fn(x, w, *args, **kwargs)
            self.flops += count(x, w, result[0])
            return result
        return wrapped

    def __exit__(self, *exc):
        for module, name, original in self._patched:
            setattr(module, name, original)


def blas_peak(repeat: int) -> float:
    """GFLOP/s of the best float32 2048x2048 matrix product."""
    n = 2048
    a = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((n, n), dtype=np.float32)
    return 2 * n ** 3 / best_time(lambda: a @ b, max(repeat, 3)) / 1e9


# ---------------------------------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------------------------------

def cases(only):
    """(name, cfg, images, targets) per model."""
    out = []
    if only in (None, "small"):
        cfg = MaskRCNNConfig.preset("small")
        data = ShapesDataset("train", 4, seed=0)
        out.append(("small, 128x128", cfg, data))
    if only in (None, "resnet50_fpn"):
        cfg = MaskRCNNConfig.preset("resnet50_fpn")
        cfg.min_size, cfg.max_size = 800, 800  # keep the 800x800 image at its size
        data = ShapesDataset("train", 1, seed=0, image_size=800)
        out.append(("resnet50_fpn, 800x800", cfg, data))
    return out


def measure(name, cfg, data, backend, repeat):
    images = [data[i]["image"] for i in range(len(data))]
    targets = [data[i] for i in range(len(data))]
    params = init_params(cfg, seed=0)
    infer_cfg = MaskRCNNConfig(**{**cfg.to_dict(), "box_score_thresh": 0.0})

    def train_step():
        losses, cache = train_forward(params, cfg, images, targets, np.random.default_rng(0))
        train_backward(cache)

    def infer():
        return predict(params, infer_cfg, images[:1])

    rows = []
    with use_backend(backend):
        with FlopCounter() as c:
            train_forward(params, cfg, images, targets, np.random.default_rng(0))
        train_flops = 3 * c.flops
        with FlopCounter() as c:
            detections = infer()
        infer_flops = c.flops
        rows.append({"case": f"{name}: training iteration, batch {len(images)}", "backend": backend,
                     "gflop": train_flops / 1e9, "seconds": best_time(train_step, repeat)})
        rows.append({"case": f"{name}: inference, 1 image ({len(detections[0]['scores'])} detections)",
                     "backend": backend, "gflop": infer_flops / 1e9, "seconds": best_time(infer, repeat)})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3, help="timed repetitions per case; the best is kept")
    parser.add_argument("--only", choices=["small", "resnet50_fpn"], help="one model only")
    parser.add_argument("--backends", nargs="+", help="default: every available backend (cuda not under the "
                                                      "simulator)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--coretype-both", action="store_true", help="run twice: OPENBLAS_CORETYPE as set, then unset")
    args = parser.parse_args()
    if args.coretype_both:
        run_with_coretype_both(__file__)
        return
    status = available_backends()
    backends = args.backends or [b for b, (ok, _) in status.items()
                                 if ok and not (b == "cuda" and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1")]
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}; tinymask {tinymask.__version__}; machine: {machine()}; "
          f"load average: {os.getloadavg()[0]:.2f}")
    print(f"threads: {threads()}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; "
          f"numpy {np.__version__}; best of {args.repeat}")
    for b, (ok, why) in status.items():
        if b not in backends:
            print(f"backend {b}: not measured ({why if not ok else 'not asked for'})")
    peak = blas_peak(args.repeat)
    print(f"BLAS peak (float32 2048x2048 matmul): {peak:.1f} GFLOP/s")
    rows = []
    for name, cfg, data in cases(args.only):
        for backend in backends:
            rows += measure(name, cfg, data, backend, args.repeat)
    print(f"{'case':62s} {'backend':>8s} {'GFLOP':>8s} {'seconds':>9s} {'GFLOP/s':>8s} {'% peak':>7s}")
    for r in rows:
        rate = r["gflop"] / r["seconds"]
        print(f"{r['case']:62s} {r['backend']:>8s} {r['gflop']:8.1f} {r['seconds']:9.3f} {rate:8.1f} "
              f"{100 * rate / peak:6.0f}%")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"blas_peak_gflops": peak, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
