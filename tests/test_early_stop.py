"""Early stopping, and runs that stop because the loss is no longer a number.

The early-stopping rule, as the profile's help text states it: after each validation
the monitored value improves when it beats the best so far by more than min_delta (in
the mode's direction); `wait` counts validations since the last improvement; the run
stops when wait reaches patience, or at once when the value crosses stop_above or
stop_below. `expected()` below writes that rule out, and each test holds the engine's
early_stop events to it on a real run.
"""

from __future__ import annotations

import math
import re
from itertools import pairwise

import pytest
import torch
from durable_helpers import (
    assert_same,
    load,
    metrics,
    mpt,
    profile_dict,
    train,
    write_toml,
)

# Adam at a high rate on digits: the validation loss wanders up and down, so every
# option has something to act on within a few epochs of 23 steps.
NOISY = {
    "run": {"name": "es", "epochs": 12},
    "optim": {"name": "adam", "lr": 0.05},
    "train": {"log_every": 100},
}
SPE = 23


def expected(values, mode, patience, min_delta=0.0, stop_above=None, stop_below=None):
    """[(best, wait, why)] per validation until the run stops."""
    best, wait, out = None, 0, []
    for v in values:
        if math.isfinite(v) and (
            best is None or (v < best - min_delta if mode == "min" else v > best + min_delta)
        ):
            best, wait = v, 0
        else:
            wait += 1
        why = ""
        if stop_above is not None and v > stop_above:
            why = "stop_above"
        elif stop_below is not None and v < stop_below:
            why = "stop_below"
        elif wait and wait >= patience:
            why = "patience"
        out.append((best, wait, why))
        if why:
            break
    return out


def early_stop_run(tmp_path, **options):
    es = {"enabled": True, "patience": 2, **options}
    return train(profile_dict(tmp_path, NOISY, {"early_stop": es}))


def observed(done):
    return [(e.best, e.wait, e.why) for e in done.of("early_stop")]


def monitored(done, monitor):
    return [getattr(e, monitor) for e in done.of("epoch_end")]


# ---- patience, with the shared run of this module ----


@pytest.fixture(scope="module")
def patient(tmp_path_factory):
    """val_loss, patience 2, restore_best; a checkpoint every 10 steps, all kept."""
    out = tmp_path_factory.mktemp("patient")
    data = profile_dict(
        out,
        NOISY,
        {"early_stop": {"enabled": True, "patience": 2, "restore_best": True}},
        {"checkpoint": {"every_steps": 10, "keep_last": 0}},
    )
    return train(data)


def test_patience_stops_after_exactly_patience_non_improving_validations(patient):
    values = monitored(patient, "val_loss")
    want = expected(values, "min", patience=2)

    assert observed(patient) == want
    assert [e.wait for e in patient.of("early_stop")].count(1) >= 2  # wait was reset before
    assert len(values) == len(want) < NOISY["run"]["epochs"]
    assert patient.reason == "early_stopped"
    last = patient.of("early_stop")[-1]
    assert (last.stopping, last.why, last.wait, last.patience) == (True, "patience", 2, 2)
    assert [e.stopping for e in patient.of("early_stop")[:-1]] == [False] * (len(want) - 1)


def test_early_stop_events_carry_monitor_value_best_wait_and_patience(patient):
    values = monitored(patient, "val_loss")
    for e, v in zip(patient.of("early_stop"), values, strict=True):
        assert (e.monitor, e.value, e.patience) == ("val_loss", v, 2)
        assert e.best == min(values[: e.epoch])


def test_restore_best_leaves_the_best_epochs_weights(patient):
    events = patient.of("early_stop")
    best_epoch = next(e for e in events if e.value == events[-1].best)
    assert best_epoch.epoch < events[-1].epoch
    best_ckpt = patient.ckpt_dir / f"step-{best_epoch.step:06d}.pt"

    final = patient.run.model.state_dict()

    assert_same(final, load(best_ckpt)["model"])
    assert patient.of("run_finished")[0].final_val_loss == best_epoch.value


