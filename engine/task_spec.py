"""What a task is, without torch: its kinds, losses and metrics, and which monitors a
profile offers. The profile's validator (engine/profile.py) and the loss/metric builder
(engine/task.py) read these tables, so `mpt validate` and a run agree on every name.
"""

from __future__ import annotations

KINDS = ("classification", "multilabel", "regression")

# A built-in loss and the kinds it fits; "auto" is the kind's own (DEFAULT_LOSS).
LOSSES = {
    "cross_entropy": ("classification",),
    "bce": ("multilabel",),
    "mse": ("regression",),
    "l1": ("regression",),
    "huber": ("regression",),
}
DEFAULT_LOSS = {"classification": "cross_entropy", "multilabel": "bce", "regression": "mse"}

# The metrics of each kind (engine/task.py makes them).
METRICS = {
    "classification": ("acc", "top5", "f1", "precision", "recall", "auroc"),
    "multilabel": ("acc", "f1", "precision", "recall", "auroc", "hamming"),
    "regression": ("mae", "mse", "rmse", "r2"),
}
DEFAULT_METRICS = {"classification": ("acc",), "multilabel": ("acc",), "regression": ("mae",)}
ALL_METRICS = tuple(dict.fromkeys(m for names in METRICS.values() for m in names))

# Metrics the loop also reports for the training data (train_<name>): those it can sum
# per step on the device at the cost of a few ops. The others are validation-only: auroc
# and r2 need the epoch's predictions, and top5 and the F1 family (counts, summed in
# validation like acc) would add a top-k or per-class counts to every training step.
TRAIN_METRICS = frozenset({"acc", "hamming", "mae", "mse", "rmse"})

# Made from per-class counts of true positives, predictions and targets (macro averages).
STAT_METRICS = ("f1", "precision", "recall")

# Lower is better for losses and these; higher for the rest.
LOWER_IS_BETTER = frozenset({"mae", "mse", "rmse", "hamming"})


def loss_name(kind: str, loss: str) -> str:
    """The loss a profile trains with ("auto": the kind's own)."""
    return DEFAULT_LOSS[kind] if loss == "auto" else loss


def metric_names(kind: str, metrics: list[str]) -> list[str]:
    """The metrics a run computes, the headline first (empty: the kind's default)."""
    return list(metrics) if metrics else list(DEFAULT_METRICS[kind])


def train_metric_names(kind: str, metrics: list[str]) -> list[str]:
    """Of `metric_names`, those reported for the training data too. Classification
    always reports train_acc (epoch_end has had it from the start)."""
    names = [m for m in metric_names(kind, metrics) if m in TRAIN_METRICS]
    if kind == "classification" and "acc" not in names:
        names.insert(0, "acc")
    return names


def monitors(kind: str, metrics: list[str]) -> list[str]:
    """What early_stop.monitor and checkpoint.monitor may watch for this task."""
    names = ["val_loss", "train_loss"]
    names += [f"val_{m}" for m in metric_names(kind, metrics)]
    names += [f"train_{m}" for m in train_metric_names(kind, metrics)]
    if kind == "classification" and "val_acc" not in names:
        names.append("val_acc")  # epoch_end's val_acc: always there for classification
    return list(dict.fromkeys(names))


def lower_is_better(monitor: str) -> bool:
    """Whether a smaller value of `monitor` (e.g. "val_mae") is the better one."""
    name = monitor.partition("_")[2] if monitor.startswith(("val_", "train_")) else monitor
    name = name.removeprefix("raw_")  # val_raw_mae: the raw weights' (train.ema_decay)
    return name == "loss" or name.endswith("loss") or name in LOWER_IS_BETTER


def metric_keys(kind: str, metrics: list[str]) -> list[str]:
    """The epoch's metric keys in the order they are shown: train_<m>..., val_<m>...
    (classification always has train_acc and val_acc)."""
    names = metric_names(kind, metrics)
    val = names + (["acc"] if kind == "classification" and "acc" not in names else [])
    train = [f"train_{m}" for m in train_metric_names(kind, metrics)]
    return train + [f"val_{m}" for m in val]
