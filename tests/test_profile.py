"""The profile: one schema for validation, TOML round-trip and the TUI's form fields."""

from __future__ import annotations

import dataclasses
import re
import sys
import tomllib

import pytest
from conftest import MNIST_NPZ, PROFILES, REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import ProfileError
from engine.notify_spec import NOTIFY_EVENTS
from engine.profile import (
    FIELDS,
    SECTIONS,
    Profile,
    apply_overrides,
    load_profile,
    parse_override,
    profile_from_dict,
    profile_from_toml,
)

KINDS = {
    "int",
    "float",
    "bool",
    "str",
    "choice",
    "int_list",
    "float_list",
    "str_list",
    "table",
    "float_table",
    "name",
    "weights",
}


def problems_of(data: dict, source: str = "p.toml") -> list[str]:
    with pytest.raises(ProfileError) as info:
        profile_from_dict(data, source)
    return str(info.value).splitlines()


# ---- the schema ----


def test_an_empty_profile_is_valid_and_equals_the_defaults():
    assert profile_from_dict({}) == Profile()


def test_fields_cover_every_key_of_every_section():
    declared = {f.path for f in FIELDS}
    in_code = {
        f"{section}.{f.name}" for section, cls in SECTIONS.items() for f in dataclasses.fields(cls)
    }
    assert declared == in_code
    assert (
        {f.section for f in FIELDS}
        == set(SECTIONS)
        == {f.name for f in dataclasses.fields(Profile)}
    )


@pytest.mark.parametrize("spec", FIELDS, ids=lambda f: f.path)
def test_every_field_has_a_kind_a_default_and_help(spec):
    assert spec.kind in KINDS
    assert spec.help and spec.help.strip() == spec.help and len(spec.help) > 10
    default = getattr(SECTIONS[spec.section](), spec.name)
    assert spec.default == default
    if spec.kind == "choice":
        assert spec.default in spec.choices
    if spec.optional:
        assert spec.default is None


@pytest.mark.parametrize("spec", [f for f in FIELDS if not f.optional], ids=lambda f: f.path)
def test_every_default_passes_its_own_validation(spec):
    # Writing the default back explicitly must be accepted and change nothing.
    assert profile_from_dict({spec.section: {spec.name: spec.default}}) == Profile()


def test_fields_that_the_design_names_exist():
    paths = {f.path for f in FIELDS}
    design = """
        run.name run.seed run.epochs run.max_steps run.max_time run.device run.out_dir
        run.deterministic data.dataset data.path data.root data.download data.batch_size
        data.val_fraction data.cache model.arch model.dropout optim.name optim.lr
        optim.momentum optim.weight_decay optim.betas schedule.name schedule.warmup_steps
        schedule.warmup_epochs precision.mode train.grad_accum train.clip_norm train.log_every
    """
    for path in design.split():
        assert path in paths


# ---- TOML round trip ----


