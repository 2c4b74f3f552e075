"""Numba's compile time: every kernel of the "numba" backend, cold (an empty cache) and warm (loaded from the cache).

    python benchmarks/bench_compile.py

Runs this file twice more as child processes with the same fresh, empty `NUMBA_CACHE_DIR`: the first child compiles
every kernel (float32 and float64) and writes the cache, the second loads them from it. Each child calls each layer
that has a Numba kernel once per dtype on tiny inputs and times that first call, which is the compilation (or the
cache load) plus a negligible run. It prints one row per call and the totals, and `--json` keeps them.

What a fresh CI checkout pays once is the cold total; every later process pays the warm total. The CUDA kernels are
not here: numba-cuda compiles them on first launch on a GPU (the simulator compiles nothing).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

DTYPES = ("float32", "float64")


def calls(dtype):
    """(name, zero-argument function) for every layer call that reaches a Numba kernel, on tiny inputs."""
    from tinymask.layers.conv import conv2d_backward, conv2d_forward
    from tinymask.layers import roi_align_backward, roi_align_forward, roi_pool_backward, roi_pool_forward
    from tinymask.box_logic.mask_paste import paste_masks_in_image
    from tinymask.box_logic.nms import nms

    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 2, 6, 6)).astype(dtype)
    w = rng.standard_normal((3, 2, 3, 3)).astype(dtype)
    rois = np.array([[0, 0.5, 0.5, 4.0, 5.0], [0, 1.0, 2.0, 3.0, 3.5]])
    boxes = np.array([[0, 0, 4, 4], [1, 1, 5, 5], [6, 6, 9, 9]], dtype=dtype)
    masks = rng.random((3, 4, 4)).astype(dtype)

    def conv():
        out, cache = conv2d_forward(x, w, padding=1, backend="numba")  # im2col
        conv2d_backward(out, cache)  # col2im

    def roi_align(mode):
        def run():
            out, cache = roi_align_forward(x, rois, output_size=2, spatial_scale=1.0, sampling_ratio=2, mode=mode,
                                           backend="numba")
            roi_align_backward(out, cache)
        return run

    def roi_pool():
        out, cache = roi_pool_forward(x, rois, output_size=2, spatial_scale=1.0, backend="numba")
        roi_pool_backward(out, cache)

    return [
        ("conv: im2col + col2im", conv),
        ("RoIAlign avg: forward + backward", roi_align("avg")),
        ("RoIAlign max: forward + backward", roi_align("max")),
        ("RoIPool: forward + backward", roi_pool),
        ("paste_masks", lambda: paste_masks_in_image(masks, boxes, (12, 12), backend="numba")),
        ("nms", lambda: nms(boxes, boxes[:, 0] + 1, 0.5, backend="numba")),
    ]


def child() -> list[dict]:
    start = time.perf_counter()
    import tinymask.ops.numba
    rows = [{"call": "import numba and tinymask.ops.numba", "dtype": "", "seconds": time.perf_counter() - start}]
    for dtype in DTYPES:
        for name, run in calls(dtype):
            start = time.perf_counter()
            run()
            rows.append({"call": name, "dtype": dtype, "seconds": time.perf_counter() - start})
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child()))
        return

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}; {os.cpu_count()} logical cores; load average: {load:.2f}")
    results = {}
    with tempfile.TemporaryDirectory(prefix="tinymask-numba-cache-") as cache_dir:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
        for run in ("cold", "warm"):
            done = subprocess.run([sys.executable, __file__, "--child"], env=env, check=True, capture_output=True,
                                  text=True)
            results[run] = json.loads(done.stdout.strip().splitlines()[-1])
        cache_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache_dir) for f in fs)
    print(f"{'call':42s} {'dtype':8s} {'cold s':>8s} {'warm s':>8s}")
    for cold, warm in zip(results["cold"], results["warm"]):
        print(f"{cold['call']:42s} {cold['dtype']:8s} {cold['seconds']:8.2f} {warm['seconds']:8.2f}")
    totals = {run: sum(r["seconds"] for r in rows[1:]) for run, rows in results.items()}
    print(f"{'all kernels, both dtypes (import excluded)':51s} {totals['cold']:8.2f} {totals['warm']:8.2f}")
    print(f"cache size: {cache_bytes / 1e6:.1f} MB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": results, "totals": totals, "cache_bytes": cache_bytes, "load_average": load}, f,
                      indent=1)


if __name__ == "__main__":
    main()
