"""`mpt export`: a checkpoint's model as a plain state_dict, TorchScript, ONNX or a
torch.export program (pt2).

The model is rebuilt from the checkpoint's own profile (`[model]`), so it needs the
input shape and the model's outputs (classes, labels or targets). They come from, in
order: the `--input-shape`/`--num-classes` options, the checkpoint's "task" record
(format version 2), the `run_started` event in the run's events.jsonl (the checkpoint's
`<run dir>/checkpoints/../events.jsonl`), and, for an older checkpoint without its run
directory, the dataset's fixed shape (digits, mnist, fashion_mnist, cifar10, synthetic,
image_folder) and the classifier's size in the weights. The dataset is never loaded.

Every exported model takes float32 input of one sample's shape with a batch dimension
first, normalised as in training, and returns the outputs it trained with: logits
(classification, multilabel) or predictions (regression). A model card
(`<file>.json`, and inside TorchScript, ONNX and pt2 files) records the task kind, the
shapes, the class names and the normalisation.

A checkpoint of a run with train.ema_decay holds two sets of weights: the moving average
("ema", what the run validated, early-stopped and kept best.pt on) is exported by default,
the raw weights with `--raw` (to `...-raw<suffix>` by default); the card says which
("weights": "ema" or "raw").
"""

from __future__ import annotations

import importlib.util
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from engine import checkpoint as ckpt
from engine import events as ev
from engine.errors import ExportFailed, ModelError, MptError
from engine.models import build_model
from engine.profile import ModelSection

FORMATS = ("state_dict", "torchscript", "onnx", "pt2")
SUFFIX = {
    "state_dict": ".state_dict.pt",
    "torchscript": ".torchscript.pt",
    "onnx": ".onnx",
    "pt2": ".pt2",
}
ONNX_MISSING = (
    "--format onnx needs the onnx and onnxscript packages, which are not installed; "
    "pip install 'mpt[onnx]'"
)


# A pt2 file is checked against the eager model at another batch size than the example's
# (the same tolerances as the ONNX test's).
_PT2_CHECK_BATCH = 5
_PT2_RTOL, _PT2_ATOL = 1e-4, 1e-5

# Above this, ONNX's 2 GiB protobuf limit needs the weights in a .data file beside the model.
_ONNX_SINGLE_FILE_BYTES = 1_800_000_000

# Shapes fixed by the dataset itself (the npz dataset's depend on its file).
_DATASET_SHAPES = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "fashion_mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
}


@dataclass
class ModelSpec:
    in_shape: tuple[int, ...]
    num_classes: int  # the model's outputs: classes, labels or regression targets
    source: str  # where they came from, for the message
    kind: str = "classification"  # task.kind
    classes: list[str] | None = None  # class or label names, when the run knew them


def _run_started(events: Path) -> dict[str, Any] | None:
    """The last run_started event of an events.jsonl, or None (engine.events' tolerant
    reader: a damaged line or field never stops an export, it is left out)."""
    try:
        found = [e for e in ev.read_events(events) if isinstance(e, ev.RunStarted)]
    except OSError:
        return None
    return found[-1].to_dict() if found else None


def _events_files(path: Path) -> list[Path]:
    """events.jsonl of the run the checkpoint is in (as named, then the file it links to)."""
    out = []
    for p in (path, path.resolve()):
        if p.parent.name == "checkpoints":
            events = p.parent.parent / "events.jsonl"
            if events not in out and events.is_file():
                out.append(events)
    return out


def _classifier_size(weights: dict[str, Any]) -> int | None:
    """Output size of the last 2-D weight: the classifier of mlp, cnn and resnet18."""
    last = None
    for name, tensor in weights.items():
        if name.endswith("weight") and getattr(tensor, "ndim", 0) == 2:
            last = tensor
    return int(last.shape[0]) if last is not None else None


