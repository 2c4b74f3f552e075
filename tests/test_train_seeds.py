"""benchmarks/train_seeds.py: a smoke run of two recipes (3 iterations of a few images), its spike arithmetic on a
made-up log, and the notebooks' recipe as the benchmark knows it."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import train_seeds  # noqa: E402


def test_spike_stats_finds_the_worst_jump_and_the_term_behind_it():
    steps = [{"iteration": t + 1, "lr": 0.02, "grad_norm": 3.0, "loss": 2.0, "loss_classifier": 1.0,
              "loss_mask": 1.0} for t in range(30)]
    steps[25].update(loss=10.0, loss_classifier=9.0, grad_norm=50.0, clip_scale=0.2)
    s = train_seeds.spike_stats(steps)
    assert s["worst_spike"] == 5.0 and s["spike_at"] == 26 and s["spike_term"] == "loss_classifier"
    assert s["max_grad_norm"] == 50.0 and s["clipped"] == 1


def test_a_smoke_run_prints_one_row_per_recipe(capsys):
    rc = train_seeds.main(["--recipes", "notebook,ablate-fpn", "--seeds", "1", "--iterations", "2",
                           "--num-train", "4"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| notebook | 0.02 | 4 |" in out and "| ablate-fpn | 0.02 | 2 |" in out


def test_first_seed_adds_seeds_to_an_earlier_table(tmp_path, capsys):
    path = tmp_path / "runs.json"
    rc = train_seeds.main(["--recipes", "notebook", "--seeds", "1", "--first-seed", "3", "--iterations", "2",
                           "--num-train", "4", "--json", str(path)])
    assert rc == 0 and "seeds 3..3" in capsys.readouterr().err
    runs = json.loads(path.read_text())
    runs = runs["runs"] if isinstance(runs, dict) else runs
    assert [r["seed"] for r in runs] == [3]


def test_the_notebook_recipe_is_the_one_the_notebooks_train_with():
    r = train_seeds.NOTEBOOK_RECIPE
    # 01 and 08 (300 iterations), 05 / 09 / 10 (the same cell, 150): lr 0.02, the Recipe's default clipping
    for name in ("01_tour", "08_training", "05_rpn", "09_inference_and_evaluation", "10_inspect_weights"):
        source = open(os.path.join(ROOT, "notebooks", f"{name}.py"), encoding="utf-8").read()
        assert source.count(f"batch_size=1 if SMOKE else {r['batch_size']}, lr=0.02") == 1, name
        assert source.count(f"warmup_iters={r['warmup_iters']}, eval_every={r['eval_every']}") == 1, name
        if name not in ("01_tour", "08_training"):
            assert "clip_grad_norm" not in source, name  # the shared training cell leaves the Recipe's default


def test_the_shipped_recipes_clip_and_zero_turns_it_off():
    import argparse

    import pytest

    from tinymask.training.ablations import make_setting
    from tinymask.cli.commands import _recipe_overrides
    from tinymask.training.recipe import Recipe

    assert Recipe().clip_grad_norm == 10.0 and make_setting("quick").clip_grad_norm == 5.0
    assert make_setting("full", clip_grad_norm=0).clip_grad_norm is None
    with pytest.raises(ValueError, match="clip_grad_norm"):
        Recipe(clip_grad_norm=0)
    names = ("iterations", "batch_size", "lr", "warmup", "weight_decay", "momentum", "clip_grad_norm", "eval_every",
             "seed", "trainable_backbone_layers")
    args = argparse.Namespace(**{n: None for n in names})
    args.clip_grad_norm = 0.0
    assert _recipe_overrides(args) == {"clip_grad_norm": None}
