"""The built-in synthetic *shapes* dataset: instance segmentation you can train on a laptop.

*Paper:* He et al., *Mask R-CNN*, ICCV 2017, trains on COCO (Sec. 4); the toy "shapes" dataset is a tradition of
Mask R-CNN tutorials (Matterport's `shapes.py`), because a model that cannot learn squares, circles and triangles
has a bug, and one that can is worth taking to COCO. It needs no files and no downloads.

## What an image looks like

An `image_size` x `image_size` RGB image (128 x 128 by default):

- **Background**: one random colour, plus a linear brightness gradient in a random direction (changing by at most
  0.08 across the image) so that "background" is not a single value the model could memorise.
- **Instances**: 1 to 4 shapes (the easy variant) of class square, circle or triangle, each with a random flat
  colour, size, position and (for triangles) orientation. Every colour keeps its distance from the background and
  from the other shapes' colours (`MIN_BACKGROUND_CONTRAST`, `MIN_INSTANCE_CONTRAST`, Euclidean in RGB), so every
  instance can be told apart by eye.
- **Noise**: mild pixel noise over the whole image (uniform, std `NOISE_STD` = 0.02; uniform rather than Gaussian
  only because it is four times cheaper to draw), then clipping to [0, 1].

## Occlusion

Shapes are painted in order, later ones on top. We keep an *owner map*: `owner[i, j]` is the index of the last
shape that covers pixel (i, j), or -1 for background. The **visible mask** of shape k is `owner == k`, so visible
masks never overlap (every pixel belongs to at most one instance) and they are exactly what the image shows.

A shape that is mostly hidden is no longer recognisable, so an instance is **dropped** when its visible area is
below `min_visible_fraction` (30 %) of its own unoccluded area, or below `min_visible_pixels` (12) pixels. A dropped
shape is removed from the picture altogether, not just from the labels, so the image never shows a shape that has
no label. Removing a shape only uncovers the shapes below it, whose visible areas can only grow, so one pass is
enough; the last shape painted is never covered, so an image keeps at least one instance (for image sizes of 64 and
up, where even the smallest shape has enough pixels). Boxes are then recomputed from the visible masks.

## Rasterising analytically

Pixel (i, j) covers the square [j, j+1) x [i, i+1) of the image plane and is "inside" a shape when its **centre**
(x, y) = (j + 0.5, i + 0.5) is (see docs/conventions.md). Each shape is a formula on the grid of pixel centres,
computed for all pixels at once with NumPy broadcasting: a circle is `(x - cx)**2 + (y - cy)**2 <= r**2`, a rotated
square is `|u| <= a and |v| <= a` in coordinates (u, v) rotated by the shape's angle, and a triangle is the
intersection of three half-planes. There is no anti-aliasing: a pixel is in the mask exactly when it has the
shape's colour, so the masks are pixel-exact ground truth. A tight box around a visible mask runs from the left edge
of its leftmost pixel to the right edge of its rightmost one: `x0 = min j`, `x1 = max j + 1` (and the same for y).

## Determinism, splits, random access

Image i of a split is generated from its own generator, `np.random.default_rng([seed, split_id, i])`, with split ids
train = 0, val = 1, test = 2. So the same (seed, split, i) always gives the same arrays, any image can be generated
on its own without generating the ones before it (nothing is cached), and the splits are disjoint streams: the
held-out images were never seen in training. Generation takes one to two milliseconds per image (128 x 128), so
1000 images take a couple of seconds; each shape's formula is evaluated only on the window of pixels around it.

## The hard variant

`difficulty="hard"` is for ablations: 3 to 8 smaller shapes clustered around one point (so they overlap more),
squares and crosses rotated, and three more classes, chosen so that classes stay well defined:

- **ring**: an annulus whose hole is 50-65 % of its outer radius (a circle never has a hole);
- **cross**: a plus sign whose arms are 0.3 of its length thick (never a square: it has four notches);
- **ellipse**: an ellipse at least 1.8 times longer than it is wide (axis ratio 0.35-0.55, never round enough to
  pass for a circle).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLITS = {"train": 0, "val": 1, "test": 2}

NOISE_STD = 0.02  # std of the (uniform) pixel noise
GRADIENT_AMPLITUDE = 0.08  # the background's brightness changes by at most this much across the image
MIN_BACKGROUND_CONTRAST = 0.4  # least RGB distance between a shape's colour and the background colour
MIN_INSTANCE_CONTRAST = 0.25  # least RGB distance between the colours of two shapes in one image
COLOUR_CANDIDATES = 32  # colours drawn at once; the first one with enough contrast is used

# Each shape has an extent r (drawn per instance); these factors give the classes similar areas (about 2-2.5 r^2)
# and keep every shape within a distance EXTENT * r of its centre, which keeps it inside the image.
SQUARE_HALF_SIDE = 0.8  # half the side is 0.8 r
CIRCLE_RADIUS = 0.9
TRIANGLE_CIRCUMRADIUS = 1.25  # equilateral triangle, centre to vertex
RING_OUTER_RADIUS = 0.95
CROSS_HALF_LENGTH, CROSS_HALF_THICKNESS = 0.95, 0.3
ELLIPSE_SEMI_MAJOR = 1.15
EXTENT = 1.25


@dataclass(frozen=True)
class ShapesConfig:
    """The knobs of one difficulty level. Sizes are fractions of the image size."""

    class_names: tuple  # the instance classes, label 1 first (label 0 is background)
    min_instances: int  # shapes drawn per image (before occluded ones are dropped), inclusive range
    max_instances: int
    extent_range: tuple  # extent r of a shape, as a fraction of the image size
    cluster_spread: float | None  # None: centres anywhere; else centres ~ N(cluster point, spread * size)
    rotate: bool  # rotate squares and crosses (triangles and ellipses are always rotated)
    min_visible_fraction: float  # drop an instance showing less than this fraction of itself ...
    min_visible_pixels: int  # ... or fewer pixels than this


DIFFICULTIES = {
    "easy": ShapesConfig(("square", "circle", "triangle"), 1, 4, (0.08, 0.2), None, False, 0.3, 12),
    "hard": ShapesConfig(("square", "circle", "triangle", "ring", "cross", "ellipse"), 3, 8, (0.05, 0.12), 0.18,
                         True, 0.3, 12),
}


# ---------------------------------------------------------------------------------------------------------------
# One shape at a time: a formula on the grid of pixel centres. x is (1, W), y is (H, 1); each returns (H, W) bool.
# ---------------------------------------------------------------------------------------------------------------

def _rotated(x, y, cx, cy, angle):
    """Coordinates (u, v) of the pixel centres in a frame centred on (cx, cy) and turned by `angle` radians."""
    dx, dy = x - cx, y - cy  # (1, W), (H, 1)
    c, s = np.cos(angle), np.sin(angle)
    return dx * c + dy * s, -dx * s + dy * c  # (H, W) each


def square_mask(x, y, cx, cy, r, angle=0.0):
    u, v = _rotated(x, y, cx, cy, angle)
    a = SQUARE_HALF_SIDE * r
    return (np.abs(u) <= a) & (np.abs(v) <= a)


def circle_mask(x, y, cx, cy, r):
    return (x - cx) ** 2 + (y - cy) ** 2 <= (CIRCLE_RADIUS * r) ** 2


def triangle_mask(x, y, cx, cy, r, angle):
    """Equilateral triangle with vertices at angle, angle + 120 deg, angle + 240 deg around (cx, cy)."""
    t = angle + np.array([0.0, 2.0, 4.0]) * np.pi / 3  # (3,) vertex angles
    vx = cx + TRIANGLE_CIRCUMRADIUS * r * np.cos(t)  # (3,)
    vy = cy + TRIANGLE_CIRCUMRADIUS * r * np.sin(t)  # (3,)
    # A point is inside a convex polygon when it lies on the same side of every edge. The side is the sign of the
    # 2D cross product (edge vector) x (point - edge start); all >= 0 or all <= 0 accepts either vertex order.
    nx, ny = np.roll(vx, -1), np.roll(vy, -1)  # (3,) the next vertex of each edge
    sides = [(nx[k] - vx[k]) * (y - vy[k]) - (ny[k] - vy[k]) * (x - vx[k]) for k in range(3)]  # 3 x (H, W)
    return ((sides[0] >= 0) & (sides[1] >= 0) & (sides[2] >= 0)) | ((sides[0] <= 0) & (sides[1] <= 0) & (sides[2] <= 0))


def ring_mask(x, y, cx, cy, r, inner_ratio):
    d2 = (x - cx) ** 2 + (y - cy) ** 2  # (H, W) squared distance to the centre
    outer = RING_OUTER_RADIUS * r
    return (d2 <= outer ** 2) & (d2 >= (inner_ratio * outer) ** 2)


def cross_mask(x, y, cx, cy, r, angle=0.0):
    u, v = _rotated(x, y, cx, cy, angle)
    length, thick = CROSS_HALF_LENGTH * r, CROSS_HALF_THICKNESS * r
    au, av = np.abs(u), np.abs(v)
    return ((au <= length) & (av <= thick)) | ((au <= thick) & (av <= length))  # horizontal bar | vertical bar


def ellipse_mask(x, y, cx, cy, r, angle, axis_ratio):
    u, v = _rotated(x, y, cx, cy, angle)
    a = ELLIPSE_SEMI_MAJOR * r
    b = axis_ratio * a
    return (u / a) ** 2 + (v / b) ** 2 <= 1.0


# ---------------------------------------------------------------------------------------------------------------
# One image
# ---------------------------------------------------------------------------------------------------------------

def _pick_colour(rng, background, used):
    """A random colour far enough from the background and from the colours already used in the image.

    Draws COLOUR_CANDIDATES colours at once and takes the first that keeps both contrasts; if none does (very
    rare), the one whose nearest neighbour is farthest away. Always the same number of draws, so determinism holds.
    """
    cand = rng.uniform(0.0, 1.0, size=(COLOUR_CANDIDATES, 3))  # (C, 3)
    d_bg = np.linalg.norm(cand - background, axis=1)  # (C,)
    if used:
        d_used = np.linalg.norm(cand[:, None, :] - np.array(used)[None], axis=2).min(axis=1)  # (C,)
    else:
        d_used = np.full(COLOUR_CANDIDATES, np.inf)
    ok = np.flatnonzero((d_bg >= MIN_BACKGROUND_CONTRAST) & (d_used >= MIN_INSTANCE_CONTRAST))
    if ok.size:
        return cand[ok[0]]
    score = np.minimum(d_bg / MIN_BACKGROUND_CONTRAST, d_used / MIN_INSTANCE_CONTRAST)  # (C,)
    return cand[np.argmax(score)]


def _draw_shape(rng, name, size, config, centre_hint):
    """Draw one shape's parameters (centre, extent, angle, a proportion) as a small dict for `_rasterise`."""
    r = rng.uniform(*config.extent_range) * size
    lo, hi = EXTENT * r, size - EXTENT * r  # centres in [lo, hi] keep the whole shape inside the image
    if centre_hint is None:
        cx, cy = rng.uniform(lo, hi, size=2)
    else:
        cx, cy = np.clip(centre_hint + rng.normal(0.0, config.cluster_spread * size, size=2), lo, hi)
    angle = rng.uniform(0.0, 2.0 * np.pi)
    extra = rng.uniform(0.0, 1.0)  # a shape-specific proportion (ring hole, ellipse axes), drawn for every class
    return dict(name=name, cx=cx, cy=cy, r=r, angle=angle, extra=extra, rotate=config.rotate)


