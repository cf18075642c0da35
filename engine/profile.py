"""The training profile: one schema for validation, TOML round-trip and the TUI's forms.

Each section is a dataclass; each key is declared once with `key(...)`, which records
its kind, default, choices, range and help text. `FIELDS` lists them for the TUI.
No torch import here: `mpt validate` must answer at once.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
import re
import stat
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from engine.errors import Problem, ProfileError
from engine.notify_spec import DEFAULT_ON, NOTIFY_EVENTS, webhook_problem
from engine.task_spec import ALL_METRICS, KINDS, LOSSES, METRICS, monitors

DATASETS = ("digits", "mnist", "fashion_mnist", "cifar10", "image_folder", "npz", "synthetic")
BUILTIN_ARCHS = ("mlp", "cnn", "resnet18")
OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop", "adagrad")
SCHEDULES = ("none", "step", "exponential", "cosine", "plateau", "onecycle")
PRECISIONS = ("fp32", "fp16", "bf16")
CACHE_MODES = ("auto", "device", "memory", "stream")
WANDB_MODES = ("offline", "online", "disabled")  # [log] wandb_mode
_DEVICE_RE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_IMPORT_PATH_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
_ZOO_RE = re.compile(r"^(torchvision|timm):[A-Za-z0-9_][\w.\-]*$")
BOM = "\ufeff"  # a UTF-8 byte order mark, as some Windows editors write at the start


@dataclass(frozen=True)
class FieldSpec:
    """What the validator and the TUI's form know about one key."""

    section: str
    name: str
    # int, float, bool, str, choice, int_list, float_list, str_list; table (an inline
    # table of keyword arguments), float_table (names to numbers); name (one of `choices`
    # or a "package.module:function"); weights (a list of numbers, or "balanced")
    kind: str
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    optional: bool = False  # may be absent (no TOML null); None in Python

    @property
    def path(self) -> str:
        return f"{self.section}.{self.name}"


def key(default, help, kind, *, choices=(), ge=None, gt=None, le=None, lt=None, optional=False):
    meta = dict(
        kind=kind, help=help, choices=tuple(choices), ge=ge, gt=gt, le=le, lt=lt, optional=optional
    )
    if isinstance(default, list | dict):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class RunSection:
    name: str = key("run", "Name of the run; runs go to <out_dir>/<name>/<timestamp>/.", "str")
    seed: int = key(
        0,
        "Seed for every random stream (init, shuffling, dropout).",
        "int",
        ge=0,
        le=2**32 - 1,  # numpy's np.random.seed takes no more
    )
    epochs: int = key(10, "Number of passes over the training data.", "int", ge=1)
    max_steps: int | None = key(
        None, "Stop after this many optimizer steps (absent: no limit).", "int", ge=1, optional=True
    )
    max_time: float | None = key(
        None,
        "Stop after this many seconds of training (absent: no limit).",
        "float",
        gt=0,
        optional=True,
    )
    device: str = key("auto", "auto (CUDA if present, else CPU), cpu, cuda, cuda:N or mps.", "str")
    out_dir: str = key("runs", "Folder that holds the run directories.", "str")
    deterministic: bool = key(False, "Use deterministic algorithms only (slower on CUDA).", "bool")


@dataclass
class DataSection:
    dataset: str = key(
        "digits",
        'Which dataset to train on: a built-in one, or your own "package.module:function" '
        "returning (train, val) datasets, called with data.options as keyword arguments.",
        "name",
        choices=DATASETS,
    )
    options: dict[str, Any] = key(
        {},
        'Keyword arguments for a "package.module:function" dataset, e.g. { size = 64 }.',
        "table",
    )
    root: str = key(
        "data", "Folder where torchvision datasets (mnist, fashion_mnist, cifar10) live.", "str"
    )
    path: str = key("", "The .npz file (npz) or the image folder (image_folder).", "str")
    download: bool = key(
        False, "Download the torchvision dataset into root when it is missing.", "bool"
    )
    batch_size: int = key(
        64,
        "Samples per micro-batch, per process under torchrun (a step: x grad_accum).",
        "int",
        ge=1,
    )
    eval_batch_size: int = key(512, "Samples per batch when validating.", "int", ge=1)
    use_test_split: bool = key(
        True, "Validate on the dataset's own test split where it has one.", "bool"
    )
    val_fraction: float = key(
        0.1,
        "Fraction of the training data held out for validation when there is no test "
        "split (or use_test_split is false).",
        "float",
        ge=0.0,
        lt=1.0,
    )
    cache: str = key(
        "auto",
        "Where the decoded dataset lives: device (on the training device), memory (host "
        "memory, pinned on CUDA), stream (read per batch by DataLoader workers), or auto "
        "(device when it fits, else memory; image folders too big to decode up front stream).",
        "choice",
        choices=CACHE_MODES,
    )
    num_workers: int = key(
        2, "stream: DataLoader worker processes that decode batches.", "int", ge=0
    )
    mean: list[float] = key(
        [],
        "Per-channel mean for normalisation (empty: the dataset's own or computed).",
        "float_list",
    )
    std: list[float] = key(
        [], "Per-channel standard deviation for normalisation (empty: as mean).", "float_list"
    )
    random_crop: int = key(
        0, "Augment: random crop after padding by this many pixels (0: off).", "int", ge=0
    )
    hflip: bool = key(False, "Augment: random horizontal flip.", "bool")
    image_size: int = key(32, "image_folder: images are resized to this square size.", "int", ge=4)
    synthetic_samples: int = key(2048, "synthetic: number of samples.", "int", ge=2)
    synthetic_classes: int = key(10, "synthetic: number of classes.", "int", ge=2)
    synthetic_shape: list[int] = key(
        [1, 16, 16], "synthetic: image shape [channels, height, width].", "int_list"
    )


