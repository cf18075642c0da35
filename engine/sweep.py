"""`mpt sweep`: the trials of a sweep file as a supervised queue of ordinary `mpt run`s.

The sweep directory `<out_dir>/<sweep name>/<stamp>/` holds sweep.json (the resolved
sweep and its trials), trials.jsonl (one line per change of a trial's state, the last
line of a trial wins: a sweep killed at any moment leaves a readable record) and one
folder per trial, `trial-NNN/`, in which the trial's `mpt run` makes its ordinary run
directory (`trial-NNN/<stamp>/`, listed by `mpt ls SWEEP_DIR`) and writes output.log.

Each trial is its own process (a crash of one never takes the others down), `parallel`
at a time, on its own device when `devices` are given (CUDA_VISIBLE_DEVICES), with the
CPU's threads split between the trials on the CPU. SIGINT, SIGTERM and SIGHUP stop the
running trials with their checkpoints; `mpt sweep --resume SWEEP_DIR` resumes those
exactly (`mpt run --resume`) and runs the ones not started.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from engine import events as ev
from engine.console import Console
from engine.errors import MptError
from engine.formatting import metric
from engine.monitor import resolve_mode
from engine.runs import summarize_run
from engine.stop import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK
from engine.sweep_live import RunnerMark
from engine.sweep_spec import Sweep, Trial

POLL_S = 0.2
# the states a trial ends in as asked; any other end makes the sweep's exit code non-zero
# (pruned: optuna stopped it, with its checkpoint, as asked of a sweep with a pruner)
ENDED_WELL = ("finished", "early_stopped", "max_time", "stopped", "pruned")
LIVE = ("queued", "running")


@dataclass
class TrialRecord:
    """The last word on one trial, as trials.jsonl keeps it."""

    trial: int
    values: dict[str, Any]
    state: str = "queued"  # queued, running, a run's end state, failed, invalid
    run_dir: str | None = None
    best: float | None = None  # the best value of the sweep's monitor
    best_epoch: int | None = None
    exit: int | None = None
    problem: str = ""  # invalid: the profile's problems; failed: the run's error
    pruned_epoch: int | None = None  # pruned: the epoch whose monitor value pruned it
    optuna_trial: int | None = None  # method = "optuna": its trial's number in the study


class SweepDir:
    """The files of one sweep directory."""

    def __init__(self, path: Path):
        self.path = path

    @property
    def trials_file(self) -> Path:
        return self.path / "trials.jsonl"

    def write_sweep(self, sweep: Sweep, trials: list[Trial]) -> None:
        data = {**sweep.to_dict(), "trial_values": [t.values for t in trials]}
        (self.path / "sweep.json").write_text(json.dumps(data, indent=2) + "\n")

    def read_sweep(self) -> tuple[Sweep, list[Trial]]:
        try:
            data = json.loads((self.path / "sweep.json").read_text())
            values = data.pop("trial_values")
            return Sweep.from_dict(data), [Trial(i, v) for i, v in enumerate(values)]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise MptError(
                f"{self.path}: not a sweep directory mpt can resume (sweep.json: {e}); "
                "give the folder `mpt sweep` printed"
            ) from None

    def record(self, rec: TrialRecord) -> None:
        line = json.dumps({**vars(rec), "time": time.time()}, allow_nan=False, default=str)
        with open(self.trials_file, "a", encoding="utf-8") as f:
            f.write(line + "\n")

    def records(self) -> dict[int, TrialRecord]:
        """Each trial's last record; a torn or foreign line is skipped."""
        found: dict[int, TrialRecord] = {}
        try:
            lines = self.trials_file.read_text(encoding="utf-8", errors="replace").splitlines()
        except FileNotFoundError:
            return found
        names = set(TrialRecord.__dataclass_fields__)
        for line in lines:
            try:
                data = json.loads(line)
                rec = TrialRecord(**{k: v for k, v in data.items() if k in names})
            except (ValueError, TypeError):
                continue
            found[rec.trial] = rec
        return found

    def trial_folder(self, trial: int) -> Path:
        return self.path / Trial(trial, {}).name

    def newest_run(self, trial: int) -> Path | None:
        runs = sorted(p.parent for p in self.trial_folder(trial).glob("*/events.jsonl"))
        return runs[-1] if runs else None


