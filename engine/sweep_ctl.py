"""A sweep as a live, steerable thing: find sweeps, read one's state, start one detached
from the terminal, pause, resume and stop it. torch-free; used by `mpt sweep --detach`,
`mpt ctl SWEEP_DIR`, `mpt ls` and the console.

A sweep is live while its runner is (engine/sweep_live.py: runner.json's pid, host and
process start time). Pausing a sweep holds its queue (SWEEP_DIR/paused: no new trial
starts) and pauses each running trial through its run's control channel, as
`mpt ctl RUN_DIR pause` does (engine/ctl.py); resuming undoes both. Stopping is Ctrl-C's
stop: SIGTERM to the runner, which forwards it to its trials (each saves a checkpoint,
a paused one too) and exits 130; `mpt sweep --resume SWEEP_DIR` finishes the sweep.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.console import Console
from engine.ctl import NotLive, steer
from engine.errors import MptError
from engine.formatting import metric
from engine.monitor import resolve_mode
from engine.runs import summarize_run
from engine.sweep import ENDED_WELL, SweepDir, TrialRecord
from engine.sweep_live import (
    SWEEP_FILE,
    find_sweeps,
    is_live,
    is_paused,
    is_stopping,
    is_sweep_dir,
    live_runner,
    read_runner,
    record_runner,
    refuse_second_runner,
    set_paused,
    set_stopping,
    sweep_label,
)
from engine.sweep_spec import Sweep

CONSOLE_LOG = "console.log"
DEFAULT_TIMEOUT_S = 10.0
POLL_S = 0.05
SETTLE_S = 0.1  # the runner's start of a trial (its check of the flag to its record) is ms
SETTLED = (*ENDED_WELL, "failed", "invalid")  # a trial in these has ended for good


@dataclass
class SweepState:
    """What the console and `mpt ls` show of one sweep."""

    path: Path
    name: str
    method: str
    monitor: str
    live: bool
    pid: int | None
    host: str | None
    paused: bool
    stopping: bool
    records: dict[int, TrialRecord] = field(default_factory=dict)
    trials: int = 0
    ran: bool = False  # a runner or a trial has run (else: --emit's, not run yet)
    exit: int | None = None  # the runner's exit code, once it has ended

    @property
    def done(self) -> int:
        """Trials that have ended for good (finished, failed, invalid, ...)."""
        return sum(r.state in SETTLED for r in self.records.values())

    @property
    def state(self) -> str:
        """running, paused, stopping; or finished, failed, interrupted, not started."""
        if self.live:
            return "stopping" if self.stopping else "paused" if self.paused else "running"
        states = [r.state for r in self.records.values()]
        if len(states) == self.trials and all(s in SETTLED for s in states):
            return "finished" if all(s in ENDED_WELL for s in states) else "failed"
        return "interrupted" if self.ran else "not started"

    def best(self) -> TrialRecord | None:
        """The trial with the best monitor value among those that ended well (a pruned
        trial never: as the end table says)."""
        sign = 1 if resolve_mode(self.monitor, "auto") == "min" else -1
        ended = [
            r
            for r in self.records.values()
            if r.best is not None and r.state in ENDED_WELL and r.state != "pruned"
        ]
        return min(ended, key=lambda r: (sign * r.best, r.trial), default=None)

    def running(self) -> list[TrialRecord]:
        return [r for r in self.records.values() if r.state == "running"]

    def run_dir(self, trial: int) -> Path | None:
        """The trial's newest run directory (a running trial's record names none yet)."""
        return SweepDir(self.path).newest_run(trial)


def read_sweep_state(path: Path) -> SweepState:
    """The sweep directory's state now; MptError (one sentence) if it is not one."""
    path = Path(path)
    if not is_sweep_dir(path):
        raise MptError(
            f"{path}: not a sweep directory (it has no {SWEEP_FILE}); give the folder "
            "mpt sweep printed"
        )
    folder = SweepDir(path)
    sweep, trials = folder.read_sweep()
    return sweep_state(path, sweep, folder.records(), len(trials))


