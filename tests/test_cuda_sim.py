"""The CUDA kernels (tinymask/ops/cuda/) against the NumPy reference, with or without a GPU.

Two kinds of test, each skipped where it cannot run:

- **The kernels run**, either in Numba's CUDA simulator, which executes every GPU thread as a Python thread (correct
  semantics: shared memory, `syncthreads`, atomics; no speed, so the shapes are tiny), or on a real GPU when the
  machine has one and the simulator is off. Needs numba-cuda; the simulator is chosen by a variable set before Python
  starts (the library never sets it):

      NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_sim.py    # no GPU needed (CI)
      python -m pytest tests/test_cuda_sim.py                           # on a machine with a CUDA GPU

- **Compiled to PTX** for a real GPU (sm_80) by NVVM, without running: this is what the simulator cannot check, that
  every kernel types and lowers on the real target (numba-cuda lacks some NumPy functions, `np.floor` for one). Needs
  numba-cuda with NVVM and NVRTC (`pip install "cuda-toolkit[nvvm,nvrtc]==13.*"`) and the simulator **off**:

      python -m pytest tests/test_cuda_sim.py -k ptx

  Where the toolchain is missing it skips, unless TINYMASK_REQUIRE_PTX=1 is set: then it fails (CI sets it, so that a
  broken install cannot pass as a skip).
"""
from __future__ import annotations

import importlib.util
import os
import types

import numpy as np
import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
NUMBA_CUDA = importlib.util.find_spec("numba_cuda") is not None
REQUIRE_PTX = os.environ.get("TINYMASK_REQUIRE_PTX") == "1"  # the PTX test fails instead of skipping (CI)
if not NUMBA_CUDA and REQUIRE_PTX:
    raise ImportError("TINYMASK_REQUIRE_PTX=1, but numba-cuda is not installed (pip install 'tinymask[cuda]')")
if not NUMBA_CUDA:
    pytest.skip("numba-cuda not installed (pip install 'tinymask[cuda]'); then "
                "NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_sim.py", allow_module_level=True)



def _gpu_present() -> bool:
    if SIMULATOR:
        return False
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:  # no driver, no libraries: no GPU to run on
        return False


ON_GPU = _gpu_present()
kernels_run = pytest.mark.skipif(
    not (SIMULATOR or ON_GPU),
    reason="needs a CUDA GPU, or NUMBA_ENABLE_CUDASIM=1 in the environment "
           "(NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda_sim.py)",
)

if SIMULATOR or ON_GPU:
    from test_backends import ROIS, assert_close, check_backends, random_boxes, roi_features

    from tinymask.ops.backend import available_backends, get_backend, use_backend
    from tinymask.layers.conv import conv2d_backward, conv2d_forward
    from tinymask.layers.conv_transpose import conv_transpose2d_backward, conv_transpose2d_forward
    from tinymask.layers import roi_align_backward, roi_align_forward, roi_pool_backward, roi_pool_forward
    from tinymask.box_logic.mask_paste import paste_masks_in_image
    from tinymask.box_logic.nms import batched_nms, nms
    from tinymask.ops import get_ops

DTYPES = [np.float64, np.float32]


def on_cuda(forward, backward=None, inputs=(), kwargs=None):
    return check_backends(forward, backward, inputs, kwargs, backends=["cuda"])


# ---------------------------------------------------------------------------------------------------------------------
# The simulator
# ---------------------------------------------------------------------------------------------------------------------

@kernels_run
def test_switch_reports_where_the_kernels_run():
    ok, reason = available_backends()["cuda"]
    assert ok and ("simulator" in reason) == SIMULATOR, reason
    with use_backend("cuda"):
        assert get_backend() == "cuda"
        assert get_ops().NAME == "cuda"


@kernels_run
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride, padding, dilation", [(1, 1, 1), ((2, 1), (0, 2), (1, 2))])
def test_conv2d(dtype, stride, padding, dilation):
    rng = np.random.default_rng(1)
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in [(2, 3, 7, 6), (4, 3, 3, 3), (4,)])
    on_cuda(conv2d_forward, conv2d_backward, (x, w, b), dict(stride=stride, padding=padding, dilation=dilation))


@kernels_run
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv2d_grouped(dtype):
    """ResNeXt's grouped 3×3: the layer runs one plain CUDA convolution per group (the kernels know no groups)."""
    rng = np.random.default_rng(4)
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in [(2, 4, 6, 5), (6, 2, 3, 3), (6,)])
    on_cuda(conv2d_forward, conv2d_backward, (x, w, b), dict(stride=2, padding=1, groups=2))


