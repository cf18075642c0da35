"""The Run handle: a Trainer in one background thread, its event queue, its controls.

Both faces (the CLI and the TUI) use only this: `Run.start(profile)`, `run.events`,
`run.pause()`, `run.resume()`, `run.stop()`, `run.join()`.
"""

from __future__ import annotations

import contextlib
import os
import queue
import stat
import threading
import time
import traceback
from pathlib import Path

from engine import events as ev
from engine.control import Control
from engine.distributed import world_from_env
from engine.errors import MptError
from engine.profile import Profile
from engine.summary import CURVE, SUMMARY, SummaryRecorder


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
                # atomic: of two runs in the same second, each gets its own
                path.mkdir(mode=safefs.DIR_MODE)
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
    from engine.notify import drop_checkpoint_command
    from engine.profile import apply_overrides, parse_override, profile_from_dict

    run = profile.run if profile else None
    path = ckpt.resolve(spec, run.out_dir if run else None, run.name if run else None)
    state = ckpt.load(path)
    # The caller's profile (or --set model.arch) names the model code itself; a changed
    # one is refused by check_resume below, before anything is imported.
    named = profile is not None or any(parse_override(o)[0] == "model.arch" for o in overrides)
    if not (trust_code or named):
        ckpt.require_consent(path, state, "--trust-code (or pass the profile that names it)")
    from_checkpoint = profile is None
    if profile is None:
        data = apply_overrides(state["profile"], overrides)
        profile = profile_from_dict(data, source=f"{path} (its profile)")
    warnings = ckpt.check_resume(path, state, profile.to_dict(), world_from_env().size)
    if from_checkpoint and not trust_code:  # a shell command is code too (engine/notify.py)
        warnings += drop_checkpoint_command(profile, overrides, path)
    _refuse_nothing_left(path, state, profile)
    events = path.resolve().parent.parent / "events.jsonl"
    history = []
    if events.is_file():
        # The lines written before the checkpoint; the new run_started (resumed_from) follows.
        history = ev.history_lines(events, state["progress"]["events"])
    return profile, (path, state), history, warnings


def _ended_by(error: BaseException) -> str:
    """run_failed's text for what no `except Exception` catches: sys.exit, KeyboardInterrupt,
    GeneratorExit or an exception sent to the thread, raised by code the run called."""
    frames = traceback.extract_tb(error.__traceback__)
    where = f" ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    if isinstance(error, SystemExit):
        code = "" if error.code is None else repr(error.code)
        return (
            f"the training code called sys.exit({code}){where}; a model or dataset must "
            "raise an exception, not exit"
        )
    if isinstance(error, KeyboardInterrupt):  # a real Ctrl-C reaches the main thread
        return (
            f"KeyboardInterrupt raised inside the training code{where}, not by Ctrl-C; "
            "stop a run with Ctrl-C or its stop control"
        )
    text = f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
    return f"{text} raised inside the training code{where}"


def _refuse_nothing_left(path: Path, state: dict, profile: Profile) -> None:
    """A checkpoint whose run has nothing left to do under `profile` would "finish" after
    0 steps in a new run directory: refuse it, saying what is done and which key to raise.
    (run.max_time is not checked: each resume gets a fresh budget.)"""
    from engine.checkpoint import CheckpointError

    progress, run = state["progress"], profile.run
    done, step = progress["epochs_done"], progress["step"]
    old_epochs = state["profile"].get("run", {}).get("epochs")
    what, raise_ = [], []  # what is done; the keys to raise, with a value that goes on
    if done >= run.epochs:
        if done == run.epochs == old_epochs:
            what.append(f"the run already finished its {_count(done, 'epoch')}")
        else:
            than = "as many as" if done == run.epochs else "more than"
            what.append(f"the run has done {_count(done, 'epoch')}, {than} run.epochs = ")
            what[-1] += str(run.epochs)
        more = old_epochs if isinstance(old_epochs, int) and old_epochs > done else 2 * done
        raise_.append(f"run.epochs (e.g. to {more})")
    if run.max_steps is not None and step >= run.max_steps:
        verb = "reached" if step == run.max_steps else "passed"
        what.append(f"{'it' if what else 'the run'} {verb} run.max_steps = {run.max_steps}")
        raise_.append(f"run.max_steps (e.g. to {2 * step})")
    if what:
        raise CheckpointError(
            f"{path}: {' and '.join(what)} (step {step}); to train further raise "
            + " and ".join(raise_)
        )
    stopped = _stops_again(state, profile)
    if stopped:
        raise CheckpointError(f"{path}: the run stopped early ({stopped[0]}); {stopped[1]}")


