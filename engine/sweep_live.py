"""A sweep's runner as a live thing: its liveness record and its pause flag. torch-free.

The process that runs a sweep's queue (`mpt sweep FILE`, `mpt sweep --resume`, a detached
runner) writes SWEEP_DIR/runner.json as it starts: its pid, its host and the process's
start time, as a run's run_started names its process. The sweep is live while that
process is: on this host, a pid that is gone, a zombie, or a pid now held by another
process (its start time differs) is not live, so a runner killed with SIGKILL reads as
dead at once. The runner marks the record ended (with its exit code) when its queue ends.

SWEEP_DIR/paused, while it exists, holds the queue: no new trial starts (engine/sweep.py
asks before each start). SWEEP_DIR/stopping says a stop was sent (engine/sweep_ctl.py).
A new runner of the sweep (`mpt sweep --resume`) starts unpaused: resuming means going on.

engine/sweep.py imports this module, engine/sweep_ctl.py (the API) builds on it: kept
apart from both so that no import cycle forms.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from engine.console import Console
from engine.errors import MptError

RUNNER_FILE = "runner.json"
LOCK_FILE = "runner.lock"  # held (flock) by the runner while it runs: two never both claim
PAUSED_FILE = "paused"
STOPPING_FILE = "stopping"
_SAME_PROCESS_S = 1.0  # two start times this close are the same process's (clock ticks)

SWEEP_FILE = "sweep.json"  # what makes a folder a sweep directory
MAX_SWEEPS = 1000  # find_sweeps reads no more than this many (newest first)


def is_sweep_dir(path: Path) -> bool:
    return (Path(path) / SWEEP_FILE).is_file()


def sweep_label(path: Path) -> str:
    """`quickstart-lr/20261202-070000`: a sweep as the lists name it."""
    return f"{path.parent.name}/{path.name}"


def find_sweeps(root: Path) -> list[Path]:
    """The sweep directories of an out_dir (`root/<sweep name>/<stamp>/sweep.json`), newest
    first: two levels of folders are looked at, never the trials' runs below."""
    root = Path(root).expanduser()
    if not root.is_dir():
        return []
    found = [p.parent for p in root.glob(f"*/*/{SWEEP_FILE}") if p.is_file()]
    found.sort(key=lambda p: (p.name, p.parent.name), reverse=True)  # stamps sort by time
    return found[:MAX_SWEEPS]


class SecondRunner(MptError):
    """A sweep whose runner is live is never run by a second process."""


@dataclass
class RunnerRecord:
    """runner.json: which process runs the sweep's queue, and whether it has ended."""

    pid: int
    host: str
    process_start: float | None  # the process's start time (seconds since the epoch)
    started: float  # when it claimed the sweep
    ended: float | None = None
    exit: int | None = None

    @property
    def process(self) -> str:
        return f"pid {self.pid} on {self.host}"


def process_start(pid: int) -> float | None:
    """When process `pid` started (seconds since the epoch); None when there is no such
    process, or it is a zombie (it has exited; only its parent has not reaped it)."""
    import psutil  # (imported here: `mpt ls` of a folder without sweeps never needs it)

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.Error, OSError, ValueError):
        return None


def read_runner(path: Path) -> RunnerRecord | None:
    """The sweep directory's runner record; None when there is none or it is unreadable."""
    try:
        data = json.loads((path / RUNNER_FILE).read_text(encoding="utf-8"))
        return RunnerRecord(**{k: data.get(k) for k in RunnerRecord.__dataclass_fields__})
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def is_live(record: RunnerRecord | None) -> bool:
    """The record's process still runs the sweep: not ended, and on this host the same
    process (pid and start time); a record from another host is taken at its word."""
    if record is None or record.ended is not None:
        return False
    if not isinstance(record.pid, int) or record.pid <= 0 or not isinstance(record.host, str):
        return False
    if record.host != socket.gethostname():
        return True  # (its process cannot be looked at from here)
    now = process_start(record.pid)
    if now is None:
        return False
    return record.process_start is None or abs(now - record.process_start) < _SAME_PROCESS_S