def monitor_value(event: ev.Event, monitor: str) -> float | None:
    """The value of `monitor` in an epoch_end event; None in any other event, or NaN."""
    if not isinstance(event, ev.EpochEnd):
        return None
    value = event.metrics.get(monitor, getattr(event, monitor, None))
    return value if isinstance(value, float | int) and value == value else None  # not NaN


def best_of(run_dir: Path, monitor: str) -> tuple[float | None, int | None]:
    """The best value of `monitor` over the run's validations, and its epoch."""
    better = min if resolve_mode(monitor, "auto") == "min" else max
    seen = []
    for e in ev.read_events(run_dir / "events.jsonl"):
        value = monitor_value(e, monitor)
        if value is not None:
            seen.append((value, e.epoch))
    if not seen:
        return None, None
    return better(seen, key=lambda pair: pair[0])


@dataclass
class Running:
    trial: Trial
    proc: subprocess.Popen
    slot: int
    log: Any
    before: Path | None  # the trial's newest run directory when it started


@dataclass
class Prune:
    """A policy's word to stop a running trial early: the epoch that decided it, and why."""

    epoch: int
    why: str


class TrialPolicy(Protocol):
    """Which trial runs next and what a trial's progress means: the runner's loop asks it
    when a slot is free, on each poll of a running trial, and when a trial ends."""

    def pending(self) -> bool: ...  # trials left to start

    def next_trial(self) -> tuple[Trial, Path | None] | None: ...  # (trial, run dir to resume)

    def progress(self, r: Running) -> Prune | None: ...

    def ended(self, r: Running, rec: TrialRecord) -> None: ...  # rec as it is about to be recorded


class FixedQueue:
    """grid and random: every trial known before the sweep starts, run in order."""

    def __init__(self, queue: list[tuple[Trial, Path | None]]):
        self.queue = list(queue)

    def pending(self) -> bool:
        return bool(self.queue)

    def next_trial(self) -> tuple[Trial, Path | None] | None:
        return self.queue.pop(0) if self.queue else None

    def progress(self, r: Running) -> Prune | None:
        return None

    def ended(self, r: Running, rec: TrialRecord) -> None:
        pass


