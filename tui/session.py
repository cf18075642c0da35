"""A run as the TUI holds it: the engine's Run handle plus the view folded from its events.

No Textual here: the app drains the queue on a timer (`drain`) and redraws from `view`.
The TUI reaches the run only through the handle's controls and its events.
"""

from __future__ import annotations

import queue
import time
import weakref
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from engine import events as ev
from engine.profile import Profile
from engine.run import Run
from tui.viewmodel import RunView, build_view

# At most this many events folded per drain, so that a flood (log_every = 1 on a fast
# model) never holds the UI thread for long; the rest waits for the next tick.
DRAIN_BATCH = 5000


class RunSession:
    """One run started (or resumed) from the TUI."""

    started: ClassVar[weakref.WeakSet[RunSession]] = weakref.WeakSet()  # for a last cleanup

    def __init__(self, run: Run, history: Iterable[ev.Event] = ()):
        RunSession.started.add(self)
        self.run = run
        self.view: RunView = build_view(history)
        profile = getattr(run, "profile", None)
        if profile is not None and not self.view.name:  # until run_started says more
            self.view.name, self.view.epochs = profile.run.name, profile.run.epochs
            self.view.run_dir = str(run.run_dir or "")
            self.view.messages.append("starting: loading the data, building the model")
        self.ended = False  # the terminal event has been seen (or the thread is gone)
        self.stop_requested = False

    @classmethod
    def start(cls, profile: Profile, *, resume: str | Path | None = None) -> RunSession:
        """Start a run, or resume one from a checkpoint (a .pt file or a run directory).

        Raises what Run.start raises (MptError, CheckpointError, OSError). A resumed run's
        events.jsonl starts with the history up to the checkpoint (the engine copies it);
        the view folds that history first, so the curves continue.
        """
        if resume is None:
            return cls(Run.start(profile))
        started = time.time()
        run = Run.start(profile, resume=str(resume))
        history: list[ev.Event] = []
        if run.run_dir is not None and (run.run_dir / "events.jsonl").is_file():
            # the new run's own events are on the queue too: keep only what came before it
            history = [e for e in ev.read_events(run.run_dir / "events.jsonl") if e.time < started]
        session = cls(run, history)
        session.view.messages.append(f"resuming from {resume}")
        return session

    @property
    def run_dir(self) -> Path | None:
        return self.run.run_dir

    @property
    def live(self) -> bool:
        return not self.ended

    def drain(self, limit: int = DRAIN_BATCH) -> int:
        """Fold the waiting events into the view; returns how many were folded."""
        n = 0
        while n < limit:
            try:
                event = self.run.events.get_nowait()
            except queue.Empty:
                break
            self.view.apply(event)
            n += 1
            if isinstance(event, ev.RunFinished | ev.RunFailed):
                self.ended = True
        if not self.ended and n < limit and not self.run.is_alive() and self.run.events.empty():
            self.ended = True  # the thread died without a terminal event: never wait for one
            if self.view.live:
                self.view.state = "failed"
                self.view.error = "the training thread ended without reporting why"
        return n

    # ---- controls: each takes effect at the next optimizer step ----
    @property
    def paused(self) -> bool:
        return self.run.paused

    def toggle_pause(self) -> bool:
        """Pause a running run or resume a paused one; returns True when now pausing."""
        if self.run.paused:
            self.run.resume()
            return False
        self.run.pause()
        return True

    def checkpoint(self) -> None:
        self.run.checkpoint()

    def stop(self, reason: str = "stopped") -> None:
        self.stop_requested = True
        self.run.stop(reason)

    def join(self, timeout: float | None = None) -> str | None:
        return self.run.join(timeout)

    @classmethod
    def stop_all(cls, timeout: float = 60.0) -> None:
        """Stop every run still training (with a checkpoint) and wait for it: the last
        thing before the process ends, so no trainer thread dies halfway."""
        live = [s for s in cls.started if s.run.is_alive()]
        for session in live:
            session.stop("interrupted")
        for session in live:
            session.join(timeout)


class EventsFile:
    """Follows a run's events.jsonl as another process writes it (`mpt run` in tmux).

    Read by the engine's one tolerant reader: a line that is not an event is skipped and
    counted, never stops the dashboard (`new_problems` says which).
    """

    def __init__(self, path: Path):
        self.path = path
        self._reader = ev.EventsReader(path)
        self._told = 0  # problems already reported by new_problems

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
