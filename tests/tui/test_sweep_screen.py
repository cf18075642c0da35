"""Sweeps in the console (issue 17): a row each in the runs list, the sweep screen with its
trials live, enter on a trial, p/s for the whole sweep, `mpt-tui --sweep FILE` and
`--attach SWEEP_DIR`.

The look is checked on a stable sweep directory: written by the engine's own SweepDir from
a real sweep file, its trials' runs made of recorded events with fixed times (update with
`--snapshot-update`, and look at the SVGs). What reaches the sweep is checked on a real
detached sweep (a runner process and its trial's `mpt run`).
"""

from __future__ import annotations

import contextlib
import math
import subprocess
import sys
from pathlib import Path

import pytest
from tui_helpers import event_line, press, run_async, wait_for

from engine.errors import MptError
from engine.sweep import SweepDir, TrialRecord
from engine.sweep_ctl import read_sweep_state, start_detached, stop_sweep
from engine.sweep_live import RunnerRecord, write_runner
from engine.sweep_spec import load_sweep
from tui.app import MptApp
from tui.screens.compare import CompareScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.home import HomeScreen
from tui.screens.sweep import SweepScreen
from tui.sweep_view import SweepWatch

T0 = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
MPT_TUI = str(Path(sys.executable).with_name("mpt-tui"))

SWEEP_FILE = """\
profile = "../profiles/quickstart.toml"
method = "grid"
parallel = 2
monitor = "val_acc"

[grid]
"optim.lr" = [0.001, 0.01]
"data.batch_size" = [32, 64]
"""

# trial -> (state in trials.jsonl, epochs its run went, how fast its val_acc climbs)
TRIALS = {0: ("finished", 6, 0.3), 1: ("finished", 6, 0.9), 2: ("interrupted", 3, 0.6)}


def trial_events(epochs_done: int, rate: float, ended: str) -> list[str]:
    lines = [event_line("run_started", time=T0, name="trial", epochs=6, total_steps=270)]
    for epoch in range(1, epochs_done + 1):
        acc = 0.98 - 0.5 * math.exp(-epoch * rate)
        fields = dict(step=45 * epoch, epoch=epoch, epochs=6, time=T0 + epoch)
        lines.append(event_line("epoch_end", **fields, val_acc=acc, val_loss=1.0 / epoch))
    reason = "completed" if ended == "finished" else ended
    end = dict(step=45 * epochs_done, epoch=epochs_done, time=T0 + 7, reason=reason)
    return [*lines, event_line("run_finished", **end)]


def recorded_sweep(root: Path) -> Path:
    """runs/sweep/20260101-000000/: 4 trials, 2 finished, 1 interrupted, 1 never started."""
    (root / "sweeps").mkdir()
    (root / "sweeps" / "lr.toml").write_text(SWEEP_FILE)
    sweep = load_sweep(root / "sweeps" / "lr.toml", [])
    path = Path("runs", "lr", "20260101-000000")
    path.mkdir(parents=True)
    folder = SweepDir(path)
    trials = sweep.expand()
    folder.write_sweep(sweep, trials)
    for trial in trials:
        rec = TrialRecord(trial.index, trial.values)
        if trial.index in TRIALS:
            state, epochs, rate = TRIALS[trial.index]
            run_dir = folder.trial_folder(trial.index) / "20260101-000001"
            run_dir.mkdir(parents=True)
            (run_dir / "events.jsonl").write_text(
                "".join(x + "\n" for x in trial_events(epochs, rate, state))
            )
            rec.state, rec.run_dir = state, str(run_dir)
            rec.best = max(0.98 - 0.5 * math.exp(-e * rate) for e in range(1, epochs + 1))
            rec.best_epoch = epochs
        folder.record(rec)
    # its runner stopped as Ctrl-C stops it (exit 130), as the runner itself records it
    runner = RunnerRecord(4242, "box", T0, T0, ended=T0 + 8, exit=130)
    write_runner(path, runner)
    return path


@pytest.fixture
def sweep_dir(workdir: Path) -> Path:
    return recorded_sweep(workdir)


# ---- the look, at 80x24 ----


def test_sweep_screen_at_80x24(snap_compare, sweep_dir):
    async def shown(pilot) -> None:
        await wait_for(pilot, lambda: isinstance(pilot.app.screen, SweepScreen))
        await wait_for(pilot, lambda: pilot.app.screen.snapshot is not None)
        await pilot.pause()

    app = MptApp("profiles", "runs", attach=sweep_dir)
    assert snap_compare(app, terminal_size=(80, 24), run_before=shown)


def test_home_lists_the_sweep_at_80x24(snap_compare, sweep_dir):
    async def runs_list(pilot) -> None:
        await pilot.press("tab")

    assert snap_compare(MptApp("profiles", "runs"), terminal_size=(80, 24), run_before=runs_list)


# ---- what the keys do on a recorded sweep ----


