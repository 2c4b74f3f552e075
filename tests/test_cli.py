"""The command line: help texts, a tiny train -> eval -> predict round trip, resume, and one-line errors."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tinymask.cli import main
from tinymask.config import MaskRCNNConfig
from tinymask.weights.npz import save_npz
from tiny import tiny_shapes_config

def tiny_config(**overrides) -> MaskRCNNConfig:
    """tests/tiny.py's model with the shapes classes, keeping every detection (so predict draws something)."""
    return tiny_shapes_config(**{"box_score_thresh": 0.0, **overrides})


@pytest.mark.parametrize("command,expected", [
    ("train", ["--config", "--preset", "--data", "--images", "--val-data", "--val-images", "--iterations",
               "--batch-size", "--lr", "--out", "--seed", "--resume", "--eval-every", "--num-train", "--num-val",
               "70% and 90%", "--threads"]),
    ("eval", ["--checkpoint", "--data", "--images", "--out", "--threads"]),
    ("predict", ["IMAGE", "--checkpoint", "--config", "--weights", "--score-threshold", "--threads"]),
])
def test_help(command, expected, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for option in expected:
        assert option in text, option


def test_threads_are_set_before_numpy_loads():
    """--threads sets the environment before anything imports NumPy, so the BLAS starts with that many threads."""
    code = ("import os, sys\n"
            "from tinymask.cli import main\n"
            "assert 'numpy' not in sys.modules, 'the CLI imported NumPy too early'\n"
            "assert main(['eval', '--checkpoint', 'no/such/folder', '--threads', '3']) == 1\n"
            "assert 'numpy' in sys.modules\n"
            "assert os.environ['OPENBLAS_NUM_THREADS'] == '3' and os.environ['OMP_NUM_THREADS'] == '3'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")})
    assert result.returncode == 0, result.stderr
    with pytest.raises(SystemExit) as info:
        main(["eval", "--checkpoint", "x", "--threads", "0"])
    assert info.value.code == 2


