"""docs/RELIABILITY.md points at tests: each one it names must exist (and so runs here)."""

from __future__ import annotations

import ast
import re

from conftest import REPO

DOC = REPO / "docs" / "RELIABILITY.md"


def test_every_test_named_in_reliability_md_exists():
    named = set(re.findall(r"(tests/[\w/]+\.py)::(\w+)", DOC.read_text()))
    assert len(named) > 60
    missing = []
    for path, name in sorted(named):
        file = REPO / path
        tree = ast.parse(file.read_text()) if file.is_file() else ast.Module(body=[])
        defined = {
            node.name
            for node in tree.body
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        if name not in defined:
            missing.append(f"{path}::{name}")
    assert missing == []
