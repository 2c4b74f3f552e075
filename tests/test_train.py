"""The training loop at a tiny size: exact resume, reproducibility, atomic checkpoints, the NaN stop, the data order."""
import json
import os

import numpy as np
import pytest

from tinymask.config import MaskRCNNConfig
from tinymask.data.shapes import ShapesDataset
from tinymask.training.batches import batch_for_iteration, load_batch
from tinymask.training.loop import train
from tinymask.training.recipe import Recipe
from tinymask.training.divergence import TrainingDiverged
from tinymask.weights.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from tiny import tiny_shapes_config

def tiny_config(**overrides) -> MaskRCNNConfig:
    """tests/tiny.py's model with the shapes data set's four classes."""
    return tiny_shapes_config(**overrides)


@pytest.fixture(scope="module")
def data():
    return ShapesDataset("train", 6, image_size=48), ShapesDataset("val", 3, image_size=48)


def recipe(**overrides):
    base = dict(iterations=4, batch_size=2, lr=0.02, warmup_iters=2, decay_at=[0.5], eval_every=0)
    base.update(overrides)
    return Recipe(**base)


def run(tmp_path, name, data, r, val=False, plot=False, **kwargs):
    out = tmp_path / name
    summary = train(tiny_config(), r, data[0], data[1] if val else None, out, progress=False,
                    print_fn=lambda *a: None, plot=plot, **kwargs)
    return out, summary


def read_log(path):
    return [json.loads(line) for line in open(path)]


# ---------------------------------------------------------------------------------------------------------------

def test_resumed_run_is_bit_identical(tmp_path, data):
    r = recipe(iterations=3)  # warm-up over iterations 0-1, lr step at 2: the resumed part crosses the step
    full, _ = run(tmp_path, "full", data, r)
    part, summary = run(tmp_path, "part", data, r, stop_after=2)  # "interrupted" after 2 of 3 iterations
    assert summary["iteration"] == 2 and load_checkpoint(part / "last")[2]["iteration"] == 2
    with open(part / "log.jsonl", "a") as f:  # an iteration the interrupted run did after its checkpoint
        f.write(json.dumps({"iteration": 3, "loss": 1.0}) + "\n")
    run(tmp_path, "part", data, r, resume=True)
    p_full, _, meta_full, v_full = load_checkpoint(full / "last")
    p_part, _, meta_part, v_part = load_checkpoint(part / "last")
    assert meta_full["iteration"] == meta_part["iteration"] == 3
    assert set(p_full) == set(p_part) and set(v_full) == set(v_part) and v_full
    for k in p_full:
        np.testing.assert_array_equal(p_full[k], p_part[k], err_msg=k)
    for k in v_full:
        np.testing.assert_array_equal(v_full[k], v_part[k], err_msg=k)
    # the log of the resumed run: one record per iteration, the stale line replaced, the same losses
    full_log, part_log = read_log(full / "log.jsonl"), read_log(part / "log.jsonl")
    assert [r["iteration"] for r in part_log] == [1, 2, 3]
    assert [r["lr"] for r in part_log] == pytest.approx([0.02 * 0.001, 0.02 * (0.001 + 0.999 / 2), 0.002])
    assert [r["loss"] for r in part_log] == [r["loss"] for r in full_log]


def test_ctrl_c_saves_the_iterations_done(tmp_path, data, monkeypatch):
    import tinymask.training.loop as T

    stopped, _ = run(tmp_path, "stopped", data, recipe(), stop_after=2)
    real, calls = T.train_forward, []

    def interrupt_third_iteration(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)
    monkeypatch.setattr(T, "train_forward", interrupt_third_iteration)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "interrupted", data, recipe())
    p_a, _, meta_a, v_a = load_checkpoint(stopped / "last")
    p_b, _, meta_b, v_b = load_checkpoint(tmp_path / "interrupted" / "last")
    assert meta_a["iteration"] == meta_b["iteration"] == 2
    assert all(np.array_equal(p_a[k], p_b[k]) for k in p_a) and all(np.array_equal(v_a[k], v_b[k]) for k in v_a)


