"""Where a dashboard's events come from: a run this app trains, or one another process trains.

`RunSource` is all the dashboard knows of a run: a view folded from its events, whether
its keys act (`live`), and the controls `pause`, `resume`, `checkpoint` and `stop`, each
of which returns the sentence to show. Two kinds:

- `RunSession`: a run started (or resumed) here, through the engine's Run handle; its
  events come on the handle's queue.
- `AttachedRun`: a run directory's events.jsonl, followed while another process (`mpt run`
  in tmux) writes it; the keys reach that process through its control channel
  (engine/remote.py) and their effect comes back as events.

One update path for both: `watch(notify)` starts a thread that waits for new events (a
blocking read of the queue, or of the file every FOLLOW_INTERVAL), keeps them aside, and
calls `notify()` (the app posts a message), at most once every WATCH_INTERVAL; the app
then calls `fold()` on its own thread, which applies them to `view`. No Textual here.
"""

from __future__ import annotations

import abc
import os
import queue
import stat
import threading
import weakref
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from engine import events as ev
from engine.errors import MptError
from engine.profile import Profile
from engine.remote import ControlChannel
from engine.run import Run
from engine.runs import summarize_run
from engine.summary import load_curve
from engine.task_spec import metric_names
from tui.viewmodel import RunView, build_view

# At most this many events folded at a time, so that a flood (log_every = 1 on a fast
# model) never holds the UI thread for long; the rest waits for the next message.
DRAIN_BATCH = 5000
WATCH_INTERVAL = 0.25  # seconds: the app hears of new events (and redraws) at most 4x/s
FOLLOW_INTERVAL = 0.5  # seconds between two reads of a followed run's events.jsonl
TERMINAL = (ev.RunFinished, ev.RunFailed)


class RunSource(abc.ABC):
    """A run as a dashboard shows and steers it; see the module's docstring."""

    def __init__(self, view: RunView):
        self.view = view
        self._waiting: deque[ev.Event] = deque()  # read by the watcher, not folded yet
        self._done = threading.Event()  # nothing more will come (or we stopped watching)
        self._watcher: threading.Thread | None = None
        self.terminal_folded = False  # the view holds the run's last word

    # ---- what each kind says ----
    @property
    @abc.abstractmethod
    def run_dir(self) -> Path | None: ...

    @property
    @abc.abstractmethod
    def live(self) -> bool:
        """Whether the keys p, c and s act on the run."""
        ...

    @property
    @abc.abstractmethod
    def paused(self) -> bool: ...

    @abc.abstractmethod
    def pause(self) -> str: ...

    @abc.abstractmethod
    def resume(self) -> str: ...

    @abc.abstractmethod
    def checkpoint(self) -> str: ...

    @abc.abstractmethod
    def stop(self) -> str: ...

    @abc.abstractmethod
    def _read(self, timeout: float) -> list[ev.Event]:
        """The events that came since the last call, waiting up to `timeout` for one."""
        ...

    # ---- the update path ----
    def collect(self, timeout: float = 0.0) -> int:
        """Read what came (waiting up to `timeout`) and keep it for `fold`; how many."""
        events = self._read(timeout)
        self._waiting.extend(events)
        if any(isinstance(e, TERMINAL) for e in events):
            self._terminal_read()
        return len(events)

    def _terminal_read(self) -> None:
        """The run's last word is read: by default, nothing more will come."""
        self._done.set()

    @property
    def backlog(self) -> bool:
        """Events read and not folded yet (a flood is folded a batch at a time)."""
        return bool(self._waiting)

    def fold(self, limit: int = DRAIN_BATCH) -> int:
        """Apply what the watcher read to the view (on the UI's thread); how many events."""
        n = 0
        while n < limit and self._waiting:
            event = self._waiting.popleft()
            self.view.apply(event)
            self.terminal_folded |= isinstance(event, TERMINAL)
            n += 1
        return n

    @property
    def drained(self) -> bool:
        """Nothing more will come, and everything that came is folded."""
        return self._done.is_set() and not self._waiting

    def watch(self, notify: Callable[[], object]) -> None:
        """Follow the run in a thread of its own, calling `notify()` when events wait."""
        if self._watcher is None and not self._done.is_set():
            self._watcher = threading.Thread(
                target=self._watch, args=(notify,), name="mpt-run-watch", daemon=True
            )
            self._watcher.start()

    def _watch(self, notify: Callable[[], object]) -> None:
        while not self._done.is_set():
            if self.collect(timeout=WATCH_INTERVAL) or self._done.is_set():
                notify()
                self._done.wait(WATCH_INTERVAL)  # what comes meanwhile goes in the next batch

    def close(self) -> None:
        """Stop watching (the dashboard of a followed run went away)."""
        self._done.set()


