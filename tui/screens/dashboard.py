"""The dashboard of one run: progress, curves, metrics, learning rate, memory, early stopping.

It shows a `RunSource` (tui/session.py): a run this app trains, or one read from its
events.jsonl and followed while another process writes it (`mpt run`; the keys reach it
through its control channel). The keys call the source's controls whichever it is. It
redraws the text when the app's `run_updated` signal names its source (at most 4x/s) and
the curves less often (plotext is slow, and shares the GIL with the trainer).
"""

from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Static

from tui.screens.confirm import ConfirmScreen
from tui.screens.log import LogScreen
from tui.session import RunSession, RunSource
from tui.viewmodel import (
    RunView,
    early_stop_lines,
    memory_lines,
    metric_lines,
    path_lines,
    progress_lines,
    stats_lines,
    title_line,
)
from tui.widgets.curves import Curve, CurvesPlot

MESSAGE_LINES = 3
INFO_LINES = 4  # the info block's least height (memory and early stopping: 2 lines each)
PLOT_LINES = 8  # the most lines a long metrics list may take from the curves, at the least
TRACEBACK_LINES = 6
MIN_WIDTH = 20  # columns the progress bars are laid out for, at the least
# The curves cost far more to draw than the text: redraw them at most every
# PLOT_MIN_INTERVAL seconds, and less often when drawing them takes longer, so that
# they use at most PLOT_CPU_SHARE of the time the trainer shares the GIL with. On a
# machine whose cores the trainer's threads all use, every percent of a core the console
# takes costs the run about twice that (each op's threads wait for the one descheduled):
# bench/console_cost.py.
PLOT_MIN_INTERVAL = 1.0
PLOT_CPU_SHARE = 0.02

STATE_STYLES = {
    "running": "bold green",
    "paused": "bold yellow",
    "starting": "bold",
    "failed": "bold red",
}