@kernels_run
@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_transpose2d(dtype):
    rng = np.random.default_rng(2)
    x, w, b = (rng.standard_normal(s).astype(dtype) for s in [(2, 3, 4, 5), (3, 2, 3, 3), (2,)])
    on_cuda(conv_transpose2d_forward, conv_transpose2d_backward, (x, w, b), dict(stride=2, padding=1, output_padding=1))
    on_cuda(conv_transpose2d_forward, conv_transpose2d_backward, (x, w[:, :, :2, :2], b), dict(stride=2))  # mask head


@kernels_run
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("matmul", ["matmul_simple", "matmul"])
def test_simple_and_tiled_gemm(dtype, matmul):
    # The simple GEMM (one thread per output element) and the tiled one, against np.matmul: sizes that are not
    # multiples of the 16×16 tile, a batch broadcast against a 2-D operand, transposed views, an empty K.
    rng = np.random.default_rng(3)
    mm = getattr(get_ops("cuda"), matmul)
    a, b = rng.standard_normal((2, 17, 20)).astype(dtype), rng.standard_normal((20, 3)).astype(dtype)
    assert_close(mm(a, b), np.matmul(a, b), "batched @ 2-D")
    assert_close(mm(b.T, a.transpose(0, 2, 1)), np.matmul(b.T, a.transpose(0, 2, 1)), "2-D @ batched views")
    assert_close(mm(a[0], b), np.matmul(a[0], b), "2-D @ 2-D")
    assert_close(mm(a[:, :, :0], b[:0]), np.matmul(a[:, :, :0], b[:0]), "K = 0")
    assert_close(mm(a, a.transpose(0, 2, 1)), np.matmul(a, a.transpose(0, 2, 1)), "batched @ batched")


@kernels_run
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pair", ["simple", "implicit GEMM"])
def test_conv_kernels(dtype, pair):
    # The convolution's two kernel pairs, the simple one (im2col, the simple GEMM, col2im) and the implicit GEMM
    # (what the backend runs), against the reference's conv2d_forward / _backward: two images, 3·3·2 = 18 rows of
    # cols (two tiles along K), sizes off the 16×16 tile, stride and dilation that leave some input pixels in no window.
    rng = np.random.default_rng(5)
    cu, ref = get_ops("cuda"), get_ops("numpy")
    forward, backward = ((cu.conv2d_forward_simple, cu.conv2d_backward_simple) if pair == "simple"
                         else (cu.conv2d_forward, cu.conv2d_backward))
    x_pad = rng.standard_normal((2, 3, 8, 7)).astype(dtype)
    w = rng.standard_normal((5, 3, 3, 2)).astype(dtype)
    for stride, dilation in [((1, 1), (1, 1)), ((2, 1), (1, 2)), ((3, 2), (2, 1))]:
        expected, ref_saved = ref.conv2d_forward(x_pad, w, stride, dilation)
        dout = rng.standard_normal(expected.shape).astype(dtype)
        dx_ref, dw_ref = ref.conv2d_backward(dout, ref_saved, w, stride, dilation)
        out, saved = forward(x_pad, w, stride, dilation)
        dx_pad, dw = backward(dout, saved, w, stride, dilation)
        assert out.dtype == dx_pad.dtype == dw.dtype == dtype
        assert_close(out, expected, f"{pair} forward {stride} {dilation}")
        assert_close(dx_pad, dx_ref, f"{pair} dx {stride} {dilation}")
        assert_close(dw, dw_ref, f"{pair} dW {stride} {dilation}")


@kernels_run
@pytest.mark.parametrize("mode", ["avg", "max"])
@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("outside", ["zero", "edge"])
def test_roi_align(mode, aligned, outside):
    F = roi_features(np.float64, mode, (2, 2, 6, 7))
    on_cuda(roi_align_forward, roi_align_backward, (F, ROIS),
            dict(output_size=(2, 3), spatial_scale=0.8, sampling_ratio=-1, aligned=aligned, mode=mode, outside=outside))


@kernels_run
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_align_float32_fixed_sampling_and_no_rois(mode):
    F = roi_features(np.float32, mode, (2, 2, 6, 7))
    on_cuda(roi_align_forward, roi_align_backward, (F, ROIS[:5]),
            dict(output_size=2, spatial_scale=0.5, sampling_ratio=2, aligned=True, mode=mode))
    on_cuda(roi_align_forward, roi_align_backward, (F, np.zeros((0, 5))), dict(output_size=2, spatial_scale=0.5))


