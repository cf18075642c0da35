"""The command channel into a running Trainer: set from any thread, read between steps."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from engine.events import EventLog, Paused, Resumed
from engine.stop import StopReason


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

    @property
    def interrupted(self) -> bool:
        """A stop by a signal (SIGINT, SIGTERM, SIGHUP) or a closed terminal."""
        return self._stop.is_set() and self.stop_reason == "interrupted"


class StepBoundary:
    """What happens between two optimizer steps: the console's requests (checkpoint,
    pause, stop), agreed across processes, and run.max_time (time paused not counted).

    Under torchrun every process calls `check` at the same steps, and a request on any
    one of them (a signal reaches each) acts on all (`dist.any`; for one process the
    flags as they are), so their collectives stay in step.
    """

    def __init__(self, control: Control, dist, log: EventLog, at, max_time: float | None):
        self.control, self.dist, self.log, self.at = control, dist, log, at
        self.max_time = max_time
        self.started = self.paused_seconds = 0.0

    def start(self) -> None:
        self.started, self.paused_seconds = time.monotonic(), 0.0

    def seconds(self) -> float:
        return time.monotonic() - self.started

    def clock(self) -> float:
        """time.monotonic() less the time spent paused: what epochs and log windows are
        timed on, so a pause shows in no epoch's seconds or samples/s."""
        return time.monotonic() - self.paused_seconds

    def check(self, save: Callable[[str], object]) -> StopReason | None:
        """Save on request (`save("requested")`), hold while paused; why to stop, or None.
        A stop or an interrupt is the caller's to save."""
        c, at, max_time = self.control, self.at, self.max_time
        over = bool(max_time) and self.seconds() - self.paused_seconds >= max_time
        stop, interrupted, asked, pause, over = self.dist.any(
            [c.stop_requested, c.interrupted, c.take_checkpoint_request(), c.pause_requested, over]
        )
        if asked:
            save("requested")
        if pause and not stop:
            self.log.emit(Paused(step=at.step, epoch=at.epoch))
            pause_start = time.monotonic()
            while pause and not stop:  # until no process is paused any more
                c.wait_while_paused(timeout=0.1)  # a checkpoint may be asked for meanwhile
                pause, asked, stop, interrupted = self.dist.any(
                    [
                        c.pause_requested and not c.stop_requested,
                        c.take_checkpoint_request(),
                        c.stop_requested,
                        c.interrupted,
                    ]
                )
                if asked:
                    save("requested")
            self.paused_seconds += time.monotonic() - pause_start
            if not stop:
                self.log.emit(Resumed(step=at.step, epoch=at.epoch))
        if stop:
            return StopReason.INTERRUPTED if interrupted else StopReason.STOPPED
        return StopReason.MAX_TIME if over else None
