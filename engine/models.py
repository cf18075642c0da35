"""Models: `ARCHS` maps a name to a builder; "package.module:factory" names the user's own."""

from __future__ import annotations

import difflib
import math
import traceback
from collections.abc import Callable

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
    return MLP(math.prod(in_shape), cfg.hidden, num_classes, cfg.dropout)  # images or features


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


# ---- the zoos: "torchvision:NAME" and "timm:NAME", built without their weights ----

# Keys mpt sets itself: the outputs come from the data, and nothing is ever downloaded.
_NO_DOWNLOAD = (
    "would download weights, and mpt never downloads; save them to a file once and point "
    "model.pretrained at it"
)
_SET_BY_MPT = {
    "num_classes": "is set from the data (its classes, labels or targets); leave it out",
    "in_chans": "is set from the data's channels; leave it out",
    "weights": _NO_DOWNLOAD,
    "weights_backbone": _NO_DOWNLOAD,
    "pretrained": _NO_DOWNLOAD,
    "checkpoint_path": "is model.pretrained's job; point model.pretrained at the file",
}

# Builders whose training-mode forward returns more than the logits unless told not to.
_TORCHVISION_DEFAULTS = {"googlenet": {"aux_logits": False}, "inception_v3": {"aux_logits": False}}


def require_image_input(arch: str, in_shape) -> None:
    if len(in_shape) != 3:
        raise ModelError(
            f"model.arch {arch!r} takes images (C, H, W), but the data's samples have shape "
            f"{tuple(in_shape)}; use mlp or your own factory for such data"
        )


def _unknown(arch: str, name: str, known: list[str], where: str) -> ModelError:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ModelError(f"model.arch {arch!r}: {where} has no image classifier {name!r}{hint}")


def _zoo_call(cfg: ModelSection, build, **kwargs) -> nn.Module:
    """build(**kwargs, **model.options); a mistake in the options is a sentence naming them."""
    for key in cfg.options:
        if key in _SET_BY_MPT:
            raise ModelError(f"model.options {key!r} {_SET_BY_MPT[key]}")
    try:
        return build(**kwargs, **cfg.options)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - an option the builder does not take, or a value
        if is_out_of_memory(e) or torch.get_default_device().type == "meta":
            raise  # (on the meta device: the size check gives up, the real build tells)
        first = (str(e).strip().splitlines() or [""])[0]
        if not cfg.options:
            raise ModelError(
                f"model.arch {cfg.arch!r}: building it failed ({type(e).__name__}: {first})"
            ) from None
        raise ModelError(
            f"model.options {cfg.options}: model.arch {cfg.arch!r} cannot be built with them "
            f"({type(e).__name__}: {first}); remove or correct them"
        ) from None


def build_torchvision(cfg: ModelSection, name: str, in_shape, num_classes: int) -> nn.Module:
    """Any image classifier of torchvision.models, its first convolution replaced by one
    taking the data's channels when they are not 3."""
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)  # classifiers only
    if name not in known:
        raise _unknown(cfg.arch, name, known, "torchvision.models")
    defaults = _TORCHVISION_DEFAULTS.get(name, {})
    defaults = {k: v for k, v in defaults.items() if k not in cfg.options}
    model = _zoo_call(
        cfg,
        torchvision.models.get_model,
        name=name,
        weights=None,
        num_classes=num_classes,
        **defaults,
    )
    if in_shape[0] != 3:
        adapt_first_conv(model, in_shape[0], cfg.arch)
    return model


def adapt_first_conv(model: nn.Module, channels: int, arch: str) -> None:
    """Replace the model's first Conv2d by one taking `channels` input channels, its other
    hyper-parameters kept (a fresh, default-initialised weight)."""
    first = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    if first is None or first[1].groups != 1 or first[1].in_channels != 3:
        raise ModelError(
            f"model.arch {arch!r} takes 3-channel images and has no plain first Conv2d to "
            f"adapt to {channels} channels; use 3-channel data or your own factory"
        )
    path, conv = first
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name)
    new = nn.Conv2d(
        channels,
        conv.out_channels,
        conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
    )
    setattr(parent, attr, new)


def build_timm(cfg: ModelSection, name: str, in_shape, num_classes: int) -> nn.Module:
    """Any timm model, built for the data's channels (timm's in_chans)."""
    try:
        import timm
    except ImportError:
        raise ModelError(
            f"model.arch {cfg.arch!r} needs the timm package, which is not installed; "
            "pip install 'mpt[timm]'"
        ) from None
    if not timm.is_model(name):
        raise _unknown(cfg.arch, name, timm.list_models(), "timm")
    return _zoo_call(
        cfg,
        timm.create_model,
        model_name=name,
        pretrained=False,
        num_classes=num_classes,
        in_chans=in_shape[0],
    )