def _stops_again(state: dict, profile: Profile) -> tuple[str, str] | None:
    """(what stopped the checkpoint's run early, what to change) when `profile` would stop
    it again at its next validation; None when the run did not stop early or goes on."""
    from engine.monitor import stop_why

    old = {**Profile().to_dict()["early_stop"], **state["profile"].get("early_stop", {})}
    wait, metrics = state["early_stop"]["wait"], state["metrics"]
    value = metrics.get(old["monitor"])
    if not old["enabled"] or value is None:
        return None
    # (to_dict leaves out keys that are absent, None: TOML has no null)
    if not stop_why(value, wait, old["patience"], old.get("stop_above"), old.get("stop_below")):
        return None  # a checkpoint from before the run stopped
    es = profile.early_stop
    value = metrics.get(es.monitor)
    if not es.enabled or value is None:
        return None
    why = stop_why(value, wait, es.patience, es.stop_above, es.stop_below)
    further = "to train further"
    off = "or set early_stop.enabled = false"
    if why == "patience":
        return (
            f"{es.monitor} did not improve for {_count(wait, 'validation')}, "
            f"early_stop.patience = {es.patience}",
            f"{further} raise early_stop.patience (e.g. to {wait + es.patience + 1}) {off}",
        )
    if why == "stop_above":
        return (
            f"{es.monitor} {value:.4g} is above early_stop.stop_above = {es.stop_above}",
            f"{further} raise early_stop.stop_above {off}",
        )
    if why == "stop_below":
        return (
            f"{es.monitor} {value:.4g} is below early_stop.stop_below = {es.stop_below}",
            f"{further} lower early_stop.stop_below {off}",
        )
    return None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _sentence(error: MptError) -> str:
    """The error's sentence; a DataLoader worker's error arrives wrapped in its traceback."""
    text = str(error)
    if "Original Traceback" in text:  # torch's ExceptionWrapper: the sentence is the last line
        last = text.rstrip().splitlines()[-1]
        text = last.removeprefix(f"{type(error).__module__}.{type(error).__qualname__}: ")
    return text


def _traceback(error: BaseException) -> str:
    """The failure's traceback, as text; its frames then let go of their variables: one
    may hold a DataLoader's iterator in a reference cycle with the exception, and its
    worker processes end only with it (Trainer.release lets go of the loaders)."""
    text = traceback.format_exc()
    traceback.clear_frames(error.__traceback__)
    return text


class _RunLog(ev.EventLog):
    """The run's EventLog; it lets one terminal event out (run_finished or run_failed) and
    keeps it: how the run ended, read by Run.reason."""

    ending: ev.RunFinished | ev.RunFailed | None = None

    def emit(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunFinished | ev.RunFailed):
            if self.ending is not None:
                return
            self.ending = event
        super().emit(event)


# What a run writes into its run directory before training starts: removed again when
# setup finds a mistake (exit 2), so that a refused run leaves no run directory behind.
_SETUP_FILES = ("events.jsonl", "profile.toml", "metrics.csv", SUMMARY, CURVE)
_SETUP_PREFIXES = ("events.out.tfevents.",)  # TensorBoard's file, [log] tensorboard = true
_SETUP_FOLDERS = ("control", "checkpoints")  # `mpt run`'s command folder; no checkpoint yet


def remove_run_dir(run_dir: Path) -> None:
    """Remove a run directory that setup refused: the files the run made there, then the
    folder. Names are unlinked inside the folder (a symbolic link is removed, never
    followed); anything else found keeps the folder (events.jsonl is gone all the same,
    so no run list shows it)."""
    try:
        fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return
    try:
        for name in os.listdir(fd):
            if name in _SETUP_FILES or name.startswith(_SETUP_PREFIXES):
                with contextlib.suppress(OSError):
                    os.unlink(name, dir_fd=fd)
        for name in _SETUP_FOLDERS:
            _remove_folder(fd, name)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        run_dir.rmdir()


