"""A sweep's trials, live: state, values, epoch, the monitor's last and best value.

Opened by enter on a sweep in the runs list, `mpt-tui --sweep FILE` or `--attach
SWEEP_DIR`. A thread polls the sweep directory every POLL_S while the screen is shown
(tui/sweep_view.py reads only what was added); enter opens a trial's dashboard, space
marks trials and v compares them, p pauses or resumes the whole sweep and s stops it
(engine/sweep_ctl.py, as `mpt ctl SWEEP_DIR ...`). The sweep runs in a process of its
own: leaving this screen or quitting the console never stops it.
"""

from __future__ import annotations

import math
from pathlib import Path

from rich.cells import cell_len
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from engine import sweep_ctl
from engine.errors import MptError
from engine.sweep_live import sweep_label
from tui.messages import OpenRun
from tui.sweep_view import SweepSnapshot, SweepWatch, status_text, trial_cells
from tui.widgets.fitted_table import Column, FittedTable

POLL_S = 2.0  # seconds between two looks at the sweep directory, while on top (as the runs list)


def trial_columns(monitor: str) -> tuple[Column, ...]:
    return (
        Column("trial", floor=5),
        Column("state", floor=11),
        Column("values", floor=16),
        Column("epoch"),
        Column(monitor, floor=8),
        Column("best", floor=8),
    )


