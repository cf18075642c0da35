"""The runs folder at a glance: one `RunSummary` per run directory, without torch.

A runs folder holds `<out_dir>/<name>/<stamp>/` directories (DESIGN.md, Run directory),
each with `events.jsonl` and `profile.toml`. Its state comes from the last terminal
event; a run with none is still running if its events file moved recently, else it
died without a word (`crashed`). Used by the TUI's run list and by `mpt ls`.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import events as ev
from engine import run_index
from engine import summary as run_summary
from engine.history import RunHistory
from engine.stop import run_state

# A run that logs nothing for this long, and ended with no run_finished/run_failed,
# is taken for dead. Generous: a big model may spend minutes between two step events.
STALE_AFTER_S = 300.0

_PID_MAX = 2**22  # Linux's largest pid_max; anything else in a run_started is no process
_HEAD_BYTES = 256  # a followed file's first bytes: a file rewritten in place differs there


@dataclass
class RunSummary:
    """What a run list shows about one run directory."""

    run_dir: Path
    name: str
    stamp: str  # the directory's own name, YYYYmmdd-HHMMSS[-n]
    state: str  # running, paused, finished, early_stopped, stopped, max_time, interrupted,
    # failed, crashed, unreadable (events.jsonl cannot be opened)
    started: float | None = None  # run_started's time (seconds since the epoch)
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    total_steps: int = 0
    best_val_acc: float | None = None
    last_val_acc: float | None = None
    headline: str = "val_acc"  # val_<the task's first metric>: what lists show
    best_headline: float | None = None  # its best value (in its own direction) and last
    last_headline: float | None = None
    last_checkpoint: Path | None = None
    error: str | None = None  # run_failed's error text
    unreadable: int = 0  # events.jsonl lines that could not be read, or only in part
    problems: str | None = None  # which, in a sentence (EventsReader.describe)
    pid: int = 0  # the training process and its host (run_started's), 0 and "" unknown
    host: str = ""

    @property
    def live(self) -> bool:
        return self.state in ("running", "paused")

    @property
    def process(self) -> str | None:
        """`pid 1234 on gpubox` for a live run whose run_started names its process."""
        if not self.live or not 0 < self.pid < _PID_MAX or not self.host:
            return None
        return f"pid {self.pid} on {self.host}"

    @property
    def state_text(self) -> str:
        """The state as a list shows it, marked when some of the history was unreadable."""
        if not self.unreadable:
            return self.state
        return f"{self.state}, {self.unreadable} bad line{'s' if self.unreadable > 1 else ''}"


def summarize(
    history: RunHistory,
    run_dir: Path,
    reader: ev.EventsReader,
    mtime: float,
    now: float | None = None,
) -> RunSummary:
    """The summary a list shows of a run whose events `history` folds (`reader` read them)."""
    now = time.time() if now is None else now
    s = RunSummary(run_dir=run_dir, name=run_dir.parent.name, stamp=run_dir.name, state="")
    s.best_val_acc, s.last_val_acc = history.best_val_acc, history.last_val_acc
    s.headline, s.best_headline, s.last_headline = (
        history.headline,
        history.best_headline,
        history.last_headline,
    )
    if history.started is not None:
        s.started, s.epochs = history.started.time, history.started.epochs
        s.total_steps, s.name = history.started.total_steps, history.started.name or s.name
        s.pid, s.host = history.started.pid, history.started.host
    if history.last is not None:
        s.step, s.epoch = history.last.step, history.last.epoch
    s.state = _state(history.last, history.started, history.paused, mtime, now)
    if isinstance(history.last, ev.RunFailed):
        s.error = history.last.error or "failed"
    s.last_checkpoint = _last_checkpoint(run_dir, history.checkpoints)
    s.unreadable, s.problems = reader.unreadable, reader.describe()
    return s


@dataclass
class _Followed:
    """A run's events.jsonl as last read: a growing file is read from where it was left."""

    identity: tuple[int, int]  # st_dev, st_ino: a file put in its place is read afresh
    head: bytes  # its first bytes: a file rewritten in place is read afresh
    reader: ev.EventsReader
    history: RunHistory


_FOLLOWED: dict[Path, _Followed] = {}  # the TUI re-summarises every 2 s: only new lines are read


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def summarize_run(run_dir: str | Path, now: float | None = None) -> RunSummary | None:
    """Summarize one run directory; None when it has no events.jsonl.

    Lines that are not events are skipped and counted (`unreadable`, `problems`); a line
    still being written is left for the next call. An events.jsonl that cannot be read at
    all (no permission, not a file) makes the state `unreadable`.
    """
    return _summarize_run(Path(run_dir), now)