class DashboardScreen(Screen):
    """One run's dashboard; p, c and s act while its source is live."""

    CSS_PATH = "dashboard.tcss"
    BINDINGS = [
        Binding("p", "pause", "Pause/resume"),
        Binding("c", "checkpoint", "Checkpoint"),
        Binding("s", "stop", "Stop"),
        Binding("d", "detach", "Detach"),
        Binding("l", "log", "Log"),
        Binding("escape", "back", "Back"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, source: RunSource):
        super().__init__()
        self.source = source
        self._plotted = -1
        self._drawn = -1
        self._next_plot = 0.0
        self._plot_timer: Timer | None = None  # a redraw of the curves that waits its turn
        self._texts: dict[str, str] = {}  # what each panel shows now
        self._was_live: bool | None = None

    @property
    def view(self) -> RunView:
        return self.source.view

    @property
    def live(self) -> bool:
        """Whether the keys p, c and s act: a run of this app, or an attached headless one."""
        return self.source.live

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        yield Static(id="progress", markup=False)
        with Horizontal(id="plots"):
            yield CurvesPlot("loss", id="loss-plot")  # x: epochs, as the metric's
            yield CurvesPlot("val_acc", id="acc-plot")  # the task's headline metric
        with Horizontal(id="info"):
            yield Static(id="stats", markup=False)
            yield Static(id="state", markup=False)
        yield Static(id="paths", markup=False)
        yield Static(id="messages", markup=False)
        yield Static(id="error", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        # immediate: redrawn in the same turn as the fold, never a frame behind the view
        self.app.run_updated.subscribe(self, self._on_run_updated, immediate=True)
        self.redraw(force=True)

    def on_screen_resume(self) -> None:
        self.redraw(force=True)

    def on_resize(self) -> None:
        self.redraw(force=True)

    def _on_run_updated(self, source: RunSource) -> None:
        if source is not self.source:
            return
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
        width = max(MIN_WIDTH, self.size.width - 2)
        title = Text(title_line(v))
        title.highlight_words([v.state.upper()], STATE_STYLES.get(v.state, "bold cyan"))
        self._set("#title", title)
        self._set("#progress", "\n".join(progress_lines(v, width)))
        state = memory_lines(v) + early_stop_lines(v)  # a GPU run's host line makes it 5
        self._show_info(v, least=len(state))
        self._set("#state", "\n".join(state))
        self._set("#paths", "\n".join(path_lines(v)))
        self._set("#messages", "\n".join(list(v.messages)[-MESSAGE_LINES:]))
        error = self.query_one("#error", Static)
        if v.error:
            tb = [line for line in v.traceback.splitlines() if line.strip()][-TRACEBACK_LINES:]
            error.update("\n".join([f"the run failed: {v.error}", *tb]))
        if error.display != bool(v.error):
            error.display = bool(v.error)
        if force or not v.live or time.monotonic() >= self._next_plot:
            self._plot(v)  # at once: opening, resizing, and the run's last word
        elif v.plot_version != self._plotted and self._plot_timer is None:
            self._plot_timer = self.set_timer(self._next_plot - time.monotonic(), self._plot_due)

    def _show_info(self, v: RunView, least: int = INFO_LINES) -> None:
        """Losses, lr and every metric; the block grows with the task's metrics, as far as
        the curves keep PLOT_LINES (the last line then names the metrics left out), and is
        at least `least` lines high (the memory and early-stopping panel beside it)."""
        head = stats_lines(v)
        others = ("#title", "#progress", "#paths", "#messages", "#error", "Footer")
        fixed = sum(self.query_one(o).outer_size.height for o in others)  # (the last layout's)
        room = max(INFO_LINES, self.size.height - fixed - PLOT_LINES)
        lines = head + metric_lines(v, max_lines=room - len(head))
        self._set("#stats", "\n".join(lines))
        height = max(INFO_LINES, least, len(lines))
        info = self.query_one("#info")
        if info.styles.height is None or info.styles.height.value != height:
            info.styles.height = height  # a layout, only when the number of lines changes

    def _set(self, selector: str, content: str | Text) -> None:
        """Update a fixed-size panel only when its text changed, without a new layout."""
        key = str(content) if isinstance(content, str) else content.markup
        if self._texts.get(selector) == key:
            return
        self._texts[selector] = key
        self.query_one(selector, Static).update(content, layout=False)

    def _plot_due(self) -> None:
        self._plot_timer = None
        self._plot(self.view)

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
        headline = v.headline
        metric = [
            Curve("train", *v.metric(f"train_{headline}").series.points(), color="blue"),
            Curve("val", *v.metric(f"val_{headline}").series.points(), color="red"),
        ]
        self.query_one("#loss-plot", CurvesPlot).set_curves(loss)
        self.query_one("#acc-plot", CurvesPlot).set_curves(metric, title=f"val_{headline}")

    # ---- controls ----
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("pause", "checkpoint", "stop"):
            return self.live  # a finished or replayed run has no controls
        if action == "detach":  # only a run this console trains can be left training
            return self.live and isinstance(self.source, RunSession)
        return True

    def action_detach(self) -> None:
        self.app.action_detach()

    def _say(self, text: str) -> None:
        self.view.messages.append(text)
        self.view.version += 1
        self.redraw()

    def action_pause(self) -> None:
        if self.live:
            self._say(self.source.resume() if self.source.paused else self.source.pause())

    def action_checkpoint(self) -> None:
        if self.live:
            self._say(self.source.checkpoint())

    def action_stop(self) -> None:
        if not self.live:
            return

        def answer(yes: bool | None) -> None:
            if yes and self.live:
                self._say(self.source.stop())

        self.app.push_screen(ConfirmScreen("Stop the run? A checkpoint is saved first."), answer)

    def action_log(self) -> None:
        self.app.push_screen(LogScreen(self.source))

    def action_back(self) -> None:
        self.dismiss()  # the home screen is always beneath
