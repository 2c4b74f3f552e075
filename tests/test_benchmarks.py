"""The benchmarks' own arithmetic: bench_model's FLOP counter and the interleaved best-of timer (on a fake clock;
the timings themselves are not tested)."""
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

from bench_model import FlopCounter  # noqa: E402

import tinymask.mask_head  # noqa: E402
from tinymask.layers.conv import conv2d_forward  # noqa: E402
from tinymask.model import init_params, train_forward  # noqa: E402
from tiny import tiny_config  # noqa: E402


def test_flop_counter_counts_convs_deconvs_and_linears_where_the_model_calls_them():
    cfg = tiny_config()
    R = 5
    x = np.random.default_rng(0).standard_normal((R, 4, 4, 4))  # (R, C, 4, 4) RoI features for the mask head
    params = init_params(cfg, dtype=np.float64)
    with FlopCounter() as c:
        tinymask.mask_head.mask_head_forward(params, x, cfg)
    # two 3x3 convs 4->4 on 4x4, a 2x2 deconv 4->4 to 8x8, a 1x1 conv 4->3 on 8x8; 2 FLOPs per multiply-add
    expected = 2 * R * (2 * 16 * 4 * 4 * 9 + 16 * 4 * 4 * 4 + 64 * 3 * 4)
    assert c.flops == expected
    assert tinymask.mask_head.conv2d_forward is conv2d_forward  # the wrappers are removed on exit


def test_flop_counter_sees_a_whole_training_forward():
    cfg = tiny_config()
    params = init_params(cfg, dtype=np.float64)
    image = np.random.default_rng(0).random((3, 48, 48))
    target = {"boxes": np.array([[4.0, 6, 30, 28]]), "labels": np.array([1]),
              "masks": np.pad(np.ones((22, 26), np.uint8), ((6, 20), (4, 18)))[None]}
    with FlopCounter() as c:
        train_forward(params, cfg, [image], [target], np.random.default_rng(0))
    stem = 2 * 4 * 24 * 24 * 3 * 49  # the 7x7/2 stem conv alone: 4 filters over 24x24 outputs of 3x7x7
    assert c.flops > stem


def test_best_times_interleaves_the_contenders_and_keeps_each_ones_best(monkeypatch):
    import bench_conv
    clock = [0.0]  # a fake clock, so that nothing here depends on real time
    monkeypatch.setattr(bench_conv.time, "perf_counter", lambda: clock[0])
    calls = []
    durations = {"a": iter([9.0, 3.0, 1.0]), "b": iter([9.0, 2.0, 4.0])}  # warm-up, then two rounds

    def contender(name):
        def run():
            calls.append(name)
            clock[0] += next(durations[name])
        return run

    best = bench_conv.best_times({"a": contender("a"), "b": contender("b")}, repeat=2)
    assert calls == ["a", "b", "a", "b", "a", "b"]  # warm-ups, then rounds a, b, a, b
    assert best == {"a": 1.0, "b": 2.0}


def test_bench_gpu_says_when_there_is_no_gpu(capsys, monkeypatch):
    import bench_gpu

    monkeypatch.delenv("NUMBA_ENABLE_CUDASIM", raising=False)
    monkeypatch.setattr(bench_gpu, "available_backends", lambda: {"cuda": (False, "no CUDA GPU found")})
    assert bench_gpu.main(["--repeat", "1"]) == 2
    assert "bench_gpu: needs a CUDA GPU: no CUDA GPU found" in capsys.readouterr().err
    monkeypatch.setenv("NUMBA_ENABLE_CUDASIM", "1")  # the simulator counts only with --smoke
    monkeypatch.setattr(bench_gpu, "available_backends", lambda: {"cuda": (True, "CUDA simulator")})
    assert bench_gpu.main(["--repeat", "1"]) == 2
    assert "the CUDA simulator is on (use --smoke)" in capsys.readouterr().err
