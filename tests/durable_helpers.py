"""Helpers for the durable-run tests: tiny real runs, their events, their checkpoints.

Runs here are real: the engine's own Run handle in this process, or `mpt` in a
subprocess as a user starts it. Nothing of the engine is mocked.
"""

from __future__ import annotations

import copy
import os
import queue
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import warm_mpt

REPO = Path(__file__).resolve().parents[1]
MNIST_NPZ = REPO.parent / "shared" / "data" / "mnist-t10k.npz"
MPT = str(Path(sys.executable).with_name("mpt"))

# digits: 1,797 images of 8x8; val_fraction 0.2 leaves 1,438 to train on, so a batch of
# 64 makes 23 micro-batches an epoch (the last one holds 30 samples).
TINY = {
    "run": {"name": "tiny", "device": "cpu", "epochs": 1, "seed": 0},
    "data": {"dataset": "digits", "batch_size": 64, "val_fraction": 0.2},
    "model": {"arch": "mlp", "hidden": [32]},
    "train": {"log_every": 1},
}


def merge(base: dict[str, Any], *extras: dict[str, Any]) -> dict[str, Any]:
    """A copy of a profile dict with each extra's sections merged key by key."""
    out = copy.deepcopy(base)
    for extra in extras:
        for section, table in extra.items():
            out.setdefault(section, {}).update(copy.deepcopy(table))
    return out


def profile_dict(out_dir: Path, *extras: dict[str, Any]) -> dict[str, Any]:
    return merge(TINY, {"run": {"out_dir": str(out_dir)}}, *extras)


def drain(events: queue.Queue) -> list:
    out = []
    while True:
        try:
            out.append(events.get_nowait())
        except queue.Empty:
            return out


@dataclass
class Done:
    """A run that has ended: its handle, how it ended and every event it put on its queue."""

    run: Any
    reason: str | None
    events: list = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return self.run.run_dir

    @property
    def ckpt_dir(self) -> Path:
        return self.run.run_dir / "checkpoints"

    def of(self, kind: str) -> list:
        return [e for e in self.events if e.kind == kind]

    def lines(self) -> list[str]:
        return (self.run_dir / "events.jsonl").read_text().splitlines()

    def jsonl(self) -> list[dict[str, Any]]:
        return events_jsonl(self.run_dir)

    def step_files(self) -> list[str]:
        return sorted(p.name for p in self.ckpt_dir.glob("step-*.pt"))


def start(data: dict[str, Any] | None = None, **kwargs):
    """Run.start on a profile dict (validated as a user's would be)."""
    from engine.profile import profile_from_dict
    from engine.run import Run

    profile = profile_from_dict(data, "<test>") if data is not None else None
    return Run.start(profile, **kwargs)


def finish(run, timeout: float = 240) -> Done:
    reason = run.join(timeout=timeout)
    assert reason is not None, f"the run did not end within {timeout} s"
    return Done(run, reason, drain(run.events))


def train(data: dict[str, Any] | None = None, *, check: bool = True, **kwargs) -> Done:
    """Start a run, wait for its end; with check, a failed run fails the test."""
    done = finish(start(data, **kwargs))
    if check:
        assert done.reason != "failed", f"the run failed: {done.run.error}"
    return done


def load(path: Path) -> dict[str, Any]:
    from engine import checkpoint as ckpt

    return ckpt.load(path)


def assert_same(a: Any, b: Any, where: str = "state") -> None:
    """Nested dicts/lists of tensors and plain values, equal bit for bit."""
    import torch

    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), f"{where}: tensor vs {type(b).__name__}"
        assert a.dtype == b.dtype and a.shape == b.shape, f"{where}: dtype/shape differ"
        assert torch.equal(a, b), f"{where}: tensors differ"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), f"{where}: keys differ"
        for k in a:
            assert_same(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def metrics(records: list[dict[str, Any]]) -> list[tuple]:
    """Every logged metric of an events.jsonl, in order: step losses and epoch results."""
    out = []
    for r in records:
        if r["kind"] == "step":
            out.append(("step", r["step"], r["epoch"], r["loss"], r["lr"], r["skipped_steps"]))
        elif r["kind"] == "epoch_end":
            out.append(
                (
                    "epoch_end",
                    r["step"],
                    r["epoch"],
                    r["train_loss"],
                    r["train_acc"],
                    r["val_loss"],
                    r["val_acc"],
                    r["lr"],
                )
            )
    return out


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02):
    """Poll `predicate` until it returns something truthy; fail the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def next_event(run, kind: str, timeout: float):
    """The next `kind` event on a live run's queue (the events before it are taken too)."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            event = run.events.get(timeout=min(left, 0.1))
        except queue.Empty:
            assert run.is_alive(), f"the run ended: {run.reason} {run.error}"
            continue
        if event.kind == kind:
            return event
    raise AssertionError(f"no {kind} event within {timeout} s")


