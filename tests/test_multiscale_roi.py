"""Multi-scale RoI extraction (FPN Eq. 1): level assignment, scales, order, equality with one level, gradients."""
import numpy as np
import pytest

from tinymask.gradcheck import check_layer
from tinymask.box_logic.levels import assign_fpn_levels, infer_scale
from tinymask.layers.multiscale_roi import multiscale_roi_backward, multiscale_roi_forward
from tinymask.layers.roi_align import roi_align_forward
from tinymask.layers.roi_pool import roi_pool_forward
from tinymask.layers.roi_warp import roi_warp_forward


def square(side, x0=10.0, y0=20.0):
    return [x0, y0, x0 + side, y0 + side]


def test_level_assignment_golden_values():
    # k = floor(4 + log2(sqrt(w h) / 224) + 1e-6), clamped to [2, 5]
    boxes = np.array([
        square(224),              # log2(1) = 0             -> 4
        square(112),              # log2(1/2) = -1          -> 3 (exact in float64)
        square(112 * (1 - 1e-9)), # -1 - 1.4e-9             -> 3: eps (1e-6) keeps it from falling to 2
        square(448),              # +1                      -> 5
        square(56),               # -2                      -> 2
        square(223),              # just below 224          -> 3
        [0, 0, 112, 448],         # sqrt(112·448) = 224     -> 4
        square(1),                # tiny                    -> k_min = 2
        square(5000),             # huge                    -> k_max = 5
        [3, 3, 3, 50],            # zero area: log2(0) = -inf -> k_min
    ])
    np.testing.assert_array_equal(assign_fpn_levels(boxes, 2, 5), [4, 3, 3, 5, 2, 3, 4, 2, 5, 2])
    assert assign_fpn_levels(np.zeros((0, 4)), 2, 5).shape == (0,)
    # other canonical settings, as a small test model uses them
    np.testing.assert_array_equal(assign_fpn_levels(np.array([square(8), square(16), square(32)]), 1, 3,
                                                    canonical_size=16, canonical_level=2), [1, 2, 3])


def test_level_assignment_bad_boxes():
    with pytest.raises(ValueError, match=r"\(P, 4\)"):
        assign_fpn_levels(np.zeros((2, 5)), 2, 5)
    with pytest.raises(ValueError, match="inverted"):
        assign_fpn_levels(np.array([[5.0, 0, 3, 4]]), 2, 5)
    with pytest.raises(ValueError, match="inverted"):
        assign_fpn_levels(np.array([[5.0, 6, 3, 4]]), 2, 5)  # both sides negative: a positive "area"


def test_infer_scale():
    assert infer_scale((200, 336), (800, 1344)) == 0.25
    assert infer_scale((40, 50), (150, 190)) == 0.25  # padded batch: 40 / 150 = 0.267 -> 1/4
    assert infer_scale((13, 17), (100, 130)) == 0.125
    assert infer_scale((100, 100), (100, 100)) == 1.0


IMAGE = 64
SCALES = [1 / 4, 1 / 8, 1 / 16, 1 / 32]  # P2..P5


def pyramid(rng, N=2, C=2):
    return [rng.standard_normal((N, C, int(IMAGE * s), int(IMAGE * s))) for s in SCALES]


# boxes of every size, interleaved so that levels alternate (levels with canonical_size=32, canonical_level=4:
# side 8 -> 2, 16 -> 3, 32 -> 4, 64 -> 5)
ROIS = np.array([
    [0, -2.3, -1.1, 63.8, 64.5],  # ~66 -> 5
    [1, 10.2, 11.5, 18.9, 19.1],  # ~8  -> 2
    [0, 20.5, 7.2, 52.1, 40.3],   # ~32 -> 4
    [1, 30.1, 30.2, 46.4, 47.7],  # ~17 -> 3
    [1, 5.5, 40.5, 12.5, 47.5],   # 7   -> 2 (below 8: clamped to k_min)
    [0, 40.25, 2.75, 57.5, 19.0],  # ~17 -> 3
])
LEVEL_KW = dict(canonical_size=32, canonical_level=4)


@pytest.mark.parametrize("method, mode", [("align", "avg"), ("align", "max"), ("warp", "avg"), ("pool", None)])
def test_equals_single_level_op_in_input_order(rng, method, mode):
    feats = pyramid(rng)
    level = assign_fpn_levels(ROIS[:, 1:], 2, 5, **LEVEL_KW) - 2
    np.testing.assert_array_equal(level, [3, 0, 2, 1, 0, 1])
    out, _ = multiscale_roi_forward(feats, ROIS, scales=SCALES, output_size=(3, 2), sampling_ratio=2,
                                    method=method, mode=mode, **LEVEL_KW)
    assert out.shape == (6, 2, 3, 2)
    for k in range(len(ROIS)):
        l = level[k]
        if method == "pool":
            ref, _ = roi_pool_forward(feats[l], ROIS[k:k + 1], output_size=(3, 2), spatial_scale=SCALES[l])
        else:
            op = roi_align_forward if method == "align" else roi_warp_forward
            ref, _ = op(feats[l], ROIS[k:k + 1], output_size=(3, 2), spatial_scale=SCALES[l], sampling_ratio=2,
                        mode=mode)
        np.testing.assert_array_equal(out[k], ref[0])


