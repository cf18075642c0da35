"""[log] mlflow = true: the run read back from its SQLite store with MLflow's own client."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from durable_helpers import (
    finish,
    hide_package,
    next_event,
    profile_dict,
    sink_without_its_package,
    start,
    train,
)

pytest.importorskip("mlflow")
from mlflow.tracking import MlflowClient  # noqa: E402

from engine import events as ev  # noqa: E402

LOGGED = {"log": {"mlflow": True}, "train": {"log_every": 5}, "run": {"name": "flow"}}


@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    """One out_dir, so one mlflow.db, for the module: creating a store's tables takes
    seconds; each test has its own run.name, so its own experiment."""
    return tmp_path_factory.mktemp("runs")


def logged(out: Path, name: str, *extras: dict) -> dict:
    return profile_dict(out, LOGGED, {"run": {"name": name}}, *extras)


def client_of(out: Path) -> MlflowClient:
    return MlflowClient(tracking_uri=f"sqlite:///{out.resolve() / 'mlflow.db'}")


def runs_of(client: MlflowClient, name: str) -> list:
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id])


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def test_a_run_is_one_mlflow_run_with_params_metrics_and_tags(out):
    done = train(logged(out, "plain", {"run": {"epochs": 2}}))
    client = client_of(out)
    (run,) = runs_of(client, "plain")
    run_id = run.info.run_id
    assert json.loads((done.run_dir / "mlflow.json").read_text())["run_id"] == run_id
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["run.epochs"] == "2" and params["model.arch"] == "mlp"
    assert params["train.log_every"] == "5" and params["log.mlflow"] == "True"

    events = ev.read_events(done.run_dir / "events.jsonl")
    steps = [e for e in events if isinstance(e, ev.Step)]
    ends = [e for e in events if isinstance(e, ev.EpochEnd)]
    assert history(client, run_id, "loss") == [(e.step, pytest.approx(e.loss)) for e in steps]
    assert [s for s, _ in history(client, run_id, "lr")] == [e.step for e in steps]
    for key in ("train_loss", "val_loss", "train_acc", "val_acc"):
        expected = [(e.step, pytest.approx(getattr(e, key))) for e in ends]
        assert history(client, run_id, key) == expected, key

    tags = run.data.tags
    assert tags["mpt.run_dir"] == str(done.run_dir)
    assert tags["mpt.state"] == "completed" and tags["mpt.host"]
    assert Path(tags["mpt.last_checkpoint"]).parent == done.ckpt_dir
    assert tags["mpt.final_checkpoint"] == tags["mpt.last_checkpoint"]


def test_a_stopped_run_resumed_continues_its_mlflow_run_without_a_step_twice(out):
    data = logged(out, "stopped", {"run": {"epochs": 2}})
    first = start(data)
    next_event(first, "epoch_end", timeout=60)
    first.stop()
    stopped = finish(first)
    assert stopped.reason == "stopped"

    again = train(data, resume=stopped.ckpt_dir / "last.pt")

    client = client_of(out)
    (run,) = runs_of(client, "stopped")  # continued, not a second MLflow run
    run_id = run.info.run_id
    assert json.loads((again.run_dir / "mlflow.json").read_text())["run_id"] == run_id
    steps = [s for s, _ in history(client, run_id, "loss")]
    assert steps == sorted(set(steps))  # no step logged twice
    events = ev.read_events(again.run_dir / "events.jsonl")  # the whole history, replayed
    assert steps == [e.step for e in events if isinstance(e, ev.Step)]
    assert [s for s, _ in history(client, run_id, "val_loss")] == [
        e.step for e in events if isinstance(e, ev.EpochEnd)
    ]
    tags = run.data.tags
    assert tags["mpt.run_dir"] == str(again.run_dir) and tags["mpt.state"] == "completed"
    assert tags["mpt.resumed_from"] == str(stopped.ckpt_dir / "last.pt")
    assert tags["mpt.run_dirs"].split() == [str(stopped.run_dir), str(again.run_dir)]
    assert run.info.status == "FINISHED"


@pytest.fixture
def no_mlflow(monkeypatch):
    hide_package(monkeypatch, "mlflow")


def test_without_the_package_validate_warns_and_the_run_goes_on_with_one_warning(
    tmp_path, no_mlflow
):
    data = profile_dict(tmp_path / "runs", LOGGED)
    done = sink_without_its_package(tmp_path, data, "mlflow")
    assert not (done.run_dir / "mlflow.json").exists()


def test_a_resume_from_before_the_last_logged_step_starts_a_linked_mlflow_run(out):
    # As after a SIGKILL: the MLflow run holds steps past the checkpoint resumed from, so
    # continuing it would log those steps twice; a new MLflow run gets the whole history.
    data = logged(
        out,
        "linked",
        {"run": {"epochs": 2}, "checkpoint": {"every_epochs": 1, "keep_last": 0}},
    )
    first = train(data)
    again = train(data, resume=first.ckpt_dir / "step-000023.pt")

    client = client_of(out)
    old_id = json.loads((first.run_dir / "mlflow.json").read_text())["run_id"]
    new_id = json.loads((again.run_dir / "mlflow.json").read_text())["run_id"]
    assert new_id != old_id and len(runs_of(client, "linked")) == 2
    new = client.get_run(new_id)
    assert new.data.tags["mpt.resumed_from_mlflow_run"] == old_id
    events = ev.read_events(again.run_dir / "events.jsonl")
    steps = [s for s, _ in history(client, new_id, "loss")]
    assert steps == [e.step for e in events if isinstance(e, ev.Step)]
    assert steps == sorted(set(steps))
