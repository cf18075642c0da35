"""The dashboard's view-model: what the screen shows, folded from events by plain code.

`RunView.apply(event)` updates the view from one engine event; `build_view(events)`
folds a whole list (a live queue's backlog, or a finished run's events.jsonl). Nothing
here touches a terminal, a clock or a file, so it is tested without Textual, and the
same events always give the same view (what the snapshot tests rely on).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from engine import events as ev
from engine.formatting import metric as format_metric
from engine.formatting import number, percent
from engine.stop import run_state, state_label
from engine.task_spec import lower_is_better

RATE_SMOOTHING_S = 5.0  # seconds over which the dashboard's samples/s is averaged
MAX_POINTS = 500  # per curve; older points are thinned so a long run draws as fast as a short one
_LINKS = ("last.pt", "best.pt")  # names the engine links to a step-NNNNNN.pt file
ROUTINE_CHECKPOINTS = ("epoch", "steps", "best")  # the periodic ones, not a user's or an end's


@dataclass
class Series:
    """A curve that keeps at most `max_points` points by halving its density when full.

    The newest point is always kept, so the curve's end is the latest value.
    """

    max_points: int = MAX_POINTS
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)
    _stride: int = 1
    _since: int = 0
    _tail: tuple[float, float] | None = None

    def add(self, x: float, y: float | None) -> None:
        if y is None or not math.isfinite(y):
            return  # a plot cannot draw NaN or inf; the text panels show such values
        self._since += 1
        if self._since < self._stride:
            self._tail = (x, y)
            return
        self._since, self._tail = 0, None
        self.xs.append(x)
        self.ys.append(y)
        if len(self.xs) > self.max_points:
            self.xs, self.ys = self.xs[::2], self.ys[::2]
            self._stride *= 2

    def points(self) -> tuple[list[float], list[float]]:
        if self._tail is None:
            return list(self.xs), list(self.ys)
        return [*self.xs, self._tail[0]], [*self.ys, self._tail[1]]

    def __len__(self) -> int:
        return len(self.xs) + (self._tail is not None)

    @property
    def last(self) -> float | None:
        if self._tail is not None:
            return self._tail[1]
        return self.ys[-1] if self.ys else None


@dataclass
class MetricTrack:
    """One metric over the epochs (`val_mae`, `train_acc`): its curve, last and best value."""

    name: str
    series: Series = field(default_factory=Series)
    last: float | None = None  # this epoch's (None: not reported, or not finite)
    best: float | None = None  # in the metric's own direction (lower is better for mae)
    best_epoch: int | None = None

    def add(self, epoch: int, value: float | None) -> None:
        self.series.add(epoch, value)
        self.last = value
        if value is None or not math.isfinite(value):
            return
        if self.best is None or (
            value < self.best if lower_is_better(self.name) else value > self.best
        ):
            self.best, self.best_epoch = value, epoch


@dataclass
class GpuMemory:
    allocated: int
    reserved: int
    peak: int
    total: int | None
    util: int | None = None  # percent, temperature in C, power in W: from NVML, if any
    temp: int | None = None
    power: float | None = None


@dataclass
class HostFigures:
    """The machine beside the training, from the last step event (engine/host.py)."""

    cpu_percent: float | None  # this process; 100 = one core busy
    rss: int | None
    mem_available: int | None
    disk_free: int | None
    data_wait: float | None  # share of the window waiting for data; None: cached data


@dataclass
class BestCheckpoint:
    monitor: str  # checkpoint.monitor
    value: float | None
    epoch: int
    step: int


@dataclass
class EarlyStopView:
    monitor: str
    value: float | None
    best: float | None
    wait: int
    patience: int
    stopping: bool
    why: str


@dataclass
class RunView:
    """Everything the dashboard draws. Updated in place by `apply`."""

    name: str = ""
    run_dir: str = ""
    device: str = ""
    dataset: str = ""
    arch: str = ""
    parameters: int = 0
    trainable_parameters: int | None = None  # fewer than `parameters` when some are frozen
    task: str = ""  # task.kind ("" until run_started says)
    metric_names: list[str] = field(default_factory=list)  # the task's, headline first
    state: str = "starting"  # starting, running, paused, a state_label of an ending, failed
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    total_steps: int = 0
    steps_per_epoch: int = 0
    epoch_progress: float = 0.0
    loss: float | None = None  # the last step event's training loss
    lr: float | None = None
    samples_per_s: float | None = None  # smoothed over ~RATE_SMOOTHING_S seconds of events
    train_loss: Series = field(default_factory=Series)  # per step event; x in epochs
    epoch_train_loss: Series = field(default_factory=Series)  # per epoch; x = epoch number
    val_loss: Series = field(default_factory=Series)
    # every metric epoch_end reported, by name (train_acc, val_mae): acc included
    metrics: dict[str, MetricTrack] = field(default_factory=dict)
    last_val_loss: float | None = None
    gpu: GpuMemory | None = None  # None on the CPU (step events carry gpu_mem_* = None)
    host: HostFigures | None = None  # None until a step event reports them (older runs: never)
    early_stop: EarlyStopView | None = None
    last_checkpoint: str | None = None
    checkpoint_reason: str = ""
    warnings: list[str] = field(default_factory=list)
    messages: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    error: str | None = None
    traceback: str = ""
    finish_reason: str | None = None
    # timing, for ETA: active seconds exclude pauses
    _t_start: float | None = None
    _start_step: int = 0
    _paused_total: float = 0.0
    _paused_since: float | None = None
    _last_time: float | None = None
    _rate_time: float | None = None  # the step event samples_per_s last took in
    _rate_seen: bool = False  # the session's first step event (its window holds the warm-up)
    skipped_steps: int = 0  # steps skipped for a non-finite loss (train.nonfinite = "skip")
    _ckpt_step: tuple[int, int] | None = None
    _routine_line: str | None = None  # the message of the last routine checkpoint
    best_checkpoint: BestCheckpoint | None = None  # what best.pt holds (checkpoint_saved best)
    version: int = 0  # bumped by every event: the screen redraws only when it moved
    plot_version: int = 0  # bumped by events that move a curve

    # ---- folding ----
    def apply(self, e: ev.Event) -> None:
        self.version += 1
        self._last_time = e.time
        handler = getattr(self, f"_on_{e.kind}", None)
        if handler is not None:
            handler(e)

    def _on_run_started(self, e: ev.RunStarted) -> None:
        self.name, self.run_dir, self.device = e.name, e.run_dir, e.device
        self.dataset, self.arch, self.parameters = e.dataset, e.arch, e.parameters
        self.trainable_parameters, self.task = e.trainable_parameters, e.task
        self.metric_names = list(e.metrics)
        self.epochs, self.total_steps, self.steps_per_epoch = (
            e.epochs,
            e.total_steps,
            e.steps_per_epoch,
        )
        self.epoch, self.step = e.epoch, e.step
        self.state = "running"
        self.error, self.finish_reason = None, None
        self._t_start, self._start_step = e.time, e.step
        self.samples_per_s, self._rate_time, self._rate_seen = None, None, False
        self._paused_total, self._paused_since = 0.0, None
        what = f"{e.dataset}, {e.arch}, {e.parameters:,} parameters on {e.device}"
        if e.step:
            self._say(e, f"resumed training at epoch {e.epoch} ({what})")
        else:
            self._say(e, f"started: {what}")

    def _take_rate(self, e: ev.Step) -> None:
        """samples/s as an exponential average over ~RATE_SMOOTHING_S seconds: one step
        event's own window jumps (2,524 -> 146,070 -> 3,626 a second apart, when a window
        holds a validation or a cached epoch's start)."""
        rate = e.samples_per_s
        if rate is None or not math.isfinite(rate):
            return
        if not self._rate_seen:  # 699 samples/s right after a resume: start-up, not pace
            self._rate_seen, self._rate_time = True, e.time
            return
        if self.samples_per_s is None or self._rate_time is None:
            self.samples_per_s = rate
        else:
            weight = 1.0 - math.exp(-max(0.0, e.time - self._rate_time) / RATE_SMOOTHING_S)
            self.samples_per_s += weight * (rate - self.samples_per_s)
        self._rate_time = e.time

    def _on_step(self, e: ev.Step) -> None:
        self.step, self.epoch, self.epoch_progress = e.step, e.epoch, e.epoch_progress
        self.loss, self.lr = e.loss, e.lr
        self._take_rate(e)
        self.skipped_steps = getattr(e, "skipped_steps", 0) or 0
        x = (e.epoch - 1) + e.epoch_progress
        self.train_loss.add(x, e.loss)
        if e.gpu_mem_allocated is not None:
            self.gpu = GpuMemory(
                e.gpu_mem_allocated,
                e.gpu_mem_reserved or 0,
                e.gpu_mem_peak or 0,
                e.gpu_mem_total,
                getattr(e, "gpu_util", None),
                getattr(e, "gpu_temp", None),
                getattr(e, "gpu_power", None),
            )
        host = HostFigures(e.cpu_percent, e.rss, e.mem_available, e.disk_free, e.data_wait)
        if any(value is not None for value in vars(host).values()):  # (older runs: none)
            self.host = host
        if self.state in ("starting", "paused"):
            self.state = "running"
        self.plot_version += 1

    def _on_epoch_end(self, e: ev.EpochEnd) -> None:
        self.step, self.epoch, self.epochs = e.step, e.epoch, e.epochs or self.epochs
        self.epoch_progress = 1.0
        self.lr = e.lr
        self.epoch_train_loss.add(e.epoch, e.train_loss)
        self.val_loss.add(e.epoch, e.val_loss)
        self.last_val_loss = e.val_loss
        values = dict(e.metrics)
        for name, value in (("train_acc", e.train_acc), ("val_acc", e.val_acc)):
            if name not in values and value is not None:
                values[name] = value  # an event from before epoch_end had metrics
        for track in self.metrics.values():
            track.last = None  # the panel shows this epoch's values only
        for name, value in values.items():
            self.metrics.setdefault(name, MetricTrack(name)).add(e.epoch, value)
        self.plot_version += 1

    def _on_early_stop(self, e: ev.EarlyStop) -> None:
        self.early_stop = EarlyStopView(
            e.monitor, e.value, e.best, e.wait, e.patience, e.stopping, e.why
        )
        if e.stopping:
            self._say(e, f"early stop: {e.why or 'patience'} ({e.monitor} best {number(e.best)})")

    def _on_checkpoint_saved(self, e: ev.CheckpointSaved) -> None:
        name = Path(e.path).name
        if name not in _LINKS or self.last_checkpoint is None:
            self.last_checkpoint, self.checkpoint_reason = e.path, e.reason  # the file, not a link
        if e.reason == "best" and e.monitor:
            self.best_checkpoint = BestCheckpoint(e.monitor, e.value, e.epoch, e.step)
        shown = self.in_run_dir(e.path) + (f" ({e.reason})" if e.reason else "")
        if self._ckpt_step == (e.step, self.version - 1) and self.messages:
            self.messages[-1] += f", {shown}"  # best.pt/last.pt written with the same step
        elif e.reason in ROUTINE_CHECKPOINTS and self._routine_said(e):
            self.messages[-1] = f"step {e.step}: checkpoint saved: {shown}"
        else:
            self._say(e, f"checkpoint saved: {shown}")
        self._ckpt_step = (e.step, self.version)
        self._routine_line = self.messages[-1] if e.reason in ROUTINE_CHECKPOINTS else None

    def _routine_said(self, e: ev.CheckpointSaved) -> bool:
        """Whether the last message is the last routine checkpoint's: the next one takes its
        line, so that a checkpoint every epoch never pushes a pause, a warning or a
        requested checkpoint out of the panel's few lines (the log screen keeps them all)."""
        return bool(self.messages) and self.messages[-1] == self._routine_line

    def in_run_dir(self, path: str) -> str:
        """A path inside the run directory, relative to it; the panel shows it in full."""
        if self.run_dir and path.startswith(self.run_dir.rstrip("/") + "/"):
            return path[len(self.run_dir.rstrip("/")) + 1 :]
        return path

    def _on_paused(self, e: ev.Paused) -> None:
        self.state = "paused"
        self.step = max(self.step, e.step)  # the progress bar shows where it holds
        self._paused_since = e.time
        self._say(e, "paused")

    def _on_resumed(self, e: ev.Resumed) -> None:
        self.state = "running"
        if self._paused_since is not None:
            self._paused_total += max(0.0, e.time - self._paused_since)
            self._paused_since = None
        self._say(e, "resumed")

    def _on_warning(self, e: ev.Warning) -> None:
        self.warnings.append(e.message)
        self._say(e, f"warning: {e.message}")

    def _on_run_finished(self, e: ev.RunFinished) -> None:
        self.step = e.step
        self.finish_reason = e.reason
        self.state = state_label(run_state(e.reason))
        self._paused_since = None
        text = self.state
        headline = self.metric(f"val_{self.headline}")
        if self.headline == "acc" and e.final_val_acc is not None:
            text += f": val acc {percent(e.final_val_acc)}, best {percent(e.best_val_acc)}"
        elif headline.last is not None:
            last, best = format_metric(headline.name, headline.last), headline.best
            text += f": val {self.headline} {last}, best {format_metric(headline.name, best)}"
        self._say(e, text)

    def _on_run_failed(self, e: ev.RunFailed) -> None:
        self.state = "failed"
        self.error, self.traceback = e.error or "the run failed", e.traceback
        self._paused_since = None
        self._say(e, f"failed: {self.error}")

    def _say(self, e: ev.Event, text: str) -> None:
        self.messages.append(f"step {e.step}: {text}")

    def unreadable(self, problems: str | None) -> bool:
        """Note lines of events.jsonl that could not be read (EventsFile.new_problems) as a
        warning; returns whether there was anything to note."""
        if not problems:
            return False
        self.version += 1
        self.warnings.append(problems)
        self.messages.append(f"warning: {problems}")
        return True

    # ---- derived values ----
    @property
    def live(self) -> bool:
        return self.state in ("starting", "running", "paused")

    @property
    def headline(self) -> str:
        """The metric the plot and the lists show: the task's first (acc for runs from
        before run_started named them)."""
        return self.metric_names[0] if self.metric_names else "acc"

    def metric(self, name: str) -> MetricTrack:
        """The track of `name` (`val_mae`); an empty one when no epoch reported it."""
        return self.metrics.get(name) or MetricTrack(name)

    @property
    def train_acc(self) -> Series:
        return self.metric("train_acc").series

    @property
    def val_acc(self) -> Series:
        return self.metric("val_acc").series

    @property
    def best_val_acc(self) -> float | None:
        return self.metric("val_acc").best

    @property
    def best_epoch(self) -> int | None:
        """The epoch of the headline's best validation value."""
        return self.metric(f"val_{self.headline}").best_epoch

    def metric_rows(self) -> list[str]:
        """The names of the metrics the panel lists: the task's, headline first, then any
        other an epoch reported (classification's train_acc beside metrics = ["f1"])."""
        names = list(self.metric_names) or [self.headline]
        for reported in self.metrics:
            base = reported.partition("_")[2]
            if base not in names:
                names.append(base)
        return names

    @property
    def active_seconds(self) -> float | None:
        """Seconds of training so far in this session, pauses left out."""
        if self._t_start is None or self._last_time is None:
            return None
        paused = self._paused_total
        if self._paused_since is not None:
            paused += self._last_time - self._paused_since
        return max(0.0, self._last_time - self._t_start - paused)

    @property
    def eta_seconds(self) -> float | None:
        """Time left at the pace of this session so far (validation included)."""
        if not self.live or not self.total_steps:
            return None
        done = self.step - self._start_step
        active = self.active_seconds
        if done <= 0 or not active:
            return None
        return max(0.0, (self.total_steps - self.step) * active / done)


