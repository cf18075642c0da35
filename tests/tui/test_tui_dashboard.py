"""The dashboard on real digits runs: metrics arrive, pause, checkpoint, stop, quit, failures."""

from __future__ import annotations

import textwrap
import time
from pathlib import Path

import pytest
from durable_helpers import events_jsonl
from textual.widgets import DataTable
from tui_helpers import press, run_async, wait_for

from engine.profile import load_profile
from tui.app import MptApp
from tui.screens.choice import ChoiceScreen
from tui.screens.confirm import ConfirmScreen
from tui.screens.dashboard import DashboardScreen
from tui.screens.home import HomeScreen
from tui.screens.profile_form import ProfileFormScreen
from tui.widgets.curves import CurvesPlot


def text_of(screen, selector: str) -> str:
    return str(screen.query_one(selector).render())


def events_of(run_dir: Path) -> list[dict]:
    return events_jsonl(run_dir)


async def start_long_run(pilot) -> DashboardScreen:
    """From the home screen: `r` on the highlighted profile (long.toml sorts first)."""
    app = pilot.app
    await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen))
    await pilot.pause(0.1)
    assert app.screen.highlighted_profile().path.name == "long.toml"
    await press(pilot, "r")
    await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
    await wait_for(pilot, lambda: app.session.view.step >= 20)
    return app.screen


async def stop_run(pilot) -> None:
    await press(pilot, "s")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, ConfirmScreen))
    await press(pilot, "y")
    await wait_for(pilot, lambda: pilot.app.session.ended)


@run_async
async def test_a_run_started_from_the_form_shows_its_epoch_metrics(workdir: Path):
    app = MptApp("profiles", "runs", open_profile="profiles/quick.toml")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        await press(pilot, "ctrl+r")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        dash = app.screen
        await wait_for(pilot, lambda: len(app.session.view.val_acc) >= 1)
        await wait_for(pilot, lambda: app.session.ended)
        await pilot.pause(0.2)
        v = app.session.view
        assert v.state == "finished"
        assert len(v.val_acc) == 3 and len(v.train_acc) == 3 and len(v.train_loss) > 10
        assert v.best_val_acc > 0.5
        assert "QUICK" not in text_of(dash, "#title")  # the run's name as written
        assert text_of(dash, "#title").startswith("quick · FINISHED · cpu · digits mlp")
        assert "epoch 3/3" in text_of(dash, "#progress")
        assert f"run dir     {app.session.run_dir}" in text_of(dash, "#paths")
        assert "RSS " in text_of(dash, "#state")  # the host figures (engine/host.py)
        assert "lr       1.00e-03" in text_of(dash, "#stats")
        assert "finished: val acc" in text_of(dash, "#messages")
        loss_plot = dash.query_one("#loss-plot", CurvesPlot)
        assert [c.label for c in loss_plot.curves] == ["train (steps)", "train", "val"]
        assert len(loss_plot.curves[2].xs) == 3
        # a finished run offers no controls, and escape goes back
        keys = {b.binding.key for b in dash.active_bindings.values() if b.binding.show}
        assert {"p", "c", "s"}.isdisjoint(keys) and "escape" in keys
        await press(pilot, "escape")
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))


@run_async
async def test_the_footer_lists_the_controls_of_a_live_run(workdir: Path):
    app = MptApp("profiles", "runs")
    async with app.run_test() as pilot:
        dash = await start_long_run(pilot)
        shown = {
            b.binding.key: b.binding.description
            for b in dash.active_bindings.values()
            if b.binding.show
        }
        assert shown["p"] == "Pause/resume"
        assert shown["c"] == "Checkpoint"
        assert shown["s"] == "Stop"
        assert shown["q"] == "Quit"
        await stop_run(pilot)


