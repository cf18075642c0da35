"""The log screen's lines: a run's events as a person reads them, filtered; no Textual here.

`describe(event)` turns one event into a `LogLine` (local time, step, one description,
its categories), saying it as the headless `mpt run` does where that has a line for it
(engine/console.py). `RunLog` follows an events.jsonl with the engine's one tolerant
reader, keeps the lines within bounds (step lines are many: only the newest are kept),
and turns lines that could not be read into warning lines. `ConsoleTail` follows the last
lines of a detached run's console.log without ever reading the whole file.
"""

from __future__ import annotations

import heapq
import itertools
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine import events as ev
from engine.console import format_early_stop, format_epoch, format_finished, format_started
from engine.formatting import number
from tui.detach import CONSOLE_LOG

# The categories a line can belong to, in the order of their number keys (1..6).
CATEGORIES = ("run", "epoch", "checkpoint", "control", "warning", "step")
SHOWN_FIRST = frozenset(CATEGORIES) - {"step"}  # step lines are many: shown when chosen
MAX_STEP_LINES = 5_000  # the newest step lines kept; older ones are dropped
MAX_OTHER_LINES = 50_000  # every other line (epochs, checkpoints, warnings) up to this
_CONTROL_CHECKPOINTS = ("requested", "stop", "interrupted")  # saved because someone asked
_CONTROL_ENDINGS = ("stopped", "interrupted")


@dataclass(frozen=True)
class LogLine:
    """One line of the log: when, at which step, what, and the categories it belongs to
    (the first one is its own: it picks the colour; a requested checkpoint is also a
    control). `time` and `step` are None for a line of the file that could not be read."""

    time: float | None
    step: int | None
    text: str
    categories: tuple[str, ...]
    order: int = 0  # the position in the log (RunLog numbers the lines it keeps)

    @property
    def category(self) -> str:
        return self.categories[0]

    @property
    def clock(self) -> str:
        """The local time as HH:MM:SS, or dashes when unknown (or beyond the platform's
        clock: a damaged line's time of 1e300)."""
        if self.time is None:
            return "--:--:--"
        try:
            return time.strftime("%H:%M:%S", time.localtime(self.time))
        except (OverflowError, OSError, ValueError):
            return "--:--:--"


@dataclass(frozen=True)
class LogFilter:
    """Which lines are shown: those of any chosen category whose text holds `text`
    (case-insensitive; empty: every line)."""

    categories: frozenset[str] = SHOWN_FIRST
    text: str = ""

    def shows(self, line: LogLine) -> bool:
        if not self.categories.intersection(line.categories):
            return False
        return not self.text or self.text.casefold() in line.text.casefold()

    def toggled(self, category: str) -> LogFilter:
        return LogFilter(self.categories.symmetric_difference({category}), self.text)

    def with_text(self, text: str) -> LogFilter:
        return LogFilter(self.categories, text)

    @property
    def everything(self) -> bool:
        return self.categories == frozenset(CATEGORIES) and not self.text


def describe(e: ev.Event, run_dir: str = "") -> LogLine | None:
    """The log line of one event; paths inside `run_dir` are shown relative to it. Never
    raises: an event whose fields the headless console's words cannot hold (a damaged
    line's null where a number belongs) is shown as its kind and fields."""
    try:
        text, categories = _describe(e, run_dir)
    except (TypeError, ValueError, OverflowError):
        fields = ", ".join(f"{k}={v!r}" for k, v in e.to_dict().items() if k != "kind")
        text, categories = f"{e.kind}: {fields}", ("warning",)
    if text is None:
        return None
    return LogLine(e.time, e.step, _visible(text), categories)


# Text from events.jsonl goes to a terminal: its control characters (an escape sequence in
# a warning) are shown escaped, as `mpt show` does; newlines and tabs stay (a traceback).
_UNPRINTABLE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _visible(text: str) -> str:
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text)


def _describe(e: ev.Event, run_dir: str) -> tuple[str | None, tuple[str, ...]]:  # noqa: PLR0911
    if isinstance(e, ev.RunStarted):
        return _started(e), ("run",)
    if isinstance(e, ev.Step):
        return _step(e), ("step",)
    if isinstance(e, ev.EpochEnd):
        return format_epoch(e), ("epoch",)
    if isinstance(e, ev.EarlyStop):
        return _early_stop(e), ("epoch",)
    if isinstance(e, ev.CheckpointSaved):
        text = f"checkpoint saved ({e.reason or 'no reason given'}): {_short(e.path, run_dir)}"
        control = e.reason in _CONTROL_CHECKPOINTS
        return text, ("checkpoint", "control") if control else ("checkpoint",)
    if isinstance(e, ev.TraceSaved):
        return f"profiler trace ({e.steps} steps): {_short(e.path, run_dir)}", ("checkpoint",)
    if isinstance(e, ev.Paused):
        return "paused", ("control",)
    if isinstance(e, ev.Resumed):
        return "resumed", ("control",)
    if isinstance(e, ev.Warning):
        return f"warning: {e.message}", ("warning",)
    if isinstance(e, ev.RunFinished):
        control = e.reason in _CONTROL_ENDINGS
        return format_finished(e), ("run", "control") if control else ("run",)
    if isinstance(e, ev.RunFailed):
        return _failed(e), ("warning", "run")
    return None, ()