@pytest.mark.parametrize("path", sorted(PROFILES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_profiles_round_trip_through_toml(path, monkeypatch):
    monkeypatch.chdir(REPO)  # relative data paths are taken from the working directory
    profile = load_profile(path)
    assert profile_from_toml(profile.to_toml()) == profile


def test_round_trip_keeps_optional_keys_absent():
    profile = profile_from_dict({"run": {"max_steps": 5}})
    assert profile.run.max_time is None
    again = profile_from_toml(profile.to_toml())
    assert again.run.max_steps == 5 and again.run.max_time is None
    assert "max_time" not in tomllib.loads(profile.to_toml())["run"]


def _value(spec):
    """A strategy for any value the key's own declaration accepts."""
    if spec.kind == "bool":
        return st.booleans()
    if spec.kind == "choice":
        return st.sampled_from(spec.choices)
    if spec.kind == "int":
        lo = spec.ge if spec.ge is not None else (spec.gt + 1 if spec.gt is not None else -(10**6))
        hi = spec.le if spec.le is not None else (spec.lt - 1 if spec.lt is not None else 10**12)
        return st.integers(min_value=int(lo), max_value=int(hi))
    if spec.kind == "float":
        lo = spec.ge if spec.ge is not None else spec.gt
        hi = spec.le if spec.le is not None else spec.lt
        return st.floats(
            min_value=lo,
            max_value=hi if hi is not None else 1e300,
            exclude_min=spec.gt is not None,
            exclude_max=spec.lt is not None,
            allow_nan=False,
            allow_infinity=False,
        )
    if spec.kind == "str":
        return st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)
    if spec.kind == "int_list":
        return st.lists(st.integers(min_value=1, max_value=4096), max_size=4)
    if spec.kind == "float_list":
        return st.lists(st.floats(allow_nan=False, allow_infinity=False), max_size=4)
    if spec.kind == "name":
        return st.sampled_from([*spec.choices, "my_pkg.things:make"])
    if spec.kind == "str_list":
        return st.lists(
            st.text(st.characters(blacklist_categories=("Cs",)), min_size=1), max_size=3
        )
    words = st.text("abcdefghij_.", min_size=1, max_size=8)
    if spec.kind == "table":
        return st.dictionaries(words, st.integers(-100, 100) | st.text(max_size=5), max_size=3)
    if spec.kind == "float_table":
        return st.dictionaries(words, st.floats(0, 100), max_size=3)
    if spec.kind == "weights":
        return st.just("balanced") | st.lists(st.floats(0.1, 5), max_size=4)
    raise AssertionError(spec.kind)


# Keys whose valid values are narrower than their kind (cross-checks), or that look at disk.
_SPECIAL = {
    "run.name": st.text(
        st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20
    ).filter(lambda s: "/" not in s and s not in (".", "..") and s.isprintable()),
    # A path may be any text but a NUL, or a ~user that does not exist.
    **{
        path: st.text(st.characters(blacklist_categories=("Cs",)), max_size=20).filter(
            lambda s: "\x00" not in s and not s.startswith("~")
        )
        for path in ("run.out_dir", "data.path", "data.root")
    },
    "run.device": st.sampled_from(["auto", "cpu", "cuda", "cuda:3", "mps"]),
    "data.dataset": st.sampled_from(["digits", "synthetic", "mnist", "cifar10"]),
    "data.synthetic_shape": st.lists(st.integers(1, 64), min_size=3, max_size=3),
    "data.mean": st.just([]),
    "data.std": st.just([]),
    "model.arch": st.sampled_from(["mlp", "cnn", "resnet18", "my_pkg.models:build"]),
    "model.channels": st.lists(st.integers(1, 512), min_size=1, max_size=3),
    "optim.betas": st.lists(st.floats(0.0, 0.999), min_size=2, max_size=2),
    "optim.nesterov": st.just(False),
    "model.pretrained": st.just(""),
    "notify.on": st.lists(st.sampled_from(NOTIFY_EVENTS), max_size=3),
    "notify.webhook": st.sampled_from(["", "https://hooks.example.com/T0/B0", "http://h:8080/"]),
    "notify.command": st.text(st.characters(blacklist_categories=("Cs",)), max_size=20).filter(
        lambda s: "\x00" not in s
    ),
}


_CROSS_CHECKED = {
    "schedule.name",
    "schedule.warmup_steps",
    "schedule.min_lr",
    "early_stop.monitor",
    "checkpoint.monitor",
    "task.kind",
    "task.loss",
    "task.metrics",
    "task.label_smoothing",
    "task.class_weights",
    "data.options",
    "model.options",
}


@st.composite
def profile_dicts(draw):
    data: dict = {}
    for spec in FIELDS:
        if draw(st.booleans()):  # leave about half the keys at their defaults
            continue
        value = draw(_SPECIAL.get(spec.path, _value(spec)))
        if spec.optional and draw(st.booleans()):
            continue
        data.setdefault(spec.section, {})[spec.name] = value
    mean = draw(st.lists(st.floats(-1, 1), max_size=3))
    data.setdefault("data", {}).update(
        download=True,  # mnist and cifar10 then need no folder on disk
        mean=mean,
        std=draw(st.lists(st.floats(0.01, 2), min_size=len(mean), max_size=len(mean))),
    )
    return data


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(profile_dicts())
def test_any_valid_profile_round_trips_through_toml(data):
    try:
        profile = profile_from_dict(data)
    except ProfileError as e:
        # Only a rule between random keys may refuse it (plateau without a validation set,
        # onecycle with a warmup, early stopping on val_* without validation).
        assert {p.key for p in e.problems} <= _CROSS_CHECKED, str(e)
        return
    text = profile.to_toml()
    assert profile_from_toml(text) == profile
    assert profile_from_toml(profile_from_toml(text).to_toml()) == profile


# ---- bad input: each problem as `file: key.path: what is wrong (got X)` ----

BAD = [  # the profile, the problem after 'p.toml: '
    pytest.param({"optim": {"lr": 0}}, "optim.lr: must be > 0 (got 0)", id="lr_zero"),
    pytest.param({"optim": {"lr": -0.1}}, "optim.lr: must be > 0 (got -0.1)", id="lr_negative"),
    pytest.param(
        {"data": {"batch_size": 0}}, "data.batch_size: must be >= 1 (got 0)", id="batch_size_zero"
    ),
    pytest.param({"run": {"epochs": 0}}, "run.epochs: must be >= 1 (got 0)", id="epochs_zero"),
    pytest.param(
        {"schedule": {"patience": -1}},
        "schedule.patience: must be >= 0 (got -1)",
        id="patience_negative",
    ),
    pytest.param(
        {"early_stop": {"patience": -1}},
        "early_stop.patience: must be >= 0 (got -1)",
        id="early_stop_patience_negative",
    ),
    pytest.param(
        {"data": {"val_fraction": 1.0}},
        "data.val_fraction: must be < 1 (got 1.0)",
        id="val_fraction_one",
    ),
    pytest.param({"model": {"dropout": 1}}, "model.dropout: must be < 1 (got 1)", id="dropout_one"),
    pytest.param(
        {"run": {"seed": 2**32}},
        "run.seed: must be <= 4294967295 (got 4294967296)",
        id="seed_too_big",
    ),
    pytest.param(
        {"run": {"epochs": "3"}}, "run.epochs: must be an integer (got '3')", id="epochs_string"
    ),
    pytest.param(
        {"run": {"epochs": 2.5}}, "run.epochs: must be an integer (got 2.5)", id="epochs_float"
    ),
    pytest.param(
        {"optim": {"lr": "fast"}}, "optim.lr: must be a number (got 'fast')", id="lr_string"
    ),
    pytest.param({"optim": {"lr": True}}, "optim.lr: must be a number (got true)", id="lr_bool"),
    pytest.param(
        {"data": {"download": "yes"}},
        "data.download: must be true or false (got 'yes')",
        id="download_string",
    ),
    pytest.param(
        {"model": {"hidden": 128}},
        "model.hidden: must be a list of integers (got 128)",
        id="hidden_not_list",
    ),
    pytest.param({"run": {"name": 7}}, "run.name: must be a string (got 7)", id="name_not_string"),
    pytest.param({"optim": 3}, "optim: must be a [optim] table (got 3)", id="section_not_table"),
    pytest.param(
        {"run": {"device": "gpu"}},
        "run.device: must be auto, cpu, cuda, cuda:N or mps (got 'gpu')",
        id="device_unknown",
    ),
    pytest.param(
        {"model": {"hidden": [128, 0]}},
        "model.hidden: every layer size must be >= 1 (got [128, 0])",
        id="hidden_zero",
    ),
    pytest.param(
        {"optim": {"lr": {"a": 1}}}, "optim.lr: must be a number (got {a = 1})", id="lr_table"
    ),
    pytest.param(
        {"optim": {"betas": [0.9, 0.99, 0.999]}},
        "optim.betas: must be two numbers in [0, 1) (got [0.9, 0.99, 0.999])",
        id="betas_three",
    ),
]


@pytest.mark.parametrize("data, expected", BAD)
def test_bad_value_is_reported_with_file_key_and_got(data, expected):
    assert problems_of(data) == [f"p.toml: {expected}"]


def test_unknown_key_suggests_the_close_one():
    assert problems_of({"optim": {"lrr": 0.1}}) == [
        "p.toml: optim.lrr: unknown key; did you mean 'lr'?"
    ]


def test_unknown_section_suggests_the_close_one():
    assert problems_of({"trian": {"log_every": 5}}) == [
        "p.toml: trian: unknown section; did you mean 'train'?"
    ]


def test_unknown_dataset_lists_choices_and_suggests():
    (line,) = problems_of({"data": {"dataset": "mnsit"}})
    assert line.startswith("p.toml: data.dataset: must be one of digits, mnist, fashion_mnist")
    assert line.endswith("did you mean 'mnist'? (got 'mnsit')")


def test_unknown_arch_suggests_a_builtin():
    (line,) = problems_of({"model": {"arch": "resnet"}})
    assert line.startswith("p.toml: model.arch: must be mlp, cnn, resnet18")
    assert line.endswith("did you mean 'resnet18'? (got 'resnet')")


def test_unknown_optimizer_suggests():
    (line,) = problems_of({"optim": {"name": "adamm"}})
    assert "did you mean 'adam'" in line and line.endswith("(got 'adamm')")


def test_missing_npz_file_is_refused(tmp_path):
    missing = tmp_path / "nope.npz"
    assert problems_of({"data": {"dataset": "npz", "path": str(missing)}}) == [
        "p.toml: data.path: no such file; point it at a .npz with x_train/y_train "
        f"(got '{missing}')"
    ]


def test_npz_without_a_path_is_refused():
    (line,) = problems_of({"data": {"dataset": "npz"}})
    assert line.startswith("p.toml: data.path: the npz dataset needs the path of a .npz file")


def test_missing_image_folder_is_refused(tmp_path):
    missing = tmp_path / "images"
    (line,) = problems_of({"data": {"dataset": "image_folder", "path": str(missing)}})
    assert line.startswith("p.toml: data.path: no such folder") and line.endswith(
        f"(got '{missing}')"
    )


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "cifar10"])
def test_torchvision_dataset_without_root_and_without_download_is_refused(dataset, tmp_path):
    root = tmp_path / "nowhere"
    (line,) = problems_of({"data": {"dataset": dataset, "root": str(root), "download": False}})
    assert line.startswith("p.toml: data.root: no such folder, and data.download is false")
    assert "data.download = true" in line and line.endswith(f"(got '{root}')")


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist", "cifar10"])
def test_torchvision_dataset_with_download_needs_no_folder_yet(dataset, tmp_path):
    profile_from_dict({"data": {"dataset": dataset, "root": str(tmp_path / "x"), "download": True}})


