"""The TUI's resume picker with a malformed checkpoint among good ones, and with a run
whose profile names model code to import (issue 13, groups 7 and 14)."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import torch
from conftest import REPO
from textual.widgets import DataTable
from tui_helpers import press, run_async, wait_for

from engine.profile import load_profile
from tui.app import MptApp
from tui.screens.confirm import ConfirmScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.resume import ResumeScreen

MPT = str(Path(sys.executable).with_name("mpt"))


def _status(screen) -> str:
    return str(screen.query_one("#status").render())


@run_async
async def test_one_bad_checkpoint_is_shown_unusable_and_hides_none_of_the_good_ones(
    workdir: Path,
):
    from engine.run import Run

    overrides = ["checkpoint.every_steps=1", "checkpoint.keep_last=0", "run.max_steps=3"]
    run = Run.start(load_profile("profiles/quick.toml", overrides))
    assert run.join(240) == "completed"
    folder = run.run_dir / "checkpoints"
    state = torch.load(folder / "last.pt", weights_only=True)
    bad = copy.deepcopy(state)
    bad["metrics"] = [1, 2]  # a list where the table of metrics belongs
    torch.save(bad, folder / "step-000009.pt")
    app = MptApp("profiles", "runs", resume=run.run_dir)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ResumeScreen))
        screen = app.screen
        await wait_for(pilot, lambda: screen.checkpoints)
        table = screen.query_one("#checkpoints", DataTable)
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        names = [r[0] for r in rows]
        assert {"step-000001.pt", "step-000002.pt", "step-000003.pt", "last.pt"} <= set(names)
        assert names[-1] == "step-000009.pt" and rows[-1][1] == "unusable"
        assert [r[2] for r in rows[:-1]][0] == "3"  # the newest good one first
        table.move_cursor(row=len(rows) - 1)
        await pilot.pause(0.1)
        expected = "not a usable mpt checkpoint: metrics must be a table"
        await wait_for(pilot, lambda: expected in _status(screen))
        await press(pilot, "ctrl+r")
        await pilot.pause(0.2)
        assert app.screen is screen and app.session is None  # nothing started


def _evil_run(workdir: Path) -> Path:
    """A real run (by `mpt`, in its own process) whose profile names evilmod:f."""
    (workdir / "evilmod.py").write_text(
        "from pathlib import Path\n"
        "Path(__file__).with_name('MARKER').write_text('imported')\n"
        "import torch\n"
        "def f(in_shape, num_classes):\n"
        "    c, h, w = in_shape\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c * h * w, "
        "num_classes))\n"
    )
    profile = workdir / "profiles" / "evil.toml"
    profile.write_text(
        (workdir / "profiles" / "quick.toml").read_text().replace('name = "quick"', 'name = "evil"')
        + '\n[model]\narch = "evilmod:f"\n'
    )
    env = {"PYTHONPATH": str(REPO)}
    r = subprocess.run(
        [MPT, "run", str(profile), "--set", "run.max_steps=2", "--set", "checkpoint.every_steps=1"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=240,
        env={**__import__("os").environ, **env},
    )
    assert r.returncode == 0, r.stderr
    (workdir / "MARKER").unlink()
    return next((workdir / "runs" / "evil").iterdir())


@run_async
async def test_resuming_a_run_whose_profile_imports_code_asks_first(workdir: Path):
    run_dir = _evil_run(workdir)
    marker = workdir / "MARKER"
    app = MptApp("profiles", "runs", resume=run_dir)
    try:
        async with app.run_test(size=(120, 30)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, ResumeScreen))
            screen = app.screen
            await wait_for(pilot, lambda: screen.checkpoints)
            screen.row("run.max_steps").control.value = "3"
            await pilot.pause(0.1)
            await press(pilot, "ctrl+r")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            assert "'evilmod:f'" in app.screen.question
            await press(pilot, "n")
            await wait_for(pilot, lambda: app.screen is screen)
            assert "not resumed" in _status(screen)
            assert app.session is None and not marker.exists()
            await press(pilot, "ctrl+r")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await press(pilot, "y")
            await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), timeout=60)
            await wait_for(pilot, lambda: app.session.ended, timeout=120)
            assert app.session.view.state == "finished"
            assert marker.exists()  # consented: the model code was imported, and it trained
    finally:
        sys.modules.pop("evilmod", None)