def test_every_checkpoint_holds_the_early_stop_state_as_of_its_step(patient):
    lines = patient.jsonl()
    files = sorted(patient.ckpt_dir.glob("step-*.pt"))
    assert len(files) > 10
    for path in files:
        state = load(path)
        history = lines[: state["progress"]["events"]]
        seen = [e for e in history if e["kind"] == "early_stop"]
        want = (seen[-1]["best"], seen[-1]["wait"]) if seen else (None, 0)
        assert (state["early_stop"]["best"], state["early_stop"]["wait"]) == want, path.name


def test_resumed_run_stops_at_the_same_epoch_with_the_same_early_stop_state(patient):
    # A checkpoint inside the epoch after a non-improving validation: wait is 1 there.
    ckpt = next(
        p
        for p in sorted(patient.ckpt_dir.glob("step-*.pt"))
        if (s := load(p))["early_stop"]["wait"] == 1 and s["progress"]["group"] > 0
    )

    again = train(resume=ckpt)

    assert again.reason == "early_stopped"
    assert again.of("run_finished")[0].epoch == patient.of("run_finished")[0].epoch
    assert metrics(again.jsonl()) == metrics(patient.jsonl())
    assert early_stop_records(again.jsonl()) == early_stop_records(patient.jsonl())
    assert_same(again.run.model.state_dict(), patient.run.model.state_dict())


def early_stop_records(lines):
    return [
        (e["epoch"], e["value"], e["best"], e["wait"], e["why"])
        for e in lines
        if e["kind"] == "early_stop"
    ]


# ---- monitor and mode ----


@pytest.mark.parametrize(
    ("monitor", "mode", "direction"),
    [
        ("val_loss", "max", "max"),
        ("val_acc", "auto", "max"),
        ("val_acc", "min", "min"),
        ("train_loss", "auto", "min"),
    ],
)
def test_monitor_and_mode_decide_what_counts_as_better(tmp_path, monitor, mode, direction):
    done = early_stop_run(tmp_path, monitor=monitor, mode=mode)
    values = monitored(done, monitor)
    want = expected(values, direction, patience=2)

    assert [e.monitor for e in done.of("early_stop")] == [monitor] * len(want)
    assert observed(done) == want
    assert done.reason == "early_stopped"
    best = max if direction == "max" else min
    assert done.of("early_stop")[-1].best == best(values)


def test_min_delta_ignores_improvements_smaller_than_it(tmp_path):
    done = early_stop_run(tmp_path, min_delta=0.03)
    values = monitored(done, "val_loss")

    assert observed(done) == expected(values, "min", patience=2, min_delta=0.03)
    # Some validation beat the best, but by less than min_delta: it did not count.
    assert any(
        v < best and v >= best - 0.03
        for v, (best, _, _) in zip(values[1:], observed(done), strict=False)
    )
    assert done.reason == "early_stopped"


@pytest.mark.parametrize(
    ("monitor", "threshold"),
    [("val_acc", {"stop_above": 0.96}), ("val_loss", {"stop_below": 0.145})],
    ids=["stop_above", "stop_below"],
)
def test_threshold_stops_at_the_first_validation_past_it(tmp_path, monitor, threshold):
    done = early_stop_run(tmp_path, monitor=monitor, patience=20, **threshold)
    values = monitored(done, monitor)
    mode = "max" if monitor == "val_acc" else "min"

    want = expected(values, mode, patience=20, **threshold)
    assert observed(done) == want
    assert len(want) >= 2  # not the first validation: the threshold was really waited for
    assert done.of("early_stop")[-1].why == next(iter(threshold))
    assert done.reason == "early_stopped"
    assert done.of("run_finished")[0].reason == "early_stopped"


# ---- non-finite values ----

# fp16 with a far too high rate: after the first step every forward pass overflows
# fp16, so the losses are NaN (the GradScaler skips those steps).
OVERFLOW_FP16 = {"precision": {"mode": "fp16"}, "optim": {"name": "sgd", "lr": 1000.0}}


def test_check_finite_fails_the_run_on_a_nan_monitored_value(tmp_path):
    done = train(
        profile_dict(tmp_path, OVERFLOW_FP16, {"early_stop": {"enabled": True}}), check=False
    )
    assert done.reason == "failed"
    (failed,) = done.of("run_failed")
    assert failed.error.startswith("early_stop.monitor: val_loss is nan after epoch 1; ")
    assert failed.traceback == ""


