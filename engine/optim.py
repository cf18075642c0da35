"""Optimizers and learning-rate schedules, each a plain entry in a registry dict."""

from __future__ import annotations

import math
from typing import Any

import torch

from engine.profile import OptimSection, ScheduleSection


def _sgd(params, c: OptimSection, **extra):
    return torch.optim.SGD(
        params,
        lr=c.lr,
        momentum=c.momentum,
        nesterov=c.nesterov,
        weight_decay=c.weight_decay,
        **extra,
    )


def _adam(params, c: OptimSection, **extra):
    return torch.optim.Adam(
        params, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay, **extra
    )


def _adamw(params, c: OptimSection, **extra):
    return torch.optim.AdamW(
        params, lr=c.lr, betas=tuple(c.betas), eps=c.eps, weight_decay=c.weight_decay, **extra
    )


def _rmsprop(params, c: OptimSection, **extra):
    return torch.optim.RMSprop(
        params,
        lr=c.lr,
        alpha=c.alpha,
        eps=c.eps,
        momentum=c.momentum,
        weight_decay=c.weight_decay,
        **extra,
    )


def _adagrad(params, c: OptimSection, **extra):
    return torch.optim.Adagrad(params, lr=c.lr, eps=c.eps, weight_decay=c.weight_decay, **extra)


OPTIMIZERS = {"sgd": _sgd, "adam": _adam, "adamw": _adamw, "rmsprop": _rmsprop, "adagrad": _adagrad}


_FUSED = ("sgd", "adam", "adamw")  # optimizers with a fused kernel on CUDA and the CPU


def build_optimizer(
    model: torch.nn.Module, cfg: OptimSection, device: torch.device | None = None
) -> torch.optim.Optimizer:
    """The optimizer; on CUDA and the CPU the fused kernel where there is one (one launch
    per step on CUDA; on the CPU one call instead of a dozen small ops)."""
    fused = device is not None and device.type in ("cuda", "cpu") and cfg.name in _FUSED
    if fused:
        try:
            return OPTIMIZERS[cfg.name](model.parameters(), cfg, fused=True)
        except (RuntimeError, ValueError):  # e.g. a user model's parameter dtype it lacks
            pass
    return OPTIMIZERS[cfg.name](model.parameters(), cfg)


class LRFactor:
    """The multiplier of the base lr after `step` optimizer steps: warmup, then the schedule.

    A plain object (not a lambda) so that LambdaLR's state_dict can hold it.
    """

    def __init__(
        self, cfg: ScheduleSection, base_lr: float, steps_per_epoch: int, total_steps: int
    ):
        self.name = cfg.name
        self.warmup = cfg.warmup_steps + cfg.warmup_epochs * steps_per_epoch
        self.start = cfg.warmup_start_factor
        self.spe = steps_per_epoch
        self.step_size = cfg.step_size * steps_per_epoch
        self.gamma = cfg.gamma
        self.floor = cfg.min_lr / base_lr
        self.decay_steps = max(1, total_steps - self.warmup)

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.start + (1.0 - self.start) * step / self.warmup
        t = step - self.warmup
        if self.name == "step":
            return self.gamma ** (t // self.step_size)
        if self.name == "exponential":  # gamma per epoch, applied smoothly per step
            return self.gamma ** (t / self.spe)
        if self.name == "cosine":
            progress = min(1.0, t / self.decay_steps)
            return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0  # none, plateau (which acts on validation, not per step)


class Schedule:
    """Steps the learning rate after each optimizer step and after each validation."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        cfg: ScheduleSection,
        base_lr: float,
        steps_per_epoch: int,
        total_steps: int,
    ):
        self.cfg = cfg
        self.plateau = None
        self.warmup = 0
        if cfg.name == "onecycle":
            self.per_step = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=cfg.max_lr or base_lr,
                total_steps=max(1, total_steps),
                pct_start=cfg.pct_start,
            )
        else:
            factor = LRFactor(cfg, base_lr, steps_per_epoch, total_steps)
            self.warmup = factor.warmup
            self.per_step = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        if cfg.name == "plateau":
            self.plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
                optimizer, mode="min", factor=cfg.factor, patience=cfg.patience
            )

    def after_step(self, step: int) -> None:
        if self.plateau is not None and step > self.warmup:
            return  # after warmup, plateau owns the lr: LambdaLR would overwrite its reductions
        if self.cfg.name == "none" and step > self.warmup:
            # The factor is 1 from here on: keep the position (checkpoints, a resume that
            # adds a schedule) without LambdaLR's per-step Python work.
            self.per_step.last_epoch = step
            return
        if (
            self.cfg.name == "onecycle"
            and self.per_step.last_epoch + 1 >= self.per_step.total_steps
        ):
            return  # the last step is done: one more would extrapolate the curve (or raise)
        self.per_step.step()

    def after_validation(self, loss: float) -> None:
        if self.plateau is not None:
            self.plateau.step(loss)

    def state_dict(self) -> dict[str, Any]:
        state = {"per_step": self.per_step.state_dict()}
        if self.plateau is not None:
            state["plateau"] = self.plateau.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any], old_lr: float, new_lr: float) -> None:
        """Restore the position in the schedule. Its shape comes from the current profile,
        so a resume may change epochs (the cosine length); a new optim.lr scales the whole
        curve from the first resumed step. onecycle keeps its original cycle length."""
        per_step = dict(state["per_step"])
        if "lr_lambdas" in per_step:  # keep the LRFactor built from the new profile
            per_step["lr_lambdas"] = [None] * len(per_step["lr_lambdas"])
        self.per_step.load_state_dict(per_step)
        if self.plateau is not None and "plateau" in state:
            self.plateau.load_state_dict(state["plateau"])
        if new_lr != old_lr:
            ratio = new_lr / old_lr
            if isinstance(self.per_step, torch.optim.lr_scheduler.LambdaLR):
                self.per_step.base_lrs = [lr * ratio for lr in self.per_step.base_lrs]
            for group in self.per_step.optimizer.param_groups:
                for key in ("lr", "initial_lr", "max_lr", "min_lr"):
                    if key in group:
                        group[key] *= ratio
        owned = self.plateau is None or self.per_step.last_epoch <= self.warmup
        if isinstance(self.per_step, torch.optim.lr_scheduler.LambdaLR) and owned:
            # The same expression LambdaLR uses: unchanged profiles resume bit for bit.
            step = self.per_step.last_epoch
            for group, base, factor in zip(
                self.per_step.optimizer.param_groups,
                self.per_step.base_lrs,
                self.per_step.lr_lambdas,
                strict=True,
            ):
                group["lr"] = base * factor(step)
