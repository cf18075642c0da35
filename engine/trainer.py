"""The training loop. Read this file first: setup, then fit = epochs of steps + validation.

A step is `grad_accum` micro-batches of `data.batch_size`; the loss is summed per sample
and divided by the samples in the whole step, so accumulation equals one big batch.
Metrics stay on the device; the host syncs only every `log_every` steps and per epoch.
Everything that must survive a restart is gathered by `state_dict()`, so a checkpoint
taken at any step boundary continues as if the run had never stopped.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from engine import checkpoint as ckpt
from engine import events as ev
from engine import safefs
from engine.control import Control
from engine.data import (
    BatchTransform,
    DataBundle,
    EpochBatches,
    ImageFiles,
    Split,
    SplitDataset,
    host_memory_free,
    load_data,
    require_validation,
)
from engine.distributed import Collectives, World, world_from_env
from engine.errors import MptError, TrainingFailed
from engine.gpu import GpuStats
from engine.models import build_model, check_first_batch, check_precision
from engine.monitor import BestTracker, stop_why
from engine.optim import Schedule, build_optimizer
from engine.profile import Profile

_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}
# The GradScaler halves its scale on every skip: 50 halvings in a row leave no scale to
# find, so the overflow is in the forward pass itself.
_HOPELESS_SKIPS = 50


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


class Trainer:
    def __init__(
        self,
        profile: Profile,
        log: ev.EventLog,
        control: Control,
        run_dir: Path | None = None,
        resume: tuple[Path, dict[str, Any]] | None = None,
        warnings: list[str] | None = None,
        profile_steps: int = 0,
    ):
        self.p = profile
        self.log = log
        self.profile_steps = profile_steps  # torch.profiler over this many steps (0: off)
        self.profiler = None
        self.control = control
        self.run_dir = run_dir
        self.resume = resume  # (checkpoint path, its state), or None
        self.warnings = warnings or []
        self.step = 0
        self.epoch = 0
        self._writer: ckpt.CheckpointWriter | None = None  # checkpoints/, made at the first save

    # ---- setup: everything that can fail on the user's input happens here ----
    def setup(self) -> None:
        p = self.p
        self.world = world_from_env()
        self.device = resolve_device(p.run.device, self.world)
        if (
            p.precision.mode == "bf16"
            and self.device.type == "cuda"
            and not torch.cuda.is_bf16_supported()
        ):
            raise MptError(
                "precision.mode: this GPU does not support bf16 (got 'bf16'); "
                'use "fp16" or "fp32"'
            )
        # Process-wide switches: set them on every run, so one run's choice does not linger.
        # Only when it changes: the call imports torch._inductor, ~1 s of every start.
        if torch.are_deterministic_algorithms_enabled() != p.run.deterministic:
            torch.use_deterministic_algorithms(p.run.deterministic)
        # Fixed input shapes: let cuDNN pick the fastest kernels, unless determinism is asked.
        torch.backends.cudnn.benchmark = self.device.type == "cuda" and not p.run.deterministic
        seed_everything(p.run.seed)
        self.dist = Collectives(self.world, self.device)  # joins torchrun's group, if any
        data: DataBundle = load_data(p.data, p.run.seed)
        require_validation(p, data)  # e.g. early stopping on val_loss, and no val split
        self.data = data
        self.transform = BatchTransform(
            data.mean, data.std, self.device, p.data.random_crop, p.data.hflip
        )
        self.cache = self._place_data(data)
        self.model = build_model(p.model, data.in_shape, data.num_classes, self.device)
        self.model = self.model.to(self.device)
        first = data.train.x[:2]
        first = first.materialize() if isinstance(first, ImageFiles) else first
        sample = self.transform(first.to(self.device))
        check_first_batch(self.model, sample, data.num_classes, p.model.arch)  # leaves no trace
        check_precision(self.model, sample, p.precision.mode)  # fp16/bf16 on this device
        # channels_last lets cuDNN use tensor cores for convolutions under autocast.
        self.channels_last = self.device.type == "cuda" and any(
            isinstance(m, torch.nn.Conv2d) for m in self.model.modules()
        )
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, p.optim, self.device)
        # The DDP and compiled wrappers share the parameters; checkpoints save self.model's
        # plain keys, which load into a plain model.
        self.forward = self.model
        self.ddp = None
        if self.world.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward = self.ddp = DistributedDataParallel(self.model, device_ids=ids)
            # Dropout draws differ per process (as each sees other samples); rank 0 keeps
            # the single-process stream.
            if self.world.rank:
                torch.manual_seed(p.run.seed + 1_000_003 * self.world.rank)
        if p.train.compile:
            self.forward = torch.compile(self.forward)
        # data.batch_size is per process: one micro-batch of the whole world takes
        # batch_size x world samples, split between the processes in rank order.
        self.global_batch = p.data.batch_size * self.world.size
        n_batches = math.ceil(len(data.train) / self.global_batch)
        self.steps_per_epoch = math.ceil(n_batches / p.train.grad_accum)
        self.total_steps = self.steps_per_epoch * p.run.epochs
        if p.run.max_steps:
            self.total_steps = min(self.total_steps, p.run.max_steps)
        self.schedule = Schedule(
            self.optimizer, p.schedule, p.optim.lr, self.steps_per_epoch, self.total_steps
        )
        self.autocast_dtype = _AUTOCAST.get(p.precision.mode)
        self.gpu_stats = GpuStats(self.device)
        self.scaler = torch.amp.GradScaler(self.device.type) if p.precision.mode == "fp16" else None
        es = p.early_stop
        self.early = BestTracker(es.monitor, es.mode, es.min_delta)
        self.best_ckpt = BestTracker(p.checkpoint.monitor)
        self.best_weights: dict[str, torch.Tensor] | None = None
        self.ckpt_dir = self.run_dir / "checkpoints" if self.run_dir else None
        # Progress: where the run is, and the metric sums of the epoch and log window so far.
        self.epochs_done, self.group = 0, 0
        self.best_val_acc: float | None = None
        self.last_saved: tuple[int, int] | None = None  # (step, epochs_done) of the newest file
        self.metrics: dict[str, float | None] = {}
        self._zero_epoch_sums()
        self.window_loss = torch.zeros((), device=self.device)
        self.window_samples = 0
        self.skipped = torch.zeros((), device=self.device, dtype=torch.int64)
        self.skip_streak = torch.zeros((), device=self.device, dtype=torch.int64)
        self.aug_state: torch.Tensor | None = None
        if self.resume:
            self.load_state_dict(self.resume[1])

    def _place_data(self, data: DataBundle) -> str:
        """Decide where the uint8 dataset lives: device, (pinned) host memory, or streamed."""
        mode = self.p.data.cache
        if mode == "auto":
            if isinstance(data.train.x, ImageFiles):
                mode = "stream"  # load_data found it too big to decode up front
            elif self.device.type == "cpu":
                mode = "device"  # host memory is the device
            elif self.device.type == "cuda":
                nbytes = data.train.x.nbytes + (data.val.x.nbytes if data.val else 0)
                mode = "device" if self._room_for(nbytes) else "memory"
            else:
                mode = "memory"
        if mode == "device":
            splits = [s for s in (data.train, data.val) if s is not None]
            splits = [Split(s.x.to(self.device), s.y.to(self.device)) for s in splits]
            # Normalise once where the float32 copy fits: per batch that is 3-4 small ops a
            # step, a tenth of a small model's step on the CPU. Bit-identical inputs.
            if self._room_for(4 * sum(s.x.nbytes for s in splits)):
                splits = [self.transform.normalize_split(s) for s in splits]
            data.train, data.val = splits[0], (splits[1] if len(splits) > 1 else None)
        if mode == "stream":
            self.sampler = EpochBatches()
            workers = self.p.data.num_workers
            self.loaders = {
                name: torch.utils.data.DataLoader(
                    SplitDataset(split),
                    batch_sampler=self.sampler if name == "train" else EpochBatches(),
                    num_workers=workers,
                    pin_memory=self.device.type == "cuda",
                    persistent_workers=workers > 0,
                )
                for name, split in (("train", data.train), ("val", data.val))
                if split is not None
            }
        return mode

    def _room_for(self, nbytes: int) -> bool:
        """Whether `nbytes` more fit on the training device: under a quarter of what is free."""
        free = None  # mps and others: no cheap way to ask
        if self.device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(self.device)
        elif self.device.type == "cpu":
            free = host_memory_free()
        return free is not None and nbytes < free // 4

    def _batches(self, split: Split, batches, name: str = "train"):
        """Yield (uint8 images, labels) on the device for each index batch, in order."""
        dev = self.device
        if self.cache == "stream":
            loader = self.loaders[name]
            loader.batch_sampler.batches = [b.tolist() for b in batches]
            for xb, yb in loader:
                yield xb.to(dev, non_blocking=True), yb.to(dev, non_blocking=True)
            return
        pinned = self.cache == "memory" and dev.type == "cuda"
        for idx in batches:
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

    # ---- the loop ----
    def fit(self) -> str:
        p = self.p
        self.log.emit(self._run_started())
        for message in self.warnings:
            self.log.emit(ev.Warning(step=self.step, epoch=self.epochs_done + 1, message=message))
        self._carry_best_over()
        self._start_profiler()
        self.started = time.monotonic()
        self.paused_seconds = 0.0
        reason = "completed"
        while self.epochs_done < p.run.epochs and self.step < self.total_steps:
            self.epoch = self.epochs_done + 1
            epoch_start = time.monotonic()
            reason = self._train_epoch()
            if reason != "completed":
                break  # stopped inside the epoch: the checkpoint continues it on resume
            reason = self._end_epoch(time.monotonic() - epoch_start)
            if reason != "completed":
                break
        self._stop_profiler()  # a run shorter than the profiled steps: what it recorded
        if reason in ("completed", "early_stopped", "max_time"):
            self._check_finite()
            self.save("final")
        if p.early_stop.restore_best and self.best_weights is not None:
            self.model.load_state_dict(self.best_weights)
            val_loss, val_acc = self.evaluate()
            self.metrics.update(val_loss=val_loss, val_acc=val_acc)
        self.log.emit(
            ev.RunFinished(
                step=self.step,
                epoch=self.epoch,
                reason=reason,
                seconds=time.monotonic() - self.started,
                best_val_acc=self.best_val_acc,
                final_val_loss=self.metrics.get("val_loss"),
                final_val_acc=self.metrics.get("val_acc"),
            )
        )
        return reason

    def _train_epoch(self) -> str:
        """Train from the current position to the end of the epoch; returns why it ended."""
        p, train = self.p, self.data.train
        self.model.train()
        order = torch.randperm(len(train), generator=self._epoch_generator("cpu"))
        if self.cache == "device":
            order = order.to(self.device)
        batches = order.split(self.global_batch)
        accum = p.train.grad_accum
        groups = [batches[i : i + accum] for i in range(0, len(batches), accum)]
        world = self.world
        if world.distributed:  # this process's share of each micro-batch, in rank order
            batches = [b.tensor_split(world.size)[world.rank] for b in batches]
        fetch = self._batches(train, batches[self.group * accum :])
        # DDP averages gradients over the processes: dividing each one's loss sum by the
        # step's samples / world makes that average the single-process gradient.
        per_process = world.size if world.distributed else 1
        self.aug = None
        if p.data.random_crop or p.data.hflip:
            self.aug = self._epoch_generator(self.device)
            if self.aug_state is not None:  # resuming inside this epoch
                self.aug.set_state(self.aug_state)
        self.aug_state = None
        window_start = time.monotonic()
        while self.group < len(groups):
            group = groups[self.group]
            step_samples = sum(len(b) for b in group)  # of the whole world
            denominator = step_samples / per_process if world.distributed else step_samples
            # One micro-batch in one process (the usual case): the mean loss is the step's
            # loss as it is, one op fewer than sum / samples; the metric sums weigh it back.
            mean = len(group) == 1 and not world.distributed
            weight = step_samples if mean else 1
            step_loss = step_correct = None  # over the step's micro-batches
            local_samples = 0
            for i in range(len(group)):
                xb, yb = next(fetch)
                local_samples += len(yb)
                xb = self._to_input(self.transform(xb, self.aug))
                # Under DDP, gradients are averaged once per step, after the last micro-batch.
                with self._no_sync(i < len(group) - 1):
                    with self._autocast():
                        out = self.forward(xb)
                        loss = F.cross_entropy(out, yb, reduction="mean" if mean else "sum")
                    scaled = loss if mean else loss / denominator
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                # Each torch call costs microseconds of dispatch on a small model: no
                # zero tensors to add into, one add per extra micro-batch.
                loss, correct = loss.detach().float(), (out.argmax(1) == yb).sum()
                step_loss = loss if step_loss is None else step_loss + loss
                step_correct = correct if step_correct is None else step_correct + correct
            if (
                p.train.nonfinite == "skip"
                and self.scaler is None
                # the one per-step sync, only when asked for; every process skips together
                and self.dist.any([not bool(torch.isfinite(step_loss))])[0]
            ):
                self.optimizer.zero_grad(set_to_none=True)
                self.skipped += 1
            else:
                self._optimizer_step()
                self.epoch_loss.add_(step_loss, alpha=weight)
                self.epoch_correct += step_correct
                self.epoch_samples += local_samples
                self.window_loss.add_(step_loss, alpha=weight)
                self.window_samples += local_samples
            self.step += 1
            self.group += 1
            self.schedule.after_step(self.step)
            if self.profiler is not None:
                self._profiler_step()
            if self.step % p.train.log_every == 0:
                self._emit_step(window_start, self.group / len(groups))
                window_start = time.monotonic()
            every = p.checkpoint.every_steps
            if every and self.step % every == 0:
                self.save("steps")
            # Several processes agree on controls where they sync anyway: every log_every steps.
            if not world.distributed or self.step % p.train.log_every == 0:
                reason = self._between_steps()
                if reason != "completed":
                    return reason
            if self.step >= self.total_steps:
                break
        self.aug = None  # the epoch's augmentation stream ends with it (not in later checkpoints)
        return "completed"

    def _optimizer_step(self) -> None:
        clip = self.p.train.clip_norm
        if self.scaler is not None:
            if clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            before = self.scaler._scale.clone()  # private, but a device tensor: no host sync
            self.scaler.step(self.optimizer)
            self.scaler.update()
            skipped = (self.scaler._scale < before).long().sum()  # the scale drops = skipped
            self.skipped += skipped
            self.skip_streak = (self.skip_streak + 1) * skipped  # consecutive skipped steps
        else:
            if clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _end_epoch(self, seconds: float) -> str:
        """Validate, report, watch the monitors, save; returns why the run should stop."""
        p = self.p
        if self.world.distributed:  # the sums of every process
            loss, correct, samples = self.dist.sum(
                self.epoch_loss, self.epoch_correct, self.epoch_samples
            )
            loss, correct, samples = float(loss), float(correct), int(samples)
        else:
            loss, correct = self.epoch_loss.item(), self.epoch_correct.item()
            samples = self.epoch_samples
        train_loss = loss / max(samples, 1)
        train_acc = correct / max(samples, 1)
        val_loss, val_acc = self.evaluate()
        self.metrics = dict(
            train_loss=train_loss, train_acc=train_acc, val_loss=val_loss, val_acc=val_acc
        )
        if val_acc is not None and (self.best_val_acc is None or val_acc > self.best_val_acc):
            self.best_val_acc = val_acc
        self.schedule.after_validation(val_loss if val_loss is not None else train_loss)
        self.log.emit(
            ev.EpochEnd(
                step=self.step,
                epoch=self.epoch,
                epochs=p.run.epochs,
                train_loss=train_loss,
                train_acc=train_acc,
                val_loss=val_loss,
                val_acc=val_acc,
                lr=self._lr(),
                seconds=seconds,
                samples_per_s=samples / max(seconds, 1e-9),
            )
        )
        self.epochs_done, self.group = self.epoch, 0
        self._zero_epoch_sums()
        if not math.isfinite(train_loss) and p.train.nonfinite == "fail" and self.scaler is None:
            self._fail_nonfinite(train_loss)
        stop_why = self._watch_early_stop()
        self._checkpoints_at_epoch_end()
        if stop_why:
            return "early_stopped"
        return self._between_steps()

    def _watch_early_stop(self) -> str | None:
        es = self.p.early_stop
        value = self.metrics.get(es.monitor)
        if not es.enabled or value is None:
            return None
        if es.check_finite and not math.isfinite(value):
            raise TrainingFailed(
                f"early_stop.monitor: {es.monitor} is {value} after epoch {self.epoch}; lower "
                "optim.lr, set train.clip_norm, or use fp32"
            )
        improved = self.early.update(value, self.step)
        if improved and es.restore_best:
            self.best_weights = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        why = stop_why(value, self.early.wait, es.patience, es.stop_above, es.stop_below)
        self.log.emit(
            ev.EarlyStop(
                step=self.step,
                epoch=self.epoch,
                monitor=es.monitor,
                value=value,
                best=self.early.best,
                wait=self.early.wait,
                patience=es.patience,
                stopping=bool(why),
                why=why,
            )
        )
        return why or None

    def _checkpoints_at_epoch_end(self) -> None:
        ck = self.p.checkpoint
        value = self.metrics.get(ck.monitor)
        # Update the tracker first, so the checkpoint written now records its own validation.
        is_best = ck.save_best and value is not None and self.best_ckpt.update(value, self.step)
        if ck.every_epochs and self.epoch % ck.every_epochs == 0:
            self.save("epoch")
        elif is_best:
            self.save("best")
        if is_best:
            self._link("best.pt", reason="best")

    def _between_steps(self) -> str:
        """Apply checkpoint/pause/stop requests and the time limit; return why to stop.

        Under torchrun every process calls this at the same steps, and a request on any
        one of them (a signal reaches each) acts on all (`dist.any`; for one process the
        flags as they are), so their collectives stay in step.
        """
        c, max_time = self.control, self.p.run.max_time
        over = bool(max_time) and time.monotonic() - self.started - self.paused_seconds >= max_time
        stop, interrupted, save, pause, over = self.dist.any(
            [
                c.stop_requested,
                c.stop_requested and c.stop_reason == "interrupted",
                c.take_checkpoint_request(),
                c.pause_requested,
                over,
            ]
        )
        if save:
            self.save("requested")
        if pause and not stop:
            self.log.emit(ev.Paused(step=self.step, epoch=self.epoch))
            pause_start = time.monotonic()
            while pause and not stop:  # until no process is paused any more
                c.wait_while_paused(timeout=0.1)  # a checkpoint may be asked for meanwhile
                pause, save, stop, interrupted = self.dist.any(
                    [
                        c.pause_requested and not c.stop_requested,
                        c.take_checkpoint_request(),
                        c.stop_requested,
                        c.stop_requested and c.stop_reason == "interrupted",
                    ]
                )
                if save:
                    self.save("requested")
            self.paused_seconds += time.monotonic() - pause_start
            if not stop:
                self.log.emit(ev.Resumed(step=self.step, epoch=self.epoch))
        if stop:
            self._check_finite()
            self.save("interrupted" if interrupted else "stop")
            return "interrupted" if interrupted else "stopped"
        return "max_time" if over else "completed"

    @torch.no_grad()
    def evaluate(self) -> tuple[float | None, float | None]:
        val = self.data.val
        if val is None:
            return None, None
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        order = torch.arange(len(val), device=val.y.device if self.cache == "device" else "cpu")
        # Several processes: each validates its share with the plain module (DDP's forward
        # would sync buffers, a collective the others might not be in), then the sums meet.
        forward = self.forward
        if self.world.distributed:
            order, forward = order.tensor_split(self.world.size)[self.world.rank], self.model
        for xb, yb in self._batches(val, order.split(self.p.data.eval_batch_size), "val"):
            xb = self._to_input(self.transform(xb))
            with self._autocast():
                out = forward(xb)
            loss_sum += F.cross_entropy(out.float(), yb, reduction="sum")
            correct += (out.argmax(1) == yb).sum()
        self.model.train()
        if self.world.distributed:
            loss, right = self.dist.sum(loss_sum, correct)
            return float(loss) / len(val), float(right) / len(val)
        return loss_sum.item() / len(val), correct.item() / len(val)

    # ---- checkpoints ----
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly from this step boundary."""
        aug = getattr(self, "aug", None)
        return {
            "format": ckpt.FORMAT,
            "version": ckpt.VERSION,
            "time": time.time(),
            "profile": self.p.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "early_stop": self.early.state_dict(),
            "best_checkpoint": self.best_ckpt.state_dict(),
            "best_weights": self.best_weights,
            "metrics": dict(self.metrics),
            "progress": {
                "step": self.step,
                "epochs_done": self.epochs_done,
                "group": self.group,  # optimizer steps already done inside the next epoch
                "epoch_loss": self.epoch_loss,
                "epoch_correct": self.epoch_correct,
                "epoch_samples": self.epoch_samples,
                "window_loss": self.window_loss,
                "window_samples": self.window_samples,
                "skipped": self.skipped,
                "skip_streak": self.skip_streak,
                "best_val_acc": self.best_val_acc,
                "events": self.log.lines,  # events.jsonl lines up to here: the history
                "world_size": self.world.size,
            },
            "rng": {**ckpt.rng_state(), "augment": aug.get_state() if aug else None},
            # Under torchrun: every process's own sums and random streams (rank order).
            "ranks": getattr(self, "_ranks_state", None),
        }

    def _rank_state(self) -> dict[str, Any]:
        """What differs between processes: their metric sums and random streams."""
        return {
            "epoch_loss": self.epoch_loss.cpu(),
            "epoch_correct": self.epoch_correct.cpu(),
            "epoch_samples": self.epoch_samples,
            "window_loss": self.window_loss.cpu(),
            "window_samples": self.window_samples,
            "rng": ckpt.rng_state(),
        }

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
                totals = {k: sum(r[k] for r in ranks) for k in ranks[0] if k != "rng"}
            self._set_sums(totals)
            ckpt.set_rng_state(state["rng"])

    def _set_sums(self, sums: dict[str, Any]) -> None:
        """The epoch's and the log window's metric sums, as a checkpoint holds them."""
        self.epoch_loss = sums["epoch_loss"].to(self.device)
        self.epoch_correct = sums["epoch_correct"].to(self.device)
        self.epoch_samples = sums["epoch_samples"]
        self.window_loss = sums["window_loss"].to(self.device)
        self.window_samples = sums["window_samples"]

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # load() checked the structure; what only the built model can tell is checked
        # here, each failure one sentence naming the file and the key.
        path = self.resume[0] if self.resume else Path("the checkpoint")
        built = f"model.arch {self.p.model.arch!r} built for this data"
        ckpt.restore_weights(self.model, state["model"], path, built)
        ckpt.restore_optimizer(self.optimizer, state["optimizer"], path)
        defaults = Profile().to_dict()["optim"]
        old, new = {**defaults, **state["profile"].get("optim", {})}, self.p.to_dict()["optim"]
        for key in (k for k in new if k not in ("name", "lr") and old.get(k) != new[k]):
            for group in self.optimizer.param_groups:  # a hyper-parameter the resume changes
                if key in group:
                    group[key] = tuple(new[key]) if key == "betas" else new[key]
        ckpt.check_like(path, state["schedule"], self.schedule.state_dict(), "schedule")
        with ckpt.restoring(path, "schedule"):
            self.schedule.load_state_dict(
                state["schedule"], old_lr=old["lr"], new_lr=self.p.optim.lr
            )
        if self.scaler is not None and state["scaler"]:
            ckpt.check_like(path, state["scaler"], self.scaler.state_dict(), "scaler")
            with ckpt.restoring(path, "scaler"):
                self.scaler.load_state_dict(state["scaler"])
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
        self.last_saved = (self.step, self.epochs_done)
        with ckpt.restoring(path, "rng"):  # e.g. CUDA streams of another GPU's size
            self._load_rank_state(state)
            self.aug_state = state["rng"]["augment"]
            if self.aug_state is not None:  # set on a throwaway: the epoch sets the real one
                torch.Generator(device=self.device).set_state(self.aug_state)

    def save(self, reason: str) -> Path | None:
        """Write step-NNNNNN.pt atomically, point last.pt at it, drop old periodic ones.

        Under torchrun every process calls this at the same step (it gathers each one's
        sums and random streams); rank 0 alone writes.
        """
        if self.world.distributed:
            self._ranks_state = self.dist.gather(self._rank_state())
        if self.ckpt_dir is None:
            return None
        path = self.ckpt_dir / f"step-{self.step:06d}.pt"
        files = self._checkpoint_files()
        if self.last_saved != (self.step, self.epochs_done) or not path.exists():
            self._check_finite()
            try:
                freed = files.write(self.state_dict(), path, reason)
            except OSError as e:  # disk full, folder not writable: see _checkpoint_failed
                self._checkpoint_failed(path, e, reason)
                return None
            self.last_saved = (self.step, self.epochs_done)
            if freed:
                self._warn_freed(freed, path)
        else:
            files.note(path, reason)  # e.g. a request at the step a periodic file was saved
        self.log.emit(
            ev.CheckpointSaved(step=self.step, epoch=self.epoch, path=str(path), reason=reason)
        )
        return path

    def _checkpoint_files(self) -> ckpt.CheckpointWriter:
        if self._writer is None:
            self._writer = ckpt.CheckpointWriter(self.ckpt_dir, self.p.checkpoint.keep_last)
        return self._writer

    def _warn_freed(self, freed: list[Path], path: Path) -> None:
        names = ", ".join(f.name for f in freed)
        self.log.emit(
            ev.Warning(
                step=self.step,
                epoch=self.epoch,
                message=f"the disk holding {self.ckpt_dir} is full: removed the older periodic "
                f"checkpoint(s) {names} early to make room for {path.name}",
            )
        )

    def _checkpoint_failed(self, path: Path, error: OSError, reason: str = "") -> None:
        """A checkpoint the disk refused: the previous files stay. A periodic or requested
        one warns and training goes on (or stops, by checkpoint.on_error); the one that
        ends the run (final, stop, interrupt) is the run's result: losing it fails the run."""
        last = self.ckpt_dir / "last.pt"
        saved = self.last_saved is not None and last.exists()
        cause = error.strerror or error
        if reason in ("final", "stop", "interrupted"):
            raise TrainingFailed(self._result_lost(path, error, reason, saved))
        kept = (
            f"last.pt still holds step {self.last_saved[0]}"
            if saved
            else "no earlier checkpoint of this run exists"
        )
        message = f"could not write checkpoint {path} ({cause}); {kept}"
        if self.p.checkpoint.on_error == "stop":
            raise TrainingFailed(f'{message}; the run stops (checkpoint.on_error = "stop")')
        self.log.emit(
            ev.Warning(step=self.step, epoch=self.epoch, message=f"{message}; training goes on")
        )

    def _result_lost(self, path: Path, error: OSError, reason: str, saved: bool) -> str:
        """The sentence of a run whose last checkpoint (final, stop, interrupt) failed."""
        what = "interrupt" if reason == "interrupted" else reason
        if saved:
            kept, then = (
                f"the newest checkpoint on disk is {self.ckpt_dir / 'last.pt'} "
                f"(step {self.last_saved[0]})",
                "resume from it",
            )
        else:
            kept, then = f"no checkpoint of this run was kept{self._resumed_from()}", "run again"
        text = f"could not write the {what} checkpoint {path} ({error.strerror or error}); {kept}"
        if error.errno in ckpt.DISK_FULL:
            text += f"; free space on that disk and {then}"
        return text

    def _resumed_from(self) -> str:
        return f" (it resumed from {self.resume[0]})" if self.resume else ""

    def _carry_best_over(self) -> None:
        """A resumed run's folder starts with the best.pt it resumed knowing about."""
        if not (self.resume and self.ckpt_dir and self.best_ckpt.best_step is not None):
            return
        source = self.resume[0].resolve().parent / "best.pt"
        try:
            if ckpt.load(source)["progress"]["step"] != self.best_ckpt.best_step:
                return  # that best.pt came later than the checkpoint resumed from
        except (ckpt.CheckpointError, KeyError):
            return
        try:
            safefs.make_dir(self.ckpt_dir)  # never through a symbolic link
            ckpt.link_atomic(source, self.ckpt_dir / "best.pt")
        except OSError as e:
            self._checkpoint_failed(self.ckpt_dir / "best.pt", e)

    def _link(self, name: str, reason: str) -> None:
        if self.ckpt_dir is None:
            return
        path = self.ckpt_dir / f"step-{self.step:06d}.pt"
        if not path.exists():
            return  # that checkpoint could not be written: reported already
        try:
            ckpt.link_atomic(path, self.ckpt_dir / name)
        except OSError as e:
            self._checkpoint_failed(self.ckpt_dir / name, e)
            return
        self._checkpoint_files().prune()  # the best file best.pt held until now may go
        self.log.emit(
            ev.CheckpointSaved(
                step=self.step, epoch=self.epoch, path=str(self.ckpt_dir / name), reason=reason
            )
        )

    # ---- the profiler (mpt run --profile-steps N) ----
    def _start_profiler(self) -> None:
        """torch.profiler over `profile_steps` steps, after one to skip and one to warm up."""
        if not self.profile_steps or self.run_dir is None or not self.world.main:
            return
        # Kineto logs an ERROR line on a CUDA build with no GPU: keep the console for people.
        os.environ.setdefault("KINETO_LOG_LEVEL", "5")
        from torch.profiler import ProfilerActivity, profile, schedule, tensorboard_trace_handler

        activities = [ProfilerActivity.CPU]
        if self.device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        self.trace_dir = self.run_dir / "profiler"
        self.profiler = profile(
            activities=activities,
            schedule=schedule(wait=1, warmup=1, active=self.profile_steps, repeat=1),
            on_trace_ready=tensorboard_trace_handler(str(self.trace_dir)),
            record_shapes=True,
        )
        self.profiler.start()
        self.profiled = 0

    def _profiler_step(self) -> None:
        self.profiler.step()
        self.profiled += 1
        if self.profiled >= 2 + self.profile_steps:  # the trace is written at this step
            self._stop_profiler()

    def _stop_profiler(self) -> None:
        if self.profiler is None:
            return
        self.profiler.stop()
        self.profiler = None
        traces = sorted(self.trace_dir.glob("*.pt.trace.json"), key=lambda f: f.stat().st_mtime)
        if traces:
            steps = max(0, min(self.profile_steps, self.profiled - 2))
            self.log.emit(
                ev.TraceSaved(step=self.step, epoch=self.epoch, path=str(traces[-1]), steps=steps)
            )

    # ---- helpers ----
    def _zero_epoch_sums(self) -> None:
        self.epoch_loss = torch.zeros((), device=self.device)
        self.epoch_correct = torch.zeros((), device=self.device, dtype=torch.int64)
        self.epoch_samples = 0

    def _check_finite(self) -> None:
        """Never save or go on from weights a non-finite loss has already spoiled."""
        if self.scaler is not None:
            self._check_skip_streak()
            return
        if self.p.train.nonfinite != "fail":
            return
        for value in (self.window_loss, self.epoch_loss):
            if not bool(torch.isfinite(value)):
                self._fail_nonfinite(float(value))

    def _check_skip_streak(self) -> None:
        """fp16: the GradScaler skipping step after step means the model overflows in fp16."""
        streak = int(self.skip_streak)
        if streak >= _HOPELESS_SKIPS:
            raise TrainingFailed(
                f"the GradScaler skipped the last {streak} steps in a row (non-finite values in "
                f'fp16) by step {self.step}; use precision.mode = "bf16" or "fp32", or '
                "lower optim.lr"
            )

    def _fail_nonfinite(self, value: float) -> None:
        raise TrainingFailed(
            f"the training loss became {value} by step {self.step}; lower optim.lr, set "
            'train.clip_norm, or set train.nonfinite = "skip" to skip such steps'
        )

    def _epoch_generator(self, device) -> torch.Generator:
        """A fresh stream per epoch, so any epoch's order is known from the seed alone."""
        g = torch.Generator(device=device)
        g.manual_seed(self.p.run.seed * 1_000_003 + self.epoch)
        return g

    def _no_sync(self, skip: bool):
        """DDP's no_sync for the micro-batches before a step's last one; else nothing."""
        return self.ddp.no_sync() if skip and self.ddp is not None else contextlib.nullcontext()

    def _autocast(self):
        """autocast for fp16/bf16; for fp32 no context at all (entering a disabled one
        costs more per step than the tutorial MLP's small ops)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def _to_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _emit_step(self, window_start: float, progress: float) -> None:
        if self.world.distributed:  # the window of every process
            loss_sum, samples = self.dist.sum(self.window_loss, self.window_samples)
            loss_sum, samples = float(loss_sum), int(samples)
        else:
            loss_sum, samples = self.window_loss.item(), self.window_samples  # the host sync
        # None: every step since the last report was skipped (no loss to show, not a zero).
        loss = loss_sum / samples if samples else None
        if self.scaler is not None:
            self._check_skip_streak()
        if not math.isfinite(loss_sum) and self.p.train.nonfinite == "fail" and self.scaler is None:
            self._fail_nonfinite(loss_sum)
        seconds = max(time.monotonic() - window_start, 1e-9)
        mem = {}
        if self.device.type == "cuda":
            mem = dict(
                gpu_mem_allocated=torch.cuda.memory_allocated(self.device),
                gpu_mem_reserved=torch.cuda.memory_reserved(self.device),
                gpu_mem_peak=torch.cuda.max_memory_allocated(self.device),
                gpu_mem_total=torch.cuda.get_device_properties(self.device).total_memory,
                **self.gpu_stats.read(),
            )
        self.log.emit(
            ev.Step(
                step=self.step,
                epoch=self.epoch,
                loss=loss,
                lr=self._lr(),
                samples_per_s=samples / seconds,
                epoch_progress=progress,
                skipped_steps=int(self.skipped),
                **mem,
            )
        )
        self.window_loss.zero_()
        self.window_samples = 0

    def _run_started(self) -> ev.RunStarted:
        p, d = self.p, self.data
        return ev.RunStarted(
            step=self.step,
            epoch=self.epochs_done + 1,
            run_dir=str(self.run_dir or ""),
            name=p.run.name,
            device=str(self.device),
            precision=p.precision.mode,
            dataset=p.data.dataset,
            train_samples=len(d.train),
            val_samples=len(d.val) if d.val else 0,
            num_classes=d.num_classes,
            input_shape=list(d.in_shape),
            arch=p.model.arch,
            parameters=sum(t.numel() for t in self.model.parameters()),
            epochs=p.run.epochs,
            steps_per_epoch=self.steps_per_epoch,
            total_steps=self.total_steps,
            batch_size=p.data.batch_size,
            grad_accum=p.train.grad_accum,
            global_batch=self.global_batch * p.train.grad_accum,
            world_size=self.world.size,
            data_cache=self.cache,
            mean=list(d.mean),
            std=list(d.std),
            resumed_from=str(self.resume[0]) if self.resume else None,
            pid=os.getpid(),
            host=socket.gethostname(),
        )
