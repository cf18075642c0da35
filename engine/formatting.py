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
