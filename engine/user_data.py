"""Datasets from the user's own code: data.dataset = "package.module:function".

The factory is called with data.options as keyword arguments and returns (train, val) or
{"train": ..., "val": ...}; each split is a map-style torch Dataset of (x, y) items or an
(x, y) pair of tensors or numpy arrays, and val may be None (data.val_fraction then holds
some of train out, in engine/data.py). Everything is checked up front: the targets
against task.kind, the inputs' shapes. When the inputs fit in memory they are collated
once into one tensor, and from then on take the built-in datasets' cached path; else
engine/data.py's DatasetInputs reads them per sample on the streamed path. Whatever is
wrong becomes one DataError sentence naming data.dataset.

Inputs: float64 becomes float32 (the model's dtype); uint8 samples (H, W) get a channel,
(C, H, W) uint8 samples are images; anything else is used as it is. Targets by kind:
classification int64 class indices (N,), multilabel float32 0/1 (N, labels), regression
float32 (N, targets).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from engine.errors import DataError
from engine.memory import cache_fits, format_bytes, host_memory_free, too_big
from engine.profile import DataSection
from engine.user_code import call_user, import_callable, where_raised

KEY = "data.dataset"
_RETURN = (
    'return (train, val) or {"train": ..., "val": ...}, each a map-style Dataset of (x, y) '
    "items or an (x, y) pair of tensors (val may be None)"
)
_USUAL_CHANNELS = (1, 3, 4)  # grey, RGB, RGBA


@dataclass
class UserSplit:
    """One split as the factory gave it, checked."""

    x: torch.Tensor | None  # the inputs collated (N, ...), or None: read per sample
    y: torch.Tensor  # the targets by task.kind
    dataset: Any = None  # the user's Dataset, when x is None
    sample: tuple[int, ...] = ()  # one input's shape and dtype, when x is None
    dtype: torch.dtype | None = None
    affine: tuple[torch.Tensor, torch.Tensor] | None = None  # x None: data.mean/std per sample


@dataclass
class UserData:
    train: UserSplit
    val: UserSplit | None
    classes: list[str] | None  # the train Dataset's `classes`, if it has them
    mean: list[float] | None = None  # data.mean/std, when applied here to float inputs
    std: list[float] | None = None


def load_factory(cfg: DataSection, kind: str) -> UserData:
    """Call the factory data.dataset names and check what it returns (see the module)."""
    src = f"{KEY} {cfg.dataset!r}"
    factory = import_callable(cfg.dataset, KEY, DataError)
    parts = _unpack(call_user(factory, KEY, cfg.dataset, DataError, **cfg.options), src)
    sizes = {name: _size(part, name, src) for name, part in parts.items() if part is not None}
    if sizes["train"] == 0:
        raise DataError(f"{src}: the training split is empty")
    datasets = [name for name, n in sizes.items() if n and _is_dataset(parts[name])]
    firsts = {name: read_item(parts[name], 0, src, name) for name in datasets}
    stream = _streams(cfg, src, [(firsts[name][0], sizes[name]) for name in datasets])
    splits: dict[str, UserSplit | None] = {"val": None}  # an empty val split: none
    for name in sizes:
        if name in datasets:
            first, n = firsts[name], sizes[name]
            splits[name] = _from_dataset(parts[name], n, first, stream, kind, src, name)
        elif sizes[name]:
            splits[name] = _from_pair(parts[name], kind, src, name)
    train, val = splits["train"], splits["val"]
    if val is not None:
        _require_same_shapes(train, val, kind, src)
    classes = _classes(parts["train"], src)  # (a pair has none; a TensorDataset may)
    sample, dtype = _sample(train)
    _require_images_for_augments(cfg, sample, src)
    if not cfg.mean or (dtype == torch.uint8 and len(sample) == 3):
        return UserData(train, val, classes)  # (images: normalised per batch, engine/data.py)
    _require_normalisable(cfg, sample, dtype, src)
    val = _normalised(val, cfg) if val is not None else None
    return UserData(_normalised(train, cfg), val, classes, list(cfg.mean), list(cfg.std))


def _unpack(made: Any, src: str) -> dict[str, Any]:
    """The factory's return value as {"train": ..., "val": ...} (val None when not given)."""
    if isinstance(made, dict):
        unknown = sorted(str(k) for k in made if k not in ("train", "val"))
        if unknown or "train" not in made:
            raise DataError(
                f"{src} returned a dict with keys {sorted(map(str, made))}; it needs "
                '"train" and may have "val", nothing else'
            )
        parts = {"train": made["train"], "val": made.get("val")}
    elif isinstance(made, tuple | list) and len(made) == 2:
        if all(isinstance(v, torch.Tensor | np.ndarray) for v in made):
            raise DataError(
                f"{src} returned one (x, y) pair of arrays, not (train, val); return "
                "((x, y), None) to hold data.val_fraction of it out for validation"
            )
        parts = {"train": made[0], "val": made[1]}
    else:
        raise DataError(f"{src} returned {_describe(made)}; {_RETURN}")
    for name, part in parts.items():
        if part is None and name == "train":
            raise DataError(f"{src} returned no train split (None); {_RETURN}")
        if part is not None and not (_is_pair(part) or _is_dataset(part)):
            raise DataError(f"{src}: its {name} split is {_describe(part)}; {_RETURN}")
    return parts


