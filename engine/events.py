"""Events: plain records the Trainer emits, one type per kind (DESIGN.md, Events).

Every event is picklable and JSON-serialisable, and carries `kind`, `time`, `step`
and `epoch`. `EventLog` writes them to events.jsonl (one object a line, flushed per
line) and puts them on the run's queue without ever blocking the Trainer.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import time
from dataclasses import asdict, dataclass, field
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
    num_classes: int = 0
    input_shape: list[int] = field(default_factory=list)
    arch: str = ""
    parameters: int = 0
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


@dataclass
class EpochEnd(Event):
    kind: ClassVar[str] = "epoch_end"
    epochs: int = 0
    train_loss: float = 0.0
    train_acc: float = 0.0
    val_loss: float | None = None
    val_acc: float | None = None
    lr: float = 0.0
    seconds: float = 0.0
    samples_per_s: float = 0.0


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


def event_from_dict(data: dict[str, Any]) -> Event:
    """Rebuild an event from its JSON form (e.g. a line of events.jsonl)."""
    data = dict(data)
    cls = EVENT_TYPES[data.pop("kind")]
    return cls(**data)


def read_events(path: str | Path) -> list[Event]:
    """Read an events.jsonl file; a torn last line (a killed writer) is skipped."""
    events = []
    for line in Path(path).read_text().splitlines():
        try:
            events.append(event_from_dict(json.loads(line)))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return events


def _finite_or_null(data: dict[str, Any]) -> dict[str, Any]:
    """NaN and infinity are not JSON: events.jsonl says null (the queue keeps the float)."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in data.items()
    }


class EventLog:
    """Sends each event to events.jsonl and to a queue; never blocks the caller."""

    def __init__(self, events: queue.Queue, path: Path | None = None, history: list[str] = ()):
        """`history`: lines of an earlier run's events.jsonl that this run continues."""
        self.queue = events
        self.path = path
        # Unbuffered: each line is one write the OS sees at once, so a failed write (a full
        # disk) can be cut back to the last whole line (_write).
        self._file = open(path, "ab", buffering=0) if path else None  # noqa: SIM115
        self._size = os.fstat(self._file.fileno()).st_size if self._file else 0
        self._failing = False  # the last write failed: warned once, not per event
        self.lines = 0  # lines written so far, history included
        text = "".join(line.rstrip("\n") + "\n" for line in history)
        if self._file is not None and history and self._write(text, 0, 0):
            self.lines = len(history)
        self.sinks: list = []  # engine.sinks: CSV, TensorBoard (the profile's [log])

    def attach(self, sinks: list, history: list[str] = ()) -> None:
        """Feed every later event to `sinks`, after replaying `history` (events.jsonl lines)."""
        self.sinks = list(sinks)
        for line in history if self.sinks else ():
            try:
                event = event_from_dict(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # as read_events: a torn line is skipped
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
            if self._write(line, event.step, event.epoch):
                self.lines += 1
        if self.sinks:
            self._to_sinks(event)
        self.queue.put_nowait(event)  # unbounded queue: a slow reader never stalls training

    def _write(self, text: str, step: int, epoch: int) -> bool:
        """Append whole lines to events.jsonl; on a failed write, cut the file back to its
        last whole line and say so once on the queue: the run goes on, the file stays valid."""
        data = text.encode("utf-8")
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
