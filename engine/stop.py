"""Why a run ends, and the one table that turns it into exit codes, run states and labels.

Torch-free: `mpt ls`, `mpt show`, the CLI and the TUI read it without importing torch.
The loop returns a `StopReason` (None: go on); `run_finished.reason` carries its value.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class StopReason(enum.StrEnum):
    """Why the loop stopped; the value is `run_finished.reason` in events.jsonl."""

    COMPLETED = "completed"
    EARLY_STOPPED = "early_stopped"
    STOPPED = "stopped"  # the console's or the control channel's stop
    MAX_TIME = "max_time"
    INTERRUPTED = "interrupted"  # SIGINT, SIGTERM, SIGHUP or a closed terminal


@dataclass(frozen=True)
class Ending:
    """What a way of ending means to each face."""

    exit_code: int  # of `mpt run`
    state: str  # engine.runs' state of the run directory
    label: str  # what `mpt ls`, `mpt show` and the TUI print
    saves: str  # the checkpoint reason written when the loop stops this way


ENDINGS: dict[StopReason, Ending] = {
    StopReason.COMPLETED: Ending(EXIT_OK, "finished", "finished", "final"),
    StopReason.EARLY_STOPPED: Ending(EXIT_OK, "early_stopped", "early stopped", "final"),
    StopReason.STOPPED: Ending(EXIT_OK, "stopped", "stopped", "stop"),
    StopReason.MAX_TIME: Ending(EXIT_OK, "max_time", "time limit", "final"),
    StopReason.INTERRUPTED: Ending(EXIT_INTERRUPTED, "interrupted", "interrupted", "interrupted"),
}

# Every state a run directory can be in (engine.runs), with its label.
STATE_LABELS: dict[str, str] = {
    "running": "running",
    "paused": "paused",
    **{e.state: e.label for e in ENDINGS.values()},
    "failed": "failed",
    "crashed": "crashed",
    "unreadable": "unreadable",
}


def stop_reason(text: str | None) -> StopReason | None:
    """The StopReason a run_finished's reason names; None for anything else (a newer mpt's)."""
    try:
        return StopReason(text)
    except ValueError:
        return None


def run_state(reason: str | None) -> str:
    """engine.runs' state for a run_finished reason ("" from an older mpt: finished)."""
    known = stop_reason(reason or StopReason.COMPLETED)
    return ENDINGS[known].state if known else str(reason)


def state_label(state: str) -> str:
    """How a state is printed: `early stopped`, `time limit`, ...; unknown ones as they are."""
    return STATE_LABELS.get(state, state)


def exit_code(reason: str | None, user_error: bool = False) -> int:
    """`mpt run`'s exit code for how the run ended (reason None or "failed": it failed)."""
    known = stop_reason(reason)
    if known is not None:
        return ENDINGS[known].exit_code
    return EXIT_USAGE if user_error else EXIT_FAILED