def _describe(value: Any) -> str:
    if isinstance(value, tuple | list):
        inner = ", ".join(type(v).__name__ for v in value[:3]) + (", ..." if len(value) > 3 else "")
        return f"a {type(value).__name__} of {len(value)} ({inner})"
    if value is None:
        return "None"
    name = type(value).__name__
    return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}"


def _is_pair(part: Any) -> bool:
    if isinstance(part, torch.utils.data.TensorDataset) and len(part.tensors) == 2:
        return True  # its two tensors are an (x, y) pair: no need to read it item by item
    return (
        isinstance(part, tuple | list)
        and len(part) == 2
        and all(isinstance(v, torch.Tensor | np.ndarray) for v in part)
    )


def _is_dataset(part: Any) -> bool:
    """A map-style dataset: items by index and a length (a torch Dataset, or a list)."""
    if _is_pair(part) or isinstance(part, torch.utils.data.IterableDataset):
        return False
    return hasattr(part, "__getitem__") and hasattr(part, "__len__")


def _size(part: Any, name: str, src: str) -> int:
    """The samples of a split: a pair's x length, a Dataset's len()."""
    if _is_pair(part):
        x, _ = part.tensors if isinstance(part, torch.utils.data.TensorDataset) else part
        return len(x)
    try:
        return len(part)
    except Exception as e:  # noqa: BLE001 - user code
        raise DataError(
            f"{src}: len() of its {name} Dataset raised {type(e).__name__}: {e} ({where_raised(e)})"
        ) from None


def read_item(dataset: Any, i: int, src: str, name: str) -> tuple[torch.Tensor, Any]:
    """Item `i` of a user's Dataset as (x as an input tensor, y as it came)."""
    x, y = _item(dataset, i, src, name)
    return as_input(x, src, f"{name} item {i}'s x"), y


def _item(dataset: Any, i: int, src: str, name: str) -> tuple[Any, Any]:
    """Item `i` of a user's Dataset as it came, which must be an (x, y) pair."""
    try:
        item = dataset[i]
    except Exception as e:  # noqa: BLE001 - user code
        raise DataError(
            f"{src}: reading {name} item {i} raised {type(e).__name__}: {e} ({where_raised(e)})"
        ) from None
    if not (isinstance(item, tuple | list) and len(item) == 2):
        raise DataError(
            f"{src}: {name} item {i} is {_describe(item)}, not an (x, y) pair; return "
            "(input, target) from the Dataset's __getitem__"
        )
    return item[0], item[1]


def read_input(dataset: Any, i: int, sample: tuple[int, ...], src: str, name: str) -> torch.Tensor:
    """Item `i`'s x, which must have the shape `sample` of item 0's (the streamed path)."""
    x, _ = read_item(dataset, i, src, name)
    _require_shape(x, sample, i, src, name)
    return x


