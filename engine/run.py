"""The Run handle: a Trainer in one background thread, its event queue, its controls.

Both faces (the CLI and the TUI) use only this: `Run.start(profile)`, `run.events`,
`run.pause()`, `run.resume()`, `run.stop()`, `run.join()`.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from pathlib import Path

from engine import events as ev
from engine.control import Control
from engine.errors import MptError
from engine.profile import Profile


def make_run_dir(profile: Profile) -> Path:
    """Create `<out_dir>/<name>/<YYYYmmdd-HHMMSS>/`; never reuse a folder another run made."""
    parent = Path(profile.run.out_dir).expanduser() / profile.run.name
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        path = parent / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            path.mkdir()  # atomic: of two runs started in the same second, each gets its own
            return path
        except FileExistsError:
            continue
    raise MptError(f"{parent}: too many runs started in the same second")


def _prepare_resume(profile: Profile | None, spec: str | Path, overrides: list[str]):
    """Find and check the checkpoint; return (profile, (path, state), history, warnings)."""
    from engine import checkpoint as ckpt  # imports torch: only when resuming
    from engine.profile import apply_overrides, profile_from_dict

    run = profile.run if profile else None
    path = ckpt.resolve(spec, run.out_dir if run else None, run.name if run else None)
    state = ckpt.load(path)
    if profile is None:
        data = apply_overrides(state["profile"], overrides)
        profile = profile_from_dict(data, source=f"{path} (its profile)")
    warnings = ckpt.check_resume(path, state, profile.to_dict())
    events = path.resolve().parent.parent / "events.jsonl"
    history = []
    if events.is_file():
        # The lines written before the checkpoint; the new run_started (resumed_from) follows.
        history = events.read_text().splitlines()[: state["progress"]["events"]]
    return profile, (path, state), history, warnings


class Run:
    """A training run in a background thread. Controls are thread-safe."""

    def __init__(
        self, profile: Profile, run_dir: Path | None, resume=None, history=(), warnings=()
    ):
        self.profile = profile
        self.run_dir = run_dir
        self.resumed_from: Path | None = resume[0] if resume else None
        self.events: queue.Queue[ev.Event] = queue.Queue()
        self.control = Control()
        self.reason: str | None = None  # how it ended: a run_finished reason, or "failed"
        self.error: str | None = None
        self.user_error = False
        self._resume = resume
        self._warnings = list(warnings)
        path = run_dir / "events.jsonl" if run_dir else None
        self._log = ev.EventLog(self.events, path, history)
        self._thread = threading.Thread(target=self._main, name="mpt-trainer", daemon=True)

    @classmethod
    def start(
        cls,
        profile: Profile | None = None,
        *,
        resume: str | Path | None = None,
        overrides: list[str] | None = None,
        write: bool = True,
    ) -> Run:
        """Create the run directory (unless `write` is false) and start training.

        `resume`: "last" (the newest checkpointed run of this profile's name), a run
        directory, or a checkpoint file. The run continues in a new run directory whose
        events.jsonl starts with the history up to the checkpoint. Without `profile` the
        checkpoint's own profile is used, with `overrides` (`section.key=value`) applied.
        Raises MptError (CheckpointError) before any
        work when the checkpoint cannot be used.
        """
        resume_pair, history, warnings = None, [], []
        if resume is not None:
            profile, resume_pair, history, warnings = _prepare_resume(
                profile, resume, overrides or []
            )
        if profile is None:
            raise MptError("Run.start needs a profile or a checkpoint to resume")
        run_dir = None
        if write:
            run_dir = make_run_dir(profile)
            (run_dir / "profile.toml").write_text(profile.to_toml())
        run = cls(profile, run_dir, resume_pair, history, warnings)
        run._thread.start()
        return run

    def _main(self) -> None:
        from engine.trainer import Trainer  # torch is imported here, off the caller's thread

        trainer = Trainer(
            self.profile, self._log, self.control, self.run_dir, self._resume, self._warnings
        )
        self.trainer = trainer
        try:
            trainer.setup()
        except MptError as e:
            self._fail(trainer, str(e), "", user_error=True)
            return
        except Exception as e:  # noqa: BLE001 - reported as run_failed, never lost
            self._fail(trainer, f"{type(e).__name__}: {e}", traceback.format_exc())
            return
        if self.control.stop_requested:  # stopped while loading data: nothing to save
            self.reason = self.control.stop_reason
            self._log.emit(ev.RunFinished(reason=self.reason))
            self._log.close()
            return
        try:
            self.reason = trainer.fit()
        except MptError as e:  # e.g. the loss became non-finite: a sentence, no traceback
            self._fail(trainer, str(e), "")
            return
        except Exception as e:  # noqa: BLE001
            self._fail(trainer, f"{type(e).__name__}: {e}", traceback.format_exc())
            return
        finally:
            self._log.close()

    def _fail(self, trainer, error: str, tb: str, user_error: bool = False) -> None:
        self.reason, self.error, self.user_error = "failed", error, user_error
        self._log.emit(
            ev.RunFailed(
                step=trainer.step,
                epoch=trainer.epoch,
                error=error,
                traceback=tb,
                user_error=user_error,
            )
        )
        self._log.close()

    # ---- controls: take effect at the next optimizer-step boundary ----
    def pause(self) -> None:
        self.control.pause()

    def resume(self) -> None:
        self.control.resume()

    def stop(self, reason: str = "stopped") -> None:
        """End the run at the next step boundary, after saving a checkpoint."""
        self.control.stop(reason)

    def checkpoint(self) -> None:
        """Save a checkpoint at the next step boundary (a checkpoint_saved event follows)."""
        self.control.checkpoint()

    @property
    def paused(self) -> bool:
        return self.control.pause_requested

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> str | None:
        """Wait for the run to end; returns how it ended (None if still running)."""
        self._thread.join(timeout)
        return None if self._thread.is_alive() else self.reason