def sweep_state(
    path: Path, sweep: Sweep, records: dict[int, TrialRecord], trials: int
) -> SweepState:
    """The state of the sweep at `path` from its trials' records (already read): the
    runner's record and flags are read now (small files)."""
    record = read_runner(path)
    live = is_live(record)
    started = any(r.state not in ("queued", "invalid") for r in records.values())
    return SweepState(
        path=path,
        name=sweep.name,
        method=sweep.method,
        monitor=sweep.monitor,
        live=live,
        pid=record.pid if live else None,
        host=record.host if live else None,
        paused=live and is_paused(path),
        stopping=live and is_stopping(path),
        records=records,
        trials=trials,
        ran=record is not None or started,
        exit=record.exit if record is not None else None,
    )


# ---- starting a sweep that outlives the terminal ----


def start_detached(
    file: Path, overrides: list[str], skip_invalid: bool = False, console: Console | None = None
) -> Path:
    """Check the sweep file and every trial as `mpt sweep FILE` does (SweepError/MptError
    with its sentences: nothing is made), make the sweep directory, and start its runner
    in a session of its own: no terminal's hang-up reaches it, its output goes to
    SWEEP_DIR/console.log. `console`: where the sweep's first lines go too. Returns the
    sweep directory."""
    from engine import sweep_plan

    runner, trials = sweep_plan.prepare(Path(file), overrides, skip_invalid, Console(quiet=True))
    path = runner.folder.path
    with open(path / CONSOLE_LOG, "a", buffering=1, encoding="utf-8") as log:
        sweep_plan.announce(runner, trials, Console(out=log, err=log, tty=False))
    if console is not None:
        sweep_plan.announce(runner, trials, console)
    _spawn_runner(path)
    return path


def resume_detached(path: Path, console: Console | None = None) -> Path:
    """`mpt sweep --resume SWEEP_DIR --detach`: the checks `--resume` makes first (a sweep
    directory; no live runner; no trial's run still live), then its runner in the
    background as `start_detached`'s. MptError with the sentence when one fails; a sweep
    with nothing left to run starts nothing (`console` says so)."""
    path = Path(path)
    folder = SweepDir(path)
    _, trials = folder.read_sweep()
    refuse_second_runner(path)
    records = folder.records()
    left = [t for t in trials if t.index not in records or records[t.index].state not in SETTLED]
    for trial in left:
        run_dir = folder.newest_run(trial.index)
        summary = summarize_run(run_dir) if run_dir is not None else None
        if summary is not None and summary.live:
            raise MptError(
                f"{path}: trial {trial.index + 1}'s run {run_dir} is still {summary.state}; "
                f"stop it (mpt ctl {run_dir} stop) or let it end, then resume the sweep"
            )
    if not left:
        if console is not None:
            console.line(f"{path}: every trial has ended; nothing to resume")
        return path
    set_paused(path, False)  # a new runner goes on (as `mpt sweep --resume` does)
    _spawn_runner(path)
    return path


