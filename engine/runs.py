"""The runs folder at a glance: one `RunSummary` per run directory, without torch.

A runs folder holds `<out_dir>/<name>/<stamp>/` directories (DESIGN.md, Run directory),
each with `events.jsonl` and `profile.toml`. Its state comes from the last terminal
event; a run with none is still running if its events file moved recently, else it
died without a word (`crashed`). Used by the TUI's run list and by `mpt ls`.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# A run that logs nothing for this long, and ended with no run_finished/run_failed,
# is taken for dead. Generous: a big model may spend minutes between two step events.
STALE_AFTER_S = 300.0

_KIND_RE = re.compile(r'"kind"\s*:\s*"(\w+)"')
_TERMINAL = ("run_finished", "run_failed")


@dataclass
class RunSummary:
    """What a run list shows about one run directory."""

    run_dir: Path
    name: str
    stamp: str  # the directory's own name, YYYYmmdd-HHMMSS[-n]
    state: str  # running, paused, finished, early_stopped, stopped, max_time, interrupted,
    # failed, crashed
    started: float | None = None  # run_started's time (seconds since the epoch)
    updated: float | None = None  # time of the last event
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    total_steps: int = 0
    best_val_acc: float | None = None
    last_val_acc: float | None = None
    last_checkpoint: Path | None = None
    error: str | None = None  # run_failed's error text

    @property
    def live(self) -> bool:
        return self.state in ("running", "paused")


def _kind(line: str) -> str | None:
    m = _KIND_RE.search(line, 0, 64)
    return m.group(1) if m else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def summarize_run(run_dir: str | Path, now: float | None = None) -> RunSummary | None:
    """Summarize one run directory; None when it has no events.jsonl."""
    run_dir = Path(run_dir)
    path = run_dir / "events.jsonl"
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
        mtime = path.stat().st_mtime
    except OSError:
        return None
    now = time.time() if now is None else now
    summary = RunSummary(run_dir=run_dir, name=run_dir.parent.name, stamp=run_dir.name, state="")
    started: dict[str, Any] | None = None
    last: dict[str, Any] | None = None
    last_step_line: str | None = None
    step_is_last = False  # the file ends with step events (after the last other one)
    checkpoints: list[str] = []
    for line in text.splitlines():
        kind = _kind(line)
        if kind is None:
            continue
        if kind == "step":  # the bulk of the file: parse only the last one
            last_step_line, step_is_last = line, True
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line from a killed writer
        last, step_is_last = event, False
        if kind == "run_started":
            started = event
        elif kind == "epoch_end":
            acc = event.get("val_acc")
            summary.last_val_acc = acc
            if acc is not None and (summary.best_val_acc is None or acc > summary.best_val_acc):
                summary.best_val_acc = acc
        elif kind == "checkpoint_saved" and event.get("path"):
            checkpoints.append(event["path"])
    if last_step_line is not None:
        try:
            step = json.loads(last_step_line)
        except json.JSONDecodeError:
            step = None
        if step is not None and step_is_last:
            last = step
    if started is not None:
        summary.started = started.get("time")
        summary.epochs = started.get("epochs", 0)
        summary.total_steps = started.get("total_steps", 0)
        summary.name = started.get("name") or summary.name
    if last is not None:
        summary.updated = last.get("time")
        summary.step = last.get("step", 0)
        summary.epoch = last.get("epoch", 0)
    summary.state = _state(last, started, mtime, now)
    if last is not None and last.get("kind") == "run_failed":
        summary.error = last.get("error") or "failed"
    summary.last_checkpoint = _last_checkpoint(run_dir, checkpoints)
    return summary


def _state(
    last: dict[str, Any] | None, started: dict[str, Any] | None, mtime: float, now: float
) -> str:
    kind = last.get("kind") if last else None
    if kind == "run_finished":
        reason = last.get("reason", "completed")
        return "finished" if reason == "completed" else reason
    if kind == "run_failed":
        return "failed"
    # No terminal event: alive, or killed before it could write one.
    pid, host = (started or {}).get("pid"), (started or {}).get("host")
    if pid and host == socket.gethostname():
        alive = _pid_alive(int(pid))
    elif kind == "paused":
        alive = True  # a paused run writes nothing; it may wait for hours
    else:
        alive = now - mtime < STALE_AFTER_S
    if not alive:
        return "crashed"
    return "paused" if kind == "paused" else "running"


def _last_checkpoint(run_dir: Path, announced: list[str]) -> Path | None:
    """The newest checkpoint file still on disk (pruned ones are skipped).

    best.pt and last.pt are links to a step file: the step file is named when it is
    still there, as it says which step; else last.pt; else the newest *.pt.
    """
    for raw in reversed(announced):
        p = Path(raw)
        if not p.is_absolute() and not p.exists():
            p = run_dir / raw
        if p.name not in ("best.pt", "last.pt") and p.is_file():
            return p
    folder = run_dir / "checkpoints"
    if (folder / "last.pt").is_file():
        return folder / "last.pt"
    found = sorted(folder.glob("*.pt"), key=lambda q: q.stat().st_mtime) if folder.is_dir() else []
    return found[-1] if found else None


def list_runs(runs_dir: str | Path, now: float | None = None) -> list[RunSummary]:
    """Every run under `runs_dir` (`<runs_dir>/<name>/<stamp>/events.jsonl`), newest first."""
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    runs = []
    for events in root.glob("*/*/events.jsonl"):
        summary = summarize_run(events.parent, now)
        if summary is not None:
            runs.append(summary)
    runs.sort(key=lambda r: (r.stamp, r.started or 0.0), reverse=True)  # stamps sort by time
    return runs