def _summarize_run(
    run_dir: Path, now: float | None, index: dict[str, Any] | None = None
) -> RunSummary | None:
    """summarize_run; `index`: the runs folder's entries (engine/run_index.py), which this
    run's entry is taken from and put back into when it has stopped changing."""
    path = (run_dir / "events.jsonl").absolute()
    rel = f"{run_dir.parent.name}/{run_dir.name}"
    try:
        followed, st = _follow(path, index.get(rel) if index is not None else None)
    except FileNotFoundError:
        _FOLLOWED.pop(path, None)
        return None
    except OSError as e:
        _FOLLOWED.pop(path, None)
        s = RunSummary(run_dir, run_dir.parent.name, run_dir.name, state="unreadable")
        s.problems = f"cannot be read ({e.strerror or e})"
        return s
    summary = summarize(followed.history, run_dir, followed.reader, st.st_mtime, now)
    if index is not None:
        if summary.live or followed.reader.pending:
            index.pop(rel, None)  # it changes every few seconds: not worth an entry
        elif followed.reader.bytes_read == st.st_size and (
            not isinstance(index.get(rel), dict) or index[rel].get("key") != run_index.key(st)
        ):
            index[rel] = run_index.entry(followed.history, followed.reader, st)
    return summary


def _follow(path: Path, entry: Any = None) -> tuple[_Followed, os.stat_result]:
    """The file's events so far, reading only what was added since the last call: from
    the runs folder's index `entry`, else from summary.json, else from the start."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader, a folder has no lines
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    followed = _FOLLOWED.get(path)
    if followed is not None and (
        followed.identity != (st.st_dev, st.st_ino)
        or st.st_size < followed.reader.bytes_read
        or _head(path, len(followed.head)) != followed.head
    ):
        followed = None
    if followed is None:
        indexed = run_index.lookup(entry, path, st) if entry is not None else None
        loaded = None if indexed else run_summary.load_summary(path.parent, st.st_size, False)
        if indexed is not None:  # the very file the index read: nothing of it is read
            followed = _Followed((st.st_dev, st.st_ino), b"", indexed[1], indexed[0])
        elif loaded is not None:  # the lines summary.json covers are not read again (and
            # its epoch rows not at all: a summary needs none of them)
            history, start = loaded
            followed = _Followed((st.st_dev, st.st_ino), start.head, start.reader, history)
        else:
            followed = _Followed((st.st_dev, st.st_ino), b"", ev.EventsReader(path), RunHistory())
        _FOLLOWED[path] = followed
    if st.st_size > followed.reader.bytes_read:
        followed.history.add(followed.reader.read_new())
        if len(followed.head) < _HEAD_BYTES:
            followed.head = _head(path, _HEAD_BYTES)
    return followed, st


def _head(path: Path, n: int) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def _state(
    last: ev.Event | None, started: ev.RunStarted | None, paused: bool, mtime: float, now: float
) -> str:
    if isinstance(last, ev.RunFinished):
        return run_state(last.reason)
    if isinstance(last, ev.RunFailed):
        return "failed"
    # No terminal event: alive, or killed before it could write one.
    pid, host = (started.pid, started.host) if started else (0, "")
    if 0 < pid < _PID_MAX and host == socket.gethostname():
        alive = _pid_alive(pid)
    elif paused:
        alive = True  # a paused run writes nothing; it may wait for hours
    else:
        alive = now - mtime < STALE_AFTER_S
    if not alive:
        return "crashed"
    return "paused" if paused else "running"


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
    found = [(_mtime(q), q) for q in folder.glob("*.pt")] if folder.is_dir() else []
    found = [(t, q) for t, q in found if t is not None]
    return max(found)[1] if found else None


def _mtime(path: Path) -> float | None:
    """None for a link whose file is gone, or a file pruned while the list was read."""
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def list_runs(runs_dir: str | Path, now: float | None = None) -> list[RunSummary]:
    """Every run under `runs_dir` (`<runs_dir>/<name>/<stamp>/events.jsonl`), newest first."""
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    runs = []
    found = list(root.glob("*/*/events.jsonl"))
    # the index helps runs not followed yet (the TUI's later listings follow them all)
    index = run_index.load(root) if any(p.absolute() not in _FOLLOWED for p in found) else None
    before = dict(index or {})
    for events in found:
        summary = _summarize_run(events.parent, now, index)
        if summary is not None:
            runs.append(summary)
    if index is not None:
        listed = {f"{r.run_dir.parent.name}/{r.run_dir.name}" for r in runs}
        index = {rel: e for rel, e in index.items() if rel in listed}
        if index.keys() != before.keys() or any(index[k] is not before[k] for k in index):
            run_index.save(root, index)  # the next listing reads none of these runs again
    runs.sort(key=lambda r: (r.stamp, r.started or 0.0), reverse=True)  # stamps sort by time
    return runs
