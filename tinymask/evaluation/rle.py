"""COCO's mask format: run-length encoding (RLE), polygons, and the IoUs that COCO evaluation uses.

*Reference:* Lin et al., *Microsoft COCO: Common Objects in Context*, ECCV 2014, and the COCO API (`pycocotools`,
whose C core is `maskApi.c`). Mask R-CNN reports its mask AP with this format (He et al., ICCV 2017, Sec. 4).
Everything here is written from the format's definition; `tests/test_rle.py` checks it against pycocotools.

Run-length encoding
-------------------
A binary mask of shape `(H, W)` is read in **column-major** (Fortran) order: down the first column, then down the
second, and so on, giving `H * W` zeros and ones. RLE stores the lengths of the runs of equal values, **always
starting with a run of zeros** (of length 0 if the first pixel is 1). Example, a 3 x 3 mask:

    mask = 0 1 0        columns read top to bottom:  0 1 0 | 1 1 0 | 0 0 1
           1 1 0        runs:  one 0, one 1, one 0, two 1s, three 0s, one 1
           0 0 1        counts = [1, 1, 1, 2, 3, 1]

The even-indexed counts are runs of 0s and the odd-indexed ones runs of 1s, so the mask's area is the sum of the odd
counts. An RLE is a dict `{"size": [H, W], "counts": ...}`. COCO json files hold `counts` in two forms:

- **uncompressed**: a list of ints, as above (COCO uses it for crowd regions in its annotation files);
- **compressed**: a string, produced as follows.

The compressed string
---------------------
1. *Delta coding.* From the fourth count on (index `i > 2`), store `counts[i] - counts[i - 2]`, the difference from
   the run two back (the previous run of the same value), which is small for smooth shapes and may be negative.
   (pycocotools starts at `i > 2`, not `i >= 2`; we follow it so that strings agree byte for byte.)
2. *Variable-length integers, 5 bits per character* (like LEB128, which uses 7 bits per byte). Each number is cut
   into 5-bit groups, least significant first. A character holds one group in its low 5 bits plus a
   "more follows" flag `0x20`; the last group's bit `0x10` doubles as the sign bit (two's complement), so emission
   stops as soon as the rest of the number is all 0s (non-negative) or all 1s (negative). Adding 48 makes every
   character printable (`'0'` to `'o'`).

The golden example above: the numbers coded are `1, 1, 1, 2-1=1, 3-1=2, 1-2=-1`. `-1` is the 5-bit group `11111`
(31), whose sign bit is set and the rest is all 1s, so one character, `chr(31 + 48) = 'O'`; the string is `"11112O"`.

Polygons
--------
COCO outlines most objects as polygons `[x0, y0, x1, y1, ...]` in pixel coordinates (pixel `(i, j)` covers
`[j, j+1) x [i, i+1)`, as everywhere in tinymask). `polygons_to_mask` rasterises them exactly as pycocotools'
`frPoly` does, so that ground-truth areas and IoUs agree with the official evaluation: the vertices are snapped to a
grid 5 times finer than the pixels, the outline is walked point by point on that grid, and every place where the
outline crosses a column's centre line (`x = j + 0.5`) toggles the mask on or off from that pixel downward. A pixel
is inside when it lies below an odd number of crossings in its column, i.e. when its centre is inside the polygon,
up to the snapping. Several polygons of one object are merged by union.

IoU, and crowd regions
----------------------
`mask_iou` and `box_iou_xywh` compute `|d ∩ g| / |d ∪ g|` for every detection/ground-truth pair, except when the
ground truth is a **crowd** region (`iscrowd=1`, e.g. a dense crowd of people outlined as one region): then the
IoU is `|d ∩ g| / |d|`, the fraction of the detection that lies inside the crowd, since a correct detection of one
person covers only a small part of the crowd's region. COCO evaluation uses this to *ignore* detections that fall
inside crowds rather than count them as false positives (see `coco_eval.py`).
"""
from __future__ import annotations

import numpy as np

#: Polygon vertices are snapped to a grid this many times finer than the pixels before rasterising (as pycocotools).
POLYGON_UPSAMPLE = 5


# ---------------------------------------------------------------------------------------------------------------
# Counts <-> compressed string
# ---------------------------------------------------------------------------------------------------------------