def build_view(events: Iterable[ev.Event], view: RunView | None = None) -> RunView:
    """Fold events into a view (a new one unless `view` is given)."""
    view = view if view is not None else RunView()
    for e in events:
        view.apply(e)
    return view


# ---- formatting: plain strings for the panels ----
def format_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def format_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def format_lr(lr: float | None) -> str:
    return "-" if lr is None else f"{lr:.2e}"


def bar(fraction: float, width: int) -> str:
    fraction = min(max(fraction, 0.0), 1.0) if math.isfinite(fraction) else 0.0
    filled = int(round(fraction * width))
    return "█" * filled + "░" * (width - filled)


def progress_lines(v: RunView, width: int = 40) -> list[str]:
    """Two lines: the epoch and step bars, then the pace."""
    epochs = v.epochs or 1
    done_epochs = (v.epoch - 1 + v.epoch_progress) if v.epoch else 0.0
    total = v.total_steps or 1
    epoch_text = f"epoch {v.epoch}/{v.epochs}"
    step_text = f"step {v.step}/{v.total_steps}"
    bar_w = max(4, (width - len(epoch_text) - len(step_text) - 6) // 2)
    line1 = (
        f"{epoch_text} {bar(done_epochs / epochs, bar_w)}  {step_text} {bar(v.step / total, bar_w)}"
    )
    speed = "-" if v.samples_per_s is None else f"{v.samples_per_s:,.0f}"
    line2 = (
        f"{speed} samples/s   ETA {format_duration(v.eta_seconds)}   "
        f"elapsed {format_duration(v.active_seconds)}"
    )
    return [line1, line2]


def title_line(v: RunView) -> str:
    what = " ".join(x for x in (v.dataset, v.arch) if x)
    params = ""
    if v.trainable_parameters is not None and v.trainable_parameters < v.parameters:
        params = f" ({v.trainable_parameters:,} of {v.parameters:,} parameters train)"
    elif v.parameters:
        params = f" ({v.parameters:,} parameters)"
    parts = [v.name or "run", v.state.upper(), v.device or "-", what + params, v.task]
    if v.warnings:
        parts.append(f"{len(v.warnings)} warning{'s' if len(v.warnings) > 1 else ''}")
    return " · ".join(p for p in parts if p)


def stats_lines(v: RunView) -> list[str]:
    """The left info block's head: losses and learning rate (metric_lines follow it)."""
    return [
        f"loss     {number(v.loss)}  val loss {number(v.last_val_loss)}",
        f"lr       {format_lr(v.lr)}",
    ] + ([f"skipped  {v.skipped_steps} steps (non-finite loss)"] if v.skipped_steps else [])


def metric_lines(v: RunView, max_lines: int | None = None) -> list[str]:
    """Every metric of the last epoch, a row each (headline first): train and val value,
    and the best val so far (in the metric's direction) with its epoch. At most
    `max_lines` lines, the last then naming what did not fit."""
    names = v.metric_rows()
    width = max(6, *(len(n) for n in names))
    lines = [f"{'metric':<{width}} {'train':>7} {'val':>7}  best val"]
    for name in names:
        train, val = v.metric(f"train_{name}"), v.metric(f"val_{name}")
        best = "-"
        if val.best is not None:
            best = f"{format_metric(name, val.best)} (ep {val.best_epoch})"
        cells = (format_metric(name, train.last), format_metric(name, val.last))
        lines.append(f"{name:<{width}} {cells[0]:>7} {cells[1]:>7}  {best}")
    if max_lines is not None and len(lines) > max(2, max_lines):
        max_lines = max(2, max_lines)  # the header and the line that names the rest
        hidden = names[max_lines - 2 :]
        lines = [*lines[: max_lines - 1], f"+{len(hidden)} more: {', '.join(hidden)}"]
    return lines


def host_lines(h: HostFigures) -> list[str]:
    """The host's figures in two short lines (a half-width panel at 80 columns): this
    process's CPU (100% = one core, as top says it) and resident memory, the share of the
    time spent waiting for a DataLoader (streamed data only), and what is still free."""
    cpu = "-" if h.cpu_percent is None else f"{h.cpu_percent:.0f}%"
    wait = "" if h.data_wait is None else f"  data wait {100 * h.data_wait:.0f}%"
    return [
        f"CPU {cpu}  RSS {format_bytes(h.rss)}{wait}",
        f"free: memory {format_bytes(h.mem_available)}, disk {format_bytes(h.disk_free)}",
    ]


def memory_lines(v: RunView) -> list[str]:
    """The memory panel: the GPU's memory (and NVML's figures) on a GPU run, with the
    host's in one line beneath; the host's figures alone on a CPU run."""
    if v.gpu is None:
        if v.host is not None:
            return host_lines(v.host)
        where = "CPU" if not v.device or v.device == "cpu" else f"{v.device} (not measured)"
        return [f"memory  {where}", ""]
    host = ["  ".join(host_lines(v.host))] if v.host is not None else []
    g = v.gpu
    total = f"  total {format_bytes(g.total)}" if g.total else ""
    nvml = ""
    if g.util is not None:  # NVML may answer one query and not another: "-" for those
        temp = "-" if g.temp is None else g.temp
        power = "-" if g.power is None else f"{g.power:.0f}"
        nvml = f"  {g.util}% {temp}°C {power} W"
    return [
        f"GPU mem alloc {format_bytes(g.allocated)}  reserved {format_bytes(g.reserved)}",
        f"        peak {format_bytes(g.peak)}{total}{nvml}",
        *host,
    ]


def early_stop_lines(v: RunView) -> list[str]:
    es = v.early_stop
    if es is None:
        return ["early stop  -", ""]
    head = f"early stop  {es.monitor}, patience {es.patience}"
    if es.stopping:
        head += f": STOPPING ({es.why})"
    return [head, f"  now {number(es.value)}  best {number(es.best)}  wait {es.wait}/{es.patience}"]


def path_lines(v: RunView) -> list[str]:
    """The run directory, the last checkpoint in it, and what best.pt holds: the best
    value of checkpoint.monitor, which may not be the headline metric the panel beside
    calls "best" (val_loss's best epoch is not always val_acc's)."""
    ckpt = "-"
    if v.last_checkpoint:
        ckpt = v.in_run_dir(v.last_checkpoint)
        ckpt += f" ({v.checkpoint_reason})" if v.checkpoint_reason else ""
    best = v.best_checkpoint
    if best is not None:
        ckpt += f" · best.pt ep {best.epoch} {best.monitor} "
        ckpt += format_metric(best.monitor, best.value)
    return [f"run dir     {v.run_dir or '-'}", f"checkpoint  {ckpt}"]
