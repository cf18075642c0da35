"""The first screen: the profiles in the profiles folder and the runs in the runs folder.

Profiles: enter opens the form, `r` runs it, `n` starts a new profile. Runs: enter shows
the run (its dashboard), `r` resumes it from a checkpoint. tab moves between the lists.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static
from textual.widgets.data_table import RowDoesNotExist

from engine.errors import MptError
from engine.formatting import metric as format_metric
from engine.profile import FIELD_BY_PATH, load_profile, read_profile_file
from engine.runs import RunSummary, list_runs
from engine.stop import state_label
from tui.messages import OpenDashboard, OpenRun, StartRun

if TYPE_CHECKING:
    from tui.session import RunSource

CELL_LIMIT = 80  # characters of a name or a state a table cell shows
RUNS_REFRESH_INTERVAL = 2.0  # seconds between two listings of the runs, while one is live


def _plain(text: str, limit: int = CELL_LIMIT) -> str:
    """A cell from a file (a name, a state from events.jsonl): shown as written, never read
    as markup (DataTable reads a string as markup: `[/x]` would stop the table), one line,
    cut at `limit`."""
    text = "".join(c if c.isprintable() else "?" for c in text[: limit + 1])
    return escape(text if len(text) <= limit else text[: limit - 3] + "...")


@dataclass
class ProfileEntry:
    path: Path
    data: dict[str, Any]
    problems: int
    error: str = ""

    def get(self, section: str, key: str) -> str:
        """The key's value in the file, else its default, as text."""
        table = self.data.get(section)
        value = table.get(key) if isinstance(table, dict) else None
        if value is None:
            value = FIELD_BY_PATH[f"{section}.{key}"].default
        return "" if value is None else str(value)


def scan_profiles(folder: Path) -> list[ProfileEntry]:
    """Every *.toml in the folder, with how many problems the engine finds in it."""
    entries = []
    for path in sorted(folder.glob("*.toml")) if folder.is_dir() else []:
        try:
            data = read_profile_file(path)
        except MptError as e:
            entries.append(ProfileEntry(path, {}, 1, str(e)))
            continue
        try:
            load_profile(path)
            problems = 0
        except MptError as e:
            problems = max(1, len(getattr(e, "problems", [])))
        entries.append(ProfileEntry(path, data, problems))
    return entries


def runs_folders(runs_dir: Path, profiles: list[ProfileEntry]) -> list[Path]:
    """The runs folder, and each profile's run.out_dir where it differs."""
    folders = [runs_dir]
    for entry in profiles:
        out = entry.get("run", "out_dir")
        if (
            out
            and out != str(runs_dir)
            and Path(out).expanduser().resolve() not in {f.resolve() for f in folders}
        ):
            folders.append(Path(out).expanduser())
    return folders


def best_cell(r: RunSummary) -> str:
    """The best validation value of the run's headline metric: `97.25%` (accuracy, named
    by no word: every run before issue 15 has it), `0.3120 mae`, `95.10% f1`."""
    headline = r.headline
    best = r.best_val_acc if headline == "val_acc" else r.best_headline
    name = headline.removeprefix("val_")
    if best is None or name == "acc":
        return format_metric(headline, best)
    return f"{format_metric(headline, best)} {name}"