class RunSession(RunSource):
    """A run started (or resumed) from the TUI."""

    started: ClassVar[weakref.WeakSet[RunSession]] = weakref.WeakSet()  # for a last cleanup

    def __init__(self, run: Run):
        RunSession.started.add(self)
        super().__init__(build_view(run.history))
        self.run = run
        profile = run.profile
        if profile is not None and not self.view.name:  # until run_started says more
            self.view.name, self.view.epochs = profile.run.name, profile.run.epochs
            self.view.task = profile.task.kind
            self.view.metric_names = metric_names(profile.task.kind, profile.task.metrics)
            self.view.run_dir = str(run.run_dir or "")
            self.view.messages.append("starting: loading the data, building the model")
        self.ended = False  # the terminal event is folded (or the thread is gone)
        self._gone = False  # the thread ended without a terminal event
        self._terminal = False  # its terminal event is read; its thread may still warn

    @classmethod
    def start(cls, profile: Profile, *, resume: str | Path | None = None) -> RunSession:
        """Start a run, or resume one from a checkpoint (a .pt file or a run directory).

        Raises what Run.start raises (MptError, CheckpointError, OSError). A resumed run's
        view folds the handle's `history` (the events up to the checkpoint) first, then
        the run's own events from its queue, so the curves continue.
        """
        if resume is None:
            return cls(Run.start(profile))
        session = cls(Run.start(profile, resume=str(resume)))
        session.view.messages.append(f"resuming from {resume}")
        return session

    @property
    def run_dir(self) -> Path | None:
        return self.run.run_dir

    @property
    def live(self) -> bool:
        return not self.ended

    def _read(self, timeout: float) -> list[ev.Event]:
        try:
            events = [
                self.run.events.get(timeout=timeout) if timeout else self.run.events.get_nowait()
            ]
        except queue.Empty:
            # the thread ended: after its terminal event, or died without one (never
            # wait for it then)
            if not self.run.is_alive() and self.run.events.empty():
                self._gone = not self._terminal
                self._done.set()
            return []
        while len(events) < DRAIN_BATCH and not isinstance(events[-1], TERMINAL):
            try:
                events.append(self.run.events.get_nowait())
            except queue.Empty:
                break
        return events

    def _terminal_read(self) -> None:
        # [notify]'s failures come after run_finished, as warnings on the queue, while the
        # thread waits for its notifications (engine/notify.py): read on until it ends
        self._terminal = True

    def fold(self, limit: int = DRAIN_BATCH) -> int:
        n = super().fold(limit)
        if (self.terminal_folded or self.drained) and not self.ended:
            self.ended = True
            if self._gone and self.view.live:
                self.view.state = "failed"
                self.view.error = "the training thread ended without reporting why"
                self.view.version += 1
        return n

    # ---- controls: each takes effect at the next optimizer step ----
    @property
    def paused(self) -> bool:
        return self.run.paused

    def pause(self) -> str:
        self.run.pause()
        return "pause requested: takes effect after the current step"

    def resume(self) -> str:
        self.run.resume()
        return "resume requested"

    def checkpoint(self) -> str:
        self.run.checkpoint()
        return "checkpoint requested: saved after the current step"

    def stop(self, reason: str = "stopped") -> str:
        self.run.stop(reason)
        return "stopping: a checkpoint is saved first"

    def join(self, timeout: float | None = None) -> str | None:
        return self.run.join(timeout)

    def detach(self) -> Run:
        """Stop following the run here (the console is going away) and hand over its Run
        handle: the events not read yet stay on its queue for whoever follows it next."""
        self.close()
        if self._watcher is not None:
            self._watcher.join(timeout=2 * WATCH_INTERVAL + 1)
        return self.run

    @classmethod
    def stop_all(cls, timeout: float = 60.0) -> None:
        """Stop every run still training (with a checkpoint) and wait for it: the last
        thing before the process ends, so no trainer thread dies halfway."""
        live = [s for s in cls.started if s.run.is_alive()]
        for session in live:
            session.stop("interrupted")
        for session in live:
            session.join(timeout)


