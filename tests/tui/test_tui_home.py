"""The first screen and the command line: profiles and runs listed, what each key opens."""

from __future__ import annotations

from pathlib import Path

import pytest
from textual.widgets import DataTable
from tui_helpers import event_line, run_async, wait_for, write_run
from typer.testing import CliRunner

from tui.app import MptApp, _cli
from tui.screens.dashboard import DashboardScreen
from tui.screens.home import HomeScreen
from tui.screens.profile_form import ProfileFormScreen


def rows(table: DataTable) -> list[list]:
    return [table.get_row_at(i) for i in range(table.row_count)]


@run_async
async def test_profiles_and_runs_are_listed_with_their_state(workdir: Path):
    Path("profiles/bad.toml").write_text("[run]\nepochs = 0\nseed = -1\n")
    write_run(
        Path("runs"),
        "quick",
        "20260101-000000",
        [
            event_line("run_started", name="quick", epochs=3),
            event_line("epoch_end", epoch=1, val_acc=0.91),
            event_line("run_finished", epoch=3, reason="completed"),
        ],
        ["last.pt"],
    )
    write_run(Path("runs"), "quick", "20260102-000000", [event_line("run_failed", error="x")])
    app = MptApp("profiles", "runs")
    async with app.run_test() as pilot:
        await pilot.pause()
        home = app.screen
        assert isinstance(home, HomeScreen)
        profiles = rows(home.query_one("#profiles", DataTable))
        assert [r[0] for r in profiles] == ["bad", "long", "quick", "quickstart"]
        assert profiles[0][5] == "2 problems" and profiles[2][5] == "ok"
        assert profiles[2][1:5] == ["quick", "digits", "mlp", "3"]
        runs = rows(home.query_one("#runs", DataTable))
        assert runs == [
            ["quick/20260102-000000", "failed", "1", "-", "-"],
            ["quick/20260101-000000", "finished", "3/3", "91.00%", "last.pt"],
        ]


@run_async
async def test_enter_opens_the_highlighted_profile_in_the_form(workdir: Path):
    app = MptApp("profiles", "runs")
    async with app.run_test() as pilot:
        await pilot.pause()
        await pilot.press("down", "down", "enter")  # long, quick, quickstart
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        assert app.screen.path == Path("profiles/quickstart.toml")
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen))


@run_async
async def test_r_runs_the_highlighted_profile_and_a_bad_one_is_refused(workdir: Path):
    Path("profiles/aaa.toml").write_text("[run]\nepochs = 0\n")
    app = MptApp("profiles", "runs")
    async with app.run_test() as pilot:
        await pilot.pause()
        await pilot.press("r")  # aaa.toml: refused, with the engine's reason
        await pilot.pause()
        assert isinstance(app.screen, HomeScreen) and app.session is None
        await pilot.press("down", "down", "r")  # quick.toml
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await wait_for(pilot, lambda: app.session.ended)
        assert app.session.view.name == "quick"


@run_async
async def test_an_empty_profiles_folder_says_how_to_start(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    app = MptApp("profiles", "runs")
    async with app.run_test() as pilot:
        await pilot.pause()
        assert "press n to make one" in str(app.screen.query_one("#hint").render())


@pytest.fixture
def launched(monkeypatch):
    """Run the command line without starting the terminal UI; returns the app it made."""
    made: list[MptApp] = []
    monkeypatch.setattr(MptApp, "run", lambda self: made.append(self))
    return made


def invoke(*args: str):
    import typer

    app = typer.Typer()
    app.command()(_cli)
    return CliRunner().invoke(app, list(args))


def test_cli_defaults_to_the_profiles_and_runs_folders(workdir: Path, launched):
    assert invoke().exit_code == 0
    [app] = launched
    assert (app.profiles_dir, app.runs_dir) == (Path("profiles"), Path("runs"))


def test_cli_takes_a_profiles_folder_or_a_profile_and_a_runs_folder(workdir: Path, launched):
    assert invoke("profiles/quick.toml", "--runs", "elsewhere").exit_code == 0
    assert invoke("profiles").exit_code == 0
    first, second = launched
    assert first._open_profile == Path("profiles/quick.toml")
    assert first.runs_dir == Path("elsewhere")
    assert second.profiles_dir == Path("profiles") and second._open_profile is None


def test_cli_run_loads_the_profile_with_its_overrides(workdir: Path, launched):
    result = invoke(
        "--run", "profiles/quick.toml", "--set", "run.epochs=2", "--set", "optim.lr=0.1"
    )
    assert result.exit_code == 0, result.output
    [app] = launched
    assert (app._run_profile.run.epochs, app._run_profile.optim.lr) == (2, 0.1)


def test_cli_refuses_a_bad_profile_before_starting(workdir: Path, launched):
    result = invoke("--run", "profiles/quick.toml", "--set", "run.epochs=0")
    assert result.exit_code == 2
    assert "run.epochs: must be >= 1 (got 0)" in result.output
    assert invoke("--set", "run.epochs=2").exit_code == 2
    assert launched == []


@run_async
async def test_r_on_a_live_run_opens_its_dashboard_never_a_second_copy(workdir: Path):
    # a run another process trains (mpt run in tmux, a detached console): this test's own
    # process stands in for it, alive on this host
    import os
    import socket

    from tui.screens.resume import ResumeScreen

    started = event_line(
        "run_started", name="quick", epochs=3, pid=os.getpid(), host=socket.gethostname()
    )
    write_run(Path("runs"), "quick", "20260103-000000", [started], ["last.pt"])
    app = MptApp("profiles", "runs")
    async with app.run_test() as pilot:
        await pilot.pause()
        runs = app.screen.query_one("#runs", DataTable)
        assert rows(runs)[0][1] == "running"
        runs.focus()
        await pilot.press("r")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        assert not any(isinstance(s, ResumeScreen) for s in app.screen_stack)


@run_async
async def test_a_run_started_elsewhere_appears_without_g(workdir: Path):
    app = MptApp("profiles", "runs")
    async with app.run_test() as pilot:
        await pilot.pause()
        runs = app.screen.query_one("#runs", DataTable)
        before = runs.row_count
        lines = [event_line("run_started", name="quick", epochs=3)]
        lines.append(event_line("run_finished", epoch=3, reason="completed"))
        write_run(Path("runs"), "quick", "20260104-000000", lines)  # mpt run in another pane
        await wait_for(pilot, lambda: runs.row_count == before + 1, timeout=10)