class SweepScreen(Screen):
    CSS_PATH = "sweep.tcss"
    BINDINGS = [
        Binding("space", "mark", "Mark"),
        Binding("v", "compare", "Compare"),
        Binding("p", "pause", "Pause/resume"),
        Binding("s", "stop", "Stop sweep"),
        Binding("r", "resume_sweep", "Resume sweep"),
        Binding("escape", "back", "Back"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)
        self.snapshot: SweepSnapshot | None = None
        self.marked: list[Path] = []  # the marked trials' run directories (v compares them)
        self._watch: SweepWatch | None = None
        self._polling = False
        self._rows: list[tuple[str, list[str]]] = []
        self._texts = {"#status": "", "#hint": ""}  # what each line says (for its height)
        self._title = ""

    def compose(self) -> ComposeResult:
        yield Static(f"sweep {sweep_label(self.path)} ...", id="title", markup=False)
        yield Static(id="status", markup=False)
        yield FittedTable(trial_columns("monitor"), id="trials")
        yield Static(id="hint", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#hint", Static).display = False  # until there is something to say
        self.query_one("#trials", DataTable).focus()
        self._poll()
        self.set_interval(POLL_S, self._tick)

    def on_resize(self, event: events.Resize) -> None:
        self._fit()

    def on_screen_resume(self) -> None:
        self._tick()

    # ---- reading the sweep, in a thread ----
    def _tick(self) -> None:
        # only while on top: under a trial's dashboard, the sweep waits (is_current is
        # also true for the screen just beneath the top one)
        if self.app.screen is self and not self._polling and self._watch_is_useful():
            self._poll()

    def _watch_is_useful(self) -> bool:
        snap = self.snapshot
        return snap is None or snap.live or snap.status in ("interrupted", "not started")

    @work(thread=True, group="sweep-poll")
    def _poll(self) -> None:
        self._polling = True
        try:
            if self._watch is None:
                self._watch = SweepWatch(self.path)
            snapshot = self._watch.poll()
        except Exception as e:  # noqa: BLE001 - said on screen; a worker error ends the app
            text = str(e) if isinstance(e, MptError | OSError) else f"{type(e).__name__}: {e}"
            self.app.call_from_thread(self._say, f"cannot read the sweep: {text}")
            return
        finally:
            self._polling = False
        self.app.call_from_thread(self._show, snapshot)

    def _say(self, text: str) -> None:
        before = self._texts["#status"]
        if text != before:  # a new layout only when its height changes: it costs CPU
            self._texts["#status"] = text
            layout = self._lines(text) != self._lines(before)
            self.query_one("#status", Static).update(text, layout=layout)

    def _lines(self, text: str) -> int:
        """The rows `text` takes on a line of the screen (it wraps in the width less its
        padding)."""
        return math.ceil(cell_len(text) / max(1, self.app.size.width - 2))

    def _show(self, snap: SweepSnapshot) -> None:
        first, before = self.snapshot is None, self.snapshot
        self.snapshot = snap
        if first:
            table = self.query_one("#trials", FittedTable)
            table.fitted_columns = trial_columns(snap.monitor)
        state = snap.state
        process = f", pid {state.pid} on {state.host}" if state.live else ""
        title = (
            f"sweep {sweep_label(snap.path)} · {state.method}, {len(snap.rows)} trials, "
            f"{snap.parallel} at a time{process}"
        )
        if title != self._title:
            self._title = title
            self.query_one("#title", Static).update(title, layout=False)  # (one line)
        self._say(status_text(snap))
        marked = set(self.marked)
        self._rows = [
            (str(r.trial), trial_cells(r, snap.monitor, r.run_dir in marked)) for r in snap.rows
        ]
        self._hint(self._hint_text(snap))
        self._fit()
        if first or before.status != snap.status:  # p and s show while it is live, r when
            self.refresh_bindings()  # not (the footer is rebuilt: only when that changes)

    def _hint_text(self, snap: SweepSnapshot) -> str:
        if snap.live:
            return (
                "The sweep runs in its own process: esc or q leaves it running "
                f"(mpt-tui --attach {snap.path} comes back; s stops it)."
            )
        return ""

    def _hint(self, text: str) -> None:
        if text == self._texts["#hint"]:
            return
        self._texts["#hint"] = text
        hint = self.query_one("#hint", Static)
        hint.update(text)
        hint.display = bool(text)

    def _fit(self) -> None:
        width, height = self.app.size
        used = 1 + 1  # the title and the footer
        used += sum(self._lines(text) for text in self._texts.values())
        self.query_one("#trials", FittedTable).show(self._rows, width, max(2, height - used))

    # ---- the trial under the cursor ----
    def highlighted(self):
        key = self.query_one("#trials", FittedTable).cursor_key()
        if key is None or self.snapshot is None:
            return None
        return next((r for r in self.snapshot.rows if str(r.trial) == key), None)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        snap = self.snapshot
        if action in ("pause", "stop"):
            return snap is not None and snap.live
        if action == "resume_sweep":
            return snap is not None and snap.status in ("interrupted", "not started")
        return True

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        row = self.highlighted()
        if row is None:
            return
        if row.run_dir is None or not (row.run_dir / "events.jsonl").is_file():
            self.notify(f"trial {row.trial + 1} has no run yet ({row.state})")
            return
        self.post_message(OpenRun(row.run_dir))

    def action_mark(self) -> None:
        row = self.highlighted()
        if row is None:
            return
        if row.run_dir is None:
            self.notify(f"trial {row.trial + 1} has no run yet: nothing to compare")
            return
        if row.run_dir in self.marked:
            self.marked.remove(row.run_dir)
        else:
            self.marked.append(row.run_dir)
        if self.snapshot is not None:
            self._show(self.snapshot)
        self.query_one("#trials", FittedTable).action_cursor_down()

    def action_compare(self) -> None:
        from tui.screens.compare import CompareScreen

        if not 2 <= len(self.marked) <= 8:
            self.notify(f"{len(self.marked)} trials marked: mark 2 to 8 with space, then v")
            return
        self.app.push_screen(CompareScreen(list(self.marked)))

    # ---- the whole sweep: p, s ----
    def action_pause(self) -> None:
        snap = self.snapshot
        if snap is None:
            return
        self._control("resume" if snap.status == "paused" else "pause")

    def action_stop(self) -> None:
        def answer(yes: bool | None) -> None:
            if yes:
                self._control("stop")
            else:
                self.notify("the sweep goes on")

        question = (
            f"Stop the sweep {sweep_label(self.path)}? The running trials save a checkpoint "
            f"and stop, no new one starts; mpt sweep --resume {self.path} finishes it later."
        )
        from tui.screens.confirm import ConfirmScreen

        self.app.push_screen(ConfirmScreen(question), answer)

    def action_resume_sweep(self) -> None:
        """An interrupted sweep goes on in the background, as `mpt sweep --resume DIR
        --detach`: its interrupted trials resume from their checkpoints, the rest start."""
        self._control("resume the sweep")

    @work(thread=True, group="sweep-control")
    def _control(self, command: str) -> None:
        do = {
            "pause": sweep_ctl.pause_sweep,
            "resume": sweep_ctl.resume_sweep,
            "stop": sweep_ctl.stop_sweep,
            "resume the sweep": _resume_detached,
        }[command]
        try:
            answer, severity = do(self.path), "information"
        except (MptError, OSError) as e:
            what = command if command.endswith("sweep") else f"{command} the sweep"
            answer, severity = f"cannot {what}: {e}", "error"
        self.app.call_from_thread(self.notify, answer, severity=severity, markup=False)
        self.app.call_from_thread(self._tick)

    def action_back(self) -> None:
        self.dismiss()


def _resume_detached(path: Path) -> str:
    sweep_ctl.resume_detached(path)
    return (
        f"resuming the sweep in the background (as mpt sweep --resume {path} --detach): "
        "an interrupted trial goes on from its checkpoint (from the start without one), "
        "the queued ones start"
    )