def test_without_check_finite_a_nan_value_never_improves_and_patience_stops(tmp_path):
    done = train(
        profile_dict(
            tmp_path,
            OVERFLOW_FP16,
            {"run": {"epochs": 5}},
            {"early_stop": {"enabled": True, "check_finite": False, "patience": 2}},
        )
    )
    assert done.reason == "early_stopped"
    assert observed(done) == [(None, 1, ""), (None, 2, "patience")]


FAIL_SENTENCE = re.compile(
    r"the training loss became (nan|inf) by step (\d+); lower optim\.lr, set "
    r'train\.clip_norm, or set train\.nonfinite = "skip" to skip such steps'
)
HUGE_LR = {"run": {"epochs": 2}, "optim": {"name": "sgd", "lr": 1e6}}


def test_nonfinite_loss_fails_the_run_with_one_sentence(tmp_path):
    done = train(profile_dict(tmp_path, HUGE_LR), check=False)

    assert done.reason == "failed"
    (failed,) = done.of("run_failed")
    assert FAIL_SENTENCE.fullmatch(failed.error), failed.error
    assert failed.traceback == ""
    assert done.of("run_finished") == []


def test_nonfinite_loss_leaves_no_checkpoint_with_nonfinite_weights(tmp_path):
    # A checkpoint every step, the loss looked at only when saving: the save after the
    # step whose loss overflowed must be refused, and every earlier one must be finite.
    done = train(
        profile_dict(
            tmp_path,
            HUGE_LR,
            {"train": {"log_every": 1000}, "checkpoint": {"every_steps": 1, "keep_last": 0}},
        ),
        check=False,
    )
    assert done.reason == "failed"
    failed_at = int(FAIL_SENTENCE.fullmatch(done.of("run_failed")[0].error).group(2))
    files = done.step_files()
    assert files[-1] == f"step-{failed_at - 1:06d}.pt"
    for name in [*files, "last.pt"]:
        state = load(done.ckpt_dir / name)
        assert all(torch.isfinite(t).all() for t in state["model"].values()), name


def test_mpt_run_exits_1_with_one_error_line_on_a_nonfinite_loss(tmp_path):
    profile = write_toml(tmp_path / "p.toml", profile_dict(tmp_path / "runs", HUGE_LR))

    r = mpt("run", profile, cwd=tmp_path)

    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert FAIL_SENTENCE.fullmatch(lines[0].removeprefix("error: "))


def test_nonfinite_skip_goes_on_and_counts_skipped_steps(tmp_path):
    done = train(profile_dict(tmp_path, HUGE_LR, {"train": {"nonfinite": "skip"}}))

    assert done.reason == "completed"
    skipped = [e.skipped_steps for e in done.of("step")]
    assert skipped == sorted(skipped) and skipped[-1] > 0
    assert skipped[0] == 0
    final = load(done.ckpt_dir / "last.pt")
    assert all(torch.isfinite(t).all() for t in final["model"].values())


def test_nonfinite_skip_never_reports_a_zero_loss_for_skipped_steps(tmp_path):
    done = train(profile_dict(tmp_path, HUGE_LR, {"train": {"nonfinite": "skip", "log_every": 1}}))
    steps = done.of("step")
    skipped_only = [b for a, b in pairwise(steps) if b.skipped_steps > a.skipped_steps]
    assert skipped_only, "no step was skipped"
    # With log_every = 1 such an event covers one skipped step and no trained sample.
    for e in skipped_only:
        assert e.loss is None or math.isnan(e.loss), f"step {e.step} reports loss {e.loss}"


def test_fp16_overflow_skips_steps_and_counts_each_scale_backoff(tmp_path):
    done = train(profile_dict(tmp_path, OVERFLOW_FP16, {"run": {"epochs": 1}}))

    assert done.reason == "completed"
    skipped = done.of("step")[-1].skipped_steps
    assert skipped > 0
    scale = load(done.ckpt_dir / "last.pt")["scaler"]["scale"]
    assert scale == 65536.0 / 2**skipped  # each skipped step halved the loss scale


def test_fp16_with_a_sane_lr_skips_no_steps(tmp_path):
    done = train(profile_dict(tmp_path, {"precision": {"mode": "fp16"}, "run": {"max_steps": 20}}))
    assert [e.skipped_steps for e in done.of("step")] == [0] * 20
    assert load(done.ckpt_dir / "last.pt")["scaler"]["scale"] == 65536.0
