"""Every code reference in the docs points at something that exists.

The docs are read side by side with the code, so a reference that has drifted (a renamed function, a moved file, a
deleted test) is a bug. This file scans README.md and every Markdown file under docs/ and checks, in the inline code
spans (text between single backticks; fenced code blocks are skipped):

- **dotted names** starting with `tinymask.`, e.g. `tinymask.layers.conv.conv2d_forward`: the longest importable
  module prefix is imported and the rest is looked up attribute by attribute. A trailing call, as in
  `tinymask.gradcheck.check_layer(forward, backward, inputs)`, is ignored.
- **repository paths**, e.g. `tinymask/layers/conv.py`, `tests/`: a span without spaces that contains "/" and ends
  either in "/" (a folder) or in a file extension (.py, .md, .ipynb, .json, .npz, ...). It must exist, relative to the
  repository root.
- **test references**, e.g. `tests/test_layers.py::test_conv2d_golden` (or `tests/x.py::TestClass::test_method`): the
  file must exist and define that function at its top level (or that method in that class). A `[param]` suffix is
  ignored.

and, outside code spans, **Markdown links** to local files, e.g. [norms](layers/norms.md), resolved relative to the
page that holds them (web links and pure #anchors are skipped).

Bare names such as `conv2d_forward(...)` or `conv.py` are not checked: they are not qualified.

**The "(planned)" rule.** A reference to something that does not exist yet is written with "(planned)" right after it
on the same line (spaces allowed in between), e.g. `notebooks/02_layers_and_gradcheck.ipynb` (planned). The existence
check skips it, and `test_planned_references_are_still_missing` fails once the thing exists, so that the mark is
removed when the file lands. Work that other engineers are writing but have not merged is named without backticks and
marked "in progress"; it is not checked at all.
"""
from __future__ import annotations

import ast
import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PLANNED = "(planned)"

CODE_SPAN = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
DOTTED = re.compile(r"^(tinymask(?:\.\w+)*)(?:\(.*\))?$")
TEST_REF = re.compile(r"^(tests/[\w./\-]+\.py)::(\w+(?:::\w+)?)(?:\[.*\])?$")
EXTENSIONS = ("py", "md", "ipynb", "json", "npz", "toml", "txt", "yml", "yaml", "cfg", "ini", "sh", "csv", "png")
PATH = re.compile(r"^(?:[\w.\-]+/)+(?:[\w.\-]*\.(?:" + "|".join(EXTENSIONS) + r"))?$")


@dataclass(frozen=True)
class Ref:
    doc: str  # the Markdown file, relative to the repository root
    line: int  # 1-based line number
    kind: str  # "dotted", "path", "test" or "link"
    text: str  # the reference as written
    planned: bool  # followed by "(planned)" on the same line

    def where(self) -> str:
        shown = f"`{self.text}`" if self.kind != "link" else f"({self.text})"
        return f"{self.doc}:{self.line}: {shown}"


def doc_files() -> list[Path]:
    """README.md and every Markdown file under docs/, in a stable order."""
    return [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))


def _followed_by_planned(line: str, end: int) -> bool:
    return line[end:].lstrip().startswith(PLANNED)


def classify(span: str) -> str | None:
    """The kind of reference an inline code span is, or None when it is not a checked reference."""
    span = span.strip()
    if "://" in span or (" " in span and not DOTTED.match(span)):
        return None
        return None
    if TEST_REF.match(span):
        return "test"
    if DOTTED.match(span):
        return "dotted"
    if PATH.match(span):
        return "path"
    return None


def find_refs(text: str, doc: str = "<text>") -> list[Ref]:
    """Every checked reference in a Markdown text: code spans outside fenced blocks, and local Markdown links."""
    refs = []
    in_fence = False
    for number, line in enumerate(text.splitlines(), start=1):
        if line.lstrip().startswith(("```", "~~~")):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        for m in CODE_SPAN.finditer(line):
            kind = classify(m.group(1))
            if kind is not None:
                refs.append(Ref(doc, number, kind, m.group(1).strip(), _followed_by_planned(line, m.end())))
        without_code = CODE_SPAN.sub(lambda m: " " * len(m.group(0)), line)  # keep offsets, drop code spans
        for m in LINK.finditer(without_code):
            target = m.group(1)
            if "://" in target or target.startswith(("#", "mailto:")):
                continue
            refs.append(Ref(doc, number, "link", target, _followed_by_planned(without_code, m.end())))
    return refs


def all_refs() -> list[Ref]:
    refs = []
    for path in doc_files():
        refs += find_refs(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))
    return refs


# ---------------------------------------------------------------------------------------------------------------
# Checking one reference: None when it resolves, else the reason it does not.
# ---------------------------------------------------------------------------------------------------------------

def check_dotted(name: str) -> str | None:
    name = DOTTED.match(name).group(1)
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name is not None and module_name.startswith(e.name):
                continue  # this prefix is not a module; try a shorter one
            return f"importing {module_name} failed: {e}"
        except Exception as e:  # a module that exists but does not import is broken too
            return f"importing {module_name} failed: {type(e).__name__}: {e}"
        for attr in parts[i:]:
            if not hasattr(obj, attr):
                return f"{getattr(obj, '__name__', obj)!s} has no attribute {attr!r}"
            obj = getattr(obj, attr)
        return None
    return "no importable module"