@dataclass
class ModelSection:
    arch: str = key(
        "mlp",
        'mlp, cnn, resnet18, "torchvision:NAME" (any torchvision.models builder), '
        '"timm:NAME" (any timm model), or your own "package.module:factory" called as '
        "factory(in_shape=(C, H, W), num_classes=N, **model.options).",
        "str",
    )
    hidden: list[int] = key([128], "mlp: sizes of the hidden layers.", "int_list")
    channels: list[int] = key([32, 64], "cnn: channels of the convolution layers.", "int_list")
    dropout: float = key(0.0, "Dropout probability before the classifier.", "float", ge=0.0, lt=1.0)
    small_input: bool = key(
        True, "resnet18: 3x3 stem without max-pool, for 32x32 images such as CIFAR-10.", "bool"
    )
    options: dict[str, Any] = key(
        {},
        'Keyword arguments for a "torchvision:NAME", "timm:NAME" or your own factory.',
        "table",
    )
    pretrained: str = key(
        "",
        "A local file with a state_dict or an mpt checkpoint to start from (empty: none).",
        "str",
    )
    freeze: list[str] = key(
        [], 'Parameter-name prefixes not trained, e.g. ["backbone."].', "str_list"
    )


@dataclass
class OptimSection:
    name: str = key("sgd", "The optimizer.", "choice", choices=OPTIMIZERS)
    lr: float = key(
        0.01, "Learning rate (peak rate when a schedule warms up).", "float", gt=0.0, le=1e30
    )
    momentum: float = key(0.0, "sgd, rmsprop: momentum.", "float", ge=0.0, lt=1.0)
    nesterov: bool = key(False, "sgd: Nesterov momentum (needs momentum > 0).", "bool")
    weight_decay: float = key(0.0, "L2 penalty (decoupled for adamw).", "float", ge=0.0)
    betas: list[float] = key([0.9, 0.999], "adam, adamw: the two beta coefficients.", "float_list")
    eps: float = key(
        1e-8, "adam, adamw, rmsprop, adagrad: term added for stability.", "float", gt=0.0
    )
    alpha: float = key(0.99, "rmsprop: smoothing constant.", "float", gt=0.0, lt=1.0)
    lr_mult: dict[str, float] = key(
        {},
        'Learning-rate multipliers by parameter-name prefix, e.g. { "fc." = 10.0 }.',
        "float_table",
    )


@dataclass
class ScheduleSection:
    name: str = key(
        "none", "How the learning rate changes during the run.", "choice", choices=SCHEDULES
    )
    warmup_steps: int = key(0, "Linear warmup over this many optimizer steps.", "int", ge=0)
    warmup_epochs: int = key(
        0, "Linear warmup over this many epochs (adds to warmup_steps).", "int", ge=0
    )
    warmup_start_factor: float = key(
        0.1, "Warmup starts at lr x this factor.", "float", gt=0.0, le=1.0
    )
    step_size: int = key(10, "step: epochs between decays.", "int", ge=1)
    gamma: float = key(
        0.1,
        "step: decay factor every step_size epochs; exponential: per epoch.",
        "float",
        gt=0.0,
        le=1.0,
    )
    min_lr: float = key(0.0, "cosine: the rate at the end of the run.", "float", ge=0.0)
    factor: float = key(
        0.1, "plateau: decay factor when val_loss stops improving.", "float", gt=0.0, lt=1.0
    )
    patience: int = key(2, "plateau: epochs without improvement before decaying.", "int", ge=0)
    max_lr: float | None = key(
        None, "onecycle: the peak rate (absent: optim.lr).", "float", gt=0.0, optional=True
    )
    pct_start: float = key(
        0.3, "onecycle: fraction of the run spent rising.", "float", gt=0.0, lt=1.0
    )


@dataclass
class TaskSection:
    kind: str = key(
        "classification",
        "classification (one class per sample), multilabel (any of several labels, 0/1 "
        "targets) or regression (numeric targets).",
        "choice",
        choices=KINDS,
    )
    loss: str = key(
        "auto",
        "auto (cross_entropy, bce or mse by kind), cross_entropy, bce, mse, l1, huber, or "
        'your own "package.module:function" fn(output, target) -> per-sample losses [batch].',
        "name",
        choices=("auto", *LOSSES),
    )
    metrics: list[str] = key(
        [],
        "Metrics per epoch, the first one the headline (empty: acc, or mae for regression). "
        "classification: acc, top5, f1, precision, recall, auroc; multilabel: acc, f1, "
        "precision, recall, auroc, hamming; regression: mae, mse, rmse, r2.",
        "str_list",
    )
    label_smoothing: float = key(
        0.0, "classification: cross-entropy label smoothing.", "float", ge=0.0, lt=1.0
    )
    class_weights: list[float] | str = key(
        [],
        'classification: a weight per class, or "balanced" (from the training labels); '
        "empty: equal weights.",
        "weights",
    )


@dataclass
class PrecisionSection:
    mode: str = key(
        "fp32",
        "fp32; fp16 = autocast + GradScaler; bf16 = autocast.",
        "choice",
        choices=PRECISIONS,
    )


