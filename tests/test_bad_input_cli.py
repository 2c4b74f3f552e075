"""Bad input and faults at the command line and in the files tinymask reads and writes: one line, never a traceback.

Every case runs `tinymask` (in-process, `tinymask.cli.app`) and asserts the exit status, the words of the one-line
message on stderr, that no traceback was printed, and that no file that existed before changed. The disk faults use
a tiny tmpfs (a full disk) and a read-only bind of a folder, which need root and `mount`; without them those cases
skip. The layers' and the model's bad inputs are in tests/test_bad_input_layers.py and tests/test_bad_input_model.py.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tiny import tiny_config, tiny_shapes_config
from tinymask.cli import main
from tinymask.model import init_params
from tinymask.weights.checkpoint import save_checkpoint
from tinymask.weights.npz import save_npz


def snapshot(folder: Path) -> dict:
    """{relative path: sha256} of every file under `folder`."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def assert_one_line_error(code, err, *words):
    assert code == 1, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("tinymask ")]
    assert lines, err
    for w in words:
        assert w in lines[0], f"{w!r} not in {lines[0]!r}"


@pytest.fixture()
def files(tmp_path):
    """A checkpoint of the tiny model, an image, and assorted broken files."""
    cfg = tiny_config()
    save_checkpoint(tmp_path / "ckpt", init_params(cfg, seed=0), cfg, {"iteration": 0})
    Image.fromarray(np.full((24, 32, 3), 128, np.uint8)).save(tmp_path / "a.png")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.json").write_text("{")
    (tmp_path / "list.json").write_text("[1, 2]")
    cfg.save(tmp_path / "config.json")
    return tmp_path


def evil_pth(path: Path) -> None:
    """A torch.save-shaped zip whose pickle calls os.system: must be refused, never run."""
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(path.parent / "PWNED"),))
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(Evil(), protocol=2))
        zf.writestr("archive/byteorder", "little")


# ---------------------------------------------------------------------------------------------------------------
# Files that are missing, malformed, or not what they claim to be.
# ---------------------------------------------------------------------------------------------------------------

CASES = [
    (["eval", "--checkpoint", "{t}/nowhere"], ["checkpoint folder not found", "nowhere"]),
    (["eval", "--checkpoint", "{t}/empty"], ["lacks weights.npz"]),
    (["eval", "--config", "{t}/config.json", "--weights", "{t}/missing.npz"], ["weights file not found"]),
    (["eval", "--config", "{t}/bad.json", "--weights", "{t}/w.npz"], ["not valid JSON", "bad.json"]),
    (["eval", "--config", "{t}/config.json", "--weights", "{t}/notes.txt"], ["cannot tell the format", "notes.txt"]),
    (["eval", "--config", "{t}/config.json", "--weights", "{t}/evil.pth"], ["refusing to load global", "os"]),
    (["eval", "--config", "{t}/config.json", "--weights", "{t}/object.npz"], ["object.npz", "not a readable .npz"]),
    (["eval", "--config", "{t}/config.json", "--weights", "{t}/truncated.npz"], ["truncated.npz"]),
    (["eval", "--config", "{t}/config.json", "--weights", "{t}/garbage.pth"], ["garbage.pth"]),
    (["eval", "--config", "{t}/config.json"], ["--config needs --weights"]),
    (["predict", "{t}/missing.png", "--checkpoint", "{t}/ckpt", "--out", "{t}/out"], ["image not found"]),
    (["predict", "{t}/empty", "--checkpoint", "{t}/ckpt", "--out", "{t}/out"], ["holds no image files"]),
    (["predict", "{t}/a.png", "{t}/notes.txt", "--checkpoint", "{t}/ckpt", "--out", "{t}/out"],
     ["cannot read the image", "notes.txt", "nothing was written"]),
    (["predict", "{t}/a.png", "--checkpoint", "{t}/empty", "--out", "{t}/out"], ["lacks weights.npz"]),
    (["train", "--config", "{t}/list.json", "--out", "{t}/run"], ["list.json"]),
    (["train", "--resume", "--out", "{t}/nowhere"], ["checkpoint folder not found"]),
    (["train", "--out", "{t}/ckpt/weights.npz/run", "--iterations", "1"], ["weights.npz"]),
    (["train", "--backend", "cuda", "--out", "{t}/run", "--iterations", "1"], ["--backend cuda"]),
]


