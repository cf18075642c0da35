"""Checkpoints that pass the version check but are malformed, and checkpoints that name
code to import: one sentence naming the file and the key, exit 2, no run directory, and
code named by a checkpoint runs only with the user's consent (issue 13, groups 7, 14).

Every bad checkpoint here is a real one, written by a tiny real run, then changed in one
place; the CLI runs as `mpt` in a subprocess, or (for the long list of cases) as the
same typer app in this process.
"""

from __future__ import annotations

import copy
import math
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from durable_helpers import invoke, mpt, profile_dict, train, write_toml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine import checkpoint as ckpt
from engine.checkpoint import CheckpointError


@pytest.fixture(scope="module")
def good_run(tmp_path_factory) -> Path:
    """A tiny real run (adam, 3 steps, a checkpoint at each): its run directory."""
    out = tmp_path_factory.mktemp("trust") / "runs"
    extra = {
        "run": {"max_steps": 3},
        "optim": {"name": "adam"},
        "checkpoint": {"every_steps": 1, "keep_last": 0},
    }
    return train(profile_dict(out, extra)).run_dir


@pytest.fixture(scope="module")
def good_state(good_run) -> dict[str, Any]:
    return torch.load(good_run / "checkpoints" / "last.pt", weights_only=True)


def _set(*path_and_value):
    """A mutation that sets state[a][b]... = value."""
    *path, value = path_and_value

    def change(state):
        for key in path[:-1]:
            state = state[key]
        state[path[-1]] = value

    return change


def _drop(*path):
    def change(state):
        for key in path[:-1]:
            state = state[key]
        del state[path[-1]]

    return change


# name: (change, the key the sentence must name). Each one passes the format and version
# checks that existed before (format "mpt-checkpoint", an int version <= 1).
FOUND_ON_READING = {
    "no_profile": (_drop("profile"), "profile is missing"),
    "profile_hello": (_set("profile", "hello"), "profile must be a table (got 'hello')"),
    "profile_bad_value": (_set("profile", "model", "hidden", [0]), "profile.model.hidden"),
    "profile_unknown_section": (_set("profile", "extra", {}), "profile.extra"),
    "no_progress": (_drop("progress"), "progress is missing"),
    "rng_empty": (_set("rng", {}), "rng.python is missing"),
    "rng_numpy_garbage": (_set("rng", "numpy", ["MT19937", [1, 2], 0, 0, 0.0]), "rng.numpy"),
    "rng_torch_wrong_size": (_set("rng", "torch", torch.zeros(7, dtype=torch.uint8)), "rng.torch"),
    "optimizer_groups_empty": (_set("optimizer", "param_groups", []), "optimizer.param_groups"),
    "optimizer_group_no_params": (
        _set("optimizer", "param_groups", 0, "params", []),
        "optimizer.param_groups[0].params",
    ),
    "optimizer_state_orphan": (_set("optimizer", "state", 99, {}), "optimizer.state[99]"),
    "extra_key": (_set("surprise", 1), "'surprise'"),
    "negative_version": (_set("version", -1), "version must be a whole number >= 1"),
    "version_true": (_set("version", True), "version"),
    "epochs_done_absurd": (_set("progress", "epochs_done", 10**12), "progress.epochs_done"),
    "epochs_done_negative": (
        _set("progress", "epochs_done", -3),
        "progress.epochs_done must be a whole number >= 0 (got -3)",
    ),
    "step_string": (_set("progress", "step", "5"), "progress.step"),
    "step_absurd": (_set("progress", "step", 10**15), "progress.step"),
    "metrics_list": (_set("metrics", [1, 2]), "metrics must be a table"),
    "metric_string": (_set("metrics", "val_acc", "high"), "metrics.val_acc"),
    "model_empty": (_set("model", {}), "model holds no tensors"),
    "model_not_tensor": (_set("model", "net.1.weight", [1.0]), "model['net.1.weight']"),
    "best_weights_other_keys": (_set("best_weights", {"w": torch.zeros(1)}), "best_weights"),
    "tracker_wait_float": (_set("early_stop", "wait", 1.5), "early_stop.wait"),
    "skipped_float": (_set("progress", "skipped", torch.tensor(0.5)), "progress.skipped"),
    "loss_sum_vector": (_set("progress", "epoch_loss", torch.zeros(3)), "progress.epoch_loss"),
    "time_infinite": (_set("time", math.inf), "time"),
    "schedule_lrs": (_set("schedule", "per_step", "base_lrs", [0.1, 0.1]), "base_lrs"),
    "no_schedule_position": (_set("schedule", {}), "schedule.per_step is missing"),
    "world_size_zero": (_set("progress", "world_size", 0), "progress.world_size"),
    "ranks_wrong_count": (_set("ranks", [{}, {}]), "ranks must hold one entry per process"),
    "python_rng_garbage": (_set("rng", "python", (3, (1, 2), None)), "rng.python"),
}

