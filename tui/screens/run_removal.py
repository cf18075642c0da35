"""`x` in the runs list: remove a run after asking (never a live one), as `mpt rm` does.

A mixin of the home screen: it uses the screen's highlighted run, its listing and its
set of runs being removed.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from textual import work

from engine.ctl import Removal, plan_removal, remove
from engine.errors import MptError
from engine.memory import format_bytes
from engine.runs import RunSummary
from tui.widgets.fitted_table import FittedTable


def run_label(r: RunSummary) -> str:
    """`quick/20261202-021835`: the run as the list names it."""
    return f"{r.name}/{r.stamp}"


def why_not_removable(run: RunSummary, here: Path | None, removing: set[Path]) -> str | None:
    """The sentence that refuses to remove `run`: it is live (`here`: the directory of the
    run this console trains) or already going; None when it may go."""
    label = run_label(run)
    if here is not None and run.run_dir.resolve() == here:
        return (
            f"{label} is training in this console: stop it first (d opens its "
            "dashboard, s stops it), then remove it"
        )
    if run.live:
        process = f" ({run.process})" if run.process else ""
        return (
            f"{label} is {run.state}{process}: stop it first (enter opens its "
            f"dashboard, s stops it; or mpt ctl {run.run_dir} stop), then remove it"
        )
    if run.run_dir in removing:
        return f"{label} is being removed"
    return None


class RunRemoval:
    """`action_remove_run` for a screen with `highlighted_run`, `_here`, `_removing`,
    `runs_dir`, `action_refresh`, `_refresh_runs` and `_redraw_runs` (the home screen)."""

    def action_remove_run(self) -> None:
        from tui.screens.confirm import ConfirmScreen

        run = self.highlighted_run()
        if run is None:
            self.refused_on_sweep("x")
            return
        refusal = why_not_removable(run, self._here(), self._removing)
        if refusal is not None:
            self.notify(refusal, severity="warning", timeout=10, markup=False)
            return
        try:  # the engine's own check (mpt rm's), and the size
            [removal] = plan_removal([run.run_dir], None, self.runs_dir)
        except MptError as e:  # started since the list was read, or no run any more
            self.notify(str(e), severity="error", timeout=10, markup=False)
            self.action_refresh()
            return
        question = (
            f"Remove the run {run_label(run)}?\n{run.run_dir}/ "  # (the question is no markup)
            f"goes for good: {format_bytes(removal.size)} of events and checkpoints."
        )
        self.app.push_screen(ConfirmScreen(question), partial(self._answered, run, removal))

    def _answered(self, run: RunSummary, removal: Removal, yes: bool | None) -> None:
        if not yes:
            self.notify("nothing removed")
            return
        try:  # again: it may have been resumed while the question was open
            plan_removal([run.run_dir], None, self.runs_dir)
        except MptError as e:
            self.notify(str(e), severity="error", timeout=10, markup=False)
            self.action_refresh()
            return
        self._removing.add(run.run_dir)
        self._remove(run, removal)
        self._redraw_runs()  # its row says "removing..." at once

    @work(thread=True, group="remove-run")
    def _remove(self, run: RunSummary, removal: Removal) -> None:
        # a big run (gigabytes of checkpoints) takes a while to unlink: not on the UI's loop
        error = None
        try:
            remove(removal)
        except OSError as e:
            where = f" ({e.filename})" if e.filename and str(e.filename) != str(run.run_dir) else ""
            error = f"{e.strerror or e}{where}"
        self.app.call_from_thread(self._removed, run, removal, error)

    def _removed(self, run: RunSummary, removal: Removal, error: str | None) -> None:
        self._removing.discard(run.run_dir)
        table = self.query_one("#runs", FittedTable)
        key = str(run.run_dir)
        neighbour = None
        if table.cursor_key() == key:  # the cursor waits on it: move it to the next row
            index = table.get_row_index(key)
            neighbour = table.key_at(index + 1) or table.key_at(index - 1)
        if error is not None:
            self.notify(
                f"could not remove {run.run_dir}: {error}; some of its files may be gone",
                severity="error",
                timeout=10,
                markup=False,
            )
        else:
            self.notify(f"removed {run.run_dir} ({format_bytes(removal.size)})", markup=False)
        self._refresh_runs()
        if error is None:
            table.move_to(neighbour)