def _started(e: ev.RunStarted) -> str:
    where = f" (pid {e.pid} on {e.host})" if e.pid and e.host else ""
    text = f"started{where}: {format_started(e)}"
    if e.resumed_from:
        text += f"; resuming from {e.resumed_from} at step {e.step}, epoch {e.epoch}"
    return text


def _step(e: ev.Step) -> str:
    text = (
        f"epoch {e.epoch} {100 * e.epoch_progress:3.0f}%  loss {number(e.loss)}  "
        f"lr {e.lr:.2e}  {e.samples_per_s:,.0f} samples/s"
    )
    if e.skipped_steps:
        text += f"  ({e.skipped_steps} steps skipped so far)"
    return text


def _early_stop(e: ev.EarlyStop) -> str | None:
    if e.stopping:
        return format_early_stop(e)
    if not e.wait:
        return None  # improved: the epoch line says enough
    return (
        f"early stopping: {e.monitor} has not improved for {e.wait} of {e.patience} "
        f"validation(s) (best {number(e.best)})"
    )


def _failed(e: ev.RunFailed) -> str:
    lines = [f"failed: {e.error or 'the run failed'}"]
    lines += [f"  {line}" for line in e.traceback.splitlines() if line.strip()]
    return "\n".join(lines)


def _short(path: str, run_dir: str) -> str:
    prefix = run_dir.rstrip("/") + "/"
    return path[len(prefix) :] if run_dir and path.startswith(prefix) else path


@dataclass(frozen=True)
class Shown:
    """What a filter shows of a RunLog: its last lines, how many it shows in all, and the
    `order` of the last line kept at that moment (lines read later have a higher one)."""

    lines: list[LogLine]
    matching: int
    upto: int


class RunLog:
    """A run's log lines, read from its events.jsonl as it grows (`read_new`).

    The newest `max_step_lines` step lines and `max_other_lines` others are kept, so a
    long run's log takes bounded memory; `dropped` counts what went. Lines the engine's
    reader could not read become warning lines naming the line of the file; nothing in
    the file raises (`read_new` raises OSError only when the file cannot be read). One
    thread may read while another asks what is `shown`.
    """

    def __init__(
        self,
        path: str | Path,
        max_step_lines: int = MAX_STEP_LINES,
        max_other_lines: int = MAX_OTHER_LINES,
    ):
        self.path = Path(path)
        self.run_dir = ""  # from run_started: paths inside it are shown short
        self.dropped = 0
        self._steps: deque[LogLine] = deque(maxlen=max_step_lines)
        self._others: deque[LogLine] = deque(maxlen=max_other_lines)
        self._reader = ev.EventsReader(self.path)
        self._problems_told = 0  # problems (with their line numbers) turned into lines
        self._unreadable_told = 0  # unreadable lines accounted for, unnamed ones included
        self._order = itertools.count()
        self._lock = threading.Lock()  # the kept lines: read_new adds, shown reads

    def read_new(self) -> list[LogLine]:
        """The lines of what was written since the last call (kept, and returned)."""
        events = self._reader.read_new()
        steps = sum(isinstance(e, ev.Step) for e in events)
        unseen = max(0, steps - self._steps.maxlen)  # dropped at once: never formatted
        new = []
        for event in events:
            if isinstance(event, ev.Step) and unseen:
                unseen -= 1
                self.dropped += 1
                continue
            if isinstance(event, ev.RunStarted) and event.run_dir:
                self.run_dir = event.run_dir
            line = describe(event, self.run_dir)
            if line is not None:
                new.append(line)
        new += self._problem_lines()
        with self._lock:
            return [self._keep(line) for line in new]

    def _problem_lines(self) -> list[LogLine]:
        """Warning lines for the lines of the file that could not be read: one per line
        the reader names (its first MAX_PROBLEMS), then one per read for the rest."""
        lines = []
        reader, name = self._reader, self.path.name
        for p in reader.problems[self._problems_told :]:
            verb = "could not be read" if p.skipped else "could be read only in part"
            text = f"{name} line {p.line} {verb}: {p.what}"
            lines.append(LogLine(None, None, text, ("warning",)))
        self._problems_told = len(reader.problems)
        unnamed = reader.unreadable - self._unreadable_told - len(lines)
        if unnamed > 0:
            text = f"{name}: {unnamed} more lines could not be read ({reader.unreadable} in all)"
            lines.append(LogLine(None, None, text, ("warning",)))
        self._unreadable_told = reader.unreadable
        return lines

    def _keep(self, line: LogLine) -> LogLine:
        line = LogLine(line.time, line.step, line.text, line.categories, next(self._order))
        kept = self._steps if line.category == "step" else self._others
        if len(kept) == kept.maxlen:
            self.dropped += 1
        kept.append(line)
        return line

    @property
    def lines(self) -> list[LogLine]:
        """Every line kept, in the order written."""
        with self._lock:
            return list(heapq.merge(self._others, self._steps, key=_by_order))

    def __len__(self) -> int:
        with self._lock:
            return len(self._steps) + len(self._others)

    def shown(self, chosen: LogFilter, last: int | None = None) -> Shown:
        """The last `last` lines `chosen` shows (all when None), and how many it shows."""
        with self._lock:
            sources = [self._others] + ([self._steps] if "step" in chosen.categories else [])
            matching = [x for x in heapq.merge(*sources, key=_by_order) if chosen.shows(x)]
            upto = max((d[-1].order for d in (self._steps, self._others) if d), default=-1)
        return Shown(matching if last is None else matching[-last:], len(matching), upto)


