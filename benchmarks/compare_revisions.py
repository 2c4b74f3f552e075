"""Does a refactoring change what training computes? Train the same run at two revisions and compare the logs.

    python benchmarks/compare_revisions.py 58a4317              # that commit against the working tree
    python benchmarks/compare_revisions.py REV_A REV_B --iterations 40 --eval-every 20 --seed 0

Each revision is checked out into a temporary git worktree (the working tree itself for `.`, the default second
revision) and runs `tinymask train --iterations N --eval-every E --seed S --threads 1 --no-progress` with this
interpreter, its own code first on PYTHONPATH. The two `log.jsonl` files must agree line for line: every loss term,
the lr, the gradient norm and clip scale of every iteration, and every AP of every evaluation, compared as the exact
numbers JSON stored (Python's float repr is round-trip exact, so equal text means equal bits). Only the timings
("time", "data_time", "eval_seconds") may differ. Exit status 0 when they agree, 1 with the first differences listed.

One BLAS thread on both sides, because a multi-threaded BLAS may sum in a different order from run to run. Both runs
use the same machine and libraries, so the comparison is exact; across machines it would not be (another CPU may
round differently), which is why this is a script and not a test with stored numbers.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMINGS = {"time", "data_time", "eval_seconds"}
RUN = "import sys; from tinymask.cli import main; sys.exit(main(sys.argv[1:]))"


def read_log(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def differences(a: list[dict], b: list[dict], limit: int = 10) -> list[str]:
    """Where two logs differ (apart from timings), at most `limit` lines; [] when they agree exactly."""
    out = []
    if len(a) != len(b):
        out.append(f"{len(a)} log lines against {len(b)}")
    for i, (ra, rb) in enumerate(zip(a, b)):
        keys = (set(ra) | set(rb)) - TIMINGS
        for key in sorted(keys):
            if ra.get(key) != rb.get(key):
                out.append(f"line {i + 1} (iteration {ra.get('iteration')}): {key} {ra.get(key)!r} != {rb.get(key)!r}")
    return out[:limit]


def checkout(rev: str, folder: str) -> str:
    """The source folder of `rev`: the working tree for ".", else a detached worktree in `folder`."""
    if rev == ".":
        return ROOT
    subprocess.run(["git", "-C", ROOT, "worktree", "add", "--detach", "-q", folder, rev], check=True)
    return folder


def train_log(source: str, out: str, args) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=source, TINYMASK_BACKEND="numpy")
    command = [sys.executable, "-c", RUN, "train", "--iterations", str(args.iterations), "--eval-every",
               str(args.eval_every), "--seed", str(args.seed), "--threads", "1", "--no-progress", "--out", out]
    subprocess.run(command, check=True, env=env, cwd=source, stdout=subprocess.DEVNULL)
    return read_log(os.path.join(out, "log.jsonl"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", help="a git revision (commit, tag, branch)")
    parser.add_argument("after", nargs="?", default=".", help="another revision; default: the working tree")
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        logs, worktrees = [], []
        try:
            for i, rev in enumerate((args.before, args.after)):
                source = checkout(rev, os.path.join(tmp, f"src{i}"))
                if source != ROOT:
                    worktrees.append(source)
                logs.append(train_log(source, os.path.join(tmp, f"run{i}"), args))
                print(f"{rev}: {len(logs[-1])} log lines, final loss {next(r['loss'] for r in reversed(logs[-1]) if 'loss' in r)!r}")
        finally:
            for w in worktrees:
                subprocess.run(["git", "-C", ROOT, "worktree", "remove", "--force", w], check=False)
    found = differences(*logs)
    if found:
        print("the logs differ:\n  " + "\n  ".join(found))
        return 1
    n = sum("loss" in r for r in logs[0])
    print(f"identical: {n} iterations (every loss term, lr, grad_norm, clip_scale) and "
          f"{len(logs[0]) - n} evaluations (every AP), bit for bit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
