"""The event stream of a short real run: kinds, order, fields, events.jsonl, the run directory."""

from __future__ import annotations

import dataclasses
import json
import math
import pickle
import queue
import re
import threading
import time

import pytest
from conftest import BASE, merge, run_profile

from engine import events as ev
from engine.profile import load_profile

EPOCHS, LOG_EVERY, STEPS_PER_EPOCH = 2, 5, 23  # digits: 1438 training samples, batch 64
TOTAL = EPOCHS * STEPS_PER_EPOCH


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("events") / "runs"
    began = time.time()
    done = run_profile(
        merge(
            BASE,
            {
                "run": {"name": "short", "epochs": EPOCHS, "out_dir": str(out)},
                "train": {"log_every": LOG_EVERY},
            },
        ),
        write=True,
    )
    return done, out, began


def strict_json(line: str):
    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


# ---- kinds and order ----


def test_run_started_comes_first_and_run_finished_last(short_run):
    done, _, _ = short_run
    assert done.events[0].kind == "run_started"
    assert done.events[-1].kind == "run_finished"
    assert [e.kind for e in done.events].count("run_started") == 1
    assert [e.kind for e in done.events].count("run_finished") == 1


def test_only_known_kinds_and_nothing_that_signals_trouble(short_run):
    done, _, _ = short_run
    kinds = {e.kind for e in done.events}
    assert kinds <= set(ev.EVENT_TYPES)
    assert {"run_started", "step", "epoch_end", "run_finished"} <= kinds
    assert not kinds & {"run_failed", "warning", "paused", "resumed"}
    assert all(type(e) is ev.EVENT_TYPES[e.kind] for e in done.events)


def test_step_events_come_every_log_every_optimizer_steps(short_run):
    done, _, _ = short_run
    assert [e.step for e in done.of("step")] == list(range(LOG_EVERY, TOTAL + 1, LOG_EVERY))
    for e in done.of("step"):
        assert e.epoch == (e.step - 1) // STEPS_PER_EPOCH + 1


def test_one_epoch_end_per_epoch_after_its_last_step(short_run):
    done, _, _ = short_run
    ends = done.of("epoch_end")
    assert [(e.epoch, e.step, e.epochs) for e in ends] == [(1, 23, 2), (2, 46, 2)]
    order = [(e.kind, e.step) for e in done.events if e.kind in ("step", "epoch_end")]
    assert order.index(("epoch_end", 23)) == order.index(("step", 20)) + 1
    assert order.index(("step", 25)) == order.index(("epoch_end", 23)) + 1


def test_step_epoch_and_time_never_go_backwards(short_run):
    done, _, began = short_run
    for a, b in zip(done.events, done.events[1:], strict=False):
        assert (b.step, b.epoch) >= (a.step, a.epoch), (a, b)
        assert b.time >= a.time
    assert began <= done.events[0].time and done.events[-1].time <= time.time()


# ---- fields ----

