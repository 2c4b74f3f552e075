"""RoIAlign: a fixed-size feature grid for every region, with no rounding anywhere.

Paper: He et al., *Mask R-CNN*, ICCV 2017, §3 "RoIAlign" and Table 2(c)/(d).

**The misalignment problem.** Fast R-CNN's RoIPool (`roi_pool.py`) rounds twice: the box, scaled onto a stride-16
feature map, is rounded to whole feature cells (`[x / 16]`), and each output bin is rounded again, outwards, to whole
cells. The first rounding moves a box edge by up to half a cell (8 image pixels at stride 16), the second a bin edge
by up to a cell. Classification hardly notices, but a 28×28 mask predicted from shifted features lands shifted on the
image: the paper measures the loss in mask AP (Table 2c at stride 16; Table 2d at stride 32, where RoIAlign gains
7.3 mask AP). RoIAlign removes every rounding: the box is scaled with `x * spatial_scale` and kept fractional, each of
the `oh × ow` bins is split into a regular `sampling_ratio × sampling_ratio` grid of points, each point's feature
value is read by bilinear interpolation from its four neighbouring cells, and the points of a bin are averaged
(`mode="avg"`, the paper's and torchvision's choice) or maxed (`mode="max"`, the other column of Table 2c).

**Coordinates and the `aligned` flag.** Boxes are `(x0, y0, x1, y1)` in continuous image pixels, where pixel `j`
covers `[j, j+1)` and its centre is at `j + 0.5` (docs/conventions.md). Bilinear interpolation, on the other hand,
reads feature cell `j` at coordinate exactly `j`. With `aligned=False` (torchvision's default, the original Detectron
code) the scaled box is fed to the interpolation unchanged, so everything is read half a cell too far right and
down. `aligned=True` (detectron2's default) subtracts 0.5 after scaling, which turns continuous coordinates into
interpolation coordinates: a box covering pixels 1–2 of a 5×5 map (`[1, 1, 3, 3]`) then reads exactly those pixels.
The legacy mode also forces every RoI to be at least 1×1 feature cell; `aligned=True` does not, so a zero-area box
gives zeros with adaptive sampling (no sample points) and the value at its corner with a fixed `sampling_ratio`.

**torchvision's edge rules**, kept exactly (our tests compare with torchvision 0.28 to 1e-10):

- bin `p` of a RoI starting at `start` with bin size `b` has samples at `start + p·b + (i + 0.5)·b / grid`;
- `sampling_ratio > 0`: `grid = sampling_ratio`; `<= 0`: adaptive, `grid = ceil(roi_size / output_size)` per RoI
  and per axis (about one sample per feature cell);
- every sample is clamped into the map: coordinates below 0 read row/column 0, coordinates beyond `H - 1` read row
  `H - 1`; and with `outside="zero"` (the default: torchvision's C++/CUDA kernels, Detectron, detectron2) a sample
  with `y < -1` or `y > H` (same for `x`) reads 0 instead, so the map is extended by its edge for one cell and by
  zeros beyond. torchvision's pure-Python `_roi_align` (what it runs for deterministic CUDA, and the code path that
  produced our reference file tests/data/ops.npz) has no such test: `outside="edge"` reproduces it. The two agree
  whenever every sample lies within one cell of the map, as for every box inside the image;
- the average divides by `grid_h · grid_w` (at least 1), including samples that read 0.

torchvision has no `mode="max"`; ours takes the max over the same samples, where a sample that reads 0 competes with
the value 0 (as in mmcv's RoIAlign), and a bin without samples gives 0. Ties go to the first sample in row-major order.

**The paper-shaped reference.** `tinymask/layers/roi_align_naive.py` does the same bin by bin and sample by sample,
with the four corner weights of Fig. 3 written out (`roi_align_forward_naive`, `roi_align_backward_naive`); read it
first. The tests check this file against it to 1e-12, forward and backward.

**Bilinear interpolation is separable**, and that is how the NumPy code is organised. Reading the map `F` (H, W) at
`(y, x)` is `a_y(y)ᵀ F a_x(x)`, where the row-weight vector `a_y` has at most two non-zeros (`1 - ly` at `floor(y)`,
`ly` at `floor(y) + 1`), and likewise `a_x`; the four corner weights `(1-ly)(1-lx), …` are their products, and
torchvision's "reads 0 outside" test is also a product of a row test and a column test. So for one RoI:

    S_y = [a_y(y_s)] for every row sample s     (oh·gh, H)      S_x likewise (ow·gw, W)
    V   = S_y F S_xᵀ                            (oh·gh, ow·gw)  every sample value at once
    avg:  out = A_y F A_xᵀ, with A_y = the mean of S_y's rows within each bin   (oh, H)
    max:  out[p, q] = max of V over bin (p, q)'s grid_h × grid_w samples

and the backward is the transpose: `dF = A_yᵀ dout A_x` (avg), `dF = S_yᵀ dV S_x` with `dV` non-zero only at each
bin's winning sample (max). The matrices are cut to the rows and columns the RoI touches, so a small RoI on a large
map costs little.

**dtypes.** `features` must be float32 or float64; `rois` may be any real dtype (float64 RoIs with float32 features
are fine and common). The geometry (box scaling, sample positions, weights) is computed in float64 from the RoIs, and
the interpolation matrices are then cast to the features' dtype, so the output and gradient have the features' dtype.

**What the cache keeps.** Per RoI: its image index, the top-left corner of the window it touches, and the two small
interpolation matrices (A_y, A_x for avg; S_y, S_x and each bin's arg-max sample for max). It does not keep the
features: the avg backward does not need them, and the max backward needs only which sample won. Recomputing the
matrices would be cheap too; keeping them means the backward is two matrix products per RoI and nothing else.

**Backends.** `roi_align_forward_numpy` / `roi_align_backward_numpy` at the end of this file are the code described
above; the public pair validates its inputs and hands them to the selected backend (tinymask/ops/backend.py). The compiled
kernels use the same scalar helpers: Numba's tuned kernel computes the same `A_y F A_xᵀ` with the feature map
channels last, next to a simple kernel that samples point by point (tinymask/ops/numba/roi_align.py); CUDA samples
point by point (tinymask/ops/cuda/roi_align.py); both keep only each bin's winning sample for the max backward and
recompute the geometry (docs/performance.md).

The scalar maths (`roi_bins_1d`, `sample_coords`, `linear_interp_1d`) are plain functions, written once: the NumPy
code calls them on arrays, and a Numba kernel can call them on scalars (`numba.njit(linear_interp_1d)` compiles
unchanged; tests/test_roi_align.py checks it).
"""
from __future__ import annotations