def live_runner(path: Path) -> RunnerRecord | None:
    record = read_runner(path)
    return record if is_live(record) else None


def write_runner(path: Path, record: RunnerRecord) -> None:
    """runner.json, whole or not at all (a reader never sees half of it)."""
    _write_atomically(path / RUNNER_FILE, json.dumps(vars(record)) + "\n")


def record_runner(path: Path, pid: int) -> RunnerRecord:
    """Write the record of process `pid` as the sweep's runner."""
    record = RunnerRecord(pid, socket.gethostname(), process_start(pid), time.time())
    write_runner(path, record)
    return record


def refuse_second_runner(path: Path) -> None:
    """SecondRunner when another live process runs this sweep."""
    record = live_runner(path)
    if record is None or _is_me(record):
        return
    elsewhere = ""
    if record.host != socket.gethostname():  # (a machine that went down never says so)
        elsewhere = f" (if that machine is down: remove {path / RUNNER_FILE})"
    raise SecondRunner(
        f"{path}: the sweep is already running ({record.process}); it needs no second "
        f"runner: mpt ctl {path} stop stops it, mpt sweep --resume {path} then finishes "
        f"it{elsewhere}"
    )


def _is_me(record: RunnerRecord) -> bool:
    return record.pid == os.getpid() and record.host == socket.gethostname()


def is_paused(path: Path) -> bool:
    return (path / PAUSED_FILE).exists()


def set_paused(path: Path, paused: bool) -> None:
    if paused:
        _write_atomically(path / PAUSED_FILE, f"{time.time()}\n")
    else:
        with contextlib.suppress(FileNotFoundError):
            (path / PAUSED_FILE).unlink()


def set_stopping(path: Path) -> None:
    _write_atomically(path / STOPPING_FILE, f"{time.time()}\n")


def is_stopping(path: Path) -> bool:
    return (path / STOPPING_FILE).exists()


class RunnerMark:
    """This process as the sweep's runner, for as long as `SweepRunner.run` runs: claims
    the sweep (refusing when another live runner has it), answers whether the queue is
    paused (saying so on the sweep's console when that changes) and marks the end."""

    def __init__(self, path: Path, console: Console):
        self.path, self.console = path, console
        self.was_paused = False
        self.lock = _lock(path)
        earlier = read_runner(path)
        refuse_second_runner(path)
        if earlier is None or not _is_me(earlier):
            # a new runner (a resume) goes on: an earlier runner's pause or stop is over
            set_paused(path, False)
        with contextlib.suppress(FileNotFoundError):
            (path / STOPPING_FILE).unlink()
        self.record = record_runner(path, os.getpid())

    def paused(self) -> bool:
        """Whether the sweep is paused now: no new trial may start."""
        now = is_paused(self.path)
        if now != self.was_paused:
            self.was_paused = now
            self.console.line(
                f"the sweep is paused: no new trial starts (mpt ctl {self.path} continue)"
                if now
                else "the sweep goes on: trials start again"
            )
        return now

    def ended(self, code: int) -> None:
        self.record.ended, self.record.exit = time.time(), code
        write_runner(self.path, self.record)
        with contextlib.suppress(FileNotFoundError):
            (self.path / STOPPING_FILE).unlink()
        if self.lock is not None:
            os.close(self.lock)  # (the kernel lets go of it too if the process is killed)
            self.lock = None


def _lock(path: Path) -> int | None:
    """An exclusive lock on SWEEP_DIR/runner.lock for this process: two runners that both
    passed the record's check (started the same moment) never both run the queue.
    SecondRunner if another process holds it; None where the file system has no locks."""
    try:
        import fcntl
    except ImportError:  # (not on Windows: the record's check alone)
        return None
    fd = os.open(path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SecondRunner(
            f"{path}: another process has just started running the sweep; it needs no "
            f"second runner: mpt ctl {path} stop stops it"
        ) from None
    except OSError:  # a file system without locks (some network ones)
        os.close(fd)
        return None
    return fd


def _write_atomically(target: Path, text: str) -> None:
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, target)
