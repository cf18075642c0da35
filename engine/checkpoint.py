"""Checkpoint files: atomic writes, safe reads, and what may change on resume.

A checkpoint is one dict of tensors and plain values (loadable with
`torch.load(path, weights_only=True)`); `state["model"]` is a plain state_dict that
`model.load_state_dict(...)` accepts, as in the tutorials.
"""

from __future__ import annotations

import errno
import os
import pickle
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import safefs
from engine.errors import MptError
from engine.profile import Profile

FORMAT = "mpt-checkpoint"
VERSION = 1

# Keys whose change makes a checkpoint meaningless for the new profile: the weights or
# the optimizer state would not fit, or the position inside the data would point elsewhere.
REFUSED_CHANGES = (
    "model.arch",
    "model.hidden",
    "model.channels",
    "model.small_input",
    "data.dataset",
    "data.synthetic_samples",
    "data.synthetic_classes",
    "data.synthetic_shape",
    "data.image_size",
    "data.use_test_split",
    "data.val_fraction",
    "train.grad_accum",
    "run.seed",
    "optim.name",
    "schedule.name",
)


class CheckpointError(MptError):
    """A checkpoint that cannot be used: unreadable, foreign, newer, or incompatible."""


@dataclass
class CheckpointInfo:
    path: str
    epoch: int  # epochs completed
    step: int
    metric: float | None  # val_acc at the time, when known
    time: float


# Why a checkpoint was saved. keep_last prunes the periodic files only; the ones a person
# or the end of the run asked for are the result, and stay. A "best" file stays while
# best.pt holds it (an earlier best, superseded, is pruned like a periodic one).
PERIODIC = frozenset({"epoch", "steps"})
KEPT = frozenset({"requested", "stop", "interrupted", "final"})
# The disk (or the user's quota) is full: freeing other files makes room. EFBIG is a limit
# on one file's size, which freeing other files never lifts.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class CheckpointWriter:
    """One run's checkpoints/ folder: writes step files atomically, points last.pt at the
    newest, remembers why this run saved each file, and prunes by keep_last from that
    alone (a file this run did not write is never touched)."""

    def __init__(self, folder: Path, keep_last: int):
        self.folder, self.keep_last = folder, keep_last
        self.reasons: dict[str, set[str]] = {}  # step file name -> why this run saved it

    def note(self, path: Path, reason: str) -> None:
        """`path` (already on disk) also serves `reason`: e.g. a request at a periodic step."""
        self.reasons.setdefault(path.name, set()).add(reason)

    def write(self, state: dict[str, Any], path: Path, reason: str) -> list[Path]:
        """Write `state` to `path`, relink last.pt, prune; return the files removed early.

        On a full disk the oldest prunable periodic file is removed and the write tried
        again, until it fits or nothing prunable is left (then the OSError propagates and
        last.pt still holds the newest checkpoint, which is never prunable).
        """
        safefs.make_dir(self.folder)  # never through a symbolic link
        freed: list[Path] = []
        while True:
            try:
                save_atomic(state, path)
                break
            except OSError as e:
                victim = self._oldest_prunable(besides=path.name)
                if e.errno not in DISK_FULL or victim is None:
                    raise
                try:
                    victim.unlink(missing_ok=True)
                except OSError:
                    raise e from None  # the full disk is the news, not this
                self.reasons.pop(victim.name, None)
                freed.append(victim)
        self.note(path, reason)
        link_atomic(path, self.folder / "last.pt")
        self.prune()
        return freed

    def prune(self) -> None:
        """Keep the newest `keep_last` periodic files; remove older ones and superseded
        best files, unless kept for another reason or held by last.pt/best.pt."""
        if not self.keep_last:
            return
        periodic = [n for n in sorted(self.reasons) if self.reasons[n] & PERIODIC]
        for name in sorted(self.reasons):
            prunable = name in periodic[: -self.keep_last] or not self.reasons[name] & PERIODIC
            if prunable and self._removable(name):
                try:
                    (self.folder / name).unlink(missing_ok=True)
                except OSError:
                    continue  # it stays; the next prune tries again (the checkpoint is saved)
                del self.reasons[name]

    def _oldest_prunable(self, besides: str) -> Path | None:
        """Under a full disk: the oldest file keep_last would let go of, sooner or later."""
        if not self.keep_last:
            return None  # keep_last = 0: the user keeps every file
        for name in sorted(self.reasons):
            if name != besides and self._removable(name):
                return self.folder / name
        return None

    def _removable(self, name: str) -> bool:
        """Saved for no lasting reason, and not the file last.pt or best.pt holds."""
        if self.reasons[name] & KEPT:
            return False
        try:
            inode = (self.folder / name).stat().st_ino
        except OSError:
            return False
        for link in ("last.pt", "best.pt"):
            try:
                if (self.folder / link).stat().st_ino == inode:
                    return False
            except OSError:
                continue
        return True


