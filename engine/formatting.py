"""How numbers are printed, the same in `mpt run`'s console, `mpt ls`/`mpt show` and the TUI."""

from __future__ import annotations

import math


def number(x: float | None, digits: int = 4) -> str:
    """`0.1235`; `-` for a missing value; nan and inf as they are."""
    if x is None:
        return "-"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.{digits}f}"


def percent(x: float | None) -> str:
    """A fraction as `97.25%`; `-` for a missing value."""
    return "-" if x is None else f"{100 * x:.2f}%"


# Metrics that are fractions, printed as percentages; the others (mae, mse, rmse, r2) as
# plain numbers.
FRACTIONS = frozenset({"acc", "top5", "f1", "precision", "recall", "auroc", "hamming"})


def metric(name: str, x: float | None) -> str:
    """A metric's value as it is printed: `97.25%` for acc (or val_acc), `0.4123` for mae."""
    base = name.partition("_")[2] if name.startswith(("train_", "val_")) else name
    base = base.removeprefix("raw_")  # val_raw_acc: the raw weights' (train.ema_decay)
    return percent(x) if base in FRACTIONS and x is not None and math.isfinite(x) else number(x)


def seconds(s: float) -> str:
    """A duration in about 5 characters with its digits where they say something:
    `31ms`, `0.31s`, `6.70s`, `12.3s`, `11m07s`, `3h05m`."""
    if not math.isfinite(s) or s < 0:
        return "-"
    if s < 0.1:
        return f"{s * 1000:.0f}ms"
    if s < 10:
        return f"{s:.2f}s"
    if s < 60:
        return f"{s:.1f}s"
    minutes = round(s) // 60
    if minutes < 60:
        return f"{minutes}m{round(s) % 60:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"