def check_path(path: str) -> str | None:
    return None if (ROOT / path).exists() else "no such file or folder"


def check_test(ref: str) -> str | None:
    m = TEST_REF.match(ref)
    file, name = m.group(1), m.group(2)
    path = ROOT / file
    if not path.is_file():
        return f"no such test file {file}"
    tree = ast.parse(path.read_text(encoding="utf-8"))
    functions = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if "::" not in name:
        return None if name in functions else f"{file} defines no top-level function {name}"
    cls, method = name.split("::")
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            methods = {n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
            return None if method in methods else f"class {cls} in {file} has no method {method}"
    return f"{file} defines no class {cls}"


def check_link(doc: str, target: str) -> str | None:
    local = target.split("#", 1)[0]
    if not local:
        return None
    return None if ((ROOT / doc).parent / local).exists() else "link target does not exist"


def check(ref: Ref) -> str | None:
    if ref.kind == "dotted":
        return check_dotted(ref.text)
    if ref.kind == "path":
        return check_path(ref.text)
    if ref.kind == "test":
        return check_test(ref.text)
    return check_link(ref.doc, ref.text)


# ---------------------------------------------------------------------------------------------------------------
# The tests.
# ---------------------------------------------------------------------------------------------------------------

def test_the_scanner_sees_the_docs():
    docs = [str(p.relative_to(ROOT)) for p in doc_files()]
    assert "README.md" in docs and "docs/conventions.md" in docs
    refs = all_refs()
    assert {r.kind for r in refs} >= {"dotted", "path", "test"}, "the scanner found no references of some kind"


def test_every_code_reference_exists():
    broken = [f"{r.where()} — {reason}" for r in all_refs() if not r.planned and (reason := check(r))]
    assert not broken, (f"{len(broken)} broken reference(s) in the docs (mark a not-yet-existing file with "
                        f"'(planned)' right after it):\n  " + "\n  ".join(broken))


def test_planned_references_are_still_missing():
    landed = [r.where() for r in all_refs() if r.planned and r.kind in ("path", "link") and check(r) is None]
    assert not landed, ("these references are marked (planned) but now exist; remove the mark:\n  "
                        + "\n  ".join(landed))


def test_layer_pages_open_with_the_header():
    # Each layer page (and the gradient-checking page) states Paper · Code · Notebook · Test once, at the top.
    pages = sorted((ROOT / "docs" / "layers").glob("*.md")) + [ROOT / "docs" / "gradient_checking.md"]
    missing = []
    for page in pages:
        if not page.exists():
            continue
        head = "\n".join(page.read_text(encoding="utf-8").splitlines()[:8])
        for field in ("*Paper", "*Code", "*Notebook", "*Test"):
            if field not in head:
                missing.append(f"{page.relative_to(ROOT)}: no {field}:* in its first lines")
    assert not missing, "\n".join(missing)


# ---------------------------------------------------------------------------------------------------------------
# The scanner itself, on a sample text: it must find what it should and nothing else.
# ---------------------------------------------------------------------------------------------------------------

SAMPLE = """\
Call `tinymask.layers.conv.conv2d_forward(x, w)` from `tinymask/layers/conv.py`; its test is
`tests/test_layers.py::test_conv2d_golden[case]`, and the folder `tests/` holds more.
Bare names are not checked: `conv2d_forward(...)`, `conv.py`, `h/w`, `x / 16`, `(N, C, H, W)`, `torch.nn.functional`.
The notebook `notebooks/99_missing.ipynb` (planned) does not exist yet; see [the index](index.md) and
[torchvision](https://pytorch.org/vision/).
```python
from tinymask.nothing import here   # fenced code is not scanned: `tinymask.nothing`
```
"""


def test_scanner_on_a_sample():
    refs = find_refs(SAMPLE, "docs/sample.md")
    found = [(r.line, r.kind, r.text, r.planned) for r in refs]
    assert found == [
        (1, "dotted", "tinymask.layers.conv.conv2d_forward(x, w)", False),
        (1, "path", "tinymask/layers/conv.py", False),
        (2, "test", "tests/test_layers.py::test_conv2d_golden[case]", False),
        (2, "path", "tests/", False),
        (4, "path", "notebooks/99_missing.ipynb", True),
        (4, "link", "index.md", False),
    ]
    assert [check(r) for r in refs[:4]] == [None, None, None, None]


@pytest.mark.parametrize("ref,words", [
    ("tinymask.layers.conv.conv2d_fwd", "no attribute 'conv2d_fwd'"),
    ("tinymask.no_such_module.f", "no attribute 'no_such_module'"),
    ("tests/test_layers.py::test_no_such_test", "no top-level function"),
    ("tests/test_no_such_file.py::test_x", "no such test file"),
    ("tinymask/layers/no_such_file.py", "no such file"),
])
def test_broken_references_are_caught(ref, words):
    kind = classify(ref)
    reason = check(Ref("docs/sample.md", 1, kind, ref, False))
    assert reason is not None and words in reason, reason
