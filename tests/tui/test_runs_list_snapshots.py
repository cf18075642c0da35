"""The look of the home screen with long names and many runs, and of x's question, at
80x24 and 120x40 (pytest-textual-snapshot; see test_tui_snapshots.py for updating)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from tui_helpers import event_line, write_run

from tui.app import MptApp

SIZES = [(80, 24), (120, 40)]
REPO = Path(__file__).resolve().parents[2]
NAMES = ("diabetes-regression", "digits-multilabel", "quickstart")


@pytest.fixture
def many_runs(workdir: Path) -> Path:
    """profiles/ with two of the repository's long-named profiles, and 30 ended runs."""
    for name in ("digits-multilabel", "resnet18-finetune"):
        shutil.copy(REPO / "profiles" / f"{name}.toml", "profiles")
    for i in range(30):
        name = NAMES[i % 3]
        lines = [
            event_line("run_started", name=name, epochs=20),
            event_line("epoch_end", epoch=20, val_acc=0.9 + i / 1000),
            event_line("run_finished", epoch=20, reason=("completed", "early_stopped")[i % 2]),
        ]
        write_run(
            Path("runs"), name, f"202601{1 + i // 10:02d}-0000{i % 10:02d}", lines, ["last.pt"]
        )
    return workdir


async def focus_the_third_run(pilot) -> None:
    await pilot.press("tab", "down", "down")


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_runs_list(snap_compare, many_runs, size):
    assert snap_compare(
        MptApp("profiles", "runs"), terminal_size=size, run_before=focus_the_third_run
    )


def test_remove_question(snap_compare, many_runs):
    async def ask(pilot):
        await focus_the_third_run(pilot)
        await pilot.press("x")
        await pilot.pause()

    assert snap_compare(MptApp("profiles", "runs"), terminal_size=(80, 24), run_before=ask)
