"""Resume: pick a run's checkpoint, adjust the safe keys, continue in the dashboard."""

from __future__ import annotations

import json
from pathlib import Path

from textual.widgets import DataTable
from tui_helpers import press, run_async, wait_for

from engine.events import read_events
from engine.profile import load_profile
from tui.app import MptApp
from tui.screens.confirm import ConfirmScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.home import HomeScreen
from tui.screens.resume import ResumeScreen


async def stopped_long_run(pilot) -> Path:
    """Start long.toml, let it pass an epoch, checkpoint, stop it; return its run dir."""
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen))
    await pilot.pause(0.1)
    await press(pilot, "r")
    await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
    await wait_for(pilot, lambda: len(app.session.view.val_acc) >= 1)
    await press(pilot, "s")
    await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
    await press(pilot, "y")
    await wait_for(pilot, lambda: app.session.ended)
    assert app.session.view.checkpoint_reason == "stop"
    return app.session.run_dir


@run_async
async def test_resume_from_the_run_list_continues_the_curves_in_the_dashboard(workdir: Path):
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(100, 30)) as pilot:
        old_dir = await stopped_long_run(pilot)
        old_view = app.session.view
        stop_step = old_view.step
        await press(pilot, "escape")
        await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen))
        await press(pilot, "tab")  # to the runs list
        runs = app.screen.query_one("#runs", DataTable)
        assert app.screen.focused is runs
        assert runs.get_row_at(0)[1] == "stopped"
        assert runs.get_row_at(0)[4] == f"step-{stop_step:06d}.pt"
        await press(pilot, "r")
        await wait_for(pilot, lambda: isinstance(app.screen, ResumeScreen))
        resume = app.screen
        await wait_for(pilot, lambda: resume.checkpoints)
        table = resume.query_one("#checkpoints", DataTable)
        newest = table.get_row_at(0)
        assert newest[1:3] == [str(old_view.epoch - 1), str(stop_step)]  # epochs done, step
        assert newest[3].endswith("%")  # the val acc at the time
        assert resume.highlighted().step == stop_step
        # adjust a safe key: train just to the end of the next epoch
        epochs = old_view.epoch  # the epoch in progress when it stopped
        resume.row("run.epochs").control.value = str(epochs)
        await pilot.pause(0.1)
        table.focus()
        await press(pilot, "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await wait_for(pilot, lambda: app.session.run_dir != old_dir)
        await wait_for(pilot, lambda: app.session.ended, timeout=60)
        v = app.session.view
        assert v.state == "finished"
        assert v.epochs == epochs
        # the curves continue: the epochs before the checkpoint, then the new ones
        assert v.val_acc.xs == list(range(1, epochs + 1))
        assert v.train_loss.xs[0] < 1.0  # steps of the first epoch, from the history
        assert any(m.startswith("resuming from ") for m in v.messages)
        assert any("warning: resume changes run.epochs" in m for m in v.messages)
    new_dir = app.session.run_dir
    events = read_events(new_dir / "events.jsonl")
    starts = [e for e in events if e.kind == "run_started"]
    assert len(starts) == 2 and starts[1].step == stop_step
    assert load_profile(new_dir / "profile.toml").run.epochs == epochs


@run_async
async def test_resume_lists_every_checkpoint_with_epoch_step_metric_and_time(workdir: Path):
    from engine.run import Run

    run = Run.start(
        load_profile(
            "profiles/quick.toml",
            ["checkpoint.every_epochs=1", "checkpoint.keep_last=0", "checkpoint.save_best=true"],
        )
    )
    assert run.join(60) == "completed"
    app = MptApp("profiles", "runs", resume=run.run_dir)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ResumeScreen))
        screen = app.screen
        await wait_for(pilot, lambda: screen.checkpoints)
        table = screen.query_one("#checkpoints", DataTable)
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        steps = [int(r[2]) for r in rows]
        assert steps == sorted(steps, reverse=True) and steps[-1] == 45
        assert {r[0] for r in rows} >= {"last.pt", "step-000045.pt", "step-000090.pt"}
        # val: the headline (accuracy); best.pt follows checkpoint.monitor (val_loss by
        # default), a column of its own, so best.pt's row says why it is the best
        headers = [str(c.label) for c in table.columns.values()]
        assert headers == ["checkpoint", "epoch", "step", "val", "val_loss", "saved"]
        assert all(r[3].endswith("%") and float(r[4]) > 0 and r[5][:2] == "20" for r in rows)
        best = next(i for i, r in enumerate(rows) if r[0] == "best.pt")
        table.move_cursor(row=best)
        await pilot.pause()
        status = str(screen.query_one("#status").render())
        assert status.startswith(f"best.pt: the best val_loss so far ({rows[best][4]}, step")
        # the safe keys come from the run's profile
        assert screen.row("run.epochs").value == 3
        assert screen.row("optim.lr").value == 0.001
        # a bad value is refused with the engine's message before anything starts
        screen.row("optim.lr").control.value = "-1"
        await pilot.pause()
        await pilot.press("ctrl+r")
        assert app.screen is screen
        assert screen.row("optim.lr").error == "must be > 0 (got -1)"


@run_async
async def test_a_run_without_checkpoints_says_it_cannot_be_resumed(workdir: Path):
    run_dir = Path("runs/x/20260101-000000")
    run_dir.mkdir(parents=True)
    (run_dir / "profile.toml").write_text('[run]\nname = "x"\n')
    (run_dir / "events.jsonl").write_text(json.dumps({"kind": "run_started", "time": 1.0}) + "\n")
    app = MptApp("profiles", "runs", resume=run_dir)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ResumeScreen))
        status = app.screen.query_one("#status")
        await wait_for(pilot, lambda: "no checkpoints" in str(status.render()))
        await pilot.press("enter")
        assert isinstance(app.screen, ResumeScreen)
