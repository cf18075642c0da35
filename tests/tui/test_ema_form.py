"""train.ema_decay and train.ema_every in the console's profile form (issue 18)."""

from __future__ import annotations

from pathlib import Path

from tui_helpers import run_async, set_text, wait_for

from engine.profile import load_profile
from tui.app import MptApp
from tui.screens.profile_form import ProfileFormScreen


@run_async
async def test_the_form_sets_ema_with_the_engines_range_and_saves_it(workdir: Path):
    app = MptApp("profiles", "runs", open_profile="profiles/quick.toml")
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        form = app.screen
        await set_text(pilot, "train.ema_decay", "1")
        assert form.row("train.ema_decay").error == "must be < 1 (got 1)"
        await set_text(pilot, "train.ema_decay", "0.99")
        await set_text(pilot, "train.ema_every", "4")
        assert str(form.query_one("#status").render()) == "valid"
        await pilot.press("ctrl+s")
        assert not form.dirty
    profile = load_profile("profiles/quick.toml")
    assert (profile.train.ema_decay, profile.train.ema_every) == (0.99, 4)
