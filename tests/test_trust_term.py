"""A console that goes away never costs the run: `mpt run` on a terminal that closes, a
pipe whose reader leaves, a closed or full stdout; and the resume hint names a checkpoint
that exists.

Real components only: `mpt run` on a real pseudo-terminal whose master side the test
closes (the kernel hangs the terminal up: SIGHUP, then EIO on every write), real pipes,
/dev/full, a stdout closed by the shell, real signals.
"""

from __future__ import annotations

import io
import os
import select
import signal
import subprocess
import sys
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
    profile_dict,
    read_jsonl,
    run_dir_of,
    spawn_mpt,
    train,
    wait_for,
    write_toml,
)

from engine import events as ev
from engine.console import Console

# Real MNIST (8,000 images, 125 steps an epoch), many epochs: the run is still going
# when the test acts, and its only checkpoint is the one the interrupt writes.
LONG = {
    "run": {"name": "term", "epochs": 50},
    "data": {"dataset": "npz", "path": str(MNIST_NPZ)},
    "checkpoint": {"every_epochs": 0, "save_best": False},
}

# A user model whose factory can hold the trainer's setup until the test says go (so a
# signal surely lands before the first step) and whose forward can be slowed (so a second
# signal surely lands inside a step). Both only where the test's environment asks.
TERMMOD = """
import os, threading, time
from pathlib import Path
import torch.nn as nn

class Slow(nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        time.sleep(float(os.environ.get("TERM_TEST_DELAY", "0")))
        return self.inner(x)

def make(in_shape, num_classes):
    hold = os.environ.get("TERM_TEST_HOLD")
    if hold and threading.current_thread().name == "mpt-trainer":
        Path(hold, "held").touch()
        while not Path(hold, "go").exists():
            time.sleep(0.02)
    c, h, w = in_shape
    return Slow(nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 32), nn.ReLU(),
                              nn.Linear(32, num_classes)))
"""

# Run as the child's first program: make the pty (fd 0, in a new session) the controlling
# terminal, then become `mpt`. The kernel's hang-up then signals mpt itself.
ON_A_TERMINAL = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def long_profile(tmp_path: Path, *extras: dict) -> Path:
    data = profile_dict(tmp_path / "runs", LONG, *extras)
    return write_toml(tmp_path / "profile.toml", data)


def events_of(tmp_path: Path) -> list[dict]:
    run_dir = run_dir_of(tmp_path / "runs" / "term")
    return read_jsonl(run_dir / "events.jsonl") if run_dir else []


def steps(events: list[dict]) -> int:
    return sum(e["kind"] == "step" for e in events)


def read_available(fd: int) -> bytes:
    """Whatever the terminal has shown so far (read, so that mpt never blocks on it)."""
    out = b""
    while select.select([fd], [], [], 0)[0]:
        try:
            chunk = os.read(fd, 65536)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    return out


def start_on_a_terminal(args: list[str], cwd: Path) -> tuple[subprocess.Popen, int]:
    """`mpt ARGS` with a fresh pseudo-terminal as its stdin, stdout, stderr and controlling
    terminal; returns the process and the terminal's master side."""
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-c", ON_A_TERMINAL, MPT, *args],
        cwd=cwd,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    return proc, master


def ended(proc: subprocess.Popen, timeout: float = 120) -> int:
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"mpt did not end within {timeout} s") from None


