"""Compare in the console (issue 17): space marks runs in the runs list, v overlays their
curves and lists them as `mpt compare` does; m goes to the next metric."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from tui_helpers import event_line, press, run_async, wait_for, write_run

from tui.app import MptApp
from tui.screens.compare import CompareScreen
from tui.screens.home import HomeScreen
from tui.widgets.curves import CurvesPlot

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC


def recorded(stamp: str, lr: float, rate: float) -> Path:
    """A finished 6-epoch digits run whose val_acc climbs at `rate`, trained with `lr`."""
    lines = [event_line("run_started", time=T0, name="quickstart", epochs=6, total_steps=270)]
    for epoch in range(1, 7):
        acc = 0.98 - 0.5 * math.exp(-epoch * rate)
        lines.append(
            event_line(
                "epoch_end",
                step=45 * epoch,
                epoch=epoch,
                epochs=6,
                time=T0 + epoch,
                train_loss=1.0 / epoch,
                val_loss=1.2 / epoch,
                val_acc=acc,
                train_acc=acc + 0.01,
                lr=lr,
                seconds=1.0,
            )
        )
    lines.append(event_line("run_finished", step=270, epoch=6, time=T0 + 7, reason="completed"))
    run_dir = write_run(Path("runs"), "quickstart", stamp, lines)
    (run_dir / "profile.toml").write_text(f'[run]\nname = "quickstart"\n[optim]\nlr = {lr}\n')
    return run_dir


@pytest.fixture
def three_runs(workdir: Path) -> list[Path]:
    return [
        recorded("20260101-000000", 0.001, 0.3),
        recorded("20260102-000000", 0.01, 0.9),
        recorded("20260103-000000", 0.1, 0.6),
    ]


async def mark_and_compare(pilot, marks: int) -> None:
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen))
    await press(pilot, "tab")  # to the runs list
    for _ in range(marks):
        await press(pilot, "space")
    await pilot.pause()
    await press(pilot, "v")


@run_async
async def test_space_marks_runs_and_v_overlays_them_best_first(three_runs):
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(100, 30)) as pilot:
        await mark_and_compare(pilot, 3)
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        screen = app.screen
        await wait_for(pilot, lambda: screen.runs)
        plot = screen.query_one("#curves", CurvesPlot)
        assert screen.metric == "val_acc" and len(plot.curves) == 3
        table = str(screen.query_one("#table").render())
        rows = [line for line in table.splitlines() if "quickstart/" in line]
        # best first: the run that climbed fastest (lr 0.01), then 0.1, then 0.001
        assert [r.split()[0] for r in rows] == ["1━", "2━", "3━"]
        assert [r.split()[-1] for r in rows] == ["0.01", "0.1", "0.001"]
        assert "3 runs by best val_acc (higher is better)" in str(
            screen.query_one("#title").render()
        )
        await press(pilot, "m")  # the next metric every run has
        await wait_for(pilot, lambda: screen.metric != "val_acc")
        assert plot.title == screen.metric
        await press(pilot, "escape")
        await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen))
        marked = [app.screen.query_one("#runs").get_row_at(i)[0] for i in range(3)]
        assert all(cell.startswith("● ") for cell in marked)  # still marked


@run_async
async def test_v_with_fewer_than_two_marked_says_how(three_runs):
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(100, 30)) as pilot:
        await mark_and_compare(pilot, 1)

        def said() -> list[str]:  # (as tests/tui/test_tui_trust_ending.py reads them)
            return [n.message for n in app._notifications]

        await wait_for(pilot, lambda: any("mark 2 to 8 runs with space" in m for m in said()))
        assert isinstance(app.screen, HomeScreen)
        assert "1 runs marked: mark 2 to 8 runs with space, then v" in said()


def test_compare_screen_at_80x24(snap_compare, three_runs):
    async def compare(pilot) -> None:
        await mark_and_compare(pilot, 3)
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, CompareScreen))
        await wait_for(pilot, lambda: pilot.app.screen.runs)
        await pilot.pause()

    assert snap_compare(MptApp("profiles", "runs"), terminal_size=(80, 24), run_before=compare)