import math

import numpy as np

from tinymask._validate import as_pair, check_dout, check_float_array, finite_checked
from tinymask.ops import get_ops

MODES = ("avg", "max")
OUTSIDE = ("zero", "edge")


# --------------------------------------------------------------------------------------------------------------------
# The maths, written once (scalars or arrays)
# --------------------------------------------------------------------------------------------------------------------

def roi_bins_1d(lo, hi, spatial_scale, n_bins, sampling_ratio, aligned):
    """Bin geometry of one RoI along one axis: `(start, bin_size, grid)` in feature-map interpolation coordinates.

    `lo, hi` are the box edges in image coordinates (x0, x1 or y0, y1), `n_bins` the output size along this axis.
    `grid` is the number of sample points per bin along this axis (0 is possible for an empty aligned RoI).
    Scalars only: called once per RoI and axis.
    """
    offset = 0.5 if aligned else 0.0  # aligned: continuous coordinates -> interpolation coordinates
    start = lo * spatial_scale - offset
    end = hi * spatial_scale - offset
    length = end - start
    if not aligned:
        length = max(length, 1.0)  # legacy rule: every RoI is at least one feature cell long
    bin_size = length / n_bins
    if sampling_ratio > 0:
        grid = sampling_ratio
    else:
        grid = int(math.ceil(length / n_bins))  # adaptive: about one sample per feature cell
    return start, bin_size, grid


def sample_coords(start, bin_size, grid, p, i):
    """Coordinate of sample `i` (of `grid`) inside bin `p`: the centre of the i-th of `grid` equal sub-bins."""
    return start + p * bin_size + (i + 0.5) * bin_size / grid  # y = start + p·b + (i + ½)·b / grid


