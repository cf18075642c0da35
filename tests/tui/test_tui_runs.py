"""engine.runs: the runs folder summarised for the TUI's list (and `mpt ls`), without torch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tui_helpers import event_line, write_run

from engine.runs import STALE_AFTER_S, list_runs, summarize_run

STARTED = event_line("run_started", name="quick", epochs=3, total_steps=135, run_dir="x")


def epoch(n: int, val_acc: float | None) -> str:
    return event_line("epoch_end", epoch=n, step=45 * n, epochs=3, val_acc=val_acc)


def test_a_completed_run_is_finished_with_its_best_val_acc(tmp_path: Path):
    write_run(
        tmp_path,
        "quick",
        "20260101-000000",
        [
            STARTED,
            event_line("step", step=5, loss=2.0),
            epoch(1, 0.8),
            epoch(2, 0.95),
            epoch(3, 0.9),
            event_line("run_finished", step=135, epoch=3, reason="completed"),
        ],
    )
    [run] = list_runs(tmp_path)
    assert run.state == "finished"
    assert run.best_val_acc == 0.95
    assert run.last_val_acc == 0.9
    assert (run.epoch, run.epochs, run.step, run.total_steps) == (3, 3, 135, 135)
    assert run.name == "quick" and run.stamp == "20260101-000000"


def test_the_state_follows_the_reason_the_run_finished(tmp_path: Path):
    for i, reason in enumerate(["early_stopped", "stopped", "interrupted", "max_time"]):
        write_run(
            tmp_path,
            "r",
            f"2026010{i + 1}-000000",
            [STARTED, event_line("run_finished", reason=reason)],
        )
    states = {r.stamp: r.state for r in list_runs(tmp_path)}
    assert states == {
        "20260101-000000": "early_stopped",
        "20260102-000000": "stopped",
        "20260103-000000": "interrupted",
        "20260104-000000": "max_time",
    }


def test_a_failed_run_carries_its_error(tmp_path: Path):
    write_run(
        tmp_path, "r", "20260101-000000", [STARTED, event_line("run_failed", error="DataError: no")]
    )
    [run] = list_runs(tmp_path)
    assert run.state == "failed"
    assert run.error == "DataError: no"


def test_a_run_without_an_end_is_running_while_its_log_moves_and_crashed_after(tmp_path: Path):
    run_dir = write_run(tmp_path, "r", "20260101-000000", [STARTED, event_line("step", step=5)])
    assert summarize_run(run_dir).state == "running"
    later = time.time() + STALE_AFTER_S + 1
    assert summarize_run(run_dir, now=later).state == "crashed"


def test_a_paused_run_stays_paused_however_long_it_waits(tmp_path: Path):
    run_dir = write_run(tmp_path, "r", "20260101-000000", [STARTED, event_line("paused", step=9)])
    old = time.time() - 10 * STALE_AFTER_S
    os.utime(run_dir / "events.jsonl", (old, old))
    assert summarize_run(run_dir).state == "paused"


def test_the_last_checkpoint_is_the_newest_announced_file_still_on_disk(tmp_path: Path):
    run_dir = tmp_path / "r" / "20260101-000000"
    ckpts = run_dir / "checkpoints"
    lines = [
        STARTED,
        event_line("checkpoint_saved", step=45, path=str(ckpts / "step-000045.pt"), reason="epoch"),
        event_line("checkpoint_saved", step=45, path=str(ckpts / "best.pt"), reason="best"),
        event_line("checkpoint_saved", step=90, path=str(ckpts / "step-000090.pt"), reason="epoch"),
    ]
    write_run(tmp_path, "r", "20260101-000000", lines, ["step-000045.pt", "best.pt", "last.pt"])
    # step-000090.pt was pruned or lost: the newest file still there is named
    assert summarize_run(run_dir).last_checkpoint == ckpts / "step-000045.pt"
    (ckpts / "step-000090.pt").write_bytes(b"x")
    assert summarize_run(run_dir).last_checkpoint == ckpts / "step-000090.pt"


def test_without_announcements_last_pt_is_the_last_checkpoint(tmp_path: Path):
    run_dir = write_run(tmp_path, "r", "20260101-000000", [STARTED], ["last.pt", "step-000001.pt"])
    assert summarize_run(run_dir).last_checkpoint == run_dir / "checkpoints" / "last.pt"


def test_runs_are_listed_newest_first_and_torn_lines_are_skipped(tmp_path: Path):
    write_run(tmp_path, "a", "20260101-000000", [STARTED, epoch(1, 0.5)])
    write_run(tmp_path, "b", "20260301-000000", [STARTED, epoch(1, 0.7), '{"kind": "epoch_e'])
    write_run(tmp_path, "c", "20260201-000000", [STARTED])
    (tmp_path / "not-a-run").mkdir()
    runs = list_runs(tmp_path)
    assert [r.stamp for r in runs] == ["20260301-000000", "20260201-000000", "20260101-000000"]
    assert runs[0].best_val_acc == 0.7


def test_a_missing_runs_folder_lists_nothing(tmp_path: Path):
    assert list_runs(tmp_path / "nope") == []


def test_a_real_run_is_summarised(workdir: Path):
    from engine.profile import load_profile
    from engine.run import Run

    run = Run.start(load_profile("profiles/quick.toml", ["checkpoint.every_epochs=1"]))
    assert run.join(120) == "completed"
    [summary] = list_runs("runs")
    assert summary.run_dir == run.run_dir
    assert summary.state == "finished"
    assert summary.best_val_acc is not None and summary.best_val_acc > 0.5
    assert summary.last_checkpoint is not None and summary.last_checkpoint.is_file()
    assert summary.epoch == summary.epochs == 3


def test_listing_runs_and_starting_the_tui_import_no_torch():
    code = (
        "import sys, engine.runs, tui.app, tui.screens.home, tui.screens.profile_form, "
        "tui.screens.dashboard, tui.screens.resume; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
