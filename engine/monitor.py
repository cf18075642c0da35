"""Watching a metric across validations: the best value so far and how long ago it was."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from engine.errors import TrainingFailed
from engine.events import EarlyStop
from engine.task_spec import lower_is_better

if TYPE_CHECKING:
    from engine.profile import EarlyStopSection


def resolve_mode(monitor: str, mode: str) -> str:
    """'auto': lower is better for losses, mae, mse, rmse and hamming, higher for the rest."""
    if mode != "auto":
        return mode
    return "min" if lower_is_better(monitor) else "max"


class BestTracker:
    """Tracks the best value of one metric; `wait` counts validations since it improved."""

    def __init__(self, monitor: str, mode: str = "auto", min_delta: float = 0.0):
        self.monitor = monitor
        self.mode = resolve_mode(monitor, mode)
        self.min_delta = min_delta
        self.best: float | None = None
        self.best_step: int | None = None
        self.wait = 0

    def improves(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, step: int) -> bool:
        """Record a new value; return whether it is the new best."""
        if self.improves(value):
            self.best, self.best_step, self.wait = value, step, 0
            return True
        self.wait += 1
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "wait": self.wait}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step, self.wait = state["best"], state["best_step"], state["wait"]


def stop_why(
    value: float, wait: int, patience: int, stop_above: float | None, stop_below: float | None
) -> str:
    """Why early stopping ends the run at a validation of `value`, `wait` validations after
    the best: "stop_above", "stop_below", "patience", or "" to go on."""
    if stop_above is not None and value > stop_above:
        return "stop_above"
    if stop_below is not None and value < stop_below:
        return "stop_below"
    if wait > 0 and wait >= patience:
        return "patience"
    return ""


def watch_early_stop(
    es: EarlyStopSection, tracker: BestTracker, value: float, step: int, epoch: int
) -> tuple[bool, EarlyStop]:
    """A validation's `value` of early_stop.monitor: (whether it is the new best, the
    early_stop event, whose `stopping` says whether the run ends here)."""
    if es.check_finite and not math.isfinite(value):
        raise TrainingFailed(
            f"early_stop.monitor: {es.monitor} is {value} after epoch {epoch}; lower "
            "optim.lr, set train.clip_norm, or use fp32"
        )
    improved = tracker.update(value, step)
    why = stop_why(value, tracker.wait, es.patience, es.stop_above, es.stop_below)
    event = EarlyStop(
        step=step,
        epoch=epoch,
        monitor=es.monitor,
        value=value,
        best=tracker.best,
        wait=tracker.wait,
        patience=es.patience,
        stopping=bool(why),
        why=why,
    )
    return improved, event