DESIGN_FIELDS = {  # what DESIGN.md promises each kind carries, beyond kind/time/step/epoch
    "run_started": {"world_size", "global_batch", "mean", "std"},
    "step": {"loss", "lr", "samples_per_s", "gpu_mem_allocated", "gpu_mem_reserved",
             "gpu_mem_peak", "gpu_util", "gpu_temp", "gpu_power", "cpu_percent", "rss",
             "mem_available", "disk_free", "data_wait"},
    "epoch_end": {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"},
    "early_stop": {"monitor", "best", "wait", "patience"},
    "checkpoint_saved": {"path", "reason"},
    "trace_saved": {"path", "steps"},
    "paused": set(),
    "resumed": set(),
    "warning": {"message"},
    "run_finished": {"reason"},
    "run_failed": {"error", "traceback"},
}  # fmt: skip


def test_every_kind_of_the_design_has_its_record_type_with_its_fields():
    assert set(ev.EVENT_TYPES) == set(DESIGN_FIELDS)
    for kind, cls in ev.EVENT_TYPES.items():
        names = {f.name for f in dataclasses.fields(cls)}
        assert {"step", "epoch", "time"} | DESIGN_FIELDS[kind] <= names, kind
        assert cls.kind == kind


def test_every_event_carries_kind_time_step_and_epoch(short_run):
    done, _, _ = short_run
    for e in done.events:
        d = e.to_dict()
        assert isinstance(d["kind"], str) and isinstance(d["time"], float)
        assert isinstance(d["step"], int) and isinstance(d["epoch"], int) and d["epoch"] >= 1


def test_each_event_has_exactly_the_fields_of_its_kind(short_run):
    done, _, _ = short_run
    for e in done.events:
        declared = {f.name for f in dataclasses.fields(ev.EVENT_TYPES[e.kind])}
        if e.kind == "epoch_end":  # its metrics are written as keys of their own
            declared = declared - {"metrics"} | set(e.metrics)
            assert {"train_acc", "val_acc"} <= set(e.metrics)
        assert set(e.to_dict()) == {"kind"} | declared, e.kind


def test_run_started_describes_the_run(short_run):
    done, out, _ = short_run
    s = done.of("run_started")[0]
    assert (s.step, s.epoch, s.name, s.dataset, s.arch, s.device) == (
        0, 1, "short", "digits", "mlp", "cpu",
    )  # fmt: skip
    assert (s.train_samples, s.val_samples, s.num_classes, s.input_shape) == (
        1438,
        359,
        10,
        [1, 8, 8],
    )
    assert (s.epochs, s.steps_per_epoch, s.total_steps) == (EPOCHS, STEPS_PER_EPOCH, TOTAL)
    assert s.parameters == 64 * 64 + 64 + 64 * 10 + 10
    assert s.run_dir == str(done.run.run_dir)


def test_step_events_report_loss_lr_and_throughput(short_run):
    done, _, _ = short_run
    for e in done.of("step"):
        assert math.isfinite(e.loss) and e.loss > 0
        assert e.lr == 0.01  # sgd's default lr, no schedule
        assert e.samples_per_s > 0
        assert 0 < e.epoch_progress <= 1
        assert e.gpu_mem_allocated is None  # the CPU has no GPU memory to report
    losses = [e.loss for e in done.of("step")]
    assert losses[-1] < losses[0]


def test_epoch_end_reports_train_and_val_metrics(short_run):
    done, _, _ = short_run
    for e in done.of("epoch_end"):
        assert e.train_loss > 0 and 0 <= e.train_acc <= 1
        assert e.val_loss > 0 and 0 <= e.val_acc <= 1
        assert e.lr == 0.01 and e.seconds > 0 and e.samples_per_s > 0


def test_run_finished_sums_up_the_run(short_run):
    done, _, _ = short_run
    f = done.of("run_finished")[0]
    ends = done.of("epoch_end")
    assert (f.reason, f.step, f.epoch) == ("completed", TOTAL, EPOCHS)
    assert f.final_val_acc == ends[-1].val_acc and f.final_val_loss == ends[-1].val_loss
    assert f.best_val_acc == max(e.val_acc for e in ends)
    assert f.seconds > 0 and done.reason == "completed"


# ---- serialisation and events.jsonl ----


def test_events_jsonl_holds_exactly_what_came_off_the_queue(short_run):
    done, _, _ = short_run
    lines = (done.run.run_dir / "events.jsonl").read_text().splitlines()
    assert [strict_json(line) for line in lines] == [e.to_dict() for e in done.events]


def test_events_read_back_from_the_file_equal_the_originals(short_run):
    done, _, _ = short_run
    assert ev.read_events(done.run.run_dir / "events.jsonl") == done.events


def test_events_are_picklable(short_run):
    done, _, _ = short_run
    assert pickle.loads(pickle.dumps(done.events)) == done.events


def test_events_jsonl_is_strict_json_even_for_a_non_finite_loss(tmp_path):
    # A diverging fp16 run reports loss = inf or nan; JSON has no NaN or Infinity, and
    # tools that read events.jsonl (jq, browsers, other languages) reject those tokens.
    log = ev.EventLog(queue.Queue(), tmp_path / "events.jsonl")
    log.emit(ev.Step(step=1, epoch=1, loss=float("nan"), lr=0.1))
    log.emit(ev.EpochEnd(step=1, epoch=1, train_loss=float("inf"), val_loss=float("nan")))
    log.close()
    for line in (tmp_path / "events.jsonl").read_text().splitlines():
        strict_json(line)


def test_event_log_never_blocks_on_an_unread_queue(tmp_path):
    log = ev.EventLog(queue.Queue(), tmp_path / "events.jsonl")

    def emit_all() -> None:
        for step in range(20_000):
            log.emit(ev.Step(step=step, epoch=1))
        log.close()

    # (a blocked emit would hold the thread forever; 120 s is only a bound on a slow box)
    emitter = threading.Thread(target=emit_all, daemon=True)
    emitter.start()
    emitter.join(timeout=120)
    assert not emitter.is_alive(), "emit blocked on a queue nobody reads"
    assert log.queue.qsize() == 20_000


# ---- the run directory ----


def test_run_directory_is_out_dir_name_timestamp(short_run):
    done, out, _ = short_run
    run_dir = done.run.run_dir
    assert run_dir.parent == out / "short"
    assert re.fullmatch(r"\d{8}-\d{6}(-\d+)?", run_dir.name)
    assert time.strptime(run_dir.name[:15], "%Y%m%d-%H%M%S")
    assert {"profile.toml", "events.jsonl"} <= {p.name for p in run_dir.iterdir()}


def test_profile_toml_reloads_to_the_profile_that_ran(short_run):
    done, _, _ = short_run
    assert load_profile(done.run.run_dir / "profile.toml") == done.run.profile


def test_two_runs_started_in_the_same_second_get_their_own_directories(train, out_dir):
    first = train({"run": {"max_steps": 1}}, write=True)
    second = train({"run": {"max_steps": 1}}, write=True)
    assert first.run.run_dir != second.run.run_dir
    assert first.run.run_dir.parent == second.run.run_dir.parent == out_dir / "run"


def test_without_writing_nothing_is_created(train, out_dir):
    done = train({"run": {"max_steps": 2}}, write=False)
    assert done.run.run_dir is None and not out_dir.exists()


def test_a_run_that_fails_in_setup_emits_only_run_failed(train):
    # cnn needs images of at least 2x2: a model error found before any training.
    done = train(
        {"data": {"dataset": "synthetic", "synthetic_shape": [1, 1, 1]}, "model": {"arch": "cnn"}},
        check=False,
        write=True,
    )
    assert [e.kind for e in done.events] == ["run_failed"]
    (failed,) = done.events
    assert failed.user_error and failed.traceback == ""
    assert failed.error == "model.arch 'cnn' needs images of at least 2x2, got (1, 1)"
    assert not done.run.run_dir.exists()  # a mistake found before training writes nothing
