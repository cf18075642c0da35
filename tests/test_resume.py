"""Resume: a run continued from a checkpoint is the run that never stopped, bit for bit.

DESIGN.md, Checkpoints: "Resuming from a checkpoint taken at step k and training to
step N gives the same weights, bit for bit on the CPU, as training to N without
stopping. Resume may change what is safe to change (epochs, lr, patience, logging) and
says so in a warning; it refuses what is not (model architecture, dataset)."
"""

from __future__ import annotations

from pathlib import Path

import pytest
from durable_helpers import (
    MNIST_NPZ,
    assert_same,
    load,
    merge,
    metrics,
    mpt,
    printed_run_dir,
    profile_dict,
    read_jsonl,
    train,
)

# Everything that draws random numbers or carries state across steps, at once:
# shuffling, dropout, crop+flip augmentation, accumulation, a warmup+cosine schedule,
# AdamW's moments. 23 micro-batches of 64 -> 12 optimizer steps an epoch.
EXACT = {
    "run": {"name": "exact", "epochs": 3},
    "data": {"hflip": True, "random_crop": 1},
    "model": {"dropout": 0.2},
    "optim": {"name": "adamw", "lr": 0.005, "weight_decay": 0.01},
    "schedule": {"name": "cosine", "warmup_steps": 5},
    "train": {"grad_accum": 2, "log_every": 1},
    "checkpoint": {"every_steps": 6, "keep_last": 0},
}
STEPS_PER_EPOCH = 12
ARCHS = {
    "mlp": {"model": {"arch": "mlp", "hidden": [32]}},
    "cnn": {"model": {"arch": "cnn", "channels": [8, 8], "hidden": [32]}},
}
K_AT_EPOCH_END = 12  # the last step of epoch 1 (saved again after its validation)
K_MID_EPOCH = 18  # half-way through epoch 2


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """straight(arch, precision) -> the uninterrupted run, trained once per module."""
    done = {}

    def get(arch: str, precision: str):
        if (arch, precision) not in done:
            out = tmp_path_factory.mktemp(f"straight-{arch}-{precision}")
            data = profile_dict(out, EXACT, ARCHS[arch], {"precision": {"mode": precision}})
            done[arch, precision] = train(data)
        return done[arch, precision]

    return get


def final_state(done) -> dict:
    """The weights in memory at the end, and the final checkpoint (its optimizer too)."""
    saved = load(done.ckpt_dir / "last.pt")
    saved.pop("time")
    # The count of events.jsonl lines is bookkeeping, not training state: a resumed log
    # has its own run_started line, and a straight one may announce a checkpoint twice
    # (epoch and best). The logged metrics are compared line by line instead.
    saved["progress"].pop("events")
    return {
        "model": done.run.model.state_dict(),
        "last.pt": saved,
    }


def test_straight_run_with_every_steps_and_keep_last_0_keeps_every_step_checkpoint(straight):
    done = straight("mlp", "fp32")
    assert done.step_files() == [f"step-{s:06d}.pt" for s in range(6, 37, 6)]


