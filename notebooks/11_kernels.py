# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 11 · Kernels: the NumPy reference, Numba on the CPU, CUDA on a GPU
#
# *Paper:* none — an engineering notebook. The maths of each kernel is on its layer's page: im2col in
# [convolution](../docs/layers/convolution.md), RoIAlign in [RoI extractors](../docs/layers/roi_extractors.md),
# NMS in [box logic](../docs/box_logic.md). · *Docs:* [performance](../docs/performance.md) (the design, the
# compile cache, measured speed) · *Code:* [`tinymask/ops/backend.py`](../tinymask/ops/backend.py),
# [`tinymask/ops/numpy.py`](../tinymask/ops/numpy.py),
# [`tinymask/ops/numba/`](../tinymask/ops/numba/__init__.py),
# [`tinymask/ops/cuda/`](../tinymask/ops/cuda/__init__.py) · *Tests:* `tests/test_backends.py`,
# `tests/test_cuda_sim.py`
#
# tinymask is written in NumPy, and the NumPy code is what you read. A few inner routines are loops NumPy runs
# slowly or in many small pieces — the convolution's im2col / col2im, RoIAlign's sampling and its scatter-add
# backward, RoIPool, mask pasting, NMS — and only those have compiled twins, one module per backend with the
# same functions and signatures, chosen by one switch. What you will see:
#
# 1. which backends can run on this machine, and why not when one cannot; the switch and its precedence;
# 2. a convolution, a RoIAlign and an NMS small enough to check by hand, on every backend, and how long the
#    first Numba call takes (it compiles);
# 3. the backends agreeing at real sizes on conv, RoIAlign and NMS, forward and backward (largest absolute
#    differences printed);
# 4. timings, best of $N$ runs.
#
# In smoke mode (`TINYMASK_SMOKE=1`) the sizes are small and the timings say little; in full mode they are
# moderate (the [performance](../docs/performance.md) page has timings at Mask R-CNN's real sizes).

# %%
import os
SMOKE = os.environ.get("TINYMASK_SMOKE") == "1"  # CI sets TINYMASK_SMOKE=1: smaller sizes, fewer iterations

import numpy as np

np.set_printoptions(precision=4, suppress=True, linewidth=120)

import time

from tinymask.ops.backend import available_backends, describe_backends, get_backend, use_backend
from tinymask.layers.conv import conv2d_backward, conv2d_forward
from tinymask.layers import roi_align_backward, roi_align_forward
from tinymask.box_logic.nms import nms

rng = np.random.default_rng(0)

# %% [markdown]
# ## 1. The backends, and the switch
#
# `available_backends()` returns `{name: (available, reason)}`; `describe_backends()` prints it (it is what
# `tinymask info` shows). NumPy is always there. Numba needs `pip install numba`; CUDA needs numba-cuda
# (`pip install "tinymask[cuda]"`) *and* a GPU with its driver — when it cannot run, the reason says which is
# missing, and everything below simply leaves it out.

# %%
print(describe_backends())
status = available_backends()
BACKENDS = [name for name, (ok, _) in status.items() if ok]
if "cuda" in BACKENDS and os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    BACKENDS.remove("cuda")  # the simulator runs each GPU thread as a Python thread: for tests at tiny sizes
    print("\ncuda: the CUDA simulator is on; left out here (far too slow for these sizes)")
for name, (ok, reason) in status.items():
    if not ok:
        print(f"\n{name} cannot run here: {reason}")
print("\ncompared below:", BACKENDS)

# %% [markdown]
# Which backend a call uses, from the most specific choice to the least: the `backend=` argument of a layer
# call; a `with use_backend(...)` block (or `set_backend`, for the rest of the program); the environment
# variable `TINYMASK_BACKEND`; otherwise `"numpy"`. A forward pass writes its backend's name into the cache
# (the last entry of a convolution's cache), and the backward pass runs on that one, since what a compiled
# forward keeps for its backward is not what the NumPy code keeps.

