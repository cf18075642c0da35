"""`[log] mlflow = true`: the run's events as one MLflow run (engine/sinks.py's sinks).

One MLflow run per mpt run, in the experiment named after run.name, in the tracking
store `log.mlflow_uri` (empty: a SQLite file `<out_dir>/mlflow.db`, no server needed).
Params: the flattened profile. Metrics: each `step` event's loss, lr, throughput and
host/GPU figures, and each `epoch_end`'s train_*/val_* metrics, all at x = the optimizer
step. Tags: the run directory, host, state at the end, resume lineage, checkpoint paths.

A resumed run continues the MLflow run of the run it resumes (its id is in that run
directory's `mlflow.json`) and skips the replayed history, which that MLflow run holds
already; where it cannot (another store, a run deleted, or steps logged past the
checkpoint, which would be logged twice), it starts a new MLflow run, replays the history
into it and names the one it came from in a tag. mlflow is imported only here, only when
the sink sees its first event: a missing package is one warning, the run goes on.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path
from typing import Any

from engine import events as ev
from engine import tracking
from engine.errors import MptError

ID_FILE = "mlflow.json"  # {"run_id": ..., "tracking_uri": ...} in each run directory
_BATCH = 1000  # MLflow's most metrics per log_batch
_PARAM_BATCH = 100  # and params
_PARAM_LIMIT = 6000  # MLflow's longest param value
MISSING = "the mlflow package is not installed; pip install 'mpt[mlflow]' or set log.mlflow = false"
# The MLflow run's status for each ending (RunFinished.reason; RunFailed is FAILED).
_STATUS = {"interrupted": "KILLED"}


def missing_package(profile: Any) -> str | None:
    """`mpt validate`'s warning when log.mlflow is on and mlflow is not installed."""
    import importlib.util

    if profile.log.mlflow and importlib.util.find_spec("mlflow") is None:
        return f"log.mlflow = true, but {MISSING}; runs go on without the MLflow sink"
    return None


def default_uri(out_dir: str) -> str:
    """The tracking store when log.mlflow_uri is empty: a SQLite file beside the runs."""
    return "sqlite:///" + str(Path(out_dir).expanduser().resolve() / "mlflow.db")


def flat_params(profile: Any) -> dict[str, str]:
    """The profile as MLflow params: "section.key" -> its value as text."""
    return {k: str(v)[:_PARAM_LIMIT] for k, v in tracking.flat_profile(profile).items()}


