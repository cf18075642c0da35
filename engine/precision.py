"""precision.mode as torch sees it: the autocast dtype, its context, the GradScaler."""

from __future__ import annotations

import contextlib

import torch

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
