"""Time the "cuda" backend on a GPU against torchvision's CUDA RoIAlign, in one run.

    python benchmarks/bench_gpu.py                    # on the first CUDA GPU; best of 20 per case
    python benchmarks/bench_gpu.py --repeat 50 --json gpu.json
    NUMBA_ENABLE_CUDASIM=1 python benchmarks/bench_gpu.py --smoke   # tiny shapes in the simulator: checks the
                                                                    # script runs; its times mean nothing

Needs numba-cuda and a CUDA GPU (torch with CUDA and torchvision for the comparison column). Without a GPU it says
so and exits with status 2, unless --smoke.

Cases (float32, forward + backward, the inputs of bench_kernels.py: 512 RoIs of 16-112 pixels × 256 channels on an
FPN P2 map (1, 256, 200, 272), sampling_ratio 2, 7×7 and 14×14):

- **tinymask, on device**: tinymask.ops.cuda.roi_align.roi_align_forward_device + roi_align_backward_device on arrays on the
  GPU, as a GPU-resident pipeline would call them: the kernels alone, which is how torchvision is timed.
- **tinymask, layer API**: tinymask.layers.roi_align_forward / _backward with backend="cuda", NumPy arrays in and
  out: every call also copies its inputs to the GPU and the results back (what the model does today).
- **torchvision**: torchvision.ops.roi_align on CUDA tensors, forward + autograd backward.

Every timed call ends with a device synchronisation, so a time is the work finished, not the work queued. The
printed ratio is tinymask on device / torchvision (the issue's goal: at most 2). The script also prints the largest
difference between tinymask's and torchvision's outputs and input gradients, an on-hardware cross-check.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

from tinymask.ops.backend import available_backends
from tinymask.layers import roi_align_backward, roi_align_forward
from bench_conv import best_time  # best of `repeat` runs after a warm-up
from bench_kernels import p2_rois

FULL = dict(K=512, C=256, H=200, W=272, image_hw=(800, 1088), sizes=(7, 14))
SMOKE = dict(K=6, C=2, H=12, W=16, image_hw=(48, 64), sizes=(2,))


def _torchvision(smoke):
    """(torch, torchvision.ops.roi_align, device): device "cuda" when torch sees a GPU; with --smoke and no GPU,
    "cpu", so that the comparison code runs in the simulator too. None without torch and torchvision."""
    try:
        import torch
        from torchvision.ops import roi_align
    except ImportError:
        return None
    device = "cuda" if torch.cuda.is_available() else "cpu" if smoke else None
    return None if device is None else (torch, roi_align, device)


def bench_roi_align(shape, repeat, tv):
    from numba import cuda

    import tinymask.ops.cuda as tm_cuda

    rng = np.random.default_rng(0)
    features = rng.standard_normal((1, shape["C"], shape["H"], shape["W"]), dtype=np.float32)
    rois = p2_rois(rng, K=shape["K"], image_hw=shape["image_hw"])  # (K, 5), column 0 the image index (all 0)
    batch = np.zeros(len(rois), dtype=np.int64)
    scale = shape["H"] / shape["image_hw"][0]
    rows = []
    for size in shape["sizes"]:
        geometry = ((size, size), scale, 2, False, "avg", True)  # output size, scale, sampling, aligned, mode, zero
        dout = rng.standard_normal((len(rois), shape["C"], size, size), dtype=np.float32)
        d_features, d_dout, d_rois, d_batch = (cuda.to_device(a) for a in (features, dout, rois, batch))
        row = {"case": f"RoIAlign fwd+bwd {len(rois)} RoIs x {shape['C']} ch, {size}x{size}, "
                       f"P2 {shape['H']}x{shape['W']}"}

        def on_device():
            d_out, _ = tm_cuda.roi_align_forward_device(d_features, d_rois, d_batch, *geometry)
            tm_cuda.roi_align_backward_device(d_dout, None, features.shape, d_rois, d_batch, *geometry)
            cuda.synchronize()

        def layer_api():
            _, cache = roi_align_forward(features, rois, output_size=size, spatial_scale=scale, sampling_ratio=2,
                                         backend="cuda")
            roi_align_backward(dout, cache)  # NumPy in, NumPy out: the copies are part of the call

        row["on device"] = best_time(on_device, repeat)
        row["layer API"] = best_time(layer_api, repeat)
        if tv is not None:
            torch, tv_roi_align, device = tv
            tf = torch.tensor(features, device=device, requires_grad=True)
            tr, td = torch.tensor(rois, dtype=torch.float32, device=device), torch.tensor(dout, device=device)

            def theirs():
                tf.grad = None
                tv_roi_align(tf, tr, size, spatial_scale=scale, sampling_ratio=2, aligned=False).backward(td)
                if device == "cuda":
                    torch.cuda.synchronize()

            row["torchvision"] = best_time(theirs, repeat)
            out, cache = roi_align_forward(features, rois, output_size=size, spatial_scale=scale, sampling_ratio=2,
                                           backend="cuda")
            dF, _ = roi_align_backward(dout, cache)
            theirs()
            row["max |diff| out"] = float(np.abs(out - tv_roi_align(tf, tr, size, spatial_scale=scale,
                                                                  sampling_ratio=2).detach().cpu().numpy()).max())
            row["max |diff| dF"] = float(np.abs(dF - tf.grad.cpu().numpy()).max())
        rows.append(row)
    return rows


def print_rows(rows):
    names = ["on device", "layer API", "torchvision"]
    print(f"{'case':54s}" + "".join(f"{n + ' ms':>16s}" for n in names) + "   on device / torchvision")
    for r in rows:
        line = f"{r['case']:54s}" + "".join(f"{r[n] * 1e3:16.3f}" if r.get(n) else f"{'-':>16s}" for n in names)
        if r.get("torchvision"):
            line += f"   {r['on device'] / r['torchvision']:6.2f}   (max |diff|: out {r['max |diff| out']:.1e}, " \
                    f"dF {r['max |diff| dF']:.1e})"
        print(line)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=20, help="timed repetitions per case; the best is kept")
    parser.add_argument("--smoke", action="store_true", help="tiny shapes (for the CUDA simulator): checks the script")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    ok, where = available_backends()["cuda"]
    simulator = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    if not ok or (simulator and not args.smoke):
        print(f"bench_gpu: needs a CUDA GPU: {where if not ok else 'the CUDA simulator is on (use --smoke)'}",
              file=sys.stderr)
        return 2
    tv = _torchvision(args.smoke)
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}; device: {where}; best of {args.repeat}")
    print("torchvision: " + (f"torch {tv[0].__version__} on {tv[2]}" + (f", CUDA {tv[0].version.cuda}" if tv[2] ==
                             "cuda" else " (no GPU for torch: the column checks the script only)") if tv else
                             "not available (needs torch with CUDA and torchvision)"))
    rows = bench_roi_align(SMOKE if args.smoke else FULL, args.repeat, tv)
    print_rows(rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