def test_same_seed_same_run_other_seed_other_run(tmp_path, data):
    a, _ = run(tmp_path, "a", data, recipe(iterations=2))
    b, _ = run(tmp_path, "b", data, recipe(iterations=2))
    c, _ = run(tmp_path, "c", data, recipe(iterations=2, seed=1))
    pa, pb, pc = (load_checkpoint(x / "last")[0] for x in (a, b, c))
    assert all(np.array_equal(pa[k], pb[k]) for k in pa)
    assert not all(np.array_equal(pa[k], pc[k]) for k in pa)
    log = read_log(a / "log.jsonl")
    for record in log:  # every loss term, lr and time of every iteration
        assert {"iteration", "loss", "loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg",
                "loss_mask", "lr", "time", "grad_norm"} <= set(record)
    assert log[0]["lr"] == pytest.approx(0.02 * 0.001)  # warm-up starts at warmup_factor · lr


def test_evaluation_writes_best_last_and_curves(tmp_path, data):
    out, summary = run(tmp_path, "ev", data, recipe(iterations=2, eval_every=1), val=True, plot=True)
    for name in ("log.jsonl", "loss_curves.png", "eval.json", "last/weights.npz", "last/config.json",
                 "last/eval.json", "best/weights.npz", "best/config.json"):
        assert (out / name).is_file(), name
    assert sorted(os.listdir(out)) == ["best", "eval.json", "last", "log.jsonl", "loss_curves.png"]
    evals = [r for r in read_log(out / "log.jsonl") if "mask_AP" in r]
    assert [r["iteration"] for r in evals] == [1, 2]
    best = load_checkpoint(out / "best")[2]["best"]
    assert best["mask_AP"] == max(r["mask_AP"] for r in evals)
    assert summary["segm"]["AP"] == evals[-1]["mask_AP"] and summary["bbox"]["AP"] == evals[-1]["box_AP"]
    assert (out / "loss_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileExistsError, match="--resume"):  # never silently overwrite a run
        run(tmp_path, "ev", data, recipe(iterations=2))


def test_checkpoint_write_failure_keeps_the_previous_one(tmp_path, monkeypatch):
    cfg = tiny_config()
    params = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    save_checkpoint(tmp_path / "last", params, cfg, {"iteration": 1}, {"w": np.ones((2, 3), np.float32)})
    before = {name: (tmp_path / "last" / name).read_bytes() for name in os.listdir(tmp_path / "last")}

    def fail(self, path):  # the weights are written, then the disk fills up
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(MaskRCNNConfig, "save", fail)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(tmp_path / "last", {"w": params["w"] + 1}, cfg, {"iteration": 2})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["last"]  # no temporary folders left behind
    assert {name: (tmp_path / "last" / name).read_bytes() for name in os.listdir(tmp_path / "last")} == before
    p, _, meta, velocity = load_checkpoint(tmp_path / "last")
    assert meta["iteration"] == 1 and np.array_equal(p["w"], params["w"]) and velocity["w"].sum() == 6


def test_crash_between_the_renames_is_recovered(tmp_path, monkeypatch):
    cfg = tiny_config()
    save_checkpoint(tmp_path / "last", {"w": np.zeros(2, np.float32)}, cfg, {"iteration": 1})
    real_rename, calls = os.rename, []

    def crash_on_second(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt  # after last/ -> .last.old/, before .last.new/ -> last/
        real_rename(src, dst)
    monkeypatch.setattr(os, "rename", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "last", {"w": np.ones(2, np.float32)}, cfg, {"iteration": 2})
    monkeypatch.undo()
    assert not (tmp_path / "last").exists()
    assert resolve_checkpoint(tmp_path / "last").endswith(".last.old")  # the previous, complete checkpoint
    assert load_checkpoint(tmp_path / "last")[2]["iteration"] == 1
    save_checkpoint(tmp_path / "last", {"w": np.ones(2, np.float32)}, cfg, {"iteration": 3})
    assert os.listdir(tmp_path) == ["last"] and load_checkpoint(tmp_path / "last")[2]["iteration"] == 3


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # overflow on the way to NaN is the point
def test_nan_stops_with_a_message_and_keeps_the_last_good_checkpoint(tmp_path, data):
    out, _ = run(tmp_path, "nan", data, recipe(iterations=6, warmup_iters=0), stop_after=1)
    good = (out / "last" / "weights.npz").read_bytes()
    with pytest.raises(TrainingDiverged) as info:
        run(tmp_path, "nan", data, recipe(iterations=6, warmup_iters=0, lr=1e12), resume=True)
    message = str(info.value)
    assert message.startswith("training diverged at iteration ") and "lr 1e+12" in message
    assert "learning rate too high for the batch size" in message
    assert "NaN" in message or "nan" in message or "inf" in message
    assert "iteration 1" in message and str(out / "last") in message
    assert (out / "last" / "weights.npz").read_bytes() == good
    assert sorted(os.listdir(out)) == ["last", "log.jsonl"]  # no temporary folders


def test_nan_loss_names_the_loss(tmp_path, data, monkeypatch):
    import tinymask.training.loop as T

    real = T.train_forward

    def nan_mask(*args, **kwargs):
        losses, cache = real(*args, **kwargs)
        return dict(losses, loss_mask=np.float32(np.nan)), cache
    monkeypatch.setattr(T, "train_forward", nan_mask)
    with pytest.raises(TrainingDiverged, match=r"at iteration 1 \(lr 2e-05\): loss_mask is nan\. .*No checkpoint"):
        run(tmp_path, "nan2", data, recipe(iterations=2))


def blow_up_at(monkeypatch, iteration: int, *, loss=None, grad_scale=None):
    """Make the training loop's iteration `iteration` (1-based) blow up while staying finite."""
    import tinymask.training.loop as T

    real_forward, real_backward, calls = T.train_forward, T.train_backward, {"n": 0}

    def forward(*args, **kwargs):
        calls["n"] += 1
        losses, cache = real_forward(*args, **kwargs)
        if loss is not None and calls["n"] == iteration:
            losses = dict(losses, loss_classifier=np.float32(loss))
        return losses, cache

    def backward(cache):
        grads = real_backward(cache)
        if grad_scale is not None and calls["n"] == iteration:
            grads = {k: g * np.float32(grad_scale) for k, g in grads.items()}
        return grads
    monkeypatch.setattr(T, "train_forward", forward)
    monkeypatch.setattr(T, "train_backward", backward)


@pytest.mark.parametrize("blow_up, words", [
    (dict(loss=1e17), r"the loss jumped to 1e\+17, .* times its median .* over the last 14 iterations"),
    (dict(grad_scale=1e8), r"the gradient's norm jumped to .* times its median .* over the last 14 iterations"),
])
def test_a_finite_blow_up_stops_the_run_before_it_is_saved(tmp_path, data, monkeypatch, blow_up, words):
    """Issue: a loss of 1e17 (finite) used to be checkpointed over the last good model. The guard stops the run at
    that iteration, before its update and before the checkpoint that iteration 15 would have written."""
    blow_up_at(monkeypatch, 15, **blow_up)
    with pytest.raises(TrainingDiverged, match=r"at iteration 15 \(lr .*\): " + words) as info:
        run(tmp_path, "blow", data, recipe(iterations=20, eval_every=5, warmup_iters=0, lr=0.001))
    assert "The last good checkpoint (iteration 10) is kept in" in str(info.value)
    assert load_checkpoint(tmp_path / "blow" / "last")[2]["iteration"] == 10
    assert [r["iteration"] for r in read_log(tmp_path / "blow" / "log.jsonl")][-1] == 14


def test_the_guard_reads_a_resumed_runs_history_from_its_log(tmp_path, data, monkeypatch):
    out, _ = run(tmp_path, "resumed", data, recipe(iterations=20, eval_every=5, warmup_iters=0, lr=0.001),
                 stop_after=12)
    blow_up_at(monkeypatch, 2, loss=1e17)  # the resumed run's second iteration, 14
    with pytest.raises(TrainingDiverged, match=r"at iteration 14 .*over the last 13 iterations"):
        run(tmp_path, "resumed", data, recipe(iterations=20, eval_every=5, warmup_iters=0, lr=0.001), resume=True)


def test_early_iterations_are_judged_on_being_finite_only(tmp_path, data, monkeypatch):
    blow_up_at(monkeypatch, 3, loss=1e6)  # fewer than MIN_HISTORY iterations known: not judged
    run(tmp_path, "early", data, recipe(iterations=4, warmup_iters=0, lr=0.001))


def test_batches_are_full_and_cover_each_epoch():
    seen = np.concatenate([batch_for_iteration(10, 3, 0, t) for t in range(3)])  # epoch 0: 3 batches of 3
    assert len(set(seen.tolist())) == 9
    assert all(len(batch_for_iteration(10, 3, 0, t)) == 3 for t in range(7))
    np.testing.assert_array_equal(batch_for_iteration(10, 3, 5, 4), batch_for_iteration(10, 3, 5, 4))
    assert sorted(batch_for_iteration(2, 4, 0, 0).tolist()) == [0, 1]  # smaller than a batch: all of it


def test_flips_are_seeded_per_iteration(data):
    images_a, targets_a = load_batch(data[0], [0, 1, 2, 3], seed=0, iteration=5, flip_prob=0.5)
    images_b, _ = load_batch(data[0], [0, 1, 2, 3], seed=0, iteration=5, flip_prob=0.5)
    assert all(np.array_equal(a, b) for a, b in zip(images_a, images_b))
    assert set(targets_a[0]) == {"boxes", "labels", "masks"}
    flipped = [any(not np.array_equal(load_batch(data[0], [i], 0, t, 0.5)[0][0], data[0][i]["image"])
                   for t in range(8)) for i in range(2)]
    assert all(flipped)


def test_progress_bar_and_messages_go_to_stderr(tmp_path, data, capsys):
    """tqdm draws the bar (iterations, rate, lr, the loss terms); evaluations print a line above it."""
    train(tiny_config(), recipe(iterations=2, eval_every=2), data[0], data[1], tmp_path / "run", progress=True,
          print_fn=lambda *a: None, plot=False)
    err = capsys.readouterr().err
    assert "2/2" in err and ("it/s" in err or "s/it" in err)
    assert "lr 1.00e-03 | loss " in err and " mask " in err and " cls " in err  # the last update is in the warm-up
    assert "evaluating at iteration 2 on 3 images" in err and "iteration 2: box AP" in err
    train(tiny_config(), recipe(iterations=2, eval_every=2), data[0], data[1], tmp_path / "quiet", progress=False,
          print_fn=lambda *a: None, plot=False)
    assert capsys.readouterr().err == ""


def test_recipe_validation():
    with pytest.raises(ValueError, match="iterations"):
        Recipe(iterations=0)
    with pytest.raises(ValueError, match="unknown recipe"):
        Recipe.from_dict({"iterations": 3, "speed": 11})
    assert Recipe.from_dict(Recipe().to_dict()) == Recipe()
    assert Recipe(iterations=1000).schedule().steps == [700, 900]


@pytest.mark.slow
def test_small_preset_learns_shapes(tmp_path):
    """End to end through the CLI (a few minutes on one core): the `small` preset, 150 iterations of 4 images,
    must detect shapes on held-out images well above chance. The thresholds are far below what such a run reaches
    (about 0.3 box and mask AP50), so they catch a model that does not learn, not a small regression."""
    import subprocess
    import sys

    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "tinymask.cli", "train", "--iterations", "150", "--warmup", "50",
                             "--num-train", "600", "--num-val", "30", "--eval-every", "0", "--out", str(out),
                             "--threads", "1", "--no-progress"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wall time" in result.stdout
    report = json.loads((out / "eval.json").read_text())
    assert report["num_images"] == 30 and report["iteration"] == 150
    assert report["bbox"]["AP50"] > 0.1 and report["segm"]["AP50"] > 0.1, report
    log = [r for r in read_log(out / "log.jsonl") if "loss" in r]
    assert np.mean([r["loss"] for r in log[-20:]]) < 0.75 * np.mean([r["loss"] for r in log[:20]])


def test_a_checkpoint_written_before_the_layout_move_still_loads_and_resumes(tmp_path, data):
    """tests/data/checkpoint_before_layout: written by tinymask before its modules moved into subpackages (2 of 4
    iterations of `recipe()` on `data`, evaluated at 2). It loads for inference and a resumed run finishes it."""
    import shutil

    from tinymask.model import init_params
    from tinymask.weights.checkpoint import checkpoint_metadata, load_model

    source = os.path.join(os.path.dirname(__file__), "data", "checkpoint_before_layout")
    shutil.copytree(source, tmp_path / "run")
    params, cfg = load_model(checkpoint_dir=tmp_path / "run" / "last")
    assert cfg.to_dict() == tiny_config().to_dict() and set(params) == set(init_params(cfg))
    metadata = checkpoint_metadata(tmp_path / "run" / "last")
    assert metadata["iteration"] == 2 and metadata["format"] == "tinymask-checkpoint-1"
    summary = train(cfg, Recipe.from_dict(metadata["recipe"]), data[0], data[1], tmp_path / "run", resume=True,
                    progress=False, print_fn=lambda *a: None, plot=False)
    assert summary["iteration"] == 4 and summary["segm"] is not None
    assert [r["iteration"] for r in read_log(tmp_path / "run" / "log.jsonl") if "loss" in r] == [1, 2, 3, 4]
