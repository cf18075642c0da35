"""The look of each screen at 80x24 and 120x40 (pytest-textual-snapshot).

Everything shown is fixed: profiles written here, runs made of recorded events with
fixed times and relative paths, no clock. Update after a deliberate change with
`pytest tests/tui/test_tui_snapshots.py --snapshot-update`, and look at the SVGs.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest
from tui_helpers import event_line, write_run

from tui.app import MptApp

SIZES = [(80, 24), (120, 40)]
T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC


def recorded_run(epochs_done: int, *, epochs: int = 15, end: list[str] = ()) -> list[str]:
    """Events of a digits run that went `epochs_done` epochs (and 40% of the next)."""
    run_dir = "runs/quickstart/20260101-000000"
    lines = [
        event_line(
            "run_started",
            time=T0,
            run_dir=run_dir,
            name="quickstart",
            device="cpu",
            precision="fp32",
            dataset="digits",
            arch="mlp",
            parameters=9610,
            epochs=epochs,
            steps_per_epoch=45,
            total_steps=45 * epochs,
            batch_size=32,
        )
    ]
    t = T0
    best = None
    for epoch in range(1, min(epochs_done + 1, epochs) + 1):
        last = epoch == epochs_done + 1  # the epoch in progress
        for step_in in range(5, 46 if not last else 19, 5):
            step = 45 * (epoch - 1) + step_in
            t += 0.5
            loss = 2.2 * math.exp(-step / 60) + 0.05 + 0.03 * math.sin(step)
            lines.append(
                event_line(
                    "step",
                    step=step,
                    epoch=epoch,
                    time=t,
                    loss=loss,
                    lr=1e-3,
                    samples_per_s=3200.0,
                    epoch_progress=step_in / 45,
                )
            )
        if last:
            break
        val_acc = 0.98 - 0.5 * math.exp(-epoch / 1.5)
        val_loss = 1.8 * math.exp(-epoch / 1.6) + 0.08
        lines.append(
            event_line(
                "epoch_end",
                step=45 * epoch,
                epoch=epoch,
                epochs=epochs,
                time=t,
                train_loss=val_loss * 0.9,
                train_acc=min(1.0, val_acc + 0.01),
                val_loss=val_loss,
                val_acc=val_acc,
                lr=1e-3,
                seconds=4.5,
            )
        )
        improved = best is None or val_loss < best
        best = val_loss if improved else best
        lines.append(
            event_line(
                "early_stop",
                step=45 * epoch,
                epoch=epoch,
                time=t,
                monitor="val_loss",
                value=val_loss,
                best=best,
                wait=0 if improved else 1,
                patience=5,
            )
        )
        lines.append(
            event_line(
                "checkpoint_saved",
                step=45 * epoch,
                epoch=epoch,
                time=t,
                path=f"{run_dir}/checkpoints/step-{45 * epoch:06d}.pt",
                reason="epoch",
            )
        )
    return lines + list(end)


@pytest.fixture
def snapshot_dir(workdir: Path) -> Path:
    """profiles/ plus a runs/ folder with four recorded runs in different states."""
    Path("profiles/broken.toml").write_text('[run]\nname = "broken"\nepochs = 0\n')
    runs = workdir / "runs"
    write_run(runs, "quickstart", "20260101-000000", recorded_run(8))
    write_run(
        runs,
        "quickstart",
        "20251231-120000",
        recorded_run(15, end=[event_line("run_finished", step=675, epoch=15, reason="completed")]),
    )
    write_run(
        runs,
        "long",
        "20251230-090000",
        recorded_run(3, epochs=200)
        + [event_line("run_finished", step=137, epoch=4, reason="stopped")],
        ["step-000135.pt", "last.pt"],
    )
    write_run(
        runs,
        "broken",
        "20251229-080000",
        [
            event_line(
                "run_failed",
                error="data.path: no such file; point it at a .npz with x_train/y_train",
            )
        ],
    )
    old = time.time() - 3600  # the mid-run one has not written for an hour: crashed
    os.utime(runs / "quickstart" / "20260101-000000" / "events.jsonl", (old, old))
    return workdir


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_home(snap_compare, snapshot_dir, size):
    assert snap_compare(MptApp("profiles", "runs"), terminal_size=size)


async def steady_cursor(pilot) -> None:
    """A blinking cursor is not a stable picture: keep it on."""
    from textual.widgets import Input

    for widget in pilot.app.screen.query(Input):
        widget.cursor_blink = False
    await pilot.pause()


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_profile_form(snap_compare, snapshot_dir, size):
    app = MptApp("profiles", "runs", open_profile="profiles/quickstart.toml")
    assert snap_compare(app, terminal_size=size, run_before=steady_cursor)


def test_profile_form_with_a_bad_value(snap_compare, snapshot_dir):
    async def type_bad_epochs(pilot):
        await pilot.press("tab", "tab", "ctrl+k", "0")
        await steady_cursor(pilot)

    app = MptApp("profiles", "runs", open_profile="profiles/quickstart.toml")
    assert snap_compare(app, run_before=type_bad_epochs)


@pytest.mark.parametrize("size", SIZES, ids=["80x24", "120x40"])
def test_dashboard_mid_run(snap_compare, snapshot_dir, size):
    async def open_first_run(pilot):
        await pilot.press("tab", "enter")  # the runs list, newest first: the one mid-run

    assert snap_compare(MptApp("profiles", "runs"), terminal_size=size, run_before=open_first_run)


def test_dashboard_of_a_failed_run(snap_compare, snapshot_dir):
    async def open_failed_run(pilot):
        await pilot.press("tab", "down", "down", "down", "enter")

    assert snap_compare(MptApp("profiles", "runs"), run_before=open_failed_run)


def test_stop_confirmation(snap_compare, snapshot_dir):
    from tui.screens.confirm import ConfirmScreen

    async def ask(pilot):
        await pilot.press("tab", "enter")
        pilot.app.push_screen(ConfirmScreen("Stop the run? A checkpoint is saved first."))

    assert snap_compare(MptApp("profiles", "runs"), run_before=ask)


def test_resume_screen(snap_compare, snapshot_dir, monkeypatch):
    from engine.checkpoint import CheckpointInfo

    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    ckpts = "runs/long/20251230-090000/checkpoints"
    loss = {"monitor": "val_loss", "monitor_value": 0.2214}  # best.pt's checkpoint.monitor
    infos = [
        CheckpointInfo(f"{ckpts}/last.pt", 3, 137, 0.9359, T0 + 60, **loss),
        CheckpointInfo(f"{ckpts}/step-000137.pt", 3, 137, 0.9359, T0 + 60, **loss),
        CheckpointInfo(f"{ckpts}/best.pt", 3, 135, 0.9359, T0 + 59, **loss),
        CheckpointInfo(f"{ckpts}/step-000135.pt", 3, 135, 0.9359, T0 + 59, **loss),
    ]
    monkeypatch.setattr("tui.screens.resume.list_run_checkpoints", lambda run_dir: infos)
    app = MptApp("profiles", "runs", resume=Path("runs/long/20251230-090000"))
    Path("runs/long/20251230-090000/profile.toml").write_text(
        Path("profiles/long.toml").read_text()
    )
    try:
        assert snap_compare(app, run_before=steady_cursor)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
