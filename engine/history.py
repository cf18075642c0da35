"""A run's events folded into what its summary needs (`RunHistory`), and that fold as JSON.

`mpt ls`, `mpt show`, the console's runs list and the run's own summary.json
(engine/summary.py) all fold events the same way, here. torch-free.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from engine import events as ev
from engine.task_spec import lower_is_better


@dataclass
class RunHistory:
    """A run's events folded into what its summary needs, as they are read."""

    started: ev.RunStarted | None = None  # the last run_started (a resumed run has two)
    last: ev.Event | None = None
    best_val_acc: float | None = None
    last_val_acc: float | None = None
    best_headline: float | None = None
    last_headline: float | None = None
    epoch_ends: dict[int, ev.EpochEnd] = field(default_factory=dict)  # the last of each epoch
    checkpoints: list[str] = field(default_factory=list)  # checkpoint_saved paths, in order
    paused: bool = False  # a paused event not yet followed by resumed (a checkpoint may come)

    def add(self, events: list[ev.Event]) -> None:
        for event in events:
            self.last = event
            if isinstance(event, ev.Paused | ev.Resumed | ev.RunStarted):
                self.paused = isinstance(event, ev.Paused)
            if isinstance(event, ev.RunStarted):
                self.started = event
            elif isinstance(event, ev.EpochEnd):
                self.epoch_ends[event.epoch] = event  # a resumed history holds each epoch once
                acc = event.val_acc
                self.last_val_acc = acc
                if acc is not None and (self.best_val_acc is None or acc > self.best_val_acc):
                    self.best_val_acc = acc
                own = acc if self.headline == "val_acc" else None  # (runs before metrics)
                value = event.metrics.get(self.headline, own)
                self.last_headline = value
                if value is not None and math.isfinite(value) and self._better(value):
                    self.best_headline = value
            elif isinstance(event, ev.CheckpointSaved) and event.path:
                self.checkpoints.append(event.path)

    @property
    def headline(self) -> str:
        """val_<the first metric of run_started>; val_acc for runs from before metrics."""
        metrics = self.started.metrics if self.started is not None else []
        return f"val_{metrics[0]}" if metrics else "val_acc"

    def _better(self, value: float) -> bool:
        best = self.best_headline
        if best is None:
            return True
        return value < best if lower_is_better(self.headline) else value > best

    # ---- as JSON (summary.json): every value checked when read back ----
    def to_json(self) -> dict[str, Any]:
        """The fold as plain JSON values (events as their events.jsonl objects), but for
        epoch_ends, left empty: their writer keeps them as the lines it wrote."""
        return {
            "started": _event_json(self.started),
            "last": _event_json(self.last),
            "best_val_acc": self.best_val_acc,
            "last_val_acc": self.last_val_acc,
            "best_headline": self.best_headline,
            "last_headline": self.last_headline,
            "epoch_ends": [],
            "checkpoints": list(self.checkpoints),
            "paused": self.paused,
        }

    @classmethod
    def from_json(cls, data: Any, epochs: bool = True) -> RunHistory | None:
        """The fold `to_json` wrote, or None when anything in it is not what it wrote (a
        damaged or made-up summary.json is not read at all: its reader reads events.jsonl).
        Without `epochs`, `epoch_ends` is left empty and unread: a runs list needs none of
        it, and it is most of the file (a row an epoch)."""
        if not isinstance(data, dict):
            return None
        started, last = _event_or_none(data.get("started")), _event_or_none(data.get("last"))
        ends = data.get("epoch_ends")
        checkpoints = data.get("checkpoints")
        numbers = [data.get(k, False) for k in _NUMBERS]
        if (
            started is False
            or last is False
            or (started is not None and not isinstance(started, ev.RunStarted))
            or not isinstance(ends, list)
            or not isinstance(checkpoints, list)
            or not all(type(p) is str for p in checkpoints)
            or type(data.get("paused")) is not bool
            or not all(x is None or _finite(x) for x in numbers)
        ):
            return None
        history = cls(started=started, last=last, paused=data["paused"])
        for raw in ends if epochs else ():
            end = ev.exact_event(raw)
            if not isinstance(end, ev.EpochEnd):
                return None
            history.epoch_ends[end.epoch] = end
        history.checkpoints = list(checkpoints)
        for name, value in zip(_NUMBERS, numbers, strict=True):
            setattr(history, name, value)
        return history


_NUMBERS = ("best_val_acc", "last_val_acc", "best_headline", "last_headline")


def _finite(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _event_json(event: ev.Event | None) -> dict[str, Any] | None:
    return None if event is None else ev.line_object(event)


def _event_or_none(data: Any) -> ev.Event | None | bool:
    """None for null, the event for an exact one, False for anything else."""
    if data is None:
        return None
    event = ev.exact_event(data)
    return False if event is None else event
