"""The headless face: turns events into the lines the tutorials print.

On a terminal a one-line progress bar is redrawn between epoch lines; anywhere else
(nohup, a pipe, CI) only whole lines are written, never a redraw.
"""

from __future__ import annotations

import sys
from typing import TextIO

from engine import events as ev


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}%"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def format_epoch(e: ev.EpochEnd) -> str:
    return (
        f"epoch {e.epoch:>{len(str(e.epochs))}}/{e.epochs}  "
        f"train loss {_num(e.train_loss)} acc {_pct(e.train_acc)}  "
        f"val loss {_num(e.val_loss)} acc {_pct(e.val_acc)}  "
        f"lr {e.lr:.2e}  {e.seconds:.1f}s"
    )


def format_started(e: ev.RunStarted) -> str:
    val = f" / {e.val_samples:,} val" if e.val_samples else " (no validation split)"
    return (
        f"{e.dataset}: {e.train_samples:,} train{val} samples, {e.num_classes} classes, "
        f"input {'x'.join(map(str, e.input_shape))}; {e.arch} ({e.parameters:,} parameters) "
        f"on {e.device}, {e.precision}; batch {e.batch_size}"
        + (f" per process x {e.world_size} processes" if e.world_size > 1 else "")
        + (f" x {e.grad_accum} accumulated" if e.grad_accum > 1 else "")
        + (f" = {e.global_batch} a step" if e.global_batch != e.batch_size else "")
        + f", {e.steps_per_epoch} steps/epoch, {e.total_steps} steps"
    )


def format_finished(e: ev.RunFinished) -> str:
    text = f"finished ({e.reason}) after {e.step} steps in {e.seconds:.1f}s"
    if e.final_val_acc is not None:
        text += f": final val acc {_pct(e.final_val_acc)}, best {_pct(e.best_val_acc)}"
    return text


def format_early_stop(e: ev.EarlyStop) -> str:
    if e.why == "patience":
        return (
            f"early stopping: {e.monitor} has not improved for {e.wait} validation(s) "
            f"(best {e.best:.4f})"
        )
    limit = "above" if e.why == "stop_above" else "below"
    return f"early stopping: {e.monitor} = {e.value:.4f} is {limit} the threshold"


class Console:
    """`quiet` (torchrun's ranks other than 0) shows only errors; `prefix` starts each line."""

    def __init__(
        self,
        out: TextIO = sys.stdout,
        err: TextIO = sys.stderr,
        tty: bool | None = None,
        prefix: str = "",
        quiet: bool = False,
    ):
        self.out, self.err = out, err
        self.tty = (out.isatty() if tty is None else tty) and not quiet
        self.prefix, self.quiet = prefix, quiet
        self._bar = False
        self._epochs = 0

    def line(self, text: str, err: bool = False) -> None:
        self._clear_bar()
        print(self.prefix + text, file=self.err if err else self.out, flush=True)

    def show(self, e: ev.Event) -> None:
        if self.quiet and not isinstance(e, ev.RunFailed):
            return
        if isinstance(e, ev.RunStarted):
            self._epochs = e.epochs
            self.line(format_started(e))
            if e.resumed_from:
                self.line(f"resuming from {e.resumed_from} at step {e.step}, epoch {e.epoch}")
        elif isinstance(e, ev.Step):
            if self.tty:
                self._draw_bar(e)
        elif isinstance(e, ev.EpochEnd):
            self.line(format_epoch(e))
        elif isinstance(e, ev.CheckpointSaved):
            if e.reason not in ("epoch", "steps", "best"):  # the periodic ones go unsaid
                self.line(f"checkpoint saved ({e.reason}): {e.path}")
        elif isinstance(e, ev.EarlyStop):
            if e.stopping:
                self.line(format_early_stop(e))
        elif isinstance(e, ev.TraceSaved):
            self.line(
                f"profiler trace ({e.steps} steps): {e.path}  (TensorBoard's profiler tab, "
                "or ui.perfetto.dev)"
            )
        elif isinstance(e, ev.Paused):
            self.line(f"paused at step {e.step}")
        elif isinstance(e, ev.Resumed):
            self.line(f"resumed at step {e.step}")
        elif isinstance(e, ev.Warning):
            self.line(f"warning: {e.message}", err=True)
        elif isinstance(e, ev.RunFinished):
            self.line(format_finished(e))
        elif isinstance(e, ev.RunFailed):
            self.line(f"error: {e.error}", err=True)

    def _draw_bar(self, e: ev.Step, width: int = 24) -> None:
        filled = round(width * e.epoch_progress)
        bar = "#" * filled + "." * (width - filled)
        self.out.write(
            f"\r\x1b[Kepoch {e.epoch}/{self._epochs} [{bar}] "
            f"{100 * e.epoch_progress:3.0f}%  loss {e.loss:.4f}  "
            f"{e.samples_per_s:,.0f} samples/s"
        )
        self.out.flush()
        self._bar = True

    def _clear_bar(self) -> None:
        if self._bar:
            self.out.write("\r\x1b[K")
            self._bar = False
