"""The task's loss and metrics: the one object the training loop asks for a loss, for the
per-step training-metric sums and for the validation metrics of an epoch.

What the loop sums itself on the device (the metrics of task_spec.TRAIN_METRICS: acc,
hamming, mae, mse, rmse) comes from a few tensor ops per batch, for the training data and
for validation alike: val_acc is today's correct / N exactly. The metrics that need every
prediction of the epoch (top5, f1, precision, recall, auroc, r2) come from torchmetrics,
accumulated on the device and computed once per epoch; torchmetrics (~3-4 s to import:
it imports torchvision) is imported only when a profile asks for one of them.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from engine.data import DataBundle
from engine.errors import DataError, ModelError
from engine.memory import is_out_of_memory
from engine.profile import TaskSection
from engine.task_spec import (
    LOSSES,
    STAT_METRICS,
    loss_name,
    metric_names,
    train_metric_names,
)
from engine.user_code import import_callable, where_raised

Loss = Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]


def build_task(
    cfg: TaskSection, data: DataBundle, device: torch.device, world_distributed: bool = False
) -> Task:
    """The loss and the metrics of `cfg` for `data`, their state on `device`. Under torchrun
    (`world_distributed`) the validation metrics are summed over every process at compute;
    the process group must exist by then (engine/distributed.py makes it)."""
    loss, name, weights = _build_loss(cfg, data, device)
    names = metric_names(cfg.kind, cfg.metrics)
    epoch = _epoch_metrics(names, data.num_classes, device, world_distributed)
    return Task(
        kind=cfg.kind,
        loss_name=name,
        names=names,
        outputs=data.num_classes,
        device=device,
        loss=loss,
        weights=weights,
        epoch=epoch,
        distributed=world_distributed,
    )


class Task:
    """One task's loss and metrics. It holds no state a checkpoint needs: the training
    sums live in the loop's state (zero_sums/train_sums), the validation metrics start
    afresh every epoch, and balanced class weights are recomputed from the same labels."""

    def __init__(
        self,
        *,
        kind: str,
        loss_name: str,
        names: list[str],
        outputs: int,
        device: torch.device,
        loss: Loss,
        weights: torch.Tensor | None,
        epoch: dict[str, tuple[Any, str]],
        distributed: bool,
    ):
        self.kind = kind
        self.loss_name = loss_name
        self.metric_names = names
        self.train_names = train_metric_names(kind, names)
        self.headline = names[0]
        self.class_weights = weights  # float32 (classes,) on the device, or None
        self.outputs = outputs  # classes, labels or targets: the model's outputs per sample
        self.device = device
        self.distributed = distributed
        # The sums meet as float64 (exact counts); MPS has no float64.
        self._exact = torch.float32 if device.type == "mps" else torch.float64
        self._loss = loss
        self._epoch = epoch  # "val_<name>": (torchmetrics metric, the input it takes)
        self._val_names = [f"val_{n}" for n in names]
        if kind == "classification" and "val_acc" not in self._val_names:
            self._val_names.append("val_acc")  # epoch_end has always had it
        self._val_sums = self.zero_sums()
        self._val_samples = 0
        # Counts summed on the device like acc's (and, under torchrun, over the processes
        # with it): top5's hits, and per class (label) the true positives, the predictions
        # and the targets that f1, precision and recall are made of.
        self._top_k = min(5, outputs) if kind == "classification" and "top5" in names else 0
        self._stat_names = [n for n in STAT_METRICS if n in names and kind != "regression"]
        counts = (1 if self._top_k else 0) + (3 * outputs if self._stat_names else 0)
        self._val_counts = torch.zeros(counts, device=device, dtype=torch.int64)

    def record(self, data: DataBundle) -> dict[str, Any]:
        """What the model is for, for whoever deploys it: checkpoints carry it as "task",
        and `mpt export` writes it into the model card."""
        return {
            "kind": self.kind,
            "loss": self.loss_name,
            "metrics": list(self.metric_names),
            "outputs": data.num_classes,
            "input_shape": list(data.in_shape),
            "classes": list(data.classes) if data.classes else None,
        }

    # ---- the loss ----
    def loss(self, out: torch.Tensor, y: torch.Tensor, reduction: str) -> torch.Tensor:
        """The batch's loss: "mean" over its samples of the per-sample losses, or their
        "sum". A sample's loss: cross_entropy's (times w[y] with class weights), or the mean
        over its labels (bce) or targets (mse, l1, huber), or what task.loss returns. With
        class weights too, "mean" divides by the samples, not by the sum of their weights
        (torch's weighted mean): so micro-batch sums over the step's samples, and processes
        under DDP, make exactly the loss of the one big batch."""
        return self._loss(out, y, reduction)

    # ---- training metrics: sums on the device, no host sync ----
    def zero_sums(self) -> torch.Tensor:
        """The training-metric sums at zero, on the device (train_sums' shape and dtype)."""
        if self.kind == "classification":
            return torch.zeros((), device=self.device, dtype=torch.int64)
        shape = (2,) if self.kind == "regression" else ()
        return torch.zeros(shape, device=self.device, dtype=torch.float32)

    def train_sums(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A batch's detached metric sums: classification the correct count (int64);
        multilabel the sum over samples of the fraction of labels right (logit > 0);
        regression [sum of per-sample mean |err|, sum of per-sample mean err^2]."""
        if self.kind == "classification":
            return (out.argmax(1) == y).sum()  # as the loop always had it: checkpoints keep it
        if self.kind == "multilabel":
            return ((out > 0) == y).sum() / self.outputs  # (y holds 0/1: 1.0 == True)
        err = out.detach() - y  # float32: y is, and bf16/fp16 outputs promote to it
        sums = torch.stack((err.abs().sum(), err.square().sum()))
        return sums / self.outputs if self.outputs != 1 else sums  # (a step's op saved)

    def train_metrics(
        self, sums: torch.Tensor | float | list, samples: int
    ) -> dict[str, float | None]:
        """The train_<name> values of train_names from summed `sums` over `samples`
        (None when there were no samples)."""
        values = _from_sums(self.kind, _host_values(sums), samples)
        return {f"train_{n}": values[n] for n in self.train_names}

    # ---- validation metrics: accumulated on the device, computed once per epoch ----
    def val_update(self, out: torch.Tensor, y: torch.Tensor) -> None:
        """Add a validation batch (`out` in any float dtype: bf16/fp16 are cast)."""
        out = out.detach()  # (the loop validates under no_grad; the states must hold no graph)
        self._val_sums = self._val_sums + self.train_sums(out, y)
        self._val_samples += y.shape[0]
        if self._val_counts.numel():
            self._val_counts = self._val_counts + self._batch_counts(out, y)
        inputs: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for metric, source in self._epoch.values():
            if source not in inputs:
                inputs[source] = _INPUTS[self.kind, source](out, y)
            metric.update(*inputs[source])

    def val_compute(self) -> dict[str, float | None]:
        """{"val_<name>": value} for metric_names (classification: val_acc too), over every
        process under torchrun; None where undefined (no samples, or NaN). Resets."""
        sums = self._val_sums.reshape(-1).to(self._exact)
        counts = self._val_counts.to(self._exact)
        samples = torch.tensor([self._val_samples], dtype=self._exact, device=self.device)
        packed = torch.cat((sums, counts, samples))
        if self.distributed:
            torch.distributed.all_reduce(packed)
        k, m = sums.numel(), counts.numel()
        stats = self._stat_scores(packed[k : k + m]) if self._stat_names else []
        computed = [*stats, *self._compute_epoch_metrics()]
        # the epoch's one host sync (some torchmetrics sync inside their compute too)
        values = torch.cat([packed, *(v.reshape(1).to(self._exact) for v in computed)]).tolist()
        n = int(values[k + m])
        found = {f"val_{name}": v for name, v in _from_sums(self.kind, values[:k], n).items()}
        found["val_top5"] = values[k] / n if self._top_k and n else None
        epoch_names = [f"val_{name}" for name in self._stat_names] + list(self._epoch)
        found |= dict(zip(epoch_names, values[k + m + 1 :], strict=True))
        self._val_sums, self._val_samples = self.zero_sums(), 0
        self._val_counts = torch.zeros_like(self._val_counts)
        for metric, _ in self._epoch.values():
            metric.reset()
        return {name: _finite(found[name]) if n else None for name in self._val_names}

    def _batch_counts(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """A batch's counts (int64, in _val_counts' layout), with no host sync."""
        parts = []
        if self._top_k:
            hits = out.topk(self._top_k, dim=1).indices == y.unsqueeze(1)
            parts.append(hits.any(dim=1).sum().reshape(1))
        if self._stat_names:
            parts.append(_stat_counts(self.kind, out, y, self.outputs).reshape(-1))
        return torch.cat(parts)

    def _stat_scores(self, counts: torch.Tensor) -> list[torch.Tensor]:
        """Macro f1, precision and recall (those asked for, in STAT_METRICS' order) from the
        epoch's counts, as scikit-learn's: a class's score is 0 where undefined (no
        predictions, or no targets), and a class absent from both the targets and the
        predictions is left out of a classification's average (a label never is)."""
        tp, predicted, actual = counts[1 if self._top_k else 0 :].view(3, self.outputs)
        scores = {
            "f1": _ratio(2 * tp, predicted + actual),
            "precision": _ratio(tp, predicted),
            "recall": _ratio(tp, actual),
        }
        seen = (predicted + actual > 0) if self.kind == "classification" else tp >= 0
        weight = seen.to(counts.dtype)
        return [(scores[n] * weight).sum() / weight.sum() for n in self._stat_names]

    def _compute_epoch_metrics(self) -> list[torch.Tensor]:
        if not self._epoch or (self._val_samples == 0 and not self.distributed):
            return [torch.full((), math.nan, device=self.device) for _ in self._epoch]
        with warnings.catch_warnings():
            if self._val_samples == 0:
                # This process's validation share is empty; its states still join the sync,
                # and they grow with the data (auroc's predictions, r2's per-target sums):
                # they get an empty update.
                warnings.filterwarnings("ignore", message=".*compute.*before.*update")
                empty = torch.zeros(0, self.outputs, device=self.device)
                for metric, source in self._epoch.values():
                    metric.update(*_INPUTS[self.kind, source](empty, _empty_target(self)))
            return [metric.compute() for metric, _ in self._epoch.values()]

    # ---- before training ----
    def check_batch(self, out: torch.Tensor, y: torch.Tensor) -> None:
        """Refuse, with one sentence, a model output that does not fit the targets, or a
        custom loss (task.loss) that fails or does not return per-sample losses."""
        _check_shapes(self.kind, out, y, self.outputs)
        if self.loss_name in LOSSES:
            return
        try:
            got = self._loss(out, y, "none")  # the user's own per-sample losses
        except Exception as e:  # noqa: BLE001 - user code
            if is_out_of_memory(e):
                raise
            raise ModelError(
                f"task.loss {self.loss_name!r} raised {type(e).__name__}: {e} ({where_raised(e)})"
            ) from None
        _check_custom_loss(self.loss_name, got, out)


# ---- losses ----
def _build_loss(cfg: TaskSection, data: DataBundle, device: torch.device):
    """(the loss, its name, the class weights or None)."""
    name = loss_name(cfg.kind, cfg.loss)
    if name not in LOSSES:
        for key, value in (
            ("label_smoothing", cfg.label_smoothing),
            ("class_weights", cfg.class_weights),
        ):
            if value:
                raise ModelError(
                    f"task.{key} applies to the built-in cross_entropy, not to task.loss "
                    f"{name!r}; unset it and do it inside your loss"
                )
        return _custom_loss(import_callable(name, "task.loss", ModelError)), name, None
    per_sample = data.num_classes  # labels or targets: a sample's loss is their mean
    if name == "cross_entropy":
        weights = _class_weights(cfg.class_weights, data, device)
        return _cross_entropy(cfg.label_smoothing, weights), name, weights
    fn = {
        "bce": F.binary_cross_entropy_with_logits,
        "mse": F.mse_loss,
        "l1": F.l1_loss,
        "huber": F.huber_loss,
    }[name]

    def mean_over_outputs(out, y, reduction):
        # "mean" over every element is the mean over samples of their means; the sum of
        # those means is the elements' sum / outputs per sample.
        loss = fn(out.float(), y, reduction=reduction)
        return loss if reduction == "mean" else loss / per_sample

    return mean_over_outputs, name, None


def _cross_entropy(smoothing: float, weights: torch.Tensor | None) -> Loss:
    if weights is None and not smoothing:

        def plain(out, y, reduction):  # the loop's benchmarked path: exactly as it was
            return F.cross_entropy(out, y, reduction=reduction)

        return plain
    if weights is None:

        def smoothed(out, y, reduction):
            return F.cross_entropy(out, y, reduction=reduction, label_smoothing=smoothing)

        return smoothed

    def weighted(out, y, reduction):
        # Per sample w[y] * ce (with smoothing, torch's: each class's smoothing term weighed
        # by that class's weight); "mean" divides by the samples (see Task.loss).
        total = F.cross_entropy(
            out.float(), y, weight=weights, reduction="sum", label_smoothing=smoothing
        )
        return total / y.shape[0] if reduction == "mean" else total

    return weighted


def _class_weights(value, data: DataBundle, device: torch.device) -> torch.Tensor | None:
    """task.class_weights as a float32 (classes,) tensor; "balanced" as sklearn has it:
    n_samples / (n_classes * count_c) over the training labels."""
    classes = data.num_classes
    if not value:
        return None
    if value == "balanced":
        y = data.train.y
        counts = torch.bincount(y.cpu(), minlength=classes)[:classes].double()
        if (counts == 0).any():
            missing = int((counts == 0).nonzero()[0])
            name = f" ({data.classes[missing]!r})" if data.classes else ""
            raise DataError(
                f'task.class_weights "balanced": class {missing}{name} has no training '
                f"samples, so its weight would be infinite; give a list of {classes} weights"
            )
        weights = len(y) / (classes * counts)
    elif len(value) != classes:
        raise DataError(
            f"task.class_weights has {len(value)} weights but the data has {classes} "
            "classes; give one weight per class"
        )
    else:
        weights = torch.tensor(value, dtype=torch.float64)
    return weights.to(device=device, dtype=torch.float32)


def _custom_loss(fn: Callable) -> Loss:
    """The user's fn(output, target) -> per-sample losses [batch], reduced here (in
    float32, whatever autocast made of them)."""

    def custom(out, y, reduction):
        losses = fn(out, y)
        if reduction == "none":  # (check_batch looks at them)
            return losses
        if losses.ndim > 1:  # elementwise, e.g. F.mse_loss(..., reduction="none"): a
            losses = losses.flatten(1).mean(1)  # sample's loss is the mean of its elements
        if reduction == "mean":
            return losses.mean(dtype=torch.float32)
        return losses.sum(dtype=torch.float32)

    return custom


# ---- checks ----
def _check_shapes(kind: str, out, y, outputs: int) -> None:
    """The model's output must fit the targets: (batch, classes) for class indices
    (batch,); the targets' own shape for multilabel and regression."""
    if not isinstance(out, torch.Tensor) or not out.is_floating_point():
        got = f"a tensor of {out.dtype}" if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"the model must return one floating-point tensor; got {got}")
    shape, target = tuple(out.shape), tuple(y.shape)
    if kind == "classification":
        if y.ndim != 1 or y.is_floating_point():
            raise DataError(
                f"task.kind 'classification' needs integer class indices of shape (batch,), "
                f"got {y.dtype} targets {target}; for 0/1 labels use task.kind 'multilabel', "
                "for numbers 'regression'"
            )
        if shape != (target[0], outputs):
            raise ModelError(
                f"the model outputs {shape} for {target[0]} class indices of {outputs} "
                f"classes; it must output {(target[0], outputs)}, one score per class"
            )
        return
    if shape != target:
        what = "one logit per label" if kind == "multilabel" else "one value per target"
        hint = ", e.g. out.unsqueeze(1)" if out.ndim + 1 == y.ndim else ""
        raise ModelError(
            f"the model outputs {shape} for {kind} targets {target}; it must output "
            f"{target}, {what}{hint}"
        )


def _check_custom_loss(name: str, got, out: torch.Tensor) -> None:
    batch = out.shape[0]
    must = (
        "it must return per-sample losses, a float tensor of shape [batch] (or elementwise "
        f'losses [batch, ...], averaged per sample; e.g. reduction="none"); the check\'s '
        f"batch holds {batch} samples"
    )
    if not isinstance(got, torch.Tensor):
        raise ModelError(f"task.loss {name!r} returned {type(got).__name__}; {must}")
    if not got.is_floating_point() or got.ndim == 0 or got.shape[0] != batch:
        raise ModelError(
            f"task.loss {name!r} returned {got.dtype} of shape {list(got.shape)}; {must}"
        )
    if out.requires_grad and not got.requires_grad:
        raise ModelError(
            f"task.loss {name!r} returned losses detached from the output; leave .detach(), "
            ".item() and torch.no_grad() out of it"
        )


# ---- metrics ----
def _from_sums(kind: str, values: list[float], samples: int) -> dict[str, float | None]:
    """acc/hamming, or mae/mse/rmse, from the sums of train_sums over `samples`."""
    if kind == "regression":
        names = ("mae", "mse", "rmse")
        if not samples:
            return dict.fromkeys(names)
        mse = values[1] / samples
        return {"mae": values[0] / samples, "mse": mse, "rmse": math.sqrt(max(mse, 0.0))}
    if not samples:
        return dict.fromkeys(("acc", "hamming"))
    acc = values[0] / samples
    return {"acc": acc, "hamming": 1.0 - acc}


def _stat_counts(kind: str, out: torch.Tensor, y: torch.Tensor, outputs: int) -> torch.Tensor:
    """(3, outputs) int64: per class (label) the true positives, the predictions, the targets.
    Classes by index_add_ into fixed-size counts (bincount and one_hot sync with the host)."""
    if kind == "multilabel":
        predicted, actual = out > 0, y > 0.5
        return torch.stack(((predicted & actual).sum(0), predicted.sum(0), actual.sum(0)))
    predicted = out.argmax(1)
    counts = torch.zeros(3, outputs, dtype=torch.int64, device=out.device)
    counts[0].index_add_(0, y, (predicted == y).long())
    counts[1].index_add_(0, predicted, torch.ones_like(predicted))
    counts[2].index_add_(0, y, torch.ones_like(y))
    return counts


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, 0 where den is 0."""
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None


def _host_values(sums) -> list[float]:
    if isinstance(sums, torch.Tensor):
        return [float(v) for v in sums.reshape(-1).tolist()]
    if isinstance(sums, list | tuple):
        return [float(v) for v in sums]
    return [float(sums)]


def _empty_target(task: Task) -> torch.Tensor:
    if task.kind == "classification":
        return torch.zeros(0, dtype=torch.int64, device=task.device)
    return torch.zeros(0, task.outputs, device=task.device)


# What each epoch metric is given. auroc ranks probabilities (softmax over the classes,
# sigmoid per label), as scikit-learn's is given them, against 0/1 integer targets.
_INPUTS: dict[tuple[str, str], Callable] = {
    ("classification", "scores"): lambda out, y: (out.float().softmax(1), y),
    ("multilabel", "scores"): lambda out, y: (out.float().sigmoid(), (y > 0.5).long()),
    ("regression", "values"): lambda out, y: (out.float(), y.float()),
}


def _epoch_metrics(
    names: list[str], outputs: int, device: torch.device, distributed: bool
) -> dict[str, tuple[Any, str]]:
    """The metrics that need the epoch's predictions (auroc, r2), as {"val_<name>":
    (torchmetrics metric on the device, the input it takes)}; torchmetrics is imported only
    for them."""
    wanted = [n for n in names if n in ("auroc", "r2")]
    if not wanted:
        return {}
    from torchmetrics.regression import R2Score

    from engine.auroc import MacroAUROC

    # Under torchrun the processes' states meet once, at compute (not at every update).
    sync = {"sync_on_compute": distributed, "dist_sync_on_step": False}
    table = {
        "auroc": (MacroAUROC, {**sync, "num_classes": outputs}, "scores"),
        "r2": (R2Score, {**sync, "multioutput": "uniform_average"}, "values"),
    }
    metrics = {}
    for name in wanted:
        metric, kwargs, source = table[name]
        metrics[f"val_{name}"] = (metric(**kwargs).to(device), source)
    return metrics
