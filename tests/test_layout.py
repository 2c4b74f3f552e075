"""The package's shape stays readable: no import cycle, small modules and functions, a short top level.

- **No import cycle** among tinymask's modules (static: every `import` and `from ... import`, at any depth, including
  the lazy ones inside functions, since a lazy import only hides a cycle).
- **Modules of at most `MODULE_LINES` lines**, functions of at most `FUNCTION_LINES` (a class counts by its methods).
  A longer function needs a reason, written as a comment `# long: <why>` on the line above its `def`.
- **A handful of modules at the top level** (`tinymask/*.py`): the rest lives in the concept's subpackage.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "tinymask"
MODULE_LINES = 400
FUNCTION_LINES = 80
TOP_LEVEL_MODULES = 8  # today 7: __init__, _files, _validate, config, gradcheck, model, visualize


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set) -> set:
    """The tinymask modules that `name` imports (a `from pkg import mod` counts as importing `pkg.mod`)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        out |= {c for c in candidates if c in known and c != name and not name.startswith(c + ".")}
    return out


def find_cycle(graph: dict[str, set]) -> list[str] | None:
    """One cycle of the directed graph as a list of nodes (first = last), or None."""
    state = {}  # node -> "active" while on the DFS path, "done" after

    def visit(node, path):
        state[node] = "active"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "active":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle():
    mods = modules()
    graph = {name: imports_of(name, path, set(mods)) for name, path in mods.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_modules_are_small():
    long = {name: n for name, path in modules().items()
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MODULE_LINES}
    assert not long, f"modules over {MODULE_LINES} lines (split them by concept): {long}"


def test_functions_are_short_or_say_why():
    long = []
    for name, path in modules().items():
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                size = node.end_lineno - node.lineno + 1
                reason = start >= 2 and lines[start - 2].strip().startswith("# long:")
                if size > FUNCTION_LINES and not reason:
                    long.append(f"{name}.{node.name} ({size} lines)")
    assert not long, f"functions over {FUNCTION_LINES} lines without a '# long: <why>' comment: {long}"


def test_the_top_level_is_a_handful_of_modules():
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= TOP_LEVEL_MODULES, f"{len(top)} modules at tinymask/'s top level: {top}"
