"""Resume a run: pick one of its checkpoints, adjust the keys that are safe to change, go.

The new run's dashboard starts with the curves of events.jsonl up to the checkpoint's
step, so they continue where the checkpoint left off.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static
from textual.widgets.data_table import RowDoesNotExist

from engine.errors import MptError, ProfileError
from engine.formatting import metric as format_metric
from engine.profile import (
    FIELD_BY_PATH,
    RESUME_FORM_KEYS,
    profile_from_dict,
    read_profile_file,
)
from tui.messages import StartRun
from tui.profile_text import MISSING
from tui.widgets.field import FieldRow


def run_dir_of(path: Path) -> Path:
    """The run directory of a run directory or of a checkpoint file inside it."""
    if path.is_file() or path.suffix == ".pt":
        parent = path.parent
        return parent.parent if parent.name == "checkpoints" else parent
    return path


def list_run_checkpoints(run_dir: Path) -> list[Any]:
    """The engine's CheckpointInfo list, newest first, then the unusable ones (each with
    its sentence in `problem`). Imports torch: call it off the UI."""
    from engine.checkpoint import list_checkpoints

    found = list_checkpoints(run_dir, unusable=True)
    good = [c for c in found if c.problem is None]
    good.sort(key=lambda c: (c.step, c.time), reverse=True)
    return good + [c for c in found if c.problem is not None]


COLUMNS = ("checkpoint", "epoch", "step", "val", "saved")


def format_time(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


class ResumeScreen(Screen):
    CSS_PATH = "resume.tcss"
    BINDINGS = [
        Binding("ctrl+r", "resume", "Resume"),
        Binding("escape", "back", "Back"),
    ]

    def __init__(self, path: Path):
        super().__init__()
        self.selected = path if path.suffix == ".pt" else None
        self.run_dir = run_dir_of(path)
        self.checkpoints: list[Any] = []
        self.base: dict[str, Any] = {}
        self.problem = ""

    def compose(self) -> ComposeResult:
        yield Static(f"resume {self.run_dir}", id="title", markup=False)
        yield DataTable(id="checkpoints", cursor_type="row", zebra_stripes=True)
        yield Static("keys safe to change when resuming:", id="fields-title")
        with VerticalScroll(id="fields", can_focus=False):
            try:
                self.base = read_profile_file(self.run_dir / "profile.toml")
            except MptError as e:
                self.problem = f"cannot read the run's profile: {e}"
            for key in RESUME_FORM_KEYS:
                spec = FIELD_BY_PATH[key]
                table = self.base.get(spec.section, {})
                yield FieldRow(spec, table.get(spec.name, spec.default), label=spec.path)
        yield Static(id="status", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#checkpoints", DataTable)
        table.add_columns(*COLUMNS)
        table.focus()
        self._status("reading the checkpoints ...")
        self._load_checkpoints()

    @work(thread=True, exclusive=True)
    def _load_checkpoints(self) -> None:
        """Reading checkpoints imports torch: off the UI thread."""
        try:
            infos = list_run_checkpoints(self.run_dir)
        except Exception as e:  # noqa: BLE001 - said on screen; a worker error would end the app
            self.app.call_from_thread(self._status, f"cannot read the checkpoints: {e}")
            return
        self.app.call_from_thread(self._show_checkpoints, infos)

    def _show_checkpoints(self, infos: list[Any]) -> None:
        table = self.query_one("#checkpoints", DataTable)
        self.checkpoints = infos
        # best.pt follows checkpoint.monitor: when that is not the headline metric (val_loss
        # while the val column shows accuracy), a column shows it, so that best.pt's row
        # says why it is the best
        monitors = {
            c.monitor for c in infos if c.problem is None and c.monitor not in ("", c.metric_name)
        }
        named = len(monitors) > 1  # (a resume that changed it): each cell names its own
        if monitors:
            header = "checkpoint.monitor" if named else next(iter(monitors))
            table.clear(columns=True)
            table.add_columns(*COLUMNS[:-1], header, COLUMNS[-1])
        for c in infos:
            unusable = c.problem is not None
            cells = [
                Path(c.path).name,
                "unusable" if unusable else str(c.epoch),
                "-" if unusable else str(c.step),
                _metric_cell(c.metric_name, c.metric),
            ]
            if monitors:
                value = format_metric(c.monitor, c.monitor_value) if c.monitor else "-"
                cells.append(f"{c.monitor} {value}" if named and c.monitor else value)
            table.add_row(*cells, format_time(c.time), key=str(c.path))
        if self.selected is not None:
            with contextlib.suppress(RowDoesNotExist):  # not listed: stay on the newest
                table.move_cursor(row=table.get_row_index(str(self.selected)))
        table.refresh()  # rows came in after the first paint: draw them all anew
        if not infos:
            self._status("no checkpoints in this run: nothing to resume from")
        else:
            self._show_highlighted()

    def _show_highlighted(self) -> None:
        """The status line: why the highlighted checkpoint is unusable, or how to go on."""
        checkpoint = self.highlighted()
        go_on = "enter or ctrl+r: resume from the highlighted checkpoint"
        if checkpoint is not None and checkpoint.problem:
            self._status(f"cannot resume from it: {checkpoint.problem}")
        elif checkpoint is not None and Path(checkpoint.path).name == "best.pt":
            best = format_metric(checkpoint.monitor, checkpoint.monitor_value)
            self._status(
                self.problem
                or f"best.pt: the best {checkpoint.monitor} so far ({best}, step "
                f"{checkpoint.step}; checkpoint.monitor). {go_on}"
            )
        else:
            self._status(self.problem or go_on)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if self.checkpoints:
            self._show_highlighted()

    def row(self, path: str) -> FieldRow:
        return next(r for r in self.query(FieldRow) if r.path == path)

    def _status(self, text: str) -> None:
        self.query_one("#status", Static).update(text)

    def highlighted(self) -> Any | None:
        table = self.query_one("#checkpoints", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((c for c in self.checkpoints if str(c.path) == key), None)

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_resume()

    def on_field_row_changed(self, event: FieldRow.Changed) -> None:
        self._profile()

    def _profile(self):
        data = {s: dict(t) if isinstance(t, dict) else t for s, t in self.base.items()}
        for row in self.query(FieldRow):
            section, name = row.spec.section, row.spec.name
            value = row.value
            table = data.setdefault(section, {})
            if value is MISSING:
                table.pop(name, None)
            else:
                table[name] = value
        try:
            profile = profile_from_dict(data, str(self.run_dir / "profile.toml"))
        except ProfileError as e:
            by_key = {p.key: p.message for p in e.problems}
            for row in self.query(FieldRow):
                row.error = by_key.get(row.path, "")
            others = [f"{p.key}: {p.message}" for p in e.problems if p.key not in RESUME_FORM_KEYS]
            self._status("; ".join(others) or "fix the marked values first")
            return None
        for row in self.query(FieldRow):
            row.error = ""
        return profile

    def action_resume(self) -> None:
        checkpoint = self.highlighted()
        if checkpoint is None or checkpoint.problem:
            self.app.bell()
            return
        profile = self._profile()
        if profile is None:
            self.app.bell()
            return
        from engine.profile import describe_value
        from engine.user_code import imported_code

        code = imported_code(profile.to_dict())
        command = profile.notify.command  # [notify]'s shell command is code too
        if code is None and not command:
            self._start(profile, checkpoint.path)
            return
        # The run's profile names code to import or a command to run: a run folder can
        # come from anyone (a shared out_dir, a download), so run it only when the user
        # says yes.
        from tui.screens.confirm import ConfirmScreen

        runs, refused = [], []
        if code is not None:
            runs.append(
                f"imports and runs code {code!r} (Python, from the working folder or an "
                "installed package)"
            )
            refused.append(f"imports code {code!r}")
        if command:
            runs.append(f"runs the shell command {describe_value(command)} when the run ends")
            refused.append("runs a shell command ([notify])")

        def answer(yes: bool | None) -> None:
            if yes:
                self._start(profile, checkpoint.path)
            else:
                self._status(f"not resumed: the run's profile {' and '.join(refused)}")

        question = f"This run's profile {' and '.join(runs)}. Run it?"
        self.app.push_screen(ConfirmScreen(question), answer)

    def _start(self, profile, path: str) -> None:
        # to the app itself: this screen is gone before a message to it could bubble up
        self.app.post_message(StartRun(profile, resume=path))
        self.dismiss()

    def action_back(self) -> None:
        self.dismiss()


def _metric_cell(name: str, value: float | None) -> str:
    """`97.25%` for val_acc (the column's old meaning), `0.4123 mae` for another metric."""
    text = format_metric(name, value)
    return text if name == "val_acc" or value is None else f"{text} {name.removeprefix('val_')}"
