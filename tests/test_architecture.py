"""The shape of the code, as issue 14 set it: no import cycle between the modules of engine/
and tui/ (imports inside functions included), engine/ never imports tui/ or Textual, the
loop's file stays short enough to read in one sitting, and no class or function grows past
what a reader can hold."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("engine", "tui")
LOOP_FILE = ROOT / "engine" / "trainer.py"
LOOP = ("Trainer", "fit")  # the method that reads epoch -> batches -> step -> end of epoch
LIMITS = {"loop file": 400, "loop": 120, "class": 300, "function": 100}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The project modules `path` imports anywhere in it (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(up + ([base] if base else []))
            # `from engine import checkpoint` imports the submodule engine.checkpoint
            targets = [
                f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
            ]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(path, name, known) for name, path in known.items()}


def _third_party(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_no_import_cycle():
    graph = _graph()
    cycles, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(trail[trail.index(nxt) :] + [node, nxt]))
            elif nxt not in state:
                visit(nxt, trail + [node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_engine_imports_neither_tui_nor_textual():
    graph = _graph()
    for name, path in _modules().items():
        if name.split(".")[0] != "engine":
            continue
        assert not {m for m in graph[name] if m.startswith("tui")}, f"{name} imports tui/"
        assert not _third_party(path) & {"textual", "rich", "tui"}, f"{name} imports Textual"


def _spans():
    """(kind, where, lines) of every class and function in engine/ and tui/."""
    for path in _modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            kind = {ast.ClassDef: "class", ast.FunctionDef: "function"}.get(type(node))
            if isinstance(node, ast.AsyncFunctionDef):
                kind = "function"
            if kind:
                where = f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
                yield kind, where, node.end_lineno - node.lineno + 1


@pytest.mark.parametrize("kind", ["class", "function"])
def test_no_class_or_function_too_long(kind):
    long = [f"{where} ({n} lines)" for k, where, n in _spans() if k == kind and n > LIMITS[kind]]
    assert not long, f"over {LIMITS[kind]} lines: " + ", ".join(long)


def test_the_loop_reads_on_one_page():
    text = LOOP_FILE.read_text()
    assert len(text.splitlines()) < LIMITS["loop file"], f"{LOOP_FILE.name} is too long"
    tree = ast.parse(text)
    (cls,) = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == LOOP[0]]
    (loop,) = [n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == LOOP[1]]
    assert loop.end_lineno - loop.lineno + 1 <= LIMITS["loop"]
