"""The exponential moving average of the weights (train.ema_decay), a policy beside the loop.

With `ema_decay` > 0 the loop calls `after_step` after each optimizer step; every
`ema_every` of them the averaged copy moves towards the raw weights:
`ema = decay * ema + (1 - decay) * raw`, its first update a plain copy. Buffers (batch-norm
statistics) are averaged too (AveragedModel's use_buffers=True). Validation, early
stopping, best.pt and `mpt export` use the averaged weights; the raw weights' headline
metric is reported beside them as `val_raw_<metric>`.

The copy is torch's `AveragedModel` and the arithmetic `get_ema_multi_avg_fn`'s
(`torch._foreach_lerp_`); the update is driven from here with a Python counter instead of
`AveragedModel.update_parameters`, which reads its device counter on the host each time
(`bool(n_averaged == 0)`, or a host-to-device copy): one GPU sync per step, which the loop
never makes. The counter goes to the checkpoint as `n_averaged`, as AveragedModel keeps it.

Under torchrun every process keeps its own average of the same weights (DDP keeps them
equal, and its buffers broadcast from rank 0), so they stay equal too, and each process
validates its share with it as with the raw model.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from engine.checkpoint import restore_weights

Validation = tuple[float | None, dict[str, float | None]]  # val loss, val metrics
Evaluate = Callable[[torch.nn.Module | None], Validation]


class WeightAverage:
    """The averaged weights of `model`; with `decay` 0 there are none: every method is a
    no-op, `validate` is `evaluate`'s, and `module` is the model itself."""

    def __init__(self, model: torch.nn.Module, decay: float, every: int):
        self.model, self.every, self.count = model, every, 0
        self.averaged: AveragedModel | None = None
        if not decay:
            return
        self._average = get_ema_multi_avg_fn(decay)
        self.averaged = AveragedModel(
            model, multi_avg_fn=self._average, use_buffers=True
        ).requires_grad_(False)
        # The optimizer and load_state_dict change the tensors in place: pair them once,
        # by dtype (foreach ops take one dtype; batch-norm's step counter is an integer).
        self._pairs: dict[torch.dtype, tuple[list, list]] = {}
        own = [*self.averaged.module.parameters(), *self.averaged.module.buffers()]
        raw = [*model.parameters(), *model.buffers()]
        for a, r in zip(own, raw, strict=True):
            mine, theirs = self._pairs.setdefault(a.dtype, ([], []))
            mine.append(a.detach())
            theirs.append(r.detach())

    @property
    def module(self) -> torch.nn.Module:
        """The weights validation, early stopping's best weights and best.pt follow."""
        return self.averaged.module if self.averaged is not None else self.model

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """After optimizer step `step` (counted in steps, not micro-batches)."""
        if self.averaged is None or step % self.every:
            return
        for mine, theirs in self._pairs.values():
            if self.count == 0:
                torch._foreach_copy_(mine, theirs)
            else:
                self._average(mine, theirs, None)
        self.count += 1

    def validate(self, evaluate: Evaluate, headline: str) -> Validation:
        """(val loss, val metrics) of the averaged weights, with the raw weights'
        `val_raw_<headline>` among the metrics; without EMA, the model's as they are."""
        if self.averaged is None:
            return evaluate(None)
        _, raw = evaluate(None)
        loss, metrics = evaluate(self.averaged.module)
        if f"val_{headline}" in raw:
            metrics[f"val_raw_{headline}"] = raw[f"val_{headline}"]
        return loss, metrics

    def state_dict(self) -> dict[str, Any] | None:
        """The checkpoint's "ema": the averaged weights (the model's keys) and how many
        updates made them; None without EMA."""
        if self.averaged is None:
            return None
        return {"weights": self.averaged.module.state_dict(), "n_averaged": self.count}

    def load_state_dict(self, saved: dict[str, Any] | None, path: Path, step: int) -> list[str]:
        """Continue the checkpoint's average; return warnings. A checkpoint without one
        (trained without EMA, or older) starts the average from the resumed raw weights."""
        if self.averaged is None:
            return []
        if saved is None:
            self.averaged.module.load_state_dict(self.model.state_dict())
            return [
                f"{path.name} holds no moving average of the weights (trained without "
                f"train.ema_decay): the average starts from its weights at step {step}"
            ]
        restore_weights(self.averaged.module, saved["weights"], path, "the model (ema)")
        self.count = saved["n_averaged"]
        self.averaged.n_averaged.fill_(self.count)
        return []