def assert_resumes_exactly(tmp_path: Path, profile: Path, run_dir: Path) -> None:
    """`mpt run --resume RUN_DIR` to the end of the epoch ends with the weights, optimizer
    and metrics of a run never stopped (as tests/test_signals.py checks)."""
    state = load(run_dir / "checkpoints" / "last.pt")
    epochs = state["progress"]["epochs_done"] + 1
    r = mpt("run", "--resume", run_dir, "--set", f"run.epochs={epochs}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    resumed = printed_run_dir(r.stdout)
    data = read_toml(profile)
    straight = train(merge(data, {"run": {"epochs": epochs, "out_dir": str(tmp_path / "ref")}}))
    a = load(resumed / "checkpoints" / "last.pt")
    b = load(straight.ckpt_dir / "last.pt")
    for s in (a, b):
        s.pop("time"), s["progress"].pop("events"), s["profile"]["run"].pop("out_dir")
    assert_same(a, b)
    assert metrics(read_jsonl(resumed / "events.jsonl")) == metrics(straight.jsonl())


def read_toml(path: Path) -> dict:
    import tomllib

    return tomllib.loads(path.read_text())


# ---- a terminal that closes ----


def test_a_closed_terminal_stops_mpt_run_with_a_checkpoint_exit_130_and_it_resumes_exactly(
    tmp_path,
):
    profile = long_profile(tmp_path)
    proc, master = start_on_a_terminal(["run", str(profile)], tmp_path)
    try:
        shown = b""

        def first_step():
            nonlocal shown
            shown += read_available(master)
            if proc.poll() is not None:
                raise AssertionError(f"mpt ended early ({proc.returncode}): {shown!r}")
            return steps(events_of(tmp_path)) >= 1

        wait_for(first_step, 120, "the first step event")
    finally:
        os.close(master)  # the terminal is gone: SIGHUP, and EIO for every later write
    assert ended(proc) == 130
    assert b"run directory:" in shown

    events = events_of(tmp_path)
    last = events[-1]
    assert (last["kind"], last["reason"]) == ("run_finished", "interrupted")
    saved = [e for e in events if e["kind"] == "checkpoint_saved"]
    assert [(e["reason"], e["step"]) for e in saved] == [("interrupted", last["step"])]
    assert Path(saved[0]["path"]).is_file()
    assert last["step"] >= 1 and steps(events) == last["step"]
    assert_resumes_exactly(tmp_path, profile, run_dir_of(tmp_path / "runs" / "term"))


def test_a_second_sighup_while_stopping_does_not_cut_the_checkpoint_short(tmp_path):
    # A closed terminal sends SIGHUP more than once (the kernel to the session leader, the
    # shell to its jobs); each step here takes over 0.3 s, so the second lands inside it.
    (tmp_path / "termmod.py").write_text(TERMMOD)
    profile = long_profile(tmp_path, {"model": {"arch": "termmod:make"}})
    err = tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        proc = spawn_mpt("run", profile, cwd=tmp_path, stderr=stderr, TERM_TEST_DELAY="0.15")
    try:
        wait_for(lambda: steps(events_of(tmp_path)) >= 1, 120, "the first step event")
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: stopping" in err.read_text(), 30, "the SIGHUP's message")
        proc.send_signal(signal.SIGHUP)
        proc.send_signal(signal.SIGTERM)
        assert ended(proc) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    events = events_of(tmp_path)
    assert [e.get("reason") for e in events if e["kind"] == "checkpoint_saved"] == ["interrupted"]
    assert (events[-1]["kind"], events[-1]["reason"]) == ("run_finished", "interrupted")
    assert err.read_text().count("stopping after the current step") == 1


# ---- a pipe whose reader leaves, a stdout that is closed or full ----


SHORT = {"run": {"name": "term", "epochs": 2}}


def assert_completed(tmp_path: Path, stderr: str) -> None:
    events = events_of(tmp_path)
    assert (events[-1]["kind"], events[-1]["reason"]) == ("run_finished", "completed")
    run_dir = run_dir_of(tmp_path / "runs" / "term")
    assert load(run_dir / "checkpoints" / "last.pt")["progress"]["epochs_done"] == 2
    assert "Traceback" not in stderr and "terminate called" not in stderr, stderr


def test_mpt_run_piped_into_head_finishes_the_run_when_the_reader_leaves(tmp_path):
    profile = write_toml(tmp_path / "profile.toml", profile_dict(tmp_path / "runs", SHORT))
    err = tmp_path / "stderr.txt"
    with open(err, "w") as stderr:
        # `mpt run ... | head -1`: one line read, then the read end closed (EPIPE after)
        proc = spawn_mpt("run", profile, cwd=tmp_path, stdout=subprocess.PIPE, stderr=stderr)
    assert proc.stdout.readline().startswith(b"run directory: ")
    proc.stdout.close()
    assert ended(proc, 240) == 0
    assert_completed(tmp_path, err.read_text())


@pytest.mark.parametrize(
    "redirect",
    ['exec "$0" "$@" >&-', 'exec "$0" "$@" >/dev/full', 'exec "$0" "$@" >/dev/full 2>&1'],
    ids=["stdout-closed", "stdout-on-a-full-disk", "both-on-a-full-disk"],
)
def test_mpt_run_whose_stdout_is_closed_or_full_finishes_the_run(tmp_path, redirect):
    profile = write_toml(tmp_path / "profile.toml", profile_dict(tmp_path / "runs", SHORT))
    r = subprocess.run(
        ["sh", "-c", redirect, MPT, "run", str(profile)],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr
    assert_completed(tmp_path, r.stderr)


def test_a_console_whose_stream_fails_goes_silent_on_it_and_keeps_the_other():
    class Gone(io.StringIO):
        def write(self, text):
            raise OSError(5, "Input/output error")

    err = io.StringIO()
    console = Console(out=Gone(), err=err, tty=True)
    console.show(ev.Step(step=1, epoch=1, loss=1.0, epoch_progress=0.5))  # the bar: fails
    console.line("resume with: somewhere")
    console.show(ev.Warning(message="still here"))
    assert console.out is None
    assert err.getvalue() == "warning: still here\n"


# ---- the resume hint names a checkpoint that exists ----


def start_held(tmp_path: Path, args: list[str]) -> tuple[subprocess.Popen, Path, Path]:
    """`mpt ARGS` whose model factory waits in the trainer's setup until the test says go."""
    hold = tmp_path / "hold"
    hold.mkdir(exist_ok=True)
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = spawn_mpt(
            *args,
            cwd=tmp_path,
            stdout=stdout,
            stderr=stderr,
            TERM_TEST_HOLD=str(hold),
            PYTHONUNBUFFERED="1",
        )
    return proc, out, err


def sigterm_in_setup(tmp_path: Path, args: list[str]) -> tuple[str, str]:
    """Start `mpt ARGS`, SIGTERM it while its setup is held, let setup go on; its output."""
    proc, out, err = start_held(tmp_path, args)
    try:
        wait_for(
            lambda: (tmp_path / "hold" / "held").exists() and "run directory:" in out.read_text(),
            120,
            "the trainer's setup",
        )
        time.sleep(0.2)  # the signal handlers are installed just after that line
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "SIGTERM: stopping" in err.read_text(), 30, "the SIGTERM's message")
        (tmp_path / "hold" / "go").touch()
        assert ended(proc) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    return out.read_text(), err.read_text()


def test_sigterm_during_setup_says_nothing_was_saved_instead_of_a_resume_hint(tmp_path):
    (tmp_path / "termmod.py").write_text(TERMMOD)
    profile = long_profile(tmp_path, {"model": {"arch": "termmod:make"}})
    stdout, stderr = sigterm_in_setup(tmp_path, ["run", str(profile)])
    run_dir = run_dir_of(tmp_path / "runs" / "term")
    assert steps(read_jsonl(run_dir / "events.jsonl")) == 0
    assert not (run_dir / "checkpoints" / "last.pt").exists()
    assert "resume with" not in stdout
    assert "nothing was saved: the run stopped before its first checkpoint" in stdout


def test_a_resumed_run_stopped_in_setup_names_the_checkpoint_it_resumed_from(tmp_path, monkeypatch):
    (tmp_path / "termmod.py").write_text(TERMMOD)
    profile = long_profile(tmp_path, {"model": {"arch": "termmod:make"}})
    # The run to resume from: the engine's own, in this process (only the second `mpt` is
    # under test); termmod imported from tmp_path, and forgotten after.
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        first_dir = train(merge(read_toml(profile), {"run": {"epochs": 1}})).run_dir
    finally:
        sys.modules.pop("termmod", None)
    checkpoint = first_dir / "checkpoints" / "last.pt"
    assert checkpoint.is_file()

    stdout, _ = sigterm_in_setup(tmp_path, ["run", str(profile), "--resume", str(first_dir)])
    second_dir = printed_run_dir(stdout)
    assert second_dir != first_dir
    assert not (second_dir / "checkpoints" / "last.pt").exists()
    # the profile names model code: the hint names it too (the checkpoint alone is refused)
    assert f"resume with: mpt run {profile} --resume {checkpoint}" in stdout.splitlines()