def linear_interp_1d(t, size, zero_outside=True):
    """1-D linear interpolation weights at coordinate(s) `t` on an axis of `size` cells, with torchvision's edges.

    Returns `(low, high, w_low, w_high)`: the two cell indices (as integer-valued floats; cast them with
    `.astype(np.intp)` or `int()`) and their weights. `t` is clamped into `[0, size - 1]`, so near an edge both
    indices may be the same cell. With `zero_outside` a point more than one cell outside (`t < -1` or `t > size`)
    gets weights 0 (torchvision's C++/CUDA kernels); without it, it reads the clamped edge (torchvision's pure-Python
    `_roi_align`). Works element-wise on arrays and on scalars (NumPy or a Numba kernel).
    """
    inside = (t >= -1.0) & (t <= size)  # more than one cell outside the map?
    t = np.minimum(np.maximum(t, 0.0), size - 1.0)  # clamp into the map
    low = t // 1.0  # floor(t), written as // because numba-cuda has no np.floor (t >= 0 here, so this is exact)
    frac = t - low  # ly = y - floor(y)
    high = np.minimum(low + 1.0, size - 1.0)
    w_low = 1.0 - frac  # hy = 1 - ly
    w_high = frac
    if zero_outside:
        w_low = w_low * inside  # torchvision's kernels: such a sample reads 0
        w_high = w_high * inside
    return low, high, w_low, w_high


def interp_matrix(start, bin_size, grid, n_bins, size, dtype, zero_outside=True):
    """The row-sample matrix S of one RoI along one axis, cut to the cells it touches.

    Returns `(S, first)`: `S` (n_bins·grid, width) holds, for every sample (bin-major: bin p's samples are rows
    p·grid … p·grid + grid − 1), its interpolation weights over cells `first … first + width − 1`.
    """
    p = np.repeat(np.arange(n_bins), grid)  # (n_bins·grid,) bin of each sample
    i = np.tile(np.arange(grid), n_bins)  # (n_bins·grid,) index of the sample inside its bin
    t = sample_coords(start, bin_size, grid, p, i)  # (n_bins·grid,)
    low, high, w_low, w_high = linear_interp_1d(t, size, zero_outside)
    if t.size == 0:  # no samples at all (empty aligned RoI with adaptive sampling)
        return np.zeros((0, 0), dtype=dtype), 0
    low, high = low.astype(np.intp), high.astype(np.intp)
    first = int(low.min())
    S = np.zeros((t.size, int(high.max()) - first + 1), dtype=dtype)  # (n_bins·grid, width)
    rows = np.arange(t.size)
    np.add.at(S, (rows, low - first), w_low)  # add, not assign: low and high coincide at the clamped edge
    np.add.at(S, (rows, high - first), w_high)
    return S, first


# --------------------------------------------------------------------------------------------------------------------
# Input checks shared by RoIPool, RoIWarp and RoIAlign
# --------------------------------------------------------------------------------------------------------------------

def check_roi_inputs(features, rois, output_size, spatial_scale):
    """Validate the common arguments; return `(rois as float64 (K, 5), batch indices (K,) intp, (oh, ow))`.

    Refuses: non-float features, rois not (K, 5) or not real numbers, NaN/inf, a batch index that is not an integer
    value or not in [0, N), and inverted boxes (x1 < x0 or y1 < y0). Inverted boxes raise for every mode: torchvision
    would silently turn them into a 1×1 RoI (aligned=False, which forces a minimum size) or into an empty or mirrored
    one (aligned=True, which does not), and neither is what a caller meant. Zero-area boxes are allowed.
    """
    check_float_array(features, "features", 4, "(N, C, H, W)")
    N, _, H, W = features.shape
    if H < 1 or W < 1:
        raise ValueError(f"features must have a non-empty spatial size, got shape {features.shape}")
    oh, ow = as_pair(output_size, "output_size")
    if oh < 1 or ow < 1:
        raise ValueError(f"output_size must be positive, got {(oh, ow)}")
    if not isinstance(spatial_scale, (int, float, np.integer, np.floating)) or not (
        math.isfinite(spatial_scale) and spatial_scale > 0
    ):
        raise ValueError(f"spatial_scale must be a positive finite number, got {spatial_scale!r}")
    if not isinstance(rois, np.ndarray):
        raise TypeError(f"rois must be a NumPy array of shape (K, 5), got {type(rois).__name__}")
    if rois.ndim != 2 or rois.shape[1] != 5:
        raise ValueError(f"rois must have shape (K, 5), rows [batch_index, x0, y0, x1, y1], got shape {rois.shape}")
    if not (np.issubdtype(rois.dtype, np.floating) or np.issubdtype(rois.dtype, np.integer)):
        raise TypeError(f"rois must hold real numbers (float or int), got dtype {rois.dtype}")
    rois = rois.astype(np.float64)  # (K, 5) the geometry is computed in float64 whatever the features' dtype
    if not np.all(np.isfinite(rois)):
        k, j = np.argwhere(~np.isfinite(rois))[0]
        raise ValueError(f"rois contains NaN or infinity (first at row {k}, column {j}): {rois[k].tolist()}")
    b = rois[:, 0]  # (K,)
    not_int = np.flatnonzero(b != np.floor(b))
    if not_int.size:
        k = not_int[0]
        raise ValueError(f"rois[:, 0] is the batch index and must hold integer values, got {b[k]} in row {k}")
    out_of_range = np.flatnonzero((b < 0) | (b >= N))
    if out_of_range.size:
        k = out_of_range[0]
        raise ValueError(f"batch index {int(b[k])} in rois row {k} is out of range [0, {N}) for features with N={N}")
    inverted = np.flatnonzero((rois[:, 3] < rois[:, 1]) | (rois[:, 4] < rois[:, 2]))
    if inverted.size:
        k = inverted[0]
        raise ValueError(
            f"rois row {k} is an inverted box (x1 < x0 or y1 < y0): {rois[k, 1:].tolist()}; boxes must have "
            "x0 <= x1 and y0 <= y1 (torchvision would silently make it 1x1 with aligned=False, and with "
            "aligned=True, which forces no minimum size, an empty or mirrored RoI)"
        )
    return rois, b.astype(np.intp), (oh, ow)


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


