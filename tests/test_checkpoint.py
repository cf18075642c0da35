"""Checkpoint files: when they are written, what survives a kill, what is refused on load.

DESIGN.md, Checkpoints: written atomically (temporary file in the same folder, flush +
fsync, os.replace); read with torch.load(weights_only=True); a checkpoint that cannot
be used is one clear sentence, and `mpt run --resume` turns it into exit 2.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import signal
import subprocess
import sys
import textwrap

import pytest
import torch
from durable_helpers import (
    REPO,
    assert_same,
    invoke,
    load,
    mpt,
    profile_dict,
    train,
    wait_for,
)
from torch import nn

from engine import checkpoint as ckpt
from engine.checkpoint import CheckpointError

# ---- cadence: every N epochs and/or steps, keep_last, save_best, last.pt ----

# 23 optimizer steps an epoch (digits, batch 64, no accumulation).
SPE = 23


def saved(done, reason: str | None = None) -> list[int]:
    return [e.step for e in done.of("checkpoint_saved") if reason in (None, e.reason)]


def test_every_epochs_saves_at_every_nth_epoch_and_at_the_end(tmp_path):
    done = train(
        profile_dict(
            tmp_path,
            {"run": {"epochs": 5}, "train": {"log_every": 100}},
            {"checkpoint": {"every_epochs": 2, "keep_last": 0, "save_best": False}},
        )
    )
    assert saved(done, "epoch") == [2 * SPE, 4 * SPE]
    assert saved(done, "final") == [5 * SPE]
    assert done.step_files() == [f"step-{s:06d}.pt" for s in (2 * SPE, 4 * SPE, 5 * SPE)]


def test_every_steps_saves_at_every_nth_step_and_at_the_end(tmp_path):
    done = train(
        profile_dict(
            tmp_path,
            {"run": {"epochs": 2}, "train": {"log_every": 100}},
            {"checkpoint": {"every_epochs": 0, "every_steps": 10, "keep_last": 0}},
            {"checkpoint": {"save_best": False}},
        )
    )
    assert saved(done, "steps") == [10, 20, 30, 40]
    assert done.step_files() == [f"step-{s:06d}.pt" for s in (10, 20, 30, 40, 2 * SPE)]
    for name in done.step_files():
        assert load(done.ckpt_dir / name)["progress"]["step"] == int(name[5:11])


def test_every_epochs_and_every_steps_together_save_at_both(tmp_path):
    done = train(
        profile_dict(
            tmp_path,
            {"run": {"epochs": 2}, "train": {"log_every": 100}},
            {"checkpoint": {"every_epochs": 1, "every_steps": 10, "keep_last": 0}},
            {"checkpoint": {"save_best": False}},
        )
    )
    assert done.step_files() == [f"step-{s:06d}.pt" for s in (10, 20, SPE, 30, 40, 2 * SPE)]


def test_keep_last_leaves_only_the_newest_periodic_checkpoints(tmp_path):
    done = train(
        profile_dict(
            tmp_path,
            {"run": {"epochs": 2}, "train": {"log_every": 100}},
            {"checkpoint": {"every_epochs": 1, "every_steps": 5, "keep_last": 2}},
        )
    )
    assert len(saved(done)) > 2
    # The file best.pt holds stays too (issue 13: keep_last never prunes the best one).
    best = load(done.ckpt_dir / "best.pt")["progress"]["step"]
    expected = {"step-000045.pt", f"step-{2 * SPE:06d}.pt", f"step-{best:06d}.pt"}
    assert done.step_files() == sorted(expected)


BEST = (
    {"run": {"epochs": 8}, "train": {"log_every": 100}},
    {"optim": {"name": "adam", "lr": 0.03}},
)


@pytest.fixture(scope="module", params=["val_loss", "val_acc"])
def best_run(request, tmp_path_factory):
    """save_best by a monitor, keep_last 1: best.pt outlives its own step file."""
    monitor = request.param
    out = tmp_path_factory.mktemp(f"best-{monitor}")
    ck = {"checkpoint": {"save_best": True, "monitor": monitor, "keep_last": 1}}
    return monitor, train(profile_dict(out, *BEST, ck))


def test_best_pt_holds_the_step_with_the_best_monitored_value(best_run):
    monitor, done = best_run
    ends = done.of("epoch_end")
    values = [getattr(e, monitor) for e in ends]
    best = min(values) if monitor == "val_loss" else max(values)
    best_epoch = ends[values.index(best)]  # the first epoch that reached it
    assert best_epoch.epoch < len(ends), "pick a setup whose best epoch is not the last"

    state = load(done.ckpt_dir / "best.pt")

    assert state["progress"]["step"] == best_epoch.step
    assert state["metrics"][monitor] == best


def test_each_checkpoint_records_the_best_so_far_including_its_own_validation(best_run):
    # Resuming from a checkpoint must not forget that its own epoch was the best.
    monitor, done = best_run
    state = load(done.ckpt_dir / "best.pt")
    assert state["best_checkpoint"]["best"] == state["metrics"][monitor]
    assert state["best_checkpoint"]["best_step"] == state["progress"]["step"]


def test_best_pt_events_and_the_picker_name_the_monitor_and_its_value(best_run):
    # The dashboard's "best" is the headline metric's; best.pt follows checkpoint.monitor:
    # each best.pt event and the picker's line say which, so the two never seem to disagree.
    from engine.checkpoint import info

    monitor, done = best_run
    bests = [e for e in done.of("checkpoint_saved") if e.reason == "best"]
    assert bests and all(e.monitor == monitor for e in bests)
    state = load(done.ckpt_dir / "best.pt")
    assert bests[-1].value == state["metrics"][monitor]
    line = info(done.ckpt_dir / "best.pt", state)
    assert (line.monitor, line.monitor_value) == (monitor, state["metrics"][monitor])
    assert line.metric_name == "val_acc"  # the headline, whatever the monitor


def test_last_pt_is_always_the_newest_checkpoint(tmp_path):
    done = train(
        profile_dict(
            tmp_path,
            {"run": {"epochs": 3}, "train": {"log_every": 100}},
            {"optim": {"name": "adam", "lr": 0.02}},
            {"checkpoint": {"every_steps": 7, "keep_last": 0, "save_best": True}},
        )
    )
    newest = done.ckpt_dir / done.step_files()[-1]
    assert os.path.samefile(done.ckpt_dir / "last.pt", newest)
    assert load(done.ckpt_dir / "last.pt")["progress"]["step"] == 3 * SPE


# ---- a kill in the middle of a write ----

KILL_DRIVER = textwrap.dedent(
    """
    import io, json, sys, time
    from pathlib import Path
    import torch

    profile, flag = json.loads(sys.argv[1]), Path(sys.argv[2])
    real_save = torch.save

    def save_then_hang(obj, f, *args, **kwargs):
        # The second checkpoint: write half of it, say so, and wait for SIGKILL.
        if "step-000002" in str(getattr(f, "name", f)):
            buf = io.BytesIO()
            real_save(obj, buf, *args, **kwargs)
            f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
            f.flush()
            flag.with_suffix(".tmp").write_text(f.name)
            flag.with_suffix(".tmp").rename(flag)  # whole, or not there at all
            time.sleep(600)
        return real_save(obj, f, *args, **kwargs)

    torch.save = save_then_hang  # engine.checkpoint.save_atomic calls torch.save(state, f)
    from engine.profile import profile_from_dict
    from engine.run import Run

    Run.start(profile_from_dict(profile)).join()
    """
)


def test_sigkill_while_writing_a_checkpoint_leaves_the_previous_one_intact(tmp_path):
    data = profile_dict(
        tmp_path / "runs",
        {"run": {"name": "killed", "max_steps": 5}},
        {"checkpoint": {"every_steps": 1, "keep_last": 0}},
    )
    flag = tmp_path / "writing"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_DRIVER, json.dumps(data), str(flag)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for(lambda: flag.exists() or proc.poll() is not None, 120, "the second write")
        assert proc.poll() is None, proc.stderr.read().decode()
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    (run_dir,) = (tmp_path / "runs" / "killed").iterdir()
    folder = run_dir / "checkpoints"
    partial = folder / os.path.basename(flag.read_text())
    assert partial.exists()  # the half-written temporary file, under a hidden name

    assert sorted(p.name for p in folder.glob("*.pt")) == ["last.pt", "step-000001.pt"]
    assert load(folder / "last.pt")["progress"]["step"] == 1
    assert [c.step for c in ckpt.list_checkpoints(run_dir)] == [1, 1]
    assert ckpt.resolve(run_dir) == folder / "last.pt"


# ---- the weights are a plain state_dict ----


class SimpleNet(nn.Module):
    """The tutorials' MLP, written out by hand: what a user would build without mpt."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x):
        return self.net(x)