def test_threads_can_be_limited_after_numpy_loads():
    """threadpoolctl reaches the BLAS NumPy already loaded: a notebook can limit it in any cell."""
    code = ("import numpy as np\n"
            "from tinymask.ops.threads import blas_threads, limit_threads\n"
            "limit_threads(2)\n"
            "assert blas_threads() and set(blas_threads()) == {2}, blas_threads()\n"
            "limit_threads(1)\n"
            "assert set(blas_threads()) == {1}, blas_threads()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    from tinymask.ops.threads import limit_threads
    with pytest.raises(ValueError, match="positive integer"):
        limit_threads(0)


def test_demo_and_info_are_kept(capsys):
    assert main(["info"]) == 0
    assert "tinymask" in capsys.readouterr().out


def test_train_eval_predict_round_trip(tmp_path, capsys):
    config = tmp_path / "tiny.json"
    tiny_config().save(config)
    out = tmp_path / "run"
    args = ["train", "--config", str(config), "--num-train", "4", "--num-val", "2", "--iterations", "2",
            "--batch-size", "2", "--eval-every", "1", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "Average Precision" in printed and "mask AP" in printed and "wall time" in printed
    for name in ("log.jsonl", "loss_curves.png", "eval.json", "best/weights.npz", "best/config.json",
                 "last/weights.npz", "last/config.json"):
        assert (out / name).is_file(), name
    assert [json.loads(line)["iteration"] for line in open(out / "log.jsonl") if "loss" in line] == [1, 2]

    # resume with more iterations: continues from iteration 2
    assert main(["train", "--out", str(out), "--resume", "--iterations", "3", "--eval-every", "0",
                 "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    assert [json.loads(line)["iteration"] for line in open(out / "log.jsonl") if "loss" in line] == [1, 2, 3]

    # eval: the table, and eval.json
    assert main(["eval", "--checkpoint", str(out / "best"), "--out", str(tmp_path / "e.json")]) == 0
    printed = capsys.readouterr().out
    assert "segm (mask AP)" in printed and "IoU=0.75" in printed
    saved = json.loads((tmp_path / "e.json").read_text())
    assert saved["num_images"] == 2 and "AP" in saved["segm"]
    # the same weights as --config + --weights (the checkpoint's optimizer state is left out), same numbers
    assert main(["eval", "--config", str(out / "best" / "config.json"), "--weights", str(out / "best" / "weights.npz"),
                 "--num-val", "2", "--out", str(tmp_path / "e2.json")]) == 0
    capsys.readouterr()
    assert json.loads((tmp_path / "e2.json").read_text())["segm"] == saved["segm"]

    # predict delegates to tinymask.evaluation.predict.run_predict
    pytest.importorskip("tinymask.evaluation.predict")
    from PIL import Image

    from tinymask.data.shapes import ShapesDataset
    image = (ShapesDataset("test", 1)[0]["image"].transpose(1, 2, 0) * 255).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "shape.png")
    assert main(["predict", str(tmp_path / "shape.png"), "--checkpoint", str(out / "last"),
                 "--out", str(tmp_path / "pred"), "--score-threshold", "0"]) == 0
    assert "detection(s)" in capsys.readouterr().out
    assert (tmp_path / "pred" / "results.json").is_file()
    assert os.path.isfile(tmp_path / "pred" / "shape.png")


@pytest.mark.parametrize("argv,message", [
    (["train", "--data", "{tmp}/missing.json", "--images", "{tmp}"], "annotation file not found"),
    (["train", "--data", "{tmp}/ann.json"], "--data needs --images"),
    (["train", "--config", "{tmp}/nope.json", "--out", "{tmp}/r"], "config file not found"),
    (["train", "--config", "{tmp}/bad.json", "--out", "{tmp}/r"], "not valid JSON"),
    (["train", "--config", "{tmp}/wrong_classes.json", "--out", "{tmp}/r"], "num_classes=3"),
    (["train", "--resume", "--out", "{tmp}/none"], "checkpoint folder not found"),
    (["train", "--data", "{tmp}/ann.json", "--images", "{tmp}", "--num-train", "3"], "for the shapes data set"),
    (["train", "--data", "{tmp}/ann.json", "--images", "{tmp}"], "ann.json"),  # not a COCO file: named
    (["eval", "--checkpoint", "{tmp}/none"], "checkpoint folder not found"),
    (["eval"], "give --checkpoint"),
    (["eval", "--config", "{tmp}/wrong_classes.json", "--weights", "{tmp}/w.npz"], "weights file not found"),
    (["eval", "--config", "{tmp}/wrong_classes.json", "--weights", "{tmp}/other.npz"], "does not fit the model of"),
    (["predict", "{tmp}/x.png", "--checkpoint", "{tmp}/none"], "not found"),
])
def test_errors_are_one_line(argv, message, tmp_path, capsys):
    (tmp_path / "ann.json").write_text("[1, 2]")
    (tmp_path / "bad.json").write_text("{")
    tiny_config(num_classes=3, class_names=[]).save(tmp_path / "wrong_classes.json")
    save_npz(tmp_path / "other.npz", {"conv.weight": np.zeros((2, 2, 3, 3), np.float32)})
    code = main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    err = capsys.readouterr().err
    assert code == 1
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def test_backend_option_runs_the_command_on_that_backend_and_restores_the_choice(tmp_path, capsys, monkeypatch):
    from tinymask.ops.backend import available_backends, get_backend
    monkeypatch.delenv("TINYMASK_BACKEND", raising=False)
    config = tmp_path / "tiny.json"
    tiny_config().save(config)
    name = "numba" if available_backends()["numba"][0] else "numpy"
    seen = []
    import tinymask.training.loop
    real_train = tinymask.training.loop.train  # what the command calls, to see the backend it runs under
    monkeypatch.setattr(tinymask.training.loop, "train", lambda *a, **k: (seen.append(get_backend()), real_train(*a, **k))[1])
    assert main(["train", "--config", str(config), "--num-train", "2", "--num-val", "1", "--iterations", "1",
                 "--batch-size", "1", "--eval-every", "0", "--out", str(tmp_path / "r"), "--no-progress",
                 "--backend", name]) == 0
    assert seen == [name] and f"kernels: {name} backend" in capsys.readouterr().out
    assert get_backend() == "numpy"  # the command's choice does not outlive it


def test_unavailable_backend_is_a_one_line_error(tmp_path, capsys):
    from tinymask.ops.backend import available_backends
    if available_backends()["cuda"][0]:
        pytest.skip("this machine can run the cuda backend")
    code = main(["eval", "--checkpoint", str(tmp_path / "none"), "--backend", "cuda"])
    err = capsys.readouterr().err
    assert code == 1 and "--backend cuda" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