def _require_shape(x: torch.Tensor, sample: tuple[int, ...], i: int, src: str, name: str) -> None:
    if tuple(x.shape) != sample:
        raise DataError(
            f"{src}: {name} item {i}'s x has shape {tuple(x.shape)} but item 0's {sample}; "
            "every x must have the same shape"
        )


def as_input(x: Any, src: str, what: str, batch: bool = False) -> torch.Tensor:
    """An input (one sample, or a `batch` of them) as a tensor: float64 as float32, uint8
    (H, W) images with their channel added; channels-last uint8 images refused."""
    if not isinstance(x, torch.Tensor | np.ndarray):
        hint = ""
        if type(x).__module__.startswith("PIL"):
            hint = ", e.g. with the transform torchvision.transforms.PILToTensor()"
        raise DataError(f"{src}: {what} is {_describe(x)}, not a tensor or numpy array{hint}")
    x = _numbers(x, src, what)
    if x.dtype == torch.float64:
        x = x.float()
    dims = x.ndim - batch
    if x.dtype == torch.uint8 and dims == 2:
        x = x.unsqueeze(int(batch))  # (H, W) grey images: one channel
    elif x.dtype == torch.uint8 and dims == 3:
        c, last = x.shape[batch], x.shape[-1]
        if last in _USUAL_CHANNELS and c not in _USUAL_CHANNELS:
            order = "x.permute(0, 3, 1, 2)" if batch else "x.permute(2, 0, 1)"
            raise DataError(
                f"{src}: {what} looks like channels-last images {tuple(x.shape)}; images "
                f"are (C, H, W), e.g. {order}"
            )
    if dims == 0:
        fix = "x[:, None]" if batch else "x.reshape(1)"
        raise DataError(f"{src}: {what} holds one number per sample; give it a feature axis: {fix}")
    return x


def _numbers(value: torch.Tensor | np.ndarray, src: str, what: str) -> torch.Tensor:
    """A tensor of numbers on the CPU; text and Python objects refused."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if value.dtype.kind not in "biuf":
        first = repr(value.flat[0].item()) if value.size else ""
        kind = "text" if value.dtype.kind in "US" else f"{value.dtype} values"
        raise DataError(f"{src}: {what} must be numbers, not {kind} ({first:.40}, ...)")
    if not value.flags.writeable or not value.dtype.isnative:
        value = value.astype(value.dtype.newbyteorder("="))  # a writable, native copy
    return torch.from_numpy(np.ascontiguousarray(value))


def _streams(cfg: DataSection, src: str, firsts: list[tuple[torch.Tensor, int]]) -> bool:
    """Whether the Datasets' inputs are read per sample (data.cache "stream", or under
    "auto" too big for memory: engine/memory.py's rule, from the first item x count)."""
    nbytes = sum(x.nbytes * n for x, n in firsts)
    if not firsts or cfg.cache == "stream":
        return bool(firsts)
    if cfg.cache == "auto":
        return not cache_fits(nbytes, host_memory_free(), unknown=True)
    over = too_big(nbytes)
    if over:
        count = sum(n for _, n in firsts)
        raise DataError(
            f"data.cache {cfg.cache!r}: collating the {count} samples of {src} needs "
            f'{format_bytes(nbytes)} of memory, {over}; set data.cache = "stream"'
        )
    return False


def _from_pair(part: Any, kind: str, src: str, name: str) -> UserSplit:
    x, y = part.tensors if isinstance(part, torch.utils.data.TensorDataset) else part
    x = as_input(x, src, f"the {name} x", batch=True)
    if len(x) != len(y):
        raise DataError(
            f"{src}: the {name} x holds {len(x)} samples but y {len(y)}; they must match"
        )
    return UserSplit(x, as_targets(y, kind, src, name))


