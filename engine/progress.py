"""What the loop reports, where the host syncs: run_started, the step event of each log
window, epoch_end with the epoch's metrics, early_stop, run_finished; under torchrun the
sums of every process meet here.

The non-finite checks ride on these syncs (train.nonfinite = "fail", the fp16
GradScaler's skip streak), so that watching for them costs the loop nothing extra.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable

import torch

from engine import events as ev
from engine.distributed import Collectives
from engine.gpu import GpuStats
from engine.host import HostSampler
from engine.monitor import watch_early_stop
from engine.optim import Schedule
from engine.precision import check_skip_streak, nonfinite_loss
from engine.profile import Profile
from engine.state import TrainState
from engine.stop import StopReason
from engine.task import Task


class Progress:
    """Reports the run at `state` into `log`; `scaled`: fp16's GradScaler is on."""

    def __init__(
        self,
        profile: Profile,
        log: ev.EventLog,
        state: TrainState,
        dist: Collectives,
        optimizer: torch.optim.Optimizer,
        schedule: Schedule,
        scaled: bool,
        gpu: GpuStats,
        task: Task,
        clock: Callable[[], float] = time.monotonic,
    ):
        """`clock`: what log windows are timed on (the loop's: time paused not counted)."""
        self.p, self.log, self.state, self.dist, self.task = profile, log, state, dist, task
        self.clock = clock
        self.optimizer, self.schedule, self.scaled, self.gpu = optimizer, schedule, scaled, gpu
        # the run directory (events.jsonl's folder): None when this process writes nothing
        self.host = HostSampler(log.path.parent if log.path else None)
        self.window_start = clock()

    @property
    def window_start(self) -> float:
        """When the log window began (on `clock`); setting it starts a new window."""
        return self._window_start

    @window_start.setter
    def window_start(self, at: float) -> None:
        self._window_start = at
        self.host.start_window()

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def sums(self, loss: torch.Tensor, metric_sums: torch.Tensor | int, samples: int):
        """(loss, metric sums, samples) summed over every process, on the host; the metric
        sums a number (a 0-d tensor's) or a list (a vector's), as the task made them."""
        if self.dist.world.distributed:
            shape = metric_sums.shape if torch.is_tensor(metric_sums) else ()
            parts = metric_sums.reshape(-1).unbind() if shape else (metric_sums,)
            loss, samples, *parts = self.dist.sum(loss, samples, *parts)
            values = [float(v) for v in parts]
            return float(loss), values if shape else values[0], int(samples)
        if torch.is_tensor(metric_sums):
            metric_sums = metric_sums.tolist()  # one sync for the vector
        return loss.item(), metric_sums, samples

    def log_step(self, progress: float) -> None:
        """The step event of the log window that ends here; the next window starts."""
        s = self.state
        loss_sum, _, samples = self.sums(s.window_loss, 0, s.window_samples)
        if self.scaled:
            check_skip_streak(s.skip_streak, s.step)
        elif not math.isfinite(loss_sum) and self.p.train.nonfinite == "fail":
            raise nonfinite_loss(loss_sum, s.step)
        seconds = max(self.clock() - self.window_start, 1e-9)
        self.log.emit(
            ev.Step(
                step=s.step,
                epoch=s.epoch,
                # None: every step since the last report was skipped (no loss, not a zero).
                loss=loss_sum / samples if samples else None,
                lr=self.lr(),
                samples_per_s=samples / seconds,
                epoch_progress=progress,
                skipped_steps=int(s.skipped),
                **self.gpu.figures(),
                **self.host.sample(seconds),
            )
        )
        self.warn_low_disk(self.host.disk_warning())
        s.window_loss.zero_()
        s.window_samples = 0
        self.window_start = self.clock()

    def end_epoch(
        self, seconds: float, val_loss: float | None, val_metrics: dict[str, float | None]
    ) -> None:
        """The epoch's metrics and its epoch_end; the next epoch's sums start at zero."""
        p, s = self.p, self.state
        loss, sums, samples = self.sums(s.epoch_loss, s.epoch_sums, s.epoch_samples)
        train_loss = loss / max(samples, 1)
        metrics = {**self.task.train_metrics(sums, samples), **val_metrics}
        s.metrics = dict(train_loss=train_loss, val_loss=val_loss, **metrics)
        val_acc = metrics.get("val_acc")
        if val_acc is not None and (s.best_val_acc is None or val_acc > s.best_val_acc):
            s.best_val_acc = val_acc
        self.schedule.after_validation(val_loss if val_loss is not None else train_loss)
        self.log.emit(
            ev.EpochEnd(
                step=s.step,
                epoch=s.epoch,
                epochs=p.run.epochs,
                train_loss=train_loss,
                train_acc=metrics.get("train_acc"),
                val_loss=val_loss,
                val_acc=val_acc,
                lr=self.lr(),
                seconds=seconds,
                samples_per_s=samples / max(seconds, 1e-9),
                metrics=metrics,
            )
        )
        s.epochs_done, s.group = s.epoch, 0
        s.zero_epoch_sums()
        self.warn_low_disk(self.host.disk_warning(fresh=True))  # the epoch's checkpoint is next
        if not math.isfinite(train_loss) and p.train.nonfinite == "fail" and not self.scaled:
            raise nonfinite_loss(train_loss, s.step)

    def warn_low_disk(self, message: str | None) -> None:
        if message is not None:
            s = self.state
            self.log.emit(ev.Warning(step=s.step, epoch=s.epoch, message=message))

    def watch_early_stop(self, model: torch.nn.Module) -> bool:
        """Whether early stopping ends the run at this validation (early_stop event)."""
        es, s = self.p.early_stop, self.state
        value = s.metrics.get(es.monitor)
        if not es.enabled or value is None:
            return False
        improved, event = watch_early_stop(es, s.early, value, s.step, s.epoch)
        if improved and es.restore_best:
            s.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.log.emit(event)
        return event.stopping

    def finished(self, reason: StopReason, seconds: float) -> None:
        """run_finished: why the loop stopped, and the results to show."""
        s = self.state
        self.log.emit(
            ev.RunFinished(
                step=s.step,
                epoch=s.epoch,
                reason=reason.value,
                seconds=seconds,
                best_val_acc=s.best_val_acc,
                final_val_loss=s.metrics.get("val_loss"),
                final_val_acc=s.metrics.get("val_acc"),
                headline=f"val_{self.task.headline}",
                final_headline=s.metrics.get(f"val_{self.task.headline}"),
                best_monitor=s.best_ckpt.monitor,
                best_value=s.best_ckpt.best,
            )
        )

    def check_finite(self) -> None:
        """Never save or go on from weights a non-finite loss has already spoiled."""
        s = self.state
        if self.scaled:
            check_skip_streak(s.skip_streak, s.step)
        elif self.p.train.nonfinite == "fail":
            for value in (s.window_loss, s.epoch_loss):
                if not bool(torch.isfinite(value)):
                    raise nonfinite_loss(float(value), s.step)


