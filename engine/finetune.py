"""Fine-tuning: start from saved weights (model.pretrained) and train only part of the
model (model.freeze). The optimizer's per-prefix learning rates (optim.lr_mult) are in
engine/optim.py.

A fine-tuned model usually has a new head: its output layer has the data's outputs, not
the pretrained ones. Those weights are left out of the load, keep their fresh
initialisation, and a notice says so; every other difference between the file and the
model is an error naming model.pretrained, since loading half a model silently trains
something else than the user meant.

Frozen parameters get requires_grad False and stay out of the optimizer. Their batch-norm
layers stay in train mode, so their running statistics follow the new data: torchvision's
fine-tuning recipes do the same (they only set requires_grad), and it is what a model
trained on other images needs; a user who wants frozen statistics builds the model so.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import ModelError

_SHOWN = 5  # names listed in a message, at most, of each kind
# Prefixes the wrappers add to every key: DistributedDataParallel, torch.compile.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def trainable_parameters(model: nn.Module) -> int:
    """How many parameter elements the optimizer trains (requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def parameter_prefixes(model: nn.Module) -> list[str]:
    """The distinct first parts of the model's parameter names, in order ("conv1.", "fc.").
    A model with one top-level container goes one level deeper ("net.0.", "net.2.")."""
    names = [n for n, _ in model.named_parameters()]
    for depth in (1, 2):
        found = list(dict.fromkeys(".".join(n.split(".")[:depth]) + "." for n in names))
        if len(found) > 1:
            break
    return found


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
    return ", ".join(names[:_SHOWN]) + more


def freeze(model: nn.Module, prefixes: list[str]) -> tuple[int, int]:
    """Turn off requires_grad on every parameter whose name starts with one of `prefixes`;
    returns (trainable, total) parameter elements. A prefix that matches nothing, or
    freezing the whole model, is a ModelError naming model.freeze."""
    named = list(model.named_parameters())
    for prefix in prefixes:
        if not any(name.startswith(prefix) for name, _ in named):
            raise ModelError(
                f"model.freeze {prefix!r} matches no parameter; the model's parameter names "
                f"start with {_listed(parameter_prefixes(model))}"
            )
    for name, param in named:
        if name.startswith(tuple(prefixes)):
            param.requires_grad_(False)
    total = sum(p.numel() for _, p in named)
    trainable = trainable_parameters(model)
    if prefixes and trainable == 0:
        raise ModelError(
            f"model.freeze {prefixes} freezes every parameter of the model, so nothing would "
            f"train; leave at least its last layers ({parameter_prefixes(model)[-1]!r}) out"
        )
    return trainable, total


# ---- model.pretrained ----


def load_pretrained(model: nn.Module, path: str | Path, num_outputs: int) -> list[str]:
    """Load the weights in `path` into `model`; returns notices for the user.

    The file is a state_dict (torch.save or .safetensors), an mpt checkpoint (its "model"),
    or a dict holding one under "state_dict" or "model"; DDP's "module." and
    torch.compile's "_orig_mod." prefixes are dropped. An output layer sized for other
    outputs (the model's has `num_outputs`) is not loaded: the head starts fresh. A first
    convolution for 3 channels is adapted to the model's (summed for 1, as timm does).
    Anything else that does not fit is one ModelError listing the first few of each kind."""
    path = Path(path).expanduser()
    weights = _strip_wrappers(_state_dict_of(_read(path), path))
    own = model.state_dict()
    notices: list[str] = []
    head = _head_keys(own, weights, num_outputs)
    if head:
        before, after = int(weights[head[0]].shape[0]), num_outputs
        notices.append(
            f"model.pretrained: {', '.join(head)} not loaded ({before} -> {after} outputs): "
            "the head starts fresh"
        )
    stem = _first_conv_key(own, weights)
    if stem is not None:
        weights[stem], note = _adapt_channels(weights[stem], own[stem].shape[1])
        notices.append(f"model.pretrained: {stem} {note}")
    _require_fit(own, weights, head, path)
    loadable = {k: v for k, v in weights.items() if k not in head}
    try:
        model.load_state_dict(loadable, strict=False)
    except Exception as e:  # noqa: BLE001 - a dtype torch cannot copy, and such
        first = (str(e).strip().splitlines() or [""])[0]
        raise ModelError(f"model.pretrained {str(path)!r}: loading failed ({first})") from None
    return notices


def _read(path: Path) -> Any:
    """What the file holds: tensors only, never code (weights_only)."""
    where = f"model.pretrained {str(path)!r}"
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except ImportError:
        raise ModelError(
            f"{where}: reading .safetensors needs the safetensors package; pip install "
            "safetensors, or save the weights with torch.save"
        ) from None
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e):  # a class or function: loading runs its code
            raise ModelError(
                f"{where}: the file holds Python objects that need code to load (a whole "
                "model, not its weights); save model.state_dict() with torch.save instead"
            ) from None
        # (torch's own text goes on to advise weights_only=False: unsafe, never said here)
        raise ModelError(
            f"{where}: not a file torch.save wrote (it does not read as saved tensors)"
        ) from None
    except OSError as e:
        raise ModelError(f"{where}: cannot be read ({e.strerror or e})") from None
    except Exception as e:  # noqa: BLE001 - not a zip, not a pickle, truncated...
        raise ModelError(f"{where}: not a file torch.save wrote ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, dict)
        and bool(obj)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _state_dict_of(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The state_dict in what the file holds: itself, or its "state_dict" or "model"."""
    if _is_state_dict(obj):
        return dict(obj)
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):  # a training checkpoint; an mpt checkpoint
            if _is_state_dict(obj.get(key)):
                return dict(obj[key])
    raise ModelError(
        f"model.pretrained {str(path)!r}: holds no state_dict (a table of tensors by "
        "parameter name, itself or under 'state_dict' or 'model'); save model.state_dict()"
    )


def _strip_wrappers(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in _WRAPPER_PREFIXES:
        if all(k.startswith(prefix) for k in weights):
            weights = {k[len(prefix) :]: v for k, v in weights.items()}
    return weights


def _head_keys(own: dict, weights: dict, num_outputs: int) -> list[str]:
    """The output layer's keys: in both, differing only in the first size, which is the
    model's outputs on its side and one same count on the file's. Any other layer that
    changed width also changes the input of the layer after it, which _require_fit
    refuses: so these can only be the model's last layers (an auxiliary head included)."""
    found = [
        k
        for k, t in own.items()
        if k in weights
        and t.ndim >= 1
        and t.shape != weights[k].shape
        and t.ndim == weights[k].ndim
        and t.shape[0] == num_outputs
        and t.shape[1:] == weights[k].shape[1:]
    ]
    counts = {int(weights[k].shape[0]) for k in found}
    return found if len(counts) == 1 else []


def _first_conv_key(own: dict, weights: dict) -> str | None:
    """The first convolution's weight when the file's takes 3 channels and the model's
    others (a zoo model adapted to the data's channels): the only size that differs."""
    first = next((k for k, t in own.items() if t.ndim == 4), None)
    if first is None or first not in weights:
        return None
    mine, theirs = own[first].shape, weights[first].shape
    same_else = mine[0] == theirs[0] and mine[2:] == theirs[2:]
    return first if same_else and theirs[1] == 3 and mine[1] != 3 else None


def _adapt_channels(weight: torch.Tensor, channels: int) -> tuple[torch.Tensor, str]:
    """timm's adapt_input_conv: one channel sums the colour filters; more repeat them,
    scaled so that the layer's output keeps its size."""
    if channels == 1:
        return weight.sum(dim=1, keepdim=True), "adapted from 3 to 1 input channel (summed)"
    repeat = -(-channels // 3)
    adapted = weight.repeat(1, repeat, 1, 1)[:, :channels] * (3 / channels)
    return adapted, f"adapted from 3 to {channels} input channels (repeated)"


def _require_fit(own: dict, weights: dict, head: list[str], path: Path) -> None:
    """Every key in both, of the same shape (the head aside): else one sentence."""
    missing = [k for k in own if k not in weights and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in weights if k not in own]
    shapes = [
        f"{k} {list(weights[k].shape)} in the file, {list(own[k].shape)} in the model"
        for k in own
        if k in weights and k not in head and weights[k].shape != own[k].shape
    ]
    parts = []
    if missing:
        parts.append(f"missing from the file: {_listed(missing)}")
    if unexpected:
        parts.append(f"not in the model: {_listed(unexpected)}")
    if shapes:
        parts.append(f"other shapes: {_listed(shapes)}")
    if parts:
        raise ModelError(
            f"model.pretrained {str(path)!r} does not fit the model ({'; '.join(parts)}); "
            "point it at weights saved from the same architecture"
        )
