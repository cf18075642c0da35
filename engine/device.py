"""The training device: run.device resolved on this machine, the process-wide switches
(determinism, cuDNN autotuning, the seeds) a run sets before it builds anything, and the
model made ready for it (memory format, DDP, torch.compile)."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from engine.data import SEED_STRIDE
from engine.distributed import World
from engine.errors import MptError


def resolve_device(name: str, world: World | None = None) -> torch.device:
    """Turn run.device into a torch.device, refusing what this machine cannot do.

    Under torchrun, "auto" and "cuda" mean this process's GPU: cuda:LOCAL_RANK.
    """
    local = world.local_rank if world is not None and world.distributed else None
    if name in ("auto", "cuda") and local is not None and torch.cuda.is_available():
        name = f"cuda:{local}"
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MptError(
                f"run.device: CUDA is not available on this machine (got {name!r}); "
                'use "auto" or "cpu"'
            )
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise MptError(
                f"run.device: this machine has {torch.cuda.device_count()} CUDA "
                f"device(s) (got {name!r})"
            )
    if name == "mps" and not torch.backends.mps.is_available():
        raise MptError("run.device: MPS is not available on this machine (got 'mps')")
    return torch.device(name)


def require_precision(device: torch.device, mode: str) -> None:
    """Refuse bf16 on a GPU without it, before anything is built."""
    if mode == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise MptError(
            'precision.mode: this GPU does not support bf16 (got \'bf16\'); use "fp16" or "fp32"'
        )


def set_process_switches(device: torch.device, deterministic: bool, seed: int) -> None:
    """Process-wide switches: set on every run, so one run's choice does not linger."""
    # Only when it changes: the call imports torch._inductor, ~1 s of every start.
    if torch.are_deterministic_algorithms_enabled() != deterministic:
        torch.use_deterministic_algorithms(deterministic)
    if deterministic and device.type == "cuda":
        # cuBLAS is deterministic only with a fixed workspace, and torch refuses its calls
        # under use_deterministic_algorithms without one: the PyTorch docs' setting, read
        # when cuBLAS starts, unless the user chose another.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # Fixed input shapes: let cuDNN pick the fastest kernels, unless determinism is asked.
    torch.backends.cudnn.benchmark = device.type == "cuda" and not deterministic
    seed_everything(seed)


_LENT: list[int] = []  # the thread count a streamed run lowered, to give back


def share_cores_with_workers(device: torch.device, workers: int) -> None:
    """On the CPU, a run whose data DataLoader workers stream leaves them their cores: its
    own ops take the rest (at least one), as each op's threads would otherwise wait at
    every barrier for a core a worker holds (bench/stream.py: 1.75x the samples/s of 2
    threads on 2 cores with 2 workers). The next run gets the count back first, so one
    run's choice does not linger; OMP_NUM_THREADS, set by the user or a sweep, stands."""
    if _LENT:
        torch.set_num_threads(_LENT.pop())
    if "OMP_NUM_THREADS" in os.environ or device.type != "cpu" or workers <= 0:
        return
    before = torch.get_num_threads()
    threads = max(1, min(before, len(os.sched_getaffinity(0)) - workers))
    if threads != before:
        _LENT.append(before)
        torch.set_num_threads(threads)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def wrap_model(
    model: torch.nn.Module, device: torch.device, world: World, compile: bool, seed: int
):
    """(model, forward, ddp, channels_last): the model in the memory format its device
    wants, and what the loop calls: DDP under torchrun, torch.compile when asked. The
    wrappers share the parameters; checkpoints save `model`'s plain keys, which load into
    a plain model."""
    # channels_last lets cuDNN use tensor cores for convolutions under autocast.
    channels_last = device.type == "cuda" and any(
        isinstance(m, torch.nn.Conv2d) for m in model.modules()
    )
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward, ddp = model, None
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        forward = ddp = DistributedDataParallel(model, device_ids=ids)
        # Dropout draws differ per process (as each sees other samples); rank 0 keeps
        # the single-process stream.
        if world.rank:
            torch.manual_seed(seed + SEED_STRIDE * world.rank)
    if compile:
        forward = torch.compile(forward)
    return model, forward, ddp, channels_last
