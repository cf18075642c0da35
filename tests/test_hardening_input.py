"""Bad input the other test files leave out: each is one clear sentence naming the thing,
exit 2 or a run_failed the user can act on, never a traceback, nothing overwritten.

Profiles (a folder, no permission, --set), contradictions only the data reveals, data
files that lie about their contents, user model modules that fail, fp16 on a device or
model that cannot do it.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MPT, PROFILES, run_mpt
from PIL import Image

from engine.data import load_data
from engine.errors import DataError, ProfileError
from engine.profile import DataSection, load_profile, profile_from_dict

QUICKSTART = PROFILES / "quickstart.toml"


def one_line_exit_2(result, expected: str) -> None:
    """`mpt` refused: exit 2, exactly `expected` on stderr, no traceback, nothing on stdout."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip() == expected
    assert "Traceback" not in result.stderr


# ---- profiles ----


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_folder_given_as_the_profile_exits_2_saying_it_is_a_folder(command, tmp_path):
    (tmp_path / "profiles").mkdir()
    result = run_mpt(command, "profiles", cwd=tmp_path)
    one_line_exit_2(result, "profiles: is a folder, not a profile file")
    assert [p.name for p in tmp_path.iterdir()] == ["profiles"]


def test_binary_garbage_as_the_profile_exits_2_saying_it_is_not_text(tmp_path):
    (tmp_path / "p.toml").write_bytes(bytes(range(256)) * 4)
    result = run_mpt("validate", "p.toml", cwd=tmp_path)
    one_line_exit_2(result, "p.toml: is not a text file (not UTF-8); a profile is TOML text")


LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: a forked child must not dlopen


