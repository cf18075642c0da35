"""Helpers for the TUI tests (imported by name: tests/tui is on sys.path under pytest)."""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path


async def wait_for(pilot, predicate: Callable[[], object], timeout: float = 30.0) -> None:
    """Let the app run until `predicate()` is true; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {predicate}")
        await pilot.pause(0.05)


def event_line(kind: str, **fields) -> str:
    base = {"kind": kind, "step": 0, "epoch": 1, "time": 1_700_000_000.0}
    base.update(fields)
    return json.dumps(base)


def write_run(
    runs: Path, name: str, stamp: str, lines: list[str], checkpoints: list[str] = ()
) -> Path:
    """A run directory as the engine lays it out, with the given events.jsonl lines."""
    run_dir = runs / name / stamp
    run_dir.mkdir(parents=True)
    (run_dir / "events.jsonl").write_text("".join(line + "\n" for line in lines))
    (run_dir / "profile.toml").write_text(f'[run]\nname = "{name}"\n')
    if checkpoints:
        (run_dir / "checkpoints").mkdir()
        for c in checkpoints:
            (run_dir / "checkpoints" / c).write_bytes(b"not a real checkpoint")
    return run_dir


def run_async(test):
    """Run an async test function with asyncio.run (no pytest-asyncio needed)."""

    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        return asyncio.run(test(*args, **kwargs))

    return wrapper


async def press(pilot, *keys: str) -> None:
    """Press keys like `pilot.press`, without its wait for the process to go idle.

    `pilot.press` waits (up to a second a key) for the CPU to quiet down, which never
    happens while a run trains in the same process: this sends each key event the
    same way and lets the app handle it.
    """
    from textual import events
    from textual.keys import _character_to_key

    app = pilot.app
    for key in keys:
        if len(key) == 1 and not key.isalnum():
            key = _character_to_key(key)
        char = key if len(key) == 1 else {"enter": "\r", "escape": "\x1b"}.get(key)
        event = events.Key(key, char)
        event.set_sender(app)
        app._driver.send_message(event)
        await pilot.pause(0.05)


async def set_text(pilot, path: str, text: str) -> None:
    """Show the key's section, focus its field and replace the text, as a person would."""
    form = pilot.app.screen
    form.show_section(path.partition(".")[0], focus=path)
    # the focus moves after the next refresh: on a busy machine that is more than one pause
    await wait_for(pilot, lambda: form.focused is form.row(path).control)
    form.row(path).control.value = text
    await pilot.pause()


# A child's first program for a test in a real pty: optionally make the pty (fd 0, in a new
# session) its controlling terminal (so that closing it sends SIGHUP), then become the
# command: [sys.executable, "-c", PTY_EXEC, "ctty" or "no-ctty", program, args...].
PTY_EXEC = (
    "import fcntl, os, sys, termios\n"
    "if sys.argv[1] == 'ctty': fcntl.ioctl(0, termios.TIOCSCTTY, 0)\n"
    "os.execv(sys.argv[2], sys.argv[2:])"
)
