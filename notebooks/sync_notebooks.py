"""Write each notebook's .ipynb from its .py twin, the file that is edited and reviewed.

Every notebook NN_name.ipynb in this folder is paired with NN_name.py, a plain Python script in jupytext's py:percent
format (https://jupytext.readthedocs.io/en/latest/formats-scripts.html): `# %%` starts a code cell, `# %% [markdown]`
a Markdown cell written as comments. The .py is the source; the .ipynb is what this script writes from it:

    python notebooks/sync_notebooks.py            # rewrite every .ipynb from its .py
    python notebooks/sync_notebooks.py 06 09      # only the notebooks whose names start with these prefixes
    python notebooks/sync_notebooks.py --check    # exit 1 if a file is not what this writes (tests/test_notebooks.py)

The .ipynb it writes holds the .py's cells and nothing else: no outputs, no execution counts, cell ids c00, c01, ...
(so that rewriting an unchanged notebook changes no byte), and the metadata that pairs it with the .py
(`"jupytext": {"formats": "ipynb,py:percent"}`) and names the python3 kernel. It also puts the .py in the form
jupytext itself writes (the header, the blank lines between cells; never a cell's content), so that opening and
saving the notebook in Jupyter with jupytext installed changes nothing either.

It refuses to overwrite a .ipynb whose cells differ from its .py's and that is the newer of the two (edited in
Jupyter without jupytext, say): carry those edits into the .py with `jupytext --sync notebooks/NN_name.ipynb`
first, or pass --force to drop them.
"""
from __future__ import annotations

import sys
from pathlib import Path

import jupytext
import nbformat
from jupytext.config import load_jupytext_config

HERE = Path(__file__).resolve().parent
FORMAT = "py:percent"
#: The notebook metadata. The filter (the one in jupytext.toml, which jupytext records here when it syncs a notebook)
#: keeps the .py's header down to the pairing and the kernel.
METADATA = {
    "jupytext": {"formats": "ipynb,py:percent",
                 "notebook_metadata_filter": "-jupytext.text_representation,-jupytext.notebook_metadata_filter"},
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def notebook_scripts() -> list[Path]:
    """The notebooks' .py files, NN_name.py (tests/test_notebooks.py checks that no other .py sits here)."""
    return sorted(HERE.glob("[0-9][0-9]_*.py"))


def cells_of(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source) for c in nb.cells]


def build(py: Path) -> tuple[str, str]:
    """(the .ipynb's text, the .py's text in jupytext's form), both from the cells of the .py."""
    config = load_jupytext_config(str(py))
    cells = cells_of(jupytext.read(py, fmt=FORMAT, config=config))
    new_cell = {"markdown": nbformat.v4.new_markdown_cell, "code": nbformat.v4.new_code_cell,
                "raw": nbformat.v4.new_raw_cell}
    nb = nbformat.v4.new_notebook(cells=[new_cell[kind](src) for kind, src in cells], metadata=METADATA)
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"c{i:02d}"  # stable ids: a rewritten notebook is byte-identical
    nbformat.validate(nb)
    py_text = jupytext.writes(nb, fmt=FORMAT, config=config)
    if cells_of(jupytext.reads(py_text, fmt=FORMAT)) != cells:  # jupytext's round trip; never expected to fail
        raise RuntimeError(f"{py.name}: jupytext does not read back the cells it writes")
    return nbformat.writes(nb) + "\n", py_text


def main(argv: list[str]) -> int:
    check, force = "--check" in argv, "--force" in argv
    prefixes = [a for a in argv if not a.startswith("--")]
    scripts = [p for p in notebook_scripts() if not prefixes or p.name.startswith(tuple(prefixes))]
    orphans = [p.name for p in sorted(HERE.glob("*.ipynb")) if not p.with_suffix(".py").exists()]
    problems = [f"{name}: no .py twin (write one with jupytext --to py:percent notebooks/{name})" for name in orphans]
    for py in scripts:
        ipynb = py.with_suffix(".ipynb")
        ipynb_text, py_text = build(py)
        old_ipynb = ipynb.read_text(encoding="utf-8") if ipynb.exists() else None
        if check:
            if old_ipynb != ipynb_text:
                problems.append(f"{ipynb.name}: not what {py.name} gives")
            if py.read_text(encoding="utf-8") != py_text:
                problems.append(f"{py.name}: not in the form jupytext writes (header, blank lines between cells)")
            continue
        if old_ipynb is not None and old_ipynb != ipynb_text and not force:
            edited = cells_of(nbformat.reads(old_ipynb, as_version=4)) != cells_of(nbformat.reads(ipynb_text, 4))
            if edited and ipynb.stat().st_mtime > py.stat().st_mtime:
                problems.append(f"{ipynb.name}: its cells were edited after {py.name}; run jupytext --sync "
                                f"notebooks/{ipynb.name} to carry them into the .py (or --force to drop them)")
                continue
        for path, text in ((py, py_text), (ipynb, ipynb_text)):
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                path.write_text(text, encoding="utf-8")
                print(f"wrote {path.relative_to(HERE.parent)}")
    if problems:
        how = "run python notebooks/sync_notebooks.py" if check else "nothing written for these"
        print(f"{how}:\n  " + "\n  ".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
