"""precision.mode as torch sees it: the autocast dtype, its context, the GradScaler, and
the non-finite values reduced precision (or a too high lr) can bring."""

from __future__ import annotations

import contextlib

import torch

from engine.errors import TrainingFailed

AUTOCAST_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16}  # fp32: no autocast


def autocast(device_type: str, mode: str):
    """autocast for fp16/bf16; for fp32 no context at all (entering a disabled one costs
    more per step than the tutorial MLP's small ops)."""
    dtype = AUTOCAST_DTYPES.get(mode)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=dtype)


def grad_scaler(device_type: str, mode: str) -> torch.amp.GradScaler | None:
    """fp16 scales the loss so small gradients survive; bf16 and fp32 need no scaler."""
    return torch.amp.GradScaler(device_type) if mode == "fp16" else None


# The GradScaler halves its scale on every skip: 50 halvings in a row leave no scale to
# find, so the overflow is in the forward pass itself.
HOPELESS_SKIPS = 50


def check_skip_streak(streak: torch.Tensor, step: int) -> None:
    """fp16: the GradScaler skipping step after step means the model overflows in fp16."""
    streak = int(streak)
    if streak >= HOPELESS_SKIPS:
        raise TrainingFailed(
            f"the GradScaler skipped the last {streak} steps in a row (non-finite values in "
            f'fp16) by step {step}; use precision.mode = "bf16" or "fp32", or '
            "lower optim.lr"
        )


def nonfinite_loss(value: float, step: int) -> TrainingFailed:
    """The error of a training loss that became inf or nan (train.nonfinite = "fail")."""
    return TrainingFailed(
        f"the training loss became {value} by step {step}; lower optim.lr, set "
        'train.clip_norm, or set train.nonfinite = "skip" to skip such steps'
    )


def optimizer_step(
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    model: torch.nn.Module,
    clip: float,
    state,
) -> None:
    """Clip (train.clip_norm), step and zero the gradients; under fp16 through the
    GradScaler, counting the steps it skips into `state` (a TrainState) on the device."""
    if scaler is not None:
        if clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        before = scaler._scale.clone()  # private, but a device tensor: no host sync
        scaler.step(optimizer)
        scaler.update()
        skipped = (scaler._scale < before).long().sum()  # the scale drops = skipped
        state.skipped += skipped
        state.skip_streak = (state.skip_streak + 1) * skipped  # consecutive skipped steps
    else:
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