def events_jsonl(run_dir: Path) -> list[dict[str, Any]]:
    """Every event of a run's events.jsonl as a dict, read by engine.events' reader; a line
    it cannot read whole fails the test (the run wrote a bad one)."""
    from engine.events import EventsReader

    reader = EventsReader(run_dir / "events.jsonl")
    events = reader.read_all()
    assert not reader.unreadable and not reader.torn, f"{reader.path}: {reader.describe()}"
    return [e.to_dict() for e in events]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """events.jsonl of a live run as dicts: whole lines only (the writer may be mid-line)."""
    from engine.events import EventsReader

    return [e.to_dict() for e in EventsReader(path).read_new()] if path.is_file() else []


def run_dir_of(parent: Path) -> Path | None:
    """The single run directory under <out_dir>/<name>/, once it exists."""
    found = sorted(p for p in parent.glob("*") if p.is_dir()) if parent.is_dir() else []
    return found[0] if len(found) == 1 else None


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def mpt(*args: str, cwd: Path, timeout: float = 240, env: dict | None = None) -> Result:
    """Run the `mpt` console script as a user does (`env`: variables to add), in a process
    of its own (forked from a warm process that has imported torch: tests/warm_mpt.py)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return Result(*warm_mpt.run(MPT, [str(a) for a in args], Path(cwd), full_env, timeout))


def invoke(*args: Any):
    """The `mpt` typer app run in this process (typer's CliRunner): exit_code, stdout and
    stderr as `mpt` would give them, without a new process's seconds importing torch."""
    from typer.testing import CliRunner

    from engine.cli import app

    # engine.console binds sys.stdout/err when imported: let it bind this runner's.
    sys.modules.pop("engine.console", None)
    return CliRunner().invoke(app, [str(a) for a in args])


def spawn_mpt(
    *args: str, cwd: Path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **env: str
) -> subprocess.Popen:
    """Start the `mpt` console script in the background, no stdin (as from a script or
    nohup); `env`: variables added to this process's environment."""
    return subprocess.Popen(
        [MPT, *map(str, args)],
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        env={**os.environ, **env},
    )


def printed_run_dir(stdout: str) -> Path:
    for line in stdout.splitlines():
        if line.startswith("run directory: "):
            return Path(line.removeprefix("run directory: ").split("  (")[0])
    raise AssertionError(f"no 'run directory:' line in:\n{stdout}")


def write_toml(path: Path, data: dict[str, Any]) -> Path:
    import tomli_w

    path.write_text(tomli_w.dumps(data))
    return path


def hide_package(monkeypatch, package: str) -> None:
    """`package` as if not installed: None in sys.modules makes its import fail."""
    for name in [n for n in sys.modules if n == package or n.startswith(f"{package}.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, package, None)


def sink_without_its_package(tmp_path: Path, data: dict[str, Any], extra: str) -> Done:
    """A profile whose [log] sink needs the (hidden) extra `extra`: `mpt validate` warns and
    exits 0, and the run completes with one warning naming `pip install 'mpt[extra]'`."""
    hint = f"pip install 'mpt[{extra}]'"
    result = invoke("validate", write_toml(tmp_path / "p.toml", data))
    assert result.exit_code == 0, result.output
    assert hint in result.output and "warning" in result.output

    done = train(data)
    assert done.reason == "completed"
    warnings = [e.message for e in done.of("warning") if extra in e.message]
    assert len(warnings) == 1 and hint in warnings[0]
    return done
