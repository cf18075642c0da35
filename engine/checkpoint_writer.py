"""Where and when a run writes its checkpoints, and what a failed write means.

One object per run: the step files (atomic), last.pt and best.pt, pruning by keep_last,
room made on a full disk, the best.pt a resumed run carries over, and the failure policy
(checkpoint.on_error: a periodic file warns or stops the run; the one that ends the run is
its result, and losing it fails the run). The file format is engine/checkpoint.py's.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from engine import checkpoint as ckpt
from engine import events as ev
from engine import safefs
from engine.errors import TrainingFailed
from engine.stop import ENDINGS

if TYPE_CHECKING:
    from engine.state import TrainState

# Why a checkpoint was saved. keep_last prunes the periodic files only; the ones a person
# or the end of the run asked for are the result, and stay. A "best" file stays while
# best.pt holds it (an earlier best, superseded, is pruned like a periodic one).
PERIODIC = frozenset({"epoch", "steps"})
RESULTS = frozenset(ending.saves for ending in ENDINGS.values())  # final, stop, interrupted
KEPT = RESULTS | {"requested"}
# The disk (or the user's quota) is full: freeing other files makes room. EFBIG is a limit
# on one file's size, which freeing other files never lifts.
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


class CheckpointWriter:
    """One run's checkpoints/ folder: writes step files atomically, points last.pt at the
    newest, remembers why this run saved each file, and prunes by keep_last from that
    alone (a file this run did not write is never touched). `folder` None (a run that
    writes nothing): every method does nothing."""

    def __init__(
        self,
        folder: Path | None,
        keep_last: int,
        on_error: str,
        log: ev.EventLog,
        resumed_from: Path | None = None,
        resumed_at: tuple[int, int] | None = None,
    ):
        self.folder, self.keep_last, self.on_error = folder, keep_last, on_error
        self.log, self.resumed_from = log, resumed_from
        self.reasons: dict[str, set[str]] = {}  # step file name -> why this run saved it
        self.last_saved = resumed_at  # (step, epochs_done) of the newest file

    def save(
        self, reason: str, at: TrainState, make_state: Callable[[], dict[str, Any]]
    ) -> Path | None:
        """Write step-NNNNNN.pt atomically, point last.pt at it, drop old periodic ones;
        `make_state()` is called only when the file is written (not already saved at this
        step). A write the disk refuses follows checkpoint.on_error (see `_failed`)."""
        if self.folder is None:
            return None
        path = self.folder / f"step-{at.step:06d}.pt"
        if self.last_saved != (at.step, at.epochs_done) or not path.exists():
            state = make_state()
            try:
                freed = self.write(state, path, reason)
            except OSError as e:  # disk full, folder not writable
                self._failed(path, e, at, reason)
                return None
            self.last_saved = (at.step, at.epochs_done)
            if freed:
                self._warn_freed(freed, path, at)
        else:
            self.note(path, reason)  # e.g. a request at the step a periodic file was saved
        self.log.emit(
            ev.CheckpointSaved(step=at.step, epoch=at.epoch, path=str(path), reason=reason)
        )
        return path

    def link_best(self, at: TrainState) -> None:
        """Point best.pt at this step's file (saved just now, or earlier at this step)."""
        if self.folder is None:
            return
        path, best = self.folder / f"step-{at.step:06d}.pt", self.folder / "best.pt"
        if not path.exists():
            return  # that checkpoint could not be written: reported already
        try:
            ckpt.link_atomic(path, best)
        except OSError as e:
            self._failed(best, e, at)
            return
        self.prune()  # the best file best.pt held until now may go
        self.log.emit(
            ev.CheckpointSaved(
                step=at.step,
                epoch=at.epoch,
                path=str(best),
                reason="best",
                monitor=at.best_ckpt.monitor,
                value=at.best_ckpt.best,
            )
        )

    def carry_best_over(self, at: TrainState) -> None:
        """A resumed run's folder starts with the best.pt it resumed knowing about."""
        best_step = at.best_ckpt.best_step
        if not (self.resumed_from and self.folder and best_step is not None):
            return
        source = self.resumed_from.resolve().parent / "best.pt"
        try:
            if ckpt.load(source)["progress"]["step"] != best_step:
                return  # that best.pt came later than the checkpoint resumed from
        except (ckpt.CheckpointError, KeyError):
            return
        try:
            safefs.make_dir(self.folder)  # never through a symbolic link
            ckpt.link_atomic(source, self.folder / "best.pt")
        except OSError as e:
            self._failed(self.folder / "best.pt", e, at)

    def _warn_freed(self, freed: list[Path], path: Path, at: TrainState) -> None:
        names = ", ".join(f.name for f in freed)
        self.log.emit(
            ev.Warning(
                step=at.step,
                epoch=at.epoch,
                message=f"the disk holding {self.folder} is full: removed the older periodic "
                f"checkpoint(s) {names} early to make room for {path.name}",
            )
        )

    def _failed(self, path: Path, error: OSError, at: TrainState, reason: str = "") -> None:
        """A checkpoint the disk refused: the previous files stay. A periodic or requested
        one warns and training goes on (or stops, by checkpoint.on_error); the one that
        ends the run (final, stop, interrupt) is the run's result: losing it fails the run."""
        saved = self.last_saved is not None and (self.folder / "last.pt").exists()
        if reason in RESULTS:
            raise TrainingFailed(self._result_lost(path, error, reason, saved))
        kept = (
            f"last.pt still holds step {self.last_saved[0]}"
            if saved
            else "no earlier checkpoint of this run exists"
        )
        message = f"could not write checkpoint {path} ({error.strerror or error}); {kept}"
        if self.on_error == "stop":
            raise TrainingFailed(f'{message}; the run stops (checkpoint.on_error = "stop")')
        self.log.emit(
            ev.Warning(step=at.step, epoch=at.epoch, message=f"{message}; training goes on")
        )

    def _result_lost(self, path: Path, error: OSError, reason: str, saved: bool) -> str:
        """The sentence of a run whose last checkpoint (final, stop, interrupt) failed."""
        what = "interrupt" if reason == "interrupted" else reason
        if saved:
            kept, then = (
                f"the newest checkpoint on disk is {self.folder / 'last.pt'} "
                f"(step {self.last_saved[0]})",
                "resume from it",
            )
        else:
            resumed = f" (it resumed from {self.resumed_from})" if self.resumed_from else ""
            kept, then = f"no checkpoint of this run was kept{resumed}", "run again"
        text = f"could not write the {what} checkpoint {path} ({error.strerror or error}); {kept}"
        if error.errno in DISK_FULL:
            text += f"; free space on that disk and {then}"
        return text

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
                ckpt.save_atomic(state, path)
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
        ckpt.link_atomic(path, self.folder / "last.pt")
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
