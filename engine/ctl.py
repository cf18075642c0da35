"""`mpt ctl` and `mpt rm`: steer a live run and tidy the runs folder from a shell. torch-free.

`mpt ctl RUN_DIR pause|continue|checkpoint|stop` drops the command in the run's control
folder (engine/remote.py, the channel `mpt-tui --attach` uses) and reads the run's
events.jsonl until the event that says it was done: `paused`, `resumed`, a requested
`checkpoint_saved`, or `run_finished`. A command the run did not take in time is taken
back, so that a pause that timed out never lands an hour later.

`mpt rm` removes run directories that are not live, after asking.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from engine import events as ev
from engine.errors import MptError
from engine.memory import format_bytes
from engine.remote import ControlChannel
from engine.runs import RunSummary, list_runs, summarize_run
from engine.stop import run_state, state_label

# What a user types -> what the control channel carries. "continue" is the word of the
# issue and of the console's key; "resume" is the channel's own.
COMMANDS = {"pause": "pause", "continue": "resume", "resume": "resume", "checkpoint": "checkpoint",
            "stop": "stop"}  # fmt: skip
DEFAULT_TIMEOUT_S = 10.0
POLL_S = 0.05


class NotLive(MptError):
    """The run takes no commands now (ended, crashed, never listened) or did not answer."""


def steer(run_dir: Path, word: str, timeout: float = DEFAULT_TIMEOUT_S) -> str:
    """Send `word` to the live run in `run_dir`, wait up to `timeout` s for its event, and
    say what the run did in one line: `paused at step 123 (epoch 2)`.

    Raises MptError for an unknown word (a usage mistake), NotLive when the run is not
    live, takes no commands, ends first or does not answer in time."""
    command = COMMANDS.get(word)
    if command is None:
        raise MptError(
            f"mpt ctl: unknown command {word!r}; use pause, continue, checkpoint or stop"
        )
    summary = summarize_run(run_dir)
    if summary is None or not summary.live:
        raise NotLive(f"{run_dir}: {_not_live(summary)}; it takes no commands")
    already = _already(summary, command)
    if already:
        return already
    reader = ev.EventsReader(run_dir / "events.jsonl")
    reader.read_all()  # what came before the command is not its answer
    try:
        sent = ControlChannel(run_dir).send(command)
    except MptError as e:
        raise NotLive(str(e)) from None
    return _await(run_dir, reader, sent, command, word, timeout)


def _not_live(summary: RunSummary | None) -> str:
    if summary is None:
        return "the run has no events yet"
    if summary.state == "crashed":
        return "the run stopped writing events without finishing (crashed)"
    if summary.state == "unreadable":
        return f"its events.jsonl {summary.problems}"
    return f"the run has ended ({state_label(summary.state)}, step {summary.step})"


def _already(summary: RunSummary, command: str) -> str | None:
    """A pause of a paused run, or a continue of a running one, has nothing to wait for."""
    if command == "pause" and summary.state == "paused":
        return f"already paused at step {summary.step}"
    if command == "resume" and summary.state == "running":
        return f"not paused: running at step {summary.step}"
    return None


def _await(
    run_dir: Path, reader: ev.EventsReader, sent: Path, command: str, word: str, timeout: float
) -> str:
    """Read the run's new events until one answers `command`, the run ends, or `timeout`."""
    answer = _Answer(command, word, run_dir)
    deadline = time.monotonic() + timeout
    while True:
        found = answer.read(reader.read_new())
        if found is not None:
            return found
        if time.monotonic() >= deadline:
            break
        summary = summarize_run(run_dir)
        if summary is not None and summary.state == "crashed":
            raise NotLive(f"{run_dir}: the run's process is gone; it did not take the {word}")
        time.sleep(POLL_S)
    withdrawn = _withdraw(sent)
    found = answer.read(reader.read_new())  # taken just before it was taken back
    if found is not None:
        return found
    fate = "the command was taken back" if withdrawn else "it took the command; it acts when it can"
    raise NotLive(
        f"{run_dir}: the run did not acknowledge the {word} within {timeout:g} s ({fate}); "
        "a long validation or checkpoint delays it: try again with a longer --timeout"
    )


