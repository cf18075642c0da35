"""The runs folder at a glance: one `RunSummary` per run directory, without torch.

A runs folder holds `<out_dir>/<name>/<stamp>/` directories (DESIGN.md, Run directory),
each with `events.jsonl` and `profile.toml`. Its state comes from the last terminal
event; a run with none is still running if its events file moved recently, else it
died without a word (`crashed`). Used by the TUI's run list and by `mpt ls`.
"""

from __future__ import annotations

import errno
import math
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
# RunSummary's fields as the runs folder's index keeps them (to_row, from_row)
_INTS = ("epoch", "epochs", "step", "total_steps", "unreadable", "pid")
_FLOATS = ("started", "best_val_acc", "last_val_acc", "best_headline", "last_headline")
_STRS = ("name", "state", "headline", "host")
_OPTIONAL = ("error", "problems")
_ROW = (*_INTS, *_FLOATS, *_STRS, *_OPTIONAL)
_SPANS = [(0, len(_INTS)), (len(_INTS), len(_INTS) + len(_FLOATS))]  # where each kind is
_SPANS.append((_SPANS[1][1], _SPANS[1][1] + len(_STRS)))  # in _ROW: ints, floats, strs


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

    def to_row(self) -> dict[str, Any]:
        """The runs folder index's entry for this run (engine/run_index.py)."""
        row = {name: getattr(self, name) for name in _ROW}
        row["last_checkpoint"] = str(self.last_checkpoint) if self.last_checkpoint else None
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any], run_dir: Path) -> RunSummary | None:
        """The summary an index entry keeps; None for one that is not a row of a run that
        has ended (the index is read, not trusted: a forged entry shows as forged events
        would, and never as a live run to steer)."""
        values = [row.get(k) for k in _ROW]
        ints, floats, strs = (values[i:j] for i, j in _SPANS)
        if not (
            all(type(v) is int and 0 <= v < 2**63 for v in ints)
            and all(v is None or (type(v) in (int, float) and math.isfinite(v)) for v in floats)
            and all(type(v) is str for v in strs)
            and all(v is None or type(v) is str for v in values[len(_ROW) - len(_OPTIONAL) :])
        ) or row["state"] in ("running", "paused"):
            return None
        s = cls(run_dir=run_dir, stamp=run_dir.name, **dict(zip(_ROW, values, strict=True)))
        saved = row.get("last_checkpoint")
        if type(saved) is str and os.path.isfile(saved):
            s.last_checkpoint = Path(saved)
        else:  # none, or pruned or removed since: look again
            s.last_checkpoint = _last_checkpoint(run_dir, [])
        return s


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


_FOLLOWED: dict[str, _Followed] = {}  # the TUI re-summarises every 2 s: only new lines are read
# Runs taken from a runs folder's index, by events.jsonl path: (the file's key, the row).
_INDEXED: dict[str, tuple[list[int], RunSummary]] = {}
# (both dicts are keyed by the absolute path as a string: a listing makes few Path objects)


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
    run's row is taken from and put back into when it has stopped changing."""
    path = _events_path(run_dir)
    rel = f"{run_dir.parent.name}/{run_dir.name}"
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader, a folder has no lines
            raise OSError(errno.EINVAL, "not a regular file", path)
        indexed = _indexed(path, run_dir, st, index.get(rel) if index else None)
        if indexed is not None:
            return indexed
        followed = _follow(path, st)
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
        elif followed.reader.bytes_read == st.st_size:
            index[rel] = run_index.entry(summary.to_row(), st)
    return summary


def _indexed(path: str, run_dir: Path, st: os.stat_result, entry: Any) -> RunSummary | None:
    """The run's row from the runs folder's index (or as this process last took it from
    there), when the entry is of this very file; nothing of the file is read then."""
    known = _INDEXED.get(path)
    if known is not None and known[0] == run_index.key(st):
        return known[1]
    _INDEXED.pop(path, None)
    if entry is None or path in _FOLLOWED:
        return None
    row = run_index.lookup(entry, st)
    summary = RunSummary.from_row(row, run_dir) if row is not None else None
    if summary is not None:
        _INDEXED[path] = (run_index.key(st), summary)
    return summary


def _follow(path: str, st: os.stat_result) -> _Followed:
    """The file's events so far (`st`: its stat), reading only what was added since the
    last call: from summary.json when this process has not read it yet, else from the start."""
    followed = _FOLLOWED.get(path)
    if followed is not None and (
        followed.identity != (st.st_dev, st.st_ino)
        or st.st_size < followed.reader.bytes_read
        or _head(path, len(followed.head)) != followed.head
    ):
        followed = None
    if followed is None:
        loaded = run_summary.load_summary(Path(path).parent, st.st_size, False)
        if loaded is not None:  # the lines summary.json covers are not read again (and
            # its epoch rows not at all: a summary needs none of them)
            history, start = loaded
            followed = _Followed((st.st_dev, st.st_ino), start.head, start.reader, history)
        else:
            reader = ev.EventsReader(Path(path))
            followed = _Followed((st.st_dev, st.st_ino), b"", reader, RunHistory())
        _FOLLOWED[path] = followed
    if st.st_size > followed.reader.bytes_read:
        followed.history.add(followed.reader.read_new())
        if len(followed.head) < _HEAD_BYTES:
            followed.head = _head(path, _HEAD_BYTES)
    return followed


def _head(path: str, n: int) -> bytes:
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


def _events_path(run_dir: Path) -> str:
    return os.path.abspath(os.path.join(run_dir, "events.jsonl"))


def _run_dirs(root: Path) -> list[Path]:
    """`root/*/*/`, the folders that may be runs (the reader stats each one's events.jsonl):
    two scandirs, without glob's stat and path objects of every entry."""
    return [Path(stamp) for name in _folders(str(root)) for stamp in _folders(name)]


def _folders(path: str) -> list[str]:
    """The folders in `path` (as glob's `*` sees them: no hidden ones), links followed."""
    try:
        with os.scandir(path) as entries:
            return [e.path for e in entries if not e.name.startswith(".") and _is_dir(e)]
    except OSError:
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def list_runs(runs_dir: str | Path, now: float | None = None) -> list[RunSummary]:
    """Every run under `runs_dir` (`<runs_dir>/<name>/<stamp>/events.jsonl`), newest first."""
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        return []
    now = time.time() if now is None else now
    runs = []
    found = _run_dirs(root)
    # the index helps runs not read yet (the TUI's later listings know them all)
    known = _FOLLOWED.keys() | _INDEXED.keys()
    index = run_index.load(root) if any(_events_path(d) not in known for d in found) else None
    before = dict(index or {})
    for run_dir in found:
        summary = _summarize_run(run_dir, now, index)
        if summary is not None:
            runs.append(summary)
    if index is not None:
        listed = {f"{r.run_dir.parent.name}/{r.run_dir.name}" for r in runs}
        index = {rel: e for rel, e in index.items() if rel in listed}
        if index.keys() != before.keys() or any(index[k] != before[k] for k in index):
            run_index.save(root, index)  # the next listing reads none of these runs again
    runs.sort(key=lambda r: (r.stamp, r.started or 0.0), reverse=True)  # stamps sort by time
    return runs
