"""Logging sinks chosen in the profile's `[log]`: a CSV of epoch metrics and TensorBoard;
and `[notify]`'s, which tells a command or a webhook how the run ended (engine/notify.py).

Sinks are fed from events (DESIGN.md: profile -> Trainer -> events -> sinks), by the
EventLog that writes events.jsonl, so the training loop knows nothing of them. Each
sink is a function of the events it is given: a resumed run replays its history (the
events.jsonl lines it starts with) into fresh sinks, so every run directory holds the
whole curve, as its events.jsonl does. Non-finite values are left out (an empty CSV
cell, no TensorBoard point), as events.jsonl writes them as null, so that a replayed
history and a live one give the same files.
"""

from __future__ import annotations

import csv
import queue
from pathlib import Path
from typing import Any, Protocol

from engine import events as ev
from engine import sink_wandb
from engine.errors import MptError
from engine.events import finite_or_none
from engine.notify import NotifySink
from engine.task_spec import metric_keys

CSV_NAME = "metrics.csv"
# One row per epoch_end event; lr is the rate at the end of the epoch, time its Unix time.
# The task's metrics (task_spec.metric_keys) go in between: train_<m> after train_loss,
# val_<m> after val_loss; a classifier's default is train_acc and val_acc.
CSV_COLUMNS = (
    "epoch",
    "step",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "seconds",
    "samples_per_s",
    "time",
)


def csv_columns(started: ev.RunStarted | None) -> list[str]:
    """metrics.csv's columns for a run that started as `started` (None: unknown yet)."""
    if started is None or not started.metrics:
        return list(CSV_COLUMNS)
    keys = metric_keys(started.task, started.metrics)
    train = [k for k in keys if k.startswith("train_")]
    val = [k for k in keys if k.startswith("val_")]
    return ["epoch", "step", "train_loss", *train, "val_loss", *val, *CSV_COLUMNS[6:]]


class Sink(Protocol):
    def write(self, event: ev.Event) -> None: ...

    def close(self) -> None: ...


class CsvSink:
    """`metrics.csv`: one row per epoch, flushed per row (readable while the run goes on)."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        self._csv = csv.writer(self._file)
        self._columns: list[str] | None = None  # written at run_started: the task's metrics

    def _header(self, started: ev.RunStarted | None) -> None:
        if self._columns is None:
            self._columns = csv_columns(started)
            self._csv.writerow(self._columns)
            self._file.flush()

    def write(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted):
            self._header(event)
        if not isinstance(event, ev.EpochEnd):
            return
        self._header(None)
        row = []
        for name in self._columns:
            value = event.metrics.get(name, getattr(event, name, None))
            if isinstance(value, float):
                value = finite_or_none(value)
            row.append("" if value is None else value)  # str(float) reads back exactly
        self._csv.writerow(row)
        self._file.flush()

    def close(self) -> None:
        if not self._file.closed:
            self._header(None)  # a run that never started still leaves the header
            self._file.close()


_MIB = 1024 * 1024


class TensorBoardSink:
    """TensorBoard scalars in the run directory, x = the optimizer step.

    From `step` events: train/loss, train/lr, train/samples_per_s and, on CUDA,
    gpu/mem_allocated_mib, gpu/mem_reserved_mib, gpu/mem_peak_mib. From `epoch_end`:
    epoch/train_loss, epoch/val_loss, epoch/<each metric> (train_acc, val_acc, val_mae,
    ...), epoch/lr, epoch/seconds. Each point keeps its event's wall time.
    """

    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception as e:  # noqa: BLE001 - a broken install raises more than ImportError
            raise MptError(
                f"log.tensorboard = true: torch.utils.tensorboard cannot be imported "
                f"({type(e).__name__}: {e}); pip install 'mpt[tensorboard]' or set "
                "log.tensorboard = false"
            ) from None
        self.writer = SummaryWriter(log_dir=str(log_dir))

    def _scalar(self, tag: str, value: Any, event: ev.Event) -> None:
        value = finite_or_none(value)
        if value is not None:
            self.writer.add_scalar(tag, value, global_step=event.step, walltime=event.time)

    def write(self, event: ev.Event) -> None:
        if isinstance(event, ev.Step):
            self._scalar("train/loss", event.loss, event)
            self._scalar("train/lr", event.lr, event)
            self._scalar("train/samples_per_s", event.samples_per_s, event)
            for name in ("allocated", "reserved", "peak"):
                nbytes = getattr(event, f"gpu_mem_{name}")
                if nbytes is not None:
                    self._scalar(f"gpu/mem_{name}_mib", nbytes / _MIB, event)
        elif isinstance(event, ev.EpochEnd):
            values = {"train_acc": event.train_acc, "val_acc": event.val_acc, **event.metrics}
            for name in ("train_loss", "val_loss", "lr", "seconds"):
                values[name] = getattr(event, name)
            for name, value in values.items():
                self._scalar(f"epoch/{name}", value, event)
        elif isinstance(event, ev.RunFinished | ev.RunFailed):
            self.writer.flush()  # the run is over: make the last points readable now

    def close(self) -> None:
        self.writer.close()


def open_sinks(
    log: Any,
    run_dir: Path | None,
    notify: Any = None,
    events: queue.Queue | None = None,
    profile: Any = None,
) -> list[Sink]:
    """The sinks `log` (the profile's LogSection) asks for, writing into `run_dir`, and
    the notifications `notify` (its NotifySection) asks for, warning on `events`; the
    MLflow and W&B sinks need the whole `profile` (their params, its config).

    None without a run directory (under torchrun: on every rank but 0). Raises MptError
    when tensorboard is asked for but cannot be imported.
    """
    if run_dir is None:
        return []
    sinks: list[Sink] = []
    if log.tensorboard:
        sinks.append(TensorBoardSink(run_dir))
    if log.csv:
        sinks.append(CsvSink(run_dir / CSV_NAME))
    if getattr(log, "mlflow", False) and profile is not None:
        from engine.sink_mlflow import MlflowSink  # imports mlflow at its first event

        sinks.append(MlflowSink(profile))
    if profile is not None and sink_wandb.wanted(log):  # imports wandb in a thread of its own
        sinks.append(sink_wandb.WandbSink(profile))
    if notify is not None and (notify.command or notify.webhook):
        sinks.append(NotifySink(notify, run_dir, events))
    return sinks
