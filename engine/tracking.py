"""What the experiment-tracker sinks (engine/sink_mlflow.py, engine/sink_wandb.py) share:
the profile flattened, the figures each event gives, the `mpt.*` facts of a run (MLflow's
tags, W&B's summary), and where a resumed run finds the tracker run it may continue.

A tracker sink holds the events older than itself (the replayed history of a resumed
run) until the live `run_started`; the last replayed `run_started` names the run
directory resumed from, whose id file (`mlflow.json`, `wandb.json`) names its tracker run.
"""

from __future__ import annotations

import json
import queue
import threading
import time
from pathlib import Path
from typing import Any

from engine import events as ev
from engine.events import finite_or_none

# Each `step` event's, at its step. The host and GPU figures change slowly: a tracker
# logs them once an epoch (the epoch's last step event's).
STEP_FIELDS = ("loss", "lr", "samples_per_s")
HOST_FIELDS = ("gpu_util", "gpu_temp", "gpu_power", "cpu_percent")
HOST_MIB = ("gpu_mem_allocated", "gpu_mem_reserved", "gpu_mem_peak", "rss", "mem_available")
_MIB = 1024 * 1024
# Short epochs hand their figures over in one batch every few seconds: a tracker's write
# takes CPU the trainer's threads would otherwise have (bench/sinks.py).
FLUSH_EVERY_S = 5.0


def flat_profile(profile: Any) -> dict[str, Any]:
    """The profile as one flat dict: "section.key" -> its value."""
    return {
        f"{section}.{key}": value
        for section, table in profile.to_dict().items()
        for key, value in table.items()
    }


def _finite(values: dict[str, Any]) -> dict[str, float]:
    """The values a metrics store can hold: missing and non-finite ones left out."""
    return {k: f for k, v in values.items() if (f := finite_or_none(v)) is not None}


def step_values(step: ev.Step) -> dict[str, float]:
    """A `step` event's loss, lr and throughput."""
    return _finite({name: getattr(step, name) for name in STEP_FIELDS})


def host_values(step: ev.Step) -> dict[str, float]:
    """A `step` event's host and GPU figures, memory in MiB (`rss_mib`, `gpu_mem_peak_mib`)."""
    values = {name: getattr(step, name) for name in HOST_FIELDS}
    for name in HOST_MIB:
        nbytes = getattr(step, name)
        if nbytes is not None:
            values[f"{name}_mib"] = nbytes / _MIB
    return _finite(values)


def epoch_values(end: ev.EpochEnd) -> dict[str, float]:
    """An `epoch_end`'s metrics: every train_*/val_* one, epoch, epoch_lr, epoch_seconds."""
    values = {"train_acc": end.train_acc, "val_acc": end.val_acc, **end.metrics}
    values.update(train_loss=end.train_loss, val_loss=end.val_loss)
    values.update(epoch=end.epoch, epoch_lr=end.lr, epoch_seconds=end.seconds)
    return _finite(values)


class RunFacts:
    """The `mpt.*` facts the events give: run directory, host, device, state, checkpoints,
    the checkpoint resumed from."""

    def __init__(self) -> None:
        self.facts: dict[str, str] = {}
        self.state = "running"  # the ending's reason, or failed

    def update(self, event: ev.Event) -> dict[str, str]:
        """Fold in `event`; the facts it sets (none for most events)."""
        new: dict[str, str] = {}
        if isinstance(event, ev.RunStarted):
            new.update({"mpt.run_dir": event.run_dir, "mpt.host": event.host})
            new.update({"mpt.state": "running", "mpt.device": event.device})
            if event.resumed_from:
                new["mpt.resumed_from"] = event.resumed_from
        elif isinstance(event, ev.CheckpointSaved) and event.path:
            kind = "best" if event.reason == "best" else "last"
            new[f"mpt.{kind}_checkpoint"] = event.path
            if event.reason == "final":
                new["mpt.final_checkpoint"] = event.path
        elif isinstance(event, ev.RunFinished | ev.RunFailed):
            failed = isinstance(event, ev.RunFailed)
            self.state = "failed" if failed else event.reason or "completed"
            new["mpt.state"] = self.state
        self.facts.update(new)
        return new