class AttachedRun(RunSource):
    """A run from its run directory: a finished one, or one another process trains.

    `open` reads the events written so far; `watch` follows what comes after. A run still
    writing (`mpt run` in another pane) with a control channel takes the keys; one that
    stopped writing without a last word is shown as crashed.
    """

    def __init__(self, run_dir: Path):
        super().__init__(RunView())
        self._run_dir = Path(run_dir)
        self._file = EventsFile(self._run_dir / "events.jsonl")
        self._problems: str | None = None  # unreadable lines, noted by the next fold
        self.remote: ControlChannel | None = None  # the run's commands, if it takes them

    @classmethod
    def open(cls, run_dir: Path) -> AttachedRun:
        """The run as its events so far show it. A long run's dashboard starts from its
        curve.jsonl (engine/summary.py: every event but steps, and a thinned sample of
        those) and reads events.jsonl from where that ends; else events.jsonl whole."""
        source = cls(run_dir)
        curve = load_curve(source._run_dir, source._file.size())
        if curve is not None:
            events, start = curve
            source._file = EventsFile(source._file.path, start.reader)
            build_view(events, source.view)
        view = build_view(source._file.read_new(), source.view)
        view.unreadable(source._file.new_problems())
        view.run_dir = view.run_dir or str(source._run_dir)
        view.name = view.name or source._run_dir.parent.name
        if not view.live:
            source._done.set()  # finished: nothing to follow
            return source
        summary = summarize_run(source._run_dir)
        if summary is not None and summary.state == "crashed":
            view.state = "crashed"
            view.messages.append("the run stopped writing events without finishing")
            source._done.set()
        elif ControlChannel(source._run_dir).open:
            source.remote = ControlChannel(source._run_dir)
            view.messages.append(f"attached to {source._run_dir}: p, c and s reach that process")
        return source

    @property
    def run_dir(self) -> Path:
        return self._run_dir

    @property
    def live(self) -> bool:
        return self.remote is not None and self.view.live and self.remote.open

    @property
    def paused(self) -> bool:
        return self.view.state == "paused"  # the events say whether it is

    def _read(self, timeout: float) -> list[ev.Event]:
        events = self._file.read_new()
        self._problems = self._file.new_problems() or self._problems
        if not events and timeout:
            self._done.wait(max(timeout, FOLLOW_INTERVAL))
        return events

    def fold(self, limit: int = DRAIN_BATCH) -> int:
        problems, self._problems = self._problems, None
        return super().fold(limit) + self.view.unreadable(problems)

    def _send(self, command: str, done: str) -> str:
        try:
            self.remote.send(command)
        except (MptError, OSError) as e:
            return f"cannot send {command}: {e}"
        return done

    def pause(self) -> str:
        return self._send("pause", "pause sent to the run's process")

    def resume(self) -> str:
        return self._send("resume", "resume sent to the run's process")

    def checkpoint(self) -> str:
        return self._send(
            "checkpoint", "checkpoint sent to the run's process: saved after its current step"
        )

    def stop(self) -> str:
        return self._send("stop", "stop sent to the run's process: a checkpoint is saved first")


class EventsFile:
    """Follows a run's events.jsonl as another process writes it (`mpt run` in tmux).

    Read by the engine's one tolerant reader: a line that is not an event is skipped and
    counted, never stops the dashboard (`new_problems` says which).
    """

    def __init__(self, path: Path, reader: ev.EventsReader | None = None):
        """`reader`: one that goes on from where a run's curve.jsonl ends."""
        self.path = path
        self._reader = reader or ev.EventsReader(path)
        self._told = 0  # problems already reported by new_problems

    def size(self) -> int:
        """The file's size now; 0 when it cannot be read as a plain file."""
        try:
            st = os.stat(self.path)
        except OSError:
            return 0
        return st.st_size if stat.S_ISREG(st.st_mode) else 0

    def read_new(self) -> list[ev.Event]:
        """The events written since the last call; a line still being written waits."""
        try:
            return self._reader.read_new()
        except OSError:
            return []

    def new_problems(self) -> str | None:
        """What could not be read (`events.jsonl: 2 lines could not be read (...)`), when
        more lines went unread since the last call; else None."""
        if self._reader.unreadable == self._told:
            return None
        self._told = self._reader.unreadable
        return f"{self.path.name}: {self._reader.describe()}"