@run_async
async def test_enter_on_a_sweep_opens_it_and_enter_on_a_trial_its_dashboard(sweep_dir):
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen))
        await press(pilot, "tab", "enter")  # the sweep: the runs list's only row
        await wait_for(pilot, lambda: isinstance(app.screen, SweepScreen))
        screen = app.screen
        await wait_for(pilot, lambda: screen.snapshot is not None)
        assert screen.snapshot.status == "interrupted"
        status = str(screen.query_one("#status").render())
        assert f"mpt sweep --resume {sweep_dir}" in status
        await press(pilot, "down", "enter")  # trial 2
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        assert app.screen.source.run_dir == sweep_dir / "trial-001" / "20260101-000001"
        await press(pilot, "escape")
        await wait_for(pilot, lambda: app.screen is screen)
        await press(pilot, "up", "space", "space", "v")  # trials 1 and 2
        await wait_for(pilot, lambda: isinstance(app.screen, CompareScreen))
        await wait_for(pilot, lambda: app.screen.runs)
        assert len(app.screen.runs) == 2


def test_the_watch_reads_what_was_added_and_no_more(sweep_dir):
    watch = SweepWatch(sweep_dir)
    first = watch.poll()
    assert [r.state for r in first.rows] == ["finished", "finished", "interrupted", "queued"]
    assert [r.epoch for r in first.rows] == [6, 6, 3, 0]
    # trial 4 starts: one more line in trials.jsonl, and its run's events as they come
    folder = SweepDir(sweep_dir)
    rec = TrialRecord(3, {"optim.lr": 0.01, "data.batch_size": 64}, state="running")
    folder.record(rec)
    run_dir = folder.trial_folder(3) / "20260101-000002"
    run_dir.mkdir(parents=True)
    events = run_dir / "events.jsonl"
    lines = trial_events(2, 0.5, "finished")[:-1]  # two epochs, no end yet
    events.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:20])  # a line half written
    row = watch.poll().rows[3]
    assert (row.state, row.epoch, row.epochs) == ("running", 1, 6)
    with open(events, "a") as f:
        f.write(lines[2][20:] + "\n")
    row = watch.poll().rows[3]
    assert row.epoch == 2 and row.last == pytest.approx(0.98 - 0.5 * math.exp(-1.0))


# ---- the command line ----


def test_usage_mistakes_are_one_sentence_and_exit_2_without_a_console(sweep_dir: Path):
    def mpt_tui(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([MPT_TUI, *args], capture_output=True, text=True, timeout=60)

    Path("bad.toml").write_text('profile = "profiles/quickstart.toml"\nmethod = "gird"\n')
    # a sweep file that cannot run: its sentences, and nothing started
    done = mpt_tui("--sweep", "bad.toml")
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.startswith("bad.toml: method") and "\x1b[" not in done.stdout
    assert [p.name for p in Path("runs").iterdir()] == ["lr"]
    # --sweep starts a sweep and shows it: with --attach (or --run, --resume) it is no plan
    done = mpt_tui("--sweep", "long-sweep.toml", "--attach", str(sweep_dir))
    assert done.returncode == 2 and "give it without --run, --resume or --attach" in done.stderr
    # --attach takes a run directory or a sweep directory
    done = mpt_tui("--attach", "profiles")
    assert done.returncode == 2
    assert "give a run or a sweep directory" in done.stderr


# ---- a real sweep, detached: what reaches it ----

LONG_SWEEP = """\
profile = "profiles/long.toml"
parallel = 1
[grid]
"optim.lr" = [0.001, 0.01]
"""


@pytest.fixture
def live_sweep(workdir: Path):
    """A detached sweep of two long digits trials, one at a time (stopped at the end)."""
    (workdir / "long-sweep.toml").write_text(LONG_SWEEP)
    path = start_detached(Path("long-sweep.toml"), [])
    yield path
    with contextlib.suppress(MptError):
        stop_sweep(path, timeout=60)


@run_async
async def test_a_live_sweep_p_pauses_and_resumes_it_quitting_leaves_it_and_s_stops_it(
    live_sweep: Path,
):
    app = MptApp("profiles", "runs", attach=live_sweep)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, SweepScreen))
        screen = app.screen

        def first_trial():
            return screen.snapshot.rows[0] if screen.snapshot else None

        await wait_for(pilot, lambda: first_trial() and first_trial().epoch >= 1, timeout=120)
        assert screen.snapshot.status == "running" and first_trial().state == "running"
        await press(pilot, "enter")  # the running trial's dashboard, live
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        assert app.screen.source.run_dir == first_trial().run_dir
        await press(pilot, "escape")
        await wait_for(pilot, lambda: app.screen is screen)
        await press(pilot, "p")
        await wait_for(pilot, lambda: first_trial().state == "paused", timeout=60)
        assert read_sweep_state(live_sweep).paused and screen.snapshot.status == "paused"
        await press(pilot, "p")
        await wait_for(pilot, lambda: first_trial().state == "running", timeout=60)
        assert not read_sweep_state(live_sweep).paused
        await press(pilot, "q")
    assert read_sweep_state(live_sweep).live  # quitting the console left it running

    app = MptApp("profiles", "runs", attach=live_sweep)
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, SweepScreen))
        screen = app.screen
        await wait_for(pilot, lambda: screen.snapshot is not None and screen.snapshot.live)
        await press(pilot, "s")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await press(pilot, "y")
        await wait_for(pilot, lambda: screen.snapshot.status == "interrupted", timeout=60)
        state = read_sweep_state(live_sweep)
        assert not state.live and state.records[0].state == "interrupted"
        assert state.records[1].state == "queued"  # never started
        status = str(screen.query_one("#status").render())
        assert f"mpt sweep --resume {live_sweep}" in status
