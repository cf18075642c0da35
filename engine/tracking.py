"""What the experiment-tracker sinks (engine/sink_mlflow.py, engine/sink_wandb.py) share:
the profile flattened, the figures each event gives, the `mpt.*` facts of a run (MLflow's
tags, W&B's summary), and where a resumed run finds the tracker run it may continue.

A tracker sink holds the events older than itself (the replayed history of a resumed
run) until the live `run_started`; the last replayed `run_started` names the run
directory resumed from, whose id file (`mlflow.json`, `wandb.json`) names its tracker run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from engine import events as ev
from engine.events import finite_or_none

# Each `step` event's, at its step. The host and GPU figures change slowly: a tracker
# logs them once an epoch (the epoch's last step event's).
STEP_FIELDS = ("loss", "lr", "samples_per_s")
HOST_FIELDS = ("gpu_util", "gpu_temp", "gpu_power", "cpu_percent")
HOST_MIB = ("gpu_mem_allocated", "gpu_mem_reserved", "gpu_mem_peak", "rss", "mem_available")
_MIB = 1024 * 1024


def flat_profile(profile: Any) -> dict[str, Any]:
    """The profile as one flat dict: "section.key" -> its value."""
    return {
        f"{section}.{key}": value
        for section, table in profile.to_dict().items()
        for key, value in table.items()
    }


def _finite(values: dict[str, Any]) -> dict[str, float]:
    """The values a metrics store can hold: missing and non-finite ones left out."""
    return {k: f for k, v in values.items() if (f := finite_or_none(v)) is not None}


def step_values(step: ev.Step) -> dict[str, float]:
    """A `step` event's loss, lr and throughput."""
    return _finite({name: getattr(step, name) for name in STEP_FIELDS})


def host_values(step: ev.Step) -> dict[str, float]:
    """A `step` event's host and GPU figures, memory in MiB (`rss_mib`, `gpu_mem_peak_mib`)."""
    values = {name: getattr(step, name) for name in HOST_FIELDS}
    for name in HOST_MIB:
        nbytes = getattr(step, name)
        if nbytes is not None:
            values[f"{name}_mib"] = nbytes / _MIB
    return _finite(values)


def epoch_values(end: ev.EpochEnd) -> dict[str, float]:
    """An `epoch_end`'s metrics: every train_*/val_* one, epoch, epoch_lr, epoch_seconds."""
    values = {"train_acc": end.train_acc, "val_acc": end.val_acc, **end.metrics}
    values.update(train_loss=end.train_loss, val_loss=end.val_loss)
    values.update(epoch=end.epoch, epoch_lr=end.lr, epoch_seconds=end.seconds)
    return _finite(values)


class RunFacts:
    """The `mpt.*` facts the events give: run directory, host, device, state, checkpoints,
    the checkpoint resumed from."""

    def __init__(self) -> None:
        self.facts: dict[str, str] = {}
        self.state = "running"  # the ending's reason, or failed

    def update(self, event: ev.Event) -> dict[str, str]:
        """Fold in `event`; the facts it sets (none for most events)."""
        new: dict[str, str] = {}
        if isinstance(event, ev.RunStarted):
            new.update({"mpt.run_dir": event.run_dir, "mpt.host": event.host})
            new.update({"mpt.state": "running", "mpt.device": event.device})
            if event.resumed_from:
                new["mpt.resumed_from"] = event.resumed_from
        elif isinstance(event, ev.CheckpointSaved) and event.path:
            kind = "best" if event.reason == "best" else "last"
            new[f"mpt.{kind}_checkpoint"] = event.path
            if event.reason == "final":
                new["mpt.final_checkpoint"] = event.path
        elif isinstance(event, ev.RunFinished | ev.RunFailed):
            failed = isinstance(event, ev.RunFailed)
            self.state = "failed" if failed else event.reason or "completed"
            new["mpt.state"] = self.state
        self.facts.update(new)
        return new


def resumed_run_dir(history: list[ev.Event]) -> Path | None:
    """The run directory a resumed run continues (its last replayed run_started's)."""
    runs = [e for e in history if isinstance(e, ev.RunStarted) and e.run_dir]
    return Path(runs[-1].run_dir) if runs else None


def read_id_file(run_dir: Path | None, name: str) -> dict[str, Any] | None:
    """A run directory's tracker id file (`mlflow.json`, `wandb.json`); None when absent
    or unreadable."""
    if run_dir is None:
        return None
    try:
        saved = json.loads((run_dir / name).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return saved if isinstance(saved, dict) else None


def write_id_file(run_dir: Path, name: str, data: dict[str, Any]) -> None:
    (run_dir / name).write_text(json.dumps(data) + "\n", encoding="utf-8")
