"""What the screens and the run sources tell the app: messages it answers.

Screens post these instead of calling the app; the app starts runs and pushes the
dashboards, so no screen imports another screen to show it. A run source's watcher
thread posts `EventsArrived` (posting is thread-safe), and repeats still in the queue
merge into one, as toolong's file watcher does.
"""

from __future__ import annotations

from pathlib import Path

from textual.message import Message

from engine.profile import Profile
from tui.session import RunSource


class EventsArrived(Message):
    """New events wait in `source`: the app folds them and the screens redraw."""

    def __init__(self, source: RunSource) -> None:
        super().__init__()
        self.source = source

    def can_replace(self, message: Message) -> bool:
        return isinstance(message, EventsArrived) and message.source is self.source


class StartRun(Message):
    """Start this profile in the app (resumed from a checkpoint when `resume` is given)."""

    def __init__(self, profile: Profile, resume: str | Path | None = None) -> None:
        super().__init__()
        self.profile = profile
        self.resume = resume


class OpenRun(Message):
    """Show a run directory's dashboard: the app's own run, or one followed from its events."""

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = run_dir


class OpenDashboard(Message):
    """Show the dashboard of the run this app trains."""


class OpenSweep(Message):
    """Show a sweep directory's trials (the sweep screen)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