@dataclass
class _Answer:
    """Which of a run's events answers a command, and the line that says what it did."""

    command: str
    word: str
    run_dir: Path
    checkpoint: str = ""  # the last checkpoint_saved's path: a stop names its own

    def read(self, events: list[ev.Event]) -> str | None:
        for event in events:
            found = self._one(event)
            if found is not None:
                return found
        return None

    def _one(self, event: ev.Event) -> str | None:
        at = f"step {event.step} (epoch {event.epoch})"
        command = self.command
        if isinstance(event, ev.CheckpointSaved):
            self.checkpoint = event.path
            if command == "checkpoint" and event.reason == "requested":
                return f"checkpoint saved at {at}: {event.path}"
        elif command == "pause" and isinstance(event, ev.Paused):
            return f"paused at {at}"
        elif command == "resume" and isinstance(event, ev.Resumed):
            return f"continued at {at}"
        elif isinstance(event, ev.RunFinished) and command == "stop":
            saved = f"; checkpoint {self.checkpoint}" if self.checkpoint else ""
            if event.reason != "stopped":  # it ended on its own meanwhile: stopped all the same
                return f"the run ended ({_label(event.reason)}) at {at}{saved}"
            return f"stopped at {at}{saved}"
        elif isinstance(event, ev.RunFinished | ev.RunFailed):
            ended = "failed" if isinstance(event, ev.RunFailed) else _label(event.reason)
            raise NotLive(f"{self.run_dir}: the run ended ({ended}) before it took the {self.word}")
        return None


def _label(reason: str) -> str:
    return state_label(run_state(reason))


def _withdraw(sent: Path) -> bool:
    """Take an untaken command back (True), or find that the run took it (False)."""
    try:
        os.unlink(sent)
    except OSError:
        return False
    return True


# ---- mpt rm ----


@dataclass
class Removal:
    run_dir: Path
    size: int  # bytes, the files themselves (links not followed)


def plan_removal(paths: list[Path], failed_of: str | None, runs_dir: Path) -> list[Removal]:
    """The run directories to remove: each of `paths`, and with `failed_of` every failed or
    crashed run of that name under `runs_dir`. Raises MptError (exit 2) for a path that is
    not a run directory, RunIsLive (exit 1) for a live run: then nothing is removed."""
    chosen = [_run_dir(p) for p in paths]
    if failed_of is not None:
        chosen += [s.run_dir for s in _failed_runs(failed_of, runs_dir)]
    unique = list(dict.fromkeys(p.absolute() for p in chosen))
    for run_dir in unique:
        summary = summarize_run(run_dir)
        if summary is not None and summary.live:
            raise RunIsLive(
                f"{run_dir}: the run is {summary.state}{_process(summary)}; stop it first "
                f"(mpt ctl {run_dir} stop), then remove it"
            )
    return [Removal(p, _size(p)) for p in unique]


class RunIsLive(MptError):
    """A live run is never removed."""


def _process(s: RunSummary) -> str:
    return f" ({s.process})" if s.process else ""


def _run_dir(path: Path) -> Path:
    """`path` if it is a run directory of its own (not a link to one), else MptError."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise MptError(f"{path}: no such run directory; mpt ls lists the runs") from None
    if stat.S_ISLNK(st.st_mode):
        raise MptError(
            f"{path}: a symbolic link; mpt rm removes run directories themselves, not links "
            "(give the folder it points to, or remove the link with rm)"
        )
    if not stat.S_ISDIR(st.st_mode) or not _looks_like_a_run(path):
        raise MptError(
            f"{path}: not a run directory (it has no events.jsonl or profile.toml); "
            "mpt rm removes only runs"
        )
    return path


def _looks_like_a_run(path: Path) -> bool:
    for name in ("events.jsonl", "profile.toml"):
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.lstat(path / name).st_mode):
                return True
    return False


def _failed_runs(name: str, runs_dir: Path) -> list[RunSummary]:
    if "/" in name or name in ("", ".", ".."):
        raise MptError(f"mpt rm --failed: {name!r} is not a run name (run.name of a profile)")
    if not runs_dir.is_dir():
        raise MptError(
            f"{runs_dir}: no such folder; give the runs folder with --out-dir "
            "(a profile's run.out_dir, by default runs)"
        )
    return [
        s
        for s in list_runs(runs_dir)
        if s.run_dir.parent.name == name and s.state in ("failed", "crashed")
    ]


def _size(root: Path) -> int:
    total = 0
    for folder, dirs, files in os.walk(root):  # followlinks=False: a link's target is not counted
        for name in dirs + files:
            with contextlib.suppress(OSError):
                st = os.lstat(os.path.join(folder, name))
                if not stat.S_ISDIR(st.st_mode):
                    total += st.st_size
    return total


def describe(removals: list[Removal]) -> str:
    """`3 runs (1.2 GB)`."""
    n = len(removals)
    return f"{n} run{'s' if n != 1 else ''} ({format_bytes(sum(r.size for r in removals))})"


def remove(removal: Removal) -> None:
    """Remove one run directory; a link inside is removed, never followed (rmtree)."""
    shutil.rmtree(removal.run_dir)
