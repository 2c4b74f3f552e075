"""Time the backends of tinymask's hot loops against each other and against PyTorch CPU, in one run.

    python benchmarks/bench_kernels.py               # best of 5 for each case
    python benchmarks/bench_kernels.py --repeat 3 --json out.json
    OMP_WAIT_POLICY=passive python benchmarks/bench_kernels.py   # Numba's OpenMP threads sleep instead of spinning

On a machine with few cores, Numba's OpenMP threads spin after each parallel loop and take the cores that OpenBLAS's
threads need for the next matrix product (and the other way round); OMP_WAIT_POLICY=passive (or
NUMBA_THREADING_LAYER=workqueue) avoids it. The header prints both settings.

Cases (float32, forward + backward unless said otherwise; every time is the best of --repeat runs after a warm-up
run, so Numba's compilation is not counted; the tinymask backends of a case run in interleaved rounds, numpy, numba,
numpy, ..., so that a slow spell of a shared machine falls on both; PyTorch runs in a block of its own, because
interleaved with them its thread pool goes cold between calls and it measured up to 2× slower; the CUDA backend is
not timed here):

- RoIAlign, 512 RoIs × 256 channels on an FPN P2 map (1, 256, 200, 272): an 800×1088 image at stride 4, boxes of
  16-112 pixels (the sizes FPN Eq. 1 sends to P2), sampling_ratio 2, 7×7 (box head) and 14×14 (mask head):
  numba vs numpy, and vs torchvision.ops.roi_align when torchvision is installed.
- Convolutions on ResNet-50 shapes and the mask head's 2×2/2 deconvolution: numpy and numba backends (im2col / col2im
  around the same BLAS GEMM) vs torch.nn.functional.
- Inference: NMS on 2000 RPN boxes at IoU 0.7, pasting 100 28×28 masks into an 800×1088 image.

The printed ratio is (time of the slower) / (time of the faster), with the winner named; "x faster" for the backend
comparisons, and tinymask's best / torch for the PyTorch comparisons (below 1: tinymask is faster).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

import numpy as np

from tinymask.ops.backend import available_backends
from tinymask.layers.conv import conv2d_backward, conv2d_forward
from tinymask.layers.conv_transpose import conv_transpose2d_backward, conv_transpose2d_forward
from tinymask.layers import roi_align_backward, roi_align_forward
from tinymask.box_logic.mask_paste import paste_masks_in_image
from tinymask.box_logic.nms import nms
from bench_conv import best_time, best_times, torch_conv_fn  # best of `repeat` runs (interleaved) after a warm-up

CPU_BACKENDS = [name for name in ("numpy", "numba") if available_backends()[name][0]]

CONV_CASES = [  # (name, kind, x shape, w shape, settings): ResNet-50 at an 800-pixel input, and the mask head
    ("3x3 conv 256->256 @ 50x50", "conv", (1, 256, 50, 50), (256, 256, 3, 3), dict(stride=1, padding=1)),
    ("1x1 conv 256->1024 @ 50x50", "conv", (1, 256, 50, 50), (1024, 256, 1, 1), dict(stride=1, padding=0)),
    ("3x3/2 conv 128->128 @ 200x200", "conv", (1, 128, 200, 200), (128, 128, 3, 3), dict(stride=2, padding=1)),
    ("7x7/2 stem conv 3->64 @ 800x800", "conv", (1, 3, 800, 800), (64, 3, 7, 7), dict(stride=2, padding=3)),
    ("2x2/2 deconv 256->256 @ 14x14, 100 RoIs", "deconv", (100, 256, 14, 14), (256, 256, 2, 2), dict(stride=2)),
]


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{model}, {os.cpu_count()} logical cores"


def threads() -> str:
    parts = []
    if "numba" in CPU_BACKENDS:
        import numba
        parts.append(f"numba {numba.__version__} {numba.get_num_threads()} threads ({numba.threading_layer()})")
    try:
        import torch
        parts.append(f"torch {torch.__version__} {torch.get_num_threads()} threads")
    except ImportError:
        parts.append("torch not installed")
    blas = os.environ.get("OPENBLAS_NUM_THREADS") or os.environ.get("OMP_NUM_THREADS") or "(unset: all cores)"
    parts.append(f"OPENBLAS_NUM_THREADS={blas}; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}")
    return "; ".join(parts)


# ---------------------------------------------------------------------------------------------------------------------
# The cases
# ---------------------------------------------------------------------------------------------------------------------

def p2_rois(rng, K=512, image_hw=(800, 1088)):
    """K boxes of 16-112 pixels (FPN level 2) inside an 800×1088 image, as (K, 5) rows [0, x0, y0, x1, y1]."""
    wh = rng.uniform(16, 112, (K, 2))
    xy = rng.uniform(0, 1, (K, 2)) * (np.array(image_hw[::-1]) - wh)
    return np.concatenate([np.zeros((K, 1)), xy, xy + wh], axis=1)


def bench_roi_align(rng, repeat):
    features = rng.standard_normal((1, 256, 200, 272), dtype=np.float32)  # P2 of an 800×1088 image
    rois = p2_rois(rng)
    rows = []
    for size in (7, 14):
        kw = dict(output_size=size, spatial_scale=0.25, sampling_ratio=2, aligned=False)
        dout = rng.standard_normal((len(rois), 256, size, size), dtype=np.float32)
        row = {"case": f"RoIAlign fwd+bwd 512 RoIs x 256 ch, {size}x{size}, P2 200x272"}
        fns = {}
        for name in CPU_BACKENDS:
            def run(name=name):
                _, cache = roi_align_forward(features, rois, backend=name, **kw)
                roi_align_backward(dout, cache)
            fns[name] = run
        row.update(best_times(fns, repeat))
        torch_fn = _torchvision_roi_align(features, rois, dout, size)
        row["torch"] = None if torch_fn is None else best_time(torch_fn, repeat)
        rows.append(row)
    return rows


def _torchvision_roi_align(features, rois, dout, size):
    """torchvision's RoIAlign forward + backward on the same inputs, as a function to time; None without it."""
    try:
        import torch
        from torchvision.ops import roi_align
    except ImportError:
        return None
    tf, tr, td = torch.tensor(features, requires_grad=True), torch.tensor(rois, dtype=torch.float32), torch.tensor(dout)

    def run():
        tf.grad = None
        roi_align(tf, tr, size, spatial_scale=0.25, sampling_ratio=2, aligned=False).backward(td)

    return run


