"""The control channel of a headless run (engine/remote.py) and `mpt run --profile-steps`.

Real files, a real `mpt run` process, torch.profiler's real trace.
"""

from __future__ import annotations

import json
import stat
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import MPT, PROFILES
from durable_helpers import events_jsonl, read_jsonl

from engine.errors import MptError
from engine.gpu import GpuStats
from engine.remote import ControlChannel


def test_the_channel_is_owner_only_and_hands_each_command_over_once(tmp_path: Path):
    channel = ControlChannel(tmp_path)
    channel.listen()
    assert stat.S_IMODE(channel.dir.stat().st_mode) == 0o700
    first = channel.send("pause")
    channel.send("checkpoint")
    assert stat.S_IMODE(first.stat().st_mode) == 0o600
    assert channel.take() == ["pause", "checkpoint"]  # oldest first
    assert channel.take() == []
    channel.close()
    assert not channel.dir.exists()


def test_an_unknown_command_or_a_run_that_takes_none_is_one_sentence(tmp_path: Path):
    channel = ControlChannel(tmp_path)
    with pytest.raises(MptError, match="takes no commands"):
        channel.send("pause")  # nobody listens: the run ended, or was never `mpt run`
    channel.listen()
    with pytest.raises(MptError, match=r"unknown command 'explode'; use one of"):
        channel.send("explode")


def wait_for(predicate, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def kinds(run_dir: Path) -> list[str]:
    return [e["kind"] for e in read_jsonl(run_dir / "events.jsonl")]


def quickstart(tmp_path: Path, *args: str) -> list[str]:
    """`mpt run` on the quickstart profile, its runs under tmp_path/runs."""
    out_dir = f"run.out_dir={json.dumps(str(tmp_path / 'runs'))}"
    return [*MPT, "run", str(PROFILES / "quickstart.toml"), "--set", out_dir, *args]


def test_mpt_run_obeys_commands_dropped_in_its_control_folder(tmp_path: Path):
    proc = subprocess.Popen(
        quickstart(tmp_path, "--set", "run.epochs=2000"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: list(tmp_path.glob("runs/quickstart/*/control")), what="control/")
        (run_dir,) = tmp_path.glob("runs/quickstart/*")
        wait_for(lambda: "step" in kinds(run_dir), what="a step event")
        channel = ControlChannel(run_dir)
        channel.send("pause")
        wait_for(lambda: "paused" in kinds(run_dir), what="paused")
        channel.send("checkpoint")
        wait_for(lambda: "checkpoint_saved" in kinds(run_dir), what="checkpoint_saved")
        channel.send("resume")
        wait_for(lambda: "resumed" in kinds(run_dir), what="resumed")
        channel.send("stop")
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "control: pause requested" in out and "control: stop requested" in out
    log = events_jsonl(run_dir)
    assert log[-1]["kind"] == "run_finished" and log[-1]["reason"] == "stopped"
    reasons = [e["reason"] for e in log if e["kind"] == "checkpoint_saved"]
    assert "requested" in reasons and reasons[-1] == "stop"
    assert not (run_dir / "control").exists()  # nobody listens any more


def test_profile_steps_writes_a_trace_that_perfetto_and_tensorboard_read(tmp_path: Path):
    done = subprocess.run(
        quickstart(tmp_path, "--set", "run.epochs=1", "--profile-steps", "3"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "ERROR" not in done.stderr
    (trace,) = tmp_path.glob("runs/quickstart/*/profiler/*.pt.trace.json")
    assert f"profiler trace (3 steps): {trace}" in done.stdout
    names = {e.get("name", "") for e in json.loads(trace.read_text())["traceEvents"]}
    assert {"ProfilerStep#2", "ProfilerStep#3", "ProfilerStep#4"} <= names  # 3 active steps
    assert any(n.startswith("aten::") for n in names)  # the ops themselves
    (run_dir,) = tmp_path.glob("runs/quickstart/*")
    saved = events_jsonl(run_dir)
    assert [e["path"] for e in saved if e["kind"] == "trace_saved"] == [str(trace)]


def test_gpu_figures_are_silently_absent_without_nvml():
    assert GpuStats(torch.device("cpu")).read() == {}
    # A CUDA device here has no driver (and maybe no nvidia-ml-py): asked once, then off.
    stats = GpuStats(torch.device("cuda"))
    assert stats.read() == {}
    assert not stats.available
