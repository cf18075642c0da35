"""Where the dataset lives while a run trains, and the batches the loop takes from it.

On the device (airbench's way: a uint8 copy, normalised once to float32 where that fits),
in the host's memory (pinned on CUDA, so copies run asynchronously), or streamed from the
files by DataLoader workers: data.cache, or under "auto" chosen by size. A batch is an
index slice of a seeded per-epoch order, whatever the placement.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch

from engine.data import (
    BatchTransform,
    DataBundle,
    EpochBatches,
    ImageFiles,
    Split,
    SplitDataset,
    epoch_generator,
)
from engine.device import share_cores_with_workers
from engine.distributed import World
from engine.memory import cache_fits, device_memory_free

Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 (or normalised float32) images, labels


class DataPlacement:
    """The run's splits where `mode` put them ("device", "memory" or "stream"), and their
    batches on the training device."""

    def __init__(
        self,
        data: DataBundle,
        cache: str,
        device: torch.device,
        transform: BatchTransform,
        num_workers: int = 0,
    ):
        self.device = device
        self.mode = cache if cache != "auto" else self._choose(data)
        splits = [s for s in (data.train, data.val) if s is not None]
        if self.mode == "device":
            splits = [Split(s.x.to(device), s.y.to(device)) for s in splits]
            # Normalise once where the float32 copy fits: per batch that is 3-4 small ops a
            # step, a tenth of a small model's step on the CPU. Bit-identical inputs.
            if self._room_for(4 * sum(s.x.nbytes for s in splits)):
                splits = [transform.normalize_split(s) for s in splits]
        train, val = splits[0], (splits[1] if len(splits) > 1 else None)
        self.data = dataclasses.replace(data, train=train, val=val)  # the placed splits
        self._loaders: dict[str, torch.utils.data.DataLoader] = {}
        share_cores_with_workers(device, num_workers if self.mode == "stream" else 0)
        if self.mode == "stream":
            self._loaders = {
                name: torch.utils.data.DataLoader(
                    SplitDataset(split),
                    batch_sampler=EpochBatches(),  # its batches are set per epoch
                    num_workers=num_workers,
                    pin_memory=device.type == "cuda",
                    persistent_workers=num_workers > 0,
                    # Its own stream for the workers' base seed: drawn from torch's global
                    # one, each epoch's iterator would shift dropout's numbers, and a run
                    # resumed mid-epoch would no longer be the run that never stopped.
                    generator=torch.Generator().manual_seed(0),
                )
                for name, split in (("train", train), ("val", val))
                if split is not None
            }

    def _choose(self, data: DataBundle) -> str:
        """data.cache "auto": the device if the uint8 dataset fits there, else memory."""
        if isinstance(data.train.x, ImageFiles):
            return "stream"  # load_data found it too big to decode up front
        if self.device.type == "cpu":
            return "device"  # host memory is the device
        if self.device.type == "cuda":
            nbytes = data.train.x.nbytes + (data.val.x.nbytes if data.val else 0)
            return "device" if self._room_for(nbytes) else "memory"
        return "memory"

    def _room_for(self, nbytes: int) -> bool:
        """Whether `nbytes` more fit on the training device (engine/memory.py's rule)."""
        return cache_fits(nbytes, device_memory_free(self.device), unknown=False)

    @property
    def train(self) -> Split:
        return self.data.train

    @property
    def val(self) -> Split | None:
        return self.data.val

    def train_epoch(
        self, seed: int, epoch: int, batch: int, accum: int, world: World, start: int
    ) -> tuple[list[tuple[torch.Tensor, ...]], Iterator[Batch]]:
        """One epoch in its seeded order: the optimizer steps (each `accum` micro-batches
        of `batch` indices, the whole world's) and this process's batches from step
        `start` on."""
        order = torch.randperm(len(self.train), generator=epoch_generator(seed, epoch, "cpu"))
        if self.mode == "device":
            order = order.to(self.device)
        batches = order.split(batch)
        steps = [batches[i : i + accum] for i in range(0, len(batches), accum)]
        if world.distributed:  # this process's share of each micro-batch, in rank order
            batches = [b.tensor_split(world.size)[world.rank] for b in batches]
        return steps, self.batches("train", batches[start * accum :])

    def val_batches(self, batch: int, world: World) -> Iterator[Batch]:
        """The validation split in order; under torchrun this process's share of it."""
        val = self.val
        order = torch.arange(len(val), device=self.device if self.mode == "device" else "cpu")
        if world.distributed:
            order = order.tensor_split(world.size)[world.rank]
        return self.batches("val", order.split(batch))

    def batches(self, name: str, index_batches) -> Iterator[Batch]:
        """Yield (images, labels) on the device for each index batch of split `name`."""
        dev = self.device
        if self.mode == "stream":
            loader = self._loaders[name]
            loader.batch_sampler.batches = [b.tolist() for b in index_batches]
            for xb, yb in loader:
                yield xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
            return
        split = self.train if name == "train" else self.val
        pinned = self.mode == "memory" and dev.type == "cuda"
        for idx in index_batches:
            if pinned:  # gather into page-locked memory so the copy runs asynchronously
                xb = torch.empty(
                    (len(idx), *split.x.shape[1:]), dtype=split.x.dtype, pin_memory=True
                )
                torch.index_select(split.x, 0, idx, out=xb)
                yield xb.to(dev, non_blocking=True), split.y[idx].to(dev, non_blocking=True)
            else:
                yield (
                    split.x[idx].to(dev, non_blocking=True),
                    split.y[idx].to(dev, non_blocking=True),
                )

    def close(self) -> None:
        """Let go of the DataLoaders: their persistent workers end with their iterators
        (once nothing else, e.g. a failure's traceback, holds those)."""
        self._loaders = {}