def run_started(trainer) -> ev.RunStarted:
    """The run_started event of a built Trainer: what it trains, where, and how."""
    p, s, d, t = trainer.p, trainer.state, trainer.placement.data, trainer
    return ev.RunStarted(
        step=s.step,
        epoch=s.epochs_done + 1,
        run_dir=str(t.run_dir or ""),
        name=p.run.name,
        device=str(t.device),
        precision=p.precision.mode,
        dataset=p.data.dataset,
        train_samples=len(d.train),
        val_samples=len(d.val) if d.val else 0,
        num_classes=d.num_classes,
        input_shape=list(d.in_shape),
        arch=p.model.arch,
        parameters=sum(w.numel() for w in t.model.parameters()),
        trainable_parameters=sum(w.numel() for w in t.model.parameters() if w.requires_grad),
        task=t.task.kind,
        loss=t.task.loss_name,
        metrics=list(t.task.metric_names),
        classes=list(d.classes or []),
        epochs=p.run.epochs,
        steps_per_epoch=t.steps_per_epoch,
        total_steps=t.total_steps,
        batch_size=p.data.batch_size,
        grad_accum=p.train.grad_accum,
        global_batch=t.global_batch * p.train.grad_accum,
        world_size=t.world.size,
        data_cache=t.placement.mode,
        mean=list(d.mean or []),
        std=list(d.std or []),
        resumed_from=str(t.resume[0]) if t.resume else None,
        pid=os.getpid(),
        host=socket.gethostname(),
    )
