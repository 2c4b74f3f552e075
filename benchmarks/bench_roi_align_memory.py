"""Where the Numba RoIAlign's time goes besides the kernels: fresh output pages, and threads.

    OMP_WAIT_POLICY=passive python benchmarks/bench_roi_align_memory.py          # best of 7
    OMP_WAIT_POLICY=passive python benchmarks/bench_roi_align_memory.py --repeat 9

The inputs of bench_kernels.py (512 RoIs × 256 channels on a P2 map 200×272, float32, sampling_ratio 2, 7×7 and
14×14). For the forward and the backward, separately, in interleaved rounds:

- **layer**: tinymask.layers.roi_align_forward / _backward with backend="numba", as a user calls them: each call
  returns a new output array (103 MB at 14×14, and 55 MB for the map's gradient), whose pages the operating system
  must supply and zero on first touch;
- **kernel, 1 thread / N threads**: the same Numba kernels writing into arrays allocated once and reused, on one
  thread and on all of Numba's threads: the kernels' own time, and how it scales with the cores.

The difference between "layer" and "kernel, N threads" is what the fresh memory costs; the NumPy reference pays it
too. Figures in docs/performance.md §5.
"""
from __future__ import annotations

import argparse
import time

import numba
import numpy as np

from tinymask.layers import roi_align_backward, roi_align_forward
import tinymask.ops.numba.roi_align as nb_roi_align
from tinymask.ops.numba.roi_align_tables import bin_table, tables as roi_tables
from bench_conv import best_times  # best of `repeat` interleaved runs after a warm-up
from bench_kernels import p2_rois, threads as threads_line


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7, help="timed repetitions per case; the best is kept")
    args = parser.parse_args()
    threads = numba.get_num_threads()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}; {threads_line()}; best of {args.repeat}, interleaved")
    rng = np.random.default_rng(0)
    features = rng.standard_normal((1, 256, 200, 272), dtype=np.float32)
    rois = p2_rois(rng)
    batch = np.zeros(len(rois), dtype=np.int64)
    print(f"{'case':34s}{'layer ms':>12s}{'kernel 1t ms':>14s}{'kernel ' + str(threads) + 't ms':>14s}"
          f"{'fresh pages ms':>16s}")
    for size in (7, 14):
        tables = roi_tables(bin_table, rois, (size, size), 0.25, 2, False, True, 200, 272, np.float32)
        dout = rng.standard_normal((len(rois), 256, size, size), dtype=np.float32)
        out = np.empty((len(rois), 256, size * size), dtype=np.float32)  # allocated once: pages already in memory
        dF = np.empty_like(features)
        _, cache = roi_align_forward(features, rois, output_size=size, spatial_scale=0.25, sampling_ratio=2,
                                     backend="numba")

        def kernel(direction, n_threads):
            def run():
                numba.set_num_threads(n_threads)
                try:
                    scratch = nb_roi_align._block_scratch(features.shape, np.float32)
                    if direction == "forward":
                        nb_roi_align._roi_align_avg_fwd(features, batch, out, scratch, *tables)
                    else:
                        nb_roi_align._roi_align_avg_bwd(dout.reshape(len(rois), 256, -1), dF, batch, scratch, *tables)
                finally:
                    numba.set_num_threads(threads)
            return run

        def layer_forward():
            roi_align_forward(features, rois, output_size=size, spatial_scale=0.25, sampling_ratio=2,
                              backend="numba")

        def layer_backward():
            roi_align_backward(dout, cache)

        for direction, layer in (("forward", layer_forward), ("backward", layer_backward)):
            best = best_times({"layer": layer, "1": kernel(direction, 1), "N": kernel(direction, threads)},
                              args.repeat)
            print(f"{f'RoIAlign {size}x{size} {direction}':34s}{best['layer'] * 1e3:12.1f}{best['1'] * 1e3:14.1f}"
                  f"{best['N'] * 1e3:14.1f}{(best['layer'] - best['N']) * 1e3:16.1f}")


if __name__ == "__main__":
    main()
