"""The dashboard's view-model: built from events by plain code, tested without a terminal."""

from __future__ import annotations

import math

from engine import events as ev
from tui.viewmodel import (
    MAX_POINTS,
    RunView,
    Series,
    build_view,
    early_stop_lines,
    format_bytes,
    format_duration,
    memory_lines,
    metric_lines,
    path_lines,
    progress_lines,
    stats_lines,
    title_line,
)

T0 = 1_700_000_000.0
RUN_DIR = "runs/quick/20260101-000000"


def started(**kw) -> ev.RunStarted:
    fields = dict(
        time=T0,
        run_dir=RUN_DIR,
        name="quick",
        device="cpu",
        dataset="digits",
        arch="mlp",
        parameters=9610,
        epochs=3,
        steps_per_epoch=45,
        total_steps=135,
    )
    fields.update(kw)
    return ev.RunStarted(**fields)


def step(n: int, t: float, loss: float = 1.0, **kw) -> ev.Step:
    return ev.Step(
        step=n,
        epoch=1 + (n - 1) // 45,
        time=T0 + t,
        loss=loss,
        lr=1e-3,
        samples_per_s=1000.0,
        epoch_progress=((n - 1) % 45 + 1) / 45,
        **kw,
    )


def epoch_end(n: int, t: float, val_acc: float, val_loss: float = 0.5) -> ev.EpochEnd:
    return ev.EpochEnd(
        step=45 * n,
        epoch=n,
        epochs=3,
        time=T0 + t,
        train_loss=0.6,
        train_acc=0.8,
        val_loss=val_loss,
        val_acc=val_acc,
        lr=1e-3,
    )


def test_a_run_in_progress_shows_its_progress_pace_and_eta():
    v = build_view([started(), step(10, 1.0), step(20, 2.0)])
    assert v.state == "running" and v.live
    assert (v.epoch, v.step, v.total_steps) == (1, 20, 135)
    # 20 steps in 2 s: 115 steps left take 11.5 s
    assert v.eta_seconds == 11.5
    first, second = progress_lines(v, 80)
    assert "epoch 1/3" in first and "step 20/135" in first
    assert "1,000 samples/s" in second and "ETA 0:12" in second and "elapsed 0:02" in second


def test_pauses_are_left_out_of_the_pace():
    v = build_view(
        [
            started(),
            step(10, 1.0),
            ev.Paused(step=10, time=T0 + 1.0),
            ev.Resumed(step=10, time=T0 + 101.0),
            step(20, 102.0),
        ]
    )
    assert v.active_seconds == 2.0
    assert v.eta_seconds == 11.5


def test_paused_and_resumed_are_said_in_the_messages():
    v = build_view([started(), step(10, 1.0), ev.Paused(step=10, time=T0 + 1.0)])
    assert v.state == "paused"
    assert v.messages[-1] == "step 10: paused"
    v.apply(ev.Resumed(step=10, time=T0 + 5))
    assert v.state == "running"
    assert v.messages[-1] == "step 10: resumed"


def test_a_pause_between_step_reports_shows_the_step_it_holds_at():
    # log_every 10: the last step event said 10, the run paused after step 11
    v = build_view([started(), step(10, 1.0), ev.Paused(step=11, time=T0 + 1.0)])
    assert v.step == 11
    assert "step 11/" in progress_lines(v)[0]


def test_epoch_metrics_make_the_curves_and_the_best():
    v = build_view([started(), epoch_end(1, 1, 0.8), epoch_end(2, 2, 0.9), epoch_end(3, 3, 0.85)])
    assert v.val_acc.points() == ([1, 2, 3], [0.8, 0.9, 0.85])
    assert (v.best_val_acc, v.best_epoch) == (0.9, 2)
    assert metric_lines(v)[1].endswith("  90.00% (ep 2)")  # the acc row's best val


def test_step_losses_are_placed_in_epochs_on_the_x_axis():
    v = build_view([started(), step(45, 1.0), step(90, 2.0)])
    assert v.train_loss.points() == ([1.0, 2.0], [1.0, 1.0])


def test_non_finite_values_stay_out_of_the_curves_but_not_out_of_the_text():
    v = build_view([started(), step(5, 1.0, loss=math.nan), step(10, 2.0, loss=1.5)])
    assert v.train_loss.points() == ([10 / 45], [1.5])
    v.apply(step(15, 3.0, loss=math.inf))
    assert "inf" in stats_lines(v)[0]


