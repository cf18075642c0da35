"""A sweep as the console shows it: its trials, followed while the sweep writes them.

`SweepWatch(path).poll()` reads only what was added since its last call: the new lines of
trials.jsonl, the new events of each running trial's run (a trial that ended is read
once), and the runner's liveness (engine/sweep_ctl.py). It returns a `SweepSnapshot`,
plain data the sweep screen draws. No Textual here; the screen polls in a thread.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import events as ev
from engine import sweep_ctl
from engine.formatting import metric
from engine.monitor import resolve_mode
from engine.stop import run_state, state_label
from engine.sweep import ENDED_WELL, SweepDir, TrialRecord
from engine.sweep_ctl import SETTLED


class TrialsFile:
    """trials.jsonl read as it grows: the records of the whole lines written since the
    last call (a line still being written waits; a torn or foreign line is skipped)."""

    def __init__(self, path: Path):
        self.path = path
        self._pos = 0
        self._pending = b""

    def read_new(self) -> list[TrialRecord]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self._pos)
                chunk = f.read()
        except OSError:
            return []
        self._pos += len(chunk)
        *lines, self._pending = (self._pending + chunk).split(b"\n")
        names = set(TrialRecord.__dataclass_fields__)
        records = []
        for line in lines:
            try:
                data = json.loads(line)
                records.append(TrialRecord(**{k: v for k, v in data.items() if k in names}))
            except (ValueError, TypeError):
                continue
        return records


class TrialRun:
    """One trial's run directory, its events.jsonl folded as it grows: the epoch, the
    monitor's last and best value, and whether the run is paused or has ended."""

    def __init__(self, run_dir: Path, monitor: str):
        self.run_dir = run_dir
        self.monitor = monitor
        self.lower = resolve_mode(monitor, "auto") == "min"
        self._reader = ev.EventsReader(run_dir / "events.jsonl")
        self.epoch = 0
        self.epochs = 0
        self.last: float | None = None
        self.best: float | None = None
        self.paused = False
        self.started = False  # its run_started is read (before: torch and the data load)
        self.ended: str | None = None  # the run's end state, once it wrote one

    def read_new(self) -> None:
        try:
            events = self._reader.read_new()
        except OSError:
            return
        for e in events:
            self._add(e)

    def _add(self, e: ev.Event) -> None:
        self.epoch = max(self.epoch, e.epoch)  # the epoch in progress, as the dashboard says
        if isinstance(e, ev.RunStarted):
            self.epochs, self.paused, self.ended, self.started = e.epochs, False, None, True
        elif isinstance(e, ev.EpochEnd):
            self.epochs = e.epochs or self.epochs
            value = e.metrics.get(self.monitor, getattr(e, self.monitor, None))
            if isinstance(value, float | int) and math.isfinite(value):
                self.last = value
                if self.best is None or (value < self.best if self.lower else value > self.best):
                    self.best = value
        elif isinstance(e, ev.Paused | ev.Resumed):
            self.paused = isinstance(e, ev.Paused)
        elif isinstance(e, ev.RunFinished):
            self.ended = run_state(e.reason)
        elif isinstance(e, ev.RunFailed):
            self.ended = "failed"


@dataclass
class TrialRow:
    """One trial as the sweep screen lists it."""

    trial: int  # 0-based; shown 1-based
    values: dict[str, Any]
    state: str
    run_dir: Path | None = None
    epoch: int = 0
    epochs: int = 0
    last: float | None = None  # the monitor's last value
    best: float | None = None
    problem: str = ""


@dataclass
class SweepSnapshot:
    """What the sweep screen shows at one moment: the sweep's state as `mpt ls` sees it
    (`state.state`: running, paused, stopping, finished, failed, interrupted, not
    started) and a row per trial."""

    state: sweep_ctl.SweepState
    parallel: int
    rows: list[TrialRow] = field(default_factory=list)

    @property
    def path(self) -> Path:
        return self.state.path

    @property
    def monitor(self) -> str:
        return self.state.monitor

    @property
    def status(self) -> str:
        return self.state.state

    @property
    def live(self) -> bool:
        return self.state.live

    def best(self) -> TrialRow | None:
        """The trial with the best monitor value so far (a running one's counts too; a
        pruned one's never, as in the end table)."""
        scored = [r for r in self.rows if r.best is not None and r.state != "pruned"]
        lower = resolve_mode(self.monitor, "auto") == "min"
        if not scored:
            return None
        return (min if lower else max)(scored, key=lambda r: r.best)

    def counts(self) -> str:
        """`1 running, 2 finished, 1 queued`: how many trials are in each state."""
        seen: dict[str, int] = {}
        for r in self.rows:
            seen[r.state] = seen.get(r.state, 0) + 1
        return ", ".join(f"{n} {state_label(s)}" for s, n in seen.items())