def counts_to_string(counts) -> str:
    """Compress a list of run lengths into COCO's string form (delta coding, then 5 bits per character).

    The loop is over runs (and over the few 5-bit groups of each), never over pixels.
    """
    counts = [int(c) for c in counts]
    chars = []
    for i, value in enumerate(counts):
        x = value - counts[i - 2] if i > 2 else value  # delta from the run two back (same colour)
        while True:
            group = x & 0x1F  # the lowest 5 bits
            x >>= 5  # arithmetic shift: a negative number stays negative, ending in ...1111
            more = (x != -1) if (group & 0x10) else (x != 0)  # bit 0x10 of the last group is the sign
            chars.append(chr((group | 0x20 if more else group) + 48))
            if not more:
                break
    return "".join(chars)


def string_to_counts(s) -> list[int]:
    """Inverse of `counts_to_string`: a compressed string (str or bytes) back to the list of run lengths."""
    if isinstance(s, (bytes, bytearray)):
        s = s.decode("ascii")
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k = 0, 0
        while True:
            if p >= len(s):
                raise ValueError("compressed RLE string ends in the middle of a number (last character has 0x20 set)")
            c = ord(s[p]) - 48
            if not 0 <= c < 64:
                raise ValueError(f"compressed RLE string has a character outside '0'..'o': {s[p]!r} at {p}")
            x |= (c & 0x1F) << (5 * k)
            p, k = p + 1, k + 1
            if not c & 0x20:  # the last group of this number
                if c & 0x10:  # sign bit set: extend with ones
                    x |= -1 << (5 * k)
                break
        if len(counts) > 2:
            x += counts[-2]  # undo the delta coding
        counts.append(x)
    return counts


# ---------------------------------------------------------------------------------------------------------------
# Mask <-> RLE
# ---------------------------------------------------------------------------------------------------------------

def mask_to_counts(mask: np.ndarray) -> np.ndarray:
    """Run lengths of an (H, W) mask read in column-major order, starting with a run of zeros. Returns (n,) int64."""
    flat = np.asarray(mask).ravel(order="F") != 0  # (H*W,) column by column
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1  # positions where a new run starts
    bounds = np.concatenate([[0], changes, [flat.size]])  # (n+1,)
    counts = np.diff(bounds)  # (n,)
    if flat.size and flat[0]:
        counts = np.concatenate([[0], counts])  # the first run is of zeros, here of length 0
    return counts.astype(np.int64)


