"""Shared fixtures: run a profile with the engine's own Run handle, or `mpt` as a user does."""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# One torch thread per process, this one and every `mpt` it starts (they inherit the
# environment): two test workers share two cores, so a second thread each only waits for
# a core (OpenMP spins while it waits), and the tiny models here gain nothing from it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
if "torch" in sys.modules:  # imported before this file by a plugin: too late for the variable
    sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# One definition of each for every test module (MNIST_NPZ: ../shared beside the checkout).
import warm_mpt
from durable_helpers import MNIST_NPZ, REPO, drain, merge  # noqa: F401

PROFILES = REPO / "profiles"


def _mpt_command() -> list[str]:
    beside = Path(sys.executable).with_name("mpt")  # the console script of this venv
    if beside.exists():
        return [str(beside)]
    found = shutil.which("mpt")
    assert found, "the `mpt` console script is not installed: pip install -e '.[test]'"
    return [found]


MPT = _mpt_command()


@dataclass
class Finished:
    """A run that has ended: its handle, how it ended, and every event it emitted."""

    run: Any
    reason: str | None
    events: list = field(default_factory=list)

    def of(self, kind: str) -> list:
        return [e for e in self.events if e.kind == kind]

    @property
    def last_epoch(self):
        return self.of("epoch_end")[-1]

    def weights(self) -> dict[str, Any]:
        model = self.run.model
        return {k: v.detach().clone() for k, v in model.state_dict().items()}


# Small and fast: digits (bundled), one epoch, the CPU.
BASE = {
    "run": {"device": "cpu", "epochs": 1, "seed": 0},
    "data": {"dataset": "digits", "batch_size": 64, "val_fraction": 0.2},
    "model": {"arch": "mlp", "hidden": [64]},
}


def run_profile(data: dict[str, Any], *, write: bool = False, check: bool = True) -> Finished:
    """Validate `data`, start it with the engine's Run handle, wait, collect every event."""
    from engine.profile import profile_from_dict
    from engine.run import Run

    run = Run.start(profile_from_dict(data, "<test>"), write=write)
    reason = run.join(timeout=240)
    assert reason is not None, "the run did not end within 240 s"
    done = Finished(run, reason, drain(run.events))
    if check:
        assert reason != "failed", f"the run failed: {run.error}"
    return done


@pytest.fixture
def out_dir(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture
def train(out_dir: Path):
    """train(sections, check=True, write=False) -> Finished: a real run of the engine.

    `sections` are merged into BASE (digits, a small MLP, one epoch, the CPU). With
    write=False no run directory is made (and so no checkpoints); check=True fails the
    test with the run's own error when the run fails.
    """

    def _train(extra: dict[str, Any] | None = None, *, check: bool = True, write: bool = False):
        data = merge(merge(BASE, {"run": {"out_dir": str(out_dir)}}), extra or {})
        return run_profile(data, write=write, check=check)

    return _train


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def run_mpt(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout=240):
    """Run the `mpt` command as a user does, in a process of its own, stdout and stderr
    captured (forked from a warm process that has imported torch: tests/warm_mpt.py)."""
    full_env = {**os.environ, **(env or {})}
    return Result(*warm_mpt.run(MPT[0], [str(a) for a in args], cwd or REPO, full_env, timeout))
