"""The step-through notebooks run from top to bottom, carry no outputs, and stay in step with their .py twins.

Each notebook notebooks/NN_name.ipynb is paired with notebooks/NN_name.py, a Python script in jupytext's py:percent
format that holds the same cells and is the file that is edited (notebooks/README.md); the .ipynb is written from it
by `notebooks/sync_notebooks.py`. These tests check:

- every .ipynb has its .py twin and every .py in notebooks/ (but the sync script) its .ipynb;
- each pair holds the same cells: the .ipynb's cells (type and source) are what jupytext reads from the .py;
- the files are exactly what `notebooks/sync_notebooks.py` writes (`--check`): stable cell ids, the jupytext pairing
  metadata, the .py in the form jupytext writes;
- every notebook is committed without outputs or execution counts (outputs belong to a reader's run, not to git);
- the first code cell sets `SMOKE` from the environment variable TINYMASK_SMOKE;
- 05, 09 and 10 train the same run: their training cells are identical (each notebook stands alone, so each holds a
  copy);
- the .py files pass pyflakes (no unused imports, no undefined names);
- every local link and code reference in the notebooks' Markdown and in notebooks/README.md resolves, with the rules
  of tests/test_docs.py (a "(planned)" mark for things that do not exist yet);
- (slow) every notebook executes without error in smoke mode (TINYMASK_SMOKE=1, matplotlib's Agg backend), in a
  Jupyter kernel running this interpreter; and the notebooks that train (one per recipe they ship, 01 and 10) also in
  full mode, their whole training schedule, so that a recipe that diverges fails CI. Its wall-clock time is recorded, not asserted (a busy machine is not a
  failure): printed (`pytest -rP` or `-s` shows it), attached to the test report as the property `seconds` (JUnit
  XML), and kept in pytest's cache, `.pytest_cache/v/tinymask/notebook_seconds` (`{notebook: seconds}`, latest run).
  Only a generous per-cell timeout remains, as a guard against a hung kernel.

The pairing and sync tests need jupytext and nbformat, the pyflakes test pyflakes; the execution tests need nbformat,
nbclient and ipykernel (`pip install -e ".[notebooks]"`). Without them these tests skip.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
#: The script that writes each .ipynb from its .py; every other .py in notebooks/ is a notebook.
SYNC_SCRIPT = NOTEBOOK_DIR / "sync_notebooks.py"
SCRIPTS = sorted(p for p in NOTEBOOK_DIR.glob("*.py") if p != SYNC_SCRIPT)
#: The notebooks that train the same short run (README: "the same deterministic run in each").
SAME_TRAINING_RUN = ["05_rpn", "09_inference_and_evaluation", "10_inspect_weights"]
SMOKE_LINE = 'SMOKE = os.environ.get("TINYMASK_SMOKE") == "1"'
#: Per-cell timeout, a guard against a hung kernel only, not a speed limit: each notebook runs in well under a minute
#: on a 2-core machine in smoke mode, and its time is recorded (see the module docstring), not asserted.
HANG_GUARD_SECONDS = 600
#: The pytest cache key of the recorded times.
TIMES_KEY = "tinymask/notebook_seconds"


def load_notebook(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def source(cell: dict) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def ids(paths):
    return [p.stem for p in paths]


def test_there_are_notebooks():
    assert NOTEBOOKS, "notebooks/ holds no .ipynb files"
    assert SYNC_SCRIPT.is_file()


def test_every_notebook_has_a_py_twin_and_vice_versa():
    without_py = [p.name for p in NOTEBOOKS if not p.with_suffix(".py").is_file()]
    without_ipynb = [p.name for p in SCRIPTS if not p.with_suffix(".ipynb").is_file()]
    assert not without_py, f"no .py twin (jupytext --to py:percent notebooks/NAME.ipynb writes one): {without_py}"
    assert not without_ipynb, f"no .ipynb twin (python notebooks/sync_notebooks.py writes one): {without_ipynb}"
    unnamed = [p.name for p in SCRIPTS if not (p.name[:2].isdigit() and p.name[2] == "_")]
    assert not unnamed, f"notebooks are named NN_name (sync_notebooks.py looks for no others): {unnamed}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_notebook_holds_the_cells_of_its_py(path):
    jupytext = pytest.importorskip("jupytext")
    py = path.with_suffix(".py")
    assert py.is_file(), f"{path.name} has no .py twin"
    expected = [(c.cell_type, c.source) for c in jupytext.read(py, fmt="py:percent").cells]
    actual = [(c["cell_type"], source(c)) for c in load_notebook(path)["cells"]]
    differ = [i for i, (a, b) in enumerate(zip(actual, expected)) if a != b]
    assert len(actual) == len(expected) and not differ, (
        f"{path.name} is out of step with {py.name}: {len(actual)} vs {len(expected)} cells, first differing cell "
        f"{differ[:1]}; run python notebooks/sync_notebooks.py")


def test_notebooks_are_what_the_sync_script_writes():
    pytest.importorskip("jupytext")
    pytest.importorskip("nbformat")
    result = subprocess.run([sys.executable, str(SYNC_SCRIPT), "--check"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_no_outputs_committed(path):
    nb = load_notebook(path)
    dirty = [i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"
             and (c.get("outputs") or c.get("execution_count") is not None)]
    assert not dirty, (f"{path.name}: cells {dirty} carry outputs or execution counts; rewrite it with "
                       f"python notebooks/sync_notebooks.py (never commit an executed notebook)")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_first_code_cell_reads_the_smoke_switch(path):
    cells = code_cells(load_notebook(path))
    assert cells and SMOKE_LINE in source(cells[0]), f"{path.name}: the first code cell must set {SMOKE_LINE}"


def test_the_notebooks_that_share_a_training_run_train_it_with_the_same_cell():
    cells = {}
    for name in SAME_TRAINING_RUN:
        found = [source(c) for c in code_cells(load_notebook(NOTEBOOK_DIR / f"{name}.ipynb"))
                 if "TRAIN_ITERATIONS =" in source(c)]
        assert len(found) == 1, f"{name}: {len(found)} training cells (TRAIN_ITERATIONS = ...), expected one"
        cells[name] = found[0]
    first = SAME_TRAINING_RUN[0]
    differ = [name for name in SAME_TRAINING_RUN if cells[name] != cells[first]]
    assert not differ, f"the training cell of {differ} differs from {first}'s: copy the change to all three"


def test_notebook_scripts_pass_pyflakes():
    pytest.importorskip("pyflakes")
    result = subprocess.run([sys.executable, "-m", "pyflakes", *map(str, SCRIPTS), str(SYNC_SCRIPT)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def _docs_checker():
    """tests/test_docs.py's reference scanner, loaded under another name (so pytest does not collect it twice)."""
    spec = importlib.util.spec_from_file_location("_notebook_docs_checker", ROOT / "tests" / "test_docs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclass looks its module up while it is being created
    spec.loader.exec_module(module)
    return module


def notebook_refs():
    """Every checked reference in the notebooks' Markdown cells and in notebooks/README.md."""
    docs = _docs_checker()
    refs = []
    for path in NOTEBOOKS:
        text = "\n".join(source(c) for c in load_notebook(path)["cells"] if c["cell_type"] == "markdown")
        refs += docs.find_refs(text, str(path.relative_to(ROOT)))
    readme = NOTEBOOK_DIR / "README.md"
    if readme.exists():
        refs += docs.find_refs(readme.read_text(encoding="utf-8"), str(readme.relative_to(ROOT)))
    return docs, refs


def test_notebook_references_exist():
    docs, refs = notebook_refs()
    assert refs, "the scanner found no references in the notebooks"
    broken = [f"{r.where()} — {reason}" for r in refs if not r.planned and (reason := docs.check(r))]
    assert not broken, "broken references in the notebooks:\n  " + "\n  ".join(broken)


def test_planned_notebook_references_are_still_missing():
    docs, refs = notebook_refs()
    landed = [r.where() for r in refs if r.planned and r.kind in ("path", "link") and docs.check(r) is None]
    assert not landed, "marked (planned) but now exist; remove the mark:\n  " + "\n  ".join(landed)


@pytest.fixture
def kernel_env(tmp_path, monkeypatch):
    """A 'python3' kernelspec that runs this interpreter, found first; smoke mode; a display-free backend."""
    pytest.importorskip("ipykernel")
    spec_dir = tmp_path / "kernels" / "python3"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (tinymask tests)", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))  # searched before the user's and the system's kernelspecs
    monkeypatch.setenv("TINYMASK_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    monkeypatch.delenv("TINYMASK_CHECKPOINT", raising=False)  # the notebooks must train their own small model
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # their training runs' folders go where pytest cleans up


def run_notebook(path, mode, request, record_property):
    """Execute one notebook in a fresh kernel; its time is recorded under "<name> (<mode>)", pass or fail."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(str(path), as_version=4)
    client = nbclient.NotebookClient(nb, timeout=HANG_GUARD_SECONDS, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    start = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:
        pytest.fail(f"{path.name} failed in {mode} mode:\n{e}", pytrace=False)
    finally:  # recorded whether it passed or failed
        elapsed = round(time.perf_counter() - start, 2)
        record_property("seconds", elapsed)
        print(f"{path.name}: {elapsed:.1f} s in {mode} mode")
        cache = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
        if cache is not None:
            cache.set(TIMES_KEY, {**cache.get(TIMES_KEY, {}), f"{path.name} ({mode})": elapsed})


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids(NOTEBOOKS))
def test_notebook_runs_in_smoke_mode(path, kernel_env, request, record_property):
    run_notebook(path, "smoke", request, record_property)


#: The notebooks that train, one per training recipe they ship: 01 trains 300 iterations (08 runs the same recipe in
#: four stretches), 10 the 150 iterations that 05, 09 and 10 share. Smoke mode stops them after 2 or 3 iterations,
#: inside the warm-up, where a recipe too hot for its batch cannot show; in full mode they run their whole schedule,
#: so a recipe that diverges on CI's machine fails here.
TRAINING_NOTEBOOKS = [NOTEBOOK_DIR / "01_tour.ipynb", NOTEBOOK_DIR / "10_inspect_weights.ipynb"]


@pytest.mark.slow
@pytest.mark.parametrize("path", TRAINING_NOTEBOOKS, ids=ids(TRAINING_NOTEBOOKS))
def test_training_notebook_runs_in_full_mode(path, kernel_env, monkeypatch, request, record_property):
    monkeypatch.delenv("TINYMASK_SMOKE")
    run_notebook(path, "full", request, record_property)
