"""Issue 13, groups 3 and 4: keep_last prunes only what it may, and a full disk never
turns a lost result into a success.

keep_last prunes the periodic checkpoints (every_epochs/every_steps) this run wrote; a
checkpoint a person asked for, the one that ends the run (final, stop, interrupt) and
the file best.pt or last.pt holds stay. On a full disk the oldest prunable periodic file
is freed and the write tried again; a final, stop or interrupt checkpoint that still
cannot be written fails the run (exit 1, one sentence naming the file and what was
kept). The disks here are real: a small tmpfs, with a filler file that leaves exactly
the room a case needs.
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import time
from pathlib import Path

import pytest
from conftest import run_mpt
from durable_helpers import Done, drain, finish, load, profile_dict, start, train, write_toml

# ---- group 3: keep_last never prunes a checkpoint a person asked for ----


def _next(run, seen: list, kind: str, until=lambda e: True, timeout: float = 120):
    """The run's next event of `kind` that satisfies `until`; every event read is kept."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            event = run.events.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(event)
        if event.kind == kind and until(event):
            return event
    raise AssertionError(f"no {kind} event within {timeout} s")


def _request_while_paused(run, seen: list) -> int:
    """Pause, ask for a checkpoint (the control channel's `c`), resume: its step."""
    run.pause()
    paused = _next(run, seen, "paused")
    run.checkpoint()
    saved = _next(run, seen, "checkpoint_saved", lambda e: e.reason == "requested")
    assert saved.step == paused.step
    run.resume()
    return saved.step


def test_keep_last_keeps_every_requested_checkpoint_and_only_the_newest_periodic_one(tmp_path):
    run = start(
        profile_dict(
            tmp_path,
            {"train": {"log_every": 1}},
            {"checkpoint": {"every_steps": 2, "every_epochs": 0, "keep_last": 1}},
            {"checkpoint": {"save_best": False}},
        )
    )
    seen: list = []
    first = _request_while_paused(run, seen)
    _next(run, seen, "step", lambda e: e.step >= first + 5)
    second = _request_while_paused(run, seen)
    done = finish(run)
    events = seen + done.events

    assert done.reason == "completed" and first < second < 22
    requested = [e.path for e in events if e.kind == "checkpoint_saved" and e.reason == "requested"]
    assert [Path(p).name for p in requested] == [f"step-{s:06d}.pt" for s in (first, second)]
    assert all(Path(p).is_file() for p in requested)
    # 23 steps: periodic files at 2, 4, ... 22; the newest of them, and the final one, stay.
    assert done.step_files() == sorted(f"step-{s:06d}.pt" for s in {first, second, 22, 23})
    assert load(done.ckpt_dir / f"step-{first:06d}.pt")["progress"]["step"] == first


def test_keep_last_never_prunes_the_file_best_pt_holds(tmp_path):
    # Adam at lr 0.03 on digits: val_loss is best at an early epoch, then rises (as in
    # tests/test_checkpoint.py's best_run); keep_last 1 with a checkpoint every epoch.
    done = train(
        profile_dict(
            tmp_path,
            {"run": {"epochs": 8}, "train": {"log_every": 100}},
            {"optim": {"name": "adam", "lr": 0.03}},
            {"checkpoint": {"save_best": True, "monitor": "val_loss", "keep_last": 1}},
        )
    )
    best = load(done.ckpt_dir / "best.pt")["progress"]["step"]
    assert best < done.of("run_finished")[0].step, "pick a setup whose best epoch is not the last"
    kept = done.ckpt_dir / f"step-{best:06d}.pt"
    assert kept.is_file() and os.path.samefile(kept, done.ckpt_dir / "best.pt")
    assert done.step_files() == sorted({kept.name, f"step-{8 * 23:06d}.pt"})


# ---- group 4: a real small disk ----


@pytest.fixture
def small_disk(tmp_path):
    """small_disk(room): a fresh tmpfs with only `room` bytes free (a filler takes the rest)."""
    mounts: list[Path] = []

    def make(room: int) -> Path:
        folder = tmp_path / f"disk{len(mounts)}"
        folder.mkdir()
        r = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            pytest.skip(f"cannot mount a small tmpfs here: {r.stderr.strip()}")
        mounts.append(folder)
        stat = os.statvfs(folder)
        free = stat.f_bavail * stat.f_frsize
        with open(folder / "filler", "wb") as f:
            f.write(b"\0" * (free - room))
        stat = os.statvfs(folder)
        assert stat.f_bavail * stat.f_frsize == room
        return folder

    yield make
    for folder in mounts:
        with contextlib.suppress(subprocess.SubprocessError):
            subprocess.run(["umount", str(folder)], check=False, timeout=30)