@dataclass
class TrainSection:
    grad_accum: int = key(1, "Micro-batches accumulated per optimizer step.", "int", ge=1)
    clip_norm: float = key(0.0, "Clip the gradient norm to this value (0: off).", "float", ge=0.0)
    log_every: int = key(
        20, "Report loss and throughput every this many optimizer steps.", "int", ge=1
    )
    compile: bool = key(
        False,
        "torch.compile the model (slow first steps, faster after; needs a compiler).",
        "bool",
    )
    nonfinite: str = key(
        "fail",
        "A non-finite loss in fp32/bf16: fail the run (checked every log_every steps), or "
        "skip that step (checked every step: one host sync per step). fp16 always skips "
        "through the GradScaler.",
        "choice",
        choices=("fail", "skip"),
    )
    ema_decay: float = key(
        0.0,
        "Keep an exponential moving average of the weights with this decay (0: off; e.g. "
        "0.999): validation, best.pt and export then use the averaged weights.",
        "float",
        ge=0.0,
        lt=1.0,
    )
    ema_every: int = key(
        1, "Update the weights' moving average every this many optimizer steps.", "int", ge=1
    )


MONITORS = ("val_loss", "val_acc", "train_loss", "train_acc")  # any task's; see _monitors


@dataclass
class EarlyStopSection:
    enabled: bool = key(False, "Stop when the monitored metric stops improving.", "bool")
    monitor: str = key(
        "val_loss",
        "The metric to watch after each validation: val_loss, train_loss, or val_/train_ "
        "and a metric of task.metrics (e.g. val_acc, val_mae).",
        "str",
    )
    mode: str = key(
        "auto",
        "min or max is better; auto: min for losses, mae, mse, rmse and hamming, else max.",
        "choice",
        choices=("auto", "min", "max"),
    )
    patience: int = key(5, "Validations without improvement before stopping.", "int", ge=0)
    min_delta: float = key(0.0, "The least change that counts as an improvement.", "float", ge=0.0)
    restore_best: bool = key(False, "At the end, load the weights of the best validation.", "bool")
    check_finite: bool = key(True, "Fail the run when the monitored value is NaN or inf.", "bool")
    stop_above: float | None = key(
        None,
        "Stop as soon as the monitored value is above this (absent: no threshold).",
        "float",
        optional=True,
    )
    stop_below: float | None = key(
        None,
        "Stop as soon as the monitored value is below this (absent: no threshold).",
        "float",
        optional=True,
    )


@dataclass
class CheckpointSection:
    every_epochs: int = key(1, "Save a checkpoint every this many epochs (0: never).", "int", ge=0)
    every_steps: int = key(
        0, "Save a checkpoint every this many optimizer steps (0: never).", "int", ge=0
    )
    keep_last: int = key(3, "Keep this many periodic checkpoints (0: keep all).", "int", ge=0)
    save_best: bool = key(
        True, "Keep best.pt: the checkpoint with the best monitored value.", "bool"
    )
    monitor: str = key(
        "val_loss", "The metric that decides best.pt (the choices of early_stop.monitor).", "str"
    )
    on_error: str = key(
        "warn",
        "A checkpoint that cannot be written (disk full, folder not writable): warn and "
        "go on training, or stop the run (exit 1). The previous checkpoint stays either way.",
        "choice",
        choices=("warn", "stop"),
    )


@dataclass
class LogSection:
    csv: bool = key(
        False, "Write metrics.csv in the run directory: one row of metrics per epoch.", "bool"
    )
    tensorboard: bool = key(
        False,
        "Write TensorBoard scalars (loss, accuracy, lr, GPU memory) in the run directory; "
        "needs pip install 'mpt[tensorboard]'.",
        "bool",
    )
    mlflow: bool = key(
        False,
        "Log the run to MLflow: params, step and epoch metrics, tags; a resumed run continues "
        "its MLflow run; needs pip install 'mpt[mlflow]'.",
        "bool",
    )
    mlflow_uri: str = key(
        "",
        "MLflow tracking URI (empty: the SQLite store sqlite:///<out_dir>/mlflow.db, no server).",
        "str",
    )
    wandb: bool = key(
        False,
        "Log the run to Weights & Biases: config, step and epoch metrics, summary; a resumed "
        "run continues its W&B run; needs pip install 'mpt[wandb]'.",
        "bool",
    )
    wandb_project: str = key("", "W&B project (empty: run.name).", "str")
    wandb_mode: str = key(
        "offline",
        "offline: files in <run dir>/wandb/ for `wandb sync` later, no network; online: "
        "sent as it runs (needs `wandb login`); disabled: nothing.",
        "choice",
        choices=WANDB_MODES,
    )


@dataclass
class NotifySection:
    command: str = key(
        "",
        "A shell command run (by /bin/sh) when the run ends as notify.on says; it gets the "
        "event as one JSON line on stdin and MPT_EVENT, MPT_REASON, MPT_RUN_NAME, "
        "MPT_RUN_DIR, MPT_HEADLINE in its environment; killed after 30 s (empty: none).",
        "str",
    )
    webhook: str = key(
        "",
        "An http:// or https:// URL that gets the event as a JSON POST, with a one-line "
        '"text" for Slack-style hooks; 5 s timeout (empty: none).',
        "str",
    )
    on: list[str] = key(
        DEFAULT_ON,
        "Which endings notify: finished (completed or max_time), early_stopped, stopped "
        "(a stop you asked for), interrupted (Ctrl-C, SIGTERM, a closed terminal), failed.",
        "str_list",
    )


SECTIONS: dict[str, type] = {
    "run": RunSection,
    "data": DataSection,
    "model": ModelSection,
    "optim": OptimSection,
    "schedule": ScheduleSection,
    "task": TaskSection,
    "precision": PrecisionSection,
    "train": TrainSection,
    "early_stop": EarlyStopSection,
    "checkpoint": CheckpointSection,
    "log": LogSection,
    "notify": NotifySection,
}


