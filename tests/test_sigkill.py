"""SIGKILL at random moments of real runs: nothing already saved is ever lost or damaged.

Each trial starts `mpt run` in a process of its own and kills it with SIGKILL at a moment a
seeded RNG picks: any time (setup included), just after a given step, or while a
checkpoint is being written. Then, on disk: every visible checkpoint loads, last.pt is one
of them, events.jsonl is whole JSON lines but maybe the last, and `mpt run --resume` from
the newest checkpoint ends with the same weights, bit for bit, as a run never killed.

Cheap on two cores: most processes fork from a server that has imported torch once (they
run the CLI's own code: tests/sigkill_child.py); two trials use the installed `mpt`
console script. Every process trains on one thread, two at a time, so the arithmetic is
the same in all of them.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import sigkill_child
from durable_helpers import MPT, assert_same, write_toml

from engine import checkpoint as ckpt

# digits with val_fraction 0.2: 23 micro-batches of 64 an epoch; 2 epochs = 46 steps with a
# checkpoint after each (keep_last prunes while the kills come); dropout uses the RNG.
PROFILE = {
    "run": {"name": "sk", "device": "cpu", "epochs": 2, "seed": 3, "out_dir": "runs"},
    "data": {"dataset": "digits", "batch_size": 64, "val_fraction": 0.2},
    "model": {"arch": "mlp", "hidden": [64], "dropout": 0.1},
    "optim": {"name": "adam", "lr": 0.003},
    "train": {"log_every": 1},
    "checkpoint": {"every_steps": 1, "keep_last": 2},
}
TOTAL_STEPS = 46
SEED = 20261124
# Forked trials, then trials with the console script: 15 in all (each moment a few times;
# a kill lands where the RNG says, so more trials only repeat the same moments).
KINDS = ["any_time"] * 4 + ["after_step"] * 4 + ["in_write"] * 5
CONSOLE_KINDS = ["after_step", "in_write"]


@dataclass
class Trial:
    index: int
    kind: str  # any_time, after_step, in_write
    folder: Path
    target_step: int
    delay: float
    console: bool = False
    exit_code: int | None = None
    killed_in_a_write: bool = False  # a temporary checkpoint file was left behind

    @property
    def run_dirs(self) -> list[Path]:
        parent = self.folder / "runs" / "sk"
        return sorted(p for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []

    def newest_checkpoint(self) -> Path | None:
        dirs = self.run_dirs
        files = sorted((dirs[0] / "checkpoints").glob("step-*.pt")) if dirs else []
        return files[-1] if files else None


class Processes:
    """Starts `mpt` processes: forked from a server that holds torch, or the console script."""

    def __init__(self):
        self.ctx = multiprocessing.get_context("forkserver")
        # torch._inductor: torch.use_deterministic_algorithms imports it (2 s) on every run.
        preload = ["torch", "torch._inductor", "engine.cli", "engine.trainer", "sklearn.datasets"]
        self.ctx.set_forkserver_preload([*preload, "sigkill_child"])

    def start(self, folder: Path, args: list[str], console: bool = False):
        """-> (pid, is_alive(), wait() -> exit code, negative for a signal)."""
        if console:
            proc = subprocess.Popen(
                [MPT, *args],
                cwd=folder,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
            return proc.pid, lambda: proc.poll() is None, lambda: proc.wait(120)
        proc = self.ctx.Process(target=sigkill_child.mpt, args=(str(folder), args))
        proc.start()

        def wait():
            proc.join(120)
            code = proc.exitcode
            record = folder / f".exit-{proc.pid}"
            if code == 255 and record.exists():
                # multiprocessing's forkserver sometimes loses a child's status and reports
                # 255 (its sentinel pipe reads EOF; seen in about 1 run of this module in 5,
                # already before mpt's own exit code could matter): the child wrote it.
                code = int(record.read_text())
            return code

        return proc.pid, proc.is_alive, wait

    def run(self, folder: Path, args: list[str]) -> int:
        _, _, wait = self.start(folder, args)
        return wait()


def _newest_step(events: Path) -> int:
    """The newest step logged in a live events.jsonl (whole lines only)."""
    step = -1
    try:
        text = events.read_text()
    except FileNotFoundError:
        return step
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break
        if record["kind"] == "step":
            step = record["step"]
    return step


def _writing(folder: Path) -> bool:
    try:
        with os.scandir(folder / "checkpoints") as entries:
            return any(".tmp-" in e.name for e in entries)
    except FileNotFoundError:
        return False  # no checkpoint yet


def _kill_at_its_moment(trial: Trial, processes: Processes) -> Trial:
    """Start the trial's `mpt run`, wait for its moment, SIGKILL it, wait for its end."""
    pid, alive, wait = processes.start(trial.folder, ["run", "profile.toml"], trial.console)
    deadline = time.monotonic() + 120

    def run_dir() -> Path | None:
        dirs = trial.run_dirs
        return dirs[0] if dirs else None

    if trial.kind == "any_time":
        time.sleep(trial.delay)
    else:
        while alive() and time.monotonic() < deadline:
            folder = run_dir()
            if folder is not None and _newest_step(folder / "events.jsonl") >= trial.target_step:
                break
            time.sleep(0.002)
        if trial.kind == "after_step":
            time.sleep(trial.delay)
        else:  # in_write: poll (without sleeping) until a checkpoint is being written
            folder = run_dir()
            while folder is not None and alive() and not _writing(folder):
                pass
    if alive():
        os.kill(pid, signal.SIGKILL)
    trial.exit_code = wait()
    folder = run_dir()
    trial.killed_in_a_write = folder is not None and _writing(folder)
    return trial


