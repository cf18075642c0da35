"""`mpt-tui --attach RUN_DIR`: watch and steer a run that `mpt run` trains in another process.

A real second process (`mpt run` on digits), the real control channel in its run
directory, and the TUI attached, quitting and attached again.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from durable_helpers import events_jsonl
from tui_helpers import press, run_async, wait_for

from tui.app import MptApp
from tui.screens.confirm import ConfirmScreen
from tui.screens.dashboard import DashboardScreen

MPT = [str(Path(sys.executable).with_name("mpt"))]


def kinds(run_dir: Path) -> list[str]:
    return [e["kind"] for e in events_jsonl(run_dir)]


def start_headless(workdir: Path) -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen(
        [*MPT, "run", "profiles/long.toml"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        found = list(workdir.glob("runs/long/*/control"))
        if found and "step" in kinds(found[0].parent):
            return proc, found[0].parent
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("the headless run did not start in 120 s")


def shown(screen: DashboardScreen, selector: str) -> str:
    return str(screen.query_one(selector).render())


@run_async
async def test_attach_pauses_checkpoints_and_stops_a_headless_run_and_can_quit_and_return(
    workdir: Path,
):
    proc, run_dir = start_headless(workdir)
    try:
        app = MptApp("profiles", "runs", attach=run_dir)
        async with app.run_test(size=(100, 30)) as pilot:
            await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
            dash = app.screen
            assert app.session is None and dash.live  # not this app's run, but steerable
            keys = {b.binding.key for b in dash.active_bindings.values() if b.binding.show}
            assert {"p", "c", "s"} <= keys
            await press(pilot, "p")
            await wait_for(pilot, lambda: dash.view.state == "paused", timeout=30)
            assert "PAUSED" in shown(dash, "#title")
            steps = kinds(run_dir).count("step")
            await press(pilot, "c")
            await wait_for(pilot, lambda: "(requested)" in shown(dash, "#paths"), timeout=30)
            assert kinds(run_dir).count("step") == steps  # no training while paused
            await press(pilot, "p")
            await wait_for(pilot, lambda: dash.view.state == "running", timeout=30)
            await press(pilot, "q")  # an attached run is not this app's: it quits at once
            await wait_for(pilot, lambda: not app.is_running, timeout=10)
        assert proc.poll() is None, "quitting the console must leave the run training"

        again = MptApp("profiles", "runs", attach=run_dir)
        async with again.run_test(size=(80, 24)) as pilot:
            await wait_for(pilot, lambda: isinstance(again.screen, DashboardScreen))
            dash = again.screen
            await press(pilot, "s")
            await wait_for(pilot, lambda: isinstance(again.screen, ConfirmScreen))
            await press(pilot, "y")
            await wait_for(pilot, lambda: dash.view.state == "stopped", timeout=60)
            assert not dash.live  # the run has ended: the keys are gone with it
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "control: stop requested" in out
    assert kinds(run_dir)[-1] == "run_finished"
    assert not (run_dir / "control").exists()


def test_attach_without_events_is_refused_in_one_sentence(workdir: Path):
    done = subprocess.run(
        [str(Path(sys.executable).with_name("mpt-tui")), "--attach", "runs/nothing"],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    expected = (
        "runs/nothing: no events.jsonl or sweep.json here; give a run or a sweep directory (mpt ls)"
    )
    assert done.stderr.strip() == expected
