"""Models: `ARCHS` maps a name to a builder; "package.module:factory" names the user's own."""

from __future__ import annotations

import traceback

import torch
from torch import nn

from engine.errors import ModelError
from engine.memory import (
    TRAINING_COPIES,
    describe_allocation,
    format_bytes,
    is_out_of_memory,
    parameter_count,
    too_big,
)
from engine.precision import AUTOCAST_DTYPES, autocast
from engine.profile import ModelSection
from engine.user_code import import_callable


class MLP(nn.Module):
    """The tutorials' SimpleNet: flatten, hidden Linear+ReLU layers, a Linear classifier."""

    def __init__(self, in_features: int, hidden: list[int], num_classes: int, dropout: float):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        if dropout:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CNN(nn.Module):
    """The tutorials' small convnet: 3x3 conv+ReLU layers, a max-pool, a hidden Linear."""

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        channels: list[int],
        hidden: int,
        num_classes: int,
        dropout: float,
    ):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_shape[0]
        for out in channels:
            layers += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU()]
            c = out
        layers += [nn.MaxPool2d(2), nn.Flatten()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        self.features = nn.Sequential(*layers)
        flat = c * (in_shape[1] // 2) * (in_shape[2] // 2)
        head: list[nn.Module] = [nn.Linear(flat, hidden), nn.ReLU()]
        if dropout:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(hidden, num_classes))
        self.classifier = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_mlp(cfg: ModelSection, in_shape, num_classes):
    c, h, w = in_shape
    return MLP(c * h * w, cfg.hidden, num_classes, cfg.dropout)


def build_cnn(cfg: ModelSection, in_shape, num_classes):
    if in_shape[1] < 2 or in_shape[2] < 2:
        raise ModelError(f"model.arch 'cnn' needs images of at least 2x2, got {in_shape[1:]}")
    hidden = cfg.hidden[0] if cfg.hidden else 128
    return CNN(in_shape, cfg.channels, hidden, num_classes, cfg.dropout)


def build_resnet18(cfg: ModelSection, in_shape, num_classes):
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    if cfg.small_input:  # CIFAR-style stem: keep 32x32 inputs from shrinking to 1x1
        model.conv1 = nn.Conv2d(in_shape[0], 64, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_shape[0] != 3:
        model.conv1 = nn.Conv2d(in_shape[0], 64, 7, stride=2, padding=3, bias=False)
    if cfg.dropout:
        model.fc = nn.Sequential(nn.Dropout(cfg.dropout), model.fc)
    return model


ARCHS = {"mlp": build_mlp, "cnn": build_cnn, "resnet18": build_resnet18}


def build_model(
    cfg: ModelSection,
    in_shape: tuple[int, int, int],
    num_classes: int,
    device: torch.device | None = None,
) -> nn.Module:
    """Build the model the profile names; a user factory gets in_shape and num_classes.

    A built-in arch is first sized on the meta device and refused by key when it would not
    fit: its weights in the host's memory, and to train on `device` (None: not for training,
    e.g. an export) its weights, gradients and optimizer state in that device's memory."""
    if cfg.arch in ARCHS:
        require_room_for_model(cfg, in_shape, num_classes, device)
        return ARCHS[cfg.arch](cfg, in_shape, num_classes)
    factory = import_callable(cfg.arch, "model.arch", ModelError)
    try:
        model = factory(in_shape=tuple(in_shape), num_classes=num_classes)
    except Exception as e:  # noqa: BLE001 - user code
        if is_out_of_memory(e):
            raise ModelError(
                f"model.arch {cfg.arch!r}: the factory ran out of memory building the model "
                f"({describe_allocation(e)}); make the model smaller"
            ) from None
        where = traceback.extract_tb(e.__traceback__)[-1]
        raise ModelError(
            f"model.arch {cfg.arch!r}: the factory raised {type(e).__name__}: {e} "
            f"({where.filename}:{where.lineno})"
        ) from None
    if not isinstance(model, nn.Module):
        raise ModelError(
            f"model.arch {cfg.arch!r}: the factory must return a torch.nn.Module, "
            f"got {type(model).__name__}"
        )
    return model


# The profile keys that set a built-in arch's size, named when it is too big.
_SIZE_KEYS = {"mlp": ("hidden",), "cnn": ("channels", "hidden")}


def require_room_for_model(
    cfg: ModelSection, in_shape, num_classes: int, device: torch.device | None
) -> None:
    """Refuse a built-in model too big for the memory free: it is built on the CPU, so its
    weights must fit there; training on `device` needs room for four float32 copies."""
    count = parameter_count(lambda: ARCHS[cfg.arch](cfg, in_shape, num_classes))
    weights, training = count * 4, count * 4 * TRAINING_COPIES
    if device is not None and device.type == "cpu":
        nbytes, what = training, "to train (weights, gradients, optimizer state)"
        over = too_big(training)
    else:
        nbytes, what, over = weights, "for its weights", too_big(weights)
        if not over and device is not None and device.type == "cuda":
            nbytes, what = training, "to train (weights, gradients, optimizer state)"
            over = too_big(training, torch.cuda.mem_get_info(device)[0], where=str(device))
    if over:
        keys = [f"model.{k} {getattr(cfg, k)}" for k in _SIZE_KEYS.get(cfg.arch, ())]
        raise ModelError(
            f"{' and '.join(keys) or f'model.arch {cfg.arch!r}'}: the {cfg.arch} has "
            f"{count:,} parameters, {format_bytes(nbytes)} {what}, {over}; make the model "
            "smaller"
        )


def check_first_batch(model: nn.Module, sample: torch.Tensor, num_classes: int, arch: str) -> None:
    """Run one small batch forward and backward, as training will, so that a model that
    does not fit the data, or that the optimizer cannot train, fails before training.
    Leaves no trace: the random streams (dropout), the buffers (batch-norm statistics) and
    the gradients are as they were, so a run trains as if it had not been checked."""
    params = [t for t in model.parameters() if t.requires_grad]
    if not params:
        raise ModelError(
            f"model.arch {arch!r}: the model has no trainable parameters; create its layers "
            "in __init__ as attributes (self.fc = nn.Linear(...)) and leave requires_grad on"
        )
    buffers = [(b, b.clone()) for b in model.buffers()]
    devices = [sample.device] if sample.device.type == "cuda" else []
    model.train()
    try:
        with torch.random.fork_rng(devices=devices), torch.enable_grad():
            out = _forward(model, sample)
            _check_logits(out, sample, num_classes, arch)
            _check_gradients(out, params, arch)
    finally:
        for t in params:
            t.grad = None
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)


def _forward(model: nn.Module, sample: torch.Tensor):
    try:
        return model(sample)
    except Exception as e:  # noqa: BLE001 - user model code
        if is_out_of_memory(e):
            raise  # not the model's mistake: the run reports it with advice on memory
        raise ModelError(
            f"the model failed on a batch of shape {tuple(sample.shape)}: {type(e).__name__}: {e}"
        ) from None


def _check_logits(out, sample: torch.Tensor, num_classes: int, arch: str) -> None:
    """forward's result must be what cross_entropy takes: float logits (batch, classes)."""
    if not isinstance(out, torch.Tensor):
        raise ModelError(
            f"model.arch {arch!r}: forward must return one tensor of logits "
            f"(batch, num_classes); got {type(out).__name__}"
        )
    if not out.is_floating_point():
        raise ModelError(
            f"model.arch {arch!r}: forward must return floating-point logits; got a tensor "
            f"of {out.dtype} (leave argmax and rounding out of forward)"
        )
    want = (sample.shape[0], num_classes)
    if tuple(out.shape) != want:
        raise ModelError(
            f"the model's output has shape {tuple(out.shape)} but the data needs "
            f"{want} (batch, num_classes)"
        )


def _check_gradients(out: torch.Tensor, params: list[torch.Tensor], arch: str) -> None:
    """The loss must reach the parameters the optimizer will step."""
    if not out.requires_grad:
        raise ModelError(
            f"model.arch {arch!r}: the output is detached from the model's parameters "
            "(no grad_fn); leave .detach(), .item(), .numpy() and torch.no_grad() out of forward"
        )
    try:
        out.float().sum().backward()
    except torch.OutOfMemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - user model code (a custom autograd Function)
        raise ModelError(
            f"model.arch {arch!r}: backward through the model failed: {type(e).__name__}: {e}"
        ) from None
    if all(t.grad is None for t in params):
        raise ModelError(
            f"model.arch {arch!r}: the loss reaches none of the model's parameters; "
            "create the layers forward uses in __init__, not inside forward"
        )


def check_precision(model: nn.Module, sample: torch.Tensor, mode: str) -> None:
    """Run the first small batch again under autocast, so that a device or a model that
    cannot compute in fp16/bf16 fails before training, naming precision.mode."""
    if mode not in AUTOCAST_DTYPES:
        return
    device = sample.device.type
    other = '"bf16" or "fp32"' if mode == "fp16" else '"fp16" or "fp32"'
    if not torch.amp.is_autocast_available(device):
        raise ModelError(f'precision.mode {mode!r}: {device} has no autocast; use "fp32"')
    model.eval()
    try:
        with torch.no_grad(), autocast(device, mode):
            model(sample)
    except Exception as e:  # noqa: BLE001 - a kernel missing for this dtype on this device
        if is_out_of_memory(e):
            raise
        first_line = (str(e).strip().splitlines() or [""])[0]
        raise ModelError(
            f"precision.mode {mode!r}: the model cannot run in {mode} on {device} "
            f"({type(e).__name__}: {first_line}); use {other}"
        ) from None
    finally:
        model.train()