def rle_encode(mask: np.ndarray) -> dict:
    """Encode an (H, W) mask (bool, or any dtype where nonzero means inside) as a compressed COCO RLE.

    Returns `{"size": [H, W], "counts": str}`, equal to pycocotools' `mask.encode` (which gives `counts` as bytes).
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got shape {mask.shape}")
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts_to_string(mask_to_counts(mask))}


def rle_counts(rle: dict) -> np.ndarray:
    """The run lengths of an RLE whose `counts` is a compressed str/bytes or an uncompressed list. (n,) int64.

    Checks that they are non-negative and add up to `H * W`.
    """
    h, w = _size(rle)
    raw = rle["counts"]
    counts = np.asarray(string_to_counts(raw) if isinstance(raw, (str, bytes, bytearray)) else raw, dtype=np.int64)
    if counts.ndim != 1:
        raise ValueError(f"RLE counts must be a flat list, got shape {counts.shape}")
    if np.any(counts < 0):
        raise ValueError("RLE counts must be non-negative")
    if counts.sum() != h * w:
        raise ValueError(f"RLE counts add up to {int(counts.sum())} pixels, but size {[h, w]} has {h * w}")
    return counts


def rle_decode(rle: dict) -> np.ndarray:
    """Decode an RLE (compressed str or bytes counts, or an uncompressed list) to an (H, W) bool mask.

    pycocotools' `mask.decode` gives the same values as uint8.
    """
    h, w = _size(rle)
    counts = rle_counts(rle)  # (n,)
    values = np.arange(counts.size) % 2 == 1  # (n,) runs alternate 0, 1, 0, ...
    flat = np.repeat(values, counts)  # (H*W,) column-major
    return flat.reshape(w, h).T  # (H, W): row j of the (W, H) array is column j of the mask


def rle_area(rle: dict) -> int:
    """Number of pixels inside: the sum of the odd-indexed counts (the runs of ones)."""
    return int(rle_counts(rle)[1::2].sum())


def rle_to_bbox(rle: dict) -> np.ndarray:
    """Tight box `[x, y, w, h]` (COCO's json layout, float64) of the mask's pixels; `[0, 0, 0, 0]` if empty.

    Computed from the runs without decoding: a run of ones from flat index `s` to `e` (inclusive) covers columns
    `s // H .. e // H`; if it stays in one column it covers rows `s % H .. e % H`, otherwise it wraps through the
    bottom and the top of the image, covering rows `H - 1` and `0`. Equal to pycocotools' `toBbox`.
    """
    h, _ = _size(rle)
    counts = rle_counts(rle)  # (n,)
    ends = np.cumsum(counts)  # (n,) one past the last pixel of each run
    ones = (np.arange(counts.size) % 2 == 1) & (counts > 0)  # (n,) non-empty runs of ones
    if not ones.any():
        return np.zeros(4)
    last = ends[ones] - 1  # (r,) flat index of each run's last pixel
    first = last - counts[ones] + 1  # (r,) and of its first pixel
    col0, col1 = first // h, last // h  # (r,) columns where each run starts and ends
    one_column = col0 == col1  # (r,)
    row0 = np.where(one_column, first % h, 0)  # (r,) topmost row each run covers
    row1 = np.where(one_column, last % h, h - 1)  # (r,) bottommost
    x0, y0 = col0.min(), row0.min()
    return np.array([x0, y0, col1.max() - x0 + 1, row1.max() - y0 + 1], dtype=np.float64)


def _size(rle: dict) -> tuple[int, int]:
    """(H, W) of an RLE, checking that it is a dict with "size" and "counts"."""
    if not isinstance(rle, dict) or "size" not in rle or "counts" not in rle:
        raise TypeError(f"an RLE must be a dict with keys 'size' and 'counts', got {type(rle).__name__}")
    size = rle["size"]
    if len(size) != 2 or any(int(v) != v or v < 0 for v in size):
        raise ValueError(f"RLE size must be [H, W] with non-negative ints, got {size!r}")
    return int(size[0]), int(size[1])


# ---------------------------------------------------------------------------------------------------------------
# Polygons
# ---------------------------------------------------------------------------------------------------------------

def polygons_to_mask(polygons, height: int, width: int) -> np.ndarray:
    """Rasterise COCO polygons into an (H, W) bool mask, the union of the polygons, as pycocotools' `frPoly`.

    polygons: a list of polygons, each a flat sequence `[x0, y0, x1, y1, ...]` of at least 3 points (6 numbers).
              A single flat polygon (a list of numbers) is accepted too.
    """
    polygons = _as_polygon_list(polygons)
    size = height * width
    mask = np.zeros(size, dtype=bool)  # (H*W,) column-major
    for xy in polygons:
        crossings = _polygon_crossings(xy, height, width)  # (c,) flat indices, in [0, H*W]
        toggles = np.bincount(crossings, minlength=size + 1)[:size]  # (H*W,) crossings starting at each pixel
        mask |= np.cumsum(toggles) % 2 == 1  # inside = an odd number of crossings at or above, in this column
    return mask.reshape(width, height).T  # column-major -> (H, W)


def _as_polygon_list(polygons) -> list[np.ndarray]:
    if len(polygons) > 0 and np.ndim(polygons[0]) == 0:  # one flat polygon
        polygons = [polygons]
    out = []
    for i, poly in enumerate(polygons):
        xy = np.asarray(poly, dtype=np.float64).ravel()
        if xy.size % 2:
            raise ValueError(f"polygon {i} has an odd number of coordinates ({xy.size}); expected [x0, y0, x1, ...]")
        if xy.size < 6:
            raise ValueError(f"polygon {i} has {xy.size // 2} points; a polygon needs at least 3 (6 numbers)")
        if not np.all(np.isfinite(xy)):
            raise ValueError(f"polygon {i} contains NaN or infinity")
        out.append(xy.reshape(-1, 2))  # (k, 2)
    return out


def _polygon_crossings(xy: np.ndarray, h: int, w: int) -> np.ndarray:
    """Flat column-major indices where the outline of one polygon (k, 2) toggles the mask, as `frPoly` finds them.

    Step 1: snap the vertices to the 5x grid (C's `(int)(v + .5)`, which truncates towards zero) and list every
    grid point along each edge, stepping one grid unit along the edge's longer axis. Step 2: wherever consecutive
    points change grid column across a pixel column's centre, record a crossing at that pixel column, at the first
    pixel row whose centre lies below the crossing.
    """
    s = POLYGON_UPSAMPLE
    x = np.trunc(s * xy[:, 0] + 0.5).astype(np.int64)  # (k,) vertices on the fine grid
    y = np.trunc(s * xy[:, 1] + 0.5).astype(np.int64)
    x0, x1 = x, np.roll(x, -1)  # (k,) edge j goes from vertex j to vertex j+1 (the last one closes the loop)
    y0, y1 = y, np.roll(y, -1)
    dx, dy = np.abs(x1 - x0), np.abs(y1 - y0)  # (k,)
    along_x = dx >= dy  # (k,) step along x (one point per fine column) or along y
    flip = np.where(along_x, x0 > x1, y0 > y1)  # walk each edge from its smaller end, then index it backwards
    xs, xe = np.where(flip, x1, x0), np.where(flip, x0, x1)  # (k,) edge ends after the flip
    ys, ye = np.where(flip, y1, y0), np.where(flip, y0, y1)
    n_steps = np.maximum(dx, dy)  # (k,) an edge gives n_steps + 1 points, both ends included
    denom = np.where(n_steps == 0, 1, n_steps)  # a zero-length edge gives one point; avoid 0 / 0
    slope = np.where(along_x, ye - ys, xe - xs) / denom  # (k,) change of the other coordinate per step

    edge = np.repeat(np.arange(len(xy)), n_steps + 1)  # (m,) which edge each point lies on
    d = np.arange(edge.size) - np.repeat(np.cumsum(n_steps + 1) - (n_steps + 1), n_steps + 1)  # (m,) 0..n_steps
    t = np.where(flip[edge], n_steps[edge] - d, d)  # (m,) steps from the flipped start, walking the original way
    other_x = np.trunc(xs[edge] + slope[edge] * t + 0.5).astype(np.int64)  # rounded, for edges walked along y
    other_y = np.trunc(ys[edge] + slope[edge] * t + 0.5).astype(np.int64)  # rounded, for edges walked along x
    u = np.where(along_x[edge], xs[edge] + t, other_x)  # (m,) fine-grid x of every outline point
    v = np.where(along_x[edge], other_y, ys[edge] + t)  # (m,) fine-grid y

    step = np.flatnonzero(u[1:] != u[:-1]) + 1  # (c,) points whose fine column differs from the previous point's
    u_cross = np.where(u[step] < u[step - 1], u[step], u[step] - 1)  # (c,) the fine column left of the step
    col = (u_cross + 0.5) / s - 0.5  # (c,) in pixel units: an integer exactly when it is a pixel column's centre
    keep = (np.floor(col) == col) & (col >= 0) & (col <= w - 1)
    row = (np.minimum(v[step], v[step - 1]) + 0.5) / s - 0.5  # (c,) height of the crossing, in pixel units
    row = np.ceil(np.clip(row, 0, h))  # first pixel row whose centre is at or below it
    return col[keep].astype(np.int64) * h + row[keep].astype(np.int64)  # (c',) flat column-major index


def segmentation_to_rle(segmentation, height: int, width: int) -> dict:
    """Any COCO `segmentation` (list of polygons, uncompressed RLE, compressed RLE) as a compressed RLE dict.

    An RLE's `size` must equal `[height, width]` (the image's size).
    """
    if isinstance(segmentation, dict):
        if [int(v) for v in segmentation.get("size", [])] != [height, width]:
            raise ValueError(f"RLE size {segmentation.get('size')} does not match the image's [H, W] {[height, width]}")
        if isinstance(segmentation.get("counts"), (str, bytes, bytearray)):
            rle_counts(segmentation)  # validate
            counts = segmentation["counts"]
            return {"size": [height, width], "counts": counts if isinstance(counts, str) else bytes(counts).decode()}
        return {"size": [height, width], "counts": counts_to_string(rle_counts(segmentation))}
    if isinstance(segmentation, (list, tuple)):
        return rle_encode(polygons_to_mask(segmentation, height, width))
    raise TypeError(f"segmentation must be a list of polygons or an RLE dict, got {type(segmentation).__name__}")


def segmentation_to_mask(segmentation, height: int, width: int) -> np.ndarray:
    """Any COCO `segmentation` as an (H, W) bool mask."""
    if isinstance(segmentation, (list, tuple)):
        return polygons_to_mask(segmentation, height, width)
    return rle_decode(segmentation_to_rle(segmentation, height, width))


# ---------------------------------------------------------------------------------------------------------------
# IoU with COCO's crowd rule
# ---------------------------------------------------------------------------------------------------------------

def mask_iou(dt_masks, gt_masks, iscrowd) -> np.ndarray:
    """IoU of every detection mask with every ground-truth mask, COCO's crowd rule included. Returns (D, G) float64.

    dt_masks: (D, H, W) array (nonzero = inside) or a list of D RLE dicts.
    gt_masks: (G, H, W) array or a list of G RLE dicts; all masks share one (H, W).
    iscrowd:  (G,) bools; for a crowd ground truth, IoU = |d ∩ g| / |d| instead of |d ∩ g| / |d ∪ g|.

    The IoU is 0 where the intersection is empty. Intersections are counted exactly: the masks are flattened to
    0/1 rows and multiplied, `inter = dt @ gt.T`, keeping only pixels that some mask covers.
    """
    dt, dt_size = _mask_stack(dt_masks, "dt_masks")  # (D, H*W) bool
    gt, gt_size = _mask_stack(gt_masks, "gt_masks")  # (G, H*W) bool
    crowd = _crowd_flags(iscrowd, gt.shape[0])  # (G,)
    if dt.shape[0] and gt.shape[0] and dt_size != gt_size:
        raise ValueError(f"dt_masks and gt_masks must share one image size, got {dt_size} and {gt_size}")
    if dt.shape[0] == 0 or gt.shape[0] == 0:
        return np.zeros((dt.shape[0], gt.shape[0]))
    used = dt.any(axis=0) | gt.any(axis=0)  # (H*W,) pixels some mask covers; the rest add nothing
    # float32 sums of 0/1 are exact below 2**24 terms; beyond that, use float64 (exact below 2**53)
    ftype = np.float32 if used.sum() < 2**24 else np.float64
    dt_used, gt_used = dt[:, used].astype(ftype), gt[:, used].astype(ftype)  # (D, P), (G, P)
    inter = (dt_used @ gt_used.T).astype(np.float64)  # (D, G) |d ∩ g|
    dt_area = dt.sum(axis=1).astype(np.float64)  # (D,)
    gt_area = gt.sum(axis=1).astype(np.float64)  # (G,)
    return _iou_from_areas(inter, dt_area, gt_area, crowd)


def box_iou_xywh(dt, gt, iscrowd) -> np.ndarray:
    """IoU of every detection box with every ground-truth box, boxes as COCO's `[x, y, w, h]`. Returns (D, G).

    dt: (D, 4), gt: (G, 4), iscrowd: (G,) bools (crowd: IoU = |d ∩ g| / |d|). 0 where the boxes do not overlap.
    Computed with the same floating-point operations as pycocotools' `bbIou`, so the results agree bit for bit.
    """
    dt = np.asarray(dt, dtype=np.float64).reshape(-1, 4)  # (D, 4)
    gt = np.asarray(gt, dtype=np.float64).reshape(-1, 4)  # (G, 4)
    crowd = _crowd_flags(iscrowd, gt.shape[0])  # (G,)
    d, g = dt[:, None, :], gt[None, :, :]  # (D, 1, 4), (1, G, 4)
    inter_w = np.minimum(d[..., 2] + d[..., 0], g[..., 2] + g[..., 0]) - np.maximum(d[..., 0], g[..., 0])  # (D, G)
    inter_h = np.minimum(d[..., 3] + d[..., 1], g[..., 3] + g[..., 1]) - np.maximum(d[..., 1], g[..., 1])  # (D, G)
    overlap = (inter_w > 0) & (inter_h > 0)  # (D, G)
    inter = np.where(overlap, inter_w * inter_h, 0.0)  # (D, G)
    dt_area, gt_area = dt[:, 2] * dt[:, 3], gt[:, 2] * gt[:, 3]  # (D,), (G,)
    return _iou_from_areas(inter, dt_area, gt_area, crowd)


def _iou_from_areas(inter, dt_area, gt_area, crowd) -> np.ndarray:
    """(D, G) intersections and the areas -> IoU, with the crowd rule; 0 where the intersection is 0."""
    union = np.where(crowd[None, :], dt_area[:, None], dt_area[:, None] + gt_area[None, :] - inter)  # (D, G)
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


def _crowd_flags(iscrowd, n: int) -> np.ndarray:
    crowd = np.asarray(iscrowd if iscrowd is not None else np.zeros(n), dtype=bool).ravel()  # (G,)
    if crowd.size != n:
        raise ValueError(f"iscrowd must have one entry per ground truth ({n}), got {crowd.size}")
    return crowd


def _mask_stack(masks, name: str) -> tuple[np.ndarray, tuple[int, int] | None]:
    """(N, H, W) array or list of N RLEs -> ((N, H*W) bool, one row per mask, and (H, W); None if N == 0)."""
    if isinstance(masks, np.ndarray):
        if masks.ndim != 3:
            raise ValueError(f"{name} must have shape (N, H, W) or be a list of RLE dicts, got shape {masks.shape}")
        return masks.reshape(masks.shape[0], masks.shape[1] * masks.shape[2]) != 0, tuple(masks.shape[1:])
    masks = list(masks)
    if not masks:
        return np.zeros((0, 0), dtype=bool), None
    sizes = {_size(r) for r in masks}
    if len(sizes) > 1:
        raise ValueError(f"all masks in {name} must share one size, got {sorted(sizes)}")
    return np.stack([rle_decode(r).ravel() for r in masks]), sizes.pop()