def bench_conv(rng, repeat):
    rows = []
    for name, kind, x_shape, w_shape, kw in CONV_CASES:
        x = rng.standard_normal(x_shape, dtype=np.float32)
        w = (rng.standard_normal(w_shape, dtype=np.float32) * 0.05).astype(np.float32)
        b = np.zeros(w_shape[1] if kind == "deconv" else w_shape[0], np.float32)
        fwd, bwd = ((conv2d_forward, conv2d_backward) if kind == "conv"
                    else (conv_transpose2d_forward, conv_transpose2d_backward))
        out, _ = fwd(x, w, b, **kw)
        dout = rng.standard_normal(out.shape, dtype=np.float32)
        row = {"case": f"{name} fwd+bwd"}
        fns = {}
        for backend in CPU_BACKENDS:
            def run(backend=backend):
                _, cache = fwd(x, w, b, backend=backend, **kw)
                bwd(dout, cache)
            fns[backend] = run
        row.update(best_times(fns, repeat))
        torch_fn = torch_conv_fn(kind, x, w, b, dout, kw)  # None without PyTorch
        row["torch"] = None if torch_fn is None else best_time(torch_fn, repeat)
        rows.append(row)
    return rows


def bench_inference(rng, repeat):
    xy = rng.uniform(0, 1000, (2000, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(8, 200, (2000, 2))], axis=1).astype(np.float32)
    scores = rng.random(2000, dtype=np.float32)
    masks = rng.random((100, 28, 28), dtype=np.float32)
    det = boxes[:100] * np.float32(0.8)
    rows = [{"case": "NMS 2000 boxes, IoU 0.7"}, {"case": "paste 100 masks 28x28 into 800x1088"}]
    nms_fns = {name: (lambda name=name: nms(boxes, scores, 0.7, backend=name)) for name in CPU_BACKENDS}
    paste_fns = {name: (lambda name=name: paste_masks_in_image(masks, det, (800, 1088), backend=name))
                 for name in CPU_BACKENDS}
    try:
        import torch
        import torchvision
        tb, ts = torch.tensor(boxes), torch.tensor(scores)
        rows[0]["torch"] = best_time(lambda: torchvision.ops.nms(tb, ts, 0.7), repeat)
    except ImportError:
        pass
    rows[0].update(best_times(nms_fns, repeat))
    rows[1].update(best_times(paste_fns, repeat))
    return rows


# ---------------------------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------------------------

def print_rows(rows):
    names = CPU_BACKENDS + ["torch"]
    print(f"{'case':58s}" + "".join(f"{n + ' ms':>12s}" for n in names) + "   numba vs numpy   best tinymask / torch")
    for r in rows:
        line = f"{r['case']:58s}" + "".join(f"{r[n] * 1e3:12.1f}" if r.get(n) else f"{'-':>12s}" for n in names)
        if r.get("numba") and r.get("numpy"):
            line += f"   {r['numpy'] / r['numba']:6.1f}x faster" if r["numba"] < r["numpy"] \
                else f"   {r['numba'] / r['numpy']:6.1f}x slower"
        if r.get("torch"):
            best = min(r[n] for n in CPU_BACKENDS)
            line += f"   {best / r['torch']:6.2f}"
        print(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timed repetitions per case; the best is kept")
    parser.add_argument("--only", choices=["roi_align", "conv", "inference"], help="run one group of cases")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    print(f"date: {time.strftime('%Y-%m-%d %H:%M')}; machine: {machine()}; load average: {os.getloadavg()[0]:.2f}")
    print(f"threads: {threads()}; OPENBLAS_CORETYPE={os.environ.get('OPENBLAS_CORETYPE', '(unset)')}; "
          f"numpy {np.__version__}; best of {args.repeat}, interleaved")
    rng = np.random.default_rng(0)
    rows = []
    groups = {"roi_align": bench_roi_align, "conv": bench_conv, "inference": bench_inference}
    for group, bench in groups.items():
        if args.only in (None, group):
            rows += bench(rng, args.repeat)
    print_rows(rows)
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