def _by_order(line: LogLine) -> int:
    return line.order


# ---- console.log: a detached run's own lines ----

TAIL_LINES = 200  # console.log lines kept for the panel
TAIL_BYTES = 64 * 1024  # read at most this much from the end of the file at a time
_CONTROL_CHARS = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class ConsoleTail:
    """The last lines of a file another process appends to (a detached run's console.log):
    `read_new()` reads only what was added since (at most TAIL_BYTES of it: before that,
    the lines are dropped unread) and keeps the last `keep` lines in `lines`."""

    def __init__(self, path: str | Path, keep: int = TAIL_LINES, max_bytes: int = TAIL_BYTES):
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.lines: deque[str] = deque(maxlen=keep)
        self._pos = 0
        self._pending = b""  # the bytes after the last newline: a line still being written

    def read_new(self) -> bool:
        """Read what was added; whether anything was. Raises OSError when the file cannot
        be read (it does not exist yet, say)."""
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < self._pos:  # cut short or replaced: start again from its end
                self._pos, self._pending = 0, b""
                self.lines.clear()
            if size == self._pos:
                return False
            start = max(self._pos, size - self.max_bytes)
            skipped = start > self._pos  # what lies between was never read
            f.seek(start)
            data = (b"" if skipped else self._pending) + f.read(size - start)
            self._pos = size
        *whole, pending = data.split(b"\n")
        self._pending = pending[-self.max_bytes :]  # a line with no end is not kept whole
        if skipped and whole:
            whole = whole[1:]  # it began mid-line (or, by chance, at a line's start)
        self.lines.extend(clean(line.decode("utf-8", errors="replace")) for line in whole)
        return True

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


def clean(line: str) -> str:
    """A line as a terminal would leave it: what follows its last carriage return, with
    escape sequences and other control characters taken out (tabs stay)."""
    return _CONTROL_CHARS.sub("", line.rpartition("\r")[2])


# ---- both files of a run, as the log screen follows them ----


@dataclass(frozen=True)
class LogUpdate:
    """What one look at a run's files found."""

    lines: list[LogLine]  # the log lines read since the last look
    console: list[str] | None  # console.log's last lines, when they changed
    note: str  # why the log is empty, while it is ("" once it has lines)


class RunFiles:
    """A run's events.jsonl (a RunLog) and console.log (a ConsoleTail), read from one
    thread by `read()`; `run_dir()` says where they are (None while the run has no
    directory yet: a run this console is starting)."""

    def __init__(self, run_dir: Callable[[], str | Path | None]):
        self._run_dir = run_dir
        self.log: RunLog | None = None
        self.tail: ConsoleTail | None = None

    def read(self) -> LogUpdate:
        if self.log is None:
            where = self._run_dir()
            if where is None:
                return LogUpdate([], None, "The run has no directory yet: its log starts then.")
            self.log = RunLog(Path(where) / "events.jsonl")
            self.tail = ConsoleTail(Path(where) / CONSOLE_LOG)
        try:
            lines, note = self.log.read_new(), ""
        except OSError as e:
            what = "there is no such file" if isinstance(e, FileNotFoundError) else e.strerror
            lines, note = [], f"{self.log.path}: {what or e}; its events show here once written."
        if not note and not len(self.log):
            note = f"{self.log.path} has no events yet."
        return LogUpdate(lines, self._console(), note)

    def _console(self) -> list[str] | None:
        try:
            grown = self.tail.read_new()
        except OSError:
            return None  # none: a run this console trains, or one never detached
        return list(self.tail.lines) if grown else None
