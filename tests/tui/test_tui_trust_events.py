"""Bad lines in events.jsonl, as the console meets them: the runs list, attach, the dashboard.

Run directories as the engine lays them out, with lines no mpt writes among good ones;
the real app under Pilot. The dashboard's view-model is fuzzed with whatever the reader
makes of any line.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
from pathlib import Path

from event_strategies import FIELD_NAMES, JSON
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from textual.widgets import DataTable
from tui_helpers import event_line, run_async, wait_for, write_run

from engine import events as ev
from tui import viewmodel as vm
from tui.app import MptApp
from tui.screens.dashboard import DashboardScreen
from tui.screens.home import HomeScreen

DEEP = '{"kind": "step", "step": ' + "[" * 100_000 + "]" * 100_000 + "}"


def started(**fields) -> str:
    base = dict(name="r", epochs=2, total_steps=20, steps_per_epoch=10, parameters=1210)
    return event_line("run_started", **{**base, **fields})


def good_lines() -> list[str]:
    return [
        started(),
        event_line("step", step=5, loss=2.0, lr=0.01, epoch_progress=0.5),
        event_line("epoch_end", step=10, epochs=2, train_loss=1.9, val_loss=1.8, val_acc=0.5),
        event_line("run_finished", step=20, epoch=2, reason="completed", final_val_acc=0.6),
    ]


def rows(table: DataTable) -> list[list[str]]:
    return [[str(c) for c in table.get_row_at(i)] for i in range(table.row_count)]


@run_async
async def test_the_runs_list_shows_every_run_and_marks_those_with_bad_lines(workdir: Path):
    runs = Path("runs")
    lines = good_lines()
    write_run(runs, "good", "20260101-000000", lines)
    write_run(runs, "deep", "20260102-000000", [*lines[:3], DEEP])  # the last step line
    write_run(runs, "types", "20260103-000000", [started(epochs="2", parameters=[1]), *lines[1:]])
    write_run(runs, "markup", "20260104-000000", [started(name="[/oops]"), *lines[1:]])
    bad = write_run(runs, "bytes", "20260105-000000", [])
    (bad / "events.jsonl").write_bytes(lines[0].encode() + b"\n\xff\xfe\x00\n[1, 2]\n")
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(120, 30)) as pilot:
        await pilot.pause()
        home = app.screen
        assert isinstance(home, HomeScreen)
        table = rows(home.query_one("#runs", DataTable))
    assert [r[0] for r in table] == [
        "r/20260105-000000",
        "\\[/oops]/20260104-000000",  # as written, not read as markup
        "r/20260103-000000",
        "r/20260102-000000",
        "r/20260101-000000",
    ]
    assert [r[1] for r in table] == [
        "running, 2 bad lines",
        "finished",
        "finished, 1 bad line",
        "running, 1 bad line",
        "finished",
    ]
    assert table[4][2:4] == ["2/2", "50.00%"]


@run_async
async def test_attaching_to_a_run_with_bad_lines_shows_its_dashboard_and_follows_it(
    workdir: Path,
):
    mine = dict(pid=os.getpid(), host=socket.gethostname())  # alive: the dashboard follows
    lines = [
        started(parameters="many", **mine),
        event_line("step", step=5, loss="abc", lr=0.01, epoch_progress=0.5),
        DEEP,
        event_line("step", step=6, loss=1.5, lr=[1], epoch_progress=None, samples_per_s=1e308),
    ]
    run_dir = write_run(Path("runs"), "r", "20260101-000000", lines)
    app = MptApp("profiles", "runs", attach=run_dir)
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, DashboardScreen))
        dash = app.screen
        await pilot.pause()
        view = dash.view
        assert view.state == "running" and view.step == 6 and view.loss == 1.5
        assert view.parameters == 0 and view.lr == 0.0  # unreadable fields: their defaults
        [problems] = view.warnings
        assert problems.startswith("events.jsonl: 1 line could not be read (line 3: nested too")
        assert "3 lines could be read only in part (line 1: run_started.parameters" in problems
        with open(run_dir / "events.jsonl", "a") as f:
            f.write("[1, 2]\n" + event_line("step", step=7, loss=1.25) + "\n")
        await wait_for(pilot, lambda: view.step == 7 and len(view.warnings) == 2)
        assert "2 lines could not be read" in view.warnings[1]
        assert "warning" in str(dash.query_one("#title").render())


def test_gpu_memory_with_utilisation_but_no_temperature_or_power_is_shown():
    view = vm.build_view(
        [ev.Step(step=1, epoch=1, gpu_mem_allocated=2**20, gpu_mem_reserved=2**21, gpu_util=50)]
    )
    assert vm.memory_lines(view)[1].endswith("50% -°C - W")


# ---- fuzz: whatever a line holds, the dashboard's text is drawn ----

BASE = {"step": st.integers(0, 100), "epoch": st.integers(0, 3), "time": st.floats(0, 2e9)}
EVENT_LINE = st.builds(
    lambda kind, base, fields: json.dumps({"kind": kind, **base, **fields}, allow_nan=True),
    st.sampled_from(list(ev.EVENT_TYPES)),
    st.fixed_dictionaries(BASE),
    st.dictionaries(st.sampled_from(FIELD_NAMES), JSON, max_size=8),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EVENT_LINE, min_size=1, max_size=8))
def test_the_dashboard_text_is_drawn_from_any_event_lines(lines: list[str]):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        path.write_text("".join(line + "\n" for line in lines))
        view = vm.build_view(ev.read_events(path))
    for draw in (
        vm.title_line,
        vm.progress_lines,
        vm.stats_lines,
        vm.metric_lines,
        vm.memory_lines,
        vm.early_stop_lines,
        vm.path_lines,
    ):
        draw(view)