def test_default_levels_route_by_size(rng):
    # torchvision's defaults (224, level 4, maps P2..P5): a 224-pixel box reads P4 exactly.
    feats = [rng.standard_normal((1, 1, 512 // s, 512 // s)) for s in (4, 8, 16, 32)]
    rois = np.array([[0, 100, 100, 324, 324.0]])
    out, _ = multiscale_roi_forward(feats, rois, scales=[1 / 4, 1 / 8, 1 / 16, 1 / 32], output_size=7,
                                    sampling_ratio=2)
    ref, _ = roi_align_forward(feats[2], rois, output_size=7, spatial_scale=1 / 16, sampling_ratio=2)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("method, mode, aligned", [
    ("align", "avg", False), ("align", "avg", True), ("align", "max", True), ("warp", "avg", False),
    ("warp", "max", False), ("pool", None, False),
])
def test_gradcheck_across_levels(rng, method, mode, aligned):
    # Three small levels (image 16×20, scales 1/2, 1/4, 1/8), two images, boxes spread over all levels
    # (canonical_size=8, canonical_level=2: side 4..8 -> level 1, 8..16 -> 2, 16 and more -> 3).
    scales = [1 / 2, 1 / 4, 1 / 8]
    feats = [rng.standard_normal((2, 2, int(16 * s), int(20 * s))) for s in scales]
    if mode == "max" or method == "pool":
        feats = [f + 10.0 * np.arange(f[0, 0].size).reshape(f.shape[2:]) ** 1.3 / f[0, 0].size for f in feats]
    rois = np.array([
        [0, 1.3, 2.1, 5.7, 6.4],       # ~4.3 -> 1
        [1, 0.6, 0.3, 11.7, 10.9],     # ~11  -> 2
        [1, 3.2, 4.3, 8.1, 8.8],       # ~4.7 -> 1
        [0, 0.4, 0.3, 13.1, 15.6],     # ~14  -> 2
        [1, -5.3, -4.6, 18.8, 17.1],   # ~23  -> 3, reaching past the image
    ])
    kw = dict(scales=scales, output_size=2, sampling_ratio=2, aligned=aligned, method=method, mode=mode,
              canonical_size=8, canonical_level=2)
    levels = assign_fpn_levels(rois[:, 1:], 1, 3, canonical_size=8, canonical_level=2)
    assert set(levels.tolist()) == {1, 2, 3}

    def forward(f0, f1, f2, r):
        return multiscale_roi_forward([f0, f1, f2], r, **kw)

    def backward(dout, cache):
        dfeats, drois = multiscale_roi_backward(dout, cache)
        return (*dfeats, drois)

    errors = check_layer(forward, backward, [*feats, rois], names=["P1", "P2", "P3", "rois"])
    assert list(errors) == ["P1", "P2", "P3"]
    assert max(errors.values()) < 1e-7


def test_level_without_rois_gets_zero_gradient(rng):
    feats = pyramid(rng)
    rois = ROIS[[1, 4]]  # both on level 2 (index 0)
    out, cache = multiscale_roi_forward(feats, rois, scales=SCALES, output_size=2, **LEVEL_KW)
    dfeats, drois = multiscale_roi_backward(np.ones_like(out), cache)
    assert drois is None and len(dfeats) == 4
    assert dfeats[0].any() and not any(d.any() for d in dfeats[1:])
    assert [d.shape for d in dfeats] == [f.shape for f in feats]


def test_empty_roi_list(rng):
    feats = pyramid(rng)
    out, cache = multiscale_roi_forward(feats, np.zeros((0, 5)), scales=SCALES, output_size=(7, 5))
    assert out.shape == (0, 2, 7, 5)
    assert not any(d.any() for d in multiscale_roi_backward(out, cache)[0])


@pytest.mark.parametrize("kwargs, message", [
    (dict(scales=[1 / 4, 1 / 8, 1 / 16]), "3 scales for 4"),
    (dict(scales=[1 / 4, 1 / 8, 1 / 16, 1 / 30]), "power of two"),
    (dict(scales=[1 / 4, 1 / 8, 1 / 32, 1 / 16]), "consecutive"),
    (dict(method="pool", mode="avg"), "max"),
    (dict(method="warp", aligned=True), "aligned"),
    (dict(method="crop"), "method"),
])
def test_bad_arguments(rng, kwargs, message):
    args = dict(scales=SCALES, output_size=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        multiscale_roi_forward(pyramid(rng), ROIS, **args)


def test_maps_must_agree(rng):
    feats = pyramid(rng)
    feats[2] = feats[2].astype(np.float32)
    with pytest.raises(ValueError, match="dtype"):
        multiscale_roi_forward(feats, ROIS, scales=SCALES, output_size=2)
