"""Mutation check: plant known bugs in a scratch copy of tinymask, one at a time, and see which test catches each.

    python benchmarks/mutation_check.py                   # every mutant, one after another (about 7 min on 2 cores)
    python benchmarks/mutation_check.py --list            # what is planted where, without running anything
    python benchmarks/mutation_check.py --only wiring-p6-rpn,loss-bce-sign
    python benchmarks/mutation_check.py --jobs 2          # two mutants at a time (each test run is then slower)
    python benchmarks/mutation_check.py --hinted-only     # only each mutant's own tests, never the whole suite

Other options: `--timeout S` (seconds per mutant, default 1800; a run that takes longer counts as not caught),
`--no-baseline` (skip the unmutated run described below).

**What it shows.** "The tests pass" says the code agrees with the tests; it does not say the tests would notice if
the code were wrong. Mutation testing asks that second question directly: change the code in one small, realistic
way (a mutant: a gradient dropped, a `>` that became `>=`, a weight copied from the wrong line), run the suite, and
check that some test fails. A mutant that passes every test *survives*, and names a gap: a bug of that kind could
sit in the code unnoticed. The mutants here are the bugs a learner or a refactor could plausibly introduce, spread
over every part of the model: the wiring of the whole backward pass (the five that survived the suite before
issue 14 added tests/test_torchvision_train_step.py and the per-tensor whole-model checks), layers, heads, losses,
the box logic, and the Numba and CUDA kernels.

**How it runs.** Each mutant is one text replacement in one file: the old text must occur exactly once (so a
refactor that moves the code makes this script, and tests/test_benchmarks.py, fail loudly instead of silently
planting nothing). For each mutant the working tree (the files git tracks, plus untracked ones it does not ignore) is
copied into a temporary folder, the replacement made there, and pytest run there with `PYTHONPATH` pointing at the
copy: first the test files the mutant names as the likeliest to catch it, then, only if those all pass, the rest of
the default (not slow) suite, stopping at the first failure (`-x`). The table gives the first test that failed and
the seconds the run took. A mutant whose run passes is SURVIVED, and the script exits with status 1.

Before the mutants, a baseline runs the same hinted tests on an unmutated copy: they must pass, or every mutant
would look "caught" by a tree that was broken to begin with. Each copy gets its own empty `NUMBA_CACHE_DIR`, so a
mutated kernel is compiled from the mutated source and no cache is shared with your checkout. The CUDA mutants run
their tests in Numba's CUDA simulator (`NUMBA_ENABLE_CUDASIM=1`, set for their run only; needs numba-cuda).

Nothing in your checkout is modified.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_SIM = {"NUMBA_ENABLE_CUDASIM": "1"}


@dataclass(frozen=True)
class Mutant:
    """One planted bug: replace `old` (which must occur exactly once in `file`) by `new`."""

    id: str
    bug: str  # one line, for the table
    file: str  # relative to the repository root
    old: str
    new: str
    env: dict = field(default_factory=dict)  # extra environment for its test run
    tests: tuple = ()  # test files or node ids to run first (the likeliest to catch it)


MUTANTS = [
    # --- The wiring of the whole backward pass: the five mutants that survived the suite before issue 14. ---------
    Mutant("wiring-p6-rpn", "P6's RPN gradient dropped",
           "tinymask/model.py",
           'dP["P6"] = d_rpn_maps[4]',
           'dP["P6"] = np.zeros_like(d_rpn_maps[4])',
           tests=("tests/test_torchvision_train_step.py", "tests/test_model.py")),
    Mutant("wiring-roi-p2-only", "RoI heads' gradient reaches P2 only (P3-P5 dropped)",
           "tinymask/model.py",
           'dP = {k: d_rpn_maps[i] + d_roi_maps[i] for i, k in enumerate(("P2", "P3", "P4", "P5"))}',
           'dP = {k: d_rpn_maps[i] + (d_roi_maps[i] if i == 0 else 0) for i, k in enumerate(("P2", "P3", "P4", "P5"))}',
           tests=("tests/test_torchvision_train_step.py", "tests/test_model.py")),
    Mutant("wiring-canonical-size", "RoI level assignment ignores cfg.fpn_canonical_size (224 always)",
           "tinymask/model.py",
           "canonical_size=cfg.fpn_canonical_size,",
           "canonical_size=224,",
           tests=("tests/test_model.py", "tests/test_torchvision_train_step.py")),
    Mutant("wiring-box-fc7", "box head: box-regression gradient not sent into the shared fc7",
           "tinymask/heads/box_head.py",
           "dh = relu_backward(dh1 + dh2, r7)",
           "dh = relu_backward(dh1, r7)",
           tests=("tests/test_heads_gradcheck.py", "tests/test_torchvision_train_step.py")),
    Mutant("wiring-mask-label", "mask loss given label - 1 at the call site",
           "tinymask/model.py",
           "mask_loss(mask_logits, pos_labels, m_targets, cfg)",
           "mask_loss(mask_logits, pos_labels - 1, m_targets, cfg)",
           tests=("tests/test_torchvision_train_step.py", "tests/test_heads_gradcheck.py")),

    # --- Layers. ---------------------------------------------------------------------------------------------------
    Mutant("layer-conv-crop", "conv backward crops dx from the padded corner, not from (ph, pw)",
           "tinymask/layers/conv.py",
           "dx = dx_pad[:, :, ph:ph + H, pw:pw + W]",
           "dx = dx_pad[:, :, :H, :W]",
           tests=("tests/test_layers.py",)),
    Mutant("layer-deconv-dw-mean", "conv-transpose backward averages dW over the batch instead of summing",
           "tinymask/layers/conv_transpose.py",
           "dcols.transpose(0, 2, 1)).sum(axis=0).reshape(w.shape)",
           "dcols.transpose(0, 2, 1)).mean(axis=0).reshape(w.shape)",
           tests=("tests/test_layers.py",)),
    Mutant("layer-roialign-max-unflatten", "RoIAlign max backward: winning sample put back without the bin transpose",
           "tinymask/layers/roi_align.py",
           "dV = dV.reshape(C, oh, ow, gh, gw).transpose(0, 1, 3, 2, 4).reshape(C, oh * gh, ow * gw)",
           "dV = dV.reshape(C, oh * gh, ow * gw)",
           tests=("tests/test_roi_align.py",)),
    Mutant("layer-roialign-edge-weight", "RoIAlign: clamped edge sample's weight assigned, not added (1 becomes 0)",
           "tinymask/layers/roi_align.py",
           "np.add.at(S, (rows, high - first), w_high)",
           "S[rows, high - first] = w_high",
           tests=("tests/test_roi_align.py",)),
    Mutant("layer-maxpool-offset", "max-pool backward reads the arg-max offset column-major (j*kh + i)",
           "tinymask/layers/pooling.py",
           "won = argmax == i * kw + j",
           "won = argmax == j * kh + i",
           tests=("tests/test_layers.py",)),
    Mutant("layer-linear-db-mean", "linear backward: db is the mean over the batch, not the sum",
           "tinymask/layers/linear.py",
           "db = dout.sum(axis=0) if has_bias else None",
           "db = dout.mean(axis=0) if has_bias else None",
           tests=("tests/test_layers.py",)),
    Mutant("layer-groupnorm-mean-term", "group norm backward forgets the mean's term (-mean(dx_hat))",
           "tinymask/layers/norm.py",
           "dx = (dx_hat - dx_hat.mean(axis=2, keepdims=True)",
           "dx = (dx_hat",
           tests=("tests/test_layers.py",)),
    Mutant("layer-frozen-bn-identity", "frozen batch norm backward passes dout through unscaled",
           "tinymask/layers/norm.py",
           "return dout * scale[:, None, None]",
           "return dout",
           tests=("tests/test_layers.py",)),

    # --- Heads. ----------------------------------------------------------------------------------------------------
    Mutant("head-mask-deconv-relu", "mask head backward skips the ReLU after the deconv",
           "tinymask/heads/mask_head.py",
           "conv_transpose2d_backward(relu_backward(dx, crd), cd)",
           "conv_transpose2d_backward(dx, cd)",
           tests=("tests/test_heads_gradcheck.py",)),
    Mutant("head-rpn-sibling-sum", "RPN head backward: only the objectness conv's gradient reaches the 3x3 conv",
           "tinymask/heads/rpn.py",
           "dt = relu_backward(dt1 + dt2, c_relu)",
           "dt = relu_backward(dt1, c_relu)",
           tests=("tests/test_rpn_and_heads.py",)),

    # --- Losses. ---------------------------------------------------------------------------------------------------
    Mutant("loss-bce-sign", "BCE gradient sign flipped (t - sigmoid(z))",
           "tinymask/layers/losses.py",
           "((sigmoid(logits) - targets) * scale)",
           "((targets - sigmoid(logits)) * scale)",
           tests=("tests/test_losses.py",)),
    Mutant("loss-smooth-l1-beta", "smooth L1 quadratic gradient multiplies by beta instead of dividing",
           "tinymask/layers/losses.py",
           "grad = np.where(quadratic, diff / beta, np.sign(diff))",
           "grad = np.where(quadratic, diff * beta, np.sign(diff))",
           tests=("tests/test_losses.py",)),
    Mutant("loss-ce-spatial-mean", "softmax CE averages over N only, not over every pixel (N*H*W)",
           "tinymask/layers/losses.py",
           "loss, scale = _reduce(-log_p_true, reduction, labels.size)",
           "loss, scale = _reduce(-log_p_true, reduction, labels.shape[0])",
           tests=("tests/test_losses.py", "tests/test_rpn_and_heads.py")),
    Mutant("loss-box-normaliser", "box loss normalised by the positive RoIs instead of all sampled RoIs",
           "tinymask/heads/box_head.py",
           "    loss_box = loss_box / max(R, 1)\n    dreg = np.zeros_like(per_class)"
           "  # (R, K, 4): only the true class's deltas of positives get a gradient\n"
           "    dreg[pos, labels[pos]] = dpred / max(R, 1)",  # the loss and its gradient, both
           "    loss_box = loss_box / max(len(pos), 1)\n    dreg = np.zeros_like(per_class)"
           "  # (R, K, 4): only the true class's deltas of positives get a gradient\n"
           "    dreg[pos, labels[pos]] = dpred / max(len(pos), 1)",
           tests=("tests/test_losses.py", "tests/test_torchvision_train_step.py")),

    # --- Box logic (no gradient). --------------------------------------------------------------------------------
    Mutant("box-encode-weight", "box encoding scales t_h by w_y (10) instead of w_h (5)",
           "tinymask/box_logic/boxes.py",
           "t_h = wh * np.log(gt_h / ex_h)",
           "t_h = wy * np.log(gt_h / ex_h)",
           tests=("tests/test_boxes.py",)),
    Mutant("box-matcher-low", "matcher: IoU exactly at the low threshold counted as background (<=)",
           "tinymask/box_logic/matcher.py",
           "matches[best_iou < self.low_threshold] = BELOW_LOW_THRESHOLD",
           "matches[best_iou <= self.low_threshold] = BELOW_LOW_THRESHOLD",
           tests=("tests/test_matcher.py",)),
    Mutant("box-level-eps", "FPN level assignment without the +eps (a box a hair below a power of two falls a level)",
           "tinymask/box_logic/levels.py",
           "np.log2(np.sqrt(area) / canonical_size) + eps)",
           "np.log2(np.sqrt(area) / canonical_size))",
           tests=("tests/test_multiscale_roi.py",)),
    Mutant("box-nms-ge", "NMS suppresses at IoU >= threshold instead of >",
           "tinymask/box_logic/nms.py",
           "order = rest[~(iou > iou_threshold)]",
           "order = rest[~(iou >= iou_threshold)]",
           tests=("tests/test_nms.py",)),
    Mutant("box-sampler-negatives", "sampler: negatives capped at (1 - fraction) * batch, not filling the batch",
           "tinymask/box_logic/sampler.py",
           "num_neg = min(negative.size, batch_size_per_image - num_pos)",
           "num_neg = min(negative.size, int(batch_size_per_image * (1 - positive_fraction)))",
           tests=("tests/test_sampler.py",)),

    # --- Kernels: Numba (compared with the NumPy reference in tests/test_backends.py) and CUDA (in the simulator). --
    Mutant("numba-roialign-avg-bwd-row", "Numba RoIAlign avg backward skips each bin's last row (off by one)",
           "tinymask/ops/numba/roi_align.py",
           "for y in range(ly[k, p], hy[k, p]):  # dF[y, window] += A_y[p, y] U",
           "for y in range(ly[k, p], hy[k, p] - 1):  # dF[y, window] += A_y[p, y] U",
           tests=("tests/test_backends.py::test_roi_align",)),
    Mutant("numba-roialign-max-bwd-weight", "Numba RoIAlign max backward: corner (y0, x1) gets weight a0*b0",
           "tinymask/ops/numba/roi_align.py",
           "D[y0, x1] += a0 * b1",
           "D[y0, x1] += a0 * b0",
           tests=("tests/test_backends.py::test_roi_align",)),
    Mutant("numba-roialign-simple-bwd-weight", "Numba simple RoIAlign backward: corner (y1, x0) gets weight a1*b1",
           "tinymask/ops/numba/roi_align.py",
           "D[y1, x0] += g * a1 * b0",
           "D[y1, x0] += g * a1 * b1",
           tests=("tests/test_backends.py::test_numba_roi_align_simple_kernels",)),
    Mutant("numba-im2col-dilation", "Numba im2col ignores the dilation along rows",
           "tinymask/ops/numba/convolution.py",
           "src = x_pad[n, c, y * sh + i * dh]",
           "src = x_pad[n, c, y * sh + i]",
           tests=("tests/test_backends.py::test_conv2d",)),
    Mutant("cuda-roialign-avg-bwd", "CUDA RoIAlign avg backward forgets to divide by the sample count",
           "tinymask/ops/cuda/roi_align.py",
           "g = dout[k, c, p, q] / max(gh * gw, 1)",
           "g = dout[k, c, p, q]",
           env=CUDA_SIM, tests=("tests/test_cuda_sim.py::test_roi_align",)),
    Mutant("cuda-gemm-simple-k", "CUDA simple GEMM drops the last product of each dot product",
           "tinymask/ops/cuda/gemm.py",
           "for k in range(K):",
           "for k in range(K - 1):",
           env=CUDA_SIM, tests=("tests/test_cuda_sim.py::test_simple_and_tiled_gemm",)),
    Mutant("cuda-nms-ge", "CUDA NMS kernel suppresses at IoU >= threshold",
           "tinymask/ops/cuda/masks_and_nms.py",
           "if iou > threshold:",
           "if iou >= threshold:",
           env=CUDA_SIM, tests=("tests/test_cuda_sim.py::test_nms",)),
]


# ---------------------------------------------------------------------------------------------------------------
# Planting a mutant.
# ---------------------------------------------------------------------------------------------------------------

def locate(mutant: Mutant, root: str = ROOT) -> int:
    """Line number of the mutant's old text in `root`; AssertionError unless it occurs exactly once."""
    path = os.path.join(root, mutant.file)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    count = text.count(mutant.old)
    assert count == 1, (f"mutant {mutant.id}: its old text occurs {count} times in {mutant.file} (must be exactly "
                        f"once; did a refactor move it?):\n{mutant.old}")
    assert mutant.new != mutant.old, f"mutant {mutant.id} changes nothing"
    return text[:text.index(mutant.old)].count("\n") + 1


