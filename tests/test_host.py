"""Issue 16, "see the machine": step events carry the host's figures (psutil): the process's
CPU and resident memory, the memory the system can still give, the free space where the run
writes, and with a DataLoader (data.cache = "stream") the share of the step spent waiting
for data; a disk running out of room is said once, before a checkpoint would fail."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
from pathlib import Path

import pytest
from durable_helpers import events_jsonl

from engine import events as ev

MiB = 2**20


def run_dir_of(done) -> Path:
    return Path(done.of("run_started")[0].run_dir)


def test_step_events_carry_the_process_and_machine_figures(train, out_dir):
    done = train({"train": {"log_every": 5}}, write=True)
    steps = done.of("step")
    assert len(steps) >= 4
    for e in steps:
        assert e.cpu_percent is not None and e.cpu_percent >= 0
        assert e.rss > 10 * MiB  # torch alone is more than that
        assert e.mem_available > 0
        assert e.disk_free > 0
        assert e.data_wait is None  # the batches come from the cached copy: no waiting
    assert any(e.cpu_percent > 0 for e in steps)  # the loop works the CPU
    # the disk figure is the run directory's filesystem, as df says it (to within the
    # few writes of the run since)
    stat = os.statvfs(out_dir)
    assert abs(steps[-1].disk_free - stat.f_bavail * stat.f_frsize) < 64 * MiB
    # events.jsonl holds them, and they read back as written
    written = [r for r in events_jsonl(run_dir_of(done)) if r["kind"] == "step"]
    assert [r["rss"] for r in written] == [e.rss for e in steps]
    assert written[0]["data_wait"] is None


def test_a_streamed_run_says_how_much_of_the_step_waited_for_data(train):
    done = train({"data": {"cache": "stream", "num_workers": 0}, "train": {"log_every": 5}})
    assert done.of("run_started")[0].data_cache == "stream"
    waits = [e.data_wait for e in done.of("step")]
    assert waits and all(0 <= w <= 1 for w in waits), waits
    # with no workers the loop itself loads every batch: a real share of each window
    assert statistics.median(waits) > 0.01, waits


def test_events_from_before_the_host_figures_still_read():
    old = {"kind": "step", "step": 5, "epoch": 1, "time": 1.0, "loss": 0.5, "lr": 0.1}
    e = ev.event_from_line(json.dumps(old))
    assert (e.step, e.loss) == (5, 0.5)
    assert (e.cpu_percent, e.rss, e.mem_available, e.disk_free, e.data_wait) == (None,) * 5


def test_a_sample_costs_well_under_a_millisecond(tmp_path):
    from engine.host import HostSampler

    sampler = HostSampler(tmp_path)
    sampler.sample(1.0)
    costs = []
    for _ in range(200):
        began = time.perf_counter()
        sampler.sample(1.0)
        costs.append(time.perf_counter() - began)
    assert statistics.median(costs) < 1e-3, f"median {statistics.median(costs) * 1e6:.0f} us"


def test_the_figures_are_psutils(tmp_path):
    import psutil

    from engine.host import HostSampler

    sampler = HostSampler(tmp_path)
    figures = sampler.sample(1.0)
    rss, available = psutil.Process().memory_info().rss, psutil.virtual_memory().available
    assert abs(figures["rss"] - rss) < 16 * MiB  # read a moment apart
    assert abs(figures["mem_available"] - available) < 256 * MiB
    assert abs(figures["disk_free"] - psutil.disk_usage(str(tmp_path)).free) < 64 * MiB
    busy = time.process_time() + 0.05
    while time.process_time() < busy:  # a twentieth of a second of one core's work
        pass
    assert 0 < sampler.sample(1.0)["cpu_percent"] <= 100 * (os.cpu_count() or 1)


# ---- the disk running out of room, on a real small filesystem ----


@pytest.fixture
def small_disk(tmp_path: Path):
    """An 8 MiB tmpfs mounted for the test (tests run as root), unmounted after."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (the tests run as root in CI)")
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """A file that takes the disk's space but `leave` bytes."""
    stat = os.statvfs(disk)
    filler = disk / "filler"
    with open(filler, "ab") as f:
        f.write(b"\0" * max(0, stat.f_bavail * stat.f_frsize - leave))
    return filler


def test_a_run_on_a_small_disk_is_warned_once_before_its_first_checkpoint(train, small_disk):
    out = small_disk / "runs"
    done = train({"run": {"out_dir": str(out), "epochs": 2}, "train": {"log_every": 2}}, write=True)
    assert done.reason == "completed"
    low = [e for e in done.of("warning") if "free" in e.message]
    assert len(low) == 1, [e.message for e in done.of("warning")]
    message = low[0].message
    assert f"the disk holding {run_dir_of(done)} has " in message
    assert "less than 1.07 GB before the first checkpoint" in message
    assert "run.out_dir" in message  # what to do about it
    kinds = [(e.kind, getattr(e, "message", "")) for e in done.events]
    first_checkpoint = next(i for i, (k, _) in enumerate(kinds) if k == "checkpoint_saved")
    assert kinds.index(("warning", message)) < first_checkpoint
    # every step event saw that disk: under 8 MiB free
    assert all(0 < e.disk_free <= 8 * MiB for e in done.of("step"))


def test_the_warning_is_given_once_and_again_only_after_the_space_came_back(small_disk):
    checkpoints = small_disk / "checkpoints"
    checkpoints.mkdir()
    (checkpoints / "last.pt").write_bytes(b"\1" * MiB)  # a 1 MiB checkpoint
    from engine.host import HostSampler

    sampler = HostSampler(small_disk)
    sampler.sample(1.0)
    assert sampler.disk_warning() is None  # ~7 MiB free: room for two more
    filler = fill(small_disk, leave=MiB + MiB // 2)
    first = sampler.disk_warning(fresh=True)
    assert first.startswith(f"the disk holding {small_disk} has 1.")
    assert "free, less than twice the last checkpoint's 1.05 MB" in first
    assert sampler.disk_warning(fresh=True) is None  # said once, not at every sample
    filler.unlink()
    assert sampler.disk_warning(fresh=True) is None  # the space came back: nothing to say
    fill(small_disk, leave=MiB)
    again = sampler.disk_warning(fresh=True)
    assert again is not None and "less than twice the last checkpoint's 1.05 MB" in again
    assert sampler.sample(1.0)["disk_free"] <= MiB
