"""The machine beside the training: the process's CPU and resident memory, the memory the
system can still give, the free space where the run writes, and the share of the step time
the loop spent waiting for a DataLoader's batches.

psutil's figures, sampled at each step event (train.log_every), never per step. On Linux
they are read where psutil reads them (/proc/self/statm, /proc/meminfo; the CPU from the
process clock), without psutil's parsing of every field: a sample is one clock call, two
small /proc reads and one statvfs, ~30 us (~200 us of CPU inside a run's loop, where the
caches are cold), instead of ~250 us through psutil. A figure the system will not give (a
container that hides /proc, a run directory removed under the run) is None, never an
error: watching the machine must not stop the training.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psutil

from engine.memory import format_bytes

T = TypeVar("T")

GiB = 2**30
NO_CHECKPOINT_YET = GiB  # the room to want before the first checkpoint shows its size
CHECKPOINTS_OF_ROOM = 2  # warn when less than this many checkpoints' room is left
REARM = 1.5  # after a warning, free space must exceed this x the threshold to warn again


LINUX = sys.platform == "linux"
PAGE = os.sysconf("SC_PAGE_SIZE") if LINUX else 4096


def _proc(path: str) -> bytes:
    """A /proc file's text: one open and one read (~10 us)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.read(fd, 16384)
    finally:
        os.close(fd)


def resident_memory() -> int:
    """Bytes of this process in memory (RSS), as psutil's memory_info().rss."""
    if LINUX:
        return int(_proc("/proc/self/statm").split()[1]) * PAGE
    return psutil.Process().memory_info().rss


def available_memory() -> int:
    """Bytes the system can still give without swapping (psutil's virtual_memory().
    available: on Linux the MemAvailable line of /proc/meminfo)."""
    if LINUX:
        data = _proc("/proc/meminfo")
        at = data.find(b"MemAvailable:")
        if at >= 0:  # (kernels before 3.14 lack it: psutil estimates it)
            return int(data[at + 13 : data.index(b"\n", at)].split()[0]) * 1024
    return psutil.virtual_memory().available


class DataWait:
    """Seconds the loop spent inside next() on a DataLoader's batches in this window."""

    def __init__(self) -> None:
        self.timing = False  # the batches come through a DataLoader (data.cache = "stream")
        self.seconds = 0.0

    def timed(self, batches: Iterator[T]) -> Iterator[T]:
        """`batches`, with the time each next() waits added to `seconds`."""
        self.timing = True
        clock = time.perf_counter
        while True:
            began = clock()
            try:
                batch = next(batches)
            except StopIteration:
                return
            self.seconds += clock() - began
            yield batch

    def fraction(self, window_seconds: float) -> float | None:
        """The window's share spent waiting, 0..1; None when the data is not streamed."""
        if not self.timing:
            return None
        return min(1.0, max(0.0, self.seconds / max(window_seconds, 1e-9)))


class DiskWatch:
    """Says once when the disk holding `folder` has less room than the next checkpoint
    wants (twice the last one's size; NO_CHECKPOINT_YET before the first), and again only
    after the space has come back (REARM x that) and run low once more."""

    def __init__(self, folder: Path | None):
        self.folder = folder
        self.armed = True

    def free(self) -> int | None:
        """Bytes an ordinary user may still write on the folder's filesystem (df's Avail)."""
        if self.folder is None:
            return None
        try:
            st = os.statvfs(self.folder)
        except OSError:
            return None
        return st.f_bavail * st.f_frsize

    def checkpoint_size(self) -> int | None:
        """The size of the newest checkpoint (checkpoints/last.pt), None before the first."""
        try:
            return (self.folder / "checkpoints" / "last.pt").stat().st_size
        except OSError:
            return None

    def check(self, free: int | None) -> str | None:
        """The warning to give now, if any, for `free` bytes on the disk."""
        if free is None:
            return None
        size = self.checkpoint_size()
        wanted = CHECKPOINTS_OF_ROOM * size if size is not None else NO_CHECKPOINT_YET
        if free >= REARM * wanted:
            self.armed = True
        if free >= wanted or not self.armed:
            return None
        self.armed = False
        room = (
            f"less than twice the last checkpoint's {format_bytes(size)}"
            if size is not None
            else f"less than {format_bytes(NO_CHECKPOINT_YET)} before the first checkpoint"
        )
        return (
            f"the disk holding {self.folder} has {format_bytes(free)} free, {room}: the next "
            "checkpoint may fail to write; free some space there (or point run.out_dir "
            "at a roomier disk)"
        )


def _or_none(figure: Callable[[], int]) -> int | None:
    """A figure, or None where the system will not give it (no /proc, a denied read)."""
    try:
        return figure()
    except (psutil.Error, OSError, ValueError, IndexError):
        return None


class HostSampler:
    """The host figures of a step event (`sample`) and the low-disk warning (`disk_warning`)
    of a run writing into `folder` (None: it writes nothing, so no disk to watch)."""

    def __init__(self, folder: Path | None):
        self.data_wait = DataWait()
        self.disk = DiskWatch(folder)
        self._free: int | None = None  # the last sample's disk_free
        # CPU % as psutil's Process.cpu_percent computes it (user + system seconds of all
        # the process's threads over wall seconds), from process_time: one clock call
        # instead of a /proc read, 1 us instead of 40.
        self._cpu_at = (time.process_time(), time.monotonic())

    def start_window(self) -> None:
        """A new log window: its data wait starts from nothing."""
        self.data_wait.seconds = 0.0

    def sample(self, window_seconds: float) -> dict[str, Any]:
        """A step event's host fields (engine.events.Step), for the window just ended."""
        self._free = self.disk.free()
        return {
            "cpu_percent": self._cpu_percent(),
            "rss": _or_none(resident_memory),
            "mem_available": _or_none(available_memory),
            "disk_free": self._free,
            "data_wait": self.data_wait.fraction(window_seconds),
        }

    def _cpu_percent(self) -> float:
        """This process's CPU since the last sample; 100 = one core busy (as top says it)."""
        cpu, wall = time.process_time(), time.monotonic()
        (cpu_then, wall_then), self._cpu_at = self._cpu_at, (cpu, wall)
        return max(0.0, 100.0 * (cpu - cpu_then) / max(wall - wall_then, 1e-9))

    def disk_warning(self, fresh: bool = False) -> str | None:
        """The low-disk warning to give now, if any (once; see DiskWatch), from the last
        sample's free space, or a fresh look (`fresh`: e.g. before an epoch's checkpoint)."""
        return self.disk.check(self.disk.free() if fresh else self._free)
