"""The console's resume picker asks before it resumes a run whose profile names a
[notify] command: a run folder can come from anyone, and a shell command is code."""

from __future__ import annotations

import shlex
from pathlib import Path

from tui_helpers import press, run_async, wait_for

from engine.profile import load_profile
from tui.app import MptApp
from tui.screens.confirm import ConfirmScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.resume import ResumeScreen


@run_async
async def test_resuming_a_run_whose_profile_names_a_notify_command_asks_first(workdir: Path):
    from engine.run import Run

    told = workdir / "told.jsonl"
    command = f"cat >> {shlex.quote(str(told))}"
    run = Run.start(
        load_profile("profiles/quick.toml", ["run.max_steps=2", f"notify.command={command}"])
    )
    assert run.join(240) == "completed"
    told.unlink()
    app = MptApp("profiles", "runs", resume=run.run_dir)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ResumeScreen))
        screen = app.screen
        await wait_for(pilot, lambda: screen.checkpoints)
        screen.row("run.max_steps").control.value = "3"
        await pilot.pause(0.1)
        await press(pilot, "ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "runs the shell command 'cat >> " in app.screen.question
        await press(pilot, "n")
        await wait_for(pilot, lambda: app.screen is screen)
        assert "not resumed: the run's profile runs a shell command" in str(
            screen.query_one("#status").render()
        )
        assert app.session is None
        await press(pilot, "ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await press(pilot, "y")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), timeout=60)
        await wait_for(pilot, lambda: app.session.ended, timeout=120)
    app.session.join(60)
    assert told.is_file()  # consented: the command ran at the run's end


@run_async
async def test_a_notification_that_fails_is_said_on_the_dashboard(workdir: Path):
    # [notify] runs after run_finished, and says its failure as a warning on the run's
    # queue: the console reads on until the run's thread ends, so the user sees it.
    profile = load_profile(
        "profiles/quick.toml", ["run.max_steps=2", "notify.command=echo boom >&2; exit 3"]
    )
    app = MptApp("profiles", "runs", run_profile=profile)
    async with app.run_test(size=(120, 30)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), timeout=60)
        await wait_for(pilot, lambda: app.session.ended, timeout=120)
        assert not app.session.live
        warned = lambda: any("[notify]" in m for m in app.session.view.messages)  # noqa: E731
        await wait_for(pilot, warned, timeout=30)
        said = next(m for m in app.session.view.messages if "[notify]" in m)
        assert "exited with status 3" in said and "boom" in said
        await wait_for(pilot, lambda: "[notify]" in str(app.screen.query_one("#messages").render()))
