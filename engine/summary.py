"""summary.json and curve.jsonl: what views need of a long events.jsonl, kept beside it.

A run's EventLog tells a `SummaryRecorder` every line it writes to events.jsonl. The
recorder folds them (engine/history.py's RunHistory, the reader's line count and
problems) and now and then replaces, atomically, two small files in the run directory:

- `summary.json`: the fold, and the byte offset of events.jsonl it covers. `mpt ls`,
  `mpt show` and the console's runs list start from it and read only the lines after.
- `curve.jsonl`: a header line (the same offset and checks), then the lines of
  events.jsonl a dashboard needs to draw the run: every event but steps, and at most
  CURVE_POINTS step events, thinned evenly (every k-th step, k doubling when full).

Both name the first bytes and the last bytes before the offset (SHA-256), so that an
events.jsonl replaced, cut or rewritten is noticed. Readers trust neither file: one that
is missing, damaged, made up, or no longer matches its events.jsonl is passed over and
events.jsonl is read whole, as for a run from before these files. torch-free.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine import events as ev
from engine.history import RunHistory

EVENTS = "events.jsonl"
SUMMARY = "summary.json"
CURVE = "curve.jsonl"
FORMAT = 1
HEAD_BYTES = 256  # the first bytes of events.jsonl a summary names
TAIL_BYTES = 64  # and the last ones before its offset
CURVE_POINTS = 2000  # step events a curve keeps
MAX_CURVE_LINES = 20_000  # past this many other events, no curve is kept (readers read all)
MAX_FILE_BYTES = 16 * 2**20  # a longer summary or curve is not read
EVERY_S = 10.0  # the most often a step event (the only frequent one) rewrites the files
MIN_GAP_S = 1.0  # the most often an epoch's end or a checkpoint rewrites summary.json
_AT_ONCE = (
    ev.RunStarted,
    ev.EpochEnd,
    ev.CheckpointSaved,
    ev.Paused,
    ev.Resumed,
    ev.RunFinished,
    ev.RunFailed,
)  # events that rewrite summary.json at once: what `mpt ls` shows changed
_NO_FOLLOW = os.O_NOFOLLOW | os.O_CLOEXEC
_CURVE_AT_ONCE = (ev.RunStarted, ev.Paused, ev.RunFinished, ev.RunFailed)


class SummaryRecorder:
    """Keeps summary.json and curve.jsonl of one run directory as its events.jsonl grows.

    Every method returns a sentence when a file could not be written (said once, until
    writing works again), else None. A failed write leaves the last good file in place:
    it covers fewer lines, which readers read from events.jsonl.
    """

    def __init__(self, run_dir: Path, every_s: float = EVERY_S):
        self.run_dir = Path(run_dir)
        self.every_s = every_s
        self.history = RunHistory()
        self._reader = ev.EventsReader(self.run_dir / EVENTS)  # counts lines and problems
        self._head = b""
        self._tail = b""
        self._curve: list[tuple[bool, bytes]] | None = []  # (a step?, its line), in order
        self._others = 0  # lines of the curve that are not steps
        self._steps = 0  # step events seen
        self._stride = 1  # every _stride-th step event is kept
        self._last_step: bytes | None = None  # the newest step line, when not kept
        self._ends: dict[int, Any] = {}  # the epoch_end lines of history.epoch_ends, as JSON
        self._summary_at = self._curve_at = -math.inf
        # the least time between two writes for an event of _AT_ONCE: a second, or more
        # when writing takes long (thousands of epoch rows), so that it stays under 5%
        self._gap = MIN_GAP_S
        self._failing: set[str] = set()  # the files whose last write failed (said once)

    @property
    def offset(self) -> int:
        return self._reader.bytes_read

    # ---- what EventLog tells it ----
    def copied(self, data: bytes) -> str | None:
        """The lines of an earlier run this run continues (a resumed run's history)."""
        for line in data.split(b"\n")[:-1]:  # EventLog wrote whole lines, each ending in \n
            line += b"\n"
            events = self._reader.feed(line)
            self._took(line)
            if events:
                self._fold(events[0], line)
        return None

    def add(self, event: ev.Event, line: bytes) -> str | None:
        """A line EventLog wrote for `event`."""
        if isinstance(event, ev.Step):
            self._reader.passed(line)  # its own line: no need to read it back
            read = [event]
        else:
            read = self._reader.feed(line)  # folded as any reader reads it (NaN as null)
        self._took(line)
        if read:  # (a line no reader could read would be counted, and not folded)
            self._fold(read[0], line)
        now = time.monotonic()
        since = now - self._summary_at
        if isinstance(event, _CURVE_AT_ONCE) or now - self._curve_at >= self.every_s:
            problem = self._write_both(now)
        elif (isinstance(event, _AT_ONCE) and since >= self._gap) or since >= self.every_s:
            problem = self._write(SUMMARY, self._summary_bytes(), now)
        else:
            return None
        self._gap = max(MIN_GAP_S, 20 * (time.monotonic() - now))
        return problem

    def close(self) -> str | None:
        return self._write_both(time.monotonic())

    # ---- folding ----
    def _took(self, line: bytes) -> None:
        if len(self._head) < HEAD_BYTES:
            self._head = (self._head + line)[:HEAD_BYTES]
        self._tail = (self._tail + line)[-TAIL_BYTES:]

    def _fold(self, event: ev.Event, line: bytes) -> None:
        if not isinstance(event, ev.Step):
            self.history.add([event])
            if isinstance(event, ev.EpochEnd):
                self._ends[event.epoch] = json.loads(line)  # not made again at each write
            if self._last_step is not None:  # the figures up to this event, in their place
                self._keep(True, self._last_step)
                self._last_step = None
            self._keep(False, line)
            return
        self.history.last = event
        self._steps += 1
        if self._steps % self._stride:
            self._last_step = line
            return
        self._last_step = None
        self._keep(True, line)

    def _keep(self, step: bool, line: bytes) -> None:
        if self._curve is None:
            return
        self._curve.append((step, line))
        self._others += not step
        if self._others > MAX_CURVE_LINES:
            self._curve = None  # a flood of warnings: no curve rather than an unbounded one
            with contextlib.suppress(OSError):
                os.unlink(self.run_dir / CURVE)
            return
        if step and len(self._curve) - self._others > CURVE_POINTS:
            seen, kept = 0, []
            for entry in self._curve:  # every other step line goes
                if entry[0]:
                    seen += 1
                    if seen % 2 == 0:
                        continue
                kept.append(entry)
            self._curve, self._stride = kept, self._stride * 2

    # ---- writing ----
    def _position(self) -> dict[str, Any]:
        r = self._reader
        return {
            "format": FORMAT,
            "offset": self.offset,
            "lines": r.lines,
            "head": _sha(self._head),
            "tail": _sha(self._tail),
            "skipped": r.skipped,
            "damaged": r.damaged,
            "problems": [[p.line, p.what, p.skipped] for p in r.problems],
        }

    def _summary_bytes(self) -> bytes:
        doc = {**self._position(), "history": self.history.to_json()}
        doc["history"]["epoch_ends"] = list(self._ends.values())
        return json.dumps(doc, allow_nan=False).encode("utf-8")

    def _curve_bytes(self) -> bytes:
        lines = [line for _, line in self._curve]
        if self._last_step is not None:
            lines.append(self._last_step)  # its figures (gpu, host, lr) are the latest
        header = json.dumps(self._position(), allow_nan=False).encode("utf-8")
        return b"".join([header, b"\n", *lines])

    def _write_both(self, now: float) -> str | None:
        problem = self._write(SUMMARY, self._summary_bytes(), now)
        if problem is None and self._curve is not None:
            problem = self._write(CURVE, self._curve_bytes(), now)
        return problem

    def _write(self, name: str, data: bytes, now: float) -> str | None:
        """Replace `name` in the run directory by `data`, atomically (a temporary file, then
        os.replace): a reader sees the old file or the new one, never half of one."""
        tmp = self.run_dir / f".{name}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _NO_FOLLOW, 0o644)
            with open(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, self.run_dir / name)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if name in self._failing:
                return None
            self._failing.add(name)
            return (
                f"could not write {self.run_dir / name} ({e.strerror or e}); the run goes on "
                "and views read events.jsonl from where the last one left off"
            )
        self._failing.discard(name)
        if name == SUMMARY:
            self._summary_at = now
        else:
            self._curve_at = now
        return None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- reading: nothing in either file is trusted ----


@dataclass
class Start:
    """Where a reader of events.jsonl starts: after the lines a summary covers."""

    reader: ev.EventsReader  # positioned at the summary's offset, its counts carried over
    head: bytes  # the file's first bytes (up to HEAD_BYTES), as checked


def load_summary(run_dir: Path, size: int, epochs: bool = True) -> tuple[RunHistory, Start] | None:
    """The fold summary.json holds and where to read on, when it is whole and matches
    events.jsonl (`size` bytes now); None otherwise (read events.jsonl whole). Without
    `epochs` the fold's epoch_ends are left out (RunHistory.from_json)."""
    doc = _read_json(run_dir / SUMMARY)
    if doc is None:
        return None
    start = _start(run_dir, doc, size)
    history = RunHistory.from_json(doc.get("history"), epochs) if start is not None else None
    return None if history is None else (history, start)


def load_curve(run_dir: Path, size: int) -> tuple[list[ev.Event], Start] | None:
    """The events curve.jsonl keeps for a dashboard and where to read on, when it is whole
    and matches events.jsonl (`size` bytes now); None otherwise."""
    data = read_small(run_dir / CURVE)
    if data is None:
        return None
    header, _, rest = data.partition(b"\n")
    try:
        doc = json.loads(header)
    except (ValueError, RecursionError):
        return None
    start = _start(run_dir, doc, size) if isinstance(doc, dict) else None
    if start is None:
        return None
    events = []
    for line in rest.splitlines():
        event = ev.event_from_line(line)
        if event is None:
            return None  # the recorder kept only lines that are events: not its file
        events.append(event)
    return events, start


def read_small(path: Path, limit: int = MAX_FILE_BYTES) -> bytes | None:
    """A plain file's bytes (no link followed, nothing that could block), or None (also
    for one longer than `limit`)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NO_FOLLOW)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with open(os.dup(fd), "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data if len(data) <= limit else None


def _read_json(path: Path) -> dict[str, Any] | None:
    data = read_small(path)
    try:
        doc = json.loads(data) if data is not None else None
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


def _count(value: Any) -> bool:
    return type(value) is int and 0 <= value < 2**63


def _start(run_dir: Path, doc: dict[str, Any], size: int) -> Start | None:
    """The reader a summary's header gives, when its offset, counts and checks hold."""
    offset, lines = doc.get("offset"), doc.get("lines")
    skipped, damaged = doc.get("skipped"), doc.get("damaged")
    problems = valid_problems(doc.get("problems"))
    if (
        doc.get("format") != FORMAT
        or not all(_count(x) for x in (offset, lines, skipped, damaged))
        or offset > size
        or skipped + damaged > lines
        or problems is None
        or not all(type(doc.get(k)) is str for k in ("head", "tail"))
    ):
        return None
    head = _checked(run_dir / EVENTS, offset, doc["head"], doc["tail"])
    if head is None:
        return None
    reader = ev.EventsReader.at(run_dir / EVENTS, offset, lines, skipped, damaged, problems)
    return Start(reader, head)


def valid_problems(raw: Any) -> list[ev.LineProblem] | None:
    if not isinstance(raw, list) or len(raw) > ev.MAX_PROBLEMS:
        return None
    out = []
    for item in raw:
        if not (
            isinstance(item, list)
            and len(item) == 3
            and _count(item[0])
            and type(item[1]) is str
            and type(item[2]) is bool
        ):
            return None
        out.append(ev.LineProblem(*item))
    return out


def _checked(path: Path, offset: int, head: str, tail: str) -> bytes | None:
    """events.jsonl's first bytes when they and the bytes before `offset` hash as named
    (and the offset ends a line); None when they do not, or it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        first = os.pread(fd, HEAD_BYTES, 0)
        begin = max(0, offset - TAIL_BYTES)
        last = os.pread(fd, offset - begin, begin)
    except OSError:
        return None
    finally:
        os.close(fd)
    if offset and not last.endswith(b"\n"):
        return None
    if _sha(first[:offset]) != head or _sha(last) != tail:
        return None
    return first