def model_spec(
    path: Path,
    state: dict[str, Any],
    input_shape: list[int] | None = None,
    num_classes: int | None = None,
) -> ModelSpec:
    """Find the input shape and class count the checkpoint's model was built for."""
    shape = tuple(input_shape) if input_shape else None
    task = state.get("task") or {}  # checkpoints since format version 2 record it
    kind = task.get("kind") or state.get("profile", {}).get("task", {}).get("kind")
    kind, classes = kind or "classification", task.get("classes")
    if task and (shape is None or num_classes is None):
        shape = shape or tuple(task["input_shape"])
        num_classes = num_classes or int(task["outputs"])
        return ModelSpec(shape, num_classes, "the checkpoint's task record", kind, classes)
    sources = []
    if shape is not None:
        sources.append("--input-shape")
    if num_classes is not None:
        sources.append("--num-classes")
    if shape is None or num_classes is None:
        for events in _events_files(path):
            started = _run_started(events)
            if started and started.get("input_shape") and started.get("num_classes"):
                shape = shape or tuple(started["input_shape"])
                num_classes = num_classes or int(started["num_classes"])
                sources.append(f"{events} (run_started)")
                break
    if shape is None or num_classes is None:
        data = state.get("profile", {}).get("data", {})
        dataset = data.get("dataset")
        fixed = _DATASET_SHAPES.get(dataset)
        if dataset == "synthetic":
            fixed = tuple(data.get("synthetic_shape", ()))
        elif dataset == "image_folder":
            fixed = (3, data.get("image_size", 32), data.get("image_size", 32))  # read as RGB
        if shape is None and fixed:
            shape = fixed
            sources.append(f"data.dataset = {dataset!r}")
        if num_classes is None:
            num_classes = _classifier_size(state.get("model", {}))
            sources.append("the classifier's weights")
    if not shape or num_classes is None:
        raise MptError(
            f"{path}: cannot tell the model's input shape or number of classes (its run's "
            "events.jsonl is not beside it); pass --input-shape C,H,W and --num-classes N"
        )
    if any(s < 1 for s in shape):
        raise MptError(f"--input-shape sizes must each be >= 1 (got {list(shape)})")
    source = " and ".join(sources)
    return ModelSpec(tuple(int(s) for s in shape), int(num_classes), source, kind, classes)


def load_model(
    spec_path: str | Path,
    input_shape: list[int] | None = None,
    num_classes: int | None = None,
    trust_code: bool = False,
    raw: bool = False,
) -> tuple[torch.nn.Module, ModelSpec, Path, dict[str, Any]]:
    """Rebuild the checkpoint's model, weights loaded, in eval mode on the CPU.

    `spec_path`: a checkpoint file or a run directory (its checkpoints/last.pt).
    `trust_code`: the user's consent to import the model code the checkpoint's profile
    names ("package.module:factory"); without it such a checkpoint is refused.
    The weights are the moving average where the checkpoint has one (train.ema_decay),
    unless `raw`; else the raw weights (`weights_of` says which).
    """
    path = ckpt.resolve(spec_path)
    state = ckpt.load(path)
    if not trust_code:
        ckpt.require_consent(path, state, "--trust-code", ("model.arch",))  # no data loaded
    spec = model_spec(path, state, input_shape, num_classes)
    known = {f.name for f in fields(ModelSection)}
    cfg = ModelSection(**{k: v for k, v in state["profile"].get("model", {}).items() if k in known})
    try:
        model = build_model(cfg, spec.in_shape, spec.num_classes)
    except ModelError:
        raise
    except Exception as e:  # noqa: BLE001 - a shape the architecture cannot take
        raise MptError(
            f"{path}: cannot build model.arch {cfg.arch!r} for input {list(spec.in_shape)} "
            f"and {spec.num_classes} classes ({type(e).__name__}: {e})"
        ) from None
    try:
        built = (
            f"model.arch {cfg.arch!r} built for input {list(spec.in_shape)} and "
            f"{spec.num_classes} classes (from {spec.source})"
        )
        weights = state["ema"]["weights"] if weights_of(state, raw) == "ema" else state["model"]
        ckpt.restore_weights(model, weights, path, built)
    except ckpt.CheckpointError as e:
        raise MptError(f"{e}; pass the run's --input-shape C,H,W and --num-classes N") from None
    model.eval()
    return model, spec, path, state


def weights_of(state: dict[str, Any], raw: bool = False) -> str:
    """Which weights an export of `state` takes: "ema" (the moving average, when the
    checkpoint has one and `raw` is not asked) or "raw"."""
    return "ema" if state.get("ema") is not None and not raw else "raw"


