"""`mpt export`: the trained model as a state_dict, TorchScript and ONNX, same outputs."""

from __future__ import annotations

import importlib.util
import json
import warnings

import numpy as np
import pytest
import torch
from conftest import BASE, merge, run_mpt, run_profile
from durable_helpers import events_jsonl

from engine.errors import ExportFailed, MptError
from engine.export import default_out, export, export_checkpoint, load_model
from engine.models import build_model
from engine.profile import ModelSection

# A CNN with dropout on digits: convolutions, and eval mode matters.
CNN = {"model": {"arch": "cnn", "channels": [8], "hidden": [32], "dropout": 0.2}}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A finished run: (its Finished record, its run directory)."""
    out = tmp_path_factory.mktemp("runs")
    done = run_profile(merge(merge(BASE, {"run": {"out_dir": str(out)}}), CNN), write=True)
    return done, done.run.run_dir


@pytest.fixture(scope="module")
def trained_model(trained):
    """The model the run trained, as the run left it, in eval mode."""
    done, _ = trained
    return done.run.model.eval()


def batch(n: int) -> torch.Tensor:
    """Real digits images (8x8, scaled to [0, 1]) as the model's float input."""
    from sklearn.datasets import load_digits

    images = load_digits().images[:n] / 16.0
    return torch.tensor(images, dtype=torch.float32).unsqueeze(1)


def test_the_rebuilt_model_is_the_trained_model(trained, trained_model):
    _, run_dir = trained
    model, spec, path, _ = load_model(run_dir)
    assert path == run_dir / "checkpoints" / "last.pt"
    assert spec.in_shape == (1, 8, 8) and spec.num_classes == 10
    assert spec.source == "the checkpoint's task record"  # format version 2
    assert spec.kind == "classification" and spec.classes == [str(d) for d in range(10)]
    x = batch(16)
    with torch.no_grad():
        assert torch.equal(model(x), trained_model(x))


def test_state_dict_export_loads_with_load_state_dict(trained, trained_model, tmp_path):
    _, run_dir = trained
    out = tmp_path / "model.pt"
    export_checkpoint(run_dir, "state_dict", out)
    weights = torch.load(out, weights_only=True)
    model = build_model(
        ModelSection(arch="cnn", channels=[8], hidden=[32], dropout=0.2), (1, 8, 8), 10
    )
    model.load_state_dict(weights)
    x = batch(16)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), trained_model(x))


def test_torchscript_export_gives_the_same_outputs_at_any_batch_size(
    trained, trained_model, tmp_path
):
    _, run_dir = trained
    out = tmp_path / "model.torchscript.pt"
    export_checkpoint(run_dir, "torchscript", out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream (torch 2.9+)
        loaded = torch.jit.load(str(out))
    for n in (1, 7):
        x = batch(n)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), trained_model(x))