@dataclass
class Profile:
    run: RunSection = field(default_factory=RunSection)
    data: DataSection = field(default_factory=DataSection)
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    task: TaskSection = field(default_factory=TaskSection)
    precision: PrecisionSection = field(default_factory=PrecisionSection)
    train: TrainSection = field(default_factory=TrainSection)
    early_stop: EarlyStopSection = field(default_factory=EarlyStopSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    notify: NotifySection = field(default_factory=NotifySection)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Plain nested dict, keys that are None left out (TOML has no null)."""
        return {
            name: {
                k: v
                for k, v in dataclasses.asdict(getattr(self, name)).items()
                if v is not None and v != {}  # an empty table would be a stray [a.b] header
            }
            for name in SECTIONS
        }

    def to_toml(self) -> str:
        return tomli_w.dumps(self.to_dict())


def _collect_fields() -> tuple[FieldSpec, ...]:
    specs = []
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            specs.append(FieldSpec(section=section, name=f.name, default=default, **f.metadata))
    return tuple(specs)


FIELDS: tuple[FieldSpec, ...] = _collect_fields()
FIELD_BY_PATH: dict[str, FieldSpec] = {f.path: f for f in FIELDS}

# Written as values in a new profile even when they equal the default (`mpt init`, a new
# profile saved from the console's form): what a first run changes.
ESSENTIAL_KEYS = frozenset(
    {
        "run.name",
        "run.epochs",
        "run.device",
        "data.dataset",
        "data.batch_size",
        "model.arch",
        "model.hidden",
        "optim.name",
        "optim.lr",
        "log.csv",
    }
)
# What the console's resume form offers to change: how long the run goes on, the learning
# rate, patience, logging. engine.checkpoint.REFUSED_CHANGES lists what a resume refuses;
# check_resume has the last word on the rest.
RESUME_FORM_KEYS = (
    "run.epochs",
    "run.max_steps",
    "run.max_time",
    "optim.lr",
    "early_stop.patience",
    "train.log_every",
)


ECHO_LIMIT = 80  # characters of a user's value or key that an error message repeats
PATH_ECHO_LIMIT = 4096  # a path is named whole (PATH_MAX); only a runaway one is cut
PATH_KEYS = frozenset({"data.path", "data.root", "run.out_dir", "model.pretrained"})


def cut(text: str, limit: int = ECHO_LIMIT) -> str:
    """`text` cut to `limit` characters: a message names a value, it does not reprint a file."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def describe_value(value: Any, limit: int = ECHO_LIMIT) -> str:
    """The value on one line, as in TOML: 0.1, true, [1, 2], {a = 1}; strings quoted; cut.

    Every echo of a user's value or key in a profile error goes through here.
    """
    return cut(_toml_text(value, limit), limit)


_describe = describe_value


def _toml_text(value: Any, limit: int) -> str:
    """TOML-like text of `value`, built only as far as `limit` needs (a list may be huge)."""
    if isinstance(value, str):
        return repr(value[: limit + 1])[: limit + 2]  # repr of a 5 MB string is 5 MB
    if isinstance(value, list):  # tomli_w would spread a list over several lines
        return _joined("[", (_toml_text(v, limit) for v in value), "]", limit)
    if isinstance(value, dict):
        items = (f"{_key_text(k)} = {_toml_text(v, limit)}" for k, v in value.items())
        return _joined("{", items, "}", limit)
    try:
        return tomli_w.dumps({"v": value})[4:].strip()
    except TypeError:  # not a TOML value (a dict built in Python, not read from a file)
        return repr(value)
    except ValueError:  # an integer past Python's 4,300 digits for str()
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"


def _joined(opening: str, parts: Any, closing: str, limit: int) -> str:
    text = opening
    for n, part in enumerate(parts):
        text += (", " if n else "") + part
        if len(text) > limit:
            return text  # cut later; the rest is never built
    return text + closing


def _check_value(spec: FieldSpec, value: Any) -> tuple[Any, str | None]:
    """Return (value coerced to the field's type, None) or (None, what is wrong)."""
    kind = spec.kind
    if kind == "bool":
        if not isinstance(value, bool):
            return None, "must be true or false"
        return value, None
    if kind in ("str", "choice"):
        if not isinstance(value, str):
            return None, "must be a string"
        if kind == "choice" and value not in spec.choices:
            msg = "must be one of " + ", ".join(spec.choices)
            return None, msg + _did_you_mean(value, spec.choices)
        return value, None
    if kind in ("int", "float"):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None, f"must be {'an integer' if kind == 'int' else 'a number'}"
        if kind == "int" and not isinstance(value, int):
            return None, "must be an integer"
        if kind == "int" and not _INT64[0] <= value <= _INT64[1]:
            return None, "must be a 64-bit integer (as TOML allows)"
        if kind == "float":
            value = _finite_float(value)
            if value is None:
                return None, "must be a finite number"
        return value, _range_problem(spec, value)
    if kind in ("int_list", "float_list"):
        item = "int" if kind == "int_list" else "float"
        if not isinstance(value, list):
            return None, f"must be a list of {'integers' if item == 'int' else 'numbers'}"
        items = []
        for v in value:
            ok = isinstance(v, int) if item == "int" else isinstance(v, int | float)
            if isinstance(v, bool) or not ok:
                return None, f"must be a list of {'integers' if item == 'int' else 'numbers'}"
            if item == "int" and not _INT64[0] <= v <= _INT64[1]:
                return None, "must be a list of 64-bit integers (as TOML allows)"
            if item == "float" and (v := _finite_float(v)) is None:
                return None, "must be a list of finite numbers"
            items.append(v)
        return items, None
    if kind in ("name", "str_list", "table", "float_table", "weights"):
        return _check_new_kind(spec, value)
    raise AssertionError(f"unknown kind {kind}")


def _check_new_kind(spec: FieldSpec, value: Any) -> tuple[Any, str | None]:
    """The kinds of task, fine-tuning and user-code keys (see FieldSpec.kind)."""
    kind = spec.kind
    if kind == "name":
        if not isinstance(value, str):
            return None, "must be a string"
        if value in spec.choices or _IMPORT_PATH_RE.match(value):
            return value, None
        msg = f'must be one of {", ".join(spec.choices)} or "package.module:function"'
        return None, msg + _did_you_mean(value, spec.choices)
    if kind == "str_list":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return None, "must be a list of strings"
        return list(value), None
    if kind == "weights":
        if value == "balanced":
            return value, None
        items, wrong = _check_value(dataclasses.replace(spec, kind="float_list"), value)
        if wrong or any(v < 0 for v in items) or (items and not any(items)):
            return None, 'must be "balanced" or a list of numbers >= 0, not all 0'
        return items, None
    if not isinstance(value, dict):
        return None, "must be a table, e.g. { size = 64 }"
    if kind == "float_table":
        table = {}
        for name, v in value.items():
            number = None if isinstance(v, bool) or not isinstance(v, int | float) else v
            number = _finite_float(number) if number is not None else None
            if number is None or number < 0:
                return None, f"the value of {describe_value(name, 40)} must be a number >= 0"
            table[name] = number
        return table, None
    return dict(value), None


_INT64 = (-(2**63), 2**63 - 1)  # TOML's integers; tomllib reads bigger ones without a word


def _finite_float(value: int | float) -> float | None:
    """`value` as a finite float, or None (NaN, infinity, or an integer too big for a float)."""
    try:
        value = float(value)
    except OverflowError:
        return None
    return value if math.isfinite(value) else None


def format_bound(b: float) -> str:
    """A range bound as errors and the form print it: 4294967295, 0.5, 1e+30."""
    return str(b) if isinstance(b, int) else f"{b:g}"  # an int whole, never 4.29497e+09


def _range_problem(spec: FieldSpec, value: float) -> str | None:
    bound = format_bound
    if spec.ge is not None and value < spec.ge:
        return f"must be >= {bound(spec.ge)}"
    if spec.gt is not None and value <= spec.gt:
        return f"must be > {bound(spec.gt)}"
    if spec.le is not None and value > spec.le:
        return f"must be <= {bound(spec.le)}"
    if spec.lt is not None and value >= spec.lt:
        return f"must be < {bound(spec.lt)}"
    return None


def _key_text(path: str) -> str:
    """A key path as a message shows it: quoted when it is empty or holds odd characters."""
    plain = isinstance(path, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", path)
    return cut(path) if plain else describe_value(path, limit=40)


def _close_match(name: str, known: Any) -> str | None:
    """The known name `name` was probably meant to be (none for a name far too long)."""
    if len(name) > 2 * max(len(k) for k in known):
        return None  # no near miss, and difflib on a 5 MB name takes seconds
    hint = difflib.get_close_matches(name, known, n=1)
    return hint[0] if hint else None


def _did_you_mean(name: str, known: Any) -> str:
    """`; did you mean 'lr'?` for a near miss of `known`, else ''."""
    hint = _close_match(name, known)
    return f"; did you mean {hint!r}?" if hint else ""


def _unknown(name: str, known: list[str], what: str) -> str:
    return f"unknown {what}" + _did_you_mean(name, known)


NAME_MAX = 255  # bytes in one file name, on Linux, macOS and Windows file systems alike


def name_bytes(name: str) -> int:
    """How many bytes `name` takes as a file name (as os.fsencode writes it)."""
    try:
        return len(os.fsencode(name))
    except UnicodeEncodeError:  # a lone surrogate: each is written as 3 bytes
        return len(name.encode("utf-8", "surrogatepass"))


def _expand(path: str) -> Path | None:
    """`path` with ~ expanded; None when it names the home of a user who does not exist."""
    try:
        return Path(path).expanduser()
    except RuntimeError:
        return None


# ---- cross-checks: rules over more than one key, or over the file system ----

Finding = tuple[str, str, Any]  # the key, what is wrong with it, the value it has
Unusable = dict[str, Finding]  # path keys that no file can have, by key


def _unusable_paths(p: Profile) -> Unusable:
    """The path keys no file can have: the data rules' existence checks would raise on them."""
    found = {}
    paths = (("run.out_dir", p.run.out_dir), ("data.path", p.data.path),
             ("data.root", p.data.root), ("model.pretrained", p.model.pretrained))  # fmt: skip
    for key, text in paths:
        if "\x00" in text:
            found[key] = (key, "must not hold a NUL character", text)
        elif _expand(text) is None:
            found[key] = (key, "starts with ~user, but there is no such user", text)
        else:
            try:
                _expand(text).stat()
            except (FileNotFoundError, NotADirectoryError):
                pass  # missing: the data rules say what each dataset needs
            except OSError as e:  # a name too long, a loop of links, a parent not searchable
                found[key] = (key, f"cannot be used as a path ({e.strerror or e})", text)
    return found


def _run_keys(p: Profile, unusable: Unusable) -> Iterator[Finding]:
    """run.device's form; run.name names a folder."""
    if not _DEVICE_RE.match(p.run.device):
        yield "run.device", "must be auto, cpu, cuda, cuda:N or mps", p.run.device
    name = p.run.name
    if not name or "/" in name or name in (".", ".."):
        yield "run.name", "must be a non-empty name without '/'", name
    elif not name.isprintable():
        yield "run.name", "must not hold control characters (it names a folder)", name
    elif name_bytes(name) > NAME_MAX:
        too_long = f"is too long for a folder name ({name_bytes(name)} bytes, at most {NAME_MAX})"
        yield "run.name", f"{too_long}; choose a shorter name", name


def _path_keys(p: Profile, unusable: Unusable) -> Iterator[Finding]:
    yield from unusable.values()


def _model_keys(p: Profile, unusable: Unusable) -> Iterator[Finding]:
    m = p.model
    arch = m.arch
    zoo = _ZOO_RE.match(arch)  # timm's names may carry a tag: timm:resnet18.a1_in1k
    if arch not in BUILTIN_ARCHS and not zoo and not _IMPORT_PATH_RE.match(arch):
        meant = _did_you_mean(arch, BUILTIN_ARCHS)
        choices = 'mlp, cnn, resnet18, "torchvision:NAME", "timm:NAME" or "package.module:factory"'
        yield "model.arch", f"must be {choices}{meant}", arch
    elif arch.startswith("timm:") and importlib.util.find_spec("timm") is None:
        message = "needs the timm package, which is not installed; pip install 'mpt[timm]'"
        yield "model.arch", message, arch
    if m.options and arch in BUILTIN_ARCHS:
        message = 'applies to "torchvision:NAME", "timm:NAME" or a factory, not a built-in arch'
        yield "model.options", message, m.options
    if "model.pretrained" not in unusable and m.pretrained:
        path = _expand(m.pretrained)
        if path is None or not path.is_file():
            message = "no such file; point it at a saved state_dict or an mpt checkpoint"
            yield "model.pretrained", message, m.pretrained
    if any(not prefix for prefix in m.freeze):
        yield "model.freeze", "every prefix must be a non-empty parameter-name start", m.freeze
    if any(h < 1 for h in p.model.hidden):
        yield "model.hidden", "every layer size must be >= 1", p.model.hidden
    if arch == "cnn" and (not p.model.channels or any(c < 1 for c in p.model.channels)):
        yield "model.channels", "needs at least one layer, every size >= 1", p.model.channels


def _optim_keys(p: Profile, unusable: Unusable) -> Iterator[Finding]:
    o = p.optim
    if len(o.betas) != 2 or not all(0.0 <= b < 1.0 for b in o.betas):
        yield "optim.betas", "must be two numbers in [0, 1)", o.betas
    if o.nesterov and (o.name != "sgd" or o.momentum == 0):
        yield "optim.nesterov", 'needs optim.name = "sgd" and momentum > 0', o.nesterov


def _data_files(p: Profile, unusable: Unusable) -> Iterator[Finding]:
    """What each dataset reads is there: an npz file, a folder of class folders, a root."""
    d = p.data
    if d.dataset == "npz" and "data.path" not in unusable:
        if not d.path:
            yield "data.path", "the npz dataset needs the path of a .npz file", d.path
        elif _expand(d.path).is_dir():
            yield "data.path", "is a folder; point it at a .npz file with x_train/y_train", d.path
        elif not _expand(d.path).is_file():
            yield "data.path", "no such file; point it at a .npz with x_train/y_train", d.path
    if d.dataset == "image_folder" and "data.path" not in unusable:
        if not d.path:
            needs = "the image_folder dataset needs a folder of class sub-folders"
            yield "data.path", needs, d.path
        elif not _expand(d.path).is_dir():
            yield "data.path", "no such folder; point it at a folder of class sub-folders", d.path
    torchvision_data = d.dataset in ("mnist", "fashion_mnist", "cifar10")
    root_missing = "data.root" not in unusable and not _expand(d.root).is_dir()
    if torchvision_data and not d.download and root_missing:
        yield (
            "data.root",
            "no such folder, and data.download is false; set "
            "data.download = true or point data.root at the folder holding the dataset",
            d.root,
        )


def _task_keys(p: Profile, unusable: Unusable) -> Iterator[Finding]:
    """The loss and the metrics fit task.kind; the classification-only keys stay unset."""
    t = p.task
    if t.loss in LOSSES and t.kind not in LOSSES[t.loss]:
        fits = ", ".join(name for name, kinds in LOSSES.items() if t.kind in kinds)
        yield "task.loss", f"does not fit task.kind {t.kind!r}; use auto or {fits}", t.loss
    known = METRICS[t.kind]
    for name in t.metrics:
        if name not in ALL_METRICS:
            meant = _did_you_mean(name, ALL_METRICS)
            message = f"unknown metric {name!r}; {t.kind} has {', '.join(known)}{meant}"
            yield "task.metrics", message, t.metrics
            break
        if name not in known:
            message = f"{name!r} does not fit task.kind {t.kind!r}; it has {', '.join(known)}"
            yield "task.metrics", message, t.metrics
            break
    else:
        if len(set(t.metrics)) != len(t.metrics):
            yield "task.metrics", "names a metric twice", t.metrics
    custom = t.loss not in LOSSES and t.loss != "auto"
    if custom and t.kind == "classification":
        for key, value in (
            ("label_smoothing", t.label_smoothing),
            ("class_weights", t.class_weights),
        ):
            if value:
                message = f"applies to the built-in cross_entropy, not to task.loss {t.loss!r}"
                yield f"task.{key}", message, value
    if t.kind != "classification":
        if t.label_smoothing:
            message = "applies to classification only; set it to 0"
            yield "task.label_smoothing", message, t.label_smoothing
        if t.class_weights:
            message = "applies to classification only; set it to []"
            yield "task.class_weights", message, t.class_weights


def _monitors(p: Profile, unusable: Unusable) -> Iterator[Finding]:
    """early_stop.monitor and checkpoint.monitor name something the run reports."""
    choices = monitors(p.task.kind, [m for m in p.task.metrics if m in METRICS[p.task.kind]])
    for key, value in (("early_stop.monitor", p.early_stop.monitor),
                       ("checkpoint.monitor", p.checkpoint.monitor)):  # fmt: skip
        if value not in choices:
            meant = _did_you_mean(value, choices)
            yield key, f"must be one of {', '.join(choices)}{meant}", value


def _data_source(p: Profile, unusable: Unusable) -> Iterator[Finding]:
    """A built-in dataset is classification data; data.options is for a factory."""
    d = p.data
    builtin = d.dataset in DATASETS
    if builtin and p.task.kind != "classification":
        message = (
            f"the built-in dataset {d.dataset!r} is classification data; for task.kind "
            f'{p.task.kind!r} name your own "package.module:function"'
        )
        yield "task.kind", message, p.task.kind
    if builtin and d.options:
        yield "data.options", 'applies to a "package.module:function" dataset only', d.options


def _data_shapes(p: Profile, unusable: Unusable) -> Iterator[Finding]:
    d = p.data
    if len(d.synthetic_shape) != 3 or any(s < 1 for s in d.synthetic_shape):
        yield (
            "data.synthetic_shape",
            "must be [channels, height, width], each >= 1",
            d.synthetic_shape,
        )
    if len(d.mean) != len(d.std):
        yield "data.std", "must have as many values as data.mean", d.std
    if any(s <= 0 for s in d.std):
        yield "data.std", "every value must be > 0", d.std


def _no_validation(d: DataSection) -> bool:
    """No validation set: none split off, no test split of the dataset's own, and not an
    image folder (its val/ folder, if any, is found only when it is read)."""
    has_own_split = d.dataset in ("mnist", "fashion_mnist", "cifar10", "npz")
    no_val = d.val_fraction == 0 and not (has_own_split and d.use_test_split)
    return no_val and d.dataset in DATASETS and d.dataset != "image_folder"  # (factories: at load)


def _plateau_needs_validation(p: Profile, unusable: Unusable) -> Iterator[Finding]:
    if p.schedule.name == "plateau" and _no_validation(p.data):
        message = "plateau needs a validation set; set data.val_fraction > 0"
        yield "schedule.name", message, p.schedule.name


def _cosine_decays(p: Profile, unusable: Unusable) -> Iterator[Finding]:
    s = p.schedule
    if s.name == "cosine" and s.min_lr >= p.optim.lr:
        message = f"must be below optim.lr ({p.optim.lr:g}) for a decaying cosine"
        yield "schedule.min_lr", message, s.min_lr


def _early_stop_needs_validation(p: Profile, unusable: Unusable) -> Iterator[Finding]:
    es = p.early_stop
    if es.enabled and es.monitor.startswith("val_") and _no_validation(p.data):
        message = "needs a validation set; set data.val_fraction > 0 or monitor train_loss"
        yield "early_stop.monitor", message, es.monitor


def _onecycle_warms_up_alone(p: Profile, unusable: Unusable) -> Iterator[Finding]:
    s = p.schedule
    if s.name == "onecycle" and (s.warmup_steps or s.warmup_epochs):
        message = "onecycle warms up by itself (pct_start); set the warmup keys to 0"
        yield "schedule.warmup_steps", message, s.warmup_steps or s.warmup_epochs


def _tensorboard_installed(p: Profile, unusable: Unusable) -> Iterator[Finding]:
    # Found before any work (a module search, not an import): mpt run exits 2 at once.
    if p.log.tensorboard and importlib.util.find_spec("tensorboard") is None:
        message = (
            "needs the tensorboard package, which is not installed; "
            "pip install 'mpt[tensorboard]' or set log.tensorboard = false"
        )
        yield "log.tensorboard", message, True


def _notify_keys(p: Profile, unusable: Unusable) -> Iterator[Finding]:
    """notify.on names endings; notify.webhook is a web address; the command has no NUL."""
    n = p.notify
    for name in n.on:
        if name not in NOTIFY_EVENTS:
            meant = _did_you_mean(name, NOTIFY_EVENTS)
            message = f"unknown ending {name!r}; use {', '.join(NOTIFY_EVENTS)}{meant}"
            yield "notify.on", message, n.on
            break
    wrong = webhook_problem(n.webhook)
    if wrong:
        yield "notify.webhook", wrong, n.webhook
    if "\x00" in n.command:
        yield "notify.command", "must not hold a NUL character", n.command


# In the order `mpt validate` lists their problems.
CROSS_CHECKS = (
    _run_keys,
    _path_keys,
    _model_keys,
    _optim_keys,
    _data_files,
    _data_source,
    _data_shapes,
    _task_keys,
    _monitors,
    _plateau_needs_validation,
    _cosine_decays,
    _early_stop_needs_validation,
    _onecycle_warms_up_alone,
    _tensorboard_installed,
    _notify_keys,
)


def _cross_checks(p: Profile) -> list[Problem]:
    """The problems CROSS_CHECKS find, each with the value it had."""
    unusable = _unusable_paths(p)
    problems = []
    for rule in CROSS_CHECKS:
        for key, message, got in rule(p, unusable):
            limit = PATH_ECHO_LIMIT if key in PATH_KEYS else ECHO_LIMIT
            problems.append(Problem(key, f"{message} (got {_describe(got, limit)})"))
    return problems


def profile_from_dict(data: dict[str, Any], source: str = "<profile>") -> Profile:
    """Validate a nested dict (as tomllib returns it) into a Profile.

    Raises ProfileError listing every problem at once.
    """
    problems: list[Problem] = []
    sections: dict[str, Any] = {}
    for sname, table in data.items():
        if sname not in SECTIONS:
            problems.append(Problem(_key_text(sname), _unknown(sname, list(SECTIONS), "section")))
            continue
        if not isinstance(table, dict):
            problems.append(Problem(sname, f"must be a [{sname}] table (got {_describe(table)})"))
            continue
        known = [f.name for f in dataclasses.fields(SECTIONS[sname])]
        values = {}
        for kname, value in table.items():
            spec = FIELD_BY_PATH.get(f"{sname}.{kname}")
            if spec is None:
                where = _key_text(f"{sname}.{kname}")
                problems.append(Problem(where, _unknown(kname, known, "key")))
                continue
            coerced, wrong = _check_value(spec, value)
            if wrong:
                problems.append(Problem(spec.path, f"{wrong} (got {_describe(value)})"))
            else:
                values[kname] = coerced
        sections[sname] = values
    # Cross-check with the valid keys (defaults in place of the wrong ones), so that one
    # run of `mpt validate` lists every problem; a key already reported is not reported twice.
    profile = Profile(**{name: SECTIONS[name](**sections.get(name, {})) for name in SECTIONS})
    reported = {p.key for p in problems}
    problems += [p for p in _cross_checks(profile) if p.key not in reported]
    if problems:
        raise ProfileError(source, problems)
    return profile


def parse_toml(text: str, source: str) -> dict[str, Any]:
    text = text.removeprefix(BOM)
    if not text.strip():
        raise ProfileError(
            source, [Problem("", "the file is empty; start from profiles/quickstart.toml")]
        )
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(source, [Problem("", f"not valid TOML: {e}")]) from None
    except RecursionError:  # tomllib parses nested arrays and tables recursively
        raise ProfileError(
            source, [Problem("", "not valid TOML for a profile: arrays or tables nested too deep")]
        ) from None
    except ValueError:  # Python reads at most 4300 digits of an integer
        raise ProfileError(
            source, [Problem("", "not valid TOML for a profile: a number with too many digits")]
        ) from None


def read_profile_bytes(path: str | Path) -> bytes:
    """A profile file's bytes, every file problem turned into a ProfileError."""
    source = str(path)
    try:
        return _read_without_blocking_on_open(Path(path), source)
    except FileNotFoundError:
        raise ProfileError(source, [Problem("", "no such file")]) from None
    except IsADirectoryError:
        raise ProfileError(source, [Problem("", "is a folder, not a profile file")]) from None
    except PermissionError:
        raise ProfileError(source, [Problem("", "cannot be read (permission denied)")]) from None
    except OSError as e:  # an unreadable disk, a name too long, a loop of links...
        raise ProfileError(source, [Problem("", f"cannot be read ({e.strerror or e})")]) from None


def _read_without_blocking_on_open(path: Path, source: str) -> bytes:
    """The bytes of a file or a pipe (`mpt run <(...)`), refusing a device.

    A named FIFO is opened without waiting for a writer: with none, it reads as empty
    instead of hanging `mpt validate` or the TUI's list of profiles.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb", closefd=True) as f:
        mode = os.fstat(fd).st_mode
        if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):  # /dev/zero would never end
            raise ProfileError(source, [Problem("", "is a device, not a profile file")])
        os.set_blocking(fd, True)  # a pipe with a writer: wait for what it writes
        return f.read()


def decode_profile(raw: bytes, source: str) -> str:
    """The TOML text of a profile file's bytes: UTF-8, a leading BOM dropped.

    Editors on Windows write a BOM; tomllib rejects it ("Invalid statement").
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProfileError(
            source, [Problem("", "is not a text file (not UTF-8); a profile is TOML text")]
        ) from None
    return text.removeprefix(BOM)


def read_profile_file(path: str | Path) -> dict[str, Any]:
    """Read a TOML file into a dict, turning every file problem into a ProfileError."""
    return parse_toml(decode_profile(read_profile_bytes(path), str(path)), str(path))


def parse_override(item: str) -> tuple[str, Any]:
    """Parse one `--set section.key=value`; the value is TOML, or else a bare string."""
    if "=" not in item:
        raise ProfileError("--set", [Problem(_key_text(item), "must look like section.key=value")])
    path, _, text = item.partition("=")
    path = path.strip()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError, ValueError):  # ValueError: 4300+ digits
        value = text.strip()  # so that --set data.dataset=mnist needs no quotes
    return path, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `data` with each `section.key=value` applied."""
    merged = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    problems = []
    for item in overrides:
        path, value = parse_override(item)
        section, dot, name = path.partition(".")
        if not section or not dot or not name or "." in name:
            problems.append(Problem(_key_text(path or item), "must be section.key, e.g. optim.lr"))
            continue
        table = merged.setdefault(section, {})
        if isinstance(table, dict):
            table[name] = value
    if problems:
        raise ProfileError("--set", problems)
    return merged


def load_profile(path: str | Path, overrides: list[str] | None = None) -> Profile:
    """Read, override and validate a profile file. Raises ProfileError."""
    data = apply_overrides(read_profile_file(path), overrides or [])
    return profile_from_dict(data, str(path))


def profile_from_toml(text: str, source: str = "<profile>") -> Profile:
    return profile_from_dict(parse_toml(text, source), source)
