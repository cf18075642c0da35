"""The sweeps in the runs list: one row each, among the runs by their stamp.

A sweep lives at `<out_dir>/<sweep name>/<stamp>/sweep.json` and its trials' runs two
levels deeper, so the runs list never shows them as runs: it shows the sweep, and enter
opens its trials (the sweep screen). A mixin of the home screen, as run_removal is.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import MptError
from engine.formatting import metric
from engine.sweep_live import find_sweeps, sweep_label
from tui.messages import OpenSweep
from tui.widgets.fitted_table import FittedTable

if TYPE_CHECKING:  # (sweep_ctl and sweep_view, with the sweep engine, only once a sweep is found:
    # the home screen's first paint does not wait for them)
    from engine import sweep_ctl


def sweep_cells(state: sweep_ctl.SweepState) -> list[str]:
    """A sweep's row in the runs list: its name/stamp, `sweep running` (its state as
    `mpt ls` says it), how many trials have ended for good of how many, the best value."""
    best = state.best()
    shown = "-"
    if best is not None:
        name = state.monitor.removeprefix("val_")
        shown = metric(state.monitor, best.best) + ("" if name == "acc" else f" {name}")
    trials = f"{state.done}/{state.trials} trials"
    return [sweep_label(state.path), f"sweep {state.state}", trials, shown, "-"]


def read_sweeps(folders: list[Path]) -> list[sweep_ctl.SweepState]:
    """Every sweep in the runs folders, as its files say now (an unreadable one left out)."""
    found = []
    for folder in folders:
        for path in find_sweeps(folder):
            from engine import sweep_ctl

            try:
                found.append(sweep_ctl.read_sweep_state(path))
            except (MptError, OSError):
                continue
    return found


class SweepRows:
    """For the home screen: `sweeps`, their rows merged into the runs list's, and what
    enter, r, x and space do on one."""

    sweeps: list[sweep_ctl.SweepState]

    def _with_sweeps(self, rows: list[tuple[str, list[str]]]):
        """The runs' rows (newest first) with a row for each sweep (as last read), by stamp."""
        rows = rows + [(str(s.path), sweep_cells(s)) for s in self.sweeps]
        return sorted(rows, key=lambda row: Path(row[0]).name, reverse=True)  # (stable)

    @property
    def sweep_live(self) -> bool:
        return any(s.live for s in self.sweeps)

    def highlighted_sweep(self) -> sweep_ctl.SweepState | None:
        key = self.query_one("#runs", FittedTable).cursor_key()
        return next((s for s in self.sweeps if str(s.path) == key), None)

    def open_sweep(self) -> bool:
        """Enter on a sweep: its trials. False when the row is no sweep."""
        sweep = self.highlighted_sweep()
        if sweep is not None:
            self.post_message(OpenSweep(sweep.path))
        return sweep is not None

    def refused_on_sweep(self, key: str) -> bool:
        """r, x or space on a sweep's row: say what to do instead (True), else False."""
        sweep = self.highlighted_sweep()
        if sweep is None:
            return False
        label = sweep_label(sweep.path)
        said = {
            "r": f"{label} is a sweep: enter shows its trials, and r there resumes it when "
            f"interrupted (as mpt sweep --resume {sweep.path})",
            "x": f"{label} is a sweep: x removes single runs; remove its folder "
            f"{sweep.path} yourself once it has ended",
            "space": f"{label} is a sweep: enter shows its trials, mark them there",
        }[key]
        self.notify(said, timeout=8, markup=False)
        return True