def resumed_run_dir(history: list[ev.Event]) -> Path | None:
    """The run directory a resumed run continues (its last replayed run_started's)."""
    runs = [e for e in history if isinstance(e, ev.RunStarted) and e.run_dir]
    return Path(runs[-1].run_dir) if runs else None


def read_id_file(run_dir: Path | None, name: str) -> dict[str, Any] | None:
    """A run directory's tracker id file (`mlflow.json`, `wandb.json`); None when absent
    or unreadable."""
    if run_dir is None:
        return None
    try:
        saved = json.loads((run_dir / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def write_id_file(run_dir: Path, name: str, data: dict[str, Any]) -> None:
    (run_dir / name).write_text(json.dumps(data) + "\n", encoding="utf-8")


class TrackerSink:
    """What a tracker sink does, whatever the tracker: it holds the replayed history until
    the live `run_started` (then `_start`), folds each event into metrics at its step
    (`_add`) and `mpt.*` facts (`_add_facts`), with the host/GPU figures once an epoch, and
    hands them to a writer thread of its own at an epoch's end at most every FLUSH_EVERY_S
    seconds, and at the run's (`flush`),
    so the tracker's seconds stay out of the training loop. The writer's first failure is
    raised by the next `write`: EventLog drops the sink with one warning."""

    def __init__(self) -> None:
        self._opened = time.time()  # events older than this are the replayed history
        self._history: list[ev.Event] = []
        self._started = False
        self._facts = RunFacts()
        self._last_step: ev.Step | None = None  # its host/GPU figures go in at epoch end
        self._jobs: queue.Queue = queue.Queue()
        self._writer: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._flushed = time.monotonic()  # the last hand-over to the writer

    def write(self, event: ev.Event) -> None:
        if self._failure is not None:
            raise self._failure
        if not self._started:
            if isinstance(event, ev.RunStarted) and event.time >= self._opened:
                self._started = True
                self._start(event)
            elif event.time < self._opened:
                self._history.append(event)
            return
        self._log(event)
        ended = isinstance(event, ev.RunFinished | ev.RunFailed)
        now = time.monotonic()
        if ended or (isinstance(event, ev.EpochEnd) and now - self._flushed >= FLUSH_EVERY_S):
            self._flushed = now
            self.flush()

    def _start(self, started: ev.RunStarted) -> None:
        raise NotImplementedError

    def _add(self, values: dict[str, float], event: ev.Event) -> None:
        raise NotImplementedError

    def _add_facts(self, facts: dict[str, str], event: ev.Event) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        raise NotImplementedError

    def _log(self, event: ev.Event) -> None:
        if isinstance(event, ev.Step):
            self._add(step_values(event), event)
            self._last_step = event
        elif isinstance(event, ev.EpochEnd):
            self._host_figures()
            self._add(epoch_values(event), event)
        else:
            self._add_facts(self._facts.update(event), event)

    def _host_figures(self) -> None:
        """The last step event's host and GPU figures, at its step."""
        step, self._last_step = self._last_step, None
        if step is not None:
            self._add(host_values(step), step)

    def _start_writer(self, name: str, target, *args: Any) -> None:
        self._writer = threading.Thread(target=target, args=args, name=name, daemon=True)
        self._writer.start()

    def _serve(self, write) -> None:
        """The writer's loop: each job handed to `write(job)`, until the None that `close`
        sends; after a failure the rest is dropped (the sink is being removed)."""
        while (job := self._jobs.get()) is not None:
            if self._failure is not None:
                continue
            try:
                write(job)
            except Exception as e:  # noqa: BLE001 - raised by the next write: one warning
                self._failure = e

    def _stop_writer(self) -> bool:
        """The last figures flushed and the writer ended: at most 60 s, so a tracker that
        hangs never holds the run's end longer. True when it ended with no failure."""
        self._host_figures()
        self.flush()
        self._jobs.put(None)
        self._writer.join(timeout=60)
        return self._failure is None and not self._writer.is_alive()
