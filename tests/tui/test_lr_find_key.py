"""`L` on a profile (ctrl+l in the form): the LR finder in the console, a real sweep of the
quickstart on digits, its suggestion written into the file (home) or the field (form),
escape stopping a sweep under way, and a failure said in one sentence."""

from __future__ import annotations

import re
import time
from pathlib import Path

from tui_helpers import run_async, set_text, wait_for

from tui.app import MptApp
from tui.screens.home import HomeScreen
from tui.screens.lr_find import LrFindScreen
from tui.screens.profile_form import ProfileFormScreen

QUICKSTART = Path("profiles/quickstart.toml")  # long, quick, quickstart: the third row


async def _ended(pilot) -> LrFindScreen:
    """The LR finder's screen once its sweep ended (found or failed)."""
    app = pilot.app
    await wait_for(
        pilot,
        lambda: isinstance(app.screen, LrFindScreen) and app.screen.state in ("found", "failed"),
        timeout=60,
    )
    return app.screen


@run_async
async def test_L_on_a_profile_finds_an_lr_and_enter_writes_it_into_the_file(workdir: Path):
    before = QUICKSTART.read_text()
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("down", "down", "L")
        screen = await _ended(pilot)
        assert screen.state == "found", screen.outcome
        lr = screen.suggestion
        assert lr is not None and 1e-7 <= lr <= 10
        assert f"suggestion: optim.lr = {lr:g} (the steepest descent" in screen.outcome
        assert "the range it trusts: " in screen.outcome
        assert screen.query_one("#lr-curve").display  # the curve, drawn
        assert QUICKSTART.read_text() == before  # nothing written before enter
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen))
        await wait_for(pilot, lambda: QUICKSTART.read_text() != before)
    # one value's text changed; the comments and the layout kept, as `--apply` does
    assert QUICKSTART.read_text() == before.replace("lr = 0.001\n", f"lr = {lr!r}\n")
    assert not Path("runs").exists()  # a sweep writes no run


@run_async
async def test_escape_stops_a_running_find_at_once_and_writes_nothing(workdir: Path):
    # wide layers and 8 micro-batches a step: a sweep of seconds, stopped after its first
    slow = QUICKSTART.read_text().replace("hidden = [128]", "hidden = [2048, 2048]")
    QUICKSTART.write_text(slow.replace("log_every = 10", "log_every = 10\ngrad_accum = 8"))
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("down", "down", "L")
        await wait_for(pilot, lambda: isinstance(app.screen, LrFindScreen))
        screen = app.screen
        await wait_for(pilot, lambda: screen.outcome.startswith("step "), timeout=60)
        await pilot.press("escape")
        asked = time.monotonic()
        await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen), timeout=10)
        took = time.monotonic() - asked
        assert screen.suggestion is None
    assert took < 5, f"the sweep took {took:.1f}s to stop"
    ran = re.fullmatch(
        r"mpt lr-find: stopped after (\d+) of 100 steps; nothing was written", screen.outcome
    )
    assert ran and int(ran.group(1)) < 100, screen.outcome
    assert "lr = 0.001\n" in QUICKSTART.read_text()


@run_async
async def test_ctrl_l_in_the_form_sweeps_its_unsaved_values_and_sets_the_field(workdir: Path):
    before = QUICKSTART.read_text()
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("down", "down", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        form = app.screen
        await set_text(pilot, "model.hidden", "[64]")  # an edit, not saved
        await wait_for(pilot, lambda: form.dirty and form.profile is not None)
        await pilot.press("ctrl+l")
        screen = await _ended(pilot)
        assert screen.profile.model.hidden == [64]  # the form's values, not the file's
        assert screen.state == "found", screen.outcome
        lr = screen.suggestion
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is form)
        await wait_for(pilot, lambda: form.row("optim.lr").value == lr)
        assert form.dirty and QUICKSTART.read_text() == before  # saving is ctrl+s's
        await set_text(pilot, "run.epochs", "0")  # invalid: refused, no sweep
        await wait_for(pilot, lambda: form.profile is None)
        await pilot.press("ctrl+l")
        await pilot.pause(0.2)
        assert app.screen is form
        assert "cannot find an lr: fix the 1 problem first" in str(
            form.query_one("#status").render()
        )


@run_async
async def test_a_profile_that_cannot_train_is_one_sentence_not_a_traceback(workdir: Path):
    Path("profiles/aaa.toml").write_text('[run]\ndevice = "cpu"\n[data]\ndataset = "nosuch:make"\n')
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("L")
        screen = await _ended(pilot)
        assert screen.state == "failed"
        assert screen.outcome == (
            "data.dataset 'nosuch:make': cannot import module 'nosuch' (No module named 'nosuch')"
        )
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen))


@run_async
async def test_L_while_a_run_trains_in_this_console_is_refused_in_one_sentence(workdir: Path):
    from tui.screens.dashboard import DashboardScreen

    app = MptApp("profiles", "runs")
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.pause()
        await pilot.press("r")  # long.toml: 200 epochs, live for the whole test
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        await wait_for(pilot, lambda: app.session.live)
        await pilot.press("escape")
        await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen))
        await pilot.press("down", "L")
        screen = await _ended(pilot)
        assert screen.state == "failed"
        assert screen.outcome.startswith("a run is training in this console")
        app.session.stop()