def test_onnx_export_gives_the_same_outputs_with_a_dynamic_batch(trained, trained_model, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    _, run_dir = trained
    out = tmp_path / "model.onnx"
    export_checkpoint(run_dir, "onnx", out)
    # one model file, weights inside; beside it the card
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.json"]
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    card = json.loads(session.get_modelmeta().custom_metadata_map["mpt"])
    assert card == json.loads((tmp_path / "model.onnx.json").read_text())
    (inp,) = session.get_inputs()
    assert inp.name == "input" and isinstance(inp.shape[0], str)  # a symbolic batch axis
    assert inp.shape[1:] == [1, 8, 8]
    for n in (1, 7, 33):
        x = batch(n)
        (logits,) = session.run(None, {"input": x.numpy()})
        with torch.no_grad():
            np.testing.assert_allclose(logits, trained_model(x).numpy(), rtol=1e-4, atol=1e-5)


def test_the_cli_exports_a_run_directory_to_its_exports_folder(trained):
    _, run_dir = trained
    result = run_mpt("export", run_dir, "--format", "torchscript")
    assert result.returncode == 0, result.stderr
    step = max(int(p.stem.split("-")[1]) for p in (run_dir / "checkpoints").glob("step-*.pt"))
    written = run_dir / "exports" / f"step-{step:06d}.torchscript.pt"
    assert written.is_file()
    started = events_jsonl(run_dir)[0]
    (mean,), (std,) = started["mean"], started["std"]  # digits: from its training split
    assert result.stdout.splitlines() == [
        f"wrote {written} (torchscript, from {run_dir / 'checkpoints' / 'last.pt'}) and "
        f"{written.name}.json",
        f"input: float32 [batch, 1, 8, 8], normalised (pixels/255 - mean) / std, mean "
        f"[{mean:.4g}], std [{std:.4g}]; output: logits [batch, 10] over the classes (0, 1, "
        "2, 3, 4, 5, 6, 7, 8, 9)",
    ]
    card = json.loads(written.with_name(written.name + ".json").read_text())
    assert (card["task"], card["outputs"], card["input_shape"]) == ("classification", 10, [1, 8, 8])
    assert card["mean"] == [mean] and card["classes"] == [str(d) for d in range(10)]
    extra = {"mpt.json": ""}
    torch.jit.load(str(written), _extra_files=extra)  # the card travels inside the file too
    assert json.loads(extra["mpt.json"]) == card
    assert result.stderr == ""


def test_a_checkpoint_away_from_its_run_takes_the_shape_from_its_dataset(trained, tmp_path):
    _, run_dir = trained
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    state.pop("task"), state.update(version=1)  # a checkpoint from before the task record
    loose = tmp_path / "model.pt"
    torch.save(state, loose)
    model, spec, _, state = load_model(loose)
    assert spec.in_shape == (1, 8, 8) and spec.num_classes == 10
    assert spec.source == "data.dataset = 'digits' and the classifier's weights"
    assert default_out(loose, state, "onnx") == tmp_path / "model.onnx"


def test_a_checkpoint_without_a_known_shape_asks_for_the_options(trained, tmp_path):
    _, run_dir = trained
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    state["profile"]["data"]["dataset"] = "npz"  # its shape is in its file, not known here
    state.pop("task"), state.update(version=1)  # and no task record (format version 1)
    loose = tmp_path / "model.pt"
    torch.save(state, loose)
    with pytest.raises(MptError, match=r"pass --input-shape C,H,W and --num-classes N$"):
        load_model(loose)
    _, spec, _, _ = load_model(loose, [1, 8, 8], 10)
    assert spec.source == "--input-shape and --num-classes"


def test_weights_that_do_not_fit_the_shape_exit_2_with_one_sentence(trained):
    _, run_dir = trained
    result = run_mpt("export", run_dir, "--input-shape", "1,16,16")
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "the weights do not fit model.arch 'cnn' built for input [1, 16, 16]" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_a_missing_checkpoint_exits_2(tmp_path):
    result = run_mpt("export", tmp_path / "nope.pt", "--format", "onnx")
    assert result.returncode == 2
    assert (
        result.stderr
        == f"error: {tmp_path / 'nope.pt'}: no such checkpoint file or run directory\n"
    )


def test_onnx_without_its_packages_is_one_sentence(trained, trained_model, monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxscript" else real(name, *a),
    )
    _, run_dir = trained
    _, spec, _, _ = load_model(run_dir)
    with pytest.raises(MptError) as info:
        export(trained_model, spec, "onnx", tmp_path / "m.onnx")
    assert str(info.value) == (
        "--format onnx needs the onnx and onnxscript packages, which are not installed; "
        "pip install 'mpt[onnx]'"
    )
    assert not isinstance(info.value, ExportFailed)  # a usage problem: exit 2


def test_a_model_that_cannot_be_traced_is_an_export_failure(tmp_path):
    class Unsupported(torch.nn.Module):
        def forward(self, x):
            raise NotImplementedError("an operator of the user's own")

    from engine.export import ModelSpec

    with pytest.raises(ExportFailed, match=r"^TorchScript tracing failed: "):
        export(Unsupported(), ModelSpec((1, 2, 2), 4, "test"), "torchscript", tmp_path / "m.pt")