@pytest.mark.parametrize("argv, words", CASES, ids=[f"{c[0][0]}-{i}" for i, c in enumerate(CASES)])
def test_bad_files_give_one_line(files, capsys, argv, words):
    evil_pth(files / "evil.pth")
    np.savez(files / "object.npz", w=np.array([{"a": 1}], dtype=object))
    (files / "truncated.npz").write_bytes((files / "ckpt" / "weights.npz").read_bytes()[:500])
    (files / "garbage.pth").write_bytes(b"\x80\x02garbage" * 10)
    before = snapshot(files)
    if argv[0] == "train" and "--backend" in argv:
        from tinymask.ops.backend import available_backends
        if available_backends()["cuda"][0]:
            pytest.skip("this machine can run the cuda backend")
    code, err = run_cli([a.replace("{t}", str(files)) for a in argv], capsys)
    assert_one_line_error(code, err, *words)
    assert snapshot(files) == before  # nothing that existed changed
    assert not (files / "PWNED").exists()  # and nothing in a pickle ran
    assert not (files / "out").exists()  # predict wrote nothing


def test_predict_accepts_a_folder_of_images(files, capsys):
    (files / "imgs").mkdir()
    for name in ("b.png", "a.jpg"):
        Image.fromarray(np.full((20, 30, 3), 90, np.uint8)).save(files / "imgs" / name)
    (files / "imgs" / "readme.txt").write_text("skipped: not an image extension")
    code = main(["predict", str(files / "imgs"), "--checkpoint", str(files / "ckpt"), "--out", str(files / "out"),
                 "--score-threshold", "0"])
    out = capsys.readouterr().out
    assert code == 0
    assert out.index("a.jpg") < out.index("b.png")  # sorted
    assert sorted(os.listdir(files / "out")) == ["a.png", "b.png", "results.json"]