def _from_dataset(
    dataset: Any, n: int, first: tuple, stream: bool, kind: str, src: str, name: str
) -> UserSplit:
    """A Dataset's targets (its `targets` when it has them for every item, else one pass
    over the items) and, unless streamed, its inputs collated into one tensor."""
    x0, y0 = first
    targets = getattr(dataset, "targets", None)
    if targets is not None and not _sized(targets, n):
        targets = None
    x, ys = None, [y0]
    if not stream:
        x, ys = _collate(dataset, n, first, src, name)
    elif targets is None:  # the targets from one pass over the items (every x checked)
        for i in range(1, n):
            xi, yi = read_item(dataset, i, src, name)
            _require_shape(xi, tuple(x0.shape), i, src, name)
            ys.append(yi)
    y = as_targets(_stack_targets(ys, src, name) if targets is None else targets, kind, src, name)
    return UserSplit(x, y, dataset, tuple(x0.shape), x0.dtype)


# Items collated a chunk at a time: one stack and one conversion a chunk (not a batch's
# default_collate per step), while memory holds at most one chunk of them twice.
_CHUNK = 1024


def _collate(dataset: Any, n: int, first: tuple, src: str, name: str) -> tuple[torch.Tensor, list]:
    """Every item's x in one tensor (N, ...) and the items' y, in one pass."""
    x0, y0 = first
    out = torch.empty((n, *x0.shape), dtype=x0.dtype)
    out[0] = x0
    ys = [y0]
    for start in range(1, n, _CHUNK):
        items = [_item(dataset, i, src, name) for i in range(start, min(n, start + _CHUNK))]
        ys += [y for _, y in items]
        xs, into = [x for x, _ in items], out[start : start + len(items)]
        if not _stacked_into(xs, into):
            into.copy_(_stacked(xs, x0, start, src, name))
    return out, ys


def _stacked_into(xs: list[Any], out: torch.Tensor) -> bool:
    """Stack CPU tensors that need no conversion (x0's shape and dtype) straight into
    `out`: no temporary (twice as fast as stacking and copying); False if they do not fit."""
    shape = out.shape[1:]  # (checked here: stack would resize `out` to fit other shapes)
    if not all(type(x) is torch.Tensor and x.dtype == out.dtype and x.shape == shape for x in xs):
        return False
    try:
        with torch.no_grad():
            torch.stack(xs, out=out)
    except RuntimeError:  # e.g. tensors on a GPU
        return False
    return True


def _stacked(xs: list[Any], x0: torch.Tensor, start: int, src: str, name: str) -> torch.Tensor:
    """A chunk of items' x (items start...) as one input batch shaped and typed as x0: stacked
    and converted at once when they are alike, else item by item to name the one that is not."""
    kind = type(xs[0])
    if kind in (torch.Tensor, np.ndarray) and all(type(x) is kind for x in xs):
        try:
            batch = torch.stack(xs) if kind is torch.Tensor else np.stack(xs)
        except (RuntimeError, ValueError):
            batch = None  # shapes differ: found below
        if batch is not None:
            with contextlib.suppress(DataError):
                batch = as_input(batch, src, f"the {name} x", batch=True)
                if batch.shape[1:] == x0.shape and batch.dtype == x0.dtype:
                    return batch
    converted = []
    for i, x in enumerate(xs, start):
        converted.append(as_input(x, src, f"{name} item {i}'s x"))
        _require_shape(converted[-1], tuple(x0.shape), i, src, name)
    return torch.stack(converted)


def _sized(value: Any, n: int) -> bool:
    try:
        return len(value) == n
    except TypeError:
        return False


def _stack_targets(ys: list[Any], src: str, name: str) -> torch.Tensor:
    """The items' targets (numbers, arrays or tensors) as one tensor (N, ...)."""
    if isinstance(ys[0], int | float | bool | np.generic):
        array = np.asarray(ys)
        if array.dtype.kind in "biuf":
            return torch.from_numpy(array)
    parts = []
    for i, y in enumerate(ys):
        if not isinstance(y, torch.Tensor | np.ndarray | np.generic | int | float):
            what = "text" if isinstance(y, str) else _describe(y)
            raise DataError(
                f"{src}: {name} item {i}'s y is {what} ({y!r:.40}), not a number or a tensor "
                "of numbers; map class names to indices 0..K-1"
            )
        y = y if isinstance(y, torch.Tensor) else np.asarray(y)
        parts.append(_numbers(y, src, f"{name} item {i}'s y"))
        if parts[-1].shape != parts[0].shape:
            raise DataError(
                f"{src}: {name} item {i}'s y has shape {tuple(parts[-1].shape)} but item 0's "
                f"{tuple(parts[0].shape)}; every y must have the same shape"
            )
    return torch.stack(parts)