@pytest.fixture(scope="module")
def real_checkpoint(tmp_path_factory):
    """A real checkpoint of a tiny run (2 steps), shared by the file tests."""
    out = tmp_path_factory.mktemp("real")
    done = train(profile_dict(out, {"run": {"max_steps": 2}}))
    return done.ckpt_dir / "last.pt"


def test_checkpoint_model_loads_in_plain_pytorch(real_checkpoint):
    model = SimpleNet()
    model.load_state_dict(torch.load(real_checkpoint, weights_only=True)["model"])

    from engine.models import build_model
    from engine.profile import ModelSection

    engine_model = build_model(ModelSection(arch="mlp", hidden=[32]), (1, 8, 8), 10)
    engine_model.load_state_dict(torch.load(real_checkpoint, weights_only=True)["model"])
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(model(x), engine_model(x))


# ---- files that are not usable checkpoints ----


class Exploit:
    """Unpickling this would run a shell command that creates `marker`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class TrainingState:
    """A class of this test file: a checkpoint holding it needs this code to load."""

    def __init__(self):
        self.weights = torch.zeros(3)


def _truncated(path, real):
    data = real.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _newer(path, real):
    state = torch.load(real, weights_only=True)
    state["version"] = ckpt.VERSION + 1
    torch.save(state, path)


BAD_FILES = {
    "truncated": (_truncated, "truncated or corrupted"),
    "zero_bytes": (lambda p, r: p.write_bytes(b""), "empty"),
    "random_bytes": (lambda p, r: p.write_bytes(random.Random(0).randbytes(4096)), None),
    "random_bytes_2": (lambda p, r: p.write_bytes(random.Random(2).randbytes(4096)), None),
    "text_file": (lambda p, r: p.write_text("hello world\n"), None),
    "git_lfs_pointer": (
        lambda p, r: p.write_text(
            "version https://git-lfs.github.com/spec/v1\n"
            "oid sha256:4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393\n"
            "size 12345\n"
        ),
        None,
    ),
    "pickle_running_code": (
        lambda p, r: p.write_bytes(pickle.dumps({"model": Exploit(p.with_suffix(".ran"))})),
        "refused",
    ),
    "torch_save_running_code": (
        lambda p, r: torch.save({"model": Exploit(p.with_suffix(".ran"))}, p),
        "refused",
    ),
    "object_of_a_test_class": (lambda p, r: torch.save(TrainingState(), p), "refused"),
    "another_programs_pt": (
        lambda p, r: torch.save({"weights": torch.zeros(4)}, p),
        "not an mpt checkpoint",
    ),
    "newer_format_version": (_newer, "newer mpt"),
}


@pytest.fixture(params=sorted(BAD_FILES))
def bad_file(request, tmp_path, real_checkpoint):
    write, phrase = BAD_FILES[request.param]
    path = tmp_path / f"{request.param}.pt"
    write(path, real_checkpoint)
    return path, phrase


def assert_one_clear_sentence(message: str, path) -> None:
    assert message.startswith(f"{path}: ")
    assert "\n" not in message
    assert "\x1b" not in message  # no terminal escape codes
    assert not re.search(r"[.!?] +[A-Z]", message), f"more than one sentence: {message}"


def test_loading_a_bad_file_is_one_clear_checkpoint_error_naming_it(bad_file):
    path, phrase = bad_file
    with pytest.raises(CheckpointError) as info:
        ckpt.load(path)
    assert_one_clear_sentence(str(info.value), path)
    if phrase:
        assert phrase in str(info.value)
    assert not path.with_suffix(".ran").exists(), "the pickle's code ran"


# One file of each kind of fault goes to the `mpt` console script in a process of its own:
# bytes that are no checkpoint, a pickle that would run code, another format version. The
# others go to the same typer app in this process (a new one would only add its start).
IN_A_PROCESS = ("truncated", "torch_save_running_code", "newer_format_version")


def test_mpt_run_resume_of_a_bad_file_exits_2_with_one_line(bad_file, tmp_path, monkeypatch):
    path, phrase = bad_file
    if path.stem in IN_A_PROCESS:
        r = mpt("run", "--resume", path, cwd=tmp_path)
        code, stderr = r.returncode, r.stderr
    else:
        monkeypatch.chdir(tmp_path)
        result = invoke("run", "--resume", path)
        assert result.exception is None or isinstance(result.exception, SystemExit)
        code, stderr = result.exit_code, result.stderr

    assert code == 2
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    assert_one_clear_sentence(lines[0].removeprefix("error: "), path)
    if phrase:
        assert phrase in lines[0]
    assert not path.with_suffix(".ran").exists(), "the pickle's code ran"
    assert not (tmp_path / "runs").exists()  # refused before any run directory


def test_a_real_checkpoint_loads_with_weights_only(real_checkpoint):
    state = ckpt.load(real_checkpoint)
    assert state["format"] == ckpt.FORMAT and state["version"] == ckpt.VERSION
    assert_same(state["model"], torch.load(real_checkpoint, weights_only=True)["model"])