def _spawn_runner(path: Path) -> int:
    """Start `mpt sweep --resume SWEEP_DIR` in a session of its own (no controlling
    terminal: no hang-up reaches it), stdin /dev/null, its output appended to
    SWEEP_DIR/console.log; record it as the sweep's runner at once. Its pid."""
    with open(path / CONSOLE_LOG, "a", buffering=1, encoding="utf-8") as log:
        proc = subprocess.Popen(
            runner_command(path),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    # `mpt ctl` and a second `mpt sweep --resume` see the runner before it has claimed
    # the sweep itself (unless it has already: then the record is its own, the same)
    earlier = read_runner(path)
    if earlier is None or earlier.pid != proc.pid:
        record_runner(path, proc.pid)
    return proc.pid


def runner_command(path: Path) -> list[str]:
    """The detached runner: `mpt sweep --resume` of a sweep no trial of which has started
    runs every queued trial (this Python's engine; -P: never the cwd's own `engine`)."""
    return [sys.executable, "-P", "-m", "engine.cli", "sweep", "--resume", str(path)]


# ---- steering a live sweep ----


def pause_sweep(path: Path, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """No new trial starts; each running trial pauses (`mpt ctl RUN pause`). One line:
    what each trial answered. NotLive (an MptError) when the sweep is not live."""
    path = Path(path)
    state = _live_state(path, "pause")
    set_paused(path, True)
    time.sleep(SETTLE_S)  # a trial the runner was starting as the flag came is recorded
    answers = _steer_running(path, "pause", timeout)  # (again: one continued alone pauses)
    said = "already paused" if state.paused else "paused"
    return f"{said}: no new trial starts" + _joined(answers, "no trial is running")


def resume_sweep(path: Path, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """Trials start again; each paused trial continues."""
    path = Path(path)
    state = _live_state(path, "resume")
    was_paused = state.paused
    set_paused(path, False)
    answers = _steer_running(path, "resume", timeout, only_paused=True)
    if not was_paused and not answers:
        return f"not paused: running ({_count(len(state.running()), 'trial')} running)"
    return "resumed: trials start again" + _joined(answers, "no trial was paused")


def stop_sweep(path: Path, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """As Ctrl-C: SIGTERM to the runner; the running trials stop with checkpoints (paused
    ones too) and the sweep exits 130. Waits up to `timeout` s for it to end."""
    path = Path(path)
    state = _live_state(path, "stop")
    if state.host != socket.gethostname():
        raise NotLive(
            f"{path}: the sweep runs on {state.host} (pid {state.pid}); stop it there "
            f"(mpt ctl {path} stop on that machine)"
        )
    set_stopping(path)
    try:
        os.kill(state.pid, signal.SIGTERM)
    except ProcessLookupError:
        raise NotLive(f"{path}: the sweep's runner (pid {state.pid}) has just ended") from None
    running = {r.trial for r in state.running()}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and live_runner(path) is not None:
        time.sleep(POLL_S)
    resume = f"mpt sweep --resume {path} finishes it"
    after = read_sweep_state(path)
    if after.live:
        return (
            f"stopping: {_count(len(running), 'running trial')} saving checkpoints; the sweep "
            f"exits when they have; {resume}"
        )
    if after.state in ("finished", "failed"):
        return f"the sweep ended ({after.state}) as it was stopped; nothing is left to run"
    return f"stopped: {_stopped_trials(after, running)}; {resume}"


def _stopped_trials(after: SweepState, running: set[int]) -> str:
    """`2 trials interrupted with checkpoints, 1 trial stopped before its run began`."""
    ends = [after.records[t] for t in running if t in after.records]
    interrupted = [r for r in ends if r.state == "interrupted"]
    runs = [after.run_dir(r.trial) for r in interrupted]  # (from the path given: any cwd)
    saved = sum(run is not None and (run / "checkpoints" / "last.pt").is_file() for run in runs)
    said = []
    if interrupted:
        n = len(interrupted)
        kept = "with checkpoints" if saved == n else f"({saved} with a checkpoint)"
        said.append(f"{_count(n, 'trial')} interrupted {kept}")
    queued = sum(r.state == "queued" for r in ends)
    if queued:
        said.append(f"{_count(queued, 'trial')} stopped before its run began")
    return ", ".join(said) or "no trial was running"


def steer_sweep(path: Path, word: str, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """`mpt ctl SWEEP_DIR WORD`: pause, continue (resume), checkpoint or stop."""
    if word == "pause":
        return pause_sweep(path, timeout)
    if word in ("continue", "resume"):
        return resume_sweep(path, timeout)
    if word == "stop":
        return stop_sweep(path, timeout)
    if word == "checkpoint":
        _live_state(Path(path), "checkpoint")
        answers = _steer_running(Path(path), "checkpoint", timeout)
        return "; ".join(answers) if answers else "no trial is running: nothing to save"
    raise MptError(f"mpt ctl: unknown command {word!r}; use pause, continue, checkpoint or stop")


def _live_state(path: Path, word: str) -> SweepState:
    state = read_sweep_state(path)
    if state.live:
        return state
    if state.state in ("finished", "failed"):
        raise NotLive(f"{path}: the sweep has ended ({state.state}); it takes no commands")
    if not state.ran:
        why = "no runner has started it (mpt sweep --emit's commands run its trials)"
    elif state.exit is not None:
        why = f"its runner ended (exit {state.exit})"
    else:
        why = "its runner is gone (killed, or its machine went down)"
    raise NotLive(
        f"{path}: the sweep is not running: {why}; it takes no {word}: "
        f"mpt sweep --resume {path} finishes it"
    )


def _steer_running(path: Path, word: str, timeout: float, only_paused: bool = False) -> list[str]:
    """Send `word` to each running trial's run; one answer each (`trial 2: paused at
    step 12 (epoch 1)`). A trial whose process has not made its run yet is waited for;
    a trial that starts meanwhile (the runner had begun it) is steered too."""
    folder = SweepDir(path)
    answers: list[str] = []
    done: set[int] = set()
    while True:
        todo = [
            r for r in folder.records().values() if r.state == "running" and r.trial not in done
        ]
        if not todo:
            return answers
        for rec in todo:
            done.add(rec.trial)
            answer = _steer_trial(folder, rec, word, timeout, only_paused)
            if answer:
                answers.append(f"trial {rec.trial + 1}: {answer}")
        time.sleep(POLL_S)


def _steer_trial(
    folder: SweepDir, rec: TrialRecord, word: str, timeout: float, only_paused: bool
) -> str | None:
    run_dir = _live_run(folder, rec.trial, timeout)
    if run_dir is None:
        return f"no live run to {word} (it has not started its run yet, or has ended)"
    summary = summarize_run(run_dir)
    if only_paused and (summary is None or summary.state != "paused"):
        return None
    try:
        return steer(run_dir, word, timeout)
    except NotLive as e:
        return str(e).removeprefix(f"{run_dir}: ")


def _live_run(folder: SweepDir, trial: int, timeout: float) -> Path | None:
    """The trial's live run directory; waits up to `timeout` s for a trial that the sweep
    has started but whose run is not live yet (its process is still importing torch)."""
    deadline = time.monotonic() + timeout
    while True:
        run_dir = folder.newest_run(trial)
        summary = summarize_run(run_dir) if run_dir is not None else None
        if summary is not None and summary.live and (run_dir / "control").is_dir():
            return run_dir
        rec = folder.records().get(trial)
        if rec is None or rec.state != "running" or time.monotonic() >= deadline:
            return None
        time.sleep(POLL_S)


def _joined(answers: list[str], none: str) -> str:
    return "; " + "; ".join(answers) if answers else f" ({none})"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


# ---- mpt ls ----


def sweeps_table(root: Path, found: list[Path] | None = None) -> str | None:
    """One line per sweep of an out_dir, newest first: name/stamp, state, trials done of
    all, the best trial; None when it holds no sweep. `found`: find_sweeps(root), if known."""
    rows = []
    for path in find_sweeps(root) if found is None else found:
        try:
            s = read_sweep_state(path)
        except MptError:
            rows.append([sweep_label(path), "unreadable", "-", "-"])
            continue
        state = f"{s.state} (pid {s.pid} on {s.host})" if s.live else s.state
        best = s.best()
        shown = (
            "-"
            if best is None
            else (f"{s.monitor} {metric(s.monitor, best.best)} (trial {best.trial + 1})")
        )
        rows.append([sweep_label(path), state, f"{s.done}/{s.trials}", shown])
    if not rows:
        return None
    header = ["SWEEP", "STATE", "TRIALS", "BEST"]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.rjust(w) if i == 2 else c.ljust(w) for i, (c, w) in
                  enumerate(zip(row, widths, strict=True))).rstrip()
        for row in [header, *rows]
    ]  # fmt: skip
    return "\n".join(lines)


__all__ = [
    "SweepState",
    "find_sweeps",
    "is_sweep_dir",
    "pause_sweep",
    "read_sweep_state",
    "resume_detached",
    "resume_sweep",
    "start_detached",
    "steer_sweep",
    "stop_sweep",
]
