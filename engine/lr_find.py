"""`mpt lr-find`: an exponential learning-rate sweep, the suggestion it makes, and
`--apply`, which writes the suggestion into the profile file keeping its text.

The sweep is Leslie Smith's range test as fastai and pytorch-lr-finder run it: one
training step per lr, from `start` to `end` in equal ratios, on a model built afresh from
the profile (the Trainer's own constructor: its data, model, task, optimizer), no run
directory. The loss is smoothed by an exponential moving average (beta 0.98, with bias
correction, as fastai's); the sweep stops when the smoothed loss passes 4x its best or is
not finite. The suggestion is the lr of the steepest descent of the smoothed loss (its
most negative slope against log lr, before its minimum), and the range it trusts runs
from there to the minimum's lr / 10 (fastai's "minimum / 10" rule of thumb).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from engine.control import Control
from engine.errors import MptError
from engine.profile import BOM, Profile, ScheduleSection

BETA = 0.98  # the moving average of the loss (fastai's)
DIVERGED = 4.0  # the smoothed loss at this many times its best: the sweep stops
SKIP_START = 10  # the first points' slope is the average still settling (pytorch-lr-finder)


class SweepUseless(MptError):
    """The sweep ran but its curve suggests nothing (the loss never fell); exit 1."""


class SweepStopped(MptError):
    """The sweep was asked to stop (its Control's stop) before it ended."""


# after each step: (steps done, that step's lr, its smoothed loss)
OnStep = Callable[[int, float, float], None]


@dataclass
class Sweep:
    """The lr of each step run, its loss, the smoothed loss, and why the sweep stopped."""

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    steps: int  # asked for
    diverged_at: float | None = None  # the lr whose step diverged, or None


@dataclass
class Suggestion:
    lr: float  # the steepest descent's lr, rounded to 2 significant digits
    steepest: int  # index of the steepest descent in the sweep
    minimum: int  # index of the smoothed loss's minimum
    low: float  # the range it trusts
    high: float


def check_range(start: float, end: float, steps: int) -> None:
    """Refuse, with one sentence, a sweep that cannot be run."""
    if not (math.isfinite(start) and math.isfinite(end)) or start <= 0:
        raise MptError(
            f"mpt lr-find: --start and --end must be positive numbers (got {start}, {end})"
        )
    if start >= end:
        raise MptError(f"mpt lr-find: --start ({start:g}) must be below --end ({end:g})")
    if steps < 10:
        raise MptError(f"mpt lr-find: --steps must be at least 10 (got {steps})")


def sweep_profile(profile: Profile) -> Profile:
    """The profile as the sweep trains it: no schedule and no warmup (the sweep sets the
    lr of every step), no moving average of the weights (it never validates), everything
    else (optimizer, momentum, betas, data) its own."""
    train = dataclasses.replace(profile.train, ema_decay=0.0)
    return dataclasses.replace(profile, schedule=ScheduleSection(), train=train)


def run_sweep(
    profile: Profile,
    start: float,
    end: float,
    steps: int,
    control: Control | None = None,
    on_step: OnStep | None = None,
) -> Sweep:
    """Train `steps` steps on a model built from `profile`, the lr growing from `start` to
    `end` in equal ratios; stop early when the smoothed loss diverges. Writes nothing.

    `control.stop()` (from any thread) ends it before its next step with SweepStopped;
    `on_step` is called on the sweep's thread after each step."""
    import queue

    from engine import events as ev
    from engine.distributed import world_from_env
    from engine.trainer import Trainer

    if world_from_env().distributed:  # the sweep's loop is one process's
        raise MptError("mpt lr-find runs in one process: run it without torchrun")
    control = control or Control()
    trainer = Trainer(sweep_profile(profile), ev.EventLog(queue.Queue()), control, run_dir=None)
    try:
        return _sweep(trainer, start, end, steps, control, on_step or _no_report)
    finally:
        trainer.release()
        trainer.close()


def _no_report(done: int, lr: float, smoothed: float) -> None:
    pass


def _sweep(trainer, start: float, end: float, steps: int, control: Control, on_step: OnStep):

    from engine.data import epoch_generator
    from engine.precision import optimizer_step
    from engine.trainer import backward

    p, model, optimizer = trainer.p, trainer.model, trainer.optimizer
    ratio = (end / start) ** (1 / (steps - 1))
    augments = bool(p.data.random_crop or p.data.hflip)
    sweep = Sweep([], [], [], steps)
    average, best, epoch = 0.0, math.inf, 0
    model.train()
    while len(sweep.lrs) < steps:
        epoch += 1
        groups, fetch = trainer.placement.train_epoch(
            p.run.seed, epoch, trainer.global_batch, p.train.grad_accum, trainer.world, start=0
        )
        augment = epoch_generator(p.run.seed, epoch, trainer.device) if augments else None
        for group in groups[: steps - len(sweep.lrs)]:
            if control.stop_requested:  # (between two steps: the model is never half-updated)
                raise SweepStopped(
                    f"mpt lr-find: stopped after {len(sweep.lrs)} of {steps} steps; "
                    "nothing was written"
                )
            lr = start * ratio ** len(sweep.lrs)
            for param_group in optimizer.param_groups:  # optim.lr_mult's groups keep their share
                param_group["lr"] = lr * param_group.get("lr_multiplier", 1.0)
            samples = sum(len(b) for b in group)
            total = None
            for _ in group:
                xb, yb = next(fetch)
                loss, _ = backward(trainer, xb, yb, augment, samples)  # (the loop's own)
                loss = loss.detach() / samples
                total = loss if total is None else total + loss
            step_loss = float(total)  # one sync a step: the sweep decides on each
            optimizer_step(optimizer, trainer.scaler, model, p.train.clip_norm, trainer.state)
            n = len(sweep.lrs) + 1
            average = BETA * average + (1 - BETA) * step_loss
            smoothed = average / (1 - BETA**n)  # bias correction: the average starts at 0
            sweep.lrs.append(lr)
            sweep.losses.append(step_loss)
            sweep.smoothed.append(smoothed)
            on_step(n, lr, smoothed)
            if not math.isfinite(smoothed) or smoothed > DIVERGED * best:
                sweep.diverged_at = lr
                return sweep
            best = min(best, smoothed)
    return sweep


def suggest(sweep: Sweep) -> Suggestion:
    """The steepest descent of the smoothed loss against log lr, between the first
    SKIP_START points and the minimum; raises SweepUseless when the loss never fell."""
    usable = sweep.smoothed  # (the sweep stops at the first point that diverges: the last)
    if sweep.diverged_at is not None:
        usable = usable[:-1]
    skip = min(SKIP_START, sweep.steps // 10)
    minimum = min(range(len(usable)), key=usable.__getitem__) if usable else 0
    if minimum <= skip + 1:
        raise SweepUseless(_useless(sweep))
    logs = [math.log(lr) for lr in sweep.lrs[: minimum + 1]]
    slopes = {
        i: (usable[i + 1] - usable[i - 1]) / (logs[i + 1] - logs[i - 1])
        for i in range(max(skip, 1), minimum)
    }
    steepest = min(slopes, key=slopes.__getitem__)
    lr = _round(sweep.lrs[steepest])
    bound = _round(sweep.lrs[minimum] / 10)
    return Suggestion(lr, steepest, minimum, min(lr, bound), max(lr, bound))


def _useless(sweep: Sweep) -> str:
    lo = f"{sweep.lrs[0]:.2g}" if sweep.lrs else "?"
    if sweep.diverged_at is not None:
        return (
            f"mpt lr-find: the loss diverged at lr {sweep.diverged_at:.2g} before it fell "
            f"(the sweep started at {lo}); try a lower --start"
        )
    return (
        f"mpt lr-find: the loss did not fall between lr {lo} and {sweep.lrs[-1]:.2g}; "
        "try a higher --end or more --steps"
    )


def _round(lr: float) -> float:
    return float(f"{lr:.2g}")


# ---- what it prints ----


def summary(sweep: Sweep, found: Suggestion) -> str:
    """The table of the sweep (about a dozen rows, the steepest and the minimum marked),
    how it ended, the suggestion and its range."""
    marks = {found.steepest: "  <- steepest descent", found.minimum: "  <- minimum"}
    every = max(1, len(sweep.lrs) // 12)
    rows = sorted(set(range(0, len(sweep.lrs), every)) | set(marks) | {len(sweep.lrs) - 1})
    lines = [f"{'lr':>10}  {'loss':>10}  {'smoothed':>10}"]
    lines += [
        f"{sweep.lrs[i]:>10.3g}  {sweep.losses[i]:>10.4g}  {sweep.smoothed[i]:>10.4g}"
        + marks.get(i, "")
        for i in rows
    ]
    ran = f"{len(sweep.lrs)} of {sweep.steps} steps"
    if sweep.diverged_at is not None:
        lines.append(f"stopped after {ran}: the loss diverged at lr {sweep.diverged_at:.3g}")
    else:
        lines.append(f"ran {ran}, up to lr {sweep.lrs[-1]:.3g}")
    lines.append(f"suggestion: optim.lr = {found.lr:g} (the steepest descent of the loss)")
    lines.append(
        f"the range it trusts: {found.low:g} .. {found.high:g} (from the steepest descent "
        f"to the minimum's lr {sweep.lrs[found.minimum]:.2g} / 10)"
    )
    return "\n".join(lines)


def chart(sweep: Sweep, found: Suggestion, width: int, height: int, color: bool) -> str:
    """A plotext chart of the smoothed loss against the lr (log scale), the suggestion a
    vertical line; `color` false: plain text (off a terminal)."""
    import plotext as plt  # only when a chart is drawn

    plt.clear_figure()
    plt.theme("clear")
    plt.plotsize(width, height)
    draw(plt, sweep, found)
    text = plt.build().rstrip("\n")
    return text if color else plt.uncolorize(text)


def draw(plt, sweep: Sweep, found: Suggestion) -> None:
    """Plot the sweep on `plt`: the plotext module, or a figure of its (the console's
    textual-plotext widget), sized and themed by the caller."""
    shown = len(sweep.lrs) - (1 if sweep.diverged_at is not None else 0)
    plt.xscale("log")
    plt.plot(sweep.lrs[:shown], sweep.smoothed[:shown], marker="braille", color="cyan")
    plt.vline(found.lr, "red")
    # Up to the start's loss (and a little over): the diverging tail would flatten the
    # part of the curve that matters.
    low, high = min(sweep.smoothed[:shown]), max(sweep.smoothed[: found.minimum + 1])
    plt.ylim(low - 0.05 * (high - low), high + 0.25 * (high - low))
    decades = range(math.floor(math.log10(sweep.lrs[0])), math.ceil(math.log10(sweep.lrs[-1])) + 1)
    plt.xticks([10.0**d for d in decades], [f"1e{d}" for d in decades])
    plt.title(f"smoothed loss vs lr (suggestion {found.lr:g})")
    plt.xlabel("lr")


# ---- --apply: optim.lr in the profile file, every other byte kept ----

_HEADER_RE = re.compile(r"^\s*\[")
_OPTIM_RE = re.compile(r"^\s*\[\s*optim\s*\]\s*(?:#.*)?$")
_LR_RE = re.compile(r"^(\s*lr\s*=\s*)([^\s#]+)(.*)$", re.DOTALL)


def apply_lr(path: Path, lr: float) -> None:
    """Set optim.lr = `lr` in the profile file at `path`: only its value's text changes
    (or one line is added); comments, blank lines and the rest stay as they were."""
    try:
        raw = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise MptError(f"{path}: cannot be read to set optim.lr ({e})") from None
    bom = BOM if raw.startswith(BOM) else ""
    body = raw[len(bom) :]
    text = _with_lr(body, repr(lr))
    wanted = tomllib.loads(body)
    wanted.setdefault("optim", {})["lr"] = lr
    try:
        same = isinstance(wanted["optim"], dict) and tomllib.loads(text) == wanted
    except tomllib.TOMLDecodeError:
        same = False
    if not same:
        raise MptError(
            f"{path}: optim.lr cannot be set in place in this file (e.g. dotted keys); "
            f"set optim.lr = {lr!r} by hand"
        )
    _write_keeping_mode(path, bom + text)


def _with_lr(body: str, value: str) -> str:
    lines = re.findall(r"[^\n]*\n|[^\n]+$", body)
    eol = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    header = next((i for i, line in enumerate(lines) if _OPTIM_RE.match(line)), None)
    if header is None:
        gap = eol if lines else ""
        tail = "" if not lines or lines[-1].endswith("\n") else eol
        return f"{body}{tail}{gap}[optim]{eol}lr = {value}{eol}"
    end = next((i for i in range(header + 1, len(lines)) if _HEADER_RE.match(lines[i])), len(lines))
    for i in range(header + 1, end):
        found = _LR_RE.match(lines[i])
        if found:
            lines[i] = found.group(1) + value + found.group(3)
            return "".join(lines)
    # no lr key: after the section's last non-blank line
    at = max(i for i in range(header, end) if lines[i].strip()) + 1
    if not lines[at - 1].endswith("\n"):
        lines[at - 1] += eol
    lines.insert(at, f"lr = {value}{eol}")
    return "".join(lines)


def _write_keeping_mode(path: Path, text: str) -> None:
    """Replace the file at once (a crash leaves the old file or the new), its mode kept."""
    target = Path(os.path.realpath(path))
    tmp = target.with_name(f".{target.name}.lr-find.tmp")
    try:
        mode = os.stat(target).st_mode & 0o7777
        tmp.write_bytes(text.encode("utf-8"))
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise MptError(f"{path}: cannot write optim.lr ({e.strerror or e})") from None