def _without_root_file_access() -> None:
    """In the child, as root: drop the capabilities that read any file (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH), so that file permissions apply as they do to a user."""
    libc = LIBC
    for capability in (1, 2):
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_profile_without_read_permission_exits_2_saying_so(command, tmp_path):
    shutil.copy(QUICKSTART, tmp_path / "secret.toml")
    (tmp_path / "secret.toml").chmod(0o000)
    result = subprocess.run(
        [*MPT, command, "secret.toml"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
        preexec_fn=_without_root_file_access if os.geteuid() == 0 else None,
    )  # fmt: skip
    one_line_exit_2(result, "secret.toml: cannot be read (permission denied)")
    assert [p.name for p in tmp_path.iterdir()] == ["secret.toml"]


def test_set_with_a_value_of_the_wrong_type_exits_2_naming_key_and_value(tmp_path):
    result = run_mpt("validate", QUICKSTART, "--set", "run.epochs=ten", cwd=tmp_path)
    one_line_exit_2(result, f"{QUICKSTART}: run.epochs: must be an integer (got 'ten')")


def test_set_with_an_unknown_key_exits_2_with_a_suggestion(tmp_path):
    result = run_mpt("validate", QUICKSTART, "--set", "optim.learning_rate=0.1", cwd=tmp_path)
    one_line_exit_2(result, f"{QUICKSTART}: optim.learning_rate: unknown key")
    result = run_mpt("validate", QUICKSTART, "--set", "optim.momentm=0.9", cwd=tmp_path)
    one_line_exit_2(result, f"{QUICKSTART}: optim.momentm: unknown key; did you mean 'momentum'?")


def test_set_without_a_section_or_key_names_what_was_given():
    with pytest.raises(ProfileError) as info:
        load_profile(QUICKSTART, ["=1", ".lr=1", "optim.=1"])
    assert str(info.value).splitlines() == [
        "--set: '=1': must be section.key, e.g. optim.lr",
        "--set: .lr: must be section.key, e.g. optim.lr",
        "--set: optim.: must be section.key, e.g. optim.lr",
    ]


def problems(data: dict) -> list[str]:
    with pytest.raises(ProfileError) as info:
        profile_from_dict(data, "p.toml")
    return str(info.value).splitlines()


def test_early_stopping_on_val_loss_without_a_validation_set_is_refused():
    assert problems(
        {"data": {"val_fraction": 0.0}, "early_stop": {"enabled": True, "monitor": "val_loss"}}
    ) == [
        "p.toml: early_stop.monitor: needs a validation set; set data.val_fraction > 0 or "
        "monitor train_loss (got 'val_loss')"
    ]


def test_huge_numbers_nul_characters_and_unknown_home_folders_are_refused_by_name():
    lines = problems(
        {
            "optim": {"lr": 10**400},
            "run": {"epochs": 10**30, "name": "a\x00b", "out_dir": "~no_such_user_xyz/runs"},
            "data": {"dataset": "npz", "path": "x\x00.npz", "mean": [10**400]},
        }
    )
    assert lines[0].startswith("p.toml: optim.lr: must be a finite number (got 10000")
    assert lines[0].endswith("...)") and len(lines[0]) < 150  # the value is cut short
    assert lines[1:] == [
        f"p.toml: run.epochs: must be a 64-bit integer (as TOML allows) (got {10**30})",
        "p.toml: data.mean: must be a list of finite numbers (got [1" + "0" * 75 + "...)",
        "p.toml: run.name: must not hold control characters (it names a folder) (got 'a\\x00b')",
        "p.toml: run.out_dir: starts with ~user, but there is no such user "
        "(got '~no_such_user_xyz/runs')",
        "p.toml: data.path: must not hold a NUL character (got 'x\\x00.npz')",
    ]


def test_an_npz_path_that_is_a_folder_says_it_is_a_folder(tmp_path):
    assert problems({"data": {"dataset": "npz", "path": str(tmp_path)}}) == [
        "p.toml: data.path: is a folder; point it at a .npz file with x_train/y_train "
        f"(got '{tmp_path}')"
    ]


def test_a_path_too_long_for_the_file_system_is_refused_by_name():
    (line,) = problems({"data": {"dataset": "npz", "path": "x" * 5000}})
    assert line.startswith("p.toml: data.path: cannot be used as a path (File name too long)")


def test_onecycle_takes_its_step_count_from_the_run_itself(train):
    # OneCycleLR needs a step count: mpt gives it the run's own (epochs, or max_steps).
    done = train(
        {
            "run": {"epochs": 5, "max_steps": 12},
            "optim": {"name": "sgd", "lr": 0.1},
            "schedule": {"name": "onecycle", "max_lr": 0.1},
            "train": {"log_every": 1},
        }
    )
    lrs = [e.lr for e in done.of("step")]
    peak = lrs.index(max(lrs))
    assert len(lrs) == 12 and 0 < peak < 11 and max(lrs) > 0.09
    assert lrs[-1] == pytest.approx(0.1 / 25 / 1e4)  # the cycle ends with the run


# ---- contradictions that only the data reveals ----


def npz(tmp_path: Path, **arrays) -> str:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)
    return str(path)


def test_early_stopping_on_val_loss_with_an_npz_lacking_a_test_split_fails_before_training(
    train, tmp_path
):
    # The profile cannot know: an npz may bring x_test/y_test. The run finds it has none.
    x, y = np.zeros((40, 4, 4), np.uint8), np.arange(40) % 2
    path = npz(tmp_path, x_train=x, y_train=y)
    done = train(
        {
            "data": {"dataset": "npz", "path": path, "val_fraction": 0.0},
            "early_stop": {"enabled": True, "monitor": "val_loss"},
        },
        check=False,
    )
    assert done.reason == "failed" and done.run.user_error
    assert done.run.error == (
        f"early_stop.monitor 'val_loss' needs a validation set, but {path} has no test split "
        "and data.val_fraction is 0; set data.val_fraction > 0 or monitor train_loss"
    )
    assert [e.kind for e in done.events] == ["run_failed"]


class _NoFp16(torch.nn.Module):
    """A model whose kernels do not exist in fp16 here: what an old CPU build says."""

    def __init__(self, in_shape, num_classes):
        super().__init__()
        self.fc = torch.nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes)

    def forward(self, x):
        if torch.is_autocast_enabled(x.device.type) and (
            torch.get_autocast_dtype(x.device.type) == torch.float16
        ):
            raise RuntimeError("\"addmm_impl_cpu_\" not implemented for 'Half'")
        return self.fc(x.flatten(1))


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module `hardening_models` on sys.path, holding the given source."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(source: str) -> str:
        (tmp_path / "hardening_models.py").write_text(source)
        sys.modules.pop("hardening_models", None)
        return "hardening_models"

    yield write
    sys.modules.pop("hardening_models", None)