def as_targets(y: Any, kind: str, src: str, name: str) -> torch.Tensor:
    """The targets as task.kind needs them, or a DataError saying what to change."""
    if isinstance(y, list | tuple):
        y = np.asarray(y)
    if isinstance(y, np.ndarray) and y.dtype.kind in "USO" and kind == "classification":
        first = repr(y.flat[0].item()) if y.size else ""
        raise DataError(
            f"{src}: the {name} targets are text ({first}, ...); return class indices "
            "0..K-1, e.g. numpy.unique(y, return_inverse=True)[1]"
        )
    if not isinstance(y, torch.Tensor | np.ndarray):
        raise DataError(f"{src}: the {name} targets are {_describe(y)}, not a tensor or array")
    y = _numbers(y, src, f"the {name} targets")
    if y.ndim == 2 and y.shape[1] == 0:
        raise DataError(f"{src}: the {name} targets have shape {tuple(y.shape)}: none per sample")
    if kind == "classification":
        return _class_indices(y, src, name)
    if kind == "multilabel":
        return _label_rows(y, src, name)
    return _numeric_targets(y, src, name)


def _class_indices(y: torch.Tensor, src: str, name: str) -> torch.Tensor:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        rows = y.reshape(len(y), -1)
        zero_one = bool(((rows == 0) | (rows == 1)).all())
        one_hot = y.ndim == 2 and zero_one and bool((rows.sum(1) == 1).all())
        fix = "return class indices: y.argmax(1)" if one_hot else 'set task.kind = "multilabel"'
        what = "one-hot rows" if one_hot else "several values per sample"
        raise DataError(
            f"{src}: the {name} targets have shape {tuple(y.shape)}, {what}; classification "
            f"needs one class index per sample, shape (N,): {fix}"
        )
    if y.is_floating_point():
        raise DataError(
            f"{src}: the {name} targets are {str(y.dtype).removeprefix('torch.')}, not class "
            'indices; set task.kind = "regression" to predict numbers, or return class '
            "indices with y.long()"
        )
    if len(y) and int(y.min()) < 0:
        raise DataError(
            f"{src}: the {name} targets must be class indices 0..K-1, found {int(y.min())}"
        )
    return y.long()


def _label_rows(y: torch.Tensor, src: str, name: str) -> torch.Tensor:
    if y.ndim == 1:
        raise DataError(
            f"{src}: the {name} targets have shape {tuple(y.shape)}, one class index per "
            "sample; multilabel needs 0/1 rows (N, labels), e.g. "
            "torch.nn.functional.one_hot(y).float(), or y[:, None] for one yes/no label"
        )
    if y.ndim != 2:
        raise DataError(
            f"{src}: the {name} targets have shape {tuple(y.shape)}; multilabel needs 0/1 "
            "rows of shape (N, labels)"
        )
    bad = ~((y == 0) | (y == 1))
    if bool(bad.any()):
        i, j = (int(v) for v in bad.nonzero()[0])
        raise DataError(
            f"{src}: the {name} targets must be 0 or 1 for multilabel, but sample {i} has "
            f"{y[i, j].item()!r} for label {j}"
        )
    return y.float()


def _numeric_targets(y: torch.Tensor, src: str, name: str) -> torch.Tensor:
    if y.ndim == 1:
        y = y[:, None]  # one target per sample
    if y.ndim != 2:
        raise DataError(
            f"{src}: the {name} targets have shape {tuple(y.shape)}; regression needs "
            "(N,) or (N, targets)"
        )
    out = y.float()
    finite = torch.isfinite(out)
    if not bool(finite.all()):
        i, j = (int(v) for v in (~finite).nonzero()[0])
        value = y[i, j].item()
        as_f32 = "" if not math.isfinite(value) else " (too large for float32)"
        raise DataError(
            f"{src}: the {name} targets must be finite numbers, but sample {i} has "
            f"{value!r}{as_f32} for target {j}"
        )
    return out