def default_out(path: Path, state: dict[str, Any], fmt: str, raw: bool = False) -> Path:
    """`<run dir>/exports/step-NNNNNN<suffix>`, or beside a checkpoint outside a run;
    `-raw` before the suffix for the raw weights of a checkpoint that has an average."""
    step = state.get("progress", {}).get("step")
    mark = "-raw" if raw and state.get("ema") is not None else ""
    if path.parent.name == "checkpoints":
        stem = f"step-{step:06d}" if isinstance(step, int) else path.stem
        return path.parent.parent / "exports" / (stem + mark + SUFFIX[fmt])
    return path.with_name(path.stem + mark + SUFFIX[fmt])


def example_input(spec: ModelSpec, batch: int = 2) -> torch.Tensor:
    # A batch of 2: a batch of 1 would let the exporters fix the batch size at 1.
    return torch.randn(batch, *spec.in_shape, generator=torch.Generator().manual_seed(0))


def export(
    model: torch.nn.Module, spec: ModelSpec, fmt: str, out: Path, card: dict | None = None
) -> Path:
    """Write `model` to `out` in format `fmt`; returns `out`. Raises MptError. TorchScript,
    pt2 and ONNX carry `card` inside too (an extra file "mpt.json"; ONNX metadata "mpt")."""
    import json

    card_text = json.dumps(card or {})
    if fmt not in FORMATS:
        raise MptError(f"--format must be one of {', '.join(FORMATS)} (got {fmt!r})")
    if fmt == "onnx" and not all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript")):
        raise MptError(ONNX_MISSING)
    out.parent.mkdir(parents=True, exist_ok=True)
    x = example_input(spec)
    if fmt == "state_dict":
        # Plain tensors only: model.load_state_dict(torch.load(out, weights_only=True)).
        torch.save(model.state_dict(), out)
    elif fmt == "torchscript":
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # torch.jit is deprecated upstream, but still works
            try:
                traced = torch.jit.trace(model, x)
            except Exception as e:  # noqa: BLE001 - user models
                raise ExportFailed(f"TorchScript tracing failed: {type(e).__name__}: {e}") from None
            torch.jit.save(traced, str(out), _extra_files={"mpt.json": card_text})
    elif fmt == "pt2":
        arch = (card or {}).get("arch")
        name = f"model.arch {arch!r}" if arch else type(model).__name__
        _export_pt2(model, spec, x, out, card_text, name)
    else:
        nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                torch.onnx.export(
                    model,
                    (x,),
                    str(out),
                    input_names=["input"],
                    output_names=["predictions" if spec.kind == "regression" else "logits"],
                    dynamic_shapes=({0: torch.export.Dim("batch")},),
                    external_data=nbytes > _ONNX_SINGLE_FILE_BYTES,
                    dynamo=True,
                    verbose=False,
                )
            except Exception as e:  # noqa: BLE001 - operators ONNX cannot express, and such
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise ExportFailed(f"ONNX export failed: {type(e).__name__}: {first}") from None
        _onnx_metadata(out, card_text)
    return out


