"""The benchmarks' own arithmetic: bench_model's FLOP counter and the interleaved best-of timer (on a fake clock;
the timings themselves are not tested)."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

from bench_model import FlopCounter  # noqa: E402

import tinymask.heads.mask_head
from tinymask.layers.conv import conv2d_forward
from tinymask.model import init_params, train_forward
from tiny import tiny_config  # noqa: E402


def test_flop_counter_counts_convs_deconvs_and_linears_where_the_model_calls_them():
    cfg = tiny_config()
    R = 5
    x = np.random.default_rng(0).standard_normal((R, 4, 4, 4))  # (R, C, 4, 4) RoI features for the mask head
    params = init_params(cfg, dtype=np.float64)
    with FlopCounter() as c:
        tinymask.heads.mask_head.mask_head_forward(params, x, cfg)
    # two 3x3 convs 4->4 on 4x4, a 2x2 deconv 4->4 to 8x8, a 1x1 conv 4->3 on 8x8; 2 FLOPs per multiply-add
    expected = 2 * R * (2 * 16 * 4 * 4 * 9 + 16 * 4 * 4 * 4 + 64 * 3 * 4)
    assert c.flops == expected
    assert tinymask.layers.conv.conv2d_forward is conv2d_forward  # the wrappers are removed on exit


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


def test_every_planted_bug_of_mutation_check_still_finds_its_code():
    # benchmarks/mutation_check.py plants each bug by replacing an exact text; a refactor that moves or rewrites that
    # text would leave the mutant planting nothing. Fail here, fast, instead (no test suite is run).
    import mutation_check

    ids = [m.id for m in mutation_check.MUTANTS]
    assert len(ids) == len(set(ids)), "mutant ids must be unique"
    assert len(ids) >= 15
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    planted = os.environ.get("TINYMASK_MUTANT")  # inside mutation_check's scratch copy: the bug planted there
    for m in mutation_check.MUTANTS:
        if m.id == planted:
            with open(os.path.join(root, m.file), encoding="utf-8") as f:
                assert m.new in f.read()
        else:
            mutation_check.locate(m, root)  # the old text occurs exactly once, and the new text differs
        for t in m.tests:
            assert os.path.isfile(os.path.join(root, t.split("::")[0])), f"{m.id}: no test file {t}"


def test_profile_iteration_accounts_for_the_whole_iteration(monkeypatch):
    # one tiny profiled iteration: every stage is timed, the rows add up to the iteration, and the wrappers are gone
    import profile_iteration
    import tinymask.model

    originals = {name: getattr(tinymask.model, name) for _, name in profile_iteration.FORWARD_STAGES}
    dataset = profile_iteration.ShapesDataset
    monkeypatch.setattr(profile_iteration, "ShapesDataset", lambda split, n, seed: dataset(split, 8, seed=seed))
    result = profile_iteration.profile("numpy", iterations=1, warmup=0)
    labels = [label for label, _ in result["rows"]]
    stages = profile_iteration.FORWARD_STAGES + profile_iteration.BACKWARD_STAGES
    assert len(labels) == len(set(labels)) == len(stages) + 4  # + data, rest of forward, rest of backward, step
    assert all(seconds >= 0 for label, seconds in result["rows"] if not label.startswith("rest of"))
    assert sum(s for _, s in result["rows"]) == pytest.approx(result["iteration"])
    assert result["gflop"] > 0
    assert all(getattr(tinymask.model, name) is fn for name, fn in originals.items())


def test_compare_revisions_reports_every_difference_but_timings():
    from compare_revisions import differences

    a = [{"iteration": 1, "loss": 0.5, "lr": 0.01, "time": 0.3}, {"iteration": 1, "mask_AP": 0.25, "eval_seconds": 2}]
    same = [{"iteration": 1, "loss": 0.5, "lr": 0.01, "time": 9.9}, {"iteration": 1, "mask_AP": 0.25, "eval_seconds": 7}]
    assert differences(a, same) == []
    other = [{"iteration": 1, "loss": 0.5000000000000001, "lr": 0.01, "time": 0.3}, {"iteration": 1, "mask_AP": 0.25}]
    assert differences(a, other) == ["line 1 (iteration 1): loss 0.5 != 0.5000000000000001"]
    assert differences(a, a[:1]) == ["2 log lines against 1"]
