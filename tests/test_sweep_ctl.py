"""A sweep as a live thing (issue 17): `mpt sweep FILE --detach` outlives its terminal,
`mpt ctl SWEEP_DIR pause|continue|stop` steers its queue and its trials, `mpt ls` shows
it, and a runner killed with SIGKILL reads as not live at once.

Real processes: the detached runner, its trials (cold `mpt run`s: ~7 s of CPU each, so
the whole file runs four to their end, and stops two while they import torch), a real
pty hang-up, real signals.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from durable_helpers import mpt, profile_dict, read_jsonl, spawn_mpt, wait_for, write_toml
from test_trust_term import read_available, start_on_a_terminal

from engine.sweep_ctl import find_sweeps, is_sweep_dir, read_sweep_state

HOST = socket.gethostname()


def sweep_file(folder: Path, epochs: int, lrs: list[float]) -> None:
    write_toml(folder / "profile.toml", profile_dict(folder / "runs", {"run": {"epochs": epochs}}))
    (folder / "sweep.toml").write_text(
        f'profile = "profile.toml"\nparallel = 1\n[grid]\n"optim.lr" = {lrs}\n'
    )


def printed_sweep_dir(text: str) -> Path | None:
    found = re.search(r"^sweep directory: (\S+)  \(", text, re.MULTILINE)
    return Path(found.group(1)) if found else None


def records(sweep_dir: Path) -> dict[int, str]:
    return {i: r.state for i, r in read_sweep_state(sweep_dir).records.items()}


def live_run(sweep_dir: Path, trial: int, after: Path | None = None) -> Path | None:
    """The trial's newest run directory once it has logged a step (and is not `after`)."""
    runs = sorted(p.parent for p in (sweep_dir / f"trial-{trial:03d}").glob("*/events.jsonl"))
    if not runs or runs[-1] == after:
        return None
    kinds = [e["kind"] for e in read_jsonl(runs[-1] / "events.jsonl")]
    return runs[-1] if "step" in kinds else None


def last_event(run_dir: Path) -> dict:
    return read_jsonl(run_dir / "events.jsonl")[-1]


# A trial's process (`... engine.cli run ...`) waits here before anything else.
SLOW_TRIAL_START = """\
import time
with open("/proc/self/cmdline", "rb") as f:
    if b"\\x00run\\x00" in f.read():
        time.sleep(60)
"""


