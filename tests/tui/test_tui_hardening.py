"""The console under a fault: a run that runs out of memory fails with advice on screen,
and the app stays alive to start the next run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from tui_helpers import press, run_async, wait_for

from tui.app import MptApp
from tui.screens.dashboard import DashboardScreen
from tui.screens.home import HomeScreen

OOM_MODEL = """
import torch


class Greedy(torch.nn.Module):
    # What a too-big batch does on a GPU: the 8th training step asks for more than there is.
    def __init__(self, in_shape, num_classes):
        super().__init__()
        self.fc = torch.nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls == 9:  # call 1 is the shape check before training
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return self.fc(x.flatten(1))


def make(in_shape, num_classes):
    return Greedy(in_shape, num_classes)
"""


@pytest.fixture
def oom_profile(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (workdir / "oom_model.py").write_text(OOM_MODEL)
    monkeypatch.syspath_prepend(str(workdir))
    quick = (workdir / "profiles" / "quick.toml").read_text()
    path = workdir / "profiles" / "aaa-oom.toml"  # first in the list
    path.write_text(
        quick.replace('name = "quick"', 'name = "oom"') + '\n[model]\narch = "oom_model:make"\n'
    )
    yield path
    sys.modules.pop("oom_model", None)


@run_async
async def test_out_of_memory_shows_advice_and_the_console_runs_the_next_profile(oom_profile):
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen))
        await pilot.pause(0.1)
        assert app.screen.highlighted_profile().path.name == "aaa-oom.toml"
        await press(pilot, "r")
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        dash = app.screen
        await wait_for(pilot, lambda: app.session.ended)
        await pilot.pause(0.2)
        assert app.session.view.state == "failed"
        shown = str(dash.query_one("#error").render())
        assert shown.startswith("the run failed: out of memory on cpu at step 7 (")
        assert "lower data.batch_size and raise train.grad_accum" in shown
        assert "bf16" in shown

        await press(pilot, "escape")  # the console lives on: back to the list, run another
        await wait_for(pilot, lambda: isinstance(app.screen, HomeScreen))
        await press(pilot, "down", "down")  # long.toml, quick.toml
        await pilot.pause(0.1)
        assert app.screen.highlighted_profile().path.name == "quick.toml"
        await press(pilot, "r")
        await wait_for(
            pilot, lambda: isinstance(app.screen, DashboardScreen) and app.screen is not dash
        )
        await wait_for(pilot, lambda: app.session.ended, timeout=120)
        assert (app.session.view.name, app.session.view.state) == ("quick", "finished")
