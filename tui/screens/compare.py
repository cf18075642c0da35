"""Runs side by side: the curves of one metric overlaid, the table of `mpt compare`.

Opened by `v` on the runs list with 2 to 8 runs marked (space). The runs are read by
engine/compare.py (as `mpt compare` reads them), in a thread; `m` goes to the next metric
every run has. Each run's curve and its row in the table share a colour.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import Footer, Static

from tui.widgets.curves import Curve, CurvesPlot

# plotext's and Textual's names alike (the legend is drawn in `ansi_<colour>`)
COLORS = ("cyan", "red", "green", "magenta", "blue", "yellow", "white", "cyan")


class CompareScreen(Screen):
    CSS_PATH = "compare.tcss"
    BINDINGS = [
        Binding("m", "next_metric", "Next metric"),
        Binding("escape", "back", "Back"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, run_dirs: list[Path]):
        super().__init__()
        self.run_dirs = run_dirs
        self.runs: list = []  # engine.compare.ComparedRun, once read
        self.metric = ""
        self.note: str | None = None

    def compose(self) -> ComposeResult:
        yield Static(f"comparing {len(self.run_dirs)} runs ...", id="title", markup=False)
        yield CurvesPlot("", id="curves")
        yield Static(id="table", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self._read()

    @work(thread=True, exclusive=True)
    def _read(self) -> None:
        from engine.compare import load_run

        try:
            runs = [load_run(d) for d in self.run_dirs]
        except Exception as e:  # noqa: BLE001 - said on screen; a worker error ends the app
            self.app.call_from_thread(self._say, f"cannot compare these runs: {e}")
            return
        self.app.call_from_thread(self._show, runs)

    def _say(self, text: str) -> None:
        self.query_one("#title", Static).update(text)

    def _show(self, runs: list) -> None:
        from engine.compare import choose_metric

        self.runs = runs
        self.metric, self.note = choose_metric(runs, None)
        self._draw()

    def shared_metrics(self) -> list[str]:
        """The metrics every run has, in the first run's order."""
        return [m for m in self.runs[0].metrics if all(m in r.curves for r in self.runs)]

    def action_next_metric(self) -> None:
        shared = self.shared_metrics() if self.runs else []
        if not shared:
            return
        at = shared.index(self.metric) if self.metric in shared else -1
        self.metric, self.note = shared[(at + 1) % len(shared)], None
        self._draw()

    def _draw(self) -> None:
        from engine.compare import compare_table, ranked

        order = ranked(self.runs, self.metric)
        curves = []
        for i, run in enumerate(order):
            points = [(e, v) for e, v in run.curves.get(self.metric, []) if v is not None]
            xs, ys = [float(e) for e, _ in points], [v for _, v in points]
            curves.append(Curve(str(i + 1), xs, ys, color=COLORS[i]))
        self.query_one("#curves", CurvesPlot).set_curves(curves, title=self.metric)
        title, header, *rows = compare_table(self.runs, self.metric).splitlines()
        table = Text(f"   {header}\n", no_wrap=True, overflow="ellipsis")
        for i, row in enumerate(rows):
            table.append(f"{i + 1}━ ", style=COLORS[i])  # its curve's number and colour
            table.append(row + "\n")
        if self.note:
            table.append(self.note, style="dim")
        self.query_one("#table", Static).update(table)
        self._say(f"{title} · m: next metric")

    def action_back(self) -> None:
        self.dismiss()