@kernels_run
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_align_device_resident(mode):
    # The GPU-resident entry points take device arrays and return device arrays, and agree with the reference.
    from numba import cuda

    from tinymask.layers.roi_align import check_roi_inputs
    F = roi_features(np.float32, mode, (2, 2, 6, 7))
    rois, batch, size = check_roi_inputs(F, ROIS, 2, 0.5)
    geometry = (size, 0.5, 2, True, mode, True)
    cu, ref = get_ops("cuda"), get_ops("numpy")
    expected, saved = ref.roi_align_forward(F, rois, batch, *geometry)
    d_rois, d_batch = cuda.to_device(rois), cuda.to_device(batch.astype(np.int64))
    d_out, d_arg = cu.roi_align_forward_device(cuda.to_device(F), d_rois, d_batch, *geometry)
    assert hasattr(d_out, "copy_to_host") and (d_arg is None) == (mode == "avg")
    assert_close(d_out.copy_to_host(), expected, "device forward")
    dout = np.random.default_rng(8).standard_normal(expected.shape).astype(np.float32)
    d_dF = cu.roi_align_backward_device(cuda.to_device(dout), d_arg, F.shape, d_rois, d_batch, *geometry)
    assert_close(d_dF.copy_to_host(), ref.roi_align_backward(dout, saved, F.shape, rois, batch, *geometry),
                 "device backward")
    with pytest.raises(TypeError, match="features must be float32 or float64, got int32"):
        cu.roi_align_forward_device(cuda.to_device(F.astype(np.int32)), d_rois, d_batch, *geometry)
    with pytest.raises(TypeError, match="rois on the GPU must be a C-contiguous float64"):
        cu.roi_align_forward_device(F, cuda.to_device(rois.astype(np.float32)), d_batch, *geometry)
    with pytest.raises(TypeError, match="features must be float32 or float64, got int64"):
        cu.roi_align_forward_device(F.astype(np.int64), rois, batch, *geometry)
    with pytest.raises(ValueError, match=r"features must have shape \(N, C, H, W\), got \(2, 6, 7\)"):
        cu.roi_align_forward_device(cuda.to_device(F[0]), d_rois, d_batch, *geometry)
    with pytest.raises(ValueError, match="rois must have shape"):
        cu.roi_align_forward_device(F, rois[:, 1:], batch, *geometry)
    with pytest.raises(ValueError, match=r"dout must have shape \(K, C, oh, ow\)"):
        cu.roi_align_backward_device(dout[:, :1], d_arg, F.shape, d_rois, d_batch, *geometry)


@kernels_run
@pytest.mark.parametrize("dtype", DTYPES)
def test_roi_pool(dtype):
    F = roi_features(dtype, "avg", (2, 2, 6, 7))
    F[0, 1, 2:4, 2:4] = 1.5  # a plateau: the first cell wins
    ref = on_cuda(roi_pool_forward, roi_pool_backward, (F, ROIS), dict(output_size=2, spatial_scale=0.7))
    _, cache = roi_pool_forward(F, ROIS, output_size=2, spatial_scale=0.7, backend="cuda")
    _, ref_cache = roi_pool_forward(F, ROIS, output_size=2, spatial_scale=0.7, backend="numpy")
    np.testing.assert_array_equal(cache[3], ref_cache[3])
    assert ref[0].shape == (len(ROIS), 2, 2, 2)


@kernels_run
@pytest.mark.parametrize("dtype", DTYPES)
def test_paste_masks(dtype):
    rng = np.random.default_rng(6)
    masks = rng.random((3, 5, 5)).astype(dtype)
    boxes = np.array([[1.2, 2.1, 9.7, 7.3], [-3.0, -2.0, 4.0, 3.0], [8.0, 6.0, 20.0, 15.0]], dtype=dtype)
    on_cuda(paste_masks_in_image, None, (masks, boxes, (10, 12)))


@kernels_run
@pytest.mark.parametrize("dtype", DTYPES)
def test_nms(dtype):
    # 150 boxes: three 64-box column blocks, so the bitmask crosses block boundaries.
    rng = np.random.default_rng(7)
    boxes = random_boxes(rng, 150, dtype)
    scores = np.round(rng.random(150), 1).astype(dtype)  # ties in score, broken by index
    for threshold in (0.0, 0.5, 0.7):
        on_cuda(nms, None, (boxes, scores, threshold))
    on_cuda(batched_nms, None, (boxes, scores, rng.integers(0, 3, 150), 0.5))
    at_threshold = np.array([[0, 0, 2, 1], [1, 0, 3, 1], [10, 10, 11, 11]], dtype=dtype)  # IoU exactly 1/3
    on_cuda(nms, None, (at_threshold, np.array([0.9, 0.8, 0.7], dtype=dtype), 1 / 3))
    on_cuda(nms, None, (boxes[:0], scores[:0], 0.5))


