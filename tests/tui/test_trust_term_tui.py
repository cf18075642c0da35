"""mpt-tui --on-hangup stop whose terminal goes away stops its run with a checkpoint and
ends (129); without the flag the run detaches (tests/tui/test_detach.py).

A real pseudo-terminal, closed by the test: with the terminal as the app's controlling
terminal (the kernel sends SIGHUP) and without (no signal at all, as under a shell that
ignores SIGHUP: only the dead terminal says so). (Named apart from tests/test_trust_term.py:
pytest needs distinct file names here.)
"""

from __future__ import annotations

import fcntl
import os
import select
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from durable_helpers import MNIST_NPZ, profile_dict, read_jsonl, run_dir_of, wait_for, write_toml
from tui_helpers import PTY_EXEC

MPT_TUI = str(Path(sys.executable).with_name("mpt-tui"))

LONG = {
    "run": {"name": "term", "epochs": 50},
    "data": {"dataset": "npz", "path": str(MNIST_NPZ)},
    "checkpoint": {"every_epochs": 0, "save_best": False},
}

EXEC = PTY_EXEC


def read_available(fd: int) -> None:
    """Read what the app drew, so that it never blocks on a full terminal."""
    while select.select([fd], [], [], 0)[0]:
        try:
            if not os.read(fd, 65536):
                return
        except OSError:
            return


@pytest.mark.parametrize("ctty", ["ctty", "no-ctty"], ids=["with-sighup", "without-sighup"])
def test_a_closed_terminal_stops_the_tuis_run_with_a_checkpoint_and_exits_129(tmp_path, ctty):
    profile = write_toml(tmp_path / "profile.toml", profile_dict(tmp_path / "runs", LONG))
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-c", EXEC, ctty, MPT_TUI, "--on-hangup", "stop", "--run", str(profile)],
        cwd=tmp_path,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
        env={**os.environ, "TERM": "xterm-256color"},
    )
    os.close(slave)
    parent = tmp_path / "runs" / "term"

    def events() -> list[dict]:
        run_dir = run_dir_of(parent)
        return read_jsonl(run_dir / "events.jsonl") if run_dir else []

    def first_step():
        read_available(master)
        if proc.poll() is not None:
            raise AssertionError(f"mpt-tui ended early ({proc.returncode})")
        return any(e["kind"] == "step" for e in events())

    try:
        wait_for(first_step, 120, "the first step event")
    finally:
        os.close(master)  # the terminal is gone
    try:
        assert proc.wait(timeout=60) == 129
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    last = events()[-1]
    assert (last["kind"], last["reason"]) == ("run_finished", "interrupted")
    saved = [e for e in events() if e["kind"] == "checkpoint_saved"]
    assert [(e["reason"], e["step"]) for e in saved] == [("interrupted", last["step"])]
    assert Path(saved[0]["path"]).is_file()