@run_async
async def test_pause_holds_the_run_and_resume_continues_it(workdir: Path):
    app = MptApp("profiles", "runs")
    async with app.run_test() as pilot:
        dash = await start_long_run(pilot)
        await press(pilot, "p")
        await wait_for(pilot, lambda: app.session.view.state == "paused")
        assert "step" in text_of(dash, "#messages") and "paused" in text_of(dash, "#messages")
        assert "PAUSED" in text_of(dash, "#title")
        run_dir = app.session.run_dir
        steps = sum(e["kind"] == "step" for e in events_of(run_dir))
        step = app.session.view.step
        await pilot.pause(1.0)
        assert sum(e["kind"] == "step" for e in events_of(run_dir)) == steps  # no step events
        assert app.session.view.step == step
        await press(pilot, "p")
        await wait_for(pilot, lambda: app.session.view.step > step + 10)
        assert app.session.view.state == "running"
        assert text_of(dash, "#messages").splitlines()[-1].endswith("resumed")
        await stop_run(pilot)


@run_async
async def test_checkpoint_now_saves_one_and_says_where(workdir: Path):
    app = MptApp("profiles", "runs")
    async with app.run_test() as pilot:
        dash = await start_long_run(pilot)
        await press(pilot, "c")
        await wait_for(pilot, lambda: app.session.view.checkpoint_reason == "requested")
        path = Path(app.session.view.last_checkpoint)
        assert path.is_file() and path.parent == app.session.run_dir / "checkpoints"
        assert f"checkpoint saved: checkpoints/{path.name} (requested)" in text_of(
            dash, "#messages"
        )
        assert f"checkpoint  checkpoints/{path.name} (requested)" in text_of(dash, "#paths")
        await stop_run(pilot)


@run_async
async def test_stop_asks_first_and_n_or_escape_cancel(workdir: Path):
    app = MptApp("profiles", "runs")
    async with app.run_test() as pilot:
        dash = await start_long_run(pilot)
        for cancel in ("n", "escape"):
            await press(pilot, "s")
            await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
            await press(pilot, cancel)
            await wait_for(pilot, lambda: app.screen is dash)
            assert app.session.live
        step = app.session.view.step
        await wait_for(pilot, lambda: app.session.view.step > step)  # still training
        await press(pilot, "s")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await press(pilot, "enter")
        await wait_for(pilot, lambda: app.session.ended)
        await pilot.pause(0.2)
        v = app.session.view
        assert v.state == "stopped"
        assert v.checkpoint_reason == "stop" and Path(v.last_checkpoint).is_file()
        assert text_of(dash, "#messages").splitlines()[-1].startswith(f"step {v.step}: stopped")
        assert "STOPPED" in text_of(dash, "#title")


@run_async
async def test_quit_with_a_live_run_asks_then_stops_it_cleanly(workdir: Path):
    app = MptApp("profiles", "runs")
    async with app.run_test() as pilot:
        await start_long_run(pilot)
        run_dir = app.session.run_dir
        await press(pilot, "q")
        await wait_for(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        await pilot.pause(0.1)
        # a dialog over the dashboard, as every question: in the middle, the run beside it
        dialog, screen = app.screen.query_one("#dialog").region, app.screen.region
        assert dialog.y > 0 and dialog.bottom < screen.bottom and dialog.x > 0
        await press(pilot, "escape")
        await pilot.pause(0.2)
        assert app.session.live and app.is_running
        await press(pilot, "q")
        await wait_for(pilot, lambda: isinstance(app.screen, ChoiceScreen))
        await press(pilot, "s")  # stop and quit (d: detach, tests/tui/test_detach.py)
        await wait_for(pilot, lambda: not app.is_running)
    assert app.session.run.join(30) == "stopped"
    events = events_of(run_dir)
    assert events[-1]["kind"] == "run_finished" and events[-1]["reason"] == "stopped"
    assert any(e["kind"] == "checkpoint_saved" and e["reason"] == "stop" for e in events)


@run_async
async def test_the_home_screen_marks_the_run_live_here_and_d_returns_to_it(workdir: Path):
    app = MptApp("profiles", "runs")
    async with app.run_test() as pilot:
        dash = await start_long_run(pilot)
        await press(pilot, "escape")  # back to the lists while it trains
        await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen))
        home = app.screen
        home.action_refresh()  # (the list is read in a worker: it fills a moment later)
        runs = home.query_one("#runs", DataTable)
        await wait_for(pilot, lambda: runs.row_count and runs.get_row_at(0)[1] == "running here")
        await press(pilot, "d")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        assert app.screen.source is dash.source is app.session
        await stop_run(pilot)