class HomeScreen(Screen):
    CSS_PATH = "home.tcss"
    BINDINGS = [
        Binding("r", "run_profile", "Run"),
        Binding("r", "resume_run", "Resume"),
        Binding("n", "new_profile", "New profile"),
        Binding("d", "dashboard", "Dashboard"),
        Binding("g", "refresh", "Refresh"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(
        self,
        profiles_dir: Path,
        runs_dir: Path,
        own_run: Callable[[], RunSource | None] = lambda: None,
    ):
        """`own_run`: the run this console trains, if any (the app's), shown as "here"."""
        super().__init__()
        self.profiles_dir = profiles_dir
        self.runs_dir = runs_dir
        self.own_run = own_run
        self.profiles: list[ProfileEntry] = []
        self.runs: list[RunSummary] = []
        self._folders_seen: frozenset[str] = frozenset()  # the run folders last listed

    def compose(self) -> ComposeResult:
        yield Static(f"mpt · profiles in {self.profiles_dir}/", id="profiles-title", markup=False)
        yield DataTable(id="profiles", cursor_type="row", zebra_stripes=True)
        yield Static(f"runs in {self.runs_dir}/", id="runs-title", markup=False)
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Static(id="hint", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        profiles = self.query_one("#profiles", DataTable)
        profiles.add_columns("profile", "run name", "dataset", "model", "epochs", "check")
        runs = self.query_one("#runs", DataTable)
        runs.add_columns("run", "state", "epoch", "best val", "last checkpoint")
        self.action_refresh()
        profiles.focus()
        self.set_interval(RUNS_REFRESH_INTERVAL, self._refresh_if_live)

    def on_screen_resume(self) -> None:
        self.action_refresh()

    # ---- filling the tables ----
    def action_refresh(self) -> None:
        self.profiles = scan_profiles(self.profiles_dir)
        table = self.query_one("#profiles", DataTable)
        key = self._cursor_key(table)
        table.clear()
        for e in self.profiles:
            check = (
                "ok" if not e.problems else f"{e.problems} problem{'s' if e.problems > 1 else ''}"
            )
            cells = (
                e.path.stem,
                e.get("run", "name"),
                e.get("data", "dataset"),
                e.get("model", "arch"),
                e.get("run", "epochs"),
            )
            table.add_row(*map(_plain, cells), check, key=str(e.path))
        self._restore_cursor(table, key)
        self._refresh_runs()
        if not self.profiles:
            self._hint(f"no profiles in {self.profiles_dir}/: press n to make one")
        else:
            self._hint("")

    def _refresh_runs(self) -> None:
        self._folders_seen = self._run_folders()
        now = time.time()
        runs: list[RunSummary] = []
        for folder in runs_folders(self.runs_dir, self.profiles):
            runs += list_runs(folder, now)
        runs.sort(key=lambda r: (r.stamp, r.started or 0.0), reverse=True)
        self.runs = runs
        table = self.query_one("#runs", DataTable)
        key = self._cursor_key(table)
        table.clear()
        session = self.own_run()
        here = session.run_dir.resolve() if session and session.live and session.run_dir else None
        for r in runs:
            state = state_label(r.state)
            if here is not None and r.run_dir.resolve() == here:
                state = "paused here" if session.view.state == "paused" else "running here"
            if r.unreadable:  # some of its events.jsonl could not be read: say so
                state += f", {r.unreadable} bad line{'s' if r.unreadable > 1 else ''}"
            epoch = f"{r.epoch}/{r.epochs}" if r.epochs else str(r.epoch or "-")
            checkpoint = r.last_checkpoint.name if r.last_checkpoint else "-"
            table.add_row(
                _plain(f"{r.name}/{r.stamp}"),
                _plain(state),
                epoch,
                _plain(best_cell(r)),
                _plain(checkpoint),
                key=str(r.run_dir),
            )
        self._restore_cursor(table, key)

    def _refresh_if_live(self) -> None:
        # only while shown: under the dashboard, re-reading a busy events.jsonl every
        # 2 s would cost the trainer time for nothing. A run started elsewhere (mpt run in
        # tmux) shows up by its new folder: two levels of folder names, no file read.
        if not self.is_current:
            return
        folders = self._run_folders()
        if folders != self._folders_seen or any(r.live for r in self.runs):
            self._refresh_runs()

    def _run_folders(self) -> frozenset[str]:
        found = set()
        for folder in runs_folders(self.runs_dir, self.profiles):
            with contextlib.suppress(OSError):
                for name in os.scandir(folder):
                    if name.is_dir(follow_symlinks=False):
                        with contextlib.suppress(OSError):
                            found.update(e.path for e in os.scandir(name.path))
        return frozenset(found)

    @staticmethod
    def _cursor_key(table: DataTable) -> str | None:
        if not table.row_count:
            return None
        try:
            return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:  # noqa: BLE001 - a stale cursor just starts at the top
            return None

    @staticmethod
    def _restore_cursor(table: DataTable, key: str | None) -> None:
        if key is None:
            return
        with contextlib.suppress(RowDoesNotExist):  # the row is gone: stay at the top
            table.move_cursor(row=table.get_row_index(key))

    def _hint(self, text: str) -> None:
        hint = self.query_one("#hint", Static)
        hint.update(text)
        hint.display = bool(text)

    # ---- what is highlighted ----
    def _focused_table(self) -> str:
        focused = self.focused
        return focused.id if isinstance(focused, DataTable) and focused.id else "profiles"

    def highlighted_profile(self) -> ProfileEntry | None:
        key = self._cursor_key(self.query_one("#profiles", DataTable))
        return next((e for e in self.profiles if str(e.path) == key), None)

    def highlighted_run(self) -> RunSummary | None:
        key = self._cursor_key(self.query_one("#runs", DataTable))
        return next((r for r in self.runs if str(r.run_dir) == key), None)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "run_profile":
            return self._focused_table() == "profiles"
        if action == "resume_run":
            return self._focused_table() == "runs"
        if action == "dashboard":
            return self.own_run() is not None
        return True

    def on_descendant_focus(self) -> None:
        self.refresh_bindings()

    # ---- actions ----
    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.data_table.id == "profiles":
            self.open_profile()
        else:
            self.view_run()

    def open_profile(self) -> None:
        from tui.screens.profile_form import ProfileFormScreen

        entry = self.highlighted_profile()
        if entry is not None:
            self.app.push_screen(ProfileFormScreen.open(entry.path))

    def action_new_profile(self) -> None:
        from tui.screens.profile_form import ProfileFormScreen

        self.app.push_screen(ProfileFormScreen.new())

    def action_run_profile(self) -> None:
        entry = self.highlighted_profile()
        if entry is None:
            return
        try:
            profile = load_profile(entry.path)
        except MptError as e:
            first = str(e).splitlines()[0]
            self.notify(f"cannot run: {first}", severity="error", timeout=8)
            return
        self.post_message(StartRun(profile))

    def action_resume_run(self) -> None:
        from tui.screens.resume import ResumeScreen

        run = self.highlighted_run()
        if run is None:
            return
        if run.live:  # resuming it would train a second copy beside it: watch it instead
            self.notify("this run is live: its dashboard, not a second copy of it")
            self.post_message(OpenRun(run.run_dir))
            return
        self.app.push_screen(ResumeScreen(run.run_dir))

    def view_run(self) -> None:
        run = self.highlighted_run()
        if run is not None:
            self.post_message(OpenRun(run.run_dir))

    def action_dashboard(self) -> None:
        self.post_message(OpenDashboard())