def _export_pt2(
    model: torch.nn.Module,
    spec: ModelSpec,
    x: torch.Tensor,
    out: Path,
    card_text: str,
    name: str,
) -> None:
    """torch.export with a dynamic batch axis, saved with the card inside ("mpt.json"),
    then loaded back and checked against the eager model at another batch size. `name`:
    the model, for the messages."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            program = torch.export.export(
                model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},)
            )
        except Exception as e:  # noqa: BLE001 - control flow or operators torch.export refuses
            raise ExportFailed(
                f"torch.export could not capture the model ({name}: {_first_line(e)}); "
                "export it as --format torchscript or state_dict instead"
            ) from None
        torch.export.save(program, str(out), extra_files={"mpt.json": card_text})
        if not _pt2_matches(model, out, example_input(spec, _PT2_CHECK_BATCH)):
            out.unlink(missing_ok=True)
            raise ExportFailed(
                f"the pt2 file of {name} gave other outputs than the model at batch size "
                f"{_PT2_CHECK_BATCH} when loaded back, so it was not kept; export it as "
                "--format torchscript or state_dict instead"
            )


def _pt2_matches(model: torch.nn.Module, out: Path, check: torch.Tensor) -> bool:
    """Whether the saved program, loaded back as a user would, gives the eager model's
    outputs on `check` (a batch size other than the example's)."""
    try:
        loaded = torch.export.load(str(out)).module()
        with torch.no_grad():
            expected, got = model(check), loaded(check)
    except Exception:  # noqa: BLE001 - e.g. a guard that fixed the batch size after all
        return False
    return got.shape == expected.shape and torch.allclose(
        got, expected, rtol=_PT2_RTOL, atol=_PT2_ATOL
    )


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _onnx_metadata(out: Path, card_text: str) -> None:
    """The card as the ONNX model's metadata property "mpt" (onnxruntime: modelmeta)."""
    import onnx

    model = onnx.load(str(out), load_external_data=False)
    entry = model.metadata_props.add()
    entry.key, entry.value = "mpt", card_text
    onnx.save(model, str(out))


def _parse_shape(text: str) -> list[int]:
    try:
        shape = [int(s) for s in text.replace("x", ",").split(",") if s.strip()]
    except ValueError:
        shape = []
    if not shape or any(s < 1 for s in shape):
        raise MptError(
            f"--input-shape must be one sample's sizes, C,H,W for images (e.g. 1,28,28) or "
            f"the feature count (e.g. 10) (got {text!r})"
        )
    return shape


def export_checkpoint(
    checkpoint: str | Path,
    fmt: str,
    out: Path | None = None,
    input_shape: str | None = None,
    num_classes: int | None = None,
    trust_code: bool = False,
    raw: bool = False,
) -> str:
    """`mpt export`: write the checkpoint's model (its moving average of the weights, where
    it has one and not `raw`); returns what to print."""
    shape = _parse_shape(input_shape) if input_shape else None
    model, spec, path, state = load_model(checkpoint, shape, num_classes, trust_code, raw)
    target = Path(out).expanduser() if out else default_out(path, state, fmt, raw)
    if target.is_dir():
        raise MptError(f"--out {target}: is a folder; give a file name")
    started = next(filter(None, map(_run_started, _events_files(path))), None) or {}
    card = {**model_card(spec, started, state), "weights": weights_of(state, raw)}
    export(model, spec, fmt, target, card)
    card_path = write_card(card, target)
    sizes = ", ".join(map(str, spec.in_shape))
    how = "as in training"
    if started.get("mean") and started.get("std"):
        mean = ", ".join(f"{m:.4g}" for m in started["mean"])
        std = ", ".join(f"{s:.4g}" for s in started["std"])
        pixels = "pixels/255" if len(spec.in_shape) == 3 else "x"
        how = f"({pixels} - mean) / std, mean [{mean}], std [{std}]"
    which = ""
    if state.get("ema") is not None:
        ema = card["weights"] == "ema"
        which = "; the weights' moving average, --raw for the raw ones" if ema else "; raw weights"
    return (
        f"wrote {target} ({fmt}, from {path}{which}) and {card_path.name}\n"
        f"input: float32 [batch, {sizes}], normalised {how}; output: {_output_text(spec)}"
    )


def _output_text(spec: ModelSpec) -> str:
    """What the exported model's output means, by task kind."""
    n = spec.num_classes
    names = ""
    if spec.classes:
        names = f" ({', '.join(spec.classes[:10])}{', ...' if len(spec.classes) > 10 else ''})"
    if spec.kind == "multilabel":
        return f"logits [batch, {n}], a label is on where sigmoid > 0.5{names}"
    if spec.kind == "regression":
        return f"predictions [batch, {n}] in the targets' units as trained"
    return f"logits [batch, {n}] over the classes{names}"


def model_card(spec: ModelSpec, started: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
    """What a deployment needs besides the weights: the task, shapes, names, normalisation."""
    task = state.get("task") or {}
    return {
        "format": "mpt-model-card",
        "task": spec.kind,
        "input_shape": list(spec.in_shape),
        "outputs": spec.num_classes,
        "classes": spec.classes,
        "loss": task.get("loss") or started.get("loss"),
        "metrics": task.get("metrics") or started.get("metrics"),
        "mean": started.get("mean") or None,
        "std": started.get("std") or None,
        "arch": state.get("profile", {}).get("model", {}).get("arch"),
        "step": state.get("progress", {}).get("step"),
    }


def write_card(card: dict[str, Any], target: Path) -> Path:
    """The card as JSON beside the exported file: `<file>.json`."""
    import json

    path = target.with_name(target.name + ".json")
    path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    return path