KB = 1024
# A checkpoint of this 32-wide MLP weighs ~28.7 KB: 8 pages of tmpfs (32 KB). profile.toml
# and events.jsonl (log_every 10) take one page each.
DISK = {
    "run": {"name": "disk", "device": "cpu", "epochs": 1, "seed": 0, "out_dir": "runs"},
    "data": {"dataset": "digits", "batch_size": 64, "val_fraction": 0.2},
    "model": {"arch": "mlp", "hidden": [32]},
    "train": {"log_every": 10},
    "checkpoint": {"every_steps": 4, "every_epochs": 0, "keep_last": 2},
}


def _mpt_run_on(disk: Path, *args: str):
    profile = disk.with_name(f"{disk.name}.toml")  # beside the disk: all its room is the run's
    write_toml(profile, DISK)
    return run_mpt("run", str(profile), *args, cwd=disk)


def _run_dir(disk: Path) -> Path:
    (run_dir,) = (disk / "runs" / "disk").iterdir()
    return run_dir


def test_keep_last_on_a_disk_with_room_for_two_checkpoints_frees_the_oldest_and_finishes(
    small_disk,
):
    # Room for two checkpoints and a half: the third periodic one fits only once the
    # oldest is gone; pruning after the write (as before) never freed it.
    disk = small_disk(8 * KB + 80 * KB)
    r = _mpt_run_on(disk)

    assert r.returncode == 0, r.stderr
    assert "finished (completed) at step 23 after" in r.stdout
    folder = _run_dir(disk) / "checkpoints"
    assert load(folder / "last.pt")["progress"]["step"] == 23  # the final checkpoint
    assert load(folder / "best.pt")["progress"]["step"] == 23
    assert (
        f"warning: the disk holding {folder.relative_to(disk)} is full: removed the older "
        "periodic checkpoint(s) step-000004.pt early to make room for step-000012.pt"
        in (r.stderr.splitlines())
    )
    assert "Traceback" not in r.stderr


def test_a_disk_with_room_for_no_checkpoint_fails_the_run_naming_the_final_file(small_disk):
    disk = small_disk(24 * KB)
    r = _mpt_run_on(disk)

    assert r.returncode == 1, r.stdout
    final = _run_dir(disk).relative_to(disk) / "checkpoints" / "step-000023.pt"
    assert r.stderr.splitlines()[-1] == (
        f"error: could not write the final checkpoint {final} (No space left on device); "
        "no checkpoint of this run was kept; free space on that disk and run again"
    )
    assert "finished" not in r.stdout and "Traceback" not in r.stderr


def test_a_disk_too_full_for_events_jsonl_exits_1_and_mpt_ls_never_says_running(small_disk):
    disk = small_disk(4 * KB)  # profile.toml fits; not one line of events.jsonl
    r = _mpt_run_on(disk)

    assert r.returncode == 1, r.stdout
    run_dir = _run_dir(disk).relative_to(disk)
    lines = r.stderr.splitlines()
    assert (
        f"warning: could not write {run_dir / 'events.jsonl'} (No space left on device); "
        "events go on to the console but are missing from the file until writing works again"
    ) in lines
    assert lines[-1].startswith(f"error: could not write the final checkpoint {run_dir}")
    assert (disk / run_dir / "events.jsonl").read_text() == ""
    listing = run_mpt("ls", "runs", cwd=disk)
    assert listing.returncode == 0 and "disk/" in listing.stdout
    assert "running" not in listing.stdout


def test_an_interrupt_whose_checkpoint_the_disk_refuses_fails_the_run(small_disk):
    disk = small_disk(24 * KB)  # no room for one checkpoint
    run = start(profile_dict(disk / "runs", {"checkpoint": {"every_epochs": 0}}))
    seen: list = []
    _next(run, seen, "step", lambda e: e.step >= 2)
    run.stop("interrupted")  # what SIGINT/SIGTERM/SIGHUP do in `mpt run`
    done = finish(run)
    done = Done(done.run, done.reason, seen + done.events)

    assert done.reason == "failed" and not done.run.user_error  # mpt run: exit 1, not 130
    failed = done.of("run_failed")[0]
    path = done.ckpt_dir / f"step-{failed.step:06d}.pt"
    assert done.run.error == (
        f"could not write the interrupt checkpoint {path} (No space left on device); "
        "no checkpoint of this run was kept; free space on that disk and run again"
    )
    assert not done.of("run_finished")
    assert drain(run.events) == []


def test_a_disk_with_no_room_for_profile_toml_refuses_the_run_in_one_sentence(small_disk):
    disk = small_disk(0)
    r = _mpt_run_on(disk)

    assert r.returncode == 2, r.stdout
    (line,) = r.stderr.splitlines()
    assert line.startswith("error: run.out_dir: cannot write runs/disk/") and line.endswith(
        "/profile.toml (No space left on device); free space on that disk or point "
        "run.out_dir at another one"
    )
    assert list((disk / "runs" / "disk").iterdir()) == []  # no half-made run directory