# %%
x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)  # (N, C, H, W): pixel (y, x) holds 4y + x
w = np.array([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=np.float32)  # (F, C, kH, kW)
print("selected now:", get_backend())
print("a plain call ran on:", conv2d_forward(x, w)[1][-1])
for name in BACKENDS:
    print(f"backend={name!r} ran on:", conv2d_forward(x, w, backend=name)[1][-1])
    with use_backend(name):
        print(f"inside use_backend({name!r}): selected {get_backend()!r}, a plain call ran on",
              conv2d_forward(x, w)[1][-1])
print("after the blocks:", get_backend())

# %% [markdown]
# ## 2. Three examples by hand, on every backend
#
# **Convolution.** Notebook 02's example: the 4×4 input holding $4y + x$ and the 2×2 filter
# $\begin{pmatrix}1 & 2\\ 3 & 4\end{pmatrix}$ give $10\,x[y, x] + 34$: the first row must read 34, 44, 54.
#
# **RoIAlign.** Bilinear interpolation reproduces a linear function exactly, so on the map $F[y, x] = 4y + x$
# the average of a bin's samples is $F$ at the bin's centre. One RoI $(0, 0, 2, 2)$ at scale 1 pooled to a
# single bin with 2×2 samples: the samples sit at $0.5$ and $1.5$ on each axis, the centre is $(1, 1)$ and the
# output is $4 + 1 = 5$. With `aligned=True` every coordinate moves by half a cell, $-0.5$, to the centre
# $(0.5, 0.5)$: $2 + 0.5 = 2.5$ ([RoI extractors](../docs/layers/roi_extractors.md)).
#
# **NMS.** Boxes A $(0, 0, 10, 10)$ scoring 0.9, B $(1, 0, 11, 10)$ scoring 0.8 and C $(20, 20, 30, 30)$
# scoring 0.7. A and B overlap in $9 \times 10 = 90$ pixels of a union of $100 + 100 - 90 = 110$: IoU
# $= 0.82$, so at threshold 0.5 B is suppressed by A, and C, touching neither, is kept: keep $= [0, 2]$.
#
# Each backend's first call of each kernel is timed: on Numba it includes compiling the kernel for these
# argument types, or loading it from the on-disk cache if an earlier process compiled it already.

# %%
F_map = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)  # F[y, x] = 4y + x
roi = np.array([[0, 0.0, 0.0, 2.0, 2.0]], dtype=np.float32)  # [batch index, x0, y0, x1, y1]
boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [20, 20, 30, 30]], dtype=np.float32)
scores = np.array([0.9, 0.8, 0.7], dtype=np.float32)


