"""The headless face: turns events into the lines the tutorials print.

On a terminal a one-line progress bar is redrawn between epoch lines; anywhere else
(nohup, a pipe, CI) only whole lines are written, never a redraw.

Output is never worth a run: a closed terminal (EIO), a reader gone (EPIPE), a full disk
or a closed stdout make a stream go silent on its first failed write, and training goes on.
"""

from __future__ import annotations

import os
import sys
from typing import TextIO

from engine import events as ev
from engine.formatting import metric, number, percent, seconds


def format_epoch(e: ev.EpochEnd) -> str:
    """`epoch 3/15  loss 0.0910 val 0.1406  acc 98.54% val 95.54%  lr 1.00e-03  0.31s`:
    each figure's train value, then its validation one; the groups one space apart where
    two would pass 80 columns (e.g. `epoch 1000/1000 ... acc 100.00% val 100.00%`)."""
    groups = [
        f"epoch {e.epoch:>{len(str(e.epochs))}}/{e.epochs}",
        *_pairs(e),
        f"lr {e.lr:.2e}",
        seconds(e.seconds),
    ]
    line = "  ".join(groups)
    return line if len(line) <= 80 else " ".join(groups)


def _pairs(e: ev.EpochEnd) -> list[str]:
    """`loss 0.0910 val 0.1406`, `acc 98.54% val 95.54%`, `mae 0.4123 val 0.4500`: the
    loss and each metric, train then val; no `val` part when the epoch had no validation."""
    shown = dict(e.metrics)
    if not shown:  # an epoch_end without metrics (written before they existed)
        shown = {"train_acc": e.train_acc, "val_acc": e.val_acc}
    validated = e.val_loss is not None or any(
        v is not None for k, v in shown.items() if k.startswith("val_")
    )
    names = list(dict.fromkeys(k.partition("_")[2] for k in shown if "_" in k))
    shown |= {"train_loss": e.train_loss, "val_loss": e.val_loss}
    pairs = []
    for name in ["loss", *(n for n in names if n != "loss")]:
        train, val = f"train_{name}", f"val_{name}"
        part = f"{name} {metric(train, shown[train])}" if train in shown else name
        if validated and val in shown:
            part += f" val {metric(val, shown[val])}"
        pairs.append(part)
    return pairs


def format_started(e: ev.RunStarted) -> str:
    val = f" / {e.val_samples:,} val" if e.val_samples else " (no validation split)"
    outputs = {"classification": "classes", "multilabel": "labels"}.get(e.task, "targets")
    outputs = outputs.removesuffix("s") if e.num_classes == 1 else outputs
    frozen = ""
    if e.trainable_parameters is not None and e.trainable_parameters < e.parameters:
        frozen = f", {e.trainable_parameters:,} of them trained"
    task = "" if e.task == "classification" else f"{e.task}, "
    return (
        f"{e.dataset}: {task}{e.train_samples:,} train{val} samples, {e.num_classes} "
        f"{outputs}, input {'x'.join(map(str, e.input_shape))}; {e.arch} "
        f"({e.parameters:,} parameters{frozen}) on {e.device}, {e.precision}; batch "
        f"{e.batch_size}"
        + (f" per process x {e.world_size} processes" if e.world_size > 1 else "")
        + (f" x {e.grad_accum} accumulated" if e.grad_accum > 1 else "")
        + (f" = {e.global_batch} a step" if e.global_batch != e.batch_size else "")
        + f", {_count(e.steps_per_epoch, 'step')}/epoch, {_count(e.total_steps, 'step')}"
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def format_finished(e: ev.RunFinished) -> str:
    # step counts the whole run (a resumed one too); seconds only this process's part
    text = f"finished ({e.reason}) at step {e.step} after {seconds(e.seconds)}"
    if e.headline in ("", "val_acc") and e.final_val_acc is not None:
        text += f": final val acc {percent(e.final_val_acc)}, best {percent(e.best_val_acc)}"
    elif e.final_headline is not None:
        text += f": final {e.headline} {metric(e.headline, e.final_headline)}"
        if e.best_value is not None:  # best.pt follows checkpoint.monitor, maybe another
            text += f"; best.pt {e.best_monitor} {metric(e.best_monitor, e.best_value)}"
    return text


def format_early_stop(e: ev.EarlyStop) -> str:
    if e.why == "patience":
        return (
            f"early stopping: {e.monitor} has not improved for {e.wait} validation(s) "
            f"(best {number(e.best)})"
        )
    limit = "above" if e.why == "stop_above" else "below"
    return f"early stopping: {e.monitor} = {number(e.value)} is {limit} the threshold"


def write(stream: TextIO | None, text: str) -> bool:
    """Write and flush `text`; False (and the stream silenced, if it is the process's own
    stdout or stderr) when the stream is gone: closed, a hung-up terminal, a reader that
    went away, a full disk."""
    if stream is None:  # Python's sys.stdout when the process started with fd 1 closed
        return False
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):  # ValueError: a closed file object
        silence(stream)
        return False
    return True


def say(text: str, err: bool = False) -> bool:
    """print() for the command line that never raises: one line to stdout (or stderr)."""
    return write(sys.stderr if err else sys.stdout, text + "\n")


def silence(stream: TextIO | None) -> None:
    """Point a dead stdout/stderr's file descriptor at /dev/null, so that whatever still
    writes to it (Python's flush at exit, a library, a child process) succeeds unseen
    instead of failing (Python's advice for SIGPIPE). Other streams are left as they are."""
    std = (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__)
    if stream is None or not any(stream is s for s in std):
        return
    try:
        fd = stream.fileno()
        devnull = os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError):
        return
    try:
        os.dup2(devnull, fd)
    except OSError:
        pass
    finally:
        os.close(devnull)


def _isatty(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (OSError, ValueError):
        return False


class Console:
    """`quiet` (torchrun's ranks other than 0) shows only errors; `prefix` starts each line.

    `out`/`err` default to the process's stdout/stderr at the time the Console is made. A
    stream whose write fails once is dead for this Console: it is never written again.
    """

    def __init__(
        self,
        out: TextIO | None = None,
        err: TextIO | None = None,
        tty: bool | None = None,
        prefix: str = "",
        quiet: bool = False,
    ):
        self.out: TextIO | None = sys.stdout if out is None else out
        self.err: TextIO | None = sys.stderr if err is None else err
        self.tty = (_isatty(self.out) if tty is None else tty) and not quiet
        self.prefix, self.quiet = prefix, quiet
        self._bar = False
        self._epochs = 0

    def line(self, text: str, err: bool = False) -> None:
        self._clear_bar()
        self._write("err" if err else "out", self.prefix + text + "\n")

    def _write(self, which: str, text: str) -> None:
        """Write to self.out or self.err; on its first failure that stream is dropped."""
        if not write(getattr(self, which), text):
            setattr(self, which, None)

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
        self._write(
            "out",
            f"\r\x1b[Kepoch {e.epoch}/{self._epochs} [{bar}] "
            f"{100 * e.epoch_progress:3.0f}%  loss {e.loss:.4f}  "
            f"{e.samples_per_s:,.0f} samples/s",
        )
        self._bar = self.out is not None

    def _clear_bar(self) -> None:
        if self._bar:
            self._bar = False
            self._write("out", "\r\x1b[K")