# Found where the model and the optimizer are built from the profile: only they know the
# shapes the weights must have.
FOUND_WHERE_BUILT = {
    "model_tensor_wrong_shape": (
        _set("model", "net.1.weight", torch.zeros(32, 65)),
        "model['net.1.weight'] has shape [32, 65], the model needs [32, 64]",
    ),
    "optimizer_state_wrong_shape": (
        _set("optimizer", "state", 0, "exp_avg", torch.zeros(3)),
        "optimizer.state[0].exp_avg has shape [3]",
    ),
}

# The cases issue 13 lists, run through the real `mpt` console script in a subprocess.
LISTED = ["no_profile", "epochs_done_negative"]


def write_bad(state: dict, change, folder: Path, name: str) -> Path:
    bad = copy.deepcopy(state)
    change(bad)
    path = folder / f"{name}.pt"
    torch.save(bad, path)
    return path


def assert_one_sentence(text: str, path: Path, phrase: str) -> None:
    lines = text.strip().splitlines()
    assert len(lines) == 1, text
    assert lines[0].startswith(f"error: {path}: "), text
    assert phrase in lines[0], text
    assert "Traceback" not in text


def run_dirs(out: Path) -> set[Path]:
    return {p for p in out.glob("*/*") if p.is_dir()}


# ---- reading: every structural fault is one sentence naming the key ----


@pytest.mark.parametrize("case", sorted(FOUND_ON_READING))
def test_a_malformed_checkpoint_is_refused_on_reading_naming_the_key(case, good_state, tmp_path):
    change, phrase = FOUND_ON_READING[case]
    path = write_bad(good_state, change, tmp_path, case)
    with pytest.raises(CheckpointError) as info:
        ckpt.load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a usable mpt checkpoint: "), message
    assert phrase in message and "\n" not in message, message


def test_a_good_checkpoint_of_a_real_run_passes_the_check(good_run):
    for path in (good_run / "checkpoints").glob("*.pt"):
        ckpt.load(path)


# Values of other types than any a checkpoint holds where they are put.
OTHER_VALUES = [None, "x", -1, 10**13, 1.5, math.nan, True, [], [1, "a"], {}, {"k": 1},
                torch.zeros(2), torch.zeros(2, dtype=torch.uint8)]  # fmt: skip


def _paths(value: Any, prefix: tuple = (), depth: int = 0) -> list[tuple]:
    """Every key path into the nested dicts (and lists) of a checkpoint, 4 levels deep."""
    out = []
    if depth >= 4:
        return out
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = list(enumerate(value))
    else:
        return out
    for key, item in items:
        out.append((*prefix, key))
        out += _paths(item, (*prefix, key), depth + 1)
    return out


def _mutate(state: dict, path: tuple, drop: bool, value: Any) -> dict:
    state = copy.deepcopy(state)
    holder = state
    for key in path[:-1]:
        holder = holder[key]
    if drop and isinstance(holder, dict):
        del holder[path[-1]]
    else:
        holder[path[-1]] = copy.deepcopy(value)
    return state


@pytest.fixture(scope="module")
def fuzz_paths(good_state):
    return _paths(good_state)