def test_fp16_that_the_device_or_model_cannot_compute_fails_before_training(train, user_module):
    module = user_module(
        "import torch\nfrom test_hardening_input import _NoFp16\n"
        "def make(in_shape, num_classes):\n    return _NoFp16(in_shape, num_classes)\n"
    )
    done = train({"model": {"arch": f"{module}:make"}, "precision": {"mode": "fp16"}}, check=False)
    assert done.reason == "failed" and done.run.user_error
    assert done.run.error == (
        "precision.mode 'fp16': the model cannot run in fp16 on cpu (RuntimeError: "
        '"addmm_impl_cpu_" not implemented for \'Half\'); use "bf16" or "fp32"'
    )
    assert [e.kind for e in done.events] == ["run_failed"]
    # The same model in bf16 trains: the check is about the precision, not the model.
    assert train({"model": {"arch": f"{module}:make"}, "precision": {"mode": "bf16"}}).reason


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_on_a_machine_without_cuda_fails_before_training_saying_what_to_use(train):
    done = train({"run": {"device": "cuda"}}, check=False)
    assert done.run.user_error
    assert done.run.error == (
        'run.device: CUDA is not available on this machine (got \'cuda\'); use "auto" or "cpu"'
    )


def test_a_run_directory_that_cannot_be_made_exits_2_naming_run_out_dir(tmp_path):
    (tmp_path / "runs").write_text("a file where the runs folder should be")
    result = run_mpt("run", QUICKSTART, "--set", "run.out_dir=runs", cwd=tmp_path)
    one_line_exit_2(
        result,
        "error: run.out_dir: cannot create a run directory in runs/quickstart (Not a "
        "directory); point run.out_dir at a writable folder",
    )


# ---- data files that lie ----


def refused(cfg: DataSection) -> str:
    with pytest.raises(DataError) as info:
        load_data(cfg, seed=0)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_negative_labels_are_refused(tmp_path):
    path = npz(tmp_path, x_train=np.zeros((6, 4, 4), np.uint8), y_train=np.array([0, 1, -1] * 2))
    assert refused(DataSection(dataset="npz", path=path)) == (
        f"{path}: y_train: labels must be >= 0, got -1"
    )


def test_labels_that_are_ids_not_class_indices_are_refused_before_a_huge_model(tmp_path):
    labels = np.array([0, 1000, 2000, 3_000_000] * 5)
    path = npz(tmp_path, x_train=np.zeros((20, 4, 4), np.uint8), y_train=labels)
    assert refused(DataSection(dataset="npz", path=path, val_fraction=0.0)) == (
        f"{path}: labels must be class indices 0..K-1, but 4 distinct labels reach 3000000; "
        "map them to 0..3"
    )