@kernels_run
def test_bench_gpu_runs(tmp_path, capsys):
    # benchmarks/bench_gpu.py end to end at its smoke size (in the simulator; on a GPU, at the same tiny size).
    import json
    import sys
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import bench_gpu

    assert bench_gpu.main(["--smoke", "--repeat", "1", "--json", str(tmp_path / "gpu.json")]) == 0
    rows = json.loads((tmp_path / "gpu.json").read_text())
    assert [r["case"] for r in rows] == ["RoIAlign fwd+bwd 6 RoIs x 2 ch, 2x2, P2 12x16"]
    assert rows[0]["on device"] > 0 and rows[0]["layer API"] > 0
    if "max |diff| out" in rows[0]:  # torchvision present: the cross-check agrees
        assert rows[0]["max |diff| out"] < 1e-5 and rows[0]["max |diff| dF"] < 1e-5
    assert "on device / torchvision" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------------------------------
# Compiled to PTX for a real GPU (the simulator off)
# ---------------------------------------------------------------------------------------------------------------------

def _ptx_unavailable() -> str | None:
    if SIMULATOR:
        return "the CUDA simulator is on; PTX compilation needs the real CUDA target"
    if not NUMBA_CUDA:
        return "numba-cuda not installed"
    try:
        from numba import cuda

        def probe(a):
            a[0] = 1.0

        cuda.compile_ptx(probe, "void(float32[::1])", cc=(8, 0))
    except Exception as e:  # no NVVM / NVRTC libraries
        return f"cannot compile PTX here ({type(e).__name__}: {str(e).splitlines()[0]})"
    return None


def test_kernels_compile_to_ptx(monkeypatch):
    reason = _ptx_unavailable()
    if reason is not None:
        if REQUIRE_PTX:
            pytest.fail(f"TINYMASK_REQUIRE_PTX=1, but {reason}", pytrace=False)
        pytest.skip(reason)
    import numba.cuda.dispatcher
    from numba import cuda
    from numba import types as T

    from tinymask.ops.cuda import convolution, device, gemm, masks_and_nms, roi_align, roi_pool

    # Device functions are compiled for "the current device"; there is none here, so name one: sm_80.
    monkeypatch.setattr(numba.cuda.dispatcher, "get_current_device",
                        lambda: types.SimpleNamespace(compute_capability=(8, 0)))

    def arr(dtype, ndim):
        return T.Array(dtype, ndim, "C")

    i64, b1 = T.int64, T.boolean
    for ft in (T.float32, T.float64):
        signatures = [
            (convolution._im2col_kernel, (arr(ft, 4), arr(ft, 3)) + (i64,) * 7),
            (convolution._col2im_kernel, (arr(ft, 3), arr(ft, 4)) + (i64,) * 8),
            (gemm._gemm_simple_kernel, (arr(ft, 3),) * 3),
            (gemm._make_tiled_gemm(ft), (arr(ft, 3),) * 3),
            (convolution._make_implicit_gemm_conv(ft), (arr(ft, 4), arr(ft, 2), arr(ft, 4)) + (i64,) * 7),
            (convolution._make_implicit_gemm_conv_dw(ft), (arr(ft, 4), arr(ft, 4), arr(ft, 2)) + (i64,) * 6),
            (convolution._make_implicit_gemm_conv_dx(ft), (arr(ft, 4), arr(ft, 2), arr(ft, 4)) + (i64,) * 6),
            (roi_align._roi_align_fwd_kernel,
             (arr(ft, 4), arr(T.float64, 2), arr(i64, 1), T.float64, i64, b1, b1, b1, arr(ft, 4), arr(T.int32, 4))),
            (roi_align._roi_align_bwd_kernel,
             (arr(ft, 4), arr(T.float64, 2), arr(i64, 1), T.float64, i64, b1, b1, b1, arr(T.int32, 4), arr(ft, 4))),
            (roi_pool._roi_pool_fwd_kernel, (arr(ft, 4), arr(i64, 1), arr(i64, 2), arr(ft, 4), arr(i64, 4))),
            (roi_pool._roi_pool_bwd_kernel, (arr(ft, 4), arr(i64, 4), arr(i64, 1), arr(ft, 3))),
            (device._fill_kernel, (arr(ft, 1), ft)),
            (masks_and_nms._paste_kernel, (arr(ft, 3), arr(i64, 2), arr(ft, 3))),
            (masks_and_nms._nms_mask_kernel, (arr(ft, 2), arr(ft, 1), ft, ft, arr(T.uint64, 2))),
        ]
        signatures.append((device._fill_kernel, (arr(T.int32, 1), i64)))  # the RoIAlign argmax: -1
        for kernel, signature in signatures:
            ptx, _ = cuda.compile_ptx(kernel.py_func, signature, cc=(8, 0))
            assert ".entry" in ptx, kernel.py_func.__name__
            if kernel is masks_and_nms._nms_mask_kernel:  # no fused multiply-add: IoUs round exactly as on the CPU
                assert "fma" not in ptx
