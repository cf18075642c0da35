"""The command channel into a running Trainer: set from any thread, read between steps."""

from __future__ import annotations

import threading


class Control:
    """Pause, resume and stop requests; the Trainer acts on them at the next step boundary."""

    def __init__(self) -> None:
        self._go = threading.Event()  # set while the run may train
        self._go.set()
        self._stop = threading.Event()
        self._checkpoint = threading.Event()
        self.stop_reason = "stopped"

    def pause(self) -> None:
        self._go.clear()

    def resume(self) -> None:
        self._go.set()

    def stop(self, reason: str = "stopped") -> None:
        """Ask the run to end at the next step boundary; `reason` ends up in run_finished."""
        if not self._stop.is_set():
            self.stop_reason = reason
        self._stop.set()
        self._go.set()  # a paused run must wake up to stop

    def checkpoint(self) -> None:
        """Ask for a checkpoint at the next step boundary (also while paused)."""
        self._checkpoint.set()

    def take_checkpoint_request(self) -> bool:
        """True once per request: the Trainer calls this and saves when it is true."""
        if self._checkpoint.is_set():
            self._checkpoint.clear()
            return True
        return False

    def wait_while_paused(self, timeout: float | None = None) -> bool:
        """Block while paused; returns False if still paused after `timeout` seconds."""
        return self._go.wait(timeout)

    @property
    def pause_requested(self) -> bool:
        return not self._go.is_set()

    @property
    def stop_requested(self) -> bool:
        return self._stop.is_set()
