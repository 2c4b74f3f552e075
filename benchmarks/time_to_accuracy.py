"""Time to accuracy of `tinymask train`: how long until the held-out mask AP50 reaches a target.

    python benchmarks/time_to_accuracy.py --out runs/tta -- --iterations 1500 --eval-every 250
    python benchmarks/time_to_accuracy.py --report runs/tta        # re-read an existing run's log

Everything after `--` goes to `tinymask train` unchanged (add `--threads 1` to pin BLAS to one thread). The table
lists, at every evaluation, the cumulative training time (the iterations only), the wall time since the start
(evaluations included) and the box and mask AP, AP50 and AP75 on the held-out images, then the first evaluation
at which mask AP50 reached the target.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time


def read_log(path: str):
    """Iteration records and evaluation records of a training log (JSON lines)."""
    steps, evals = [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            rec = json.loads(line)
            (evals if "mask_AP50" in rec else steps).append(rec)
    return steps, evals


def report(run_dir: str, target: float) -> int:
    steps, evals = read_log(os.path.join(run_dir, "log.jsonl"))
    train_time = {}
    total = 0.0
    for s in steps:
        total += s["time"]
        train_time[s["iteration"]] = total
    print(f"{'iter':>6s} {'train s':>8s} {'wall s':>8s} {'box AP':>7s} {'AP50':>6s} {'mask AP':>8s} {'AP50':>6s} "
          f"{'AP75':>6s}")
    eval_total, reached = 0.0, None
    for e in evals:
        it = e["iteration"]
        wall = train_time.get(it, float("nan")) + eval_total + e["eval_seconds"]
        eval_total += e["eval_seconds"]
        print(f"{it:6d} {train_time.get(it, float('nan')):8.0f} {wall:8.0f} {e['box_AP']:7.3f} {e['box_AP50']:6.3f} "
              f"{e['mask_AP']:8.3f} {e['mask_AP50']:6.3f} {e['mask_AP75']:6.3f}")
        if reached is None and e["mask_AP50"] >= target:
            reached = (it, train_time.get(it), wall)
    if reached:
        print(f"mask AP50 >= {target} first at iteration {reached[0]}: {reached[1]:.0f} s of training, "
              f"{reached[2]:.0f} s wall (evaluations included)")
    else:
        print(f"mask AP50 never reached {target}")
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/time_to_accuracy", help="the run folder")
    parser.add_argument("--target", type=float, default=0.90, help="mask AP50 to reach (default 0.90)")
    parser.add_argument("--report", metavar="RUN_DIR", help="only print the table of an existing run")
    args, train_args = parser.parse_known_args()
    train_args = [a for a in train_args if a != "--"]
    if args.report:
        return report(args.report, args.target)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; python {platform.python_version()}; "
          f"OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; "
          f"TINYMASK_BACKEND={os.environ.get('TINYMASK_BACKEND', '(default)')}", flush=True)
    cmd = [sys.executable, "-m", "tinymask.cli", "train", "--out", args.out, "--no-progress", *train_args]
    print("running:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    print(f"whole command: {time.perf_counter() - t0:.0f} s")
    return report(args.out, args.target)


if __name__ == "__main__":
    sys.exit(main())
