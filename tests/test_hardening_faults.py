"""Faults during a run, on the CPU: a full disk, out of memory, user code or data that fail
midway, a reader that stops reading, two runs of one name. The run reports it in one
sentence and ends cleanly or goes on; what was saved stays intact; nothing hangs.

Real runs throughout; a fault is simulated only where a machine cannot be made to have
it on demand: a file whose writes fail with ENOSPC (the checkpoint writer's `open`), a
model that raises torch.OutOfMemoryError. The disk-full cases also run for real, with a
file-size limit (RLIMIT_FSIZE) on `mpt run`: the kernel then fails writes with EFBIG.
"""

from __future__ import annotations

import errno
import io
import json
import multiprocessing
import os
import re
import resource
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch
from durable_helpers import (
    MPT,
    events_jsonl,
    finish,
    load,
    next_event,
    printed_run_dir,
    profile_dict,
    start,
    train,
    wait_for,
    write_toml,
)
from PIL import Image

from engine import checkpoint as ckpt
from engine.profile import profile_from_dict
from engine.run import make_run_dir

# ---- a full disk while a checkpoint is written ----


class _FullDiskFile(io.FileIO):
    """A checkpoint file on a disk that fills up: the first write goes in, then ENOSPC."""

    def write(self, data) -> int:
        if self.tell() > 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(bytes(data)[: max(1, len(data) // 2)])  # a short write


@pytest.fixture
def disk_full_from_step(monkeypatch):
    """disk_full_from_step(n): checkpoint files of step n on are written to a full disk."""

    def install(first_bad_step: int) -> None:
        def fake_open(path, mode="r", *args, **kwargs):
            step = re.search(r"step-(\d+)", str(path))
            if "w" in mode and step and int(step.group(1)) >= first_bad_step:
                return _FullDiskFile(path, "w")
            return open(path, mode, *args, **kwargs)

        monkeypatch.setattr(ckpt, "open", fake_open, raising=False)  # save_atomic's open

    return install


def _checkpoint_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())  # hidden temporary files included


def _valid_jsonl(path: Path) -> list[dict]:
    return events_jsonl(path.parent)  # every line an event, read whole


DISK_RUN = ({"run": {"max_steps": 12}}, {"checkpoint": {"every_steps": 4, "every_epochs": 0}})


def test_a_full_disk_warns_keeps_the_previous_checkpoint_and_training_goes_on(
    tmp_path, disk_full_from_step
):
    disk_full_from_step(8)
    done = train(profile_dict(tmp_path, *DISK_RUN), check=False)

    folder = done.ckpt_dir
    assert _checkpoint_files(folder) == ["last.pt", "step-000004.pt"]  # no temporary left
    assert load(folder / "last.pt")["progress"]["step"] == 4
    warnings = [e.message for e in done.of("warning")]
    assert warnings == [
        f"could not write checkpoint {folder / f'step-{s:06d}.pt'} (No space left on device); "
        "last.pt still holds step 4; training goes on"
        for s in (8, 12, 12)  # every 4 steps; then at the end of the epoch
    ]
    assert [e.step for e in done.of("checkpoint_saved")] == [4]
    # Issue 13: the final checkpoint is the run's result; losing it fails the run (exit 1).
    assert done.reason == "failed" and not done.run.user_error
    assert done.run.error == (
        f"could not write the final checkpoint {folder / 'step-000012.pt'} (No space left on "
        f"device); the newest checkpoint on disk is {folder / 'last.pt'} (step 4); free space "
        "on that disk and resume from it"
    )
    records = _valid_jsonl(done.run_dir / "events.jsonl")
    assert [r["kind"] for r in records].count("warning") == 3
    assert records[-1]["kind"] == "run_failed" and records[-1]["step"] == 12


def test_a_full_disk_with_on_error_stop_ends_the_run_cleanly_keeping_the_last_checkpoint(
    tmp_path, disk_full_from_step
):
    disk_full_from_step(8)
    done = train(
        profile_dict(tmp_path, *DISK_RUN, {"checkpoint": {"on_error": "stop"}}), check=False
    )

    assert done.reason == "failed" and not done.run.user_error  # mpt run: exit 1
    path = done.ckpt_dir / "step-000008.pt"
    assert done.run.error == (
        f"could not write checkpoint {path} (No space left on device); last.pt still holds "
        'step 4; the run stops (checkpoint.on_error = "stop")'
    )
    assert _checkpoint_files(done.ckpt_dir) == ["last.pt", "step-000004.pt"]
    assert load(done.ckpt_dir / "last.pt")["progress"]["step"] == 4
    records = _valid_jsonl(done.run_dir / "events.jsonl")
    assert records[-1]["kind"] == "run_failed" and records[-1]["step"] == 8


def _limited(max_bytes: int):
    """For a child: the kernel fails any write past `max_bytes` in one file (EFBIG)."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


def _mpt_limited(folder: Path, max_bytes: int, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [MPT, "run", "p.toml", *args],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=240,
        stdin=subprocess.DEVNULL,
        preexec_fn=_limited(max_bytes),
    )


# Checkpoints of a 256-wide MLP with Adam weigh ~240 KB; the rest of a short run, a few KB.
BIG = {
    "run": {"name": "full", "device": "cpu", "epochs": 1, "max_steps": 6, "out_dir": "runs"},
    "data": {"dataset": "digits", "batch_size": 64, "val_fraction": 0.2},
    "model": {"arch": "mlp", "hidden": [256]},
    "optim": {"name": "adam"},
    "train": {"log_every": 3},
    "checkpoint": {"every_steps": 3},
}


@pytest.mark.parametrize("on_error", ["warn", "stop"])
def test_mpt_run_on_a_disk_that_refuses_checkpoints_warns_or_stops_by_profile(tmp_path, on_error):
    write_toml(tmp_path / "p.toml", BIG)
    r = _mpt_limited(tmp_path, 100_000, "--set", f"checkpoint.on_error={on_error}")

    run_dir = printed_run_dir(r.stdout)
    path = run_dir / "checkpoints" / "step-000003.pt"
    first = f"could not write checkpoint {path} (File too large)"
    if on_error == "warn":
        # Issue 13: training goes on, but a final checkpoint that cannot be written fails
        # the run (exit 1), never "finished (completed)".
        assert r.returncode == 1, r.stderr
        lines = r.stderr.splitlines()
        assert lines[0] == (
            f"warning: {first}; no earlier checkpoint of this run exists; training goes on"
        )
        assert all(line.startswith("warning: could not write checkpoint") for line in lines[:-1])
        assert lines[-1] == (
            f"error: could not write the final checkpoint {path.with_name('step-000006.pt')} "
            "(File too large); no checkpoint of this run was kept"
        )
        assert "finished" not in r.stdout
    else:
        assert r.returncode == 1, r.stderr
        assert r.stderr.splitlines() == [
            f"error: {first}; no earlier checkpoint of this run exists; the run stops "
            '(checkpoint.on_error = "stop")'
        ]
    assert "Traceback" not in r.stderr
    assert list((tmp_path / run_dir / "checkpoints").iterdir()) == []  # no torn file, no temp
    records = _valid_jsonl(tmp_path / run_dir / "events.jsonl")
    assert records[-1]["kind"] == "run_failed"


def test_events_jsonl_on_a_full_disk_stays_whole_lines_and_the_run_goes_on(tmp_path):
    write_toml(tmp_path / "p.toml", {**BIG, "train": {"log_every": 1}})
    r = _mpt_limited(tmp_path, 2_500)  # profile.toml and a few events fit, then no more

    # No checkpoint fits either: the lost final checkpoint fails the run (issue 13).
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines()[-1].startswith("error: could not write the final checkpoint")
    run_dir = printed_run_dir(r.stdout)
    events = run_dir / "events.jsonl"
    assert (
        f"warning: could not write {events} (File too large); events go on to the console "
        "but are missing from the file until writing works again"
    ) in r.stderr.splitlines()
    text = (tmp_path / events).read_text()
    assert text.endswith("\n") and 0 < len(text) <= 2_500
    records = [json.loads(line) for line in text.splitlines()]  # every line whole
    assert records[0]["kind"] == "run_started"
    assert "finished" not in r.stdout


# ---- out of memory ----

FLAKY_MODELS = """
import torch


class Flaky(torch.nn.Module):
    def __init__(self, in_shape, num_classes, fail_at, error):
        super().__init__()
        self.fc = torch.nn.Linear(in_shape[0] * in_shape[1] * in_shape[2], num_classes)
        self.calls, self.fail_at, self.error = 0, fail_at, error

    def forward(self, x):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.error
        return self.fc(x.flatten(1))


def oom_in_step_8(in_shape, num_classes):  # call 1 is the shape check before training
    return Flaky(in_shape, num_classes, 9, torch.OutOfMemoryError("CUDA out of memory."))


def oom_at_once(in_shape, num_classes):
    return Flaky(in_shape, num_classes, 1, torch.OutOfMemoryError("CUDA out of memory."))


def bug_in_step_8(in_shape, num_classes):
    return Flaky(in_shape, num_classes, 9, KeyError("layer3"))
"""


@pytest.fixture
def flaky(tmp_path, monkeypatch):
    (tmp_path / "flaky_models.py").write_text(FLAKY_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "flaky_models"
    __import__("sys").modules.pop("flaky_models", None)


ADVICE = (
    "(data.batch_size 64, train.grad_accum 1, precision.mode 'fp32'); lower data.batch_size "
    'and raise train.grad_accum to keep the step the same, or use precision.mode = "bf16"'
)


def test_out_of_memory_in_a_step_fails_the_run_with_advice_and_keeps_the_checkpoint(
    tmp_path, flaky
):
    done = train(
        profile_dict(
            tmp_path,
            {"model": {"arch": f"{flaky}:oom_in_step_8"}},
            {"checkpoint": {"every_steps": 3}},
        ),
        check=False,
    )
    assert done.reason == "failed" and not done.run.user_error  # mpt run: exit 1
    assert done.run.error == f"out of memory on cpu at step 7 {ADVICE}"
    (failed,) = done.of("run_failed")
    assert "OutOfMemoryError" in failed.traceback  # for whoever digs deeper
    assert _checkpoint_files(done.ckpt_dir) == ["last.pt", "step-000003.pt", "step-000006.pt"]
    assert load(done.ckpt_dir / "last.pt")["progress"]["step"] == 6
    assert _valid_jsonl(done.run_dir / "events.jsonl")[-1]["kind"] == "run_failed"
    # Nothing is left held: the next run in this process trains.
    assert train(profile_dict(tmp_path / "next", {"run": {"max_steps": 2}})).reason == "completed"


def test_out_of_memory_while_setting_up_says_so_with_advice(tmp_path, flaky):
    done = train(profile_dict(tmp_path, {"model": {"arch": f"{flaky}:oom_at_once"}}), check=False)
    # On the CPU there is no GPU to keep the data off: no data.cache hint (CUDA gets one).
    assert done.run.error == f"out of memory on cpu while setting up {ADVICE}"
    assert [e.kind for e in done.events] == ["run_failed"]


@pytest.mark.parametrize(
    "factory, error",
    [
        ("oom_in_step_8", f"error: out of memory on cpu at step 7 {ADVICE}"),
        ("bug_in_step_8", "error: KeyError: 'layer3'"),
    ],
    ids=["out-of-memory", "exception-in-user-code"],
)
def test_mpt_run_whose_model_fails_midway_exits_1_with_one_line_and_a_whole_log(
    tmp_path, factory, error
):
    (tmp_path / "flaky_models.py").write_text(FLAKY_MODELS)
    write_toml(
        tmp_path / "p.toml",
        {
            **BIG,
            "model": {"arch": f"flaky_models:{factory}"},
            "run": {**BIG["run"], "epochs": 2, "max_steps": 30},
        },
    )
    r = subprocess.run(
        [MPT, "run", "p.toml"], cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines() == [error]
    run_dir = printed_run_dir(r.stdout)
    records = _valid_jsonl(tmp_path / run_dir / "events.jsonl")
    assert records[-1]["kind"] == "run_failed" and records[-1]["traceback"]
    assert load(tmp_path / run_dir / "checkpoints" / "last.pt")["progress"]["step"] == 6


# ---- a dataset that fails midway ----


@pytest.mark.parametrize("workers", [0, 2])
def test_an_image_that_vanishes_mid_epoch_fails_the_run_naming_the_file(tmp_path, workers):
    for label, colour in enumerate([(200, 0, 0), (0, 0, 200)]):
        folder = tmp_path / "imgs" / f"class{label}"
        folder.mkdir(parents=True)
        for i in range(40):
            Image.new("RGB", (8, 8), colour).save(folder / f"{i:02d}.png")
    run = start(
        profile_dict(
            tmp_path,
            {
                "run": {"epochs": 3},
                "data": {
                    "dataset": "image_folder",
                    "path": str(tmp_path / "imgs"),
                    "image_size": 8,
                    "cache": "stream",
                    "num_workers": workers,
                    "mean": [0.5, 0.5, 0.5],  # no statistics pass that would read every image
                    "std": [0.25, 0.25, 0.25],
                    "batch_size": 8,
                },
            },
        )
    )
    run.pause()  # at the first step boundary: then the files go
    next_event(run, "paused", 60)
    time.sleep(0.2)
    for image in (tmp_path / "imgs" / "class1").iterdir():
        image.unlink()
    run.resume()
    done = finish(run, timeout=60)  # nothing hangs, with or without worker processes

    assert done.reason == "failed"
    assert re.fullmatch(
        rf"{re.escape(str(tmp_path / 'imgs' / 'class1'))}/\d\d\.png: cannot be read as an "
        r"image \(\[Errno 2\] No such file or directory: .*\)",
        done.run.error,
    ), done.run.error
    assert "Traceback" not in done.run.error and "\n" not in done.run.error
    wait_for(lambda: not multiprocessing.active_children(), 30, "the DataLoader workers to end")


# ---- a reader that stops reading ----


def test_a_run_whose_events_nobody_reads_ends_on_its_own(tmp_path):
    run = start(profile_dict(tmp_path, {"run": {"epochs": 2}, "train": {"log_every": 1}}))
    assert run.join(timeout=120) == "completed"  # the queue was never read
    lines = (run.run_dir / "events.jsonl").read_text().splitlines()
    assert run.events.qsize() == len(lines) > 46


# ---- two runs of the same name ----


def test_two_mpt_run_processes_of_one_name_never_share_a_run_directory(tmp_path):
    write_toml(tmp_path / "p.toml", {**BIG, "run": {**BIG["run"], "name": "twin"}})
    procs = [
        subprocess.Popen(
            [MPT, "run", "p.toml"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]  # fmt: skip
    outs = [p.communicate(timeout=240) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    dirs = [printed_run_dir(out) for out, _ in outs]
    assert dirs[0] != dirs[1] and dirs[0].parent == dirs[1].parent == Path("runs/twin")
    for folder, proc in zip(dirs, procs, strict=True):
        records = _valid_jsonl(tmp_path / folder / "events.jsonl")
        assert [r["kind"] for r in records].count("run_started") == 1
        assert records[0]["pid"] == proc.pid and records[-1]["kind"] == "run_finished"
        steps = {
            load(p)["progress"]["step"] for p in (tmp_path / folder / "checkpoints").glob("*.pt")
        }
        assert steps == {3, 6}


def test_run_directories_made_at_the_same_instant_are_all_distinct(tmp_path):
    profile = profile_from_dict({"run": {"name": "crowd", "out_dir": str(tmp_path)}})
    barrier = threading.Barrier(16)
    made: list[Path] = []

    def make() -> None:
        barrier.wait()
        made.append(make_run_dir(profile))

    threads = [threading.Thread(target=make) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(made) == len(set(made)) == 16
    assert all(p.is_dir() and not any(p.iterdir()) for p in made)


def test_torch_out_of_memory_error_is_what_cuda_raises():
    # The simulation above raises the class torch raises for a full GPU.
    assert issubclass(torch.OutOfMemoryError, RuntimeError)
    assert torch.cuda.OutOfMemoryError is torch.OutOfMemoryError