def _rasterise(shape, x, y):
    """(H, W) bool mask of a shape's full (unoccluded) extent.

    The formula is evaluated only on the window of pixels within EXTENT * r of the centre (the shape lies inside
    it), which for small shapes is many times fewer pixels than the image.
    """
    cx, cy, r = shape["cx"], shape["cy"], shape["r"]
    full = np.zeros((y.shape[0], x.shape[1]), dtype=bool)  # (H, W)
    j0, j1 = max(int(cx - EXTENT * r), 0), min(int(np.ceil(cx + EXTENT * r)) + 1, x.shape[1])  # window columns
    i0, i1 = max(int(cy - EXTENT * r), 0), min(int(np.ceil(cy + EXTENT * r)) + 1, y.shape[0])  # window rows
    full[i0:i1, j0:j1] = _shape_formula(shape, x[:, j0:j1], y[i0:i1])
    return full


def _shape_formula(shape, x, y):
    """The shape's inside test on pixel centres x (1, w) and y (h, 1): (h, w) bool."""
    name, cx, cy, r, angle = shape["name"], shape["cx"], shape["cy"], shape["r"], shape["angle"]
    if name == "square":
        return square_mask(x, y, cx, cy, r, angle if shape["rotate"] else 0.0)
    if name == "circle":
        return circle_mask(x, y, cx, cy, r)
    if name == "triangle":
        return triangle_mask(x, y, cx, cy, r, angle)
    if name == "ring":
        return ring_mask(x, y, cx, cy, r, inner_ratio=0.5 + 0.15 * shape["extra"])  # hole 50-65 % of radius
    if name == "cross":
        return cross_mask(x, y, cx, cy, r, angle if shape["rotate"] else 0.0)
    if name == "ellipse":
        return ellipse_mask(x, y, cx, cy, r, angle, axis_ratio=0.35 + 0.2 * shape["extra"])  # 0.35-0.55
    raise ValueError(f"unknown shape {name!r}")


