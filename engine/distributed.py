"""Several processes through torchrun: who this process is, and the collectives the loop needs.

mpt never launches processes. torchrun does, and sets RANK, LOCAL_RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT; without them this is one process and every call here is
a no-op. `World` is torch-free, so the CLI can ask "am I rank 0?" before torch loads.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from engine.errors import MptError


@dataclass(frozen=True)
class World:
    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes events, the console and checkpoints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """This process's place among torchrun's workers (one process without torchrun)."""
    try:
        size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", str(rank)))
    except ValueError as e:
        raise MptError(
            f"WORLD_SIZE/RANK/LOCAL_RANK are not numbers ({e}); let torchrun set them"
        ) from None
    return World(rank=rank, local_rank=local, size=max(size, 1))


class Collectives:
    """What the training loop agrees on across processes; for one process, plain identity.

    Metric sums travel on the training device's backend (nccl or gloo); control flags on
    a gloo group of their own, so agreeing on them never waits for the GPU.
    """

    def __init__(self, world: World, device):
        import torch
        import torch.distributed as dist

        self.world = world
        self.device = device
        self._dist = dist
        self._torch = torch
        self._flags_group = None
        if not world.distributed:
            return
        if not dist.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend)
        self._flags_group = dist.new_group(backend="gloo")

    def sum(self, *values):
        """Each value (tensors on the device, or numbers) summed over every process."""
        torch = self._torch
        if not self.world.distributed:
            return values
        packed = torch.stack(
            [torch.as_tensor(v, device=self.device).to(torch.float64) for v in values]
        )
        self._dist.all_reduce(packed)
        return tuple(packed.unbind())

    def any(self, flags: list[bool]) -> list[bool]:
        """Each flag true if it is true on any process (stop, checkpoint, pause ...)."""
        if not self.world.distributed:
            return flags
        t = self._torch.tensor([int(f) for f in flags], dtype=self._torch.int32)
        self._dist.all_reduce(t, op=self._dist.ReduceOp.MAX, group=self._flags_group)
        return [bool(v) for v in t.tolist()]

    def gather(self, obj: Any) -> list[Any]:
        """Every process's `obj`, in rank order (e.g. each one's random streams)."""
        if not self.world.distributed:
            return [obj]
        out: list[Any] = [None] * self.world.size
        self._dist.all_gather_object(out, obj, group=self._flags_group)
        return out

    def close(self) -> None:
        if self.world.distributed and self._dist.is_initialized():
            self._dist.destroy_process_group()