def _sample(split: UserSplit) -> tuple[tuple[int, ...], torch.dtype]:
    """One input's shape and dtype."""
    if split.x is None:
        return split.sample, split.dtype
    return tuple(split.x.shape[1:]), split.x.dtype


def _require_images_for_augments(cfg: DataSection, sample: tuple[int, ...], src: str) -> None:
    """data.random_crop and data.hflip crop and flip images: samples (C, H, W)."""
    if len(sample) == 3:
        return
    for key, value, off in (("data.random_crop", cfg.random_crop, "0"),
                            ("data.hflip", cfg.hflip, "false")):  # fmt: skip
        if value:
            shown = "true" if value is True else value
            raise DataError(
                f"{key} = {shown} applies to images (samples of shape (C, H, W)), but the "
                f"samples of {src} have shape {sample}; set {key} = {off}"
            )


def _require_normalisable(
    cfg: DataSection, sample: tuple[int, ...], dtype: torch.dtype, src: str
) -> None:
    """data.mean/std fit float inputs: one value per channel (dim 1 of a batch)."""
    if not dtype.is_floating_point:
        raise DataError(
            f"data.mean applies to float inputs and uint8 images (C, H, W), but the inputs "
            f"of {src} are {str(dtype).removeprefix('torch.')} of shape {sample}; return "
            "them as floats (x.float()) or leave data.mean empty"
        )
    if len(cfg.mean) != sample[0]:
        raise DataError(
            f"data.mean has {len(cfg.mean)} values but the inputs of {src} have "
            f"{sample[0]} channel(s) (dim 1 of a batch: the features of (N, features) inputs)"
        )


def _normalised(split: UserSplit, cfg: DataSection) -> UserSplit:
    """(x - mean) / std per channel: once for collated inputs, else per sample as read
    (elementwise the same arithmetic, so both paths give the same values)."""
    sample, _ = _sample(split)
    view = (-1, *[1] * (len(sample) - 1))  # one sample's dim 0: a batch's dim 1
    mean, std = torch.tensor(cfg.mean).view(view), torch.tensor(cfg.std).view(view)
    if split.x is None:
        return replace(split, affine=(mean, std))
    return replace(split, x=(split.x - mean) / std)


def _require_same_shapes(train: UserSplit, val: UserSplit, kind: str, src: str) -> None:
    sample, val_sample = _sample(train)[0], _sample(val)[0]
    if sample != val_sample:
        raise DataError(
            f"{src}: the val inputs have shape {val_sample} per sample but the train "
            f"inputs {sample}; they must match"
        )
    if kind != "classification" and train.y.shape[1] != val.y.shape[1]:
        what = "labels" if kind == "multilabel" else "targets"
        raise DataError(
            f"{src}: the val split has {val.y.shape[1]} {what} per sample but the train "
            f"split {train.y.shape[1]}; they must match"
        )


def _classes(dataset: Any, src: str) -> list[str] | None:
    """The train Dataset's `classes`: a list of names (class or label names), or None."""
    classes = getattr(dataset, "classes", None)
    if classes is None:
        return None
    if isinstance(classes, str) or not isinstance(classes, list | tuple):
        raise DataError(
            f"{src}: its train Dataset's classes is {_describe(classes)}; make it a list of "
            "names, one per class (or label)"
        )
    return [str(c) for c in classes]


_NAMED = {"classification": "class", "multilabel": "label", "regression": "target"}


def require_named_outputs(classes: list[str] | None, outputs: int, kind: str, src: str) -> int:
    """The model's outputs given the train Dataset's `classes`: for classification one
    per name (the labels must fit), else exactly one name per label or target."""
    if classes is None:
        return outputs
    noun = _NAMED[kind]
    if kind == "classification":
        if len(classes) >= outputs:
            return len(classes)
        found = f"the labels reach {outputs - 1}"
    elif len(classes) == outputs:
        return outputs
    else:
        found = f"the targets have {outputs} per sample"
    raise DataError(
        f"{src}: its classes list {len(classes)} names but {found}; give one name per {noun}"
    )