def test_fuzz_dropping_a_key_or_retyping_a_value_is_one_sentence_or_a_checkpoint_that_works(
    good_state, fuzz_paths, tmp_path
):
    """300 mutations: each is refused as one CheckpointError sentence, or accepted and
    then fully restorable (info() and the trainer's own restore step do not fail)."""
    path = tmp_path / "fuzzed.pt"
    path.write_bytes(b"")  # info() reads its time from the file when the state has none
    seen = {"refused": 0, "accepted": 0}

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.sampled_from(fuzz_paths), st.booleans(), st.sampled_from(OTHER_VALUES))
    def check(where, drop, value):
        state = _mutate(good_state, where, drop, value)
        try:
            ckpt.validate(path, state)
        except CheckpointError as e:
            message = str(e)
            assert message.startswith(f"{path}: not a usable mpt checkpoint: "), message
            assert "\n" not in message and len(message) < 400, message
            seen["refused"] += 1
            return
        ckpt.info(path, state)  # what the picker shows
        seen["accepted"] += 1

    check()
    assert seen["refused"] > 200, seen


# ---- the CLI: exit 2, one line, no run directory ----


@pytest.mark.parametrize("case", sorted(FOUND_ON_READING))
def test_mpt_run_resume_and_mpt_export_of_a_malformed_checkpoint_exit_2_with_one_line(
    case, good_state, tmp_path
):
    change, phrase = FOUND_ON_READING[case]
    path = write_bad(good_state, change, tmp_path, case)
    out = Path(good_state["profile"]["run"]["out_dir"])
    before = run_dirs(out)
    for args in (["run", "--resume", str(path)], ["export", str(path)]):
        result = invoke(*args)
        assert result.exit_code == 2, (args, result.output, result.exception)
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert_one_sentence(result.stderr, path, phrase)
    assert run_dirs(out) == before
    assert not list(tmp_path.glob("*.state_dict.pt"))  # export wrote nothing


@pytest.mark.parametrize("case", LISTED)
def test_the_mpt_command_refuses_a_malformed_checkpoint_with_one_line(case, good_state, tmp_path):
    change, phrase = FOUND_ON_READING[case]
    path = write_bad(good_state, change, tmp_path, case)
    out = Path(good_state["profile"]["run"]["out_dir"])
    before = run_dirs(out)
    for args in (["run", "--resume", path], ["export", path]):
        r = mpt(*args, cwd=tmp_path)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert_one_sentence(r.stderr, path, phrase)
        assert "run directory:" not in r.stdout
    assert run_dirs(out) == before


@pytest.mark.parametrize("case", sorted(FOUND_WHERE_BUILT))
def test_weights_or_optimizer_state_of_the_wrong_shape_are_one_sentence_naming_the_key(
    case, good_state, tmp_path
):
    change, phrase = FOUND_WHERE_BUILT[case]
    path = write_bad(good_state, change, tmp_path, case)
    ckpt.load(path)  # the structure is right: only the model built from the profile can tell
    result = invoke(
        "run", "--resume", str(path), "--set", "run.max_steps=5", "--set", "run.epochs=2"
    )
    assert result.exit_code == 2, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {path}: "), result.stderr
    assert phrase in errors[0], errors[0]
    assert "Traceback" not in result.output + result.stderr
    if case == "model_tensor_wrong_shape":
        exported = invoke("export", str(path))
        assert exported.exit_code == 2
        assert_one_sentence(exported.stderr, path, phrase)


def test_weights_of_the_wrong_shape_leave_no_run_directory(good_state, tmp_path):
    change, _ = FOUND_WHERE_BUILT["model_tensor_wrong_shape"]
    path = write_bad(good_state, change, tmp_path, "shape")
    out = Path(good_state["profile"]["run"]["out_dir"])
    before = run_dirs(out)
    assert (
        invoke(
            "run", "--resume", str(path), "--set", "run.max_steps=5", "--set", "run.epochs=2"
        ).exit_code
        == 2
    )
    assert run_dirs(out) == before


# ---- the picker: one bad checkpoint never hides the good ones ----


