"""The Run handle: a Trainer in one background thread, its event queue, its controls.

Both faces (the CLI and the TUI) use only this: `Run.start(profile)`, `run.events`,
`run.pause()`, `run.resume()`, `run.stop()`, `run.join()`.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import traceback
from pathlib import Path

from engine import events as ev
from engine.control import Control
from engine.distributed import world_from_env
from engine.errors import MptError
from engine.profile import Profile


def make_run_dir(profile: Profile) -> Path:
    """Create `<out_dir>/<name>/<YYYYmmdd-HHMMSS>/`; never reuse a folder another run made.

    Only in a folder no other user can redirect (engine/safefs.py): `<out_dir>/<name>/`
    must be the user's own (or root's), writable by no one else, on a path where nobody
    else can rename or replace it; otherwise MptError (run.out_dir) before anything is
    written. Folders mpt makes are 0755 at most: others may read the results, never write.
    """
    from engine import safefs

    parent = Path(profile.run.out_dir).expanduser() / profile.run.name
    stamp = time.strftime("%Y%m%d-%H%M%S")
    try:
        problem = safefs.unsafe_folder(parent)  # before making anything in a shared folder
        if problem is None:
            safefs.make_dirs(parent)
            problem = safefs.unsafe_folder(parent)  # `<name>/` may be another user's, made first
        if problem:
            raise MptError(f"run.out_dir: {problem}")
        for n in range(1, 1000):
            path = parent / (stamp if n == 1 else f"{stamp}-{n}")
            try:
                path.mkdir(mode=0o755)  # atomic: of two runs in the same second, each gets its own
                return path
            except FileExistsError:
                continue
    except OSError as e:  # a file in the way, a read-only or full disk
        raise MptError(
            f"run.out_dir: cannot create a run directory in {parent} ({e.strerror or e}); "
            "point run.out_dir at a writable folder"
        ) from None
    raise MptError(f"{parent}: too many runs started in the same second")


def _write_profile(run_dir: Path, profile: Profile) -> None:
    """profile.toml, the first file of a run; a disk that refuses it refuses the run (the
    folder, just made and holding nothing else, is removed)."""
    path = run_dir / "profile.toml"
    try:
        path.write_text(profile.to_toml())
    except OSError as e:
        path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            run_dir.rmdir()
        raise MptError(
            f"run.out_dir: cannot write {path} ({e.strerror or e}); free space on that disk "
            "or point run.out_dir at another one"
        ) from None


def _prepare_resume(
    profile: Profile | None, spec: str | Path, overrides: list[str], trust_code: bool = False
):
    """Find and check the checkpoint; return (profile, (path, state), history, warnings)."""
    from engine import checkpoint as ckpt  # imports torch: only when resuming
    from engine.profile import apply_overrides, parse_override, profile_from_dict

    run = profile.run if profile else None
    path = ckpt.resolve(spec, run.out_dir if run else None, run.name if run else None)
    state = ckpt.load(path)
    # The caller's profile (or --set model.arch) names the model code itself; a changed
    # one is refused by check_resume below, before anything is imported.
    named = profile is not None or any(parse_override(o)[0] == "model.arch" for o in overrides)
    if not (trust_code or named):
        ckpt.require_consent(path, state, "--trust-code (or pass the profile that names it)")
    if profile is None:
        data = apply_overrides(state["profile"], overrides)
        profile = profile_from_dict(data, source=f"{path} (its profile)")
    warnings = ckpt.check_resume(path, state, profile.to_dict(), world_from_env().size)
    events = path.resolve().parent.parent / "events.jsonl"
    history = []
    if events.is_file():
        # The lines written before the checkpoint; the new run_started (resumed_from) follows.
        history = ev.history_lines(events, state["progress"]["events"])
    return profile, (path, state), history, warnings


def _sentence(error: MptError) -> str:
    """The error's sentence; a DataLoader worker's error arrives wrapped in its traceback."""
    text = str(error)
    if "Original Traceback" in text:  # torch's ExceptionWrapper: the sentence is the last line
        last = text.rstrip().splitlines()[-1]
        text = last.removeprefix(f"{type(error).__module__}.{type(error).__qualname__}: ")
    return text


def _unexpected(trainer, error: Exception) -> str:
    """run_failed's text for an exception that is not the project's own: out of memory gets
    advice (the usual fixes), anything else its type and message."""
    from engine.memory import is_out_of_memory  # CUDA's, the CPU allocator's, MemoryError

    if not is_out_of_memory(error):
        return f"{type(error).__name__}: {error}"
    p = trainer.p
    training = hasattr(trainer, "optimizer")  # set up: the model and optimizer are built
    return (
        f"out of memory on {getattr(trainer, 'device', p.run.device)} "
        + (f"at step {trainer.step}" if training else "while setting up")
        + f" (data.batch_size {p.data.batch_size}, train.grad_accum {p.train.grad_accum}, "
        f"precision.mode {p.precision.mode!r}); lower data.batch_size and raise "
        'train.grad_accum to keep the step the same, or use precision.mode = "bf16"'
        + ("" if training else '; data.cache = "memory" keeps the dataset off the GPU')
    )


def _release(trainer) -> None:
    """After a failure: stop DataLoader workers and give cached GPU memory back, so that a
    console that stays open (mpt-tui) can start the next run."""
    for loader in getattr(trainer, "loaders", {}).values():
        # Persistent workers live in the loader's iterator, which the failure's traceback
        # may keep alive: shut them down now (DataLoader's own, if private, method).
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
    if getattr(trainer, "loaders", None):
        trainer.loaders = {}
    optimizer = getattr(trainer, "optimizer", None)
    if optimizer is not None:
        optimizer.zero_grad(set_to_none=True)  # gradients of a step that never finished
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Run:
    """A training run in a background thread. Controls are thread-safe."""

    def __init__(
        self,
        profile: Profile,
        run_dir: Path | None,
        resume=None,
        history=(),
        warnings=(),
        profile_steps: int = 0,
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
        self._profile_steps = profile_steps
        path = run_dir / "events.jsonl" if run_dir else None
        self._log = ev.EventLog(self.events, path, history)
        self._history = history  # replayed into the [log] sinks when the thread opens them
        self._thread = threading.Thread(target=self._main, name="mpt-trainer", daemon=True)

    @classmethod
    def start(
        cls,
        profile: Profile | None = None,
        *,
        resume: str | Path | None = None,
        overrides: list[str] | None = None,
        write: bool = True,
        profile_steps: int = 0,
        trust_code: bool = False,
    ) -> Run:
        """Create the run directory (unless `write` is false) and start training.

        `resume`: "last" (the newest checkpointed run of this profile's name), a run
        directory, or a checkpoint file. The run continues in a new run directory whose
        events.jsonl starts with the history up to the checkpoint. Without `profile` the
        checkpoint's own profile is used, with `overrides` (`section.key=value`) applied.
        `profile_steps`: record that many steps with torch.profiler (after one skipped and
        one warm-up step) into `<run dir>/profiler/`; a `trace_saved` event names the file.
        Raises MptError (CheckpointError) before any work when the checkpoint cannot be used.
        Model code ("package.module:factory") named only by the checkpoint's profile is
        imported only with `trust_code`; a `profile` passed here is the caller's, who
        vouches for the code it names (the CLI: the user's file; the TUI: after asking).
        """
        resume_pair, history, warnings = None, [], []
        if resume is not None:
            profile, resume_pair, history, warnings = _prepare_resume(
                profile, resume, overrides or [], trust_code
            )
        if profile is None:
            raise MptError("Run.start needs a profile or a checkpoint to resume")
        run_dir = None
        if write and world_from_env().main:  # under torchrun, rank 0 alone writes
            run_dir = make_run_dir(profile)
            _write_profile(run_dir, profile)
        run = cls(profile, run_dir, resume_pair, history, warnings, profile_steps)
        run._thread.start()
        return run

    def _main(self) -> None:
        from engine.trainer import Trainer  # torch is imported here, off the caller's thread

        trainer = Trainer(
            self.profile,
            self._log,
            self.control,
            self.run_dir,
            self._resume,
            self._warnings,
            self._profile_steps,
        )
        self.trainer = trainer
        try:
            # The [log] sinks (CSV, TensorBoard) open here, off the caller's thread:
            # TensorBoard's import is slow. A resumed run replays its history into them.
            from engine.sinks import open_sinks

            self._log.attach(open_sinks(self.profile.log, self.run_dir), self._history)
            self._history = []
            trainer.setup()
        except MptError as e:
            self._fail(trainer, _sentence(e), "", user_error=True)
            return
        except Exception as e:  # noqa: BLE001 - reported as run_failed, never lost
            self._fail(trainer, _unexpected(trainer, e), traceback.format_exc())
            return
        if self.control.stop_requested:  # stopped while loading data: nothing to save
            self.reason = self.control.stop_reason
            self._log.emit(ev.RunFinished(reason=self.reason))
            self._log.close()
            return
        try:
            self.reason = trainer.fit()
        except MptError as e:  # e.g. the loss became non-finite: a sentence, no traceback
            self._fail(trainer, _sentence(e), "")
            return
        except Exception as e:  # noqa: BLE001
            self._fail(trainer, _unexpected(trainer, e), traceback.format_exc())
            return
        finally:
            self._log.close()
            if getattr(trainer, "dist", None) is not None:
                trainer.dist.close()  # leaves torchrun's process group, if it joined one

    def _fail(self, trainer, error: str, tb: str, user_error: bool = False) -> None:
        self.reason, self.error, self.user_error = "failed", error, user_error
        _release(trainer)
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
