"""The training loop. Read this file first: the constructor builds the run, `fit` trains it.

A step is `grad_accum` micro-batches of `data.batch_size`; the loss is summed per sample
and divided by the samples in the whole step, so accumulation equals one big batch.
Metrics stay on the device; the host syncs only every `log_every` steps and per epoch.
Everything that must survive a restart is in `self.state` (engine/state.py) and the
model, optimizer, schedule and GradScaler, gathered by `state_dict()`: a checkpoint
taken at any step boundary continues as if the run had never stopped. Beside the loop:
where the data lives (engine/placement.py), how checkpoints are written
(engine/checkpoint_writer.py), the profiler (engine/profiler.py).
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from pathlib import Path
from typing import Any

import torch

from engine import checkpoint as ckpt
from engine import events as ev
from engine.checkpoint_writer import CheckpointWriter
from engine.control import Control, StepBoundary
from engine.data import BatchTransform, epoch_generator, load_data, require_validation
from engine.device import require_precision, resolve_device, set_process_switches, wrap_model
from engine.distributed import Collectives, world_from_env
from engine.ema import Validation, WeightAverage
from engine.errors import MptError
from engine.finetune import freeze, load_pretrained
from engine.gpu import GpuStats
from engine.memory import is_out_of_memory, out_of_memory_advice
from engine.models import build_model, check_first_batch, check_precision
from engine.monitor import BestTracker
from engine.optim import Schedule, build_optimizer
from engine.placement import DataPlacement
from engine.precision import autocast, grad_scaler, optimizer_step
from engine.profile import Profile
from engine.profiler import StepProfiler
from engine.progress import Progress, run_started
from engine.state import TrainState
from engine.stop import ENDINGS, StopReason
from engine.task import build_task


class Trainer:
    """One run, built whole by the constructor: everything that can fail on the user's
    input (profile, data, model, checkpoint) fails there, before the first step."""

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
        p = self.p = profile
        self.log, self.control, self.run_dir = log, control, run_dir
        self.resume = resume  # (checkpoint path, its state), or None
        self.warnings = list(warnings or [])
        self.profile_steps = profile_steps  # torch.profiler over this many steps (0: off)
        self.world = world_from_env()
        self.device = resolve_device(p.run.device, self.world)
        require_precision(self.device, p.precision.mode)
        set_process_switches(self.device, p.run.deterministic, p.run.seed)
        self.dist = Collectives(self.world, self.device)  # joins torchrun's group, if any
        try:
            self._setup_data()
            self._setup_model()
            self._setup_optimizer()
            self._setup_state()
        except BaseException:
            self.dist.close()
            raise

    def _setup_data(self) -> None:
        p = self.p
        data = load_data(p.data, p.run.seed, p.task.kind)
        require_validation(p, data)  # e.g. early stopping on val_loss, and no val split
        # The loss and the metrics (engine/task.py): what "how good" means for this data.
        self.task = build_task(p.task, data, self.device, self.world.distributed)
        self.transform = BatchTransform(
            data.mean, data.std, self.device, p.data.random_crop, p.data.hflip
        )
        self.placement = DataPlacement(
            data, p.data.cache, self.device, self.transform, p.data.num_workers
        )

    def _setup_model(self) -> None:
        p, dev, data = self.p, self.device, self.placement.data
        self.model = build_model(p.model, data.in_shape, data.num_classes, dev).to(dev)
        if p.model.pretrained and self.resume is None:  # a resume's checkpoint has the weights
            self.warnings += load_pretrained(self.model, p.model.pretrained, data.num_classes)
        freeze(self.model, p.model.freeze)
        first = data.train.x[:2]
        first = first.materialize() if hasattr(first, "materialize") else first  # streamed
        sample = self.transform(first.to(dev))
        fits = functools.partial(self.task.check_batch, y=data.train.y[:2].to(dev))
        check_first_batch(self.model, sample, data.num_classes, p.model.arch, fits)  # no trace
        check_precision(self.model, sample, p.precision.mode)  # fp16/bf16 on this device
        self.model, self.forward, self.ddp, self.channels_last = wrap_model(
            self.model, dev, self.world, p.train.compile, p.run.seed
        )

    def _setup_optimizer(self) -> None:
        p = self.p
        self.optimizer = build_optimizer(self.model, p.optim, self.device)
        # data.batch_size is per process: one micro-batch of the whole world takes
        # batch_size x world samples, split between the processes in rank order.
        self.global_batch = p.data.batch_size * self.world.size
        n_batches = math.ceil(len(self.placement.train) / self.global_batch)
        self.steps_per_epoch = math.ceil(n_batches / p.train.grad_accum)
        self.total_steps = self.steps_per_epoch * p.run.epochs
        if p.run.max_steps:
            self.total_steps = min(self.total_steps, p.run.max_steps)
        self.schedule = Schedule(
            self.optimizer, p.schedule, p.optim.lr, self.steps_per_epoch, self.total_steps
        )
        self.scaler = grad_scaler(self.device.type, p.precision.mode)

    def _setup_state(self) -> None:
        p, es = self.p, self.p.early_stop
        self.state = TrainState(
            self.device,
            self.world,
            self.task.zero_sums,
            early=BestTracker(es.monitor, es.mode, es.min_delta),
            best_ckpt=BestTracker(p.checkpoint.monitor),
        )
        path, saved = self.resume or (None, None)
        self.ema = WeightAverage(self.model, p.train.ema_decay, p.train.ema_every)
        if saved is not None:
            ckpt.restore_training(
                path, saved, p, self.model, self.optimizer, self.schedule, self.scaler
            )
            self.state.load_state_dict(saved, path)
            self.warnings += self.ema.load_state_dict(saved.get("ema"), path, self.state.step)
        folder, ck = self.run_dir / "checkpoints" if self.run_dir else None, p.checkpoint
        at = (self.state.step, self.state.epochs_done) if path else None  # the resumed file
        self.checkpoints = CheckpointWriter(folder, ck.keep_last, ck.on_error, self.log, path, at)
        scaled, gpu = self.scaler is not None, GpuStats(self.device)
        args = (self.log, self.state, self.dist, self.optimizer, self.schedule, scaled, gpu)
        self.boundary = StepBoundary(self.control, self.dist, self.log, self.state, p.run.max_time)
        self.progress = Progress(p, *args, self.task, self.boundary.clock)

    # ---- the loop ----
    def fit(self) -> StopReason:
        """Train to the last epoch or step, or until a stop; ends with run_finished."""
        p, s, world = self.p, self.state, self.world
        self._announce()
        accum, log_every, clip = p.train.grad_accum, p.train.log_every, p.train.clip_norm
        every = p.checkpoint.every_steps
        augments = bool(p.data.random_crop or p.data.hflip)
        # DDP averages gradients over the processes: dividing each one's loss sum by the
        # step's samples / world makes that average the single-process gradient.
        per_process = world.size if world.distributed else 1
        profiler = StepProfiler(
            self.profile_steps, self.run_dir, world.main, self.device, self.log, s
        )
        self.boundary.start()
        stop: StopReason | None = None
        with profiler:
            while stop is None and s.epochs_done < p.run.epochs and s.step < self.total_steps:
                s.epoch = s.epochs_done + 1
                epoch_start = self.boundary.clock()  # (pauses not counted)
                self.model.train()
                steps, fetch = self.placement.train_epoch(
                    p.run.seed, s.epoch, self.global_batch, accum, world, start=s.group
                )
                if self.placement.mode == "stream":  # step events say how long it waited
                    fetch = self.progress.host.data_wait.timed(fetch)
                if not augments:
                    s.augment = None
                elif s.augment is None:  # (else: resuming inside this epoch, its stream as saved)
                    s.augment = epoch_generator(p.run.seed, s.epoch, self.device)
                self.progress.window_start = self.boundary.clock()
                while stop is None and s.group < len(steps) and s.step < self.total_steps:
                    group = steps[s.group]
                    step_samples = sum(len(b) for b in group)  # of the whole world
                    denominator = step_samples / per_process if world.distributed else step_samples
                    # One micro-batch in one process (the usual case): the mean loss is the
                    # step's loss as it is, one op fewer than sum / samples; the metric sums
                    # weigh it back.
                    mean = len(group) == 1 and not world.distributed
                    divide_by = None if mean else denominator
                    weight = step_samples if mean else 1
                    step_loss = step_sums = None  # over the step's micro-batches
                    local_samples = 0
                    for i in range(len(group)):
                        xb, yb = next(fetch)
                        local_samples += len(yb)
                        # Under DDP, gradients are averaged once per step, after the last one.
                        with self._no_sync(i < len(group) - 1):
                            loss, out = backward(self, xb, yb, s.augment, divide_by)
                        # Each torch call costs microseconds of dispatch on a small model: no
                        # zero tensors to add into, one add per extra micro-batch.
                        loss, sums = loss.detach().float(), self.task.train_sums(out, yb)
                        step_loss = loss if step_loss is None else step_loss + loss
                        step_sums = sums if step_sums is None else step_sums + sums
                    if (
                        p.train.nonfinite == "skip"
                        and self.scaler is None
                        # the one per-step sync, only when asked for; every process skips together
                        and self.dist.any([not bool(torch.isfinite(step_loss))])[0]
                    ):
                        self.optimizer.zero_grad(set_to_none=True)
                        s.skipped += 1
                    else:
                        optimizer_step(self.optimizer, self.scaler, self.model, clip, s)
                        s.add_step(step_loss, step_sums, weight, local_samples)
                    s.step += 1
                    s.group += 1
                    self.schedule.after_step(s.step)
                    self.ema.after_step(s.step)  # the weights' moving average (engine/ema.py)
                    profiler.step()
                    if s.step % log_every == 0:
                        self.progress.log_step(s.group / len(steps))  # the host syncs here
                    if every and s.step % every == 0:
                        self.save("steps")
                    # Several processes agree on controls where they sync anyway: per log_every.
                    if not world.distributed or s.step % log_every == 0:
                        stop = self._between_steps()
                if stop is not None:
                    break  # stopped inside the epoch: the checkpoint continues it on resume
                s.augment = None  # the epoch's stream ends with it (not in later checkpoints)
                val_loss, val_metrics = self.ema.validate(self.evaluate, self.task.headline)
                self.progress.end_epoch(self.boundary.clock() - epoch_start, val_loss, val_metrics)
                stopping = self.progress.watch_early_stop(self.ema.module)
                self._checkpoints_at_epoch_end()
                stop = StopReason.EARLY_STOPPED if stopping else self._between_steps()
        stop = stop or StopReason.COMPLETED
        if ENDINGS[stop].saves == "final":  # (a stop or an interrupt saved as it stopped)
            self.progress.check_finite()
            self.save("final")
        if p.early_stop.restore_best and s.best_weights is not None:
            self.model.load_state_dict(s.best_weights)
            val_loss, val_metrics = self.evaluate()
            s.metrics.update(val_loss=val_loss, **val_metrics)
        self.progress.finished(stop, self.boundary.seconds())  # run_finished
        return stop

    def _between_steps(self) -> StopReason | None:
        """Requests and the time limit (engine/control.py); a stop saves as it stops."""
        stop = self.boundary.check(self.save)
        if stop is not None and ENDINGS[stop].saves != "final":
            self.progress.check_finite()
            self.save(ENDINGS[stop].saves)
        return stop

    def _checkpoints_at_epoch_end(self) -> None:
        ck, s = self.p.checkpoint, self.state
        value = s.metrics.get(ck.monitor)
        # Update the tracker first, so the checkpoint written now records its own validation.
        is_best = ck.save_best and value is not None and s.best_ckpt.update(value, s.step)
        if ck.every_epochs and s.epoch % ck.every_epochs == 0:
            self.save("epoch")
        elif is_best:
            self.save("best")
        if is_best:
            self.checkpoints.link_best(s)

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module | None = None) -> Validation:
        """Validation loss and the task's val_<metric>s of the model as it is, or of
        `model` (the EMA weights) (None and no metrics: no val split)."""
        val = self.placement.val
        if val is None:
            return None, {}
        model = self.model if model is None else model
        model.eval()
        loss_sum = torch.zeros((), device=self.device)
        # Several processes: each validates its share with the plain module (DDP's forward
        # would sync buffers, a collective the others might not be in), then the sums meet.
        forward = model if self.world.distributed or model is not self.model else self.forward
        for xb, yb in self.placement.val_batches(self.p.data.eval_batch_size, self.world):
            xb = self._to_input(self.transform(xb))
            with autocast(self.device.type, self.p.precision.mode):
                out = forward(xb)
            loss_sum += self.task.loss(out.float(), yb, "sum")
            self.task.val_update(out, yb)  # on the device
        self.model.train()
        loss, _, _ = self.progress.sums(loss_sum, 0, 0)
        return loss / len(val), self.task.val_compute()  # (the processes meet here)

    # ---- checkpoints ----
    def state_dict(self, ranks: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        """Everything needed to continue exactly from this step boundary."""
        return {
            "format": ckpt.FORMAT,
            "version": ckpt.VERSION,
            "time": time.time(),
            "profile": self.p.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler else None,
            "ema": self.ema.state_dict(),
            "task": self.task.record(self.placement.data),
            **self.state.state_dict(self.log.lines, ranks),
        }

    def save(self, reason: str) -> Path | None:
        """Save a checkpoint at this step. Under torchrun every process calls this at the
        same step (it gathers each one's sums and random streams); rank 0 alone writes."""
        s = self.state
        ranks = self.dist.gather(s.rank_state()) if self.world.distributed else None

        def make_state() -> dict[str, Any]:
            self.progress.check_finite()  # never save weights a non-finite loss has spoiled
            return self.state_dict(ranks)

        return self.checkpoints.save(reason, s, make_state)

    # ---- helpers ----
    def _announce(self) -> None:
        """run_started, the resume's warnings, and the best.pt a resumed run carries over."""
        s = self.state
        self.log.emit(run_started(self))
        for message in self.warnings:
            self.log.emit(ev.Warning(step=s.step, epoch=s.epochs_done + 1, message=message))
        self.checkpoints.carry_best_over(s)

    def _no_sync(self, skip: bool):
        """DDP's no_sync for the micro-batches before a step's last one; else nothing."""
        return self.ddp.no_sync() if skip and self.ddp is not None else contextlib.nullcontext()

    def _to_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    # ---- for the Run handle ----
    def release(self) -> None:
        """After a failure: let go of the DataLoader workers, the unfinished step's
        gradients and cached GPU memory, so that a console that stays open (mpt-tui) can
        start the next run."""
        self.placement.close()
        self.optimizer.zero_grad(set_to_none=True)
        release_memory()

    def close(self) -> None:
        """Leave torchrun's process group, if the run joined one."""
        self.dist.close()


def release_memory() -> None:
    """Give the GPU memory torch caches back (e.g. after a failure)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def describe_failure(error: Exception, profile: Profile, trainer: Trainer | None) -> str:
    """run_failed's text for an exception that is not the project's own: out of memory gets
    advice (the usual fixes, "at step N" or "while setting up"), anything else its type
    and message. `trainer` None: the constructor failed."""
    if not is_out_of_memory(error):
        return f"{type(error).__name__}: {error}"
    if trainer is not None:
        return out_of_memory_advice(str(trainer.device), profile, trainer.state.step)
    try:
        device = str(resolve_device(profile.run.device, world_from_env()))
    except MptError:
        device = profile.run.device
    return out_of_memory_advice(device, profile, None)


def backward(
    trainer: Trainer, xb: torch.Tensor, yb: torch.Tensor, augment: Any, denominator: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One micro-batch's forward and backward (the training loop's, mpt lr-find's): the
    loss (the mean with no `denominator`, else the sum, whose gradient is divided by it)
    and the model's output."""
    xb = trainer._to_input(trainer.transform(xb, augment))
    with autocast(trainer.device.type, trainer.p.precision.mode):
        out = trainer.forward(xb)
        loss = trainer.task.loss(out, yb, "mean" if denominator is None else "sum")
    scaled = loss if denominator is None else loss / denominator
    (trainer.scaler.scale(scaled) if trainer.scaler else scaled).backward()
    return loss, out
