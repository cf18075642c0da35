"""Runs that outlive the console (issue 16): a live run of mpt-tui detaches when its terminal
goes away (a real pty closed: with the kernel's SIGHUP, and with no signal at all), on `q`
then `d`, and on `d` in the dashboard. It trains on in the same process, its lines in
RUN_DIR/console.log; `mpt ls` lists it as running; its control channel stops it with a
checkpoint, and then the process ends with `mpt run`'s exit code (0 for a stop).
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import shlex
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from durable_helpers import (
    MNIST_NPZ,
    mpt,
    profile_dict,
    read_jsonl,
    run_dir_of,
    wait_for,
    write_toml,
)
from tui_helpers import PTY_EXEC

from engine.remote import ControlChannel

MPT_TUI = str(Path(sys.executable).with_name("mpt-tui"))

LONG = {
    "run": {"name": "outlive", "epochs": 1000},  # stopped long before its end
    "data": {"dataset": "npz", "path": str(MNIST_NPZ)},
    "checkpoint": {"every_epochs": 0, "save_best": False},
}

EXEC = PTY_EXEC


class Console:
    """mpt-tui in a real terminal of 120x40, its run's folder and events."""

    def __init__(self, tmp_path: Path, ctty: str = "ctty", shell: bool = False):
        """`shell`: an interactive bash in the terminal, and mpt-tui started from it."""
        profile = write_toml(tmp_path / "profile.toml", profile_dict(tmp_path / "runs", LONG))
        self.master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        command = [MPT_TUI, "--run", str(profile)]
        program = ["/bin/bash", "--norc", "--noprofile", "-i"] if shell else command
        self.proc = subprocess.Popen(
            [sys.executable, "-c", EXEC, ctty, *program],
            cwd=tmp_path,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            start_new_session=True,
            env={**os.environ, "TERM": "xterm-256color"},
        )
        os.close(slave)
        self.parent = tmp_path / "runs" / "outlive"
        self.screen = b""
        if shell:
            self.type(shlex.join(command) + "\n")

    @property
    def run_dir(self) -> Path | None:
        return run_dir_of(self.parent)

    def events(self) -> list[dict]:
        return read_jsonl(self.run_dir / "events.jsonl") if self.run_dir else []

    def steps(self) -> int:
        return sum(e["kind"] == "step" for e in self.events())

    def read(self) -> None:
        """Read what the app drew, so that it never blocks on a full terminal."""
        while self.master >= 0 and select.select([self.master], [], [], 0)[0]:
            try:
                data = os.read(self.master, 65536)
            except OSError:
                return
            if not data:
                return
            self.screen += data

    def wait_for_steps(self, n: int = 1) -> None:
        def enough():
            self.read()
            assert self.proc.poll() is None, f"mpt-tui ended early ({self.proc.returncode})"
            return self.steps() >= n

        wait_for(enough, 120, f"{n} step events")

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def hang_up(self) -> None:
        os.close(self.master)
        self.master = -1

    def trains_on(self) -> None:
        """After detaching: the process lives, console.log has the run's lines, and more
        steps come than there were."""
        log = self.run_dir / "console.log"

        def detached() -> bool:
            self.read()
            if self.proc.poll() is not None:
                tail = [(e["kind"], e.get("reason")) for e in self.events()[-2:]]
                raise AssertionError(f"mpt-tui ended ({self.proc.returncode}); events end {tail}")
            return log.is_file()

        wait_for(detached, 30, "console.log")
        before = self.steps()
        wait_for(lambda: self.read() or self.steps() > before + 2, 60, "more steps")
        assert self.proc.poll() is None
        assert "detached from the terminal; pid" in log.read_text()

    def stop_from_outside(self) -> int:
        ControlChannel(self.run_dir).send("stop")
        code = self.proc.wait(timeout=60)
        last = self.events()[-1]
        assert (last["kind"], last["reason"]) == ("run_finished", "stopped")
        saved = [e for e in self.events() if e["kind"] == "checkpoint_saved"]
        assert saved and saved[-1]["reason"] == "stop" and Path(saved[-1]["path"]).is_file()
        log = (self.run_dir / "console.log").read_text()
        assert "finished (stopped)" in log and f"mpt run --resume {self.run_dir}" in log
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.master >= 0:
            os.close(self.master)


@pytest.fixture
def console(tmp_path):
    made = []

    def start(ctty: str = "ctty", shell: bool = False) -> Console:
        made.append(Console(tmp_path, ctty, shell))
        return made[-1]

    yield start
    for c in made:
        c.close()


@pytest.mark.parametrize("ctty", ["ctty", "no-ctty"], ids=["with-sighup", "without-sighup"])
def test_a_closed_terminal_detaches_the_run_and_it_trains_on_until_stopped(console, ctty):
    c = console(ctty)
    c.wait_for_steps()
    c.hang_up()  # tmux kill-session, a dropped SSH link
    c.trains_on()
    listed = mpt("ls", "runs", cwd=c.parent.parent.parent)
    row = next(line for line in listed.stdout.splitlines() if "outlive/" in line)
    assert row.split()[1] == "running", listed.stdout
    assert c.stop_from_outside() == 0


# (`d` on the dashboard: tests/tui/test_log_screen.py's detached run, which then reads
# the run's console.log through `mpt-tui --attach` and `l`)
@pytest.mark.parametrize("keys", ["qd"], ids=["q-then-d"])
def test_detaching_from_the_console_leaves_the_run_training(console, keys):
    c = console()
    c.wait_for_steps()
    c.type(keys[0])
    if keys == "qd":
        wait_for(lambda: c.read() or b"stop and quit" in c.screen, 30, "the quit question")
        c.type("d")
    wait_for(lambda: c.read() or b"detached: the run trains on" in c.screen, 30, "detached")
    c.trains_on()
    c.hang_up()  # and the terminal may go as well
    assert c.stop_from_outside() == 0


def test_in_a_shell_ctrl_z_and_bg_give_the_prompt_back_and_the_run_outlives_the_shell(console):
    # Detached, the run trains in the console's own process: the shell that started it
    # waits for it. The detach line says how to have the prompt now; it works: the run
    # trains on in the background, and after the shell (and its terminal) are gone.
    c = console(shell=True)
    c.wait_for_steps()
    c.type("d")
    wait_for(lambda: c.read() or b"Ctrl-Z, then bg" in c.screen, 30, "the detach line")
    pid = int(re.search(rb"in this process \(pid (\d+)\)", c.screen).group(1))
    c.type("\x1a")  # Ctrl-Z: the shell's job control stops the process ...
    wait_for(lambda: c.read() or b"Stopped" in c.screen, 30, "the job stopped")
    c.type("bg; echo prompt-$((6 * 7))\n")  # ... and bg lets it train on behind the prompt
    wait_for(lambda: c.read() or b"prompt-42" in c.screen, 30, "the prompt back")
    c.trains_on()
    c.type("exit\n")  # the shell goes, and its terminal with it
    assert c.proc.wait(timeout=30) == 0
    c.hang_up()
    before = c.steps()
    wait_for(lambda: c.steps() > before + 2, 60, "steps after the shell ended")
    ControlChannel(c.run_dir).send("stop")
    wait_for(lambda: c.events()[-1]["kind"] == "run_finished", 60, "the run's end")
    assert c.events()[-1]["reason"] == "stopped"
    wait_for(lambda: ended(pid), 30, "the process's end")


def ended(pid: int) -> bool:
    """Gone, or a zombie (its parent, the shell, is gone: whoever adopted it reaps it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rpartition(")")[2].split()[0] == "Z"
