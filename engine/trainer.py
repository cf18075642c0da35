"""The training loop. Read this file first: setup, then fit = epochs of steps + validation.

A step is `grad_accum` micro-batches of `data.batch_size`; the loss is summed per sample
and divided by the samples in the whole step, so accumulation equals one big batch.
Metrics stay on the device; the host syncs only every `log_every` steps and per epoch.
"""

from __future__ import annotations

import math
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from engine import events as ev
from engine.control import Control
from engine.data import BatchTransform, DataBundle, Split, load_data
from engine.errors import MptError
from engine.models import build_model, check_output_shape
from engine.optim import Schedule, build_optimizer
from engine.profile import Profile

_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """Turn run.device into a torch.device, refusing what this machine cannot do."""
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
        self, profile: Profile, log: ev.EventLog, control: Control, run_dir: Path | None = None
    ):
        self.p = profile
        self.log = log
        self.control = control
        self.run_dir = run_dir
        self.step = 0
        self.epoch = 0

    # ---- setup: everything that can fail on the user's input happens here ----
    def setup(self) -> None:
        p = self.p
        self.device = resolve_device(p.run.device)
        if (
            p.precision.mode == "bf16"
            and self.device.type == "cuda"
            and not torch.cuda.is_bf16_supported()
        ):
            raise MptError(
                "precision.mode: this GPU does not support bf16 (got 'bf16'); "
                'use "fp16" or "fp32"'
            )
        if p.run.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        seed_everything(p.run.seed)
        data: DataBundle = load_data(p.data, p.run.seed)
        self.data = data
        self.cache = self._place_data(data)
        self.transform = BatchTransform(
            data.mean, data.std, self.device, p.data.random_crop, p.data.hflip
        )
        self.model = build_model(p.model, data.in_shape, data.num_classes).to(self.device)
        sample = self.transform(data.train.x[:2].to(self.device))
        check_output_shape(self.model, sample, data.num_classes)
        self.optimizer = build_optimizer(self.model, p.optim)
        n_batches = math.ceil(len(data.train) / p.data.batch_size)
        self.steps_per_epoch = math.ceil(n_batches / p.train.grad_accum)
        self.total_steps = self.steps_per_epoch * p.run.epochs
        if p.run.max_steps:
            self.total_steps = min(self.total_steps, p.run.max_steps)
        self.schedule = Schedule(
            self.optimizer, p.schedule, p.optim.lr, self.steps_per_epoch, self.total_steps
        )
        self.autocast_dtype = _AUTOCAST.get(p.precision.mode)
        self.scaler = torch.amp.GradScaler(self.device.type) if p.precision.mode == "fp16" else None

    def _place_data(self, data: DataBundle) -> str:
        """Keep the uint8 dataset on the device when it fits, else in host memory."""
        mode = self.p.data.cache
        if mode == "auto":
            mode = "memory"
            if self.device.type == "cpu":
                mode = "device"  # host memory is the device
            elif self.device.type == "cuda":
                nbytes = data.train.x.nbytes + (data.val.x.nbytes if data.val else 0)
                free, _ = torch.cuda.mem_get_info(self.device)
                mode = "device" if nbytes < 0.25 * free else "memory"
        if mode == "device":
            data.train = Split(data.train.x.to(self.device), data.train.y.to(self.device))
            if data.val is not None:
                data.val = Split(data.val.x.to(self.device), data.val.y.to(self.device))
        return mode

    # ---- the loop ----
    def fit(self) -> str:
        p = self.p
        self.log.emit(self._run_started())
        started = time.monotonic()
        self.paused_seconds = 0.0
        reason = "completed"
        self.best_val_acc = None
        last_val = (None, None)
        for self.epoch in range(1, p.run.epochs + 1):
            epoch_start = time.monotonic()
            train_loss, train_acc, samples, reason = self._train_epoch(started)
            if samples == 0:
                break
            val_loss, val_acc = self.evaluate()
            last_val = (val_loss, val_acc)
            if val_acc is not None and (self.best_val_acc is None or val_acc > self.best_val_acc):
                self.best_val_acc = val_acc
            self.schedule.after_validation(val_loss if val_loss is not None else train_loss)
            seconds = time.monotonic() - epoch_start
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
            if reason != "completed" or self.step >= self.total_steps:
                break
        self.log.emit(
            ev.RunFinished(
                step=self.step,
                epoch=self.epoch,
                reason=reason,
                seconds=time.monotonic() - started,
                best_val_acc=self.best_val_acc,
                final_val_loss=last_val[0],
                final_val_acc=last_val[1],
            )
        )
        return reason

    def _train_epoch(self, started: float) -> tuple[float, float, int, str]:
        """One pass over the training data; returns loss, accuracy, samples, stop reason."""
        p, train = self.p, self.data.train
        self.model.train()
        order = torch.randperm(len(train), generator=self._epoch_generator("cpu"))
        order = order.to(train.x.device)
        batches = order.split(p.data.batch_size)
        accum = p.train.grad_accum
        aug = self._epoch_generator(self.device) if (p.data.random_crop or p.data.hflip) else None
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        window_loss = torch.zeros((), device=self.device)
        samples = window_samples = 0
        window_start = time.monotonic()
        reason = "completed"
        for first in range(0, len(batches), accum):
            group = batches[first : first + accum]
            step_samples = sum(len(b) for b in group)
            for idx in group:
                xb = self.transform(train.x[idx].to(self.device, non_blocking=True), aug)
                yb = train.y[idx].to(self.device, non_blocking=True)
                with torch.autocast(
                    self.device.type,
                    dtype=self.autocast_dtype,
                    enabled=self.autocast_dtype is not None,
                ):
                    out = self.model(xb)
                    loss = F.cross_entropy(out, yb, reduction="sum")
                scaled = loss / step_samples
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                loss_sum += loss.detach().float()
                window_loss += loss.detach().float()
                correct += (out.argmax(1) == yb).sum()
            self._optimizer_step()
            samples += step_samples
            window_samples += step_samples
            if self.step % p.train.log_every == 0:
                self._emit_step(window_loss, window_samples, window_start, first, len(batches))
                window_loss.zero_()
                window_samples, window_start = 0, time.monotonic()
            reason = self._between_steps(started)
            if reason != "completed" or self.step >= self.total_steps:
                break
        if samples == 0:
            return 0.0, 0.0, 0, reason
        return (loss_sum.item() / samples, correct.item() / samples, samples, reason)

    def _optimizer_step(self) -> None:
        clip = self.p.train.clip_norm
        if self.scaler is not None:
            if clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            if clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.schedule.after_step(self.step)

    def _between_steps(self, started: float) -> str:
        """Apply pause/stop requests and the time limit; return why to stop, or 'completed'."""
        c = self.control
        if c.pause_requested and not c.stop_requested:
            self.log.emit(ev.Paused(step=self.step, epoch=self.epoch))
            pause_start = time.monotonic()
            c.wait_while_paused()
            self.paused_seconds += time.monotonic() - pause_start
            self.log.emit(ev.Resumed(step=self.step, epoch=self.epoch))
        if c.stop_requested:
            return c.stop_reason
        max_time = self.p.run.max_time
        if max_time and time.monotonic() - started - self.paused_seconds >= max_time:
            return "max_time"
        return "completed"

    @torch.no_grad()
    def evaluate(self) -> tuple[float | None, float | None]:
        val = self.data.val
        if val is None:
            return None, None
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.int64)
        for start in range(0, len(val), self.p.data.eval_batch_size):
            sl = slice(start, start + self.p.data.eval_batch_size)
            xb = self.transform(val.x[sl].to(self.device, non_blocking=True))
            yb = val.y[sl].to(self.device, non_blocking=True)
            with torch.autocast(
                self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
            ):
                out = self.model(xb)
            loss_sum += F.cross_entropy(out.float(), yb, reduction="sum")
            correct += (out.argmax(1) == yb).sum()
        self.model.train()
        return loss_sum.item() / len(val), correct.item() / len(val)

    # ---- helpers ----
    def _epoch_generator(self, device) -> torch.Generator:
        """A fresh stream per epoch, so any epoch's order is known from the seed alone."""
        g = torch.Generator(device=device)
        g.manual_seed(self.p.run.seed * 1_000_003 + self.epoch)
        return g

    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _emit_step(self, window_loss, window_samples, window_start, first, n_batches) -> None:
        loss = window_loss.item() / max(window_samples, 1)  # the one host sync per log_every
        seconds = max(time.monotonic() - window_start, 1e-9)
        mem = {}
        if self.device.type == "cuda":
            mem = dict(
                gpu_mem_allocated=torch.cuda.memory_allocated(self.device),
                gpu_mem_reserved=torch.cuda.memory_reserved(self.device),
                gpu_mem_peak=torch.cuda.max_memory_allocated(self.device),
                gpu_mem_total=torch.cuda.get_device_properties(self.device).total_memory,
            )
        done = min(first + self.p.train.grad_accum, n_batches) / n_batches
        self.log.emit(
            ev.Step(
                step=self.step,
                epoch=self.epoch,
                loss=loss,
                lr=self._lr(),
                samples_per_s=window_samples / seconds,
                epoch_progress=done,
                **mem,
            )
        )

    def _run_started(self) -> ev.RunStarted:
        p, d = self.p, self.data
        return ev.RunStarted(
            step=self.step,
            epoch=1,
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
            global_batch=p.data.batch_size * p.train.grad_accum,
            data_cache=self.cache,
        )
