"""The first screen: the profiles in the profiles folder and the runs in the runs folder.

Profiles: enter opens the form, `r` runs it, `L` finds it an lr (tui/screens/lr_find.py),
`n` starts a new profile. Runs: enter shows
the run (its dashboard), `r` resumes it from a checkpoint. tab moves between the lists.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.cells import cell_len
from textual import events, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from engine.errors import MptError
from engine.formatting import metric as format_metric
from engine.profile import FIELD_BY_PATH, load_profile, read_profile_file
from engine.runs import RunSummary, list_runs
from engine.stop import state_label
from tui.messages import OpenDashboard, OpenRun, StartRun
from tui.screens.run_removal import RunRemoval, run_label
from tui.screens.sweep_rows import SweepRows, read_sweeps
from tui.widgets.fitted_table import Column, FittedTable

if TYPE_CHECKING:
    from tui.session import RunSource

RUNS_REFRESH_INTERVAL = 2.0  # seconds between two listings of the runs, while one is live
PANEL_MIN = 4  # rows of a table (its header one of them) when both cannot have theirs
# The profile is what a user picks by: cut last. A dataset or model names
# `package.module:function` or `torchvision:resnet18`: the end says which. A run keeps its
# stamp (its folder's name) whole.
PROFILE_COLUMNS = (
    Column("profile", floor=20),
    Column("run name"),
    Column("dataset", cut="start"),
    Column("model", cut="start"),
    Column("epochs"),
    Column("check", floor=10),
)
RUN_COLUMNS = (
    Column("run", floor=20, cut="middle"),
    Column("state", floor=12),
    Column("epoch"),
    Column("best val", floor=10),
    Column("last checkpoint", floor=15),
)


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


def table_heights(space: int, profiles: int, runs: int) -> tuple[int, int]:
    """The rows of the profiles table and of the runs table (each with its header) in
    `space` rows. When both lists fit, the profiles get what they need and the runs the
    rest; when not, each keeps what it needs up to half the space, neither goes below
    PANEL_MIN, and the profiles never get more than they need (the runs list grows)."""
    need_profiles, need_runs = 1 + max(1, profiles), 1 + max(1, runs)
    top = min(need_profiles, max(space // 2, space - need_runs))
    top = max(min(PANEL_MIN, need_profiles), min(top, space - PANEL_MIN))
    return top, space - top


def best_cell(r: RunSummary) -> str:
    """The best validation value of the run's headline metric: `97.25%` (accuracy, named
    by no word: every run before issue 15 has it), `0.3120 mae`, `95.10% f1`."""
    headline = r.headline
    best = r.best_val_acc if headline == "val_acc" else r.best_headline
    name = headline.removeprefix("val_")
    if best is None or name == "acc":
        return format_metric(headline, best)
    return f"{format_metric(headline, best)} {name}"


def profile_cells(e: ProfileEntry) -> list[str]:
    """A profile's row: name, run name, dataset, model, epochs, and its check."""
    check = "ok" if not e.problems else f"{e.problems} problem{'s' if e.problems > 1 else ''}"
    return [
        e.path.stem,
        e.get("run", "name"),
        e.get("data", "dataset"),
        e.get("model", "arch"),
        e.get("run", "epochs"),
        check,
    ]