class SweepWatch:
    """Follows one sweep directory; see the module's docstring."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.folder = SweepDir(self.path)
        self.sweep, trials = self.folder.read_sweep()  # MptError: not a sweep directory
        self.records = {t.index: TrialRecord(t.index, t.values) for t in trials}
        self._trials_file = TrialsFile(self.folder.trials_file)
        self._runs: dict[int, TrialRun] = {}

    def poll(self) -> SweepSnapshot:
        for rec in self._trials_file.read_new():
            self.records[rec.trial] = rec
        rows = [self._row(rec) for _, rec in sorted(self.records.items())]
        return SweepSnapshot(self._state(), self.sweep.parallel, rows)

    def _state(self) -> sweep_ctl.SweepState:
        """The sweep's state as read_sweep_state says it, from the records read so far
        (never trials.jsonl again)."""
        return sweep_ctl.sweep_state(self.path, self.sweep, dict(self.records), len(self.records))

    def _row(self, rec: TrialRecord) -> TrialRow:
        row = TrialRow(rec.trial, rec.values, rec.state, best=rec.best, problem=rec.problem)
        run = self._run_of(rec)
        if rec.state == "running" and (run is None or not run.started):
            row.state = "starting"  # its process imports torch and loads the data: seconds
        if run is None:
            return row
        row.run_dir, row.epoch, row.epochs, row.last = run.run_dir, run.epoch, run.epochs, run.last
        if rec.state == "running":  # the run's own word, until the sweep records its end
            row.best = run.best
            if run.ended is not None:
                row.state = run.ended
            elif run.paused:
                row.state = "paused"
        return row

    def _run_of(self, rec: TrialRecord) -> TrialRun | None:
        """The trial's run, followed: a running trial's newest run directory (a resumed
        trial makes a new one), read on every poll; an ended trial's, read once."""
        if rec.state == "running":
            run_dir = self.folder.newest_run(rec.trial)
        elif rec.run_dir:  # (recorded relative to where the sweep started: by its name)
            run_dir = self.folder.trial_folder(rec.trial) / Path(rec.run_dir).name
        else:
            return None
        if run_dir is None:
            return None
        run = self._runs.get(rec.trial)
        fresh = run is None or run.run_dir != run_dir
        if fresh:
            run = self._runs[rec.trial] = TrialRun(run_dir, self.sweep.monitor)
        if fresh or rec.state == "running" or run.ended is None:
            run.read_new()
        return run


# ---- text ----
def values_text(values: dict[str, Any]) -> str:
    """`lr=0.001 batch_size=32`: each key by its last part (the whole key if two share it)."""
    short = [k.rpartition(".")[2] for k in values]
    parts = []
    for (key, value), name in zip(values.items(), short, strict=True):
        shown = f"{value:.4g}" if isinstance(value, float) else json.dumps(value)
        parts.append(f"{name if short.count(name) == 1 else key}={shown}")
    return " ".join(parts) or "(as is)"


def value_text(monitor: str, value: float | None) -> str:
    return metric(monitor, value) if value is not None else "-"


def trial_cells(row: TrialRow, monitor: str, marked: bool) -> list[str]:
    """A trial's row: number, state, values, epoch, the monitor's last value, its best."""
    epoch = f"{row.epoch}/{row.epochs}" if row.epochs else (str(row.epoch) if row.epoch else "-")
    return [
        ("● " if marked else "") + str(row.trial + 1),
        state_label(row.state),
        values_text(row.values),
        epoch,
        value_text(monitor, row.last),
        value_text(monitor, row.best),
    ]


def status_text(snap: SweepSnapshot) -> str:
    """The sweep's state in a sentence, and what to do about it."""
    best = snap.best()
    best_text = (
        f" · best: trial {best.trial + 1}, {snap.monitor} {value_text(snap.monitor, best.best)}"
        if best is not None
        else ""
    )
    counts, path = snap.counts(), snap.path
    if snap.status == "paused":
        return f"paused: no new trial starts, the running ones wait (p resumes) · {counts}"
    if snap.status == "stopping":
        return "stopping: the running trials save a checkpoint, then the sweep ends"
    if snap.status in ("interrupted", "not started"):
        todo = sum(r.state not in SETTLED for r in snap.rows)
        return (
            f"{snap.status}, {todo} of {len(snap.rows)} trials to run: r goes on in the "
            f"background, as mpt sweep --resume {path} does"
        )
    if snap.status in ("finished", "failed"):
        well = sum(r.state in ENDED_WELL for r in snap.rows)
        return f"ended: {well} of {len(snap.rows)} trials ended well · {counts}{best_text}"
    return f"running · {counts}{best_text}"