def _user_model(folder: Path) -> None:
    (folder / "flaky_model.py").write_text(
        textwrap.dedent(
            """
            import torch

            class Flaky(torch.nn.Module):
                def __init__(self, in_shape, num_classes):
                    super().__init__()
                    self.fc = torch.nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes)
                    self.calls = 0

                def forward(self, x):
                    self.calls += 1
                    if self.calls > 30:
                        raise ValueError("flaky_model gave up on batch 30")
                    return self.fc(x.flatten(1))

            def make(in_shape, num_classes):
                return Flaky(in_shape, num_classes)
            """
        )
    )


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        (
            ['model.arch="flaky_model:make"'],
            "ValueError: flaky_model gave up on batch 30",
        ),
        (
            ['optim.name="sgd"', "optim.lr=1e12"],
            "the training loss became nan",
        ),
        (
            ['data.dataset="npz"', 'data.path="bad.npz"'],
            "bad.npz: cannot be read as a .npz file",
        ),
    ],
    ids=["exception-in-user-code", "non-finite-loss", "bad-data-file"],
)
@run_async
async def test_a_failed_run_shows_its_error_and_the_app_stays_usable(
    workdir: Path, monkeypatch: pytest.MonkeyPatch, overrides: list[str], error: str
):
    _user_model(workdir)
    monkeypatch.syspath_prepend(str(workdir))
    Path("bad.npz").write_bytes(b"this is not a numpy archive")
    profile = load_profile("profiles/quick.toml", overrides)
    app = MptApp("profiles", "runs", run_profile=profile)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        dash = app.screen
        await wait_for(pilot, lambda: app.session.ended)
        await pilot.pause(0.2)
        assert app.session.view.state == "failed"
        shown = text_of(dash, "#error")
        assert dash.query_one("#error").display
        assert shown.startswith("the run failed: ") and error in shown
        assert "FAILED" in text_of(dash, "#title")
        await press(pilot, "p", "c", "s")  # no controls on a dead run: nothing happens
        assert app.screen is dash
        await press(pilot, "q")  # nothing live: quits without asking
        await wait_for(pilot, lambda: not app.is_running, timeout=5)


@run_async
async def test_a_missing_data_file_is_refused_in_the_form_before_any_run(workdir: Path):
    app = MptApp("profiles", "runs", open_profile="profiles/quick.toml")
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        form = app.screen
        form.row("data.dataset").control.value = "npz"
        form.row("data.path").control.value = "nowhere.npz"
        await wait_for(pilot, lambda: (form.row("data.path").error or "").startswith("no such"))
        await press(pilot, "ctrl+r")
        await wait_for(pilot, lambda: "cannot run" in text_of(form, "#status"), timeout=10)
        assert app.screen is form and app.session is None


@run_async
async def test_run_option_starts_the_run_at_once_with_its_overrides(workdir: Path):
    profile = load_profile("profiles/quick.toml", ["run.epochs=2", "run.name=over"])
    app = MptApp("profiles", "runs", run_profile=profile)
    started = time.monotonic()
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen), timeout=5)
        assert time.monotonic() - started < 5
        await wait_for(pilot, lambda: app.session.ended)
        v = app.session.view
        assert (v.name, v.epochs, v.state) == ("over", 2, "finished")
        assert app.session.run_dir.parent == Path("runs/over")