def test_memory_says_cpu_without_a_gpu_and_shows_the_four_figures_with_one():
    v = build_view([started(), step(10, 1.0)])
    assert memory_lines(v)[0] == "memory  CPU"
    gib = 1024**3
    v.apply(
        step(
            20,
            2.0,
            gpu_mem_allocated=gib,
            gpu_mem_reserved=2 * gib,
            gpu_mem_peak=3 * gib // 2,
            gpu_mem_total=80 * gib,
        )
    )
    assert memory_lines(v) == [
        "GPU mem alloc 1.0 GiB  reserved 2.0 GiB",
        "        peak 1.5 GiB  total 80.0 GiB",
    ]


def test_nvml_utilisation_temperature_and_power_join_the_memory_figures_when_reported():
    gib = 1024**3
    v = build_view([started()])
    v.apply(
        step(
            10,
            1.0,
            gpu_mem_allocated=gib,
            gpu_mem_reserved=gib,
            gpu_mem_peak=gib,
            gpu_mem_total=80 * gib,
            gpu_util=87,
            gpu_temp=64,
            gpu_power=251.4,
        )
    )
    assert memory_lines(v)[1] == "        peak 1.0 GiB  total 80.0 GiB  87% 64°C 251 W"


def test_early_stopping_state_comes_from_early_stop_events():
    v = build_view([started()])
    assert early_stop_lines(v)[0] == "early stop  -"
    v.apply(ev.EarlyStop(monitor="val_loss", value=0.31, best=0.3, wait=2, patience=5, time=T0 + 1))
    assert early_stop_lines(v) == [
        "early stop  val_loss, patience 5",
        "  now 0.3100  best 0.3000  wait 2/5",
    ]
    v.apply(
        ev.EarlyStop(
            monitor="val_loss",
            value=0.32,
            best=0.3,
            wait=5,
            patience=5,
            stopping=True,
            why="patience",
            time=T0 + 2,
        )
    )
    assert "STOPPING (patience)" in early_stop_lines(v)[0]
    assert "early stop: patience" in v.messages[-1]


def test_checkpoints_show_their_path_and_links_of_one_step_share_a_line():
    v = build_view([started()])
    ckpt = f"{RUN_DIR}/checkpoints"
    v.apply(ev.CheckpointSaved(step=45, path=f"{ckpt}/step-000045.pt", reason="epoch"))
    v.apply(ev.CheckpointSaved(step=45, path=f"{ckpt}/best.pt", reason="best"))
    assert v.last_checkpoint == f"{ckpt}/step-000045.pt"
    assert list(v.messages)[-1] == (
        "step 45: checkpoint saved: checkpoints/step-000045.pt (epoch), checkpoints/best.pt (best)"
    )
    assert path_lines(v) == [
        f"run dir     {RUN_DIR}",
        "checkpoint  checkpoints/step-000045.pt (epoch)",  # (events before best.pt's monitor)
    ]
    v.apply(ev.CheckpointSaved(step=50, path=f"{ckpt}/step-000050.pt", reason="requested"))
    assert (
        list(v.messages)[-1] == "step 50: checkpoint saved: checkpoints/step-000050.pt (requested)"
    )


def test_best_pt_says_its_monitor_and_value_beside_the_last_checkpoint():
    # The metric panel's "best val" is the headline's (val_acc); best.pt follows
    # checkpoint.monitor (val_loss): the paths panel says what best.pt holds.
    v = build_view([started(), epoch_end(1, 5, 0.90, 0.30), epoch_end(2, 10, 0.93, 0.35)])
    ckpt = f"{RUN_DIR}/checkpoints"
    best = dict(path=f"{ckpt}/best.pt", reason="best", monitor="val_loss", value=0.30)
    v.apply(ev.CheckpointSaved(step=45, epoch=1, **best))
    v.apply(ev.CheckpointSaved(step=90, epoch=2, path=f"{ckpt}/step-000090.pt", reason="epoch"))
    assert path_lines(v)[1] == (
        "checkpoint  checkpoints/step-000090.pt (epoch) · best.pt ep 1 val_loss 0.3000"
    )