def test_the_picker_lists_every_good_checkpoint_beside_a_bad_one_with_its_sentence(
    good_run, good_state, tmp_path
):
    import shutil

    from tui.screens.resume import list_run_checkpoints

    run_dir = tmp_path / "run"
    shutil.copytree(good_run, run_dir)
    good = sorted(c.step for c in ckpt.list_checkpoints(run_dir))
    assert len(good) >= 4  # step-1, step-2, step-3, last (and best)
    write_bad(good_state, FOUND_ON_READING["metrics_list"][0], run_dir / "checkpoints", "bad")
    write_bad(good_state, FOUND_ON_READING["no_progress"][0], run_dir / "checkpoints", "zz")
    assert sorted(c.step for c in ckpt.list_checkpoints(run_dir)) == good
    listed = ckpt.list_checkpoints(run_dir, unusable=True)
    assert sorted(c.step for c in listed if c.problem is None) == good
    bad = {Path(c.path).name: c.problem for c in listed if c.problem is not None}
    assert set(bad) == {"bad.pt", "zz.pt"}
    assert "metrics must be a table" in bad["bad.pt"]
    assert "progress is missing" in bad["zz.pt"]
    shown = list_run_checkpoints(run_dir)  # what tui/screens/resume.py shows
    assert [c.step for c in shown if c.problem is None] == sorted(good, reverse=True)
    assert [Path(c.path).name for c in shown[-2:]] == ["bad.pt", "zz.pt"]


# ---- code named by a checkpoint: imported only with the user's consent ----

EVILMOD = """\
from pathlib import Path
Path(__file__).with_name("MARKER").write_text("imported")

import torch


def f(in_shape, num_classes):
    c, h, w = in_shape
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c * h * w, num_classes))
"""


@pytest.fixture(scope="module")
def evil_run(tmp_path_factory):
    """A folder holding evilmod.py, and a real checkpoint of a run whose own profile named
    it (the user's consent then); the marker it wrote on import is removed.

    The run is the engine's own, in this process (the `mpt` commands under test come
    after it); evilmod is imported from the folder, and forgotten after."""
    folder = tmp_path_factory.mktemp("evil")
    (folder / "evilmod.py").write_text(EVILMOD)
    data = profile_dict(folder / "runs", {"model": {"arch": "evilmod:f"}, "run": {"max_steps": 2}})
    profile = write_toml(folder / "mine.toml", data)
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(folder))
        try:
            run_dir = train(data).run_dir
        finally:
            sys.modules.pop("evilmod", None)
    assert (folder / "MARKER").exists()
    (folder / "MARKER").unlink()
    return folder, profile, run_dir / "checkpoints" / "last.pt"


REFUSED = "its profile imports code 'evilmod:f'; mpt runs code named by a checkpoint only"


def test_a_checkpoint_naming_model_code_imports_nothing_without_consent(evil_run):
    folder, _, checkpoint = evil_run
    out = folder / "runs"
    before = run_dirs(out)
    r = mpt("run", "--resume", checkpoint, cwd=folder)
    assert r.returncode == 2, r.stderr
    assert_one_sentence(r.stderr, checkpoint, REFUSED + " with --trust-code (or pass the profile")
    r = mpt("export", checkpoint, cwd=folder)
    assert r.returncode == 2, r.stderr
    assert_one_sentence(r.stderr, checkpoint, REFUSED + " with --trust-code")
    assert not (folder / "MARKER").exists()
    assert run_dirs(out) == before


def test_trust_code_or_the_users_own_profile_imports_it_and_works(evil_run):
    folder, profile, checkpoint = evil_run
    marker = folder / "MARKER"
    r = mpt("export", checkpoint, "--trust-code", "--out", folder / "m.pt", cwd=folder)
    assert r.returncode == 0, r.stderr
    assert marker.exists() and (folder / "m.pt").is_file()
    marker.unlink()
    r = mpt(
        "run",
        "--resume",
        checkpoint,
        "--trust-code",
        "--set",
        "run.max_steps=3",
        "--set",
        "run.epochs=2",
        cwd=folder,
    )
    assert r.returncode == 0, r.stderr
    assert marker.exists()
    marker.unlink()
    r = mpt(
        "run",
        profile,
        "--resume",
        checkpoint,
        "--set",
        "run.max_steps=3",
        "--set",
        "run.epochs=2",
        cwd=folder,
    )
    assert r.returncode == 0, r.stderr
    assert marker.exists()


def test_a_checkpoint_whose_profile_was_rewritten_to_name_code_is_refused_in_process(
    good_state, tmp_path
):
    """The attack as issue 13 gives it: a benign run's checkpoint, its arch rewritten."""
    from engine.run import Run

    path = write_bad(good_state, _set("profile", "model", "arch", "evilmod:f"), tmp_path, "x")
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: {REFUSED}")):
        Run.start(resume=path, write=False)
    result = invoke("export", str(path))
    assert result.exit_code == 2
    assert_one_sentence(result.stderr, path, REFUSED)