def save_atomic(state: dict[str, Any], path: Path) -> None:
    """Write `state` so that `path` is either the old file or the complete new one."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            writer = _Writer(f)
            try:
                torch.save(state, writer)
            except RuntimeError:
                if writer.error is None:
                    raise
                raise writer.error from None  # the disk's own error, not the zip writer's
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


class _Writer:
    """The file, as torch.save writes to it, keeping the OSError of a failed write: torch
    turns it into a RuntimeError ("unexpected pos ...") that says nothing of a full disk."""

    def __init__(self, f):
        self.f, self.name, self.error = f, f.name, None

    def write(self, data) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def link_atomic(src: Path, dst: Path) -> None:
    """Make `dst` the same file as `src` (a hard link, or a copy), replacing it atomically."""
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    try:
        try:
            os.link(src, tmp)
        except OSError:  # file systems without hard links
            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a copy cut short by a full disk must not stay behind
        raise
    _fsync_dir(dst.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint; any problem is one CheckpointError sentence."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: the file is empty (0 bytes), not a checkpoint")
    try:
        with warnings.catch_warnings():  # torch's own advice (weights_only=False) is unsafe
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            raise CheckpointError(
                f"{path}: refused to load, it holds Python objects besides tensors and plain "
                "values (loading it could run code), so it is not an mpt checkpoint"
            ) from None
        raise CheckpointError(f"{path}: cannot be read, the file is corrupted") from None
    except Exception:  # noqa: BLE001 - garbage makes the unpickler raise almost anything
        raise CheckpointError(
            f"{path}: cannot be read, the file is truncated or corrupted"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an mpt checkpoint (a .pt file from another program)")
    if not isinstance(state.get("version"), int) or state["version"] > VERSION:
        raise CheckpointError(
            f"{path}: written by a newer mpt (checkpoint format {state.get('version')}, this "
            f"mpt reads up to {VERSION}); upgrade mpt to resume it"
        )
    return state


def info(path: Path, state: dict[str, Any]) -> CheckpointInfo:
    progress = state["progress"]
    return CheckpointInfo(
        path=str(path),
        epoch=progress["epochs_done"],
        step=progress["step"],
        metric=state.get("metrics", {}).get("val_acc"),
        time=state.get("time") or path.stat().st_mtime,
    )


def list_checkpoints(run_dir: str | Path) -> list[CheckpointInfo]:
    """The checkpoints in a run directory, oldest step first; unreadable files left out."""
    folder = Path(run_dir) / "checkpoints"
    found = []
    for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
        try:
            found.append(info(path, load(path)))
        except (CheckpointError, KeyError):
            continue
    return sorted(found, key=lambda c: (c.step, c.path))


def resolve(spec: str | Path, out_dir: str | None = None, name: str | None = None) -> Path:
    """`--resume` value -> checkpoint file: "last", a run directory, or a .pt file."""
    if str(spec) == "last":
        if out_dir is None or name is None:
            raise CheckpointError("--resume last needs the profile, to know which runs to look at")
        runs = Path(out_dir).expanduser() / name
        found = runs.glob("*/checkpoints/last.pt") if runs.is_dir() else []
        candidates = sorted(found, key=lambda p: _stamp_order(p.parent.parent.name))
        if not candidates:
            raise CheckpointError(f"--resume last: no run in {runs} has a checkpoint yet")
        return candidates[-1]
    path = Path(spec).expanduser()
    if path.is_dir():
        last = path / "checkpoints" / "last.pt"
        if not last.is_file():
            raise CheckpointError(f"{path}: this run directory has no checkpoints/last.pt")
        return last
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file or run directory")
    return path


def _stamp_order(name: str) -> tuple[str, int]:
    """Run folders are STAMP or STAMP-N (N >= 2 for runs started in the same second)."""
    stamp, _, n = name.partition("-")[2].partition("-")
    head = name.partition("-")[0] + "-" + stamp
    return (head, int(n) if n.isdigit() else 1)


def rng_state() -> dict[str, Any]:
    """Every global random stream, as tensors and plain values."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def profile_changes(old: dict[str, dict], new: dict[str, dict]) -> list[tuple[str, Any, Any]]:
    """(key.path, old value, new value) for each key that differs between two profiles."""
    changes = []
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section, {}), new.get(section, {})
        for key in sorted(set(a) | set(b)):
            if a.get(key) != b.get(key):
                changes.append((f"{section}.{key}", a.get(key), b.get(key)))
    return changes


def check_resume(
    path: Path, state: dict[str, Any], new: dict[str, dict], world_size: int = 1
) -> list[str]:
    """Refuse a profile the checkpoint cannot serve; return a warning per safe change.

    `data.batch_size` is per process: it may change with the number of processes
    (torchrun), as long as the global batch, batch_size x processes, stays the same.
    """
    # A key the checkpoint's profile lacks (a section added since, e.g. [log]) had its default.
    defaults = Profile().to_dict()
    old = {s: {**defaults.get(s, {}), **t} for s, t in state["profile"].items()}
    old = {**defaults, **old}
    changes = profile_changes(old, new)
    refused = [c for c in changes if c[0] in REFUSED_CHANGES]
    old_world = state.get("progress", {}).get("world_size", 1)
    old_batch, new_batch = old["data"]["batch_size"], new["data"]["batch_size"]
    if old_batch * old_world != new_batch * world_size:
        if old_world == world_size:
            refused.append(("data.batch_size", old_batch, new_batch))
        else:
            raise CheckpointError(
                f"{path}: the global batch (data.batch_size x processes) was {old_batch} x "
                f"{old_world} = {old_batch * old_world}, now {new_batch} x {world_size}; set "
                f"data.batch_size so that the product stays {old_batch * old_world}, or start "
                "a new run"
            )
    if refused:
        what = "; ".join(f"{k} was {a!r}, the profile says {b!r}" for k, a, b in refused)
        raise CheckpointError(
            f"{path}: cannot resume with this profile ({what}); these keys must stay as they "
            "were, so start a new run instead"
        )
    warnings = [f"resume changes {k} from {a!r} to {b!r}" for k, a, b in changes]
    if old_world != world_size:
        warnings.append(
            f"resume goes from {old_world} to {world_size} process(es) with the same global "
            "batch: the same data order and mean gradient, equal within float tolerance "
            "(not bit for bit); dropout and augmentation draws differ"
        )
    return warnings