def first_call(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


for name in BACKENDS:
    conv, t_conv = first_call(lambda: conv2d_forward(x, w, backend=name)[0])
    pooled, t_roi = first_call(lambda: [roi_align_forward(F_map, roi, output_size=1, spatial_scale=1.0,
                                                          sampling_ratio=2, aligned=a, backend=name)[0].item()
                                        for a in (False, True)])
    keep, t_nms = first_call(lambda: nms(boxes, scores, 0.5, backend=name))
    print(f"{name:>6}: conv row 0 {conv[0, 0, 0]}, RoIAlign {pooled} (aligned False, True), NMS keep {keep}")
    print(f"        first calls: conv {t_conv:.3f} s, RoIAlign {t_roi:.3f} s, NMS {t_nms:.3f} s")

# %% [markdown]
# **Compile time and the cache.** Numba compiles a kernel the first time it is called with new argument types
# (a new float dtype, say): one to five seconds per kernel, up to about ten for the first RoIAlign, which
# compiles the shared geometry helpers too. The kernels are declared `@njit(cache=True)`, so the machine code
# is written to disk (next to the kernel's file under `tinymask/ops/numba/`, or under `NUMBA_CACHE_DIR` if set)
# and later processes load it in a fraction of a second. The cache is keyed on the file that defines the kernel
# alone: after editing a helper it calls from another file (RoIAlign's geometry in
# `tinymask/layers/roi_align.py`, say), empty the cache or touch the kernel files. CUDA kernels compile on their first launch too. So every timing below is
# taken after a warm-up call.
#
# ## 3. The same results at real sizes
#
# Three cases, forward and backward, in float32 (the training dtype), each run on every backend and compared
# with NumPy:
#
# - a 3×3 convolution with padding 1 (forward output; backward `dx`, `dw`, `db`);
# - RoIAlign to 7×7 bins, 2×2 samples per bin, on a stride-4 map (a P2 level) with random RoIs of 8 to 128
#   pixels (forward output; backward `dfeatures`, a scatter-add where RoIs overlap);
# - NMS at IoU 0.7 on random boxes (the list of kept indices must be *identical*).
#
# The float outputs differ only by rounding: the compiled kernels add the same numbers in another order (a
# float32 sum of $n$ terms can be off by up to about $n \cdot 6\cdot10^{-8}$ of its size), so we print the largest
# absolute difference and the same relative to the largest value. `tests/test_backends.py` makes the same
# comparisons in float64 to $10^{-12}$, over many more configurations.

# %%
if SMOKE:
    N, C, H, W, F_out = 2, 8, 16, 16, 8  # convolution
    C_roi, H_map, W_map, R = 16, 32, 32, 32  # RoIAlign: channels, map size, RoIs
    n_boxes = 300  # NMS
else:
    N, C, H, W, F_out = 2, 64, 64, 64, 64
    C_roi, H_map, W_map, R = 64, 100, 136, 256
    n_boxes = 2000

x = rng.standard_normal((N, C, H, W), dtype=np.float32)
w = (rng.standard_normal((F_out, C, 3, 3)) / np.sqrt(9 * C)).astype(np.float32)
b = rng.standard_normal(F_out).astype(np.float32)
dout_conv = rng.standard_normal((N, F_out, H, W), dtype=np.float32)

features = rng.standard_normal((2, C_roi, H_map, W_map), dtype=np.float32)  # stride 4: image 4·H_map × 4·W_map
size = rng.uniform(8, 128, (R, 2))  # RoI widths and heights in pixels
corner = rng.uniform(0, 1, (R, 2)) * (np.array([4 * W_map, 4 * H_map]) - size)
rois = np.column_stack([rng.integers(0, 2, R), corner, corner + size]).astype(np.float32)  # (R, 5)
dout_roi = rng.standard_normal((R, C_roi, 7, 7), dtype=np.float32)

objects = rng.uniform(0, 800, (n_boxes // 10, 2))  # like proposals: about 10 noisy boxes per object
owner = rng.integers(0, len(objects), n_boxes)
half = rng.uniform(10, 60, (len(objects), 2))[owner] * rng.uniform(0.8, 1.2, (n_boxes, 2))
centres = objects[owner] + rng.normal(0, 5, (n_boxes, 2))
nms_boxes = np.concatenate([centres - half, centres + half], axis=1).astype(np.float32)  # (n, 4)
nms_scores = rng.random(n_boxes, dtype=np.float32)


def run_conv(name):
    out, cache = conv2d_forward(x, w, b, padding=1, backend=name)
    dx, dw, db = conv2d_backward(dout_conv, cache)
    return {"out": out, "dx": dx, "dw": dw, "db": db}


def run_roi_align(name):
    out, cache = roi_align_forward(features, rois, output_size=7, spatial_scale=0.25, sampling_ratio=2,
                                   backend=name)
    dfeatures, _ = roi_align_backward(dout_roi, cache)
    return {"out": out, "dfeatures": dfeatures}


def run_nms(name):
    return {"keep": nms(nms_boxes, nms_scores, 0.7, backend=name)}


CASES = {f"conv 3×3, {C}→{F_out} ch, {N}×{H}×{W}": run_conv,
         f"RoIAlign 7×7, {R} RoIs × {C_roi} ch, map {H_map}×{W_map}": run_roi_align,
         f"NMS, {n_boxes} boxes, IoU 0.7": run_nms}
results = {case: {name: fn(name) for name in BACKENDS} for case, fn in CASES.items()}

for case, by_backend in results.items():
    print(case)
    reference = by_backend["numpy"]
    for name in BACKENDS[1:]:
        for key, ref in reference.items():
            got = by_backend[name][key]
            if ref.dtype.kind in "iu":  # indices: must be identical
                print(f"  {name:>6} {key:<10} identical: {np.array_equal(got, ref)} ({len(ref)} kept)")
            else:
                diff = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
                scale = float(np.max(np.abs(ref))) if ref.size else 1.0
                print(f"  {name:>6} {key:<10} max |diff| {diff:.2e}   relative to max |value| "
                      f"{diff / scale:.2e}")
    if len(BACKENDS) == 1:
        print("  (only NumPy can run here: nothing to compare)")

# %% [markdown]
# ## 4. Timings
#
# Each case again, timed with `time.perf_counter` as the best of $N$ runs (the minimum is the least disturbed
# by whatever else the machine is doing; every kernel was warmed up in section 3). Read the ratios rather than
# the absolute times, and only in full mode: at smoke sizes the fixed cost of each call (validation,
# allocation, starting threads) dominates.

# %%
REPEAT = 2 if SMOKE else 5


def best_of(fn, repeat=REPEAT):
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


timings = {case: {name: best_of(lambda: fn(name)) for name in BACKENDS} for case, fn in CASES.items()}
print(f"{'case':<46}" + "".join(f"{name + ' ms':>12}" for name in BACKENDS)
      + "".join(f"{name + ' vs numpy':>18}" for name in BACKENDS[1:]))
for case, t in timings.items():
    print(f"{case:<46}" + "".join(f"{1e3 * t[name]:12.1f}" for name in BACKENDS)
          + "".join(f"{t['numpy'] / t[name]:17.1f}×" for name in BACKENDS[1:]))

# %% [markdown]
# What to expect (the [performance](../docs/performance.md) page has the measurements at Mask R-CNN's real
# sizes, and why):
#
# - **Convolution** is a matrix product with a gather on either side, and the matrix product is the same
#   BLAS call on both CPU backends and takes most of the time, so Numba changes little; it helps where col2im's
#   scatter dominates (the mask head's deconvolution).
# - **RoIAlign** gains several times: the kernels run the separable formula channels last, one block of 32
#   channels at a time copied into a per-thread scratch buffer, so the SIMD multiply-adds run over contiguous
#   channels; copying the blocks (the map in, the gradient out) is still a large share of the time.
# - **NMS** gains the most: the greedy loop is sequential, exactly what NumPy does worst and a compiled loop
#   does well.
# - **CUDA** copies every array to the GPU and back on each call, so at these sizes the copies can cost more
#   than the kernels; its atomic scatter-adds make the RoIAlign backward's rounding order vary run to run.
#
# On a small or busy machine, Numba's OpenMP threads and the BLAS threads compete for the cores: setting
# `OMP_WAIT_POLICY=passive` in the environment before starting Jupyter often helps (performance page, §5).
# `benchmarks/bench_kernels.py` times every kernel at the real sizes, with PyTorch alongside when it is
# installed.