class SweepRunner:
    """Runs the trials of one sweep directory; `run()` returns the sweep's exit code."""

    def __init__(self, sweep: Sweep, folder: SweepDir, console: Console):
        self.sweep, self.folder, self.console = sweep, folder, console
        self.records: dict[int, TrialRecord] = {}
        self.stopping = False
        self.policy: TrialPolicy = FixedQueue([])
        # with devices, one trial on each of the first `parallel` at a time
        self.slots = sweep.devices[: sweep.parallel] or [None] * sweep.parallel

    # ---- what each trial runs ----
    def command(
        self, trial: Trial, resume: Path | None, device: str | None = None, mpt: list[str] = ()
    ) -> list[str]:
        """The trial's `mpt run` on `device` (its slot's: a cuda:N slot's trial sees that
        one GPU as cuda, CUDA_VISIBLE_DEVICES); `mpt`: the program (default: this Python's
        engine, `-P`: never the cwd's own `engine`)."""
        mpt = list(mpt) or [sys.executable, "-P", "-m", "engine.cli"]
        if resume is not None:  # the device is the checkpoint's profile's
            return [*mpt, "run", "--resume", str(resume)]
        pinned = [f"run.device={device.partition(':')[0]}"] if device else []
        sets = [
            *self.sweep.overrides,
            *trial.overrides(),
            f"run.out_dir={json.dumps(str(self.folder.path))}",
            f"run.name={json.dumps(trial.name)}",
            *pinned,
        ]
        return [*mpt, "run", str(self.sweep.profile), *(x for s in sets for x in ("--set", s))]

    def environment(self, slot: int) -> dict[str, str]:
        env = dict(os.environ)
        device = self.slots[slot]
        on_cpu = [d for d in self.slots if d in (None, "cpu")]
        if device in (None, "cpu") and "OMP_NUM_THREADS" not in env:
            # trials share the CPU: each gets its part of the cores (a user's own
            # OMP_NUM_THREADS stands). A run's numbers depend on its thread count: a
            # resumed trial gets the same count as its first part (the same sweep).
            threads = max(1, (os.cpu_count() or 1) // len(on_cpu))
            env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        elif device is not None and device.startswith("cuda"):
            env["CUDA_VISIBLE_DEVICES"] = device.partition(":")[2] or "0"
        return env

    # ---- the queue ----
    def run(self, queue: list[tuple[Trial, Path | None]] | TrialPolicy) -> int:
        """Run the trials of `queue` (a list: in order; a policy: as it says) to their ends."""
        self.policy = FixedQueue(queue) if isinstance(queue, list) else queue
        running: dict[int, Running] = {}
        free = list(range(len(self.slots)))
        total = len(self.records)
        mark = RunnerMark(self.folder.path, self.console)  # runner.json: mpt ctl, the console
        with _forwarding_stops(self, running) as stops:
            try:
                while (self.policy.pending() and not self.stopping) or running:
                    while (
                        free
                        and not self.stopping
                        and not mark.paused()  # (before next_trial: optuna's asks the study)
                        and (nxt := self.policy.next_trial())
                    ):
                        trial, resume = nxt
                        running[trial.index] = self._start(trial, resume, free.pop(0), total)
                    for index, r in list(running.items()):
                        if r.proc.poll() is not None:
                            del running[index]
                            free.append(r.slot)
                            free.sort()
                            self._ended(r, total)
                        elif not self.stopping:
                            self._watch(r, total)
                    time.sleep(POLL_S)
            finally:
                if running:  # the sweep itself failed: no trial trains on unsupervised
                    stops.stop_all()
                    for r in running.values():
                        r.proc.wait()
        code = self.exit_code()
        mark.ended(code)
        return code

    def _start(self, trial: Trial, resume: Path | None, slot: int, total: int) -> Running:
        folder = self.folder.trial_folder(trial.index)
        folder.mkdir(exist_ok=True)
        log = open(folder / "output.log", "ab")  # noqa: SIM115 - closed in _ended
        before = self.folder.newest_run(trial.index)
        proc = subprocess.Popen(
            self.command(trial, resume, self.slots[slot]),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.environment(slot),
            start_new_session=True,  # the sweep forwards stops itself (a checkpoint each)
        )
        rec = self.records[trial.index]
        rec.state, rec.exit = "running", None
        self.folder.record(rec)
        device = self.slots[slot]
        on = f" on {device}" if device else ""
        again = f", resuming {resume}" if resume is not None else ""
        self.console.line(
            f"trial {trial.index + 1}/{total} started{on}: {trial.describe()}{again} "
            f"(pid {proc.pid})"
        )
        return Running(trial, proc, slot, log, before)

    def _watch(self, r: Running, total: int) -> None:
        """A running trial's progress: the policy may prune it (SIGTERM: it stops with its
        interrupt checkpoint, as `mpt run` does; recorded at once, so that a sweep killed
        now does not resume it)."""
        rec = self.records[r.trial.index]
        if rec.state == "pruned":
            return
        prune = self.policy.progress(r)
        if prune is None:
            return
        rec.state, rec.pruned_epoch, rec.problem = "pruned", prune.epoch, prune.why
        self.folder.record(rec)
        self.console.line(
            f"trial {r.trial.index + 1}/{total} pruned at epoch {prune.epoch}: {prune.why}; "
            "it stops with a checkpoint"
        )
        if r.proc.poll() is None:
            r.proc.send_signal(signal.SIGTERM)

    def _ended(self, r: Running, total: int) -> None:
        r.log.close()
        rec = self.records[r.trial.index]
        pruned = rec.state == "pruned"
        run_dir = self.folder.newest_run(r.trial.index)
        # no run directory of its own (refused in setup: mpt run removes it): the one
        # before, if any, is an earlier part's, and says nothing of this process's end
        summary = summarize_run(run_dir) if run_dir and run_dir != r.before else None
        rec.exit = r.proc.returncode
        rec.run_dir = str(run_dir) if run_dir else None
        # the run's own word on how it ended, whatever the exit code (a run that finished
        # as a stop's SIGTERM came is finished); none: the process died before saying so
        rec.state = summary.state if summary is not None else "failed"
        if rec.state in LIVE:
            rec.state = "failed"
        stopped = rec.exit in (EXIT_INTERRUPTED, -signal.SIGTERM)
        if summary is None and self.stopping and stopped:
            # the sweep's own stop came before the run began (a trial killed importing
            # torch): not a failure; --resume starts it again (or resumes its earlier part)
            rec.state = "queued" if r.before is None else "interrupted"
        if pruned:  # (whatever the run says: the SIGTERM was the sweep's)
            rec.state = "pruned"
        if run_dir is not None:
            rec.best, rec.best_epoch = best_of(run_dir, self.sweep.monitor)
        if rec.state == "failed":
            rec.problem = _last_error(run_dir, self.folder.trial_folder(r.trial.index))
        self.policy.ended(r, rec)
        self.folder.record(rec)
        best = metric(self.sweep.monitor, rec.best) if rec.best is not None else "-"
        why = f": {rec.problem}" if rec.problem and rec.state == "failed" else ""
        if summary is None and rec.state in ("queued", "interrupted"):
            self.console.line(f"trial {r.trial.index + 1}/{total} stopped before its run began")
            return
        at = f" at epoch {rec.pruned_epoch}" if rec.state == "pruned" else ""
        self.console.line(
            f"trial {r.trial.index + 1}/{total} {rec.state}{at}{why}: best {self.sweep.monitor} "
            f"{best} ({rec.run_dir or 'no run directory'})"
        )

    def exit_code(self) -> int:
        states = [r.state for r in self.records.values()]
        if any(s in ("interrupted", *LIVE) for s in states):
            return EXIT_INTERRUPTED
        return EXIT_OK if all(s in ENDED_WELL for s in states) else EXIT_FAILED

    def stop(self) -> None:
        self.stopping = True


class _forwarding_stops:
    """SIGINT, SIGTERM, SIGHUP: stop starting trials, send SIGTERM to the running ones
    (each stops with a checkpoint, as `mpt run` does) and wait for them."""

    def __init__(self, runner: SweepRunner, running: dict[int, Running]):
        self.runner, self.running = runner, running
        self.old: dict[int, Any] = {}

    def _on_signal(self, signum: int, frame: Any) -> None:
        if not self.runner.stopping:
            self.runner.console.line(
                f"stopping the sweep ({signal.Signals(signum).name}): the running trials "
                "save a checkpoint; mpt sweep --resume finishes it"
            )
        self.stop_all()

    def stop_all(self) -> None:
        self.runner.stop()
        for r in self.running.values():
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)

    def __enter__(self) -> _forwarding_stops:
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            self.old[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.old.items():
            signal.signal(sig, handler)


def _last_error(run_dir: Path | None, folder: Path) -> str:
    """The run's error (run_failed), else the last line of the trial's output."""
    if run_dir is not None:
        for e in reversed(ev.read_events(run_dir / "events.jsonl")):
            if isinstance(e, ev.RunFailed):
                return e.error
    try:
        lines = (folder / "output.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    errors = [line.removeprefix("error: ") for line in lines if line.startswith("error: ")]
    return (errors or lines or [""])[-1][:300]  # mpt run's one sentence, if it said one