def _remove_folder(parent_fd: int, name: str) -> None:
    """Empty and remove `name` in the folder `parent_fd`: only plain files, never through
    a symbolic link (control/ holds command files; checkpoints/ nothing before training)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=parent_fd)
    except OSError:
        return
    try:
        for entry in os.listdir(fd):
            with contextlib.suppress(OSError):
                if stat.S_ISREG(os.stat(entry, dir_fd=fd, follow_symlinks=False).st_mode):
                    os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        os.rmdir(name, dir_fd=parent_fd)


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
        self._made_folders: list[Path] = []
        self.resumed_from: Path | None = resume[0] if resume else None
        self.events: queue.Queue[ev.Event] = queue.Queue()
        self.control = Control()
        self._trainer = None  # built in the thread
        self._resume = resume
        self._warnings = list(warnings)
        self._profile_steps = profile_steps
        path = run_dir / "events.jsonl" if run_dir else None
        recorder = SummaryRecorder(run_dir) if path is not None else None
        self._log = _RunLog(self.events, path, history, recorder)
        self._history = history  # replayed into the [log] sinks when the thread opens them
        # The events a resumed run starts from (its events.jsonl's first lines): a view of
        # the run folds these first, then the queue, which holds only this run's own events.
        self.history: list[ev.Event] = [
            e for e in map(ev.event_from_line, history) if e is not None
        ]
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
        run_dir, made = None, []
        if write and world_from_env().main:  # under torchrun, rank 0 alone writes
            out = Path(profile.run.out_dir).expanduser()
            made = [f for f in (out, out / profile.run.name) if not f.exists()]
            run_dir = make_run_dir(profile)
            _write_profile(run_dir, profile)
        run = cls(profile, run_dir, resume_pair, history, warnings, profile_steps)
        run._made_folders = made  # removed with a refused run's directory, when left empty
        run._thread.start()
        return run

    def _main(self) -> None:
        """The thread: set up, train, and end with exactly one run_finished or run_failed,
        however the thread ends (user code may call sys.exit or raise KeyboardInterrupt)."""
        try:
            from engine import trainer as loop  # torch is imported here, off the caller's thread

            if self._set_up(loop):
                self._train(loop)
        except Exception as e:  # noqa: BLE001 - e.g. the trainer's own import
            self._fail(f"{type(e).__name__}: {e}", traceback.format_exc())
        except BaseException as e:  # noqa: BLE001 - SystemExit, KeyboardInterrupt, ... in user code
            self._fail(_ended_by(e), traceback.format_exc())
        finally:
            self._end()

    def _set_up(self, loop) -> bool:
        """Open the sinks and build the trainer; False when the run has ended already."""
        try:
            # The [log] sinks (CSV, TensorBoard) open here, off the caller's thread:
            # TensorBoard's import is slow. A resumed run replays its history into them.
            from engine.sinks import open_sinks

            p = self.profile
            sinks = open_sinks(p.log, self.run_dir, p.notify, self.events, profile=p)
            self._log.attach(sinks, self._history)
            self._history = []
            self._trainer = loop.Trainer(
                self.profile,
                self._log,
                self.control,
                self.run_dir,
                self._resume,
                self._warnings,
                self._profile_steps,
            )
        except MptError as e:
            loop.release_memory()  # what the half-built trainer left in the GPU's cache
            self._fail(_sentence(e), "", user_error=True)
            return False
        except Exception as e:  # noqa: BLE001 - reported as run_failed, never lost
            text, tb = loop.describe_failure(e, self.profile, None), _traceback(e)
            loop.release_memory()
            self._fail(text, tb)
            return False
        if self.control.stop_requested:  # stopped while loading data: nothing to save
            self._log.emit(ev.RunFinished(reason=self.control.stop_reason))
            return False
        return True

    def _train(self, loop) -> None:
        try:
            self._trainer.fit()  # ends with its run_finished
        except MptError as e:  # e.g. the loss became non-finite: a sentence, no traceback
            traceback.clear_frames(e.__traceback__)  # see _traceback
            self._fail(_sentence(e), "")
        except Exception as e:  # noqa: BLE001
            text = loop.describe_failure(e, self.profile, self._trainer)
            self._fail(text, _traceback(e))

    def _fail(self, error: str, tb: str, user_error: bool = False) -> None:
        if self._log.ending is not None:
            return  # the run has ended already (e.g. an exception after its run_finished)
        if self._trainer is not None:  # its DataLoader workers, GPU memory: for the next run
            self._trainer.release()
        state = self._trainer.state if self._trainer is not None else None
        self._log.emit(
            ev.RunFailed(
                step=state.step if state else 0,
                epoch=state.epoch if state else 0,
                error=error,
                traceback=tb,
                user_error=user_error,
            )
        )

    def _end(self) -> None:
        """The thread's last act: a terminal event if none went out, the log closed, a
        setup mistake's run directory removed (nothing was trained in it)."""
        if self._log.ending is None:  # never reached, but a run must never end unreported
            self._log.emit(ev.RunFailed(error="the training thread ended without reporting why"))
        self._log.close()
        if self._trainer is not None:
            self._trainer.close()  # leaves torchrun's process group, if it joined one
        ending = self._log.ending
        if isinstance(ending, ev.RunFailed) and ending.user_error and self.run_dir is not None:
            remove_run_dir(self.run_dir)
            for folder in reversed(self._made_folders):  # <name>/, then out_dir, if mpt made them
                with contextlib.suppress(OSError):
                    folder.rmdir()  # only when empty: another run's folders stay

    @property
    def reason(self) -> str | None:
        """How the run ended: its run_finished reason, or "failed"; None while it runs."""
        ending = self._log.ending
        if ending is None:  # a thread that ended with no word (killed in its last lines) failed
            return "failed" if self._thread.ident and not self._thread.is_alive() else None
        return "failed" if isinstance(ending, ev.RunFailed) else ending.reason

    @property
    def error(self) -> str | None:
        """run_failed's sentence, once the run has failed."""
        ending = self._log.ending
        if isinstance(ending, ev.RunFailed):
            return ending.error
        return "the training thread ended without reporting why" if self.reason else None

    @property
    def user_error(self) -> bool:
        """Whether the run failed on a profile, data or model mistake found before training."""
        ending = self._log.ending
        return isinstance(ending, ev.RunFailed) and ending.user_error

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
    def model(self):
        """The torch module this run trains (after a run with early_stop.restore_best, the
        restored best weights); None until setup has built it."""
        return self._trainer.model if self._trainer is not None else None

    @property
    def paused(self) -> bool:
        return self.control.pause_requested

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float | None = None) -> str | None:
        """Wait for the run to end; returns how it ended (None if still running)."""
        self._thread.join(timeout)
        return None if self._thread.is_alive() else self.reason
