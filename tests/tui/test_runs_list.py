"""The home screen's runs list: `x` removes a run after asking (never a live one), and at
80x24 each table earns its rows and its columns fit the width."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from test_tui_attach import start_headless
from textual.widgets import DataTable
from tui_helpers import event_line, press, run_async, wait_for, write_run

from tui.app import MptApp
from tui.screens.confirm import ConfirmScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.home import HomeScreen

REPO = Path(__file__).resolve().parents[2]


def ended_run(stamp: str, name: str = "quick") -> Path:
    lines = [
        event_line("run_started", name=name, epochs=3),
        event_line("epoch_end", epoch=3, val_acc=0.9),
        event_line("run_finished", epoch=3, reason="completed"),
    ]
    return write_run(Path("runs"), name, stamp, lines, ["last.pt"])


def run_names(home: HomeScreen) -> list[str]:
    table = home.query_one("#runs", DataTable)
    return [table.get_row_at(i)[0] for i in range(table.row_count)]


def cursor_run(home: HomeScreen) -> str:
    table = home.query_one("#runs", DataTable)
    return table.get_row_at(table.cursor_row)[0]


def toasts(app: MptApp) -> str:
    """The notifications shown now, as one text."""
    return " | ".join(str(t.render()) for t in app.screen.query("Toast"))


async def highlight_run(pilot, index: int) -> HomeScreen:
    home = pilot.app.screen
    assert isinstance(home, HomeScreen)
    runs = home.query_one("#runs", DataTable)
    runs.focus()
    runs.move_cursor(row=index)
    await pilot.pause()
    return home


def footer_keys(screen) -> set[str]:
    return {b.binding.key for b in screen.active_bindings.values() if b.binding.show}


@run_async
async def test_x_then_yes_removes_the_run_and_the_cursor_moves_to_the_next_row(workdir: Path):
    for stamp in ("20260101-000000", "20260102-000000", "20260103-000000"):
        ended_run(stamp)
    doomed = Path("runs/quick/20260102-000000")
    app = MptApp("profiles", "runs")
    async with app.run_test(notifications=True) as pilot:
        await pilot.pause()
        assert "x" not in footer_keys(app.screen)  # the profiles table is focused
        home = await highlight_run(pilot, 1)
        assert "x" in footer_keys(home)
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        question = str(app.screen.query_one("#question").render())
        assert question.startswith("Remove the run quick/20260102-000000?")
        assert f"{doomed}/ goes for good: " in question and " bytes of events" in question
        assert doomed.is_dir()  # nothing goes before the yes
        await pilot.press("y")
        await wait_for(pilot, lambda: not doomed.exists())
        await wait_for(pilot, lambda: len(run_names(home)) == 2)
        assert run_names(home) == ["quick/20260103-000000", "quick/20260101-000000"]
        assert cursor_run(home) == "quick/20260101-000000"  # its neighbour, not the top
        assert f"removed {doomed} (" in toasts(app)
    assert Path("runs/quick").is_dir()  # the name's folder stays, as with mpt rm


@run_async
async def test_x_then_no_keeps_the_run(workdir: Path):
    kept = ended_run("20260101-000000")
    app = MptApp("profiles", "runs")
    async with app.run_test(notifications=True) as pilot:
        await pilot.pause()
        home = await highlight_run(pilot, 0)
        await pilot.press("x")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await wait_for(pilot, lambda: app.screen is home)
        await pilot.pause(0.3)
        assert (kept / "events.jsonl").is_file() and (kept / "checkpoints/last.pt").is_file()
        assert run_names(home) == ["quick/20260101-000000"]
        assert "nothing removed" in toasts(app)


@run_async
async def test_x_refuses_the_run_this_console_trains(workdir: Path):
    app = MptApp("profiles", "runs")
    async with app.run_test(notifications=True) as pilot:
        await pilot.pause()
        await pilot.press("r")  # profiles/long.toml, the first: thousands of steps
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await wait_for(pilot, lambda: app.session.run_dir is not None, timeout=60)
        run_dir = app.session.run_dir
        await press(pilot, "escape")
        await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen))
        home = app.screen
        await wait_for(pilot, lambda: run_names(home) != [])
        await highlight_run(pilot, 0)
        await press(pilot, "x")
        await pilot.pause(0.3)
        assert isinstance(app.screen, HomeScreen), "a live run must not even be asked about"
        assert run_dir.is_dir() and not app.session.ended
        assert f"long/{run_dir.name} is training in this console: stop it first" in toasts(app)


@run_async
async def test_x_refuses_a_run_that_mpt_run_trains_elsewhere(workdir: Path):
    proc, run_dir = start_headless(workdir)
    try:
        app = MptApp("profiles", "runs")
        async with app.run_test(notifications=True) as pilot:
            await pilot.pause()
            home = await highlight_run(pilot, 0)
            assert run_names(home) == [f"long/{run_dir.name}"]
            await pilot.press("x")
            await pilot.pause(0.3)
            assert isinstance(app.screen, HomeScreen)
            said = toasts(app)
            assert f"long/{run_dir.name} is running (pid {proc.pid} on " in said
            assert f"mpt ctl {run_dir.relative_to(workdir)} stop), then remove it" in said
        assert run_dir.is_dir() and proc.poll() is None  # untouched, still training
    finally:
        proc.terminate()  # SIGTERM: it stops with a checkpoint
        proc.wait(timeout=60)


@run_async
async def test_a_removal_that_fails_says_why_and_keeps_the_row(workdir: Path):
    run_dir = ended_run("20260101-000000")
    stuck = run_dir  # nothing in an immutable folder can be unlinked, even by root (as tests run)
    if not shutil.which("chattr") or subprocess.run(["chattr", "+i", str(stuck)]).returncode:
        pytest.skip("chattr +i is not available here: no removal can be made to fail")
    try:
        app = MptApp("profiles", "runs")
        async with app.run_test(notifications=True) as pilot:
            await pilot.pause()
            home = await highlight_run(pilot, 0)
            await pilot.press("x")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await pilot.press("y")
            await wait_for(pilot, lambda: "could not remove" in toasts(app))
            said = toasts(app)
            assert f"could not remove {run_dir}: Operation not permitted (" in said
            assert run_names(home) == ["quick/20260101-000000"]  # still there, still listed
        assert (run_dir / "events.jsonl").is_file()
    finally:
        subprocess.run(["chattr", "-i", str(stuck)], check=False)


# ---- 80x24: each table earns its rows, the columns fit ----


@pytest.fixture
def repo_profiles(workdir: Path) -> Path:
    """The repository's nine profiles in the working folder's profiles/."""
    shutil.rmtree("profiles")
    shutil.copytree(REPO / "profiles", "profiles")
    return workdir


def tables(app: MptApp) -> tuple[DataTable, DataTable]:
    return app.screen.query_one("#profiles", DataTable), app.screen.query_one("#runs", DataTable)


@pytest.mark.parametrize("count", [0, 3, 30])
@run_async
async def test_at_80x24_every_profile_shows_and_the_runs_take_the_rest(
    repo_profiles: Path, count: int
):
    for i in range(count):
        ended_run(f"2026010{i // 10}-0000{i % 10:02d}", name="diabetes-regression")
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        profiles, runs = tables(app)
        assert profiles.row_count == 9 and profiles.size.height == 10  # header + 9: all
        assert runs.size.height == 24 - 3 - 10  # two titles and the footer take three
        assert runs.row_count == count
        for table in (profiles, runs):  # every column shows: nothing to scroll sideways
            assert table.virtual_size.width <= table.size.width
        model = [profiles.get_row_at(i)[3] for i in range(9)]
        # torchvision:resnet18 is cut where it says least: its start
        assert model[-1].startswith("…") and model[-1].endswith(":resnet18"), model
        assert "mlp" in model and "resnet18" in model
        if count:  # the newest, its name cut in the middle: the stamp stays whole
            newest = f"2026010{(count - 1) // 10}-0000{(count - 1) % 10:02d}"
            first = runs.get_row_at(0)[0]
            assert first.startswith("diabetes-r") and first.endswith(f"…/{newest}"), first


@run_async
async def test_the_tables_share_the_height_when_both_cannot_have_their_rows(repo_profiles: Path):
    for i in range(30):
        ended_run(f"20260101-0000{i:02d}")
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(80, 16)) as pilot:
        await pilot.pause()
        profiles, runs = tables(app)
        assert (profiles.size.height, runs.size.height) == (6, 7)  # half each, near enough
        await pilot.resize_terminal(120, 40)
        await pilot.pause()
        assert (profiles.size.height, runs.size.height) == (10, 27)  # all profiles again
        await pilot.resize_terminal(80, 10)
        await pilot.pause()
        assert (profiles.size.height, runs.size.height) == (4, 3)


@run_async
async def test_few_profiles_leave_their_rows_to_the_runs(workdir: Path):
    for i in range(30):
        ended_run(f"20260101-0000{i:02d}")
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        profiles, runs = tables(app)
        assert (profiles.size.height, runs.size.height) == (4, 17)  # 3 profiles + header
        assert [r[0] for r in map(profiles.get_row_at, range(3))] == ["long", "quick", "quickstart"]


@run_async
async def test_long_names_with_markup_or_wide_characters_are_cut_by_terminal_cells(workdir: Path):
    from rich.cells import cell_len

    for name in ("[bold]oops-" + "x" * 40, "名前" * 15):  # markup; two cells a character
        lines = [event_line("run_started", name=name, epochs=1)]
        write_run(Path("runs"), name, "20260101-000000", [*lines, event_line("run_failed")])
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        _, runs = tables(app)
        cells = sorted(runs.get_row_at(i)[0] for i in range(2))
        assert cells[0].startswith("\\[bold]oops-xxx") and cells[0].endswith("…/20260101-000000")
        assert cells[1].startswith("名前") and cells[1].endswith("…/20260101-000000")
        width = runs.ordered_columns[0].width
        assert cell_len(cells[0].replace("\\[", "[")) <= width and cell_len(cells[1]) <= width
        assert runs.virtual_size.width <= runs.size.width


def test_a_name_cut_in_the_middle_keeps_ten_characters_before_its_stamp_keeps_its_date():
    from tui.widgets.fitted_table import cut

    # two sweeps of one profile, quickstart-lr and quickstart-optuna, stay apart at 80x24
    assert cut("quickstart-optuna/20261202-081748", 24, "middle") == "quickstart-optu…/…081748"
    assert cut("quickstart-lr/20261202-081811", 24, "middle") == "quickstart-lr/…081811"
    assert cut("quickstart-optuna/20261202-081748", 30, "middle") == (
        "quickstart-op…/20261202-081748"
    )
    assert cut("lr/20261202-081748", 24, "middle") == "lr/20261202-081748"


@run_async
async def test_the_home_screen_answers_while_a_long_history_is_listed(workdir: Path):
    # a run whose events.jsonl is ~40 MB (200,000 step events) takes a second or more to
    # list: the profiles are drawn before it ends; the run's row comes when it has
    step = event_line("step", step=1, loss=0.5, lr=0.01, samples_per_s=1000.0, epoch_progress=0.5)
    lines = [event_line("run_started", name="long", epochs=3), *[step] * 200_000]
    write_run(Path("runs"), "long", "20260101-000000", [*lines, event_line("run_finished")])
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        home = app.screen
        profiles = home.query_one("#profiles", DataTable)
        assert profiles.row_count == 3 and run_names(home) == []  # drawn; runs still coming
        await pilot.press("down")  # keys work (the listing may have ended by now)
        assert profiles.cursor_row == 1
        await wait_for(pilot, lambda: run_names(home) == ["long/20260101-000000"], timeout=120)