def tree_files(root: str = ROOT) -> list:
    """The working tree's files: what git tracks (as they are now) plus untracked files it does not ignore."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                             capture_output=True, check=True).stdout.decode()
        return sorted(p for p in set(out.split("\0")) if p and os.path.isfile(os.path.join(root, p)))
    except (OSError, subprocess.CalledProcessError):  # not a git checkout: everything but the usual clutter
        skip = {".git", ".venv", "runs", "__pycache__", ".pytest_cache", ".numba_cache", "build", "dist"}
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in skip and not d.endswith(".egg-info")]
            files += [os.path.relpath(os.path.join(dirpath, f), root) for f in filenames]
        return sorted(files)


def make_copy(dest: str, mutant: Mutant | None, root: str = ROOT):
    for rel in tree_files(root):
        os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
        shutil.copy2(os.path.join(root, rel), os.path.join(dest, rel))
    if mutant is not None:
        path = os.path.join(dest, mutant.file)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        with open(path, "w", encoding="utf-8") as f:
            f.write(text.replace(mutant.old, mutant.new, 1))


# ---------------------------------------------------------------------------------------------------------------
# Running the suite on a copy.
# ---------------------------------------------------------------------------------------------------------------

FAILED_LINE = re.compile(r"^(FAILED|ERROR) (\S+)")


def run_pytest(copy: str, args: list, env: dict, deadline: float):
    """pytest in the copy -> (status, first failing node id or None, last line of output).

    status: "passed", "failed", "timeout" or "error" (pytest could not run: usage error, nothing collected).
    """
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "-rfE", *args]
    try:
        proc = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True,
                              timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return "timeout", None, ""
    lines = (proc.stdout + proc.stderr).splitlines()
    summary = lines[-1].strip("= ") if lines else ""
    first = next((m.group(2) for line in lines if (m := FAILED_LINE.match(line))), None)
    if proc.returncode == 0:
        return "passed", None, summary
    if proc.returncode == 1 or first is not None:  # 1: tests failed; 2 with a failing node: an error while running
        return "failed", first or "(see pytest output)", summary
    return "error", None, f"pytest exit {proc.returncode}: {summary}"


def env_for(copy: str, mutant: Mutant | None, extra: dict) -> dict:
    """The test run's environment: the copy first on the path, its own Numba cache, and TINYMASK_MUTANT naming the
    planted bug (tests/test_benchmarks.py then expects that mutant's new text in place of its old one)."""
    env = dict(os.environ)
    env.pop("NUMBA_ENABLE_CUDASIM", None)  # only the CUDA mutants' runs use the simulator
    env.update(PYTHONPATH=copy, NUMBA_CACHE_DIR=os.path.join(copy, ".numba_cache"), PYTHONDONTWRITEBYTECODE="1",
               TINYMASK_MUTANT=mutant.id if mutant else "")
    env.update(extra)
    return env


def check_mutant(mutant: Mutant | None, tests: tuple, env_extra: dict, timeout: float, full: bool):
    """Copy, plant, run the hinted tests, then (if `full` and they pass) the rest of the suite.

    Returns (status, caught_by, seconds, note).
    """
    start = time.monotonic()
    deadline = start + timeout
    with tempfile.TemporaryDirectory(prefix="tinymask-mutant-") as copy:
        make_copy(copy, mutant)
        env = env_for(copy, mutant, env_extra)
        status, first, summary = run_pytest(copy, list(tests), env, deadline) if tests else ("passed", None, "")
        if status == "passed" and full:  # the rest of the suite (hinted files left out; hinted node ids rerun)
            ignore = [f"--ignore={t}" for t in tests if "::" not in t]
            status, first, summary = run_pytest(copy, ["tests", *ignore], env, deadline)
    return status, first, time.monotonic() - start, summary


# ---------------------------------------------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------------------------------------------

def table(rows: list, header=("id", "where", "bug", "caught by", "seconds")) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    fmt = lambda r: " | ".join(str(v).ljust(w) if i < 4 else str(v).rjust(w)  # noqa: E731
                               for i, (v, w) in enumerate(zip(r, widths))).rstrip()
    return "\n".join([fmt(header), "-+-".join("-" * w for w in widths), *(fmt(r) for r in rows)])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", help="comma-separated mutant ids to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--jobs", type=int, default=1, help="mutants run at the same time (default 1)")
    parser.add_argument("--timeout", type=float, default=1800.0,
                        help="seconds one mutant's test run may take before it counts as not caught (default 1800)")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated baseline run")
    parser.add_argument("--hinted-only", action="store_true",
                        help="run only each mutant's hinted tests, not the rest of the suite when they pass")
    args = parser.parse_args(argv)

    mutants = MUTANTS
    if args.only:
        wanted = [s.strip() for s in args.only.split(",") if s.strip()]
        unknown = sorted(set(wanted) - {m.id for m in MUTANTS})
        if unknown:
            parser.error(f"unknown mutant ids: {', '.join(unknown)} (see --list)")
        mutants = [m for m in MUTANTS if m.id in wanted]
    where = {m.id: f"{m.file.removeprefix('tinymask/')}:{locate(m)}" for m in mutants}  # fails loudly if moved

    if args.list:
        rows = [(m.id, where[m.id], m.bug, ", ".join(m.tests), " ".join(f"{k}={v}" for k, v in m.env.items()))
                for m in mutants]
        print(table(rows, header=("id", "where", "bug", "tests run first", "environment")))
        return 0

    t0 = time.monotonic()
    if not args.no_baseline:  # the hinted tests on an unmutated copy, once per environment
        groups = {}  # environment -> the hinted tests run in it, each once
        for m in mutants:
            tests = groups.setdefault(tuple(sorted(m.env.items())), [])
            tests += [t for t in m.tests if t not in tests]
        for env_items, tests in groups.items():
            label = " ".join(f"{k}={v}" for k, v in env_items) or "default environment"
            status, first, seconds, summary = check_mutant(None, tuple(tests), dict(env_items), args.timeout,
                                                           full=False)
            print(f"baseline ({label}, {len(tests)} test files/ids): {status} in {seconds:.0f} s: {summary}",
                  flush=True)
            if status != "passed":
                print(f"the unmutated tree does not pass its own tests (first failure: {first}); fix that first",
                      file=sys.stderr)
                return 2

    def one(m):
        status, first, seconds, summary = check_mutant(m, m.tests, m.env, args.timeout, full=not args.hinted_only)
        caught_by = {"failed": first, "passed": "SURVIVED", "timeout": "TIMEOUT (not caught)",
                     "error": f"ERROR ({summary})"}[status]
        print(f"  {m.id}: {caught_by} ({seconds:.0f} s)", flush=True)
        return m, status, caught_by, seconds

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        results = list(pool.map(one, mutants))
    rows = [(m.id, where[m.id], m.bug, caught_by, f"{seconds:.0f}") for m, _, caught_by, seconds in results]
    print()
    print(table(rows))
    not_caught = [m.id for m, status, _, _ in results if status != "failed"]
    print(f"\n{len(results) - len(not_caught)} of {len(results)} mutants caught in {time.monotonic() - t0:.0f} s"
          + (f"; not caught: {', '.join(not_caught)}" if not_caught else ""))
    return 1 if not_caught else 0


if __name__ == "__main__":
    sys.exit(main())