def test_routine_checkpoints_share_one_line_and_never_push_a_pause_out():
    # At 80x24 the panel shows 3 lines: a checkpoint every epoch pushed "paused" away
    v = build_view([started(), step(10, 1)])
    v.apply(ev.Paused(step=12, time=T0 + 2))
    ckpt = f"{RUN_DIR}/checkpoints"
    for n in range(1, 6):
        v.apply(
            ev.CheckpointSaved(step=45 * n, path=f"{ckpt}/step-{45 * n:06d}.pt", reason="epoch")
        )
    assert list(v.messages)[-2:] == [
        "step 12: paused",
        "step 225: checkpoint saved: checkpoints/step-000225.pt (epoch)",
    ]
    v.messages.append("pause requested: takes effect after the current step")  # the keys'
    v.apply(ev.CheckpointSaved(step=270, path=f"{ckpt}/step-000270.pt", reason="epoch"))
    v.apply(ev.CheckpointSaved(step=270, path=f"{ckpt}/best.pt", reason="best"))
    v.apply(ev.CheckpointSaved(step=275, path=f"{ckpt}/step-000275.pt", reason="requested"))
    assert list(v.messages)[-3:] == [
        "pause requested: takes effect after the current step",
        "step 270: checkpoint saved: checkpoints/step-000270.pt (epoch), "
        "checkpoints/best.pt (best)",
        "step 275: checkpoint saved: checkpoints/step-000275.pt (requested)",
    ]


def test_a_stopped_run_says_stopped():
    v = build_view(
        [started(), step(10, 1.0), ev.RunFinished(step=10, reason="stopped", time=T0 + 2)]
    )
    assert v.state == "stopped" and not v.live
    assert v.eta_seconds is None
    assert v.messages[-1] == "step 10: stopped"
    assert "STOPPED" in title_line(v)


def test_a_failed_run_keeps_its_error_and_traceback():
    v = build_view(
        [started(), ev.RunFailed(step=3, error="ValueError: boom", traceback="Traceback...\nboom")]
    )
    assert v.state == "failed" and not v.live
    assert v.error == "ValueError: boom"
    assert v.messages[-1] == "step 3: failed: ValueError: boom"


def test_warnings_are_counted_in_the_title_and_listed():
    v = build_view([started(), ev.Warning(message="resume changes optim.lr")])
    assert v.warnings == ["resume changes optim.lr"]
    assert title_line(v).endswith("1 warning")
    assert v.messages[-1] == "step 0: warning: resume changes optim.lr"


def test_a_resumed_run_continues_the_history_curves():
    history = [started(), step(45, 1.0), epoch_end(1, 1.5, 0.8)]
    v = build_view(history)
    v.apply(started(step=45, epoch=2, time=T0 + 100))
    v.apply(step(90, 101.0))
    v.apply(epoch_end(2, 101.5, 0.9))
    assert v.val_acc.points() == ([1, 2], [0.8, 0.9])
    assert v.state == "running"
    assert "resumed training at epoch 2" in " ".join(v.messages)
    assert v.eta_seconds == 45 * 1.5 / 45  # the pace of this session only


def test_the_same_events_give_the_same_view():
    events = [started(), step(10, 1.0), epoch_end(1, 2, 0.8)]
    a, b = build_view(events), build_view(events)
    assert progress_lines(a) == progress_lines(b) and list(a.messages) == list(b.messages)


def test_a_series_stays_bounded_and_keeps_the_newest_point():
    s = Series(max_points=100)
    for i in range(10_000):
        s.add(float(i), float(i))
    xs, ys = s.points()
    assert len(xs) <= 101
    assert xs[-1] == 9999.0 and xs[0] == 0.0
    assert xs == sorted(xs)


def test_formatting_helpers():
    assert format_bytes(None) == "-"
    assert format_bytes(512) == "512 B"
    assert format_bytes(3 * 1024**2) == "3.0 MiB"
    assert format_duration(None) == "-"
    assert format_duration(59.6) == "1:00"
    assert format_duration(3725) == "1:02:05"
    assert MAX_POINTS >= 100
    assert RunView().state == "starting"


def test_samples_per_s_is_averaged_over_seconds_not_one_window():
    # issue 16: the dashboard jumped 2,524 -> 146,070 -> 3,626 one second apart
    def rate(n: int, t: float, value: float) -> ev.Step:
        return ev.Step(step=n, epoch=1, time=T0 + t, loss=1.0, lr=1e-3, samples_per_s=value)

    v = build_view([started(), rate(1, 1, 699.0)])
    assert v.samples_per_s is None  # the first window holds the start-up: no pace yet
    shown = []
    for i, value in enumerate([2524.0, 146070.0, 3626.0, 2600.0, 2500.0], start=2):
        v.apply(rate(i, i, value))
        shown.append(v.samples_per_s)
    assert shown[0] == 2524.0
    assert max(shown) < 40_000  # one outlier moves it by a fifth of its jump at most
    assert 2500 < shown[-1] < 30_000 and shown[-1] < shown[1]
    assert "samples/s" in progress_lines(v)[1]
