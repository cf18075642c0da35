"""The runs folder's index: the runs-list row of each run that has stopped changing.

`<runs folder>/.mpt-index.json` maps each run directory (`name/stamp`) to its RunSummary
(engine/runs.py: the row `mpt ls` and the console's runs list show), keyed by its
events.jsonl's device, inode, size and mtime. An entry is used only while all four still
match; any other file, or a changed one, is read as ever (summary.json, then the lines
after it). Written by `list_runs` when a listing found entries missing or stale, and only
into a folder the user owns and can write; a write that fails is left at that. Runs still
live are left out: they change every few seconds. torch-free.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from engine.summary import read_small

INDEX = ".mpt-index.json"
FORMAT = 2  # 1: the fold of each run's events (engine/history.py); 2: its row
MAX_BYTES = 64 * 2**20


def key(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns]


def load(root: Path) -> dict[str, Any]:
    """The index's entries by `name/stamp` (each checked only when used); {} without one."""
    data = read_small(root / INDEX, MAX_BYTES)
    try:
        doc = json.loads(data) if data is not None else None
    except (ValueError, RecursionError):
        return {}
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return {}
    runs = doc.get("runs")
    return runs if isinstance(runs, dict) else {}


def lookup(entry: Any, st: os.stat_result) -> dict[str, Any] | None:
    """The row `entry` keeps, when it is of this very file (`st`); not yet checked."""
    if not isinstance(entry, dict) or entry.get("key") != key(st):
        return None
    row = entry.get("row")
    return row if isinstance(row, dict) else None


def entry(row: dict[str, Any], st: os.stat_result) -> dict[str, Any]:
    """What the index keeps of a run read to the end of its file (`st`)."""
    return {"key": key(st), "row": row}


def save(root: Path, runs: dict[str, Any]) -> None:
    """Replace the index, atomically, when the folder is the user's and writable."""
    try:
        st = os.stat(root)
        if st.st_uid != os.geteuid() or not os.access(root, os.W_OK):
            return
        data = json.dumps({"format": FORMAT, "runs": runs}, allow_nan=False).encode("utf-8")
    except (OSError, ValueError):
        return
    tmp = root / f".{INDEX}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        with open(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, root / INDEX)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
