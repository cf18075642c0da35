"""Issue 15 in the console: a run's task and metrics on the dashboard, and the task keys
in the profile form.

The dashboard is fed recorded events (a run directory's events.jsonl, as `mpt run` writes
it), so these tests do not depend on the trainer of any task. The form is driven as a
person would: type into a key's field, ctrl+s, read the file back.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from textual.content import Content
from textual.widgets import Input, Select
from tui_helpers import event_line, run_async, set_text, wait_for, write_run

from engine import events as ev
from engine.profile import load_profile
from tui import viewmodel as vm
from tui.app import MptApp
from tui.screens.dashboard import PLOT_LINES, DashboardScreen
from tui.screens.profile_form import ProfileFormScreen
from tui.widgets.curves import CurvesPlot

RUN_DIR = "runs/fit/20260101-000000"


def started(task: str = "regression", metrics=("mae", "r2"), **fields) -> ev.RunStarted:
    base = dict(
        run_dir=RUN_DIR, name="fit", device="cpu", dataset="mypkg.data:make", arch="mlp",
        parameters=9610, trainable_parameters=9610, epochs=5, steps_per_epoch=10,
        total_steps=50, task=task, loss="mse", metrics=list(metrics),
    )  # fmt: skip
    return ev.RunStarted(**{**base, **fields})


def epoch_end(n: int, **metrics: float | None) -> ev.EpochEnd:
    acc = {k: metrics.get(k) for k in ("train_acc", "val_acc")}  # the fields, as the engine
    return ev.EpochEnd(step=10 * n, epoch=n, epochs=5, train_loss=1 / n, val_loss=1.2 / n,
                       lr=0.01, metrics=metrics, **acc)  # fmt: skip


def regression_run() -> list[ev.Event]:
    """Three epochs: val_mae 0.5, 0.25, 0.375 (train_mae below), val_r2 = 1 - val_mae."""
    events: list[ev.Event] = [started()]
    for n, mae in enumerate((0.5, 0.25, 0.375), 1):
        events.append(epoch_end(n, train_mae=mae - 0.125, val_mae=mae, val_r2=1 - mae))
    return events


# ---- the view-model ----


def test_the_plot_follows_the_headline_metric_train_and_val():
    v = vm.build_view(regression_run())
    assert v.headline == "mae"
    assert v.metric("val_mae").series.points() == ([1, 2, 3], [0.5, 0.25, 0.375])
    assert v.metric("train_mae").series.ys == [0.375, 0.125, 0.25]
    assert len(v.val_acc) == 0 and len(v.train_acc) == 0  # a regression run has no accuracy


def test_a_run_from_before_metrics_keeps_its_accuracy_plot():
    # run_started without metrics, epoch_end with only train_acc/val_acc: an older mpt
    old = [ev.RunStarted(name="old", epochs=2), ev.EpochEnd(epoch=1, train_acc=0.8, val_acc=0.7)]
    v = vm.build_view(old)
    assert v.headline == "acc"
    assert v.val_acc.ys == [0.7] and v.train_acc.ys == [0.8]
    assert vm.metric_lines(v)[1].split() == ["acc", "80.00%", "70.00%", "70.00%", "(ep", "1)"]


def test_the_best_of_each_metric_goes_its_own_way():
    v = vm.build_view(regression_run())
    mae, r2 = v.metric("val_mae"), v.metric("val_r2")
    assert (mae.best, mae.best_epoch) == (0.25, 2)  # lower is better
    assert (r2.best, r2.best_epoch) == (0.75, 2)  # higher is better
    assert mae.last == 0.375


def test_the_metrics_panel_lists_every_metric_of_the_last_epoch_headline_first():
    v = vm.build_view(regression_run())
    assert vm.metric_lines(v) == [
        "metric   train     val  best val",
        "mae     0.2500  0.3750  0.2500 (ep 2)",
        "r2           -  0.6250  0.7500 (ep 2)",  # validation only: no train_r2
    ]


def test_fractions_are_percentages_and_errors_plain_numbers():
    assert vm.format_metric("val_acc", 0.9725) == "97.25%"
    for name in ("f1", "precision", "recall", "auroc", "top5", "hamming"):
        assert vm.format_metric(f"val_{name}", 0.5) == "50.00%", name
    for name in ("mae", "mse", "rmse", "r2"):
        assert vm.format_metric(f"train_{name}", 0.5) == "0.5000", name
    assert vm.format_metric("val_r2", -1.25) == "-1.2500"
    assert vm.format_metric("val_acc", None) == "-"
    assert vm.format_metric("val_acc", math.nan) == "nan"


def test_a_metric_not_reported_this_epoch_shows_a_dash_and_keeps_its_best():
    v = vm.build_view([started(), epoch_end(1, val_mae=0.5), epoch_end(2, val_mae=None)])
    row = vm.metric_lines(v)[1]
    assert row.split()[:3] == ["mae", "-", "-"] and row.endswith("0.5000 (ep 1)")


def test_a_classification_run_lists_train_acc_beside_its_own_metrics():
    events = [started("classification", ["f1", "auroc"])]
    events.append(epoch_end(1, train_acc=0.9, val_f1=0.8, val_auroc=0.95))
    v = vm.build_view(events)
    assert v.headline == "f1"
    assert [line.split()[0] for line in vm.metric_lines(v)[1:]] == ["f1", "auroc", "acc"]


def test_too_many_metrics_for_the_room_are_named_on_the_last_line():
    names = ["acc", "top5", "f1", "precision", "recall", "auroc"]
    v = vm.build_view([started("classification", names)])
    lines = vm.metric_lines(v, max_lines=4)
    assert len(lines) == 4
    assert lines[-1] == "+4 more: f1, precision, recall, auroc"
    assert len(vm.metric_lines(v)) == 7  # header + 6: all of them when there is room


def test_the_header_names_the_task_and_how_many_parameters_train():
    v = vm.build_view([started(trainable_parameters=1290)])
    assert vm.title_line(v) == (
        "fit · RUNNING · cpu · mypkg.data:make mlp (1,290 of 9,610 parameters train) · regression"
    )
    v = vm.build_view([started()])  # nothing frozen
    assert "(9,610 parameters) · regression" in vm.title_line(v)


def test_the_end_of_a_run_names_its_headline():
    v = vm.build_view([*regression_run(), ev.RunFinished(step=30, reason="completed")])
    assert v.messages[-1] == "step 30: finished: val mae 0.3750, best 0.2500"


METRIC_KEY = st.sampled_from(["train_acc", "val_acc", "val_mae", "train_r2", "val_", "val_x"])
EPOCH_LINE = st.builds(
    lambda fields: json.dumps({"kind": "epoch_end", "step": 1, "epoch": 1, "time": 0, **fields}),
    st.dictionaries(METRIC_KEY, st.none() | st.floats() | st.integers() | st.text(max_size=3)),
)
NAMES = st.lists(st.text(max_size=12), max_size=4)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(NAMES, st.lists(EPOCH_LINE, max_size=5))
def test_the_metrics_panel_is_drawn_from_any_metric_names_and_values(names, lines):
    start = event_line("run_started", metrics=names, task="x", trainable_parameters=-1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        path.write_text("".join(line + "\n" for line in [start, *lines]))
        view = vm.build_view(ev.read_events(path))
    assert len(vm.metric_lines(view, max_lines=3)) <= 3
    vm.metric_lines(view)
    vm.title_line(view)


# ---- the dashboard ----


def write_events(events: list[ev.Event]) -> None:
    lines = [json.dumps(e.to_dict()) for e in events]
    write_run(Path("runs"), "fit", "20260101-000000", lines)


async def open_the_run(pilot) -> DashboardScreen:
    await pilot.pause()
    await pilot.press("tab", "enter")
    await wait_for(pilot, lambda: isinstance(pilot.app.screen, DashboardScreen))
    await pilot.pause(0.2)
    return pilot.app.screen


def text_of(screen, selector: str) -> str:
    return str(screen.query_one(selector).render())


@run_async
async def test_the_dashboard_plots_and_lists_a_regression_runs_metrics(workdir: Path):
    write_events([*regression_run(), ev.RunFinished(step=30, reason="completed")])
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(120, 40)) as pilot:
        dash = await open_the_run(pilot)
        plot = dash.query_one("#acc-plot", CurvesPlot)
        assert plot.title == "val_mae"
        legend = Content.from_markup(plot.border_title).plain
        assert legend == "val_mae  ━ train  ━ val"  # the legend, off the curves
        assert [c.ys for c in plot.curves] == [[0.375, 0.125, 0.25], [0.5, 0.25, 0.375]]
        stats = text_of(dash, "#stats").splitlines()
        assert stats[-3:] == vm.metric_lines(dash.view)
        assert "regression" in text_of(dash, "#title")
        assert "finished: val mae 0.3750, best 0.2500" in text_of(dash, "#messages")


@run_async
async def test_a_long_metrics_list_leaves_the_curves_room_at_80x24(workdir: Path):
    names = ["acc", "top5", "f1", "precision", "recall", "auroc"]
    values = {f"val_{n}": 0.5 for n in names}
    write_events([started("classification", names), epoch_end(1, train_acc=0.6, **values)])
    for size in ((80, 24), (120, 40)):
        app = MptApp("profiles", "runs")
        async with app.run_test(size=size) as pilot:
            dash = await open_the_run(pilot)
            assert dash.query_one("#plots").size.height >= PLOT_LINES
            info = dash.query_one("#info")
            stats = text_of(dash, "#stats").splitlines()
            assert info.size.height == len(stats)  # every line shown, none clipped
            if size == (80, 24):
                assert stats[-1].startswith("+") and "auroc" in stats[-1]
            else:
                assert [line.split()[0] for line in stats[-6:]] == names
            bottom = dash.query_one("#messages").region.bottom
            assert bottom <= size[1] - 1  # the footer keeps its line


@run_async
async def test_an_old_runs_dashboard_keeps_its_accuracy_plot(workdir: Path):
    lines = [
        event_line("run_started", name="old", run_dir="x", epochs=2, total_steps=20),
        event_line("epoch_end", step=10, epochs=2, train_acc=0.8, val_acc=0.7, val_loss=0.3),
    ]
    write_run(Path("runs"), "old", "20260101-000000", lines)
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(120, 40)) as pilot:
        dash = await open_the_run(pilot)
        plot = dash.query_one("#acc-plot", CurvesPlot)
        assert plot.title == "val_acc" and [c.ys for c in plot.curves] == [[0.8], [0.7]]
        assert "acc     80.00%  70.00%  70.00% (ep 1)" in text_of(dash, "#stats")


# ---- the form ----


@run_async
async def test_the_task_tab_takes_names_lists_and_tables_and_saves_them_inline(workdir: Path):
    path = Path("profiles/quick.toml")
    app = MptApp("profiles", "runs", open_profile=str(path))
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        form = app.screen
        assert isinstance(form.row("task.kind").control, Select)
        for key in ("task.loss", "task.metrics", "data.dataset", "data.options"):
            assert isinstance(form.row(key).control, Input), key
        await set_text(pilot, "task.metrics", "acc, f1")
        await set_text(pilot, "task.class_weights", "balanced")
        await set_text(pilot, "optim.lr_mult", '"fc." = 10')
        await set_text(pilot, "checkpoint.monitor", "val_f1")
        await wait_for(pilot, lambda: form.profile is not None)
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert f"saved {path}" in str(form.query_one("#status").render())
    text = path.read_text()
    assert 'metrics = ["acc", "f1"]\nclass_weights = "balanced"\n' in text
    assert 'lr_mult = { "fc." = 10.0 }\n' in text and "[optim.lr_mult]" not in text
    p = load_profile(path)
    assert (p.task.metrics, p.task.class_weights) == (["acc", "f1"], "balanced")
    assert p.optim.lr_mult == {"fc.": 10.0} and p.checkpoint.monitor == "val_f1"


@run_async
async def test_a_monitor_the_task_does_not_report_is_marked_with_the_engines_message(
    workdir: Path,
):
    app = MptApp("profiles", "runs", open_profile="profiles/quick.toml")
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        form = app.screen
        await set_text(pilot, "early_stop.monitor", "val_mae")
        await wait_for(pilot, lambda: form.row("early_stop.monitor").error)
        assert form.row("early_stop.monitor").error.startswith("must be one of val_loss")


@run_async
async def test_a_dataset_is_typed_with_the_built_in_names_offered_as_you_type(workdir: Path):
    app = MptApp("profiles", "runs", open_profile="profiles/quick.toml")
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        form = app.screen
        help_text = str(form.row("data.dataset").query_one(".field-help").render())
        assert "digits, mnist" in help_text and '"package.module:function"' in help_text
        form.show_section("data", focus="data.dataset")
        control = form.row("data.dataset").control
        await wait_for(pilot, lambda: form.focused is control)
        await pilot.press("ctrl+a", "ctrl+k", "s", "y", "n")
        await wait_for(pilot, lambda: control._suggestion == "synthetic")
        await pilot.press("right")  # takes the suggestion
        assert control.value == "synthetic" and form.row("data.dataset").value == "synthetic"
        control.value = "mypkg.data:make"  # any import path is a name too
        await pilot.pause()
        await wait_for(pilot, lambda: not form.row("data.dataset").error)
        await set_text(pilot, "task.class_weights", "b")  # and a weights key offers "balanced"
        weights = form.row("task.class_weights").control
        await wait_for(pilot, lambda: weights._suggestion == "balanced")


@run_async
async def test_a_monitor_is_completed_from_what_the_task_in_the_form_reports(workdir: Path):
    app = MptApp("profiles", "runs", open_profile="profiles/quick.toml")
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        form = app.screen
        control = form.row("checkpoint.monitor").control
        await set_text(pilot, "checkpoint.monitor", "val_a")
        await wait_for(pilot, lambda: control._suggestion == "val_acc")  # classification
        await set_text(pilot, "task.metrics", "mae")
        form.row("task.kind").control.value = "regression"
        await set_text(pilot, "checkpoint.monitor", "val_m")
        await wait_for(pilot, lambda: control._suggestion == "val_mae")
        await pilot.press("right")
        assert control.value == "val_mae"


# ---- the runs list ----


def test_the_runs_list_shows_each_runs_best_headline_value():
    from engine.runs import RunSummary
    from tui.screens.home import best_cell

    old = RunSummary(Path("runs/a/1"), "a", "1", "finished", best_val_acc=0.9125)
    assert best_cell(old) == "91.25%"  # accuracy: the column's plain figure, as before
    new = RunSummary(Path("runs/b/1"), "b", "1", "finished")
    new.headline, new.best_headline = "val_mae", 0.312  # (RunSummary's issue 15 fields)
    assert best_cell(new) == "0.3120 mae"
    new.headline, new.best_headline = "val_f1", 0.951
    assert best_cell(new) == "95.10% f1"
    new.best_headline = None
    assert best_cell(new) == "-"


def test_a_starting_run_shows_its_profiles_task_until_run_started_says():
    from test_tui_session import FakeRun  # (tests/tui is on the path, as tui_helpers)

    from engine.profile import Profile
    from tui.session import RunSession

    run = FakeRun()
    run.profile = Profile()
    run.profile.task.kind, run.profile.task.metrics = "regression", []
    session = RunSession(run)
    assert (session.view.task, session.view.headline) == ("regression", "mae")
    assert vm.metric_lines(session.view)[1].split()[0] == "mae"  # the rows do not jump


# ---- the look ----


def finished_regression_run() -> list[str]:
    """A fine-tuned regression run of 6 epochs, fixed times: what the snapshots show."""
    t0 = 1_767_225_600.0
    events: list[ev.Event] = [started(time=t0, trainable_parameters=1290, epochs=6, total_steps=60)]
    for n in range(1, 7):
        for s in (5, 10):
            loss = 2 * math.exp(-(10 * (n - 1) + s) / 15) + 0.05
            step = ev.Step(step=10 * (n - 1) + s, epoch=n, time=t0 + 2 * n + s / 10, loss=loss)
            step.lr, step.samples_per_s, step.epoch_progress = 0.01, 900.0, s / 10
            events.append(step)
        mae = 1 / n + (0.25 if n == 6 else 0)  # worse at the end: the best stays at epoch 5
        end = epoch_end(n, train_mae=0.8 * mae, val_mae=mae, val_r2=1 - mae / 2)
        end.time, end.epochs = t0 + 2 * n + 1, 6
        events.append(end)
    events.append(ev.RunFinished(step=60, epoch=6, time=t0 + 14, reason="completed"))
    return [json.dumps(e.to_dict()) for e in events]


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_dashboard_of_a_regression_run(snap_compare, workdir: Path, size):
    write_run(Path("runs"), "fit", "20260101-000000", finished_regression_run())

    async def open_it(pilot):
        await pilot.press("tab", "enter")

    assert snap_compare(MptApp("profiles", "runs"), terminal_size=size, run_before=open_it)