@run_async
async def test_a_run_another_process_writes_is_followed_live(workdir: Path):
    from tui_helpers import event_line, write_run

    started = event_line("run_started", name="headless", epochs=1, total_steps=45, run_dir="x")
    run_dir = write_run(Path("runs"), "headless", "20260101-000000", [started])
    app = MptApp("profiles", "runs")
    async with app.run_test() as pilot:
        await pilot.pause()
        await pilot.press("tab")
        assert app.screen.query_one("#runs", DataTable).get_row_at(0)[1] == "running"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        dash = app.screen
        assert dash.view.state == "running" and app.session is None
        with open(run_dir / "events.jsonl", "a") as f:
            f.write(event_line("epoch_end", step=45, epochs=1, val_acc=0.9, val_loss=0.3) + "\n")
            f.write(event_line("run_finished", step=45, reason="completed") + "\n")
        await wait_for(pilot, lambda: dash.view.state == "finished", timeout=5)
        assert dash.view.val_acc.ys == [0.9]
        assert "FINISHED" in text_of(dash, "#title")


@run_async
async def test_sigterm_stops_the_run_with_a_checkpoint_then_quits(workdir: Path):
    import signal

    app = MptApp("profiles", "runs")
    async with app.run_test() as pilot:
        await start_long_run(pilot)
        run_dir = app.session.run_dir
        app.on_signal(signal.SIGTERM)
        await wait_for(pilot, lambda: not app.is_running)
    assert app.return_code == 130
    events = events_of(run_dir)
    assert events[-1]["kind"] == "run_finished" and events[-1]["reason"] == "interrupted"
    assert any(e["kind"] == "checkpoint_saved" and e["reason"] == "interrupted" for e in events)


@run_async
async def test_early_stopping_state_is_shown_as_the_engine_reports_it(workdir: Path):
    profile = load_profile(
        "profiles/quick.toml",
        ["early_stop.enabled=true", "early_stop.patience=4", "early_stop.stop_below=10.0"],
    )
    app = MptApp("profiles", "runs", run_profile=profile)
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: app.session is not None and app.session.ended)
        await pilot.pause(0.2)
        v = app.session.view
        assert v.state == "early stopped"
        assert (v.early_stop.monitor, v.early_stop.patience) == ("val_loss", 4)
        assert v.early_stop.stopping and v.early_stop.why == "stop_below"
        state = text_of(app.screen, "#state")
        assert "early stop  val_loss, patience 4: STOPPING (stop_below)" in state
        assert "wait 0/4" in state
        assert "early stop: stop_below" in text_of(app.screen, "#messages")


def test_sighup_in_a_real_terminal_stops_the_run_with_a_checkpoint_and_exits(workdir: Path):
    """The SSH link drops: mpt-tui --on-hangup stop gets SIGHUP, saves a checkpoint, stops,
    and exits."""
    import os
    import pty
    import signal
    import subprocess
    import sys

    mpt_tui = Path(sys.executable).with_name("mpt-tui")
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "80", "LINES": "24"}
    proc = subprocess.Popen(
        [str(mpt_tui), "--on-hangup", "stop", "--run", "profiles/long.toml"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    os.close(slave)
    try:
        deadline = time.monotonic() + 90
        events: list[dict] = []
        while time.monotonic() < deadline:
            os.read(master, 1 << 16) if _readable(master) else None  # keep the pty drained
            found = list(Path("runs/long").glob("*/events.jsonl"))
            if found:
                events = events_of(found[0].parent)
                if sum(e["kind"] == "step" for e in events) >= 20:
                    break
            time.sleep(0.05)
        assert events, "the run never started"
        proc.send_signal(signal.SIGHUP)
        os.close(master)  # the terminal is gone, as after a dropped link
        master = -1
        assert proc.wait(timeout=90) == 128 + signal.SIGHUP
    finally:
        if proc.poll() is None:
            proc.kill()
        if master >= 0:
            os.close(master)
    events = events_of(found[0].parent)
    assert events[-1]["kind"] == "run_finished" and events[-1]["reason"] == "interrupted"
    assert any(e["kind"] == "checkpoint_saved" and e["reason"] == "interrupted" for e in events)


def _readable(fd: int) -> bool:
    import select

    return bool(select.select([fd], [], [], 0)[0])
