"""Events: plain records the Trainer emits, one type per kind (DESIGN.md, Events).

Every event is picklable and JSON-serialisable, and carries `kind`, `time`, `step`
and `epoch`. `EventLog` writes them to events.jsonl (one object a line, flushed per
line) and puts them on the run's queue without ever blocking the Trainer.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import queue
import re
import stat
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar


@dataclass
class Event:
    kind: ClassVar[str] = "event"
    step: int = 0  # optimizer steps done so far
    epoch: int = 0  # 1-based epoch in progress (or just finished)
    time: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **asdict(self)}


@dataclass
class RunStarted(Event):
    kind: ClassVar[str] = "run_started"
    run_dir: str = ""
    name: str = ""
    device: str = ""
    precision: str = ""
    dataset: str = ""
    train_samples: int = 0
    val_samples: int = 0
    num_classes: int = 0  # the model's outputs: classes, labels (multilabel) or targets
    input_shape: list[int] = field(default_factory=list)
    arch: str = ""
    parameters: int = 0
    trainable_parameters: int | None = None  # those the optimizer steps (model.freeze)
    task: str = "classification"  # task.kind
    loss: str = "cross_entropy"  # task.loss as trained ("auto" resolved)
    metrics: list[str] = field(default_factory=list)  # the task's metrics, headline first
    classes: list[str] = field(default_factory=list)  # class or label names, when known
    epochs: int = 0
    steps_per_epoch: int = 0
    total_steps: int = 0
    batch_size: int = 0
    grad_accum: int = 1
    global_batch: int = 0
    world_size: int = 1
    data_cache: str = ""
    mean: list[float] = field(default_factory=list)  # the normalisation: (x/255 - mean) / std
    std: list[float] = field(default_factory=list)
    resumed_from: str | None = None  # the checkpoint this run continues, if any
    pid: int = 0  # the training process and its host: tells a live run from a dead one
    host: str = ""


@dataclass
class Step(Event):
    kind: ClassVar[str] = "step"
    loss: float | None = 0.0  # mean training loss since the last Step event (None: all skipped)
    lr: float = 0.0
    samples_per_s: float = 0.0
    epoch_progress: float = 0.0  # fraction of the current epoch done, 0..1
    skipped_steps: int = 0  # steps skipped so far for a non-finite loss or gradients
    gpu_mem_allocated: int | None = None  # bytes; None on the CPU
    gpu_mem_reserved: int | None = None
    gpu_mem_peak: int | None = None
    gpu_mem_total: int | None = None
    gpu_util: int | None = None  # percent, from NVML where available (engine/gpu.py)
    gpu_temp: int | None = None  # degrees C
    gpu_power: float | None = None  # watts
    # The host (engine/host.py), sampled with this event; None where the system gives none.
    cpu_percent: float | None = None  # this process since the last step event; 100 = one core
    rss: int | None = None  # bytes: this process's resident memory
    mem_available: int | None = None  # bytes: the memory the system can still give
    disk_free: int | None = None  # bytes free on the disk of the run directory (None: no run dir)
    data_wait: float | None = None  # share of the window spent waiting for a DataLoader's batch
    # (0..1, data.cache = "stream"); None when the batches come from a cached copy


@dataclass
class EpochEnd(Event):
    kind: ClassVar[str] = "epoch_end"
    epochs: int = 0
    train_loss: float | None = 0.0  # None: not finite (events.jsonl writes NaN as null)
    train_acc: float | None = 0.0  # classification and multilabel; None for regression
    val_loss: float | None = None
    val_acc: float | None = None
    lr: float = 0.0
    seconds: float = 0.0
    samples_per_s: float = 0.0
    # Every metric of the task by name, "train_<m>" and "val_<m>" (acc included, losses
    # not). events.jsonl writes them as top-level keys of the line, beside train_acc.
    metrics: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        metrics = data.pop("metrics")
        return {**data, **{k: v for k, v in metrics.items() if k not in data}}


@dataclass
class EarlyStop(Event):
    kind: ClassVar[str] = "early_stop"
    monitor: str = ""
    value: float | None = None  # the monitored value this time
    best: float | None = None
    wait: int = 0  # validations since the last improvement
    patience: int = 0
    stopping: bool = False  # true when this validation ends the run
    why: str = ""  # patience, stop_above, stop_below, not_finite


@dataclass
class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint_saved"
    path: str = ""
    reason: str = ""  # epoch, steps, best, requested, stop, interrupted, final
    # reason best: the checkpoint.monitor best.pt follows, and its value (the run's
    # headline metric may be another: the dashboard and the resume picker say which)
    monitor: str = ""
    value: float | None = None


@dataclass
class TraceSaved(Event):
    kind: ClassVar[str] = "trace_saved"
    path: str = ""  # a torch.profiler trace (Chrome/Perfetto JSON) of `steps` steps
    steps: int = 0


@dataclass
class Paused(Event):
    kind: ClassVar[str] = "paused"


@dataclass
class Resumed(Event):
    kind: ClassVar[str] = "resumed"


@dataclass
class Warning(Event):  # noqa: A001 - the event kind's own name
    kind: ClassVar[str] = "warning"
    message: str = ""


@dataclass
class RunFinished(Event):
    kind: ClassVar[str] = "run_finished"
    reason: str = "completed"  # completed, early_stopped, stopped, max_time, interrupted
    seconds: float = 0.0
    best_val_acc: float | None = None
    final_val_acc: float | None = None
    final_val_loss: float | None = None
    headline: str = ""  # val_<the task's first metric>, e.g. val_mae
    final_headline: float | None = None  # its last value
    best_monitor: str = ""  # checkpoint.monitor, and its best value (best.pt's)
    best_value: float | None = None


@dataclass
class RunFailed(Event):
    kind: ClassVar[str] = "run_failed"
    error: str = ""
    traceback: str = ""
    user_error: bool = False  # a profile, data or model mistake found before training


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (
        RunStarted,
        Step,
        EpochEnd,
        EarlyStop,
        CheckpointSaved,
        TraceSaved,
        Paused,
        Resumed,
        Warning,
        RunFinished,
        RunFailed,
    )
}


# ---- reading events.jsonl: one reader for every consumer ----
#
# mpt ls and show, the TUI's runs list, dashboard and attach, export and a resumed run's
# history all read events through EventsReader (or event_from_line). Nothing in the file can
# make it raise: a line that is not an event is skipped and counted, a field whose value is
# not of its type reads as the field's default and is counted, so a consumer can say
# "events.jsonl: 2 lines could not be read" and show the rest.

MAX_LINE_BYTES = 8 * 2**20  # a longer line is skipped unread; mpt's longest (a traceback) is KBs
MAX_PROBLEMS = 20  # problems kept with their line numbers; the counts go on past it
_CHUNK = 2**20
_BASE_FIELDS = ("step", "epoch", "time")  # every event has had them: without, it is no event
_MISSING = object()
_LIMIT = 2**63  # an integer beyond 64 bits is of no use to any consumer (and JSON allows it)
_WANTS = {int: "an integer", float: "a finite number", str: "text", bool: "true or false"}


def _fits(value: Any, want: type, item: type | None) -> bool:
    """Whether a JSON value fits a field of type `want` (`list[item]` when item is set)."""
    t = type(value)  # exact types: bool is an int to Python, not to JSON
    if want is float:
        # events.jsonl writes NaN and infinity as null: x - x is 0 only for finite x
        return (t is float and value - value == 0.0) or (t is int and -_LIMIT <= value < _LIMIT)
    if want is int:
        return t is int and -_LIMIT <= value < _LIMIT
    if want is list:
        return t is list and all(_fits(x, item, None) for x in value)
    return t is want


def _field_spec(f) -> tuple[str, type, type | None, bool, str]:
    """(name, type, item type of a list, None allowed, what it wants) from the annotation."""
    annotation = f.type  # a string: `from __future__ import annotations`
    optional = annotation.endswith(" | None")
    base = annotation.removesuffix(" | None")
    names = {"int": int, "float": float, "str": str, "bool": bool}
    if base.startswith("dict["):  # EpochEnd.metrics: read from the line's metric keys
        return f.name, dict, float, False, "a table of numbers"
    if base.startswith("list["):
        want, item = list, names[base[5:-1]]
        wants = f"a list of {_WANTS[item].removeprefix('a ').removeprefix('an ')}s"
    else:
        want, item = names[base], None  # a field of a new type must be taught here
        wants = _WANTS[want]
    return f.name, want, item, optional, wants + (" or null" if optional else "")


_FIELDS = {kind: tuple(map(_field_spec, fields(cls))) for kind, cls in EVENT_TYPES.items()}


def _event(data: dict[str, Any]) -> tuple[Event | None, list[str]]:
    """An event from a decoded JSON object, and what was wrong with it: skipped (None)
    when it is not an event this mpt knows or does not say when (step, epoch and time,
    which every event has had), else each bad field at its default."""
    kind = data.get("kind")
    if type(kind) is not str:
        return None, ["no kind"]
    cls = EVENT_TYPES.get(kind)
    if cls is None:
        return None, [f"unknown kind {_cut(kind)}"]
    values: dict[str, Any] = {}
    problems = []
    for name, want, item, optional, wants in _FIELDS[kind]:
        if want is dict:
            values[name], bad = _metric_keys(data, kind)
            problems += bad
            continue
        value = data.get(name, _MISSING)
        if (value is None and optional) or (value is not _MISSING and _fits(value, want, item)):
            values[name] = value
        elif value is not _MISSING:
            problems.append(f"{kind}.{name} is not {wants} (got {_cut(value)})")
        elif name in _BASE_FIELDS:
            problems.append(f"{kind}.{name} is missing")
    if any(name not in values for name in _BASE_FIELDS):
        return None, problems  # an epoch row at epoch 0, a step at time 0: not shown at all
    return cls(**values), problems


_METRIC_KEY = re.compile(r"^(train|val)_[a-z0-9_]+$")  # val_raw_acc too (train.ema_decay)
_NOT_METRICS = frozenset({"train_loss", "val_loss", "train_samples", "val_samples"})


def _metric_keys(data: dict[str, Any], kind: str) -> tuple[dict[str, float | None], list[str]]:
    """An epoch_end line's metrics: its train_<m>/val_<m> keys (losses aside)."""
    metrics, problems = {}, []
    for name, value in data.items():
        if type(name) is not str or not _METRIC_KEY.match(name) or name in _NOT_METRICS:
            continue
        if value is None and name in ("train_acc", "val_acc"):
            continue  # the fields every epoch_end has: null where the task has no accuracy
        if value is None or _fits(value, float, None):
            metrics[name] = value
        else:
            problems.append(f"{kind}.{name} is not a finite number or null (got {_cut(value)})")
    return metrics, problems