def test_debug_shows_the_traceback(files, capsys):
    code = main(["eval", "--checkpoint", str(files / "nowhere"), "--debug"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" in err and "checkpoint folder not found" in err.splitlines()[-1]


def test_an_unexpected_error_is_one_line_and_called_a_bug(capsys, monkeypatch):
    import tinymask.cli.app as cli_main

    def broken(args):
        raise ZeroDivisionError("division by zero")
    monkeypatch.setattr(cli_main, "run_command", broken)
    code, err = run_cli(["info"], capsys)
    assert code == 1 and "Traceback" not in err
    assert "error: ZeroDivisionError: division by zero" in err and "looks like a bug" in err and "--debug" in err


# ---------------------------------------------------------------------------------------------------------------
# A full disk and a read-only folder.
# ---------------------------------------------------------------------------------------------------------------

def mount_or_skip(*args) -> None:
    result = subprocess.run(["mount", *map(str, args)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount here ({result.stderr.strip() or 'not root'})")


@pytest.fixture()
def full_disk(tmp_path):
    """A 1-MiB tmpfs: big enough for the tiny model's first checkpoint only once."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount_or_skip("-t", "tmpfs", "-o", "size=1m", "tmpfs", disk)
    yield disk
    subprocess.run(["umount", str(disk)], check=False)


@pytest.fixture()
def read_only(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    (folder / "keep.txt").write_text("precious")
    mount_or_skip("--bind", folder, folder)
    if subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", str(folder)], check=False)
        pytest.skip("cannot remount read-only here")
    yield folder
    subprocess.run(["umount", str(folder)], check=False)


def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(full_disk, tmp_path, capsys):
    cfg = tiny_shapes_config()
    params = init_params(cfg, seed=0)
    save_checkpoint(full_disk / "last", params, cfg, {"iteration": 1})
    before = snapshot(full_disk)
    (full_disk / "filler").write_bytes(b"\0" * (1024 * 1024 - sum(p.stat().st_size for p in full_disk.rglob("*")
                                                                  if p.is_file()) - 60 * 1024))
    with pytest.raises(OSError, match=r"cannot write .*last: No space left on device \(the previous checkpoint is "
                                      r"intact\)"):
        save_checkpoint(full_disk / "last", {k: v * 2 for k, v in params.items()}, cfg, {"iteration": 2})
    after = snapshot(full_disk)
    after.pop("filler")
    assert after == before  # last/ is the iteration-1 checkpoint, bit for bit; no temporary folder is left


def test_train_on_a_full_disk_is_one_line(full_disk, capsys):
    code, err = run_cli(["train", "--out", full_disk / "run", "--iterations", "2", "--num-train", "4", "--num-val",
                         "0", "--preset", "small", "--no-progress"], capsys)
    assert_one_line_error(code, err, "cannot write", "No space left on device")


def test_a_read_only_output_folder_is_one_line(read_only, files, capsys):
    code, err = run_cli(["predict", files / "a.png", "--checkpoint", files / "ckpt", "--out", read_only / "out"],
                        capsys)
    assert_one_line_error(code, err, "Read-only file system", str(read_only / "out"))
    code, err = run_cli(["train", "--out", read_only / "run", "--iterations", "1", "--num-train", "4"], capsys)
    assert_one_line_error(code, err, "Read-only file system", str(read_only / "run"))
    assert (read_only / "keep.txt").read_text() == "precious"


def test_an_atomic_write_failure_names_the_file(tmp_path, monkeypatch):
    import tinymask._files as F

    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(F.os, "fsync", no_space)
    (tmp_path / "w.npz").write_bytes(b"old")
    with pytest.raises(OSError, match=r"cannot write .*w\.npz: No space left on device \(the file there before, if "
                                      r"any, is unchanged\)"):
        save_npz(tmp_path / "w.npz", {"w": np.zeros(2)})
    assert (tmp_path / "w.npz").read_bytes() == b"old" and os.listdir(tmp_path) == ["w.npz"]


def test_the_log_rewind_on_resume_is_atomic(tmp_path, monkeypatch):
    from tinymask.training.run import rewind_log

    log = tmp_path / "log.jsonl"
    lines = [json.dumps({"iteration": i, "loss": 1.0}) for i in range(1, 6)]
    log.write_text("\n".join(lines) + "\n{\"iteration\": 6, \"lo")  # the last line cut short by a crash
    import tinymask._files as F

    def crash(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(F.os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        rewind_log(str(log), 3)
    assert log.read_text().startswith(lines[0]) and lines[4] in log.read_text()  # untouched, not truncated
    monkeypatch.undo()
    assert [r["iteration"] for r in rewind_log(str(log), 3)] == [1, 2, 3]
    assert log.read_text() == "\n".join(lines[:3]) + "\n"


def test_divergence_warnings_do_not_flood_the_terminal(tmp_path, capsys):
    """NumPy's overflow warnings on the way to a blow-up are silenced; the divergence message is what is printed."""
    code, err = run_cli(["train", "--out", tmp_path / "run", "--iterations", "6", "--num-train", "4", "--num-val",
                         "0", "--lr", "1e12", "--warmup", "0", "--clip-grad-norm", "0", "--no-progress"], capsys)
    assert_one_line_error(code, err, "training diverged at iteration")
    assert "RuntimeWarning" not in err and len(err.splitlines()) == 1


def test_bytes_io_is_not_a_path(capsys):
    with pytest.raises(TypeError):
        save_npz(io.BytesIO(), {"w": np.zeros(1)})