def _client(uri: str):
    try:
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")  # offline, no phoning home
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise MptError(f"log.mlflow = true: {MISSING}") from None
    # The store's table creation logs at INFO on stderr: it would draw over the console.
    for name in ("mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


class MlflowSink(tracking.TrackerSink):
    """Feeds one MLflow run; metrics are batched and written at an epoch's end, at most
    every 5 s (a SQLite store takes ~0.3 ms of CPU a point: host and GPU figures go in
    once an epoch)."""

    def __init__(self, profile: Any):
        super().__init__()
        self.profile = profile
        self.uri = profile.log.mlflow_uri or default_uri(profile.run.out_dir)
        self._client = None
        self.run_id: str | None = None
        self._metrics: list = []
        self._tags: dict[str, str] = {}  # mpt.* facts and lineage; mpt.state: the ending

    def _start(self, started: ev.RunStarted) -> None:
        self._client = _client(self.uri)
        previous = self._previous_run()
        continued = previous is not None and self._can_continue(previous)
        if continued:
            self.run_id = previous
            self._client.update_run(previous, status="RUNNING")
        else:
            self.run_id = self._new_run(started)
            if previous is not None:
                self._tags["mpt.resumed_from_mlflow_run"] = previous
            for event in self._history:  # the MLflow run gets the whole curve
                self._log(event)
        self._history = []
        self._log_params(continued)
        self._log(started)
        self._save_id(Path(started.run_dir))
        write = functools.partial(self._write_batch, self.run_id)  # close() clears run_id
        self._start_writer("mpt-mlflow", self._serve, write)
        self.flush()

    def _previous_run(self) -> str | None:
        """The MLflow run id of the run this one resumes, when it used the same store."""
        saved = tracking.read_id_file(tracking.resumed_run_dir(self._history), ID_FILE)
        if saved is None or saved.get("tracking_uri") != self.uri:
            return None
        return saved.get("run_id") or None

    def _can_continue(self, run_id: str) -> bool:
        """The MLflow run exists and logged no step past the checkpoint (no step twice)."""
        try:
            self._client.get_run(run_id)
            logged = self._client.get_metric_history(run_id, "loss")
        except Exception:  # noqa: BLE001 - deleted, another store's: start a new one
            return False
        resumed_at = self._history[-1].step if self._history else 0
        return all(m.step <= resumed_at for m in logged)

    def _new_run(self, started: ev.RunStarted) -> str:
        name = self.profile.run.name
        experiment = self._client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = self._client.create_experiment(name)
            except Exception:  # noqa: BLE001 - made meanwhile by another run (a sweep)
                experiment_id = self._client.get_experiment_by_name(name).experiment_id
        else:
            experiment_id = experiment.experiment_id
        run_name = f"{name}/{Path(started.run_dir).name}"
        return self._client.create_run(experiment_id, run_name=run_name).info.run_id

    def _log_params(self, continued: bool) -> None:
        params = flat_params(self.profile)
        if continued:  # a param is written once: a resume's changes go in as tags
            logged = self._client.get_run(self.run_id).data.params
            for key in [k for k in params if k in logged]:
                if logged[key] != params[key]:
                    self._tags[f"mpt.resumed.{key}"] = params[key]
                del params[key]
        from mlflow.entities import Param

        items = [Param(k, v) for k, v in params.items()]
        for i in range(0, len(items), _PARAM_BATCH):
            self._client.log_batch(self.run_id, params=items[i : i + _PARAM_BATCH])

    def _save_id(self, run_dir: Path) -> None:
        data = {"run_id": self.run_id, "tracking_uri": self.uri}
        tracking.write_id_file(run_dir, ID_FILE, data)

    def _add(self, values: dict[str, float], event: ev.Event) -> None:
        from mlflow.entities import Metric

        when = int(event.time * 1000)
        self._metrics += [Metric(k, v, when, event.step) for k, v in values.items()]

    def _add_facts(self, facts: dict[str, str], event: ev.Event) -> None:
        self._tags.update(facts)
        if isinstance(event, ev.RunStarted) and event.resumed_from:
            lineage = self._lineage()
            self._tags["mpt.run_dirs"] = " ".join([*lineage, event.run_dir])

    def _lineage(self) -> list[str]:
        """The run directories this MLflow run has held so far (mpt.run_dirs)."""
        with contextlib.suppress(Exception):
            run = self._client.get_run(self.run_id)
            tags = run.data.tags
            return (tags.get("mpt.run_dirs") or tags.get("mpt.run_dir", "")).split()
        return []

    def flush(self) -> None:
        """Hand the batched metrics and tags to the writer (TrackerSink.write says when)."""
        if self.run_id is None or not (self._metrics or self._tags):
            return
        from mlflow.entities import RunTag

        tags = [RunTag(k, v) for k, v in self._tags.items()]
        self._jobs.put((self._metrics, tags))
        self._metrics, self._tags = [], {}

    def _write_batch(self, run_id: str, job: tuple[list, list]) -> None:
        metrics, tags = job
        for i in range(0, max(len(metrics), 1), _BATCH):
            self._client.log_batch(run_id, metrics=metrics[i : i + _BATCH], tags=tags)
            tags = []

    def close(self) -> None:
        if self.run_id is None:
            return
        if self._stop_writer():
            self._client.set_terminated(self.run_id, status=self._status())
        self.run_id = None

    def _status(self) -> str:
        """FINISHED, or KILLED for an interrupt (or no ending seen), FAILED for a failure."""
        state = self._facts.state
        if state in ("failed", "running"):
            return "FAILED" if state == "failed" else "KILLED"
        return _STATUS.get(state, "FINISHED")
