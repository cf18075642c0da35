"""Following a run from the process that trains it: its events to a console, the commands
of its control channel (RUN_DIR/control/) to the run."""

from __future__ import annotations

import queue
import time

from engine import events as ev
from engine.remote import ControlChannel

CONTROL_POLL_S = 0.2  # how often the control channel is looked at


def follow(handle, console) -> None:
    """Show the run's events on `console` and take the commands of its control channel
    (`mpt-tui --attach`, `mpt ctl`) until the run ends: `mpt run`'s loop, and a detached
    console's (tui/detach.py)."""
    # Commands from `mpt-tui --attach` (files in RUN_DIR/control/), taken every CONTROL_POLL_S.
    warn = lambda message: console.line(f"warning: {message}", err=True)  # noqa: E731
    channel = ControlChannel(handle.run_dir, warn) if handle.run_dir is not None else None
    if channel is not None:
        channel.listen()
    next_poll = 0.0
    try:
        while True:
            if channel is not None and time.monotonic() >= next_poll:
                next_poll = time.monotonic() + CONTROL_POLL_S
                apply_commands(handle, channel.take(), console)
            try:
                event = handle.events.get(timeout=CONTROL_POLL_S)
            except queue.Empty:
                if not handle.is_alive() and handle.events.empty():
                    return
                continue
            console.show(event)
            if isinstance(event, ev.RunFinished | ev.RunFailed):
                return
    finally:
        if channel is not None:
            channel.close()


def apply_commands(handle, commands: list[str], console) -> None:
    actions = {
        "pause": handle.pause,
        "resume": handle.resume,
        "checkpoint": handle.checkpoint,
        "stop": handle.stop,
    }
    for command in commands:
        if command in actions:
            console.line(f"control: {command} requested (RUN_DIR/control)")
            actions[command]()
        else:
            console.line(f"control: ignored an unknown command {command!r}", err=True)
