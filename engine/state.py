"""TrainState: everything about a run's progress that must survive a restart, in one place.

The model, optimizer, schedule and GradScaler keep their own state_dicts; this is the
rest: where the run is, the metric sums of the epoch and the log window so far, the
skip counters, the early-stopping and best-checkpoint trackers, the best weights, and
the augmentation stream. `state_dict()` writes it in the checkpoint's own layout
(engine/checkpoint.py validates it), so a checkpoint taken at any step boundary
continues as if the run had never stopped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from engine import checkpoint as ckpt
from engine.distributed import World
from engine.monitor import BestTracker


@dataclass(eq=False)
class TrainState:
    device: torch.device
    world: World
    zero_sums: Callable[[], torch.Tensor]  # the task's train-metric sums at zero (engine/task.py)
    early: BestTracker  # early_stop.monitor
    best_ckpt: BestTracker  # checkpoint.monitor, for best.pt
    step: int = 0  # optimizer steps done
    epochs_done: int = 0
    epoch: int = 0  # the epoch in progress (or just ended): what events report
    group: int = 0  # optimizer steps already done inside the next epoch
    # The metric sums stay on the device: the host syncs only to report.
    epoch_loss: torch.Tensor = field(init=False)
    # The task's train-metric sums (classification: the correct count). The checkpoint
    # keeps them under their first name, "epoch_correct".
    epoch_sums: torch.Tensor = field(init=False)
    epoch_samples: int = 0
    window_loss: torch.Tensor = field(init=False)
    window_samples: int = 0
    skipped: torch.Tensor = field(init=False)  # steps skipped (non-finite loss or the GradScaler's)
    skip_streak: torch.Tensor = field(init=False)  # of them, in a row up to now
    best_weights: dict[str, torch.Tensor] | None = None  # for early_stop.restore_best
    best_val_acc: float | None = None
    metrics: dict[str, float | None] = field(default_factory=dict)  # of the last epoch
    augment: torch.Generator | None = None  # the epoch's augmentation stream, while it runs

    def __post_init__(self) -> None:
        dev = self.device
        self.zero_epoch_sums()
        self.window_loss = torch.zeros((), device=dev)
        self.skipped = torch.zeros((), device=dev, dtype=torch.int64)
        self.skip_streak = torch.zeros((), device=dev, dtype=torch.int64)

    def zero_epoch_sums(self) -> None:
        self.epoch_loss = torch.zeros((), device=self.device)
        self.epoch_sums = self.zero_sums()
        self.epoch_samples = 0

    def add_step(self, loss: torch.Tensor, sums: torch.Tensor, weight: int, samples: int) -> None:
        """Add an optimizer step's loss (weighted: a mean loss by its samples), metric
        sums and samples to the epoch's and the log window's sums."""
        self.epoch_loss.add_(loss, alpha=weight)
        self.epoch_sums += sums
        self.epoch_samples += samples
        self.window_loss.add_(loss, alpha=weight)
        self.window_samples += samples

    def state_dict(self, events: int, ranks: list[dict[str, Any]] | None) -> dict[str, Any]:
        """The checkpoint's keys this state holds; `events`: the events.jsonl lines up to
        here (the history); `ranks`: every process's `rank_state()` under torchrun."""
        aug = self.augment
        return {
            "early_stop": self.early.state_dict(),
            "best_checkpoint": self.best_ckpt.state_dict(),
            "best_weights": self.best_weights,
            "metrics": dict(self.metrics),
            "progress": {
                "step": self.step,
                "epochs_done": self.epochs_done,
                "group": self.group,
                "epoch_loss": self.epoch_loss,
                "epoch_correct": self.epoch_sums,
                "epoch_samples": self.epoch_samples,
                "window_loss": self.window_loss,
                "window_samples": self.window_samples,
                "skipped": self.skipped,
                "skip_streak": self.skip_streak,
                "best_val_acc": self.best_val_acc,
                "events": events,
                "world_size": self.world.size,
            },
            "rng": {**ckpt.rng_state(), "augment": aug.get_state() if aug else None},
            # Under torchrun: every process's own sums and random streams (rank order).
            "ranks": ranks,
        }

    def rank_state(self) -> dict[str, Any]:
        """What differs between processes: their metric sums and random streams."""
        return {
            "epoch_loss": self.epoch_loss.cpu(),
            "epoch_correct": self.epoch_sums.cpu(),
            "epoch_samples": self.epoch_samples,
            "window_loss": self.window_loss.cpu(),
            "window_samples": self.window_samples,
            "rng": ckpt.rng_state(),
        }

    def load_state_dict(self, state: dict[str, Any], path: Any) -> None:
        """Continue from a checkpoint `state` (read from `path`, named in errors)."""
        self.early.load_state_dict(state["early_stop"])
        self.best_ckpt.load_state_dict(state["best_checkpoint"])
        self.best_weights = state["best_weights"]
        self.metrics = dict(state["metrics"])
        pr = state["progress"]
        self.step, self.epochs_done, self.group = pr["step"], pr["epochs_done"], pr["group"]
        self.epoch = self.epochs_done + 1
        self.skipped = pr["skipped"].to(self.device)
        self.skip_streak = pr["skip_streak"].to(self.device)
        self.best_val_acc = pr["best_val_acc"]
        with ckpt.restoring(path, "rng"):  # e.g. CUDA streams of another GPU's size
            self._load_rank_state(state)
            saved = state["rng"]["augment"]
            self.augment = None
            if saved is not None:  # resuming inside an epoch that augments
                self.augment = torch.Generator(device=self.device)
                self.augment.set_state(saved)

    def _load_rank_state(self, state: dict[str, Any]) -> None:
        """Take this process's sums and streams. One process, or another world size than
        the checkpoint's: rank 0 carries every old process's sums (the epoch's metrics
        stay right) and the random streams of the old rank 0; the rest start at zero."""
        ranks, world = state.get("ranks"), self.world
        if ranks and len(ranks) == world.size:
            self._set_sums(ranks[world.rank])
            ckpt.set_rng_state(ranks[world.rank]["rng"])
        elif world.rank == 0:
            totals = state["progress"]
            if ranks:
                totals = {k: sum(r[k] for r in ranks) for k in ckpt.SUMS}
            self._set_sums(totals)
            ckpt.set_rng_state(state["rng"])

    def _set_sums(self, sums: dict[str, Any]) -> None:
        """The epoch's and the log window's metric sums, as a checkpoint holds them."""
        self.epoch_loss = sums["epoch_loss"].to(self.device)
        self.epoch_sums = sums["epoch_correct"].to(self.device)
        self.epoch_samples = sums["epoch_samples"]
        self.window_loss = sums["window_loss"].to(self.device)
        self.window_samples = sums["window_samples"]