def gone(pid: int) -> bool:
    """No such process, or a zombie (exited; whoever adopted it has not reaped it yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except FileNotFoundError:
        return True


def test_a_detached_sweep_outlives_its_terminals_hang_up_and_finishes(tmp_path: Path):
    # `mpt sweep --detach` on a pty that is its controlling terminal; the pty is closed
    # (a dropped SSH link): the sweep's runner, in a session of its own, runs it to the end
    sweep_file(tmp_path, 1, [0.01])
    proc, master = start_on_a_terminal(["sweep", "sweep.toml", "--detach"], cwd=tmp_path)
    shown = b""
    try:

        def backgrounded() -> bool:
            nonlocal shown
            shown += read_available(master)
            return b"steers it" in shown

        wait_for(backgrounded, 120, "mpt sweep --detach's last line")
        assert proc.wait(timeout=60) == 0, shown
    finally:
        os.close(master)  # the hang-up
    text = shown.decode()
    sweep_dir = tmp_path / printed_sweep_dir(text)
    assert f"mpt ctl {printed_sweep_dir(text)} pause|continue|stop steers it" in text
    wait_for(lambda: not read_sweep_state(sweep_dir).live, 240, "the sweep's end")
    state = read_sweep_state(sweep_dir)
    log_file = sweep_dir / "console.log"
    wait_for(lambda: "best: trial 1, val_acc" in log_file.read_text(), 60, "the table")
    log = log_file.read_text()
    assert (state.state, state.exit, records(sweep_dir)) == ("finished", 0, {0: "finished"}), log
    # its console.log says what `mpt sweep FILE` says
    assert log.startswith(f"sweep directory: {printed_sweep_dir(text)}  (")
    assert "trial 1/1 finished: best val_acc " in log
    listed = mpt("ls", "runs", cwd=tmp_path)
    assert re.search(rf"^sweep/{sweep_dir.name}\s+finished\s+1/1\s+val_acc \S+ \(trial 1\)$",
                     listed.stdout, re.MULTILINE), listed.stdout  # fmt: skip


def test_pause_holds_the_queue_continue_goes_on_stop_exits_130_and_resume_finishes(
    tmp_path: Path,
):
    # (100 epochs, about 5 s here: the pause surely lands before trial 1 ends)
    sweep_file(tmp_path, 100, [0.001, 0.003])
    started = mpt("sweep", "sweep.toml", "--detach", cwd=tmp_path)
    assert started.returncode == 0, started.stderr
    sweep_dir = tmp_path / printed_sweep_dir(started.stdout)
    assert find_sweeps(tmp_path / "runs") == [sweep_dir] and is_sweep_dir(sweep_dir)
    run1 = wait_for(lambda: live_run(sweep_dir, 0), 120, "trial 1's first step")

    def ctl(*args) -> str:
        done = mpt("ctl", *args, cwd=tmp_path, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    # pause: the queue holds, the running trial pauses
    said = ctl(sweep_dir, "pause")
    assert re.fullmatch(r"paused: no new trial starts; trial 1: paused at step \d+ \(epoch \d+\)\n",
                        said), said  # fmt: skip
    assert last_event(run1)["kind"] == "paused"
    state = read_sweep_state(sweep_dir)
    assert (state.live, state.state, state.host) == (True, "paused", HOST)
    runner = state.pid
    refused = mpt("sweep", "--resume", sweep_dir, cwd=tmp_path)
    assert refused.returncode == 2 and refused.stderr == (
        f"error: {sweep_dir}: the sweep is already running (pid {runner} on {HOST}); it needs "
        f"no second runner: mpt ctl {sweep_dir} stop stops it, mpt sweep --resume {sweep_dir} "
        "then finishes it\n"
    )
    listed = mpt("ls", tmp_path / "runs", cwd=tmp_path).stdout
    assert f"paused (pid {runner} on {HOST})     0/2  -" in listed, listed

    # trial 1 alone goes on and finishes: its slot is free, and no new trial starts
    assert ctl(run1, "continue").startswith("continued at step ")
    wait_for(lambda: records(sweep_dir)[0] == "finished", 120, "trial 1's end")
    wait_for(lambda: "the sweep is paused" in (sweep_dir / "console.log").read_text(), 30,
             "the runner's word that it holds its queue")  # fmt: skip
    assert records(sweep_dir)[1] == "queued" and not (sweep_dir / "trial-001").exists()

    # continue: trial 2 starts; paused, then stopped, it saves a checkpoint; exit 130
    # (paused as it starts: the pause waits for its run, and lands at its first steps)
    assert ctl(sweep_dir, "continue") == "resumed: trials start again (no trial was paused)\n"
    wait_for(lambda: records(sweep_dir)[1] == "running", 60, "trial 2's start")
    assert "trial 2: paused at step " in ctl(sweep_dir, "pause", "--timeout", "120")
    (run2,) = [p.parent for p in (sweep_dir / "trial-001").glob("*/events.jsonl")]
    assert ctl(sweep_dir, "stop", "--timeout", "120") == (
        f"stopped: 1 trial interrupted with checkpoints; mpt sweep --resume {sweep_dir} "
        "finishes it\n"
    )
    state = read_sweep_state(sweep_dir)
    assert (state.live, state.state, state.exit) == (False, "interrupted", 130)
    assert records(sweep_dir) == {0: "finished", 1: "interrupted"}
    saved = [e for e in read_jsonl(run2 / "events.jsonl") if e["kind"] == "checkpoint_saved"]
    assert saved[-1]["reason"] == "interrupted" and last_event(run2)["kind"] == "run_finished"
    gone_ctl = mpt("ctl", sweep_dir, "pause", cwd=tmp_path)
    assert (gone_ctl.returncode, gone_ctl.stderr) == (1, (
        f"error: {sweep_dir}: the sweep is not running: its runner ended (exit 130); it takes "
        f"no pause: mpt sweep --resume {sweep_dir} finishes it\n"
    ))  # fmt: skip

    # --resume (here in the background too) takes trial 2 up from its checkpoint and
    # finishes the sweep: exit 0
    final = mpt("sweep", "--resume", sweep_dir, "--detach", cwd=tmp_path)
    assert final.returncode == 0, final.stdout + final.stderr
    assert "the sweep runs in the background (pid " in final.stdout
    wait_for(lambda: not read_sweep_state(sweep_dir).live, 240, "the sweep's end")
    state = read_sweep_state(sweep_dir)
    assert (state.state, state.exit, records(sweep_dir)) == (
        "finished", 0, {0: "finished", 1: "finished"}
    )  # fmt: skip
    log = (sweep_dir / "console.log").read_text()
    assert re.search(r"resuming the sweep .*: 1 of 2 trials to run", log), log
    assert "trial 2/2 started: optim.lr=0.003, resuming " in log


def test_detach_checks_everything_first_and_a_sweep_that_never_ran_takes_no_command(
    tmp_path: Path,
):
    sweep_file(tmp_path, 1, [0.001, -1.0])
    bad = mpt("sweep", "sweep.toml", "--detach", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stdout == ""
    assert "trial 2 (optim.lr=-1.0): optim.lr: must be > 0 (got -1.0)" in bad.stderr
    assert "Traceback" not in bad.stderr
    assert not (tmp_path / "runs").exists()  # nothing made, nothing started
    usage = mpt("sweep", "--detach", cwd=tmp_path)
    assert usage.returncode == 2 and "mpt sweep: give a sweep file" in usage.stderr

    # an --emit sweep (no runner): listed as not started, and it takes no command
    sweep_file(tmp_path, 1, [0.001, 0.01])
    emitted = mpt("sweep", "sweep.toml", "--emit", cwd=tmp_path)
    sweep_dir = tmp_path / printed_sweep_dir(emitted.stderr)
    listed = mpt("ls", tmp_path / "runs", cwd=tmp_path)
    assert listed.stdout == (
        "SWEEP                  STATE        TRIALS  BEST\n"
        f"sweep/{sweep_dir.name}  not started     0/2  -\n"
    )
    refused = mpt("ctl", sweep_dir, "pause", cwd=tmp_path)
    assert refused.returncode == 1 and refused.stderr == (
        f"error: {sweep_dir}: the sweep is not running: no runner has started it (mpt sweep "
        f"--emit's commands run its trials); it takes no pause: mpt sweep --resume "
        f"{sweep_dir} finishes it\n"
    )
    unknown = mpt("ctl", sweep_dir, "jump", cwd=tmp_path)
    assert unknown.returncode == 2 and "unknown command 'jump'" in unknown.stderr


@pytest.fixture(autouse=True)
def _no_runner_left(tmp_path: Path):
    """A failed test leaves no runner or trial training behind."""
    yield
    for runner in (tmp_path / "runs").glob("*/*/runner.json"):
        state = read_sweep_state(runner.parent)
        if state.live and state.pid:
            os.kill(state.pid, signal.SIGTERM)


def test_a_stop_while_a_trial_starts_keeps_it_and_a_sigkilled_runner_is_not_live(
    tmp_path: Path,
):
    # the stop reaches the trial while it is still starting, before its run began: that
    # trial has not failed, it has not started: --resume starts it (exit 130, queued).
    # Its start is made slow (a sitecustomize that waits in trials alone): the stop always
    # lands there, and no trial here spends seconds importing torch.
    sweep_file(tmp_path, 1, [0.01])
    slow = tmp_path / "slow"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text(SLOW_TRIAL_START)
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(slow), os.environ.get("PYTHONPATH")]))}
    started = mpt("sweep", "sweep.toml", "--detach", cwd=tmp_path, env=env)
    sweep_dir = tmp_path / printed_sweep_dir(started.stdout)
    wait_for(lambda: records(sweep_dir)[0] == "running", 60, "the trial's start")
    stopped = mpt("ctl", sweep_dir, "stop", "--timeout", "120", cwd=tmp_path, timeout=180)
    assert stopped.returncode == 0, stopped.stderr
    assert stopped.stdout == (
        f"stopped: 1 trial stopped before its run began; mpt sweep --resume {sweep_dir} "
        "finishes it\n"
    )
    state = read_sweep_state(sweep_dir)
    assert (state.live, state.state, state.exit, records(sweep_dir)) == (
        False, "interrupted", 130, {0: "queued"}
    )  # fmt: skip

    # a runner killed with SIGKILL reads as not live at once, even before it is reaped
    # (its pid is a zombie); its trial, a process of its own, is ended here by hand
    out = tmp_path / "resume.txt"
    with open(out, "w") as f:
        resumer = spawn_mpt("sweep", "--resume", sweep_dir, cwd=tmp_path, stdout=f,
                            stderr=subprocess.STDOUT, **env)  # fmt: skip
    trial = None
    try:
        trial = wait_for(lambda: re.search(r"trial 1/1 started: .*\(pid (\d+)\)",
                                           out.read_text()), 60, "the trial's start")  # fmt: skip
        assert read_sweep_state(sweep_dir).pid == resumer.pid
        resumer.send_signal(signal.SIGKILL)
        wait_for(lambda: gone(resumer.pid), 30, "the runner's death")
        assert not read_sweep_state(sweep_dir).live  # a zombie: not live
    finally:
        resumer.kill()
        resumer.wait()
        with contextlib.suppress(ProcessLookupError, AttributeError):
            os.kill(int(trial.group(1)), signal.SIGKILL)
    state = read_sweep_state(sweep_dir)
    assert (state.live, state.state, state.pid) == (False, "interrupted", None)
    killed = mpt("ctl", sweep_dir, "stop", cwd=tmp_path)
    assert killed.returncode == 1 and killed.stderr == (
        f"error: {sweep_dir}: the sweep is not running: its runner is gone (killed, or its "
        f"machine went down); it takes no stop: mpt sweep --resume {sweep_dir} finishes it\n"
    )
    listed = mpt("ls", tmp_path / "runs", cwd=tmp_path).stdout
    assert f"sweep/{sweep_dir.name}  interrupted     0/1  -" in listed, listed