def test_mpt_run_with_id_labels_exits_2_instead_of_running_out_of_memory(tmp_path):
    labels = np.arange(20) * 1_000_000  # once: 19,000,001 outputs, and the kernel's OOM killer
    npz(tmp_path, x_train=np.zeros((20, 8, 8), np.uint8), y_train=labels)
    result = run_mpt(
        "run", QUICKSTART, "--set", "data.dataset=npz", "--set", "data.path=d.npz", cwd=tmp_path
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: d.npz: labels must be class indices 0..K-1")
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1


def test_a_dataset_with_a_single_class_is_refused(tmp_path):
    path = npz(tmp_path, x_train=np.zeros((8, 4, 4), np.uint8), y_train=np.full(8, 3))
    assert refused(DataSection(dataset="npz", path=path)) == (
        f"{path}: every label is 3; a classifier needs at least 2 classes"
    )


def test_images_of_different_shapes_in_one_npz_array_are_refused_unpickled(tmp_path):
    ragged = np.empty(3, dtype=object)
    ragged[:] = [np.zeros((8, 8)), np.zeros((9, 9)), np.zeros((8, 8))]
    path = npz(tmp_path, x_train=ragged, y_train=np.arange(3))
    assert refused(DataSection(dataset="npz", path=path)) == (
        f"{path}: x_train is an array of Python objects (images of different shapes?), which "
        "mpt does not unpickle (allow_pickle=False: unpickling can run code); store one "
        "numeric array of shape (N, H, W) or (N, H, W, C)"
    )


def test_test_images_of_another_shape_than_the_training_images_are_refused(tmp_path):
    path = npz(
        tmp_path,
        x_train=np.zeros((6, 8, 8), np.uint8),
        y_train=np.arange(6) % 2,
        x_test=np.zeros((2, 9, 9), np.uint8),
        y_test=np.arange(2),
    )
    assert refused(DataSection(dataset="npz", path=path)) == (
        f"{path}: x_test images are (1, 9, 9) but x_train images are (1, 8, 8)"
    )


@pytest.mark.parametrize(
    "pixels, says",
    [
        (np.full((4, 3, 3), np.nan, np.float32), "pixel values must be finite, found NaN"),
        (np.full((4, 3, 3), "a"), "pixel values must be numbers, got dtype <U1"),
    ],
    ids=["nan", "strings"],
)
def test_pixels_that_are_not_finite_numbers_are_refused(tmp_path, pixels, says):
    path = npz(tmp_path, x_train=pixels, y_train=np.arange(4) % 2)
    assert refused(DataSection(dataset="npz", path=path)).startswith(f"{path}: x_train: {says}")


def test_an_empty_training_set_is_refused(tmp_path):
    path = npz(tmp_path, x_train=np.zeros((0, 8, 8), np.uint8), y_train=np.zeros(0, np.int64))
    assert refused(DataSection(dataset="npz", path=path)) == (
        "data.dataset 'npz': the training split is empty"
    )


def test_an_empty_test_split_is_refused_rather_than_validating_on_nothing(tmp_path):
    path = npz(
        tmp_path,
        x_train=np.zeros((6, 8, 8), np.uint8),
        y_train=np.arange(6) % 2,
        x_test=np.zeros((0, 8, 8), np.uint8),
        y_test=np.zeros(0, np.int64),
    )
    assert refused(DataSection(dataset="npz", path=path)) == (
        f"{path}: x_test holds no images; fill it, drop x_test/y_test, or set "
        "data.use_test_split = false"
    )


def test_an_image_folder_whose_class_folders_hold_no_images_is_refused(tmp_path):
    for name in ("cats", "dogs"):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        (tmp_path / "imgs" / name / "README.txt").write_text("no pictures yet")
    cfg = DataSection(dataset="image_folder", path=str(tmp_path / "imgs"))
    assert refused(cfg) == f"{tmp_path / 'imgs'}: no readable images in its class folders"


def test_an_image_folder_with_one_class_folder_is_refused(tmp_path):
    (tmp_path / "imgs" / "cats").mkdir(parents=True)
    for i in range(4):
        Image.new("RGB", (6, 6), (i, 0, 0)).save(tmp_path / "imgs" / "cats" / f"{i}.png")
    cfg = DataSection(dataset="image_folder", path=str(tmp_path / "imgs"), val_fraction=0.0)
    assert refused(cfg) == (
        f"{tmp_path / 'imgs'}: every label is 0; a classifier needs at least 2 classes"
    )


# ---- user model modules ----


def test_a_model_module_that_raises_on_import_is_named_with_its_error(train, user_module):
    module = user_module("import torch\nWIDTH = 1 / 0\n")
    done = train({"model": {"arch": f"{module}:make"}}, check=False)
    assert done.run.user_error
    assert done.run.error == (
        f"model.arch '{module}:make': importing '{module}' raised ZeroDivisionError: "
        "division by zero"
    )
    assert [e.kind for e in done.events] == ["run_failed"]


def test_toml_nested_deeper_than_python_can_parse_is_refused_not_a_crash(tmp_path):
    path = tmp_path / "deep.toml"
    path.write_text("[run]\nname = " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert str(info.value) == (
        f"{path}: not valid TOML for a profile: arrays or tables nested too deep"
    )
    with pytest.raises(ProfileError) as info:  # the same in a --set: taken as a bare string
        load_profile(QUICKSTART, ["run.epochs=" + "[" * 5000])
    assert str(info.value).startswith(f"{QUICKSTART}: run.epochs: must be an integer (got '[[[")
