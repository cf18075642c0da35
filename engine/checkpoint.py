"""Checkpoint files: atomic writes, safe reads, and what may change on resume.

A checkpoint is one dict of tensors and plain values (loadable with
`torch.load(path, weights_only=True)`); `state["model"]` is a plain state_dict that
`model.load_state_dict(...)` accepts, as in the tutorials.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import random
import shutil
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import MptError, ProfileError
from engine.profile import (
    FIELD_BY_PATH,
    Profile,
    _check_value,
    describe_value,
    profile_from_dict,
)
from engine.task_spec import metric_names
from engine.user_code import CODE_KEYS, imported_code

FORMAT = "mpt-checkpoint"
# 2: the "task" key (kind, outputs, class names); 3: the "ema" key (train.ema_decay's
# averaged weights). Older versions are still read.
VERSION = 3

# Keys whose change makes a checkpoint meaningless for the new profile: the weights or
# the optimizer state would not fit, or the position inside the data would point elsewhere.
REFUSED_CHANGES = (
    "model.arch",
    "model.hidden",
    "model.channels",
    "model.small_input",
    "model.options",
    "model.freeze",
    "data.dataset",
    "data.options",
    "task.kind",
    "optim.lr_mult",
    "data.synthetic_samples",
    "data.synthetic_classes",
    "data.synthetic_shape",
    "data.image_size",
    "data.use_test_split",
    "data.val_fraction",
    "train.grad_accum",
    "run.seed",
    "optim.name",
    "schedule.name",
)


class CheckpointError(MptError):
    """A checkpoint that cannot be used: unreadable, foreign, newer, or incompatible."""


@dataclass
class CheckpointInfo:
    path: str
    epoch: int | None  # epochs completed (None: an unusable checkpoint)
    step: int | None
    metric: float | None  # the run's headline metric (val_acc, val_mae ...) at the time
    time: float
    problem: str | None = None  # why the checkpoint cannot be used; None when it can
    metric_name: str = "val_acc"
    monitor: str = ""  # checkpoint.monitor: what best.pt follows (maybe not the headline)
    monitor_value: float | None = None  # its value at this checkpoint


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write `state` so that `path` is either the old file or the complete new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            writer = _Writer(f)
            try:
                torch.save(state, writer)
            except RuntimeError:
                if writer.error is None:
                    raise
                raise writer.error from None  # the disk's own error, not the zip writer's
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class _Writer:
    """The file, as torch.save writes to it, keeping the OSError of a failed write: torch
    turns it into a RuntimeError ("unexpected pos ...") that says nothing of a full disk."""

    def __init__(self, f):
        self.f, self.name, self.error = f, f.name, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def link_atomic(src: Path, dst: Path) -> None:
    """Make `dst` the same file as `src` (a hard link, or a copy), replacing it atomically."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # file systems without hard links
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a copy cut short by a full disk must not stay behind
        raise
    _fsync_dir(dst.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint; any problem is one CheckpointError sentence."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes), not a checkpoint")
    try:
        with warnings.catch_warnings():  # torch's own advice (weights_only=False) is unsafe
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            raise CheckpointError(
                f"{path}: refused to load, it holds Python objects besides tensors and plain "
                "values (loading it could run code), so it is not an mpt checkpoint"
            ) from None
        raise CheckpointError(f"{path}: cannot be read, the file is corrupted") from None
    except Exception:  # noqa: BLE001 - garbage makes the unpickler raise almost anything
        raise CheckpointError(
            f"{path}: cannot be read, the file is truncated or corrupted"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mpt checkpoint (a .pt file from another program)")
    if not isinstance(state.get("version"), int) or state["version"] > VERSION:
        raise CheckpointError(
            f"{path}: written by a newer mpt (checkpoint format {state.get('version')}, this "
            f"mpt reads up to {VERSION}); upgrade mpt to resume it"
        )
    validate(path, state)
    return state


def info(path: Path, state: dict[str, Any]) -> CheckpointInfo:
    """The picker's line of a checkpoint that `load` accepted."""
    progress = state["progress"]
    defaults = Profile().to_dict()
    task = {**defaults["task"], **state["profile"].get("task", {})}
    headline = "val_" + metric_names(task["kind"], task["metrics"])[0]
    monitor = {**defaults["checkpoint"], **state["profile"].get("checkpoint", {})}["monitor"]
    return CheckpointInfo(
        path=str(path),
        epoch=progress["epochs_done"],
        step=progress["step"],
        metric=state["metrics"].get(headline),
        time=state.get("time") or path.stat().st_mtime,
        metric_name=headline,
        monitor=monitor,
        monitor_value=state["metrics"].get(monitor),
    )


def list_checkpoints(run_dir: str | Path, unusable: bool = False) -> list[CheckpointInfo]:
    """The checkpoints in a run directory, oldest step first.

    A file that `load` refuses is left out, or with `unusable`, listed last with its
    sentence in `problem`: one bad file never hides the good ones.
    """
    folder = Path(run_dir) / "checkpoints"
    found, bad = [], []
    for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
        try:
            found.append(info(path, load(path)))
        except (CheckpointError, OSError) as e:  # OSError: the file went away meanwhile
            bad.append(CheckpointInfo(str(path), None, None, None, _mtime(path), str(e)))
    found.sort(key=lambda c: (c.step, c.path))
    return found + bad if unusable else found


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def resolve(spec: str | Path, out_dir: str | None = None, name: str | None = None) -> Path:
    """`--resume` value -> checkpoint file: "last", a run directory, or a .pt file."""
    if str(spec) == "last":
        if out_dir is None or name is None:
            raise CheckpointError("--resume last needs the profile, to know which runs to look at")
        runs = Path(out_dir).expanduser() / name
        found = runs.glob("*/checkpoints/last.pt") if runs.is_dir() else []
        candidates = sorted(found, key=lambda p: _stamp_order(p.parent.parent.name))
        if not candidates:
            raise CheckpointError(f"--resume last: no run in {runs} has a checkpoint yet")
        return candidates[-1]
    path = Path(spec).expanduser()
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        if not last.is_file():
            raise CheckpointError(f"{path}: this run directory has no checkpoints/last.pt")
        return last
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    return path


def _stamp_order(name: str) -> tuple[str, int]:
    """Run folders are STAMP or STAMP-N (N >= 2 for runs started in the same second)."""
    stamp, _, n = name.partition("-")[2].partition("-")
    head = name.partition("-")[0] + "-" + stamp
    return (head, int(n) if n.isdigit() else 1)


def rng_state() -> dict[str, Any]:
    """Every global random stream, as tensors and plain values."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def profile_changes(old: dict[str, dict], new: dict[str, dict]) -> list[tuple[str, Any, Any]]:
    """(key.path, old value, new value) for each key that differs between two profiles."""
    changes = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section, {}), new.get(section, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                changes.append((f"{section}.{key}", a.get(key), b.get(key)))
    return changes


def check_resume(
    path: Path, state: dict[str, Any], new: dict[str, dict], world_size: int = 1
) -> list[str]:
    """Refuse a profile the checkpoint cannot serve; return a warning per safe change.

    `data.batch_size` is per process: it may change with the number of processes
    (torchrun), as long as the global batch, batch_size x processes, stays the same.
    """
    # A key the checkpoint's profile lacks (a section added since, e.g. [log]) had its default.
    defaults = Profile().to_dict()
    old = {s: {**defaults.get(s, {}), **t} for s, t in state["profile"].items()}
    old = {**defaults, **old}
    changes = profile_changes(old, new)
    refused = [c for c in changes if c[0] in REFUSED_CHANGES]
    old_world = state.get("progress", {}).get("world_size", 1)
    old_batch, new_batch = old["data"]["batch_size"], new["data"]["batch_size"]
    if old_batch * old_world != new_batch * world_size:
        if old_world == world_size:
            refused.append(("data.batch_size", old_batch, new_batch))
        else:
            raise CheckpointError(
                f"{path}: the global batch (data.batch_size x processes) was {old_batch} x "
                f"{old_world} = {old_batch * old_world}, now {new_batch} x {world_size}; set "
                f"data.batch_size so that the product stays {old_batch * old_world}, or start "
                "a new run"
            )
    if refused:
        what = "; ".join(f"{k} was {a!r}, the profile says {b!r}" for k, a, b in refused)
        raise CheckpointError(
            f"{path}: cannot resume with this profile ({what}); these keys must stay as they "
            "were, so start a new run instead"
        )
    warnings = [f"resume changes {k} from {a!r} to {b!r}" for k, a, b in changes]
    if old_world != world_size:
        warnings.append(
            f"resume goes from {old_world} to {world_size} process(es) with the same global "
            "batch: the same data order and mean gradient, equal within float tolerance "
            "(not bit for bit); dropout and augmentation draws differ"
        )
    return warnings


# ---- the checkpoint's structure: checked once, right after reading, before any use ----
#
# The reader is strict: a checkpoint is either understood whole or refused with one
# sentence naming the key. A key this mpt does not know is refused too (not ignored): a
# later mpt that adds a key raises VERSION, so that this one says "written by a newer
# mpt" instead of half-reading the file. Only keys that earlier version-1 files lack
# (time, ranks, progress.world_size, profile sections and keys added since) may be absent.

# Counters beyond this are no real run's: 10**12 steps is decades of training.
_COUNT_LIMIT = 10**12 - 1
_YEAR_9999 = 253_402_300_799  # time.localtime fails beyond it

_TOP_KEYS = (
    "format", "version", "time", "profile", "model", "optimizer", "schedule", "scaler",
    "early_stop", "best_checkpoint", "best_weights", "metrics", "progress", "rng", "ranks",
    "task", "ema",
)  # fmt: skip
_OPTIONAL_TOP_KEYS = ("time", "ranks", "task", "ema")
# The epoch's and the log window's metric sums: they differ between processes.
SUMS = ("epoch_loss", "epoch_correct", "epoch_samples", "window_loss", "window_samples")
# Profile keys whose check depends on this machine (a data file moved, tensorboard not
# installed): the checkpoint is still usable, for export or with another profile.
_MACHINE_KEYS = ("data.path", "data.root", "run.out_dir", "log.tensorboard", "model.pretrained")


class _Invalid(Exception):
    """One thing wrong inside a checkpoint, as the end of a sentence."""


def _bad(key: str, message: str, value: Any = ...) -> _Invalid:
    got = "" if value is ... else f" (got {_what(value)})"
    return _Invalid(f"{key} {message}{got}")


def _what(value: Any) -> str:
    """A value on one short line: tensors by dtype and shape, containers by size."""
    if isinstance(value, torch.Tensor):
        return f"a {str(value.dtype).removeprefix('torch.')} tensor of shape {list(value.shape)}"
    if value is None:
        return "nothing (None)"
    if isinstance(value, dict):
        return f"a table of {len(value)} key(s)" if value else "an empty table"
    if isinstance(value, list | tuple):
        return f"a list of {len(value)}" if value else "an empty list"
    try:
        return describe_value(value)
    except Exception:  # noqa: BLE001 - a value no TOML writer knows
        return type(value).__name__


def _table(value: Any, key: str) -> dict:
    if not isinstance(value, dict):
        raise _bad(key, "must be a table", value)
    return value


def _sequence(value: Any, key: str) -> list | tuple:
    if not isinstance(value, list | tuple):
        raise _bad(key, "must be a list", value)
    return value


def _field(table: dict, name: str, key: str) -> Any:
    if name not in table:
        raise _Invalid(f"{key}.{name} is missing")
    return table[name]


def _whole(value: Any, key: str, low: int = 0, high: int = _COUNT_LIMIT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise _bad(key, f"must be a whole number >= {low}", value)
    if value > high:
        raise _bad(key, f"must be at most {high}", value)
    return value


def _number(value: Any, key: str, low: float | None = None, finite: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(key, "must be a number", value)
    if finite and not math.isfinite(value):
        raise _bad(key, "must be a finite number", value)
    if low is not None and value < low:
        raise _bad(key, f"must be >= {low}", value)
    return value


def _maybe(check, value: Any, key: str, **kwargs) -> Any:
    return None if value is None else check(value, key, **kwargs)


def _tensor(value: Any, key: str, kind: str = "", scalar: bool = False) -> torch.Tensor:
    """A tensor; `kind` "float" or "int" asks for that family of dtypes."""
    if not isinstance(value, torch.Tensor):
        raise _bad(key, "must be a tensor", value)
    if kind == "float" and not value.is_floating_point():
        raise _bad(key, "must be a floating-point tensor", value)
    integer = not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool)
    if kind == "int" and not integer:
        raise _bad(key, "must be an integer tensor", value)
    if scalar and value.ndim != 0:
        raise _bad(key, "must be a single number (a 0-d tensor)", value)
    return value


def validate(path: Path, state: dict[str, Any]) -> None:
    """Check a loaded checkpoint's whole structure; raise one CheckpointError sentence."""
    try:
        _check_state(state)
    except _Invalid as e:
        raise CheckpointError(f"{path}: not a usable mpt checkpoint: {e}") from None


def _check_state(state: dict[str, Any]) -> None:
    if state.get("format") != FORMAT:
        raise _bad("format", f"must be {FORMAT!r}", state.get("format"))
    unknown = [k for k in state if k not in _TOP_KEYS]
    if unknown:
        raise _Invalid(
            f"it holds a key this mpt does not know, {unknown[0]!r} (mpt adds keys only "
            "with a new format version)"
        )
    for name in _TOP_KEYS:
        if name not in state and name not in _OPTIONAL_TOP_KEYS:
            raise _Invalid(f"{name} is missing")
    _whole(state["version"], "version", low=1, high=VERSION)
    time_ = state.get("time")
    if time_ is not None and not 0 <= _number(time_, "time") <= _YEAR_9999:
        raise _bad("time", "must be a date in seconds since 1970", time_)
    _check_profile(state["profile"])
    weights = _check_weights(state["model"], "model")
    if state["best_weights"] is not None:
        _check_weights(state["best_weights"], "best_weights", like=weights)
    if state.get("ema") is not None:
        ema = _table(state["ema"], "ema")
        _check_weights(_field(ema, "weights", "ema"), "ema.weights", like=weights)
        _whole(_field(ema, "n_averaged", "ema"), "ema.n_averaged", high=_COUNT_LIMIT)
    groups = _check_optimizer(state["optimizer"], weights)
    _check_schedule(state["schedule"], groups)
    _check_scaler(state["scaler"])
    for name in ("early_stop", "best_checkpoint"):
        _check_tracker(state[name], name)
    metrics = _table(state["metrics"], "metrics")
    for name, value in metrics.items():
        if not isinstance(name, str):
            raise _bad("metrics", "must be named by strings", name)
        _maybe(_number, value, f"metrics.{name}", finite=False)
    world = _check_progress(state["progress"])
    if state.get("task") is not None:
        _check_task(state["task"])
    _check_rng(state["rng"], "rng", augment=True)
    ranks = state.get("ranks")
    if ranks is not None:
        _check_ranks(ranks, world)


def _check_task(value: Any) -> None:
    """What the model was trained for (deployment): kind, outputs, input shape, names."""
    task = _table(value, "task")
    if not isinstance(task.get("kind"), str):
        raise _bad("task.kind", "must be a string", task.get("kind"))
    _whole(_field(task, "outputs", "task"), "task.outputs", low=1)
    shape = _sequence(_field(task, "input_shape", "task"), "task.input_shape")
    for i, size in enumerate(shape):
        _whole(size, f"task.input_shape[{i}]", low=1)
    classes = task.get("classes")
    names = _sequence(classes, "task.classes") if classes is not None else []
    if not all(isinstance(c, str) for c in names):
        raise _bad("task.classes", "must be a list of names", classes)


def _check_profile(value: Any) -> None:
    """The saved profile must pass as a profile, but for what depends on this machine."""
    table = _table(value, "profile")
    try:
        profile_from_dict(table, "profile")
    except ProfileError as e:
        problems = [p for p in e.problems if not _about_this_machine(p.key, table)]
        if problems:
            first = problems[0]
            more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
            raise _Invalid(f"profile.{first.key}: {first.message}{more}") from None
    except Exception as e:  # noqa: BLE001 - values no TOML file can hold (tensors, ...)
        raise _Invalid(f"profile cannot be read as a profile ({type(e).__name__})") from None


def _about_this_machine(key: str, profile: dict) -> bool:
    if key not in _MACHINE_KEYS:
        return False
    section, _, name = key.partition(".")
    value = profile.get(section, {}).get(name)
    return _check_value(FIELD_BY_PATH[key], value)[1] is None  # its type is right


def _check_weights(value: Any, key: str, like: dict | None = None) -> dict:
    weights = _table(value, key)
    if not weights:
        raise _Invalid(f"{key} holds no tensors (the model's weights belong there)")
    for name, tensor in weights.items():
        if not isinstance(name, str):
            raise _bad(key, "must name its tensors by strings", name)
        _tensor(tensor, f"{key}[{name!r}]")
    if like is not None:
        for name in like.keys() ^ weights.keys():
            where = "model" if name in like else key
            raise _Invalid(f"{key} and model differ: only {where} holds {name!r}")
        for name, tensor in weights.items():
            if tensor.shape != like[name].shape:
                raise _bad(
                    f"{key}[{name!r}]", f"must have model's shape {list(like[name].shape)}", tensor
                )
    return weights


def _check_optimizer(value: Any, weights: dict) -> list:
    optimizer = _table(value, "optimizer")
    groups = _sequence(_field(optimizer, "param_groups", "optimizer"), "optimizer.param_groups")
    if not groups:
        raise _Invalid("optimizer.param_groups holds no parameter group")
    ids: list[int] = []
    for i, group in enumerate(groups):
        key = f"optimizer.param_groups[{i}]"
        _table(group, key)
        params = _sequence(_field(group, "params", key), f"{key}.params")
        if not params:
            raise _Invalid(f"{key}.params is empty")
        ids += [_whole(p, f"{key}.params[{j}]") for j, p in enumerate(params)]
        _number(_field(group, "lr", key), f"{key}.lr", low=0)
    if len(set(ids)) != len(ids):
        raise _Invalid("optimizer.param_groups names a parameter twice")
    if len(ids) > len(weights):
        raise _Invalid(
            f"optimizer.param_groups holds {len(ids)} parameters, more than the "
            f"{len(weights)} tensors of model"
        )
    state = _table(_field(optimizer, "state", "optimizer"), "optimizer.state")
    for pid, entry in state.items():
        key = f"optimizer.state[{pid!r}]"
        if pid not in ids:
            raise _Invalid(f"{key} belongs to no parameter of optimizer.param_groups")
        for name, item in _table(entry, key).items():
            if not isinstance(item, torch.Tensor):
                _number(item, f"{key}.{name}", finite=False)
    return list(groups)


def _check_schedule(value: Any, groups: list) -> None:
    schedule = _table(value, "schedule")
    per_step = _table(_field(schedule, "per_step", "schedule"), "schedule.per_step")
    if "last_epoch" in per_step:
        _whole(per_step["last_epoch"], "schedule.per_step.last_epoch", low=-1)
    for name in ("base_lrs", "_last_lr"):
        if name in per_step:
            lrs = _sequence(per_step[name], f"schedule.per_step.{name}")
            if len(lrs) != len(groups):
                raise _bad(
                    f"schedule.per_step.{name}",
                    f"must hold one rate per optimizer group ({len(groups)})",
                    lrs,
                )
            for i, lr in enumerate(lrs):
                _number(lr, f"schedule.per_step.{name}[{i}]", low=0)
    if "plateau" in schedule:
        _table(schedule["plateau"], "schedule.plateau")


def _check_scaler(value: Any) -> None:
    if value is None:
        return
    scaler = _table(value, "scaler")
    if "scale" in scaler:
        _number(scaler["scale"], "scaler.scale", low=0)
    if "_growth_tracker" in scaler:
        _whole(scaler["_growth_tracker"], "scaler._growth_tracker")


def _check_tracker(value: Any, key: str) -> None:
    tracker = _table(value, key)
    _maybe(_number, _field(tracker, "best", key), f"{key}.best", finite=False)
    _maybe(_whole, _field(tracker, "best_step", key), f"{key}.best_step")
    _whole(_field(tracker, "wait", key), f"{key}.wait")


def _check_progress(value: Any) -> int:
    """Check `progress`; return the world size it was written with."""
    progress = _table(value, "progress")
    step = _whole(_field(progress, "step", "progress"), "progress.step")
    # Every finished epoch took at least one optimizer step.
    _whole(_field(progress, "epochs_done", "progress"), "progress.epochs_done", high=step)
    for name in ("group", "events", "epoch_samples", "window_samples"):
        _whole(_field(progress, name, "progress"), f"progress.{name}")
    _check_sums(progress, "progress")
    for name in ("skipped", "skip_streak"):
        _tensor(_field(progress, name, "progress"), f"progress.{name}", "int", scalar=True)
    best = _field(progress, "best_val_acc", "progress")
    _maybe(_number, best, "progress.best_val_acc", finite=False)
    return _whole(progress.get("world_size", 1), "progress.world_size", low=1, high=1_000_000)


def _check_sums(table: dict, key: str) -> None:
    for name in ("epoch_loss", "window_loss"):
        _tensor(_field(table, name, key), f"{key}.{name}", "float", scalar=True)
    # the task's train-metric sums: classification's correct count, a vector for regression
    _tensor(_field(table, "epoch_correct", key), f"{key}.epoch_correct")
    for name in ("epoch_samples", "window_samples"):
        _whole(_field(table, name, key), f"{key}.{name}")


def _check_rng(value: Any, key: str, augment: bool = False) -> None:
    """Each random stream, set on a throwaway generator: exactly what resuming will do."""
    rng = _table(value, key)
    try:
        random.Random().setstate(_field(rng, "python", key))
    except _Invalid:
        raise
    except Exception:  # noqa: BLE001 - random raises TypeError or ValueError
        raise _bad(f"{key}.python", "is not a Python random state", rng["python"]) from None
    numpy = _sequence(_field(rng, "numpy", key), f"{key}.numpy")
    try:
        kind, keys, *rest = numpy
        np.random.RandomState().set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    except Exception:  # noqa: BLE001 - numpy raises ValueError, TypeError, OverflowError
        raise _bad(f"{key}.numpy", "is not a numpy random state", numpy) from None
    _generator_state(_field(rng, "torch", key), f"{key}.torch")
    for i, state in enumerate(_sequence(_field(rng, "cuda", key), f"{key}.cuda")):
        _tensor(state, f"{key}.cuda[{i}]", "int")
    if augment:
        _maybe(_tensor, _field(rng, "augment", key), f"{key}.augment", kind="int")


def _generator_state(value: Any, key: str) -> None:
    _tensor(value, key, "int")
    try:
        torch.Generator().set_state(value)
    except Exception:  # noqa: BLE001 - torch raises RuntimeError for a wrong size or dtype
        raise _bad(key, "is not a torch random state", value) from None


def _check_ranks(value: Any, world: int) -> None:
    ranks = _sequence(value, "ranks")
    if len(ranks) != world:
        raise _bad("ranks", f"must hold one entry per process (progress.world_size {world})", ranks)
    for i, rank in enumerate(ranks):
        key = f"ranks[{i}]"
        _check_sums(_table(rank, key), key)
        _check_rng(_field(rank, "rng", key), f"{key}.rng")


# ---- restoring into live objects: what only the built model can tell ----


def restore_weights(model: torch.nn.Module, weights: dict, path: Path, built: str) -> None:
    """Load `weights` into `model`, or one sentence naming the first key that does not fit.

    `built` says what the model was built as, e.g. "model.arch 'mlp' for this data".
    """
    own = model.state_dict()
    problem = None
    for name in own.keys() ^ weights.keys():
        holder = "the checkpoint" if name in weights else "the model"
        problem = f"only {holder} has {name!r}"
        break
    for name, tensor in weights.items():
        if problem is None and tensor.shape != own[name].shape:
            problem = (
                f"model[{name!r}] has shape {list(tensor.shape)}, the model needs "
                f"{list(own[name].shape)}"
            )
    if problem is None:
        try:
            model.load_state_dict(weights)
        except Exception as e:  # noqa: BLE001 - a dtype torch cannot copy, and such
            problem = _first_line(e)
    if problem is not None:
        raise CheckpointError(f"{path}: the weights do not fit {built} ({problem})")


def restore_optimizer(optimizer: torch.optim.Optimizer, saved: dict, path: Path) -> None:
    """Load the optimizer's state, checking each group's size and each state tensor's
    shape against the live parameters (torch would only fail at the next step)."""
    live = optimizer.param_groups
    groups = saved["param_groups"]
    if len(groups) != len(live):
        raise CheckpointError(
            f"{path}: not a usable mpt checkpoint: optimizer.param_groups holds "
            f"{len(groups)} group(s), the optimizer has {len(live)}"
        )
    params = {}
    for i, (group, own) in enumerate(zip(groups, live, strict=True)):
        if len(group["params"]) != len(own["params"]):
            raise CheckpointError(
                f"{path}: not a usable mpt checkpoint: optimizer.param_groups[{i}] holds "
                f"{len(group['params'])} parameters, the model has {len(own['params'])}"
            )
        params.update(zip(group["params"], own["params"], strict=True))
    for pid, entry in saved["state"].items():
        for name, item in entry.items():
            if not isinstance(item, torch.Tensor):
                continue
            shape = params[pid].shape
            # Every state tensor has its parameter's shape, but the step count.
            if item.ndim != 0 if name == "step" else item.shape != shape:
                need = "a single number" if name == "step" else f"its parameter's {list(shape)}"
                raise CheckpointError(
                    f"{path}: not a usable mpt checkpoint: optimizer.state[{pid}].{name} has "
                    f"shape {list(item.shape)}, not {need}"
                )
    for i, (group, own) in enumerate(zip(groups, live, strict=True)):
        check_like(path, group, own, f"optimizer.param_groups[{i}]")
    with restoring(path, "optimizer"):
        optimizer.load_state_dict(saved)


def check_like(path: Path, saved: Any, live: Any, key: str) -> None:
    """Each value `saved` shares with the live object's own state dict `live` must be of
    its kind (a number, a flag, a list of that length, a table like it): torch's loaders
    take any value, and the step after the resume would fail on it."""
    problem = _unlike(saved, live, key)
    if problem is not None:
        raise CheckpointError(f"{path}: not a usable mpt checkpoint: {problem}")


def _kind(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return "flag"  # torch's optional switches (foreach, fused) are None or a bool
    if isinstance(value, int | float) or (isinstance(value, torch.Tensor) and value.ndim == 0):
        return "number"
    if isinstance(value, torch.Tensor):
        return "tensor"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, dict):
        return "table"
    return type(value).__name__


_KIND_TEXT = {"flag": "true, false or None", "number": "a number", "list": "a list",
              "table": "a table", "tensor": "a tensor"}  # fmt: skip


def _unlike(saved: Any, live: Any, key: str) -> str | None:
    kind = _kind(live)
    if _kind(saved) != kind:
        need = _KIND_TEXT.get(kind, f"a {kind}")
        return f"{key} must be {need}, as this run's (got {_what(saved)})"
    if kind == "list" and len(saved) != len(live):
        return f"{key} must hold {len(live)} values, as this run's (got {_what(saved)})"
    pairs = []
    if kind == "table":
        pairs = [(saved[k], live[k], f"{key}.{k}") for k in saved if k in live and k != "params"]
    elif kind == "list":
        pairs = [(a, b, f"{key}[{i}]") for i, (a, b) in enumerate(zip(saved, live, strict=True))]
    for a, b, where in pairs:
        if callable(b) and not isinstance(b, torch.Tensor):
            continue  # a function the live object holds (LambdaLR's), rebuilt on load
        problem = _unlike(a, b, where)
        if problem is not None:
            return problem
    return None


@contextlib.contextmanager
def restoring(path: Path, key: str) -> Iterator[None]:
    """Turn a failure to restore `key` into one sentence naming the file and the key."""
    try:
        yield
    except MptError:
        raise
    except Exception as e:  # noqa: BLE001 - torch's and the engine's own loaders
        raise CheckpointError(
            f"{path}: not a usable mpt checkpoint: {key} cannot be restored ({_first_line(e)})"
        ) from None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    first = text.splitlines()[0] if text else ""
    return f"{type(error).__name__}: {first[:200]}" if first else type(error).__name__


# ---- consent: code named by a checkpoint runs only when the user says so ----


def require_consent(
    path: Path, state: dict[str, Any], how: str, keys: tuple[str, ...] = CODE_KEYS
) -> None:
    """Refuse a checkpoint whose profile would import code (of `keys`: an export builds
    only the model), unless the caller has the user's consent (then it does not call
    this). `how`: how the user gives it."""
    code = imported_code(state["profile"], keys)
    if code is not None:
        raise CheckpointError(
            f"{path}: its profile imports code {code!r}; mpt runs code named by a "
            f"checkpoint only with {how}"
        )


def restore_training(
    path: Path,
    state: dict[str, Any],
    profile: Profile,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    schedule,
    scaler: torch.amp.GradScaler | None,
) -> None:
    """Load a checkpoint's model, optimizer, schedule and GradScaler into the ones built
    for `profile`. `load` checked the structure; what only the built objects can tell is
    checked here, each failure one sentence naming the file and the key. A hyper-parameter
    the resume changes (lr aside: the schedule carries it) replaces the saved one."""
    built = f"model.arch {profile.model.arch!r} built for this data"
    restore_weights(model, state["model"], path, built)
    restore_optimizer(optimizer, state["optimizer"], path)
    defaults = Profile().to_dict()["optim"]
    old, new = {**defaults, **state["profile"].get("optim", {})}, profile.to_dict()["optim"]
    for key in (k for k in new if k not in ("name", "lr") and old.get(k) != new[k]):
        for group in optimizer.param_groups:  # a hyper-parameter the resume changes
            if key in group:
                group[key] = tuple(new[key]) if key == "betas" else new[key]
    check_like(path, state["schedule"], schedule.state_dict(), "schedule")
    with restoring(path, "schedule"):
        schedule.load_state_dict(state["schedule"], old_lr=old["lr"], new_lr=profile.optim.lr)
    if scaler is not None and state["scaler"]:
        check_like(path, state["scaler"], scaler.state_dict(), "scaler")
        with restoring(path, "scaler"):
            scaler.load_state_dict(state["scaler"])
