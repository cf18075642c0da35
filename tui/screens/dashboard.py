"""The live run: progress, curves, learning rate, memory, early stopping, checkpoints.

Redraws the text from the session's view when the app's `run_version` moves (at
most 10x/s) and the curves less often (plotext is slow, and shares the GIL with the
trainer). A run from the runs list opens here too (`DashboardScreen.replay`, and
`mpt-tui --attach RUN_DIR`): drawn from its events.jsonl, and followed while another
process still writes it; when that process is `mpt run`, the keys reach it through its
control channel (engine/remote.py) and their effect comes back as events.
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Static

from engine.errors import MptError
from engine.remote import ControlChannel
from engine.runs import summarize_run
from tui.session import EventsFile, RunSession
from tui.viewmodel import (
    RunView,
    build_view,
    early_stop_lines,
    memory_lines,
    path_lines,
    progress_lines,
    stats_lines,
    title_line,
)
from tui.widgets.curves import Curve, CurvesPlot

MESSAGE_LINES = 3
TRACEBACK_LINES = 6
# The curves cost far more to draw than the text: redraw them at most every
# PLOT_MIN_INTERVAL seconds, and less often when drawing them takes longer, so that
# they use at most PLOT_CPU_SHARE of the time the trainer shares the GIL with.
PLOT_MIN_INTERVAL = 0.5
PLOT_CPU_SHARE = 0.05
FOLLOW_INTERVAL = 0.5  # seconds between reads of a followed run's events.jsonl

STATE_STYLES = {
    "running": "bold green",
    "paused": "bold yellow",
    "starting": "bold",
    "failed": "bold red",
}


class DashboardScreen(Screen):
    """One run's dashboard: live when given a session, read-only when given a view."""

    CSS_PATH = "dashboard.tcss"
    BINDINGS = [
        Binding("p", "pause", "Pause/resume"),
        Binding("c", "checkpoint", "Checkpoint"),
        Binding("s", "stop", "Stop"),
        Binding("escape", "back", "Back"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, session: RunSession | None = None, view: RunView | None = None):
        super().__init__()
        self.session = session
        self._view = view if view is not None else RunView()
        self._plotted = -1
        self._drawn = -1
        self._next_plot = 0.0
        self._texts: dict[str, str] = {}  # what each panel shows now
        self._was_live: bool | None = None
        self._events_file: EventsFile | None = None  # a replayed run, followed as it grows
        self.remote: ControlChannel | None = None  # a headless run's commands, if it takes them

    @classmethod
    def replay(cls, run_dir: Path) -> DashboardScreen:
        """A run from its events.jsonl: a finished one, or one another process runs.

        A run still writing its events (`mpt run` in another pane) is followed live;
        one that stopped writing without a last word is shown as crashed.
        """
        run_dir = Path(run_dir)
        screen = cls(view=RunView())
        screen._events_file = EventsFile(run_dir / "events.jsonl")
        view = build_view(screen._events_file.read_new(), screen._view)
        view.unreadable(screen._events_file.new_problems())
        view.run_dir = view.run_dir or str(run_dir)
        view.name = view.name or run_dir.parent.name
        if view.live:
            summary = summarize_run(run_dir)
            if summary is not None and summary.state == "crashed":
                view.state = "crashed"
                view.messages.append("the run stopped writing events without finishing")
            elif ControlChannel(run_dir).open:
                screen.remote = ControlChannel(run_dir)
                view.messages.append(f"attached to {run_dir}: p, c and s reach that process")
        return screen

    def _follow(self) -> None:
        if self._events_file is None or not self._view.live:
            return
        events = self._events_file.read_new()
        if events:
            build_view(events, self._view)
        if self._view.unreadable(self._events_file.new_problems()) or events:
            self.redraw()
        if self.live != self._was_live:  # the followed run ended: no more controls
            self._was_live = self.live
            self.refresh_bindings()

    @property
    def view(self) -> RunView:
        return self.session.view if self.session is not None else self._view

    @property
    def live(self) -> bool:
        """Whether the keys p, c and s act: a run of this app, or an attached headless one."""
        if self.session is not None:
            return self.session.live
        return self.remote is not None and self._view.live and self.remote.open

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        yield Static(id="progress", markup=False)
        with Horizontal(id="plots"):
            yield CurvesPlot("loss (x: epochs)", id="loss-plot")
            yield CurvesPlot("accuracy", id="acc-plot")
        with Horizontal(id="info"):
            yield Static(id="stats", markup=False)
            yield Static(id="state", markup=False)
        yield Static(id="paths", markup=False)
        yield Static(id="messages", markup=False)
        yield Static(id="error", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.watch(self.app, "run_version", self._on_run_version, init=False)
        self.set_interval(PLOT_MIN_INTERVAL / 2, self._replot_when_due)
        if self._events_file is not None and self._view.live:
            self.set_interval(FOLLOW_INTERVAL, self._follow)
        self.redraw(force=True)

    def on_screen_resume(self) -> None:
        self.redraw(force=True)

    def on_resize(self) -> None:
        self.redraw(force=True)

    def _on_run_version(self, _version: int) -> None:
        self.redraw()
        if self.live != self._was_live:  # the footer offers p/c/s only while it runs
            self._was_live = self.live
            self.refresh_bindings()

    # ---- drawing ----
    def redraw(self, force: bool = False) -> None:
        v = self.view
        if not force and v.version == self._drawn:
            return
        self._drawn = v.version
        width = max(20, self.size.width - 2)
        title = Text(title_line(v))
        title.highlight_words([v.state.upper()], STATE_STYLES.get(v.state, "bold cyan"))
        self._set("#title", title)
        self._set("#progress", "\n".join(progress_lines(v, width)))
        self._set("#stats", "\n".join(stats_lines(v)))
        self._set("#state", "\n".join(memory_lines(v) + early_stop_lines(v)))
        self._set("#paths", "\n".join(path_lines(v)))
        self._set("#messages", "\n".join(list(v.messages)[-MESSAGE_LINES:]))
        error = self.query_one("#error", Static)
        if v.error:
            tb = [line for line in v.traceback.splitlines() if line.strip()][-TRACEBACK_LINES:]
            error.update("\n".join([f"the run failed: {v.error}", *tb]))
        if error.display != bool(v.error):
            error.display = bool(v.error)
        if force or not v.live:
            self._plot(v)  # at once: opening, resizing, and the run's last word

    def _set(self, selector: str, content: str | Text) -> None:
        """Update a fixed-size panel only when its text changed, without a new layout."""
        key = str(content) if isinstance(content, str) else content.markup
        if self._texts.get(selector) == key:
            return
        self._texts[selector] = key
        self.query_one(selector, Static).update(content, layout=False)

    def _replot_when_due(self) -> None:
        v = self.view
        if v.plot_version != self._plotted and time.monotonic() >= self._next_plot:
            self._plot(v)

    def _plot(self, v: RunView) -> None:
        if v.plot_version == self._plotted and self._plotted >= 0:
            return
        self._plotted = v.plot_version
        plots = list(self.query(CurvesPlot))
        cost = sum(p.build_seconds for p in plots)  # what the last drawing cost
        self._next_plot = time.monotonic() + max(PLOT_MIN_INTERVAL, cost / PLOT_CPU_SHARE)
        loss = [
            Curve("train (steps)", *v.train_loss.points(), color="cyan"),
            Curve("train", *v.epoch_train_loss.points(), color="blue"),
            Curve("val", *v.val_loss.points(), color="red"),
        ]
        acc = [
            Curve("train", *v.train_acc.points(), color="blue"),
            Curve("val", *v.val_acc.points(), color="red"),
        ]
        self.query_one("#loss-plot", CurvesPlot).set_curves(loss)
        self.query_one("#acc-plot", CurvesPlot).set_curves(acc)

    # ---- controls ----
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("pause", "checkpoint", "stop"):
            return self.live  # a finished or replayed run has no controls
        return True

    def _say(self, text: str) -> None:
        self.view.messages.append(text)
        self.view.version += 1
        self.redraw()

    def _send(self, command: str) -> bool:
        """Send a command to the attached headless run; False (said on screen) if it fails."""
        try:
            self.remote.send(command)
        except (MptError, OSError) as e:
            self._say(f"cannot send {command}: {e}")
            return False
        return True

    def action_pause(self) -> None:
        if not self.live:
            return
        if self.session is None:  # attached: the events say whether it is paused
            command = "resume" if self._view.state == "paused" else "pause"
            if self._send(command):
                self._say(f"{command} sent to the run's process")
            return
        if self.session.toggle_pause():
            self._say("pause requested: takes effect after the current step")
        else:
            self._say("resume requested")

    def action_checkpoint(self) -> None:
        if not self.live:
            return
        if self.session is None:
            if self._send("checkpoint"):
                self._say("checkpoint sent to the run's process: saved after its current step")
            return
        self.session.checkpoint()
        self._say("checkpoint requested: saved after the current step")

    def action_stop(self) -> None:
        if not self.live:
            return
        from tui.screens.confirm import ConfirmScreen

        def answer(yes: bool | None) -> None:
            if not (yes and self.live):
                return
            if self.session is None:
                if self._send("stop"):
                    self._say("stop sent to the run's process: a checkpoint is saved first")
                return
            self.session.stop()
            self._say("stopping: a checkpoint is saved first")

        self.app.push_screen(ConfirmScreen("Stop the run? A checkpoint is saved first."), answer)

    def action_back(self) -> None:
        if len(self.app.screen_stack) > 2:
            self.dismiss()
        else:
            from tui.screens.home import HomeScreen

            self.app.switch_screen(HomeScreen(self.app.profiles_dir, self.app.runs_dir))