# --------------------------------------------------------------------------------------------------------------------
# Forward and backward
# --------------------------------------------------------------------------------------------------------------------

@finite_checked("out", "cache")
def roi_align_forward(
    features, rois, *, output_size, spatial_scale, sampling_ratio=-1, aligned=False, mode="avg", outside="zero",
    backend=None,
):
    """RoIAlign: features (N, C, H, W), rois (K, 5) `[batch_index, x0, y0, x1, y1]` -> out (K, C, oh, ow), cache.

    output_size: int or (oh, ow). spatial_scale: feature cells per image pixel (1 / stride). sampling_ratio: samples
    per bin along each axis, or `<= 0` for adaptive `ceil(roi_size / output_size)`. aligned: subtract half a cell
    after scaling (see the module docstring). mode: "avg" (paper, torchvision) or "max". outside: what a sample more
    than one cell outside the map reads, "zero" (torchvision's kernels) or "edge" (torchvision's pure-Python path).
    backend: "numpy" (the code below), "numba" or "cuda" (default: the selected one, tinymask/ops/backend.py).
    """
    rois, batch, (oh, ow) = check_roi_inputs(features, rois, output_size, spatial_scale)
    _check_mode(mode)
    if not isinstance(sampling_ratio, (int, np.integer)):
        raise TypeError(f"sampling_ratio must be an int (<= 0 for adaptive), got {sampling_ratio!r}")
    if outside not in OUTSIDE:
        raise ValueError(f"outside must be one of {OUTSIDE}, got {outside!r}")
    geometry = (rois, batch, (oh, ow), spatial_scale, int(sampling_ratio), bool(aligned), mode, outside == "zero")
    ops = get_ops(backend)  # roi_align_forward_numpy below, or a compiled kernel (tinymask/ops/)
    out, saved = ops.roi_align_forward(features, *geometry)  # (K, C, oh, ow), what this backend's backward needs
    return out, (features.shape, features.dtype, ops.NAME, geometry, saved)


def roi_output_shape(cache) -> tuple[int, int, int, int]:
    """(K, C, oh, ow), the shape of the output whose `cache` this is (RoIAlign's or RoIWarp's): what dout must be."""
    shape, _, _, (rois, _, (oh, ow), *_), _ = cache
    return len(rois), shape[1], oh, ow


@finite_checked("dfeatures", "drois")
def roi_align_backward(dout, cache):
    """dout (K, C, oh, ow) -> (dfeatures (N, C, H, W), None): the RoIs are constants and get no gradient."""
    check_dout(dout, roi_output_shape(cache), "roi_align_backward")
    shape, dtype, backend, geometry, saved = cache
    dout = np.asarray(dout, dtype=dtype)  # the gradient has the features' dtype
    return get_ops(backend).roi_align_backward(dout, saved, shape, *geometry), None


# --------------------------------------------------------------------------------------------------------------------
# The NumPy kernels (the "numpy" backend, tinymask/ops/numpy.py): the reference the compiled kernels must match
# --------------------------------------------------------------------------------------------------------------------

