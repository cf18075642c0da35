"""`mpt export --format pt2`: a torch.export program with a dynamic batch axis, checked
when written and loadable by `torch.export.load` in a process of the user's own."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import BASE, merge, run_mpt, run_profile

from engine.errors import ExportFailed
from engine.export import ModelSpec, export, export_checkpoint

CNN = {"model": {"arch": "cnn", "channels": [8], "hidden": [32], "dropout": 0.2}}

# What a user writes to use the file: no mpt, only torch.
LOAD_AND_PREDICT = """
import json, sys, torch
extra = {"mpt.json": ""}
model = torch.export.load(sys.argv[1], extra_files=extra).module()
with torch.no_grad():
    outputs = [model(x).tolist() for x in torch.load(sys.argv[2])]
print(json.dumps({"card": json.loads(extra["mpt.json"]), "outputs": outputs}))
"""


def digits(n: int) -> torch.Tensor:
    """Real digits images (8x8, scaled to [0, 1]) as the model's float input."""
    from sklearn.datasets import load_digits

    images = load_digits().images[:n] / 16.0
    return torch.tensor(images, dtype=torch.float32).unsqueeze(1)


def trained_run(tmp_path, *extras):
    """A finished tiny run on digits: (its model in eval mode, its run directory)."""
    profile = merge(BASE, {"run": {"out_dir": str(tmp_path / "runs")}}, *extras)
    done = run_profile(profile, write=True)
    return done.run.model.eval(), done.run.run_dir


def test_the_cli_writes_a_pt2_a_fresh_process_loads_at_other_batch_sizes(tmp_path):
    model, run_dir = trained_run(tmp_path, CNN)
    result = run_mpt("export", run_dir, "--format", "pt2")
    assert result.returncode == 0, result.stderr
    (written,) = (run_dir / "exports").glob("step-*.pt2")
    assert result.stdout.startswith(f"wrote {written} (pt2, from ")
    batches = [digits(1), digits(7)]  # the example batch had 2: the batch axis is dynamic
    torch.save(batches, tmp_path / "x.pt")
    user = subprocess.run(
        [sys.executable, "-c", LOAD_AND_PREDICT, str(written), str(tmp_path / "x.pt")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert user.returncode == 0, user.stderr
    got = json.loads(user.stdout)
    assert got["card"] == json.loads(written.with_name(written.name + ".json").read_text())
    assert got["card"]["arch"] == "cnn" and got["card"]["input_shape"] == [1, 8, 8]
    for x, outputs in zip(batches, got["outputs"], strict=True):
        with torch.no_grad():
            torch.testing.assert_close(torch.tensor(outputs), model(x))


def test_an_mlp_checkpoint_exports_to_pt2_with_its_outputs(tmp_path):
    model, run_dir = trained_run(tmp_path)
    out = tmp_path / "model.pt2"
    export_checkpoint(run_dir / "checkpoints" / "last.pt", "pt2", out)
    loaded = torch.export.load(str(out)).module()
    for n in (3, 33):
        x = digits(n)
        with torch.no_grad():
            torch.testing.assert_close(loaded(x), model(x), rtol=1e-4, atol=1e-5)


def test_a_model_torch_export_cannot_capture_is_one_sentence(tmp_path):
    class DataDependent(torch.nn.Module):
        def forward(self, x):
            if x.sum() > 0:  # control flow on the values: torch.export refuses it
                return x.flatten(1)
            return -x.flatten(1)

    out = tmp_path / "m.pt2"
    card = {"arch": "my_models:branchy"}
    with pytest.raises(ExportFailed) as info:
        export(DataDependent(), ModelSpec((1, 2, 2), 4, "test"), "pt2", out, card)
    message = str(info.value)
    assert message.startswith("torch.export could not capture the model (model.arch ")
    assert "'my_models:branchy'" in message
    assert message.endswith("; export it as --format torchscript or state_dict instead")
    assert "\n" not in message and not out.exists()


def test_a_pt2_that_loads_back_with_other_outputs_is_not_kept(tmp_path):
    class Noisy(torch.nn.Module):  # random at inference: no two calls agree
        def forward(self, x):
            return x.flatten(1) + torch.rand_like(x.flatten(1))

    out = tmp_path / "m.pt2"
    with pytest.raises(ExportFailed) as info:
        export(Noisy(), ModelSpec((1, 2, 2), 4, "test"), "pt2", out, {"arch": "noisy"})
    assert str(info.value) == (
        "the pt2 file of model.arch 'noisy' gave other outputs than the model at batch size 5 "
        "when loaded back, so it was not kept; export it as --format torchscript or "
        "state_dict instead"
    )
    assert not out.exists()
