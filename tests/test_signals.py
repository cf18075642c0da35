"""Signals: `mpt run` stops cleanly on SIGINT/SIGTERM/SIGHUP and continues exactly.

DESIGN.md, Exit codes: 130 interrupted by SIGINT/SIGTERM/SIGHUP after saving a
checkpoint. cli.py: the first signal finishes the step, saves, prints "resume with:
...", exits 130; a second SIGINT exits at once. These tests start the real `mpt`
console script and signal it, as a user's Ctrl-C or a scheduler would.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from durable_helpers import (
    MNIST_NPZ,
    MPT,
    assert_same,
    load,
    merge,
    metrics,
    mpt,
    printed_run_dir,
    read_jsonl,
    run_dir_of,
    train,
    wait_for,
    write_toml,
)

# Real MNIST (8,000 train images), 125 steps an epoch, many epochs: the run is long, and
# its only checkpoint is the one the interrupt writes.
LONG = {
    "run": {"name": "long", "device": "cpu", "seed": 0, "epochs": 50},
    "data": {"dataset": "npz", "path": str(MNIST_NPZ), "batch_size": 64},
    "model": {"arch": "mlp", "hidden": [64], "dropout": 0.1},
    "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
    "schedule": {"name": "none", "warmup_steps": 20},
    "train": {"log_every": 1},
    "checkpoint": {"every_epochs": 0, "save_best": False},
}
STEPS_PER_EPOCH = 125


class Started:
    """`mpt run` in the background, its output going to files (a pipe could fill up)."""

    def __init__(self, tmp_path: Path, profile: dict):
        self.tmp = tmp_path
        self.profile = write_toml(tmp_path / "profile.toml", profile)
        self.out, self.err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
        self.parent = Path(profile["run"]["out_dir"]) / profile["run"]["name"]
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen(
                [MPT, "run", str(self.profile)],
                cwd=tmp_path,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
            )

    def events(self) -> list[dict]:
        run_dir = run_dir_of(self.parent)
        return read_jsonl(run_dir / "events.jsonl") if run_dir else []

    def wait_for_event(self, test, what: str, timeout: float = 120) -> list[dict]:
        def seen():
            if self.proc.poll() is not None:
                raise AssertionError(f"mpt ended early ({self.proc.returncode}): {self.stderr}")
            events = self.events()
            return events if test(events) else None

        return wait_for(seen, timeout, what)

    @property
    def stdout(self) -> str:
        return self.out.read_text()

    @property
    def stderr(self) -> str:
        return self.err.read_text()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def started(tmp_path):
    runs = []

    def start(profile: dict) -> Started:
        runs.append(Started(tmp_path, profile))
        return runs[-1]

    yield start
    for r in runs:
        r.kill()


def steps_seen(events: list[dict]) -> int:
    return sum(e["kind"] == "step" for e in events)


@pytest.fixture(scope="module")
def never_stopped(tmp_path_factory):
    """never_stopped(epochs) -> Done: LONG trained straight to that epoch, in this process;
    made once for each number of epochs (every signal lands in the first epoch)."""
    made = {}

    def run(epochs: int):
        if epochs not in made:
            out = tmp_path_factory.mktemp(f"straight{epochs}")
            made[epochs] = train(merge(LONG, {"run": {"epochs": epochs, "out_dir": str(out)}}))
        return made[epochs]

    return run


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda s: s.name
)
def test_signal_saves_a_mid_epoch_checkpoint_exits_130_and_resumes_exactly(
    tmp_path, started, never_stopped, sig
):
    profile = merge(LONG, {"run": {"out_dir": str(tmp_path / "runs")}})
    run = started(profile)
    run.wait_for_event(lambda ev: steps_seen(ev) >= 5, "a few step events")

    run.proc.send_signal(sig)
    assert run.proc.wait(timeout=60) == 130

    run_dir = run_dir_of(run.parent)
    assert f"resume with: mpt run --resume {run_dir}" in run.stdout.splitlines()
    assert f"{sig.name}: stopping after the current step" in run.stderr
    assert "Traceback" not in run.stderr
    files = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert len(files) == 2 and files[0] == "last.pt"  # the interrupt's step-*.pt and last.pt
    state = load(run_dir / "checkpoints" / "last.pt")
    step, group = state["progress"]["step"], state["progress"]["group"]
    assert 0 < group < STEPS_PER_EPOCH, "the interrupt landed on an epoch boundary"
    assert files[1] == f"step-{step:06d}.pt"
    tail = read_jsonl(run_dir / "events.jsonl")[-2:]
    assert [(e["kind"], e.get("reason")) for e in tail] == [
        ("checkpoint_saved", "interrupted"),
        ("run_finished", "interrupted"),
    ]

    # Resume in a fresh process to the end of that epoch; compare with a run never stopped.
    epochs = state["progress"]["epochs_done"] + 1
    r = mpt("run", "--resume", run_dir, "--set", f"run.epochs={epochs}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    resumed = printed_run_dir(r.stdout)
    straight = never_stopped(epochs)

    a = load(resumed / "checkpoints" / "last.pt")
    b = load(straight.ckpt_dir / "last.pt")
    for s in (a, b):
        s.pop("time"), s["progress"].pop("events"), s["profile"]["run"].pop("out_dir")
    assert a["progress"]["step"] == epochs * STEPS_PER_EPOCH
    assert_same(a, b)
    assert metrics(read_jsonl(resumed / "events.jsonl")) == metrics(straight.jsonl())


# One optimizer step is a whole epoch here (125 accumulated micro-batches through a
# convnet): several seconds, so both signals surely arrive inside the first step.
SLOW_STEP = {
    "model": {"arch": "cnn", "channels": [32, 32], "hidden": [64], "dropout": 0.0},
    "train": {"grad_accum": 125},
}


def test_second_sigint_exits_at_once_while_the_first_is_being_handled(tmp_path, started):
    profile = merge(LONG, SLOW_STEP, {"run": {"out_dir": str(tmp_path / "runs")}})
    run = started(profile)
    run.wait_for_event(lambda ev: any(e["kind"] == "run_started" for e in ev), "run_started")

    run.proc.send_signal(signal.SIGINT)
    wait_for(lambda: "SIGINT: stopping" in run.stderr, 30, "the first SIGINT's message")
    t0 = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    assert run.proc.wait(timeout=30) == 130
    waited = time.monotonic() - t0

    run_dir = run_dir_of(run.parent)
    assert steps_seen(read_jsonl(run_dir / "events.jsonl")) == 0, "the first step had finished"
    assert "resume with" not in run.stdout
    assert not (run_dir / "checkpoints").exists()
    assert waited < 5, f"the second SIGINT took {waited:.1f} s to end the process"