ZOOS = {"torchvision": build_torchvision, "timm": build_timm}


def build_model(
    cfg: ModelSection,
    in_shape: tuple[int, int, int],
    num_classes: int,
    device: torch.device | None = None,
) -> nn.Module:
    """Build the model the profile names; a zoo builder or a user factory gets in_shape
    and num_classes (the model's outputs).

    A built-in or zoo arch is first sized on the meta device and refused by key when it
    would not fit: its weights in the host's memory, and to train on `device` (None: not
    for training, e.g. an export) its weights, gradients and optimizer state in that
    device's memory. A zoo model never downloads anything (weights=None, pretrained=False):
    model.pretrained loads published weights from a local file."""
    if cfg.arch in ARCHS:
        require_room_for_model(cfg, in_shape, num_classes, device)
        return ARCHS[cfg.arch](cfg, in_shape, num_classes)
    zoo, _, name = cfg.arch.partition(":")
    if zoo in ZOOS:
        require_image_input(cfg.arch, in_shape)
        builder = ZOOS[zoo]
        require_room_for_model(
            cfg, in_shape, num_classes, device, lambda: builder(cfg, name, in_shape, num_classes)
        )
        return builder(cfg, name, in_shape, num_classes)
    factory = import_callable(cfg.arch, "model.arch", ModelError)
    for key in {"in_shape", "num_classes"} & set(cfg.options):
        raise ModelError(f"model.options {key!r} is set from the data; leave it out")
    try:
        model = factory(in_shape=tuple(in_shape), num_classes=num_classes, **cfg.options)
    except Exception as e:  # noqa: BLE001 - user code
        if is_out_of_memory(e):
            raise ModelError(
                f"model.arch {cfg.arch!r}: the factory ran out of memory building the model "
                f"({describe_allocation(e)}); make the model smaller"
            ) from None
        if isinstance(e, TypeError) and cfg.options and e.__traceback__.tb_next is None:
            # raised by the call itself: the factory's signature does not take the options
            raise ModelError(
                f"model.options {cfg.options}: the factory {cfg.arch!r} does not take them "
                f"({e}); remove them or add them to its parameters"
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
    cfg: ModelSection, in_shape, num_classes: int, device: torch.device | None, build=None
) -> None:
    """Refuse a model too big for the memory free: it is built on the CPU, so its weights
    must fit there; training on `device` needs room for four float32 copies. `build`: what
    makes the model (default: the built-in arch); one that cannot run on the meta device
    (a zoo model computing with tensors in __init__) is not checked."""
    build = build or (lambda: ARCHS[cfg.arch](cfg, in_shape, num_classes))
    try:
        count = parameter_count(build)
    except ModelError:
        raise
    except Exception:  # noqa: BLE001 - not cheap to count: the real build will tell
        if cfg.arch in ARCHS:
            raise
        return
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
        what_model = cfg.arch if cfg.arch in ARCHS else "model"
        keys = [f"model.{k} {getattr(cfg, k)}" for k in _SIZE_KEYS.get(cfg.arch, ())]
        raise ModelError(
            f"{' and '.join(keys) or f'model.arch {cfg.arch!r}'}: the {what_model} has "
            f"{count:,} parameters, {format_bytes(nbytes)} {what}, {over}; make the model "
            "smaller"
        )


def check_first_batch(
    model: nn.Module,
    sample: torch.Tensor,
    num_classes: int,
    arch: str,
    fits_targets: Callable[[torch.Tensor], None] | None = None,
) -> None:
    """Run one small batch forward and backward, as training will, so that a model that
    does not fit the data, or that the optimizer cannot train, fails before training.
    `fits_targets(output)`: the task's check of the output against the batch's targets
    (engine/task.py), in place of the (batch, num_classes) shape check.
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
            _check_logits(out, sample, num_classes if fits_targets is None else None, arch)
            if fits_targets is not None:
                fits_targets(out.detach())
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


def _check_logits(out, sample: torch.Tensor, num_classes: int | None, arch: str) -> None:
    """forward's result must be one float tensor: logits (batch, classes) when num_classes
    is given (the task checks the shape otherwise)."""
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
    if num_classes is not None and tuple(out.shape) != want:
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
