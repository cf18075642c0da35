"""The control channel of a headless run: pause, resume, checkpoint and stop from elsewhere.

`mpt run` makes `RUN_DIR/control/` (owner-only, 0700) and, a few times a second, takes
the command files it finds there; `mpt-tui --attach RUN_DIR` (or any program) drops one
command a file (0600), written atomically. No socket and no network port: the run
directory's own permissions decide who may steer the run. What a command did shows in
events.jsonl (`paused`, `resumed`, `checkpoint_saved`, `run_finished`), which the
attached console already follows. torch-free.

Only what is plainly a command is taken: a regular file of a few bytes, owned by the
user (or root), opened without following a symbolic link and without waiting (a FIFO
would block the run). Anything else is left unread, with one warning; the run removes
only the folder it made and what was dropped in it, never anything a link points to.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import time
from collections.abc import Callable
from pathlib import Path

from engine import safefs
from engine.errors import MptError

COMMANDS = ("pause", "resume", "checkpoint", "stop")
MAX_COMMAND_BYTES = 64  # commands are single words: a bigger file is not one
_PRIVATE_DIR = 0o700  # the control folder: its owner alone reads and drops commands


def _to_stderr(message: str) -> None:
    with contextlib.suppress(OSError, ValueError):  # a console that is gone loses it
        print(f"warning: {message}", file=sys.stderr, flush=True)


def _what(st: os.stat_result) -> str:
    """What a refused entry is, in words."""
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if stat.S_ISFIFO(st.st_mode):
        return "a named pipe (FIFO)"
    if stat.S_ISDIR(st.st_mode):
        return "a folder"
    if not stat.S_ISREG(st.st_mode):
        return "a device or socket"
    if not safefs.trusted_owner(st.st_uid):
        return f"a file of {safefs.user_name(st.st_uid)}"
    return f"a file of {st.st_size} bytes (a command is one word)"


class ControlChannel:
    def __init__(self, run_dir: str | Path, warn: Callable[[str], None] | None = None):
        self.dir = Path(run_dir) / "control"
        self._warn = warn or _to_stderr
        self._fd: int | None = None  # the folder this process made and listens on
        self._warned: set[str] = set()

    @property
    def open(self) -> bool:
        """Whether a process listens here: `mpt run` removes the folder when it ends."""
        try:
            return stat.S_ISDIR(os.lstat(self.dir).st_mode)
        except OSError:
            return False

    def listen(self) -> bool:
        """Make the folder for commands, readable and writable by its owner alone. Anything
        already at its place was not made by this run: then the run takes no commands (and
        says so) rather than obey or clean up someone else's folder. True if listening."""
        try:
            os.mkdir(self.dir, _PRIVATE_DIR)
            fd = safefs.open_dir(self.dir)
        except OSError as e:
            why = "something is already there" if isinstance(e, FileExistsError) else e.strerror
            self._warn(f"cannot make {self.dir} ({why}); this run takes no commands")
            return False
        os.fchmod(fd, _PRIVATE_DIR)  # mkdir's mode is masked by the umask
        self._fd = fd
        return True

    def send(self, command: str) -> Path:
        """Drop one command for the run; it acts at its next step boundary."""
        if command not in COMMANDS:
            raise MptError(f"control: unknown command {command!r}; use one of {COMMANDS}")
        try:
            fd = safefs.open_dir(self.dir)  # never into a folder a symbolic link points to
        except (FileNotFoundError, NotADirectoryError):
            raise MptError(
                f"{self.dir.parent}: this run takes no commands (it has ended, or was not "
                "started by `mpt run`)"
            ) from None
        except OSError as e:
            raise MptError(
                f"{self.dir}: cannot send a command ({e.strerror}); only the user who "
                "started the run (or root) can steer it"
            ) from None
        try:
            return self._drop(fd, command)
        finally:
            os.close(fd)

    def _drop(self, fd: int, command: str) -> Path:
        owner = os.fstat(fd).st_uid
        if owner != os.geteuid() and os.geteuid() != 0:
            raise MptError(
                f"{self.dir} belongs to {safefs.user_name(owner)}; mpt sends commands only "
                "to runs you started"
            )
        name = f"{time.time_ns():020d}-{os.getpid()}"
        tmp = f".{name}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | safefs.NO_FOLLOW
        with os.fdopen(os.open(tmp, flags, 0o600, dir_fd=fd), "w") as f:
            f.write(command + "\n")
        # The listener sees the whole file or none of it.
        os.replace(tmp, f"{name}.cmd", src_dir_fd=fd, dst_dir_fd=fd)
        return self.dir / f"{name}.cmd"

    def take(self) -> list[str]:
        """The commands waiting, oldest first, each taken once (its file removed)."""
        if self._fd is None:
            return []
        try:
            names = sorted(n for n in os.listdir(self._fd) if n.endswith(".cmd"))
        except OSError:
            return []
        commands = []
        for name in names:
            text = self._take_one(name)
            if text is not None:
                commands.append(text)
        return commands

    def _take_one(self, name: str) -> str | None:
        """The text of one command file, or None (refused with a warning, or gone)."""
        try:
            st = os.stat(name, dir_fd=self._fd, follow_symlinks=False)
        except OSError:
            return None
        plain = stat.S_ISREG(st.st_mode) and safefs.trusted_owner(st.st_uid)
        if not plain or st.st_size > MAX_COMMAND_BYTES:
            self._refuse(name, st)
            return None
        try:
            # O_NONBLOCK: should the entry have become a FIFO since, opening it cannot wait.
            flags = os.O_RDONLY | os.O_NONBLOCK | safefs.NO_FOLLOW
            fd = os.open(name, flags, dir_fd=self._fd)
        except OSError:
            return None
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
                return None  # replaced between the look and the open: the next poll decides
            data = os.read(fd, MAX_COMMAND_BYTES + 1)
        finally:
            os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=self._fd)
        return data.decode("utf-8", "replace").strip()

    def _refuse(self, name: str, st: os.stat_result) -> None:
        """Leave a command file that is not one unread: removed if the user's (a link
        itself, never what it points to), once a warning either way."""
        removed = safefs.trusted_owner(st.st_uid) and self._remove(name)
        if name not in self._warned:
            self._warned.add(name)
            fate = "removed it" if removed else "left it there"
            self._warn(f"control: ignored {self.dir / name}: {_what(st)}, not a command; {fate}")

    def _remove(self, name: str) -> bool:
        """Remove one entry of the command folder without following it; a folder only
        when empty. False if it stays."""
        try:
            st = os.stat(name, dir_fd=self._fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                os.rmdir(name, dir_fd=self._fd)
            elif safefs.trusted_owner(st.st_uid):
                os.unlink(name, dir_fd=self._fd)
            else:
                return False
        except FileNotFoundError:
            return True
        except OSError:
            return False
        return True

    def close(self) -> None:
        """Stop listening: remove the folder this run made and what was dropped in it;
        what cannot be removed that way stays, and the folder with it (said once)."""
        if self._fd is None:
            return
        try:
            left = [name for name in os.listdir(self._fd) if not self._remove(name)]
            if left:
                shown = ", ".join(sorted(left)[:3]) + (", ..." if len(left) > 3 else "")
                self._warn(f"left {self.dir} in place: it still holds {shown}")
                return
            made, there = os.fstat(self._fd), os.lstat(self.dir)
            if (made.st_dev, made.st_ino) == (there.st_dev, there.st_ino):
                os.rmdir(self.dir)  # the folder this run made, not one put in its place
        except OSError:
            pass
        finally:
            os.close(self._fd)
            self._fd = None
