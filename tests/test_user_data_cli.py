"""Issue 15 through the command line: `mpt validate` finds a factory that is not there by
reading the user's module, never running it, and `mpt run` refuses the factory's bad data
with one `error:` line naming data.dataset, exit 2, before any training; good data trains,
cached or streamed from the user's Dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_mpt

# A factory module beside the profile: mpt imports it from the working directory.
FACTORIES = """
import torch


def features(targets="classes"):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 5, generator=g)
    y = torch.rand(64, generator=g) if targets == "floats" else torch.arange(64) % 2
    return (x, y), None


def broken():
    raise RuntimeError("the data server is down")


class Stripes(torch.utils.data.Dataset):
    # 8x8 grey images: horizontal (class 0) or vertical (class 1) stripes
    classes = ["horizontal", "vertical"]

    def __len__(self):
        return 96

    def __getitem__(self, i):
        stripes = (torch.arange(8) % 2 * 255).to(torch.uint8).view(8, 1).expand(8, 8)
        return (stripes if i % 2 == 0 else stripes.T).contiguous(), i % 2


def stripes():
    return Stripes(), None
"""


def write_profile(tmp_path: Path, data: str) -> Path:
    (tmp_path / "my_data.py").write_text(FACTORIES)
    path = tmp_path / "p.toml"
    path.write_text(
        f'[run]\ndevice = "cpu"\nepochs = 1\nout_dir = "{tmp_path / "runs"}"\n'
        f"[data]\nbatch_size = 16\nval_fraction = 0.25\nnum_workers = 0\n{data}\n"
        '[model]\narch = "mlp"\nhidden = [16]\n'
    )
    return path


def error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, stderr
    return lines[0]


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (
            'dataset = "my_data:broken"',
            "error: data.dataset 'my_data:broken' raised RuntimeError: the data server is down (",
        ),
        (
            'dataset = "my_data:features"\noptions = { targets = "floats" }',
            "error: data.dataset 'my_data:features': the train targets are float32, not class "
            'indices; set task.kind = "regression"',
        ),
        (
            'dataset = "my_data:features"\nrandom_crop = 2',
            "error: data.random_crop = 2 applies to images (samples of shape (C, H, W)), but "
            "the samples of data.dataset 'my_data:features' have shape (5,)",
        ),
        (
            'dataset = "my_data:nowhere"',
            "error: data.dataset 'my_data:nowhere': module 'my_data' has no callable 'nowhere'",
        ),
    ],
    ids=["raising", "float targets", "random_crop on features", "no such function"],
)
def test_mpt_run_refuses_bad_factory_data_in_one_line_exit_2(tmp_path, data, says):
    toml = write_profile(tmp_path, data)
    result = run_mpt("run", toml, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert error_line(result.stderr).startswith(says)
    # the run directory mpt made for it is gone, with the folders it made to hold it
    assert f"removed {tmp_path / 'runs' / 'run'}/" in result.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("cache", ["auto", "stream"])
def test_a_factory_dataset_trains_cached_or_streamed(tmp_path, cache):
    toml = write_profile(tmp_path, f'dataset = "my_data:stripes"\ncache = "{cache}"')
    result = run_mpt("run", toml, "--set", "run.epochs=3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (events,) = (tmp_path / "runs").rglob("events.jsonl")
    records = [json.loads(line) for line in events.read_text().splitlines()]
    started = next(r for r in records if r["kind"] == "run_started")
    assert started["data_cache"] == ("device" if cache == "auto" else "stream")
    assert (started["train_samples"], started["val_samples"]) == (72, 24)
    assert started["input_shape"] == [1, 8, 8] and started["num_classes"] == 2


def test_mpt_validate_reads_the_code_a_profile_names_without_running_it(tmp_path):
    toml = write_profile(tmp_path, 'dataset = "my_data:nowhere"')
    (tmp_path / "my_data.py").write_text(
        FACTORIES + "\nopen('RAN', 'w').close()  # what running the module would do\n"
    )
    loss = tmp_path / "losses.py"
    loss.write_text("import torch\n\nif True:\n    def focal(out, y):\n        return out\n")
    toml.write_text(toml.read_text() + '[task]\nloss = "losses:focal"\n')
    result = run_mpt("validate", toml, cwd=tmp_path)
    assert result.returncode == 2, result.stdout
    assert result.stderr.splitlines() == [
        f"{toml}: data.dataset 'my_data:nowhere': {tmp_path / 'my_data.py'} defines no 'nowhere'"
    ]
    assert not (tmp_path / "RAN").exists()
    toml.write_text(toml.read_text().replace("my_data:nowhere", "my_data:stripes"))
    assert run_mpt("validate", toml, cwd=tmp_path).returncode == 0
    toml.write_text(toml.read_text().replace("losses:focal", "lossess:focal"))
    result = run_mpt("validate", toml, cwd=tmp_path)
    assert result.returncode == 2
    assert "task.loss 'lossess:focal': cannot find module 'lossess' in " in result.stderr
    assert not (tmp_path / "RAN").exists()