def masks_to_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight (G, 4) float32 boxes (x0, y0, x1, y1) around (G, H, W) non-empty masks: x0 = min j, x1 = max j + 1."""
    boxes = np.zeros((masks.shape[0], 4), dtype=np.float32)
    for g, m in enumerate(masks):
        cols = np.flatnonzero(m.any(axis=0))  # columns that hold a mask pixel
        rows = np.flatnonzero(m.any(axis=1))  # rows that hold a mask pixel
        boxes[g] = cols[0], rows[0], cols[-1] + 1, rows[-1] + 1
    return boxes


def owner_map(full: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """(H, W) int64: index of the last kept shape of `full` (N, H, W) covering each pixel, -1 where none does."""
    owner = np.full(full.shape[1:], -1, dtype=np.int64)  # (H, W)
    for k in np.flatnonzero(keep):
        owner[full[k]] = k  # painter's order: later shapes overwrite earlier ones
    return owner


def resolve_occlusion(full: np.ndarray, min_visible_fraction: float, min_visible_pixels: int):
    """Which shapes stay visible enough, and who owns each pixel.

    full: (N, H, W) bool, each shape's unoccluded mask, in painter's order (later on top).

    Returns `(owner, kept)`: owner (H, W) int64, the index of the kept shape seen at each pixel (-1: background);
    kept (G,) int64, the indices of the kept shapes in painter's order. Visible masks are `owner == kept[g]`.
    """
    num = full.shape[0]
    owner = owner_map(full, np.ones(num, dtype=bool))  # (H, W) with every shape
    visible_area = np.bincount(owner[owner >= 0], minlength=num)  # (N,)
    full_area = full.reshape(num, -1).sum(axis=1)  # (N,)
    keep = (visible_area >= min_visible_fraction * full_area) & (visible_area >= min_visible_pixels)  # (N,)
    owner = owner_map(full, keep)  # dropped shapes vanish; the others' visible areas can only grow
    return owner, np.flatnonzero(keep).astype(np.int64)


def generate_image(rng: np.random.Generator, image_size: int = 128, difficulty: str = "easy") -> dict:
    """Generate one shapes image and its instances from `rng`.

    Returns a sample dict without "image_id" (see tinymask/data/__init__.py for the format):
    image (3, S, S) float32 in [0, 1], boxes (G, 4) float32, labels (G,) int64 in 1..K, masks (G, S, S) uint8,
    iscrowd (G,) bool (all False).
    """
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}, got {difficulty!r}")
    config = DIFFICULTIES[difficulty]
    size = image_size
    x = np.arange(size, dtype=np.float64)[None, :] + 0.5  # (1, W) pixel-centre x
    y = np.arange(size, dtype=np.float64)[:, None] + 0.5  # (H, 1) pixel-centre y

    # Background: a colour and a linear gradient of brightness in a random direction.
    background = rng.uniform(0.0, 1.0, size=3)  # (3,)
    phi = rng.uniform(0.0, 2.0 * np.pi)
    ramp = ((x - size / 2) * np.cos(phi) + (y - size / 2) * np.sin(phi)) / size  # (H, W), in about [-0.71, 0.71]
    ramp = ramp * GRADIENT_AMPLITUDE / np.sqrt(2)

    # Draw the shapes (painter's order: later ones on top).
    num = int(rng.integers(config.min_instances, config.max_instances + 1))
    centre_hint = None if config.cluster_spread is None else rng.uniform(0.3, 0.7, size=2) * size
    shapes, colours, labels = [], [], []
    for _ in range(num):
        label = int(rng.integers(1, len(config.class_names) + 1))
        shapes.append(_draw_shape(rng, config.class_names[label - 1], size, config, centre_hint))
        colours.append(_pick_colour(rng, background, colours))
        labels.append(label)
    full = np.stack([_rasterise(s, x, y) for s in shapes])  # (num, H, W) bool, unoccluded

    owner, kept = resolve_occlusion(full, config.min_visible_fraction, config.min_visible_pixels)

    # Paint: each pixel in its owner's colour (the background's for -1), the gradient on the background, noise.
    palette = np.concatenate([np.array(colours).reshape(-1, 3), background[None]])  # (num + 1, 3); row -1 = bg
    palette = np.ascontiguousarray(palette.T, dtype=np.float32)  # (3, num + 1)
    image = np.take(palette, owner, axis=1)  # (3, H, W); owner -1 takes the last column, the background
    image += np.where(owner < 0, ramp, 0.0).astype(np.float32)  # (H, W) broadcast over channels
    noise = rng.random(size=image.shape, dtype=np.float32) - np.float32(0.5)  # (3, H, W) uniform in [-0.5, 0.5)
    image += noise * np.float32(NOISE_STD * np.sqrt(12.0))  # scaled to std NOISE_STD
    np.clip(image, 0.0, 1.0, out=image)

    masks = (owner[None] == kept[:, None, None]).astype(np.uint8)  # (G, H, W), disjoint
    return {
        "image": image,
        "boxes": masks_to_boxes(masks),
        "labels": np.array(labels, dtype=np.int64)[kept],
        "masks": masks,
        "iscrowd": np.zeros(kept.size, dtype=bool),
    }


# ---------------------------------------------------------------------------------------------------------------
# The dataset
# ---------------------------------------------------------------------------------------------------------------

class ShapesDataset:
    """`num_images` synthetic images of one split, each generated on demand from (seed, split, index).

    split:      "train", "val" or "test" (disjoint random streams).
    num_images: how many images the split has.
    seed:       the dataset seed; the same seed gives the same images on any machine with the same NumPy.
    image_size: images are image_size x image_size.
    difficulty: "easy" (3 classes, 1-4 shapes) or "hard" (6 classes, 3-8 smaller shapes, more overlap).

    `dataset[i]` is a sample dict with `image_id = i`. Category ids are the labels themselves (1..K).
    """

    def __init__(self, split: str = "train", num_images: int = 1000, seed: int = 0, image_size: int = 128,
                 difficulty: str = "easy"):
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {sorted(DIFFICULTIES)}, got {difficulty!r}")
        if not isinstance(num_images, (int, np.integer)) or num_images < 0:
            raise ValueError(f"num_images must be a non-negative int, got {num_images!r}")
        if not isinstance(image_size, (int, np.integer)) or image_size < 16:
            raise ValueError(f"image_size must be an int >= 16, got {image_size!r}")
        if not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be a non-negative int, got {seed!r}")
        self.split, self.num_images, self.seed = split, int(num_images), int(seed)
        self.image_size, self.difficulty = int(image_size), difficulty
        self.class_names = ["background", *DIFFICULTIES[difficulty].class_names]
        self.label_to_category_id = {k: k for k in range(1, len(self.class_names))}
        self.category_id_to_label = dict(self.label_to_category_id)

    def __len__(self) -> int:
        return self.num_images

    def __getitem__(self, index: int) -> dict:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if not -self.num_images <= index < self.num_images:
            raise IndexError(f"index {index} out of range for a dataset of {self.num_images} images")
        index = int(index) % self.num_images
        rng = np.random.default_rng([self.seed, SPLITS[self.split], index])
        sample = generate_image(rng, self.image_size, self.difficulty)
        sample["image_id"] = index
        return sample

    def __repr__(self) -> str:
        return (f"ShapesDataset(split={self.split!r}, num_images={self.num_images}, seed={self.seed}, "
                f"image_size={self.image_size}, difficulty={self.difficulty!r})")

    def to_coco_gt(self) -> dict:
        """The split's ground truth in COCO format, for the evaluator (generates every image once).

        Masks are compressed RLE, boxes COCO's [x, y, width, height], `area` the number of mask pixels, annotation
        ids count from 1 (COCO's evaluator reads id 0 as "no match"), `iscrowd` 0.
        """
        from tinymask.evaluation.rle import rle_encode

        images, annotations = [], []
        for i in range(self.num_images):
            sample = self[i]
            images.append({"id": i, "width": self.image_size, "height": self.image_size,
                           "file_name": f"shapes_{self.split}_{i:06d}.png"})
            for box, label, mask in zip(sample["boxes"], sample["labels"], sample["masks"]):
                rle = rle_encode(mask)
                counts = rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes) else rle["counts"]
                x0, y0, x1, y1 = (float(v) for v in box)
                annotations.append({
                    "id": len(annotations) + 1, "image_id": i, "category_id": int(label),
                    "segmentation": {"size": [int(s) for s in rle["size"]], "counts": counts},
                    "area": float(mask.sum()), "bbox": [x0, y0, x1 - x0, y1 - y0], "iscrowd": 0,
                })
        categories = [{"id": k, "name": name, "supercategory": "shape"}
                      for k, name in enumerate(self.class_names) if k > 0]
        return {"info": {"description": repr(self)}, "images": images, "annotations": annotations,
                "categories": categories}
