"""The console's resume of a run with nothing left to do: the engine's one sentence on
screen, and no new run directory (issue 13, group 6)."""

from __future__ import annotations

from pathlib import Path

from tui_helpers import press, run_async, wait_for

from engine.profile import load_profile
from engine.run import Run
from tui.app import MptApp
from tui.screens.resume import ResumeScreen


def finished_run(workdir: Path) -> Path:
    """profiles/quick.toml for one epoch, run to its end: its final checkpoint is last.pt."""
    run = Run.start(load_profile(workdir / "profiles" / "quick.toml", ["run.epochs=1"]))
    assert run.join(timeout=240) == "completed", run.error
    return run.run_dir


@run_async
async def test_resuming_a_finished_run_shows_what_to_raise_and_starts_nothing(workdir: Path):
    run_dir = finished_run(workdir)
    app = MptApp("profiles", "runs", resume=run_dir)
    async with app.run_test(size=(100, 30)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ResumeScreen))
        resume = app.screen
        await wait_for(pilot, lambda: resume.checkpoints)
        await press(pilot, "ctrl+r")
        said = f"cannot resume: {run_dir / 'checkpoints'}/"

        def refusal():
            return next((n.message for n in app._notifications if n.message.startswith(said)), "")

        await wait_for(pilot, refusal, timeout=60)
        assert refusal().endswith(
            ": the run already finished its 1 epoch (step 45); to train further raise "
            "run.epochs (e.g. to 2)"
        )
        assert app.session is None  # no run started
    assert sorted(p.name for p in (workdir / "runs" / "quick").iterdir()) == [run_dir.name]
