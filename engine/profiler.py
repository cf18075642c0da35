"""`mpt run --profile-steps N`: torch.profiler over N steps, as one `with` and one `.step()`.

One step is skipped and one warms up, then N are recorded into `<run dir>/profiler/`;
a `trace_saved` event names the file. A run shorter than that saves what it recorded
when the `with` ends.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from engine import events as ev

if TYPE_CHECKING:
    from engine.state import TrainState

_SKIPPED, _WARMUP = 1, 1  # steps before the recorded ones


class StepProfiler:
    """Records `steps` optimizer steps of the run at `at` (its step and epoch name the
    trace); off (every call does nothing) for 0 steps, no run directory, or a process
    other than torchrun's rank 0."""

    def __init__(
        self,
        steps: int,
        run_dir: Path | None,
        main: bool,
        device: torch.device,
        log: ev.EventLog,
        at: TrainState,
    ):
        self.steps, self.device, self.log, self.at = steps, device, log, at
        self.on = bool(steps) and run_dir is not None and main
        self.trace_dir = run_dir / "profiler" if run_dir is not None else None
        self.profiled = 0
        self._profile = None

    def __enter__(self) -> StepProfiler:
        if not self.on:
            return self
        # Kineto logs an ERROR line on a CUDA build with no GPU: keep the console for people.
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")
        from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self._profile = profile(
            activities=activities,
            schedule=schedule(wait=_SKIPPED, warmup=_WARMUP, active=self.steps, repeat=1),
            on_trace_ready=tensorboard_trace_handler(str(self.trace_dir)),
            record_shapes=True,
        )
        self._profile.start()
        return self

    def step(self) -> None:
        """After each optimizer step; the trace is written after the last recorded one."""
        if self._profile is None:
            return
        self._profile.step()
        self.profiled += 1
        if self.profiled >= _SKIPPED + _WARMUP + self.steps:
            self._stop()

    def __exit__(self, kind, error, tb) -> None:
        if self._profile is None:
            return
        if error is not None:  # the run failed: stop recording, announce nothing
            with contextlib.suppress(Exception):
                self._profile.stop()
            self._profile = None
            return
        self._stop()  # a run shorter than the profiled steps: what it recorded

    def _stop(self) -> None:
        self._profile.stop()
        self._profile = None
        traces = sorted(self.trace_dir.glob("*.pt.trace.json"), key=lambda f: f.stat().st_mtime)
        if traces:
            steps = max(0, min(self.steps, self.profiled - _SKIPPED - _WARMUP))
            self.log.emit(
                ev.TraceSaved(
                    step=self.at.step, epoch=self.at.epoch, path=str(traces[-1]), steps=steps
                )
            )