class HomeScreen(RunRemoval, SweepRows, Screen):
    CSS_PATH = "home.tcss"
    BINDINGS = [
        Binding("r", "run_profile", "Run"),
        Binding("L", "lr_find", "LR find"),
        Binding("r", "resume_run", "Resume"),
        Binding("x", "remove_run", "Remove"),
        Binding("space", "mark_run", "Mark"),
        Binding("v", "compare_runs", "Compare"),
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
        self.sweeps = []  # engine.sweep_ctl.SweepState, a row each among the runs
        self._folders_seen: frozenset[str] = frozenset()  # the run folders last listed
        self._profile_rows: list[tuple[str, list[str]]] = []  # (key, cells), as read
        self._run_rows: list[tuple[str, list[str]]] = []
        self._removing: set[Path] = set()  # run directories a worker is removing
        self.marked: list[Path] = []  # runs marked (space) to compare (v)
        self._hint_text = ""
        self._listing = False  # a thread is listing the runs
        self._list_again = False  # a refresh came during that listing

    def compose(self) -> ComposeResult:
        yield Static(f"mpt · profiles in {self.profiles_dir}/", id="profiles-title", markup=False)
        yield FittedTable(PROFILE_COLUMNS, id="profiles")
        yield Static(f"runs in {self.runs_dir}/", id="runs-title", markup=False)
        yield FittedTable(RUN_COLUMNS, id="runs")
        yield Static(id="hint", markup=False)
        yield Footer()

    def on_mount(self) -> None:
        self.action_refresh()
        self.query_one("#profiles", DataTable).focus()
        self.set_interval(RUNS_REFRESH_INTERVAL, self._refresh_if_live)

    def on_screen_resume(self) -> None:
        self.action_refresh()

    def on_resize(self, event: events.Resize) -> None:
        self._fit_tables()

    # ---- filling the tables ----
    def action_refresh(self) -> None:
        self.profiles = scan_profiles(self.profiles_dir)
        self._profile_rows = [(str(e.path), profile_cells(e)) for e in self.profiles]
        if not self.profiles:
            self._hint(f"no profiles in {self.profiles_dir}/: press n to make one")
        else:
            self._hint("")
        self._refresh_runs()

    def _refresh_runs(self) -> None:
        """List the runs again, in a thread: thousands of run directories, or a history
        of hundreds of MB, take seconds to read, and the screen stays drawn and answering
        meanwhile (one listing at a time; a refresh asked during one follows it)."""
        self._folders_seen = self._run_folders()
        if self._listing:
            self._list_again = True
            return
        self._listing, self._list_again = True, False
        self._list_runs(runs_folders(self.runs_dir, self.profiles))

    @work(thread=True, group="runs-list")
    def _list_runs(self, folders: list[Path]) -> None:
        try:
            now = time.time()
            runs: list[RunSummary] = []
            for folder in folders:
                runs += list_runs(folder, now)
            runs.sort(key=lambda r: (r.stamp, r.started or 0.0), reverse=True)
            sweeps = read_sweeps(folders)
        except Exception:  # noqa: BLE001 - a worker's error would end the app: list none
            runs, sweeps = [], []
        self.app.call_from_thread(self._show_runs, runs, sweeps)

    def _show_runs(self, runs: list[RunSummary], sweeps: list) -> None:
        self._listing = False
        self.runs, self.sweeps = runs, sweeps
        here = self._here()
        rows = [(str(r.run_dir), self._run_cells(r, here)) for r in runs]
        self._run_rows = self._with_sweeps(rows)
        self._fit_tables()
        self.refresh_bindings()  # x shows only with a run to remove
        if self._list_again:
            self._refresh_runs()

    def _redraw_runs(self) -> None:
        """The runs' rows again from the listing in hand (a mark, a removal under way)."""
        here = self._here()
        rows = [(str(r.run_dir), self._run_cells(r, here)) for r in self.runs]
        self._run_rows = self._with_sweeps(rows)
        self._fit_tables()

    def _here(self) -> Path | None:
        """The directory of the live run this console trains, if any."""
        session = self.own_run()
        if session is None or not session.live or session.run_dir is None:
            return None
        return session.run_dir.resolve()

    def _run_cells(self, r: RunSummary, here: Path | None) -> list[str]:
        state = state_label(r.state)
        if here is not None and r.run_dir.resolve() == here:
            session = self.own_run()
            paused = session is not None and session.view.state == "paused"
            state = "paused here" if paused else "running here"
        if r.unreadable:  # some of its events.jsonl could not be read: say so
            state += f", {r.unreadable} bad line{'s' if r.unreadable > 1 else ''}"
        if r.run_dir in self._removing:  # half gone, it may read as crashed: say why
            state = "removing..."
        epoch = f"{r.epoch}/{r.epochs}" if r.epochs else str(r.epoch or "-")
        checkpoint = r.last_checkpoint.name if r.last_checkpoint else "-"
        mark = "● " if r.run_dir in self.marked else ""
        return [mark + run_label(r), state, epoch, best_cell(r), checkpoint]

    def _fit_tables(self) -> None:
        """Give each table the rows it earns and cut its cells to the terminal's width;
        again on every listing and every resize."""
        width, height = self.app.size  # the screen's own lags while another is on top
        hint_rows = math.ceil(cell_len(self._hint_text) / max(1, width - 2))  # it wraps
        space = height - 3 - hint_rows  # the two titles and the footer: one row each
        top, bottom = table_heights(space, len(self._profile_rows), len(self._run_rows))
        profiles = self.query_one("#profiles", FittedTable)
        profiles.styles.height = top
        profiles.show(self._profile_rows, width, top)
        self.query_one("#runs", FittedTable).show(self._run_rows, width, bottom)

    def _refresh_if_live(self) -> None:
        # only while on top: under the dashboard, re-reading a busy events.jsonl every
        # 2 s would cost the trainer time for nothing (is_current is also true for the
        # screen just beneath the top one). A run started elsewhere (mpt run in tmux) shows
        # up by its new folder: two levels of folder names, no file read.
        if self.app.screen is not self:
            return
        folders = self._run_folders()
        if folders != self._folders_seen or any(r.live for r in self.runs) or self.sweep_live:
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

    def _hint(self, text: str) -> None:
        self._hint_text = text
        hint = self.query_one("#hint", Static)
        hint.update(text)
        hint.display = bool(text)

    # ---- what is highlighted ----
    def _focused_table(self) -> str:
        focused = self.focused
        return focused.id if isinstance(focused, DataTable) and focused.id else "profiles"

    def highlighted_profile(self) -> ProfileEntry | None:
        key = self.query_one("#profiles", FittedTable).cursor_key()
        return next((e for e in self.profiles if str(e.path) == key), None)

    def highlighted_run(self) -> RunSummary | None:
        key = self.query_one("#runs", FittedTable).cursor_key()
        return next((r for r in self.runs if str(r.run_dir) == key), None)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("run_profile", "lr_find"):
            return self._focused_table() == "profiles"
        if action == "resume_run":
            return self._focused_table() == "runs"
        if action in ("remove_run", "mark_run", "compare_runs"):
            return self._focused_table() == "runs" and bool(self.runs or self.sweeps)
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

    def action_lr_find(self) -> None:
        from tui.screens.lr_find import find_for_file

        entry = self.highlighted_profile()
        if entry is not None:
            find_for_file(self, entry.path)

    def action_resume_run(self) -> None:
        from tui.screens.resume import ResumeScreen

        run = self.highlighted_run()
        if run is None:
            self.refused_on_sweep("r")
            return
        if run.live:  # resuming it would train a second copy beside it: watch it instead
            self.notify("this run is live: its dashboard, not a second copy of it")
            self.post_message(OpenRun(run.run_dir))
            return
        self.app.push_screen(ResumeScreen(run.run_dir))

    def view_run(self) -> None:
        if self.open_sweep():
            return
        run = self.highlighted_run()
        if run is not None:
            self.post_message(OpenRun(run.run_dir))

    def action_dashboard(self) -> None:
        self.post_message(OpenDashboard())

    # ---- space marks runs, v compares them ----
    def action_mark_run(self) -> None:
        run = self.highlighted_run()
        if run is None:
            self.refused_on_sweep("space")
            return
        if run.run_dir in self.marked:
            self.marked.remove(run.run_dir)
        else:
            self.marked.append(run.run_dir)
        self._redraw_runs()
        self.query_one("#runs", FittedTable).action_cursor_down()  # on to the next one

    def action_compare_runs(self) -> None:
        from tui.screens.compare import CompareScreen

        listed = {r.run_dir for r in self.runs}
        chosen = [d for d in self.marked if d in listed]
        if not 2 <= len(chosen) <= 8:
            self.notify(f"{len(chosen)} runs marked: mark 2 to 8 runs with space, then v")
            return
        self.app.push_screen(CompareScreen(chosen))