def test_every_problem_is_reported_at_once(tmp_path):
    lines = problems_of(
        {
            "optim": {"lr": 0, "lrr": 1},
            "data": {"batch_size": 0, "dataset": "npz", "path": str(tmp_path / "missing.npz")},
            "run": {"epochs": "ten"},
            "trian": {},
            "model": {"arch": "resnet"},
        }
    )
    keys = sorted(line.split(": ")[1] for line in lines)
    assert keys == sorted(
        [
            "optim.lr",
            "optim.lrr",
            "data.batch_size",
            "data.path",
            "run.epochs",
            "trian",
            "model.arch",
        ]
    )


def test_a_key_with_a_wrong_value_is_not_reported_twice():
    # data.path is both the wrong type and (as a cross-check) missing for npz.
    lines = problems_of({"data": {"dataset": "npz", "path": 3}})
    assert lines == ["p.toml: data.path: must be a string (got 3)"]


def test_cross_checks_between_keys():
    lines = problems_of(
        {
            "optim": {"name": "adam", "nesterov": True},
            "schedule": {"name": "plateau"},
            "data": {"val_fraction": 0.0},
        }
    )
    assert [line.split(": ")[1] for line in lines] == ["optim.nesterov", "schedule.name"]
    assert all(line.endswith(")") and "(got " in line for line in lines)


