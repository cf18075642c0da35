"""[log] wandb = true: the offline W&B run read back from the .wandb file in the run
directory (tests/wandb_records.py: the wandb package's own record schema)."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import pytest
from durable_helpers import (
    MPT,
    hide_package,
    merge,
    profile_dict,
    read_jsonl,
    run_dir_of,
    sink_without_its_package,
    train,
    wait_for,
    write_toml,
)

pytest.importorskip("wandb")
from wandb_records import offline_runs  # noqa: E402

from engine import events as ev  # noqa: E402

LOGGED = {
    "log": {"wandb": True},
    "train": {"log_every": 5},
    "run": {"name": "wb", "epochs": 2},
    "checkpoint": {"every_epochs": 1, "keep_last": 0},
}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A 2-epoch run with W&B on (23 steps an epoch, a checkpoint at each epoch's end)."""
    return train(profile_dict(tmp_path_factory.mktemp("runs"), LOGGED))


def steps_of(run_dir: Path) -> list[int]:
    return [e.step for e in ev.read_events(run_dir / "events.jsonl") if isinstance(e, ev.Step)]


def test_a_run_is_one_offline_wandb_run_with_config_history_and_summary(plain):
    (run,) = offline_runs(plain.run_dir)  # under the run directory: it holds it all
    saved = json.loads((plain.run_dir / "wandb.json").read_text())
    assert (run.run_id, run.project) == (saved["run_id"], saved["project"]) == (run.run_id, "wb")
    assert run.name == f"wb/{plain.run_dir.name}"
    assert run.config["run.epochs"] == 2 and run.config["model.arch"] == "mlp"
    assert run.config["train.log_every"] == 5 and run.config["log.wandb"] is True

    events = ev.read_events(plain.run_dir / "events.jsonl")
    steps = [e for e in events if isinstance(e, ev.Step)]
    ends = [e for e in events if isinstance(e, ev.EpochEnd)]
    assert run.points("loss") == [(e.step, pytest.approx(e.loss)) for e in steps]
    assert [s for s, _ in run.points("lr")] == [e.step for e in steps]
    for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
        assert run.points(key) == [(e.step, pytest.approx(getattr(e, key))) for e in ends], key
    # Host figures once an epoch, at the epoch's last step event.
    last_steps = [max(s.step for s in steps if s.epoch == e.epoch) for e in ends]
    assert [s for s, _ in run.points("rss_mib")] == last_steps
    assert [row["_timestamp"] for row in run.history if "val_loss" in row] == [
        pytest.approx(e.time) for e in ends
    ]

    summary = run.summary
    assert summary["mpt.run_dir"] == str(plain.run_dir) and summary["mpt.host"]
    assert summary["mpt.state"] == "completed" and run.tags == ["completed"]
    assert Path(summary["mpt.last_checkpoint"]).parent == plain.ckpt_dir
    assert summary["mpt.final_checkpoint"] == summary["mpt.last_checkpoint"]
    assert summary["mpt.best_checkpoint"] == str(plain.ckpt_dir / "best.pt")
    assert run.exit_code == 0


def test_ctrl_c_exits_130_and_a_resume_continues_the_wandb_run_without_a_step_twice(tmp_path):
    # `mpt run` as a user starts it, W&B on: Ctrl-C still ends it as without W&B.
    data = profile_dict(tmp_path / "runs", LOGGED, {"run": {"epochs": 40}})
    path = write_toml(tmp_path / "p.toml", data)
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(
            [MPT, "run", str(path)], cwd=tmp_path, stdin=subprocess.DEVNULL, stdout=o, stderr=e
        )
    try:
        parent = tmp_path / "runs" / "wb"
        first = wait_for(lambda: run_dir_of(parent), 120, "the run directory")
        wait_for(
            lambda: any(e["kind"] == "epoch_end" for e in read_jsonl(first / "events.jsonl")),
            120,
            "an epoch's end",
        )
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    printed = out.read_text() + err.read_text()
    assert "wandb:" not in printed and "Traceback" not in printed  # W&B printed nothing
    tail = read_jsonl(first / "events.jsonl")[-2:]
    assert [(e["kind"], e.get("reason")) for e in tail] == [
        ("checkpoint_saved", "interrupted"),
        ("run_finished", "interrupted"),
    ]
    (stopped,) = offline_runs(first)
    assert stopped.summary["mpt.state"] == "interrupted" and stopped.exit_code == 130

    epochs = max(e.epoch for e in ev.read_events(first / "events.jsonl")) + 1
    again = train(merge(data, {"run": {"epochs": epochs}}), resume=first)
    assert again.reason == "completed"
    saved = json.loads((again.run_dir / "wandb.json").read_text())
    assert saved["run_id"] == stopped.run_id  # the same W&B run, continued
    assert saved["run_dirs"] == [str(first), str(again.run_dir)]
    (resumed,) = offline_runs(again.run_dir)
    assert resumed.run_id == stopped.run_id
    before, after = [s for s, _ in stopped.points("loss")], [s for s, _ in resumed.points("loss")]
    assert before == steps_of(first) and max(before) < min(after)  # no step twice
    assert before + after == steps_of(again.run_dir)  # the whole curve, once
    assert resumed.summary["mpt.run_dirs"].split() == saved["run_dirs"]
    assert resumed.summary["mpt.resumed_from"].startswith(str(first))
    assert resumed.summary["mpt.state"] == "completed" and resumed.exit_code == 0


def test_a_resume_from_before_the_last_logged_step_starts_a_linked_wandb_run(plain):
    # The W&B run holds steps past the checkpoint resumed from (as after a SIGKILL):
    # continuing it would log them twice, so a new W&B run gets the whole history.
    again = train(
        profile_dict(plain.run_dir.parent.parent.parent, LOGGED),
        resume=plain.ckpt_dir / "step-000023.pt",
    )
    (old,), (new,) = offline_runs(plain.run_dir), offline_runs(again.run_dir)
    assert new.run_id != old.run_id
    assert new.summary["mpt.resumed_from_wandb_run"] == old.run_id
    steps = [s for s, _ in new.points("loss")]
    assert steps == steps_of(again.run_dir) and steps == sorted(set(steps))


@pytest.fixture
def no_wandb(monkeypatch):
    hide_package(monkeypatch, "wandb")


def test_without_the_package_validate_warns_and_the_run_goes_on_with_one_warning(
    tmp_path, no_wandb
):
    data = profile_dict(tmp_path / "runs", LOGGED, {"run": {"epochs": 1}})
    done = sink_without_its_package(tmp_path, data, "wandb")
    assert not (done.run_dir / "wandb.json").exists() and not (done.run_dir / "wandb").exists()