def _cut(value: Any, limit: int = 40) -> str:
    """A value as it is quoted in a problem: its repr, cut short."""
    text = repr(value) if not isinstance(value, list | dict) else type(value).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from its JSON form; a field of the wrong type reads as its default.

    Raises KeyError when it is not an event this mpt knows (no kind, or another kind)."""
    event, problems = _event(data) if isinstance(data, dict) else (None, ["not an object"])
    if event is None:
        raise KeyError(problems[0])
    return event


def exact_event(data: Any) -> Event | None:
    """The event a JSON object holds when every field of it reads as written (summary.json's
    events, which mpt wrote whole); None for anything else."""
    event, problems = _event(data) if isinstance(data, dict) else (None, ["not an object"])
    return None if problems else event


def _parse_line(raw: bytes | str) -> tuple[Event | None, list[str]]:
    """One line of events.jsonl: the event (None: skipped) and what was wrong with it."""
    problems = []
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError:
            raw = raw.decode("utf-8", errors="replace")
            problems.append("not UTF-8 (the bad bytes read as U+FFFD)")
    try:
        data = json.loads(raw)
    except RecursionError:
        return None, ["nested too deep to read"]
    except ValueError:  # JSONDecodeError, or an integer of thousands of digits
        return None, [*problems, "not JSON"]
    if not isinstance(data, dict):
        return None, [f"not an event (a JSON {_json_type(data)})"]
    event, more = _event(data)
    return event, problems + more


def _json_type(value: Any) -> str:
    names = {list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(value), "number")


def event_from_line(line: bytes | str) -> Event | None:
    """The event on one line of events.jsonl, or None when it holds none; never raises."""
    return _parse_line(line)[0]


@dataclass
class LineProblem:
    line: int  # 1-based line number in events.jsonl
    what: str  # e.g. "not JSON", "step.loss is not a finite number or null (got 'abc')"
    skipped: bool  # the whole line was skipped; else the event was read, that field defaulted


class EventsReader:
    """Reads an events.jsonl whole, or as it grows: `read_new()` returns the events of the
    whole lines written since the last call (a line still being written waits).

    Nothing in the file makes it raise (OSError when the file cannot be opened or read):
    a line that is not an event is skipped (`skipped`), an event with a field of the wrong
    type is kept with that field at its default (`damaged`); `problems` holds the first
    MAX_PROBLEMS of both with their line numbers, `describe()` says it in a sentence.
    """

    def __init__(self, path: str | Path):
        self.path = path if isinstance(path, Path) else Path(path)  # (thousands in a listing)
        self.lines = 0  # whole lines read
        self.skipped = 0
        self.damaged = 0
        self.problems: list[LineProblem] = []
        self.torn = False  # the file ends inside a line (its writer was killed mid-line)
        self._pos = 0  # bytes of the file consumed, the pending line's included
        self._pending = b""  # the bytes after the last newline
        self._too_long = False  # the pending line outgrew MAX_LINE_BYTES: skipped to its end

    @classmethod
    def at(
        cls,
        path: str | Path,
        pos: int,
        lines: int,
        skipped: int = 0,
        damaged: int = 0,
        problems: list[LineProblem] = (),
    ) -> EventsReader:
        """A reader that goes on from byte `pos` (a line's start) of the file, as if it had
        read the `lines` lines before it with these problems (engine/summary.py)."""
        reader = cls(path)
        reader._pos, reader.lines = pos, lines
        reader.skipped, reader.damaged, reader.problems = skipped, damaged, list(problems)
        return reader

    def feed(self, data: bytes) -> list[Event]:
        """The events of bytes the file's writer wrote (its own copy, not the file's)."""
        events: list[Event] = []
        self._pos += len(data)
        self._feed(data, events)
        return events

    def passed(self, line: bytes) -> None:
        """Count a whole line its writer knows to be a good event, without reading it."""
        self._pos += len(line)
        self.lines += 1

    @property
    def unreadable(self) -> int:
        """Lines with a problem: skipped ones and damaged ones."""
        return self.skipped + self.damaged

    @property
    def pending(self) -> bool:
        """Whether the file ends inside a line (still being written, or cut short)."""
        return bool(self._pending) or self._too_long

    @property
    def bytes_read(self) -> int:
        return self._pos

    def read_new(self) -> list[Event]:
        events: list[Event] = []
        # non-blocking: a FIFO named events.jsonl must not hang `mpt ls` or the TUI
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        with open(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(self.path))
            f.seek(self._pos)
            while chunk := f.read(_CHUNK):
                self._pos += len(chunk)
                self._feed(chunk, events)
        return events

    def read_all(self) -> list[Event]:
        """Every event left in the file, its last line too when it lacks only its newline."""
        events = self.read_new()
        if self._pending or self._too_long:
            event, _ = (None, []) if self._too_long else _parse_line(self._pending)
            if event is not None:
                events.append(event)
            else:
                self.torn = True  # the writer was cut off: readers skip it, as ever
            self._pending, self._too_long = b"", False
        return events

    def _feed(self, chunk: bytes, events: list[Event]) -> None:
        *lines, rest = chunk.split(b"\n")
        if not lines:  # still inside one line
            self._grow(rest)
            return
        first = lines[0]
        if self._too_long:
            self._line(None, events, "longer than 8 MiB")
        else:
            self._line(self._pending + first, events)
        for line in lines[1:]:
            self._line(line, events)
        self._pending, self._too_long = b"", False
        self._grow(rest)

    def _grow(self, data: bytes) -> None:
        if self._too_long:
            return
        self._pending += data
        if len(self._pending) > MAX_LINE_BYTES:
            self._pending, self._too_long = b"", True  # not kept in memory: skipped whole

    def _line(self, raw: bytes | None, events: list[Event], why: str = "") -> None:
        self.lines += 1
        if raw is not None and len(raw) > MAX_LINE_BYTES:
            raw, why = None, "longer than 8 MiB"
        if raw is not None and not raw.strip():
            return  # a blank line holds nothing to lose
        event, problems = (None, [why]) if raw is None else _parse_line(raw)
        if event is not None:
            events.append(event)
        if not problems:
            return
        if event is None:
            self.skipped += 1
        else:
            self.damaged += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(LineProblem(self.lines, "; ".join(problems), event is None))

    def describe(self) -> str | None:
        """What could not be read, naming the lines (`2 lines could not be read (line 14:
        not JSON; line 15: ...)`); None when every line was read."""
        if not self.unreadable:
            return None
        parts = []
        for skipped, count, verb in (
            (True, self.skipped, "could not be read"),
            (False, self.damaged, "could be read only in part"),
        ):
            if not count:
                continue
            shown = [p for p in self.problems if p.skipped is skipped][:3]
            where = "; ".join(f"line {p.line}: {p.what}" for p in shown)
            more = ", ..." if count > len(shown) else ""
            plural = "line" if count == 1 else "lines"
            parts.append(f"{count} {plural} {verb} ({where}{more})")
        return "; ".join(parts)


def read_events(path: str | Path) -> list[Event]:
    """Every event of an events.jsonl; lines that are not events are skipped (EventsReader)."""
    return EventsReader(path).read_all()


def history_lines(path: str | Path, count: int) -> list[str]:
    """The first `count` lines of an events.jsonl as text, for a resumed run to copy: split
    at newlines as EventLog counts them (not at every character Python calls a line end),
    bytes that are not UTF-8 read as U+FFFD so that the copy is text; copied as they are,
    a bad line included (every reader skips it)."""
    lines = Path(path).read_bytes().split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # what follows the last newline: nothing
    return [line.decode("utf-8", errors="replace") for line in lines[:count]]


def finite_or_none(value: Any) -> float | None:
    """A value a metrics store can hold (a sink's): a float, None for a missing or
    non-finite one."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _finite_or_null(data: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinity are not JSON: events.jsonl says null (the queue keeps the float)."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in data.items()
    }