@pytest.fixture(scope="module")
def processes() -> Processes:
    return Processes()


@pytest.fixture(scope="module")
def reference(tmp_path_factory, processes) -> tuple[dict, float]:
    """The final weights of a run never killed, and how long its process took."""
    folder = tmp_path_factory.mktemp("reference")
    write_toml(folder / "profile.toml", PROFILE)
    assert processes.run(folder, ["validate", "profile.toml"]) == 0  # starts the server
    began = time.monotonic()
    assert processes.run(folder, ["run", "profile.toml"]) == 0
    return _final_weights(folder / "runs" / "sk"), time.monotonic() - began


@pytest.fixture(scope="module")
def killed_trials(tmp_path_factory, processes, reference):
    """Every trial, killed at its moment; two at a time (this machine has two cores)."""
    _, seconds = reference  # any_time trials die within most of the time a whole run takes
    rng = random.Random(SEED)
    kinds = [(kind, False) for kind in KINDS] + [(kind, True) for kind in CONSOLE_KINDS]
    trials = []
    for i, (kind, console) in enumerate(kinds):
        folder = tmp_path_factory.mktemp(f"trial{i:02d}")
        write_toml(folder / "profile.toml", PROFILE)
        trials.append(
            Trial(
                index=i,
                kind=kind,
                folder=folder,
                target_step=rng.randrange(1, TOTAL_STEPS - 2),
                delay=rng.uniform(0, 0.7 * seconds) if kind == "any_time" else rng.uniform(0, 0.02),
                console=console,
            )
        )
    with ThreadPoolExecutor(max_workers=2) as pool:
        return list(pool.map(lambda t: _kill_at_its_moment(t, processes), trials))


def _final_weights(run_parent: Path) -> dict:
    (last,) = run_parent.glob("*/checkpoints/last.pt")
    state = ckpt.load(last)
    assert state["progress"]["step"] == TOTAL_STEPS
    return state["model"]


def test_a_dozen_trials_or_more_were_killed_at_their_moment_some_inside_a_write(killed_trials):
    killed = [t for t in killed_trials if t.exit_code == -signal.SIGKILL]
    summary = [(t.index, t.kind, t.target_step, t.exit_code) for t in killed_trials]
    # Only a trial whose moment falls after the run's end may finish before the kill.
    assert len(killed) >= 12, summary
    assert sum(t.killed_in_a_write for t in killed) >= 3, summary


def test_every_visible_checkpoint_of_a_killed_run_loads_and_last_pt_is_one_of_them(
    killed_trials,
):
    for trial in killed_trials:
        for run_dir in trial.run_dirs:
            folder = run_dir / "checkpoints"
            files = sorted(folder.glob("*.pt")) if folder.is_dir() else []  # not the hidden temp
            steps = {p.name: ckpt.load(p)["progress"]["step"] for p in files}
            if "last.pt" in steps:
                periodic = {s for name, s in steps.items() if name.startswith("step-")}
                assert steps["last.pt"] in periodic, (trial, steps)
                # last.pt lags the newest file only when the kill came between the two.
                assert steps["last.pt"] >= max(periodic) - 1, (trial, steps)


def test_events_jsonl_of_a_killed_run_is_whole_json_lines_but_maybe_the_last(killed_trials):
    for trial in killed_trials:
        for run_dir in trial.run_dirs:
            if not (run_dir / "events.jsonl").exists():
                continue  # killed between making the folder and opening its log
            lines = (run_dir / "events.jsonl").read_text().splitlines()
            records = [json.loads(line) for line in lines[:-1]]
            assert not records or records[0]["kind"] == "run_started"


def test_resuming_from_the_newest_checkpoint_reaches_the_weights_of_a_run_never_killed(
    killed_trials, processes, reference
):
    to_resume = [t for t in killed_trials if t.exit_code == -signal.SIGKILL]
    to_resume = [(t, t.newest_checkpoint()) for t in to_resume if t.newest_checkpoint()]
    assert len(to_resume) >= 8, "too few trials had saved a checkpoint before the kill"

    def resume(item) -> tuple[Trial, int]:
        trial, newest = item
        args = ["run", "--resume", str(newest), "--set", "checkpoint.every_steps=0",
                "--set", f"run.out_dir={trial.folder / 'resumed'}"]  # fmt: skip
        return trial, processes.run(trial.folder, args)

    with ThreadPoolExecutor(max_workers=2) as pool:
        for trial, code in pool.map(resume, to_resume):
            assert code == 0, trial
            weights = _final_weights(trial.folder / "resumed" / "sk")
            assert_same(weights, reference[0], f"trial {trial.index} ({trial.kind})")
