"""The runs folder's index: what `list_runs` folded of each run that has stopped changing.

`<runs folder>/.mpt-index.json` maps each run directory (`name/stamp`) to the fold of its
events.jsonl (engine/history.py, slimmed to what a runs list shows) and the reader's
counts, keyed by the file's device, inode, size and mtime. An entry is used only while
all four still match; any other file, or a changed one, is read as ever (summary.json,
then the lines after it). Written by `list_runs` when a listing found entries missing or
stale, and only into a folder the user owns and can write; a write that fails is left
at that. Runs still live are left out: they change every few seconds. torch-free.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from engine import events as ev
from engine.history import RunHistory
from engine.summary import read_small, valid_problems

INDEX = ".mpt-index.json"
FORMAT = 1
MAX_BYTES = 64 * 2**20
CHECKPOINTS = 16  # the newest checkpoint_saved paths an entry keeps
# What a runs list reads of run_started and of the last event (RunSummary, engine/runs.py)
_STARTED = ("kind", "step", "epoch", "time", "name", "epochs", "total_steps", "metrics")
_STARTED += ("pid", "host")
_LAST = ("kind", "step", "epoch", "time", "reason", "error")


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


def lookup(entry: Any, path: Path, st: os.stat_result) -> tuple[RunHistory, ev.EventsReader] | None:
    """The fold and a reader at the file's end, when `entry` is of this very file."""
    if not isinstance(entry, dict) or entry.get("key") != key(st):
        return None
    counts = [entry.get(k) for k in ("lines", "skipped", "damaged")]
    problems = valid_problems(entry.get("problems"))
    if problems is None or not all(type(c) is int and 0 <= c < 2**63 for c in counts):
        return None
    history = RunHistory.from_json(entry.get("history"), epochs=False)
    if history is None:
        return None
    return history, ev.EventsReader.at(path, st.st_size, *counts, problems)


def entry(history: RunHistory, reader: ev.EventsReader, st: os.stat_result) -> dict[str, Any]:
    """What the index keeps of a run read to the end of its file (`st`)."""
    fold = history.to_json(epochs=False)
    # a list names the newest checkpoint still on disk: the older ones were pruned first
    fold["checkpoints"] = fold["checkpoints"][-CHECKPOINTS:]
    for name, keep in (("started", _STARTED), ("last", _LAST)):
        if fold[name] is not None:
            fold[name] = {k: v for k, v in fold[name].items() if k in keep}
    return {
        "key": key(st),
        "lines": reader.lines,
        "skipped": reader.skipped,
        "damaged": reader.damaged,
        "problems": [[p.line, p.what, p.skipped] for p in reader.problems],
        "history": fold,
    }


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