def test_onecycle_refuses_a_warmup():
    (line,) = problems_of({"schedule": {"name": "onecycle", "warmup_steps": 10}})
    assert line.startswith("p.toml: schedule.warmup_steps: onecycle warms up by itself")


# ---- files ----


def test_malformed_toml_names_the_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('[run]\nname = "x"\nepochs = = 3\n')
    with pytest.raises(ProfileError) as info:
        load_profile(bad)
    (line,) = str(info.value).splitlines()
    assert line.startswith(f"{bad}: not valid TOML: ")
    assert re.search(r"line 3, column \d+", line), line


def test_empty_file_says_where_to_start(tmp_path):
    empty = tmp_path / "empty.toml"
    empty.write_text("\n")
    with pytest.raises(ProfileError, match=r"empty\.toml: the file is empty; start from"):
        load_profile(empty)


def test_missing_profile_file(tmp_path):
    with pytest.raises(ProfileError, match=r"nope\.toml: no such file"):
        load_profile(tmp_path / "nope.toml")


def test_profile_that_is_not_text(tmp_path):
    binary = tmp_path / "b.toml"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    with pytest.raises(ProfileError, match=r"b\.toml: is not a text file"):
        load_profile(binary)


def test_problems_name_the_file_they_come_from(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[optim]\nlr = -1\n")
    with pytest.raises(ProfileError) as info:
        load_profile(path)
    assert str(info.value) == f"{path}: optim.lr: must be > 0 (got -1)"


# ---- --set overrides ----


@pytest.mark.parametrize(
    "item, expected",
    [
        ("optim.lr=0.05", ("optim.lr", 0.05)),
        ("run.epochs=2", ("run.epochs", 2)),
        ("data.download=true", ("data.download", True)),
        ("model.hidden=[256, 128]", ("model.hidden", [256, 128])),
        ('run.device="cuda:1"', ("run.device", "cuda:1")),
        ("data.dataset=synthetic", ("data.dataset", "synthetic")),  # a bare word: a string
        ("run.out_dir=/tmp/my runs", ("run.out_dir", "/tmp/my runs")),
    ],
)
def test_override_values_are_read_as_toml(item, expected):
    assert parse_override(item) == expected


def test_override_without_equals_is_refused():
    with pytest.raises(ProfileError) as info:
        parse_override("optim.lr")
    assert str(info.value) == "--set: optim.lr: must look like section.key=value"


def test_override_without_a_section_is_refused():
    with pytest.raises(ProfileError, match=r"--set: lr: must be section.key"):
        apply_overrides({}, ["lr=0.1"])


def test_overrides_apply_on_top_of_the_file_and_leave_it_unchanged(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[optim]\nname = 'adam'\nlr = 0.001\n[run]\nepochs = 15\n")
    profile = load_profile(path, ["optim.lr=0.05", "run.epochs=2", "data.dataset=synthetic"])
    assert (profile.optim.name, profile.optim.lr, profile.run.epochs) == ("adam", 0.05, 2)
    assert isinstance(profile.optim.lr, float) and isinstance(profile.run.epochs, int)
    assert profile.data.dataset == "synthetic"
    assert load_profile(path).optim.lr == 0.001


def test_a_bad_override_is_reported_like_a_bad_key(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("[run]\nepochs = 1\n")
    with pytest.raises(ProfileError) as info:
        load_profile(path, ["optim.lr=-1", "optim.lrr=1"])
    assert str(info.value).splitlines() == [
        f"{path}: optim.lr: must be > 0 (got -1)",
        f"{path}: optim.lrr: unknown key; did you mean 'lr'?",
    ]


def test_the_profile_module_does_not_import_torch():
    import subprocess

    code = "import engine.profile, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_shared_npz_is_where_the_tests_expect_it():
    assert MNIST_NPZ.is_file(), f"{MNIST_NPZ}: the shared MNIST sample is missing"