def roi_align_forward_numpy(features, rois, batch, output_size, spatial_scale, sampling_ratio, aligned, mode,
                            zero_outside):
    """RoIAlign on validated inputs (rois float64 (K, 5), batch (K,) intp): out (K, C, oh, ow) and, per RoI, what
    the backward needs: `(image index, window corner r0, c0, A_y, A_x, None)` (avg) or `(.., S_y, S_x, arg)` (max)."""
    N, C, H, W = features.shape
    K = rois.shape[0]
    oh, ow = output_size
    out = np.zeros((K, C, oh, ow), dtype=features.dtype)  # (K, C, oh, ow)
    per_roi = []
    for k in range(K):
        _, x0, y0, x1, y1 = rois[k]
        start_y, bin_h, gh = roi_bins_1d(y0, y1, spatial_scale, oh, sampling_ratio, aligned)
        start_x, bin_w, gw = roi_bins_1d(x0, x1, spatial_scale, ow, sampling_ratio, aligned)
        Sy, r0 = interp_matrix(start_y, bin_h, gh, oh, H, features.dtype, zero_outside)  # (oh·gh, h)
        Sx, c0 = interp_matrix(start_x, bin_w, gw, ow, W, features.dtype, zero_outside)  # (ow·gw, w)
        window = features[batch[k], :, r0:r0 + Sy.shape[1], c0:c0 + Sx.shape[1]]  # (C, h, w) the cells it touches
        if mode == "avg":
            Ay = Sy.reshape(oh, gh, Sy.shape[1]).sum(axis=1) / max(gh, 1)  # (oh, h) mean of each bin's sample rows
            Ax = Sx.reshape(ow, gw, Sx.shape[1]).sum(axis=1) / max(gw, 1)  # (ow, w)
            out[k] = Ay @ window @ Ax.T  # out = A_y F A_xᵀ: the average of every bin's gh·gw bilinear samples
            per_roi.append((batch[k], r0, c0, Ay, Ax, None))
        elif gh * gw == 0:  # max over no samples: an empty bin is 0 and passes no gradient
            per_roi.append((batch[k], r0, c0, Sy, Sx, None))
        else:
            V = Sy @ window @ Sx.T  # (C, oh·gh, ow·gw) V = S_y F S_xᵀ: every sample's value
            V = V.reshape(C, oh, gh, ow, gw).transpose(0, 1, 3, 2, 4).reshape(C, oh, ow, gh * gw)
            arg = V.argmax(axis=-1)  # (C, oh, ow) the winning sample of each bin (the first one on ties)
            out[k] = np.take_along_axis(V, arg[..., None], axis=-1)[..., 0]
            per_roi.append((batch[k], r0, c0, Sy, Sx, arg))
    return out, per_roi


def roi_align_backward_numpy(dout, saved, features_shape, rois, batch, output_size, spatial_scale, sampling_ratio,
                             aligned, mode, zero_outside):
    """dout (K, C, oh, ow) -> dfeatures (N, C, H, W), from `saved`, the forward's per-RoI matrices (the geometry
    arguments are the kernels' signature; this version does not need them).

    Each RoI's window gradient is the transpose of its forward, `A_yᵀ dout A_x` (avg) or `S_yᵀ dV S_x` with `dV` the
    upstream gradient placed at each bin's winning sample (max). Windows of different RoIs may overlap; they are
    added one RoI after another, so nothing is lost to a race.
    """
    dtype = dout.dtype
    dfeatures = np.zeros(features_shape, dtype=dtype)  # (N, C, H, W)
    C = features_shape[1]
    oh, ow = output_size
    for k, (b, r0, c0, My, Mx, arg) in enumerate(saved):  # per RoI
        if mode == "avg":
            dwindow = My.T @ dout[k] @ Mx  # (C, h, w) dF = A_yᵀ dout A_x
        elif arg is None:
            continue  # no samples, no gradient
        else:
            gh, gw = My.shape[0] // oh, Mx.shape[0] // ow
            dV = np.zeros((C, oh, ow, gh * gw), dtype=dtype)  # (C, oh, ow, gh·gw)
            np.put_along_axis(dV, arg[..., None], dout[k][..., None], axis=-1)  # only the winner gets dout
            dV = dV.reshape(C, oh, ow, gh, gw).transpose(0, 1, 3, 2, 4).reshape(C, oh * gh, ow * gw)
            dwindow = My.T @ dV @ Mx  # (C, h, w) dF = S_yᵀ dV S_x
        dfeatures[b, :, r0:r0 + My.shape[1], c0:c0 + Mx.shape[1]] += dwindow
    return dfeatures
