"""The control channel of a headless run: pause, resume, checkpoint and stop from elsewhere.

`mpt run` opens `RUN_DIR/control/` (owner-only, 0700) and, a few times a second, takes
the command files it finds there; `mpt-tui --attach RUN_DIR` (or any program) drops one
command a file (0600), written atomically. No socket and no network port: the run
directory's own permissions decide who may steer the run. What a command did shows in
events.jsonl (`paused`, `resumed`, `checkpoint_saved`, `run_finished`), which the
attached console already follows. torch-free.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from engine.errors import MptError

COMMANDS = ("pause", "resume", "checkpoint", "stop")


class ControlChannel:
    def __init__(self, run_dir: str | Path):
        self.dir = Path(run_dir) / "control"

    @property
    def open(self) -> bool:
        """Whether a process listens here: `mpt run` removes the folder when it ends."""
        return self.dir.is_dir()

    def listen(self) -> None:
        """Create the folder for commands, readable and writable by its owner alone."""
        self.dir.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)  # mkdir's mode is masked by the umask

    def send(self, command: str) -> Path:
        """Drop one command for the run; it acts at its next step boundary."""
        if command not in COMMANDS:
            raise MptError(f"control: unknown command {command!r}; use one of {COMMANDS}")
        if not self.open:
            raise MptError(
                f"{self.dir.parent}: this run takes no commands (it has ended, or was not "
                "started by `mpt run`)"
            )
        name = f"{time.time_ns():020d}-{os.getpid()}"
        tmp = self.dir / f".{name}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(command + "\n")
        path = self.dir / f"{name}.cmd"
        os.replace(tmp, path)  # the listener sees the whole file or none of it
        return path

    def take(self) -> list[str]:
        """The commands waiting, oldest first, each taken once (its file removed)."""
        try:
            files = sorted(self.dir.glob("*.cmd"))
        except OSError:
            return []
        commands = []
        for path in files:
            try:
                text = path.read_text().strip()
                path.unlink()
            except OSError:
                continue
            commands.append(text)
        return commands

    def close(self) -> None:
        """Stop listening: remove the folder and anything left in it."""
        for path in self.dir.glob("*") if self.open else ():
            with contextlib.suppress(OSError):
                path.unlink()
        with contextlib.suppress(OSError):
            self.dir.rmdir()
