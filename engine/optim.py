"""Optimizers and learning-rate schedules, each a plain entry in a registry dict."""

from __future__ import annotations

import math
from typing import Any

import torch

from engine.errors import ModelError
from engine.finetune import parameter_prefixes
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


def param_groups(model: torch.nn.Module, cfg: OptimSection) -> list[dict[str, Any]]:
    """The trainable parameters in groups: first the base group (optim.lr; it may be
    empty), then one per optim.lr_mult prefix, in the profile's order, holding the
    parameters whose LONGEST matching prefix it is (lr = optim.lr x its multiplier).
    Frozen parameters (requires_grad False) are in none. The same profile and model always
    give the same groups, so a checkpoint's optimizer state loads back."""
    prefixes = sorted(cfg.lr_mult, key=len, reverse=True)  # the longest match wins
    members: dict[str | None, list[torch.nn.Parameter]] = {None: []}
    members.update({prefix: [] for prefix in cfg.lr_mult})
    for name, param in model.named_parameters():
        if param.requires_grad:
            owner = next((p for p in prefixes if name.startswith(p)), None)
            members[owner].append(param)
    for prefix, params in members.items():
        if prefix is not None and not params:
            raise ModelError(
                f"optim.lr_mult {prefix!r} matches no trainable parameter; the model's "
                f"parameter names start with {', '.join(parameter_prefixes(model)[:5])}"
                + (" (frozen ones by model.freeze are left out)" if _any_frozen(model) else "")
            )
    # "lr_multiplier" (not a profile key, which a resume would write into the groups)
    # tells the schedule each group's share of a peak it sets itself (onecycle).
    groups = [{"params": members[None], "lr_multiplier": 1.0}]
    groups += [
        {"params": members[p], "lr": cfg.lr * cfg.lr_mult[p], "lr_multiplier": cfg.lr_mult[p]}
        for p in cfg.lr_mult
    ]
    return groups


def _any_frozen(model: torch.nn.Module) -> bool:
    return any(not p.requires_grad for p in model.parameters())


def build_optimizer(
    model: torch.nn.Module, cfg: OptimSection, device: torch.device | None = None
) -> torch.optim.Optimizer:
    """The optimizer over the trainable parameters, grouped by optim.lr_mult (base group
    first: its lr is the one reported); on CUDA and the CPU the fused kernel where there
    is one (one launch per step on CUDA; on the CPU one call instead of a dozen small
    ops)."""
    groups = param_groups(model, cfg)
    fused = device is not None and device.type in ("cuda", "cpu") and cfg.name in _FUSED
    if fused:
        try:
            return OPTIMIZERS[cfg.name](groups, cfg, fused=True)
        except (RuntimeError, ValueError):  # e.g. a user model's parameter dtype it lacks
            pass
    return OPTIMIZERS[cfg.name](groups, cfg)


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
            # Each group peaks at its own multiple of the peak (optim.lr_mult).
            mults = [group.get("lr_multiplier", 1.0) for group in optimizer.param_groups]
            self.per_step = torch.optim.lr_scheduler.OneCycleLR(
                optimizer,
                max_lr=[(cfg.max_lr or base_lr) * m for m in mults],
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