@pytest.mark.parametrize("k", [K_AT_EPOCH_END, K_MID_EPOCH], ids=["epoch_end", "mid_epoch"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("arch", ["mlp", "cnn"])
def test_resumed_run_matches_straight_run_bit_for_bit(straight, arch, precision, k):
    first = straight(arch, precision)
    ckpt = first.ckpt_dir / f"step-{k:06d}.pt"
    progress = load(ckpt)["progress"]
    assert progress["step"] == k
    assert progress["group"] == k % STEPS_PER_EPOCH  # 0 at an epoch end, else inside one

    again = train(resume=ckpt)

    assert again.of("run_started")[0].resumed_from == str(ckpt)
    assert_same(final_state(again), final_state(first))
    assert metrics(again.jsonl()) == metrics(first.jsonl())


def test_resumed_events_jsonl_starts_with_the_history_up_to_the_checkpoint(straight):
    first = straight("mlp", "fp32")
    ckpt = first.ckpt_dir / f"step-{K_MID_EPOCH:06d}.pt"
    n = load(ckpt)["progress"]["events"]
    assert 0 < n < len(first.lines())

    again = train(resume=ckpt)

    lines = again.lines()
    assert lines[:n] == first.lines()[:n]
    assert again.jsonl()[n]["kind"] == "run_started"
    assert again.jsonl()[n]["step"] == K_MID_EPOCH


def test_resume_in_a_fresh_process_with_mpt_run_matches_straight_run(straight, tmp_path):
    first = straight("mlp", "fp32")
    ckpt = first.ckpt_dir / f"step-{K_MID_EPOCH:06d}.pt"

    r = mpt("run", "--resume", ckpt, cwd=tmp_path)

    assert r.returncode == 0, r.stderr
    resumed = printed_run_dir(r.stdout)
    assert resumed.parent == first.run_dir.parent
    a, b = load(first.ckpt_dir / "last.pt"), load(resumed / "checkpoints" / "last.pt")
    for state in (a, b):
        state.pop("time"), state["progress"].pop("events")  # see final_state
    assert_same(b, a)
    assert metrics(read_jsonl(resumed / "events.jsonl")) == metrics(first.jsonl())


def test_resume_from_an_epochs_last_step_saved_before_its_validation_matches(tmp_path):
    # every_epochs = 0: step-000012.pt is the periodic save after the epoch's last step,
    # taken before validation; resuming must validate that epoch, not skip it.
    data = profile_dict(
        tmp_path,
        EXACT,
        ARCHS["mlp"],
        {"run": {"epochs": 2}, "checkpoint": {"every_epochs": 0, "save_best": False}},
    )
    first = train(data)
    ckpt = first.ckpt_dir / f"step-{STEPS_PER_EPOCH:06d}.pt"
    progress = load(ckpt)["progress"]
    assert (progress["epochs_done"], progress["group"]) == (0, STEPS_PER_EPOCH)

    again = train(resume=ckpt)

    assert_same(final_state(again), final_state(first))
    assert metrics(again.jsonl()) == metrics(first.jsonl())
    assert [e.epoch for e in again.of("epoch_end")] == [1, 2]


def test_resume_from_an_epoch_end_checkpoint_continues_the_augmentation_stream(tmp_path):
    # Only augmentation draws random numbers here (no dropout, no best.pt): the next
    # epoch's crops and flips after the resume must be those of the straight run.
    data = profile_dict(
        tmp_path,
        {"run": {"epochs": 2}, "data": {"hflip": True, "random_crop": 1}},
        {"checkpoint": {"every_epochs": 1, "keep_last": 0, "save_best": False}},
    )
    first = train(data)
    ckpt = first.ckpt_dir / "step-000023.pt"
    assert load(ckpt)["progress"]["epochs_done"] == 1

    again = train(resume=ckpt)

    assert metrics(again.jsonl()) == metrics(first.jsonl())
    assert_same(again.run.model.state_dict(), first.run.model.state_dict())


def test_resumed_run_updates_best_pt_exactly_when_the_straight_run_does(tmp_path):
    # val_loss falls for 4 epochs, then rises in epoch 5 to a value between the best
    # (epoch 4) and the one before it (epoch 3): not a new best, straight or resumed.
    data = profile_dict(
        tmp_path,
        {"run": {"epochs": 5}, "train": {"log_every": 100}},
        {"optim": {"name": "adam", "lr": 0.01}},
        {"checkpoint": {"save_best": True, "monitor": "val_loss", "keep_last": 0}},
    )
    first = train(data)
    losses = [e.val_loss for e in first.of("epoch_end")]
    assert losses[3] < losses[4] < losses[2] == min(losses[:3]), losses
    ckpt = first.ckpt_dir / "step-000092.pt"  # the end of epoch 4, its best

    again = train(resume=ckpt)

    def saves(done):
        return [
            (e.step, e.reason, Path(e.path).name)
            for e in done.of("checkpoint_saved")
            if e.step > 92
        ]

    assert saves(again) == saves(first)
    assert (
        load(again.ckpt_dir / "last.pt")["best_checkpoint"]
        == load(first.ckpt_dir / "last.pt")["best_checkpoint"]
    )


# ---- what a resume may change, and what it refuses ----

SAFE = {"run": {"name": "safe", "epochs": 2}, "checkpoint": {"every_steps": 5, "keep_last": 0}}


@pytest.fixture(scope="module")
def safe_run(tmp_path_factory):
    return train(profile_dict(tmp_path_factory.mktemp("safe"), SAFE))


def test_resume_warns_once_for_each_changed_setting_and_goes_on(safe_run):
    ckpt = safe_run.ckpt_dir / "step-000005.pt"

    again = train(resume=ckpt, overrides=["optim.lr=0.1", "run.epochs=3", "early_stop.patience=7"])

    messages = [w.message for w in again.of("warning")]
    assert messages == [
        "resume changes early_stop.patience from 5 to 7",
        "resume changes optim.lr from 0.01 to 0.1",
        "resume changes run.epochs from 2 to 3",
    ]
    assert again.reason == "completed"
    assert again.of("run_finished")[0].step == 3 * 23


def test_resume_with_a_new_lr_reports_the_new_lr_in_step_events(safe_run):
    again = train(resume=safe_run.ckpt_dir / "step-000005.pt", overrides=["optim.lr=0.1"])

    steps = again.of("step")
    assert steps and steps[0].step == 6
    assert {e.lr for e in steps} == {0.1}


def test_resume_with_a_new_lr_uses_it_from_the_first_resumed_step(safe_run):
    # Plain SGD: one step moves the weights by lr * grad, and the gradient at the
    # checkpoint's weights is the same whatever the lr, so 10x the lr moves them 10x as far.
    ckpt = safe_run.ckpt_dir / "step-000005.pt"
    before = load(ckpt)["model"]

    def moved(lr: str) -> float:
        done = train(resume=ckpt, overrides=[f"optim.lr={lr}", "run.max_steps=6"])
        after = done.run.model.state_dict()
        return sum(((after[k] - before[k]) ** 2).sum() for k in before).sqrt().item()

    assert moved("0.1") / moved("0.01") == pytest.approx(10.0, rel=1e-3)


@pytest.mark.parametrize(
    ("override", "named"),
    [
        (["model.hidden=[64]"], "model.hidden was [32], the profile says [64]"),
        (["model.arch=cnn", "model.channels=[4]"], "model.arch was 'mlp', the profile says 'cnn'"),
        (
            [
                "data.dataset=npz",
                f"data.path={MNIST_NPZ}",
            ],
            "data.dataset was 'digits', the profile says 'npz'",
        ),
    ],
    ids=["hidden", "arch", "dataset"],
)
def test_mpt_run_refuses_a_resume_that_changes_model_or_dataset(
    safe_run, tmp_path, override, named
):
    runs_before = sorted(safe_run.run_dir.parent.iterdir())
    args = [a for o in override for a in ("--set", o)]

    r = mpt("run", "--resume", safe_run.run_dir, *args, cwd=tmp_path)

    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert named in r.stderr
    assert "cannot resume with this profile" in r.stderr
    assert sorted(safe_run.run_dir.parent.iterdir()) == runs_before  # no run directory made


def test_resume_last_picks_the_newest_run_of_the_profile_name_with_a_checkpoint(tmp_path):
    data = profile_dict(tmp_path, {"run": {"name": "many", "max_steps": 3}})
    train(data)
    newer = train(data)
    # The newest run of that name failed at step 2, before any checkpoint was written.
    failed = train(merge(data, {"optim": {"name": "sgd", "lr": 1e20}}), check=False)
    assert failed.reason == "failed"
    assert not failed.ckpt_dir.exists()
    assert sorted((tmp_path / "many").iterdir())[-1] == failed.run_dir

    again = train(merge(data, {"run": {"epochs": 2, "max_steps": 6}}), resume="last")

    assert again.run.resumed_from == newer.ckpt_dir / "last.pt"
    assert again.of("run_started")[0].resumed_from == str(newer.ckpt_dir / "last.pt")


def test_resume_last_without_any_checkpointed_run_is_a_clear_error(tmp_path):
    from engine.checkpoint import CheckpointError

    data = profile_dict(tmp_path / "runs", {"run": {"name": "nothing"}})
    with pytest.raises(
        CheckpointError, match=r"--resume last: no run in .*nothing has a checkpoint"
    ):
        train(data, resume="last")


def test_resume_at_its_last_step_is_refused_naming_max_steps(safe_run):
    from engine.checkpoint import CheckpointError

    ckpt = safe_run.ckpt_dir / "step-000005.pt"
    with pytest.raises(CheckpointError, match=r"reached run.max_steps = 5 \(step 5\); to train"):
        train(resume=ckpt, overrides=["run.max_steps=5"])  # nothing left to train