def line_object(event: Event) -> dict[str, Any]:
    """An event as events.jsonl writes it: NaN and infinity as null."""
    return _finite_or_null(event.to_dict())


class EventLog:
    """Sends each event to events.jsonl and to a queue; never blocks the caller."""

    def __init__(
        self,
        events: queue.Queue,
        path: Path | None = None,
        history: list[str] = (),
        recorder=None,
    ):
        """`history`: lines of an earlier run's events.jsonl that this run continues.
        `recorder`: told every line written (engine/summary.py keeps summary.json)."""
        self.queue = events
        self.path = path
        # Unbuffered: each line is one write the OS sees at once, so a failed write (a full
        # disk) can be cut back to the last whole line (_write).
        self._file = open(path, "ab", buffering=0) if path else None  # noqa: SIM115
        self._size = os.fstat(self._file.fileno()).st_size if self._file else 0
        # the recorder folds the file from its first byte: one already begun is not its
        self.recorder = recorder if self._file is not None and self._size == 0 else None
        self._failing = False  # the last write failed: warned once, not per event
        self.lines = 0  # lines written so far, history included
        data = "".join(line.rstrip("\n") + "\n" for line in history).encode("utf-8")
        if self._file is not None and history and self._write(data, 0, 0):
            self.lines = len(history)
            self._record(Event(), self.recorder and self.recorder.copied, data)
        self.sinks: list = []  # engine.sinks: CSV, TensorBoard (the profile's [log])

    def attach(self, sinks: list, history: list[str] = ()) -> None:
        """Feed every later event to `sinks`, after replaying `history` (events.jsonl lines)."""
        self.sinks = list(sinks)
        for line in history if self.sinks else ():
            event = event_from_line(line)  # as read_events: a line that is no event is skipped
            if event is not None:
                self._to_sinks(event)

    def _to_sinks(self, event: Event) -> None:
        for sink in list(self.sinks):
            try:
                sink.write(event)
            except Exception as e:  # noqa: BLE001 - a logging sink never stops training
                self.sinks.remove(sink)
                _close_quietly(sink)
                self.emit(
                    Warning(
                        step=event.step,
                        epoch=event.epoch,
                        message=f"{type(sink).__name__} stopped logging: {type(e).__name__}: {e}",
                    )
                )

    def emit(self, event: Event) -> None:
        if self._file is not None:
            line = json.dumps(_finite_or_null(event.to_dict()), allow_nan=False) + "\n"
            data = line.encode("utf-8")
            if self._write(data, event.step, event.epoch):
                self.lines += 1
                self._record(event, self.recorder and self.recorder.add, event, data)
        if self.sinks:
            self._to_sinks(event)
        self.queue.put_nowait(event)  # unbounded queue: a slow reader never stalls training

    def _record(self, event: Event, call, *args) -> None:
        """Tell the recorder what was written (`call`: one of its methods, None without
        one). Its problems are said on the queue and never stop the run; one it did not
        foresee ends the recording (the summary it left stays true of the lines it covers)."""
        if call is None:
            return
        try:
            problem = call(*args)
        except Exception as e:  # noqa: BLE001 - a summary is a shortcut, never worth a run
            self.recorder = None
            problem = (
                f"{self.path.parent / 'summary.json'} is no longer kept up to date "
                f"({type(e).__name__}: {e}); views read events.jsonl whole instead"
            )
        if problem:
            self.queue.put_nowait(Warning(step=event.step, epoch=event.epoch, message=problem))

    def _write(self, data: bytes, step: int, epoch: int) -> bool:
        """Append whole lines to events.jsonl; on a failed write, cut the file back to its
        last whole line and say so once on the queue: the run goes on, the file stays valid."""
        try:
            done = 0
            while done < len(data):  # the OS may take part of a write (a disk filling up)
                done += self._file.write(data[done:])
        except OSError as e:
            with contextlib.suppress(OSError):
                os.ftruncate(self._file.fileno(), self._size)
            if not self._failing:
                self._failing = True
                message = (
                    f"could not write {self.path} ({e.strerror or e}); events go on to the "
                    "console but are missing from the file until writing works again"
                )
                self.queue.put_nowait(Warning(step=step, epoch=epoch, message=message))
            return False
        self._size += len(data)
        self._failing = False
        return True

    def close(self) -> None:
        self._record(Event(), self.recorder and self.recorder.close)
        self.recorder = None
        if self._file is not None:
            with contextlib.suppress(OSError):  # a close that fails to flush loses nothing here
                self._file.close()
            self._file = None
            if self._failing:
                self._mark_ended()
        for sink in self.sinks:
            _close_quietly(sink)
        self.sinks = []

    def _mark_ended(self) -> None:
        """The run's last events never reached the file (a full disk): date the file back
        to 1970, a change that needs no free space, so that a reader that finds no end and
        no process to ask (engine.runs) takes the run for dead, never for running."""
        with contextlib.suppress(OSError):
            os.utime(self.path, (0, 0))


def _close_quietly(sink) -> None:
    # Closing a broken sink must not hide how the run ended.
    with contextlib.suppress(Exception):
        sink.close()
