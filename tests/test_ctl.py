"""`mpt ctl` steers a live run from a shell, `mpt rm` tidies the runs folder, `mpt ls` says
where a live run trains.

Real processes: a headless `mpt run` in the background (as from nohup or a scheduler),
the `mpt` commands under test as a user types them, a real pty for the question.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
from durable_helpers import (
    MPT,
    events_jsonl,
    mpt,
    profile_dict,
    read_jsonl,
    spawn_mpt,
    train,
    wait_for,
    write_toml,
)

LONG = {"run": {"epochs": 2000}}  # far longer than any test waits: only a stop ends it


def kinds(run_dir: Path) -> list[str]:
    return [e["kind"] for e in read_jsonl(run_dir / "events.jsonl")]


@pytest.fixture
def live(tmp_path: Path):
    """A headless `mpt run` of a long tiny profile, training: (process, run directory)."""
    profile = write_toml(tmp_path / "long.toml", profile_dict(tmp_path / "runs", LONG))
    proc = spawn_mpt("run", profile, cwd=tmp_path)
    try:
        run_dir = wait_for(
            lambda: next(iter((tmp_path / "runs" / "tiny").glob("*/control")), None),
            timeout=120,
            what="the run's control folder",
        ).parent
        wait_for(lambda: "step" in kinds(run_dir), timeout=120, what="a step event")
        yield proc, run_dir
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def ctl(run_dir: Path, *args: str, cwd: Path):
    return mpt("ctl", run_dir, *args, cwd=cwd, timeout=120)


def test_mpt_ctl_pauses_continues_checkpoints_and_stops_a_live_run(live, tmp_path: Path):
    proc, run_dir = live
    paused = ctl(run_dir, "pause", cwd=tmp_path)
    assert paused.returncode == 0, paused.stderr
    assert re.fullmatch(r"paused at step \d+ \(epoch \d+\)\n", paused.stdout)
    assert kinds(run_dir)[-1] == "paused"  # acknowledged means: in its events already

    again = ctl(run_dir, "pause", cwd=tmp_path)
    assert (again.returncode, again.stdout) == (0, f"already paused at step {_step(paused)}\n")

    saved = ctl(run_dir, "checkpoint", cwd=tmp_path)  # also while paused
    assert saved.returncode == 0, saved.stderr
    saves = [e for e in events_of(run_dir) if e["kind"] == "checkpoint_saved"]
    (requested,) = [e for e in saves if e["reason"] == "requested"]
    assert saved.stdout == f"checkpoint saved at step {_step(paused)} " + (
        f"(epoch {requested['epoch']}): {requested['path']}\n"
    )

    went_on = ctl(run_dir, "continue", cwd=tmp_path)
    assert went_on.returncode == 0, went_on.stderr
    assert went_on.stdout.startswith("continued at step ")
    assert "resumed" in kinds(run_dir)

    stopped = ctl(run_dir, "stop", cwd=tmp_path)
    assert stopped.returncode == 0, stopped.stderr
    log = events_of(run_dir)
    assert log[-1]["kind"] == "run_finished" and log[-1]["reason"] == "stopped"
    last_saved = [e for e in log if e["kind"] == "checkpoint_saved"][-1]
    assert last_saved["reason"] == "stop"
    assert stopped.stdout.startswith(f"stopped at step {log[-1]['step']} ")
    assert stopped.stdout.endswith(f"; checkpoint {last_saved['path']}\n")
    assert proc.wait(timeout=60) == 0

    after = ctl(run_dir, "pause", cwd=tmp_path)
    assert after.returncode == 1 and after.stdout == ""
    assert after.stderr == (
        f"error: {run_dir}: the run has ended (stopped, step {log[-1]['step']}); "
        "it takes no commands\n"
    )


def test_a_live_run_is_listed_with_its_pid_never_removed_and_gets_no_late_command(
    live, tmp_path: Path
):
    proc, run_dir = live
    listed = mpt("ls", tmp_path / "runs", cwd=tmp_path, timeout=60)
    assert listed.returncode == 0, listed.stderr
    (row,) = [line for line in listed.stdout.splitlines() if line.startswith("tiny/")]
    assert f"running (pid {proc.pid} on {socket.gethostname()})" in row

    refused = mpt("rm", "--yes", run_dir, cwd=tmp_path, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr == (
        f"error: {run_dir}: the run is running (pid {proc.pid} on {socket.gethostname()}); "
        f"stop it first (mpt ctl {run_dir} stop), then remove it\n"
    )
    assert (run_dir / "events.jsonl").is_file()

    # A run that answers nothing (here: stopped by SIGSTOP) gets no late command: what it
    # did not take in time is taken back.
    os.kill(proc.pid, signal.SIGSTOP)
    try:
        stuck = ctl(run_dir, "pause", "--timeout", "1", cwd=tmp_path)
        assert not list((run_dir / "control").iterdir())
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    assert stuck.returncode == 1
    assert stuck.stderr == (
        f"error: {run_dir}: the run did not acknowledge the pause within 1 s (the command "
        "was taken back); a long validation or checkpoint delays it: try again with a "
        "longer --timeout\n"
    )
    steps = kinds(run_dir).count("step")
    wait_for(lambda: kinds(run_dir).count("step") > steps + 5, timeout=60, what="more steps")
    assert "paused" not in kinds(run_dir)

    # A run name is looked up in --runs, as mpt show does: its newest run.
    by_name = mpt("ctl", "tiny", "stop", "--runs", tmp_path / "runs", cwd=tmp_path, timeout=120)
    assert by_name.returncode == 0, by_name.stderr
    assert proc.wait(timeout=60) == 0
    relisted = mpt("ls", tmp_path / "runs", cwd=tmp_path, timeout=60)
    assert "pid" not in relisted.stdout and " stopped " in relisted.stdout


def events_of(run_dir: Path) -> list[dict]:
    return read_jsonl(run_dir / "events.jsonl")


def _step(result) -> int:
    return int(re.search(r"step (\d+)", result.stdout).group(1))


# ---- runs that have ended: made by the engine in this process ----


@pytest.fixture(scope="module")
def ended(tmp_path_factory):
    """A runs folder with a finished, a failed and a crashed run of `tiny` and a failed run
    of `other`: {label: run directory}."""
    runs = tmp_path_factory.mktemp("ended") / "runs"
    made = {
        "finished": train(profile_dict(runs)).run_dir,
        "failed": train(profile_dict(runs, {"optim": {"lr": 1e30}}), check=False).run_dir,
        "other_failed": train(
            profile_dict(runs, {"run": {"name": "other"}, "optim": {"lr": 1e30}}), check=False
        ).run_dir,
        "crashed": _crashed(train(profile_dict(runs)).run_dir),
    }
    for label in ("failed", "other_failed"):
        assert events_jsonl(made[label])[-1]["kind"] == "run_failed", label
    return runs, made


def _crashed(run_dir: Path) -> Path:
    """The run as a SIGKILL leaves it: no last word, and its process gone."""
    gone = subprocess.Popen(["true"])
    gone.wait()
    lines = (run_dir / "events.jsonl").read_text().splitlines()
    kept = []
    for line in lines:
        event = json.loads(line)
        if event["kind"] == "run_started":
            event["pid"] = gone.pid
        if event["kind"] != "run_finished":
            kept.append(json.dumps(event))
    (run_dir / "events.jsonl").write_text("\n".join(kept) + "\n")
    return run_dir


@pytest.fixture
def copy_of(ended, tmp_path: Path):
    """A fresh copy of the ended runs folder (a test removes from it)."""
    import shutil

    runs, made = ended
    shutil.copytree(runs, tmp_path / "runs", symlinks=True)
    return tmp_path / "runs", {k: tmp_path / "runs" / v.relative_to(runs) for k, v in made.items()}


def test_ctl_refuses_an_ended_or_crashed_run_with_exit_1(ended, tmp_path: Path):
    _, made = ended
    done = ctl(made["finished"], "stop", cwd=tmp_path)
    assert done.returncode == 1
    assert re.fullmatch(
        rf"error: {made['finished']}: the run has ended \(finished, step \d+\); "
        r"it takes no commands\n",
        done.stderr,
    )
    crashed = ctl(made["crashed"], "checkpoint", cwd=tmp_path)
    assert crashed.returncode == 1
    assert crashed.stderr == (
        f"error: {made['crashed']}: the run stopped writing events without finishing "
        "(crashed); it takes no commands\n"
    )


def test_ctl_usage_mistakes_exit_2_with_one_sentence(ended, tmp_path: Path):
    _, made = ended
    unknown = ctl(made["finished"], "explode", cwd=tmp_path)
    assert unknown.returncode == 2
    assert unknown.stderr == (
        "error: mpt ctl: unknown command 'explode'; use pause, continue, checkpoint or stop\n"
    )
    missing = ctl(tmp_path / "nope", "pause", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.startswith(f"error: {tmp_path / 'nope'}: no such run directory")


def test_rm_removes_ended_runs_and_says_what_it_removed(copy_of, tmp_path: Path):
    runs, made = copy_of
    gone = [made["finished"], made["failed"]]
    result = mpt("rm", "--yes", *gone, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert [line.split(" (")[0] for line in lines] == [f"removed {p}" for p in gone]
    assert all(re.search(r"\(\d[\d.]* (KB|MB)\)$", line) for line in lines)
    assert not any(p.exists() for p in gone)
    assert made["crashed"].is_dir() and made["other_failed"].is_dir()


def test_rm_failed_removes_the_failed_and_crashed_runs_of_one_name(copy_of, tmp_path: Path):
    runs, made = copy_of
    result = mpt("rm", "--failed", "tiny", "--out-dir", runs, "--yes", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert not made["failed"].exists() and not made["crashed"].exists()
    assert made["finished"].is_dir() and made["other_failed"].is_dir()
    assert sorted(line.split(" (")[0] for line in result.stdout.splitlines()) == sorted(
        f"removed {made[k]}" for k in ("failed", "crashed")
    )
    none_left = mpt("rm", "--failed", "tiny", "--out-dir", runs, "--yes", cwd=tmp_path)
    assert (none_left.returncode, none_left.stdout) == (
        0,
        f"no failed or crashed runs of tiny in {runs}\n",
    )


def test_rm_off_a_terminal_without_yes_removes_nothing_and_exits_2(copy_of, tmp_path: Path):
    runs, made = copy_of
    result = mpt("rm", made["finished"], cwd=tmp_path, timeout=60)  # stdin: /dev/null
    assert result.returncode == 2
    assert re.fullmatch(
        r"mpt rm: remove 1 run \(\d[\d.]* KB\) needs a yes, and stdin is not a terminal to "
        r"ask on; pass --yes\n",
        result.stderr,
    )
    assert made["finished"].is_dir()


def test_rm_refuses_what_is_not_a_run_directory_and_never_follows_a_link(copy_of, tmp_path: Path):
    runs, made = copy_of
    plain = tmp_path / "notes"
    plain.mkdir()
    (plain / "keep.txt").write_text("mine")
    link = runs / "tiny" / "link"
    link.symlink_to(made["finished"])
    for target, says in (
        (plain, "not a run directory (it has no events.jsonl or profile.toml)"),
        (link, "a symbolic link; mpt rm removes run directories themselves, not links"),
        (tmp_path / "nope", "no such run directory"),
    ):
        result = mpt("rm", "--yes", made["failed"], target, cwd=tmp_path, timeout=60)
        assert result.returncode == 2
        assert result.stderr.startswith(f"error: {target}: {says}")
        assert made["failed"].is_dir()  # one bad argument: nothing is removed
    assert (plain / "keep.txt").is_file() and (made["finished"] / "events.jsonl").is_file()


def test_rm_asks_at_a_terminal_and_removes_only_on_yes(copy_of, tmp_path: Path):
    runs, made = copy_of
    no = _rm_at_a_terminal(made["finished"], "n\n", tmp_path)
    assert re.search(r"remove 1 run \(\d[\d.]* KB\)\? \[y/N\]", no)
    assert "nothing removed" in no and made["finished"].is_dir()
    yes = _rm_at_a_terminal(made["finished"], "y\n", tmp_path)
    assert f"removed {made['finished']}" in yes and not made["finished"].exists()


def _rm_at_a_terminal(run_dir: Path, answer: str, cwd: Path) -> str:
    """`mpt rm RUN_DIR` with a pty for stdin, stdout and stderr; `answer` typed once the
    question shows. What the terminal showed."""
    main, child = os.openpty()
    proc = subprocess.Popen(
        [MPT, "rm", str(run_dir)], cwd=cwd, stdin=child, stdout=child, stderr=child
    )
    os.close(child)
    shown = b""
    deadline = time.monotonic() + 60
    try:
        while b"[y/N]" not in shown and time.monotonic() < deadline:
            shown += os.read(main, 4096)
        os.write(main, answer.encode())
        while True:
            try:
                chunk = os.read(main, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
    finally:
        assert proc.wait(timeout=60) == 0
        os.close(main)
    return shown.decode().replace("\r\n", "\n")


def test_a_paused_run_that_saves_a_checkpoint_is_still_paused_in_the_runs_list(tmp_path: Path):
    from durable_helpers import finish, next_event, start

    from engine.runs import summarize_run

    run = start(profile_dict(tmp_path / "runs", LONG))
    try:
        next_event(run, "step", timeout=120)
        run.pause()
        next_event(run, "paused", timeout=60)
        run.checkpoint()
        next_event(run, "checkpoint_saved", timeout=60)
        summary = summarize_run(run.run_dir)
        assert (summary.state, summary.process) == (
            "paused",
            f"pid {os.getpid()} on {socket.gethostname()}",
        )
    finally:
        run.stop()
        finish(run)
