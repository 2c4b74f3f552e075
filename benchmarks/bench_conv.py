"""Time tinymask's convolution and transposed convolution (forward + backward, float32) on ResNet-50 layer shapes,
and PyTorch CPU on the same shapes in the same run when PyTorch is installed.

    python benchmarks/bench_conv.py                  # as the environment is
    python benchmarks/bench_conv.py --coretype-both  # once with OPENBLAS_CORETYPE as set, once with it unset

GFLOP/s counts the forward's multiply-adds as 2 FLOPs and the backward as twice the forward (dx and dw).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from tinymask.layers.conv import conv2d_backward, conv2d_forward
from tinymask.layers.conv_transpose import conv_transpose2d_backward, conv_transpose2d_forward

# (name, kind, x shape, w shape, settings): shapes from ResNet-50 at an 800-pixel input and the mask head.
CASES = [
    ("3x3 conv 256->256 @ 50x50 (C4 stage)", "conv", (1, 256, 50, 50), (256, 256, 3, 3), dict(stride=1, padding=1)),
    ("1x1 conv 256->1024 @ 50x50", "conv", (1, 256, 50, 50), (1024, 256, 1, 1), dict(stride=1, padding=0)),
    ("7x7/2 stem conv 3->64 @ 800x800", "conv", (1, 3, 800, 800), (64, 3, 7, 7), dict(stride=2, padding=3)),
    ("2x2/2 deconv 256->256 @ 14x14, 100 RoIs", "deconv", (100, 256, 14, 14), (256, 256, 2, 2), dict(stride=2)),
]


def best_time(fn, repeat: int) -> float:
    fn()  # warm-up (allocations, lazy initialisation)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def best_times(fns: dict, repeat: int) -> dict:
    """{name: best of `repeat` runs} for several functions timed in interleaved rounds (a, b, c, a, b, c, ...) after
    one warm-up each, so that a slow spell of a shared machine falls on every contender alike."""
    for fn in fns.values():
        fn()
    best = {name: float("inf") for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def flops(kind, x_shape, w_shape, out_shape) -> float:
    if kind == "conv":
        macs = np.prod(out_shape) * np.prod(w_shape[1:])  # every output: C_in·kH·kW multiply-adds
    else:
        macs = np.prod(x_shape) * np.prod(w_shape[1:])  # every input pixel scatters C_out·kH·kW
    return 3 * 2 * float(macs)  # forward + backward (2x forward)


def run(repeat: int) -> list[dict]:
    rng = np.random.default_rng(0)
    rows = []
    for name, kind, x_shape, w_shape, kw in CASES:
        x = rng.standard_normal(x_shape, dtype=np.float32)
        w = (rng.standard_normal(w_shape, dtype=np.float32) * 0.05).astype(np.float32)
        b = np.zeros(w_shape[1] if kind == "deconv" else w_shape[0], np.float32)
        fwd, bwd = (conv2d_forward, conv2d_backward) if kind == "conv" else (conv_transpose2d_forward, conv_transpose2d_backward)
        out, _ = fwd(x, w, b, **kw)
        dout = rng.standard_normal(out.shape, dtype=np.float32)

        def ours():
            _, cache = fwd(x, w, b, **kw)
            bwd(dout, cache)

        row = {"case": name, "gflop": flops(kind, x_shape, w_shape, out.shape) / 1e9}
        row["tinymask_s"] = best_time(ours, repeat)
        theirs = torch_conv_time(kind, x, w, b, dout, kw, repeat)
        if theirs is not None:
            row["torch_s"] = theirs
        rows.append(row)
    return rows


def torch_conv_fn(kind, x, w, b, dout, kw):
    """PyTorch CPU's forward + backward of the same (transposed) convolution, as a function to time; None without
    torch."""
    try:
        import torch
    except ImportError:
        return None
    tf = torch.nn.functional.conv2d if kind == "conv" else torch.nn.functional.conv_transpose2d
    tx, tw, tb = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    tdout = torch.tensor(dout)

    def theirs():
        tx.grad = tw.grad = tb.grad = None
        tf(tx, tw, tb, **kw).backward(tdout)

    return theirs


def torch_conv_time(kind, x, w, b, dout, kw, repeat):
    """Best of `repeat` runs of torch_conv_fn's function; None without torch."""
    fn = torch_conv_fn(kind, x, w, b, dout, kw)
    return None if fn is None else best_time(fn, repeat)


def run_with_coretype_both(script: str) -> None:
    """Run `script` with this process's other arguments twice: OPENBLAS_CORETYPE as set (the development machines
    export Haswell), then unset (OpenBLAS's own detection)."""
    base = [sys.executable, script] + [a for a in sys.argv[1:] if a != "--coretype-both"]
    env = dict(os.environ)
    print(f"== OPENBLAS_CORETYPE={env.get('OPENBLAS_CORETYPE', '(unset)')}", flush=True)
    subprocess.run(base, env=env, check=True)
    env.pop("OPENBLAS_CORETYPE", None)
    print("== OPENBLAS_CORETYPE unset", flush=True)
    subprocess.run(base, env=env, check=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions per case; the best is kept")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--coretype-both", action="store_true",
                        help="run twice: OPENBLAS_CORETYPE as set, then unset")
    args = parser.parse_args()
    if args.coretype_both:
        run_with_coretype_both(__file__)
        return

    try:
        import torch
        torch_info = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    except ImportError:
        torch_info = "torch not installed"
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; numpy {np.__version__}; "
          f"{torch_info}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}")
    rows = run(args.repeat)
    print(f"{'case':44s} {'GFLOP':>7s} {'tinymask ms':>12s} {'GFLOP/s':>8s} {'torch ms':>9s} {'GFLOP/s':>8s} {'ratio':>6s}")
    for r in rows:
        line = f"{r['case']:44s} {r['gflop']:7.2f} {r['tinymask_s'] * 1e3:12.1f} {r['gflop'] / r['tinymask_s']:8.1f}"
        if "torch_s" in r:
            line += f" {r['torch_s'] * 1e3:9.1f} {r['gflop'] / r['torch_s']:8.1f} {r['tinymask_s'] / r['torch_s']:6.2f}"
        print(line)
    print("ratio = tinymask time / torch time (below 1: tinymask is faster)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
