"""`[log] wandb = true`: the run's events as one Weights & Biases run (engine/sinks.py's sinks).

One W&B run per mpt run, in the project `log.wandb_project` (empty: run.name), named
`<run.name>/<stamp>`. `log.wandb_mode`: offline (the default) writes the W&B run into
`<run dir>/wandb/` for `wandb sync` later, with no network and no login; online sends it as
it runs (after `wandb login`); disabled opens no sink. Config: the flattened profile.
History, at x = the optimizer step: each `step` event's loss, lr and samples_per_s; once an
epoch, the epoch's last step event's host/GPU figures; each `epoch_end`'s train_*/val_*
metrics. Summary: the `mpt.*` facts (run directory, host, state, checkpoints); tags: the
state at the end.

A resumed run continues the W&B run of the run it resumes (its id is in that run
directory's `wandb.json`) and logs only its own, live events; offline, the continuation is
a second file with the same id in the new run directory, which `wandb sync` uploads after
the first. Where it cannot continue (another project or mode, or steps logged past the
checkpoint, which would be logged twice) it starts a new W&B run, replays the history into
it and names the one it came from in the summary.

wandb is imported only here, by the sink's own thread, once the first live event has come;
a missing package is one warning, so is any failure of W&B's: never a failed run. W&B
prints nothing, captures no console, and its sys.exit and excepthook wrappers are undone;
its service process is shut when the last W&B sink closes, so mpt's exits stay as they were.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import secrets
import string
import sys
import threading
from pathlib import Path
from typing import Any

from engine import events as ev
from engine import tracking
from engine.errors import MptError

ID_FILE = "wandb.json"  # {"run_id", "project", "mode", "run_dirs"} in each run directory
MISSING = "the wandb package is not installed; pip install 'mpt[wandb]' or set log.wandb = false"
# W&B's exit code for each ending: non-zero marks the W&B run failed (as MLflow's KILLED).
_EXIT_CODES = {"failed": 1, "running": 1, "interrupted": 130}
# One W&B service process serves every W&B run of a process: shut with the last one.
_service_lock = threading.Lock()
_runs_open = 0


def wanted(log: Any) -> bool:
    """The profile's [log] asks for a W&B run."""
    return bool(getattr(log, "wandb", False)) and log.wandb_mode != "disabled"


def missing_package(profile: Any) -> str | None:
    """`mpt validate`'s warning when log.wandb is on and wandb is not installed."""
    if wanted(profile.log) and importlib.util.find_spec("wandb") is None:
        return f"log.wandb = true, but {MISSING}; runs go on without the W&B sink"
    return None


def _new_id() -> str:
    """A W&B run id (as wandb.util.generate_id: 8 of [a-z0-9]), made before wandb loads."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class WandbSink(tracking.TrackerSink):
    """Feeds one W&B run; history rows are batched and written at an epoch's end, at most
    every 5 s. The writer thread also imports wandb and starts its service (~2 s), and each log call
    (~1 ms) runs there, out of the training loop."""

    def __init__(self, profile: Any):
        super().__init__()
        self.profile = profile
        self.project = profile.log.wandb_project or profile.run.name
        self.mode = profile.log.wandb_mode
        self.run_id: str | None = None
        self._rows: dict[int, dict[str, float]] = {}  # step -> its values, sent in order
        self._summary: dict[str, str] = {}  # mpt.* facts and lineage

    def _start(self, started: ev.RunStarted) -> None:
        if importlib.util.find_spec("wandb") is None:
            raise MptError(f"log.wandb = true: {MISSING}")
        run_dir = Path(started.run_dir)
        resumed_dir = tracking.resumed_run_dir(self._history)
        previous = tracking.read_id_file(resumed_dir, ID_FILE)
        continued = previous is not None and self._can_continue(previous, resumed_dir)
        run_dirs = [str(run_dir)]
        if continued:
            self.run_id = previous["run_id"]
            run_dirs = [*previous.get("run_dirs", []), *run_dirs]
        else:
            self.run_id = _new_id()
            if previous is not None and previous.get("run_id"):
                self._summary["mpt.resumed_from_wandb_run"] = str(previous["run_id"])
            for event in self._history:  # the W&B run gets the whole curve
                self._log(event)
        self._history = []
        self._log(started)
        if started.resumed_from:
            self._summary["mpt.run_dirs"] = " ".join(run_dirs)
        data = {"run_id": self.run_id, "project": self.project, "mode": self.mode}
        tracking.write_id_file(run_dir, ID_FILE, {**data, "run_dirs": run_dirs})
        init = {
            "project": self.project,
            "id": self.run_id,
            "name": f"{self.profile.run.name}/{run_dir.name}",
            "dir": str(run_dir),  # <run dir>/wandb/: the run directory holds it all
            "mode": self.mode,
            "config": tracking.flat_profile(self.profile),
            "resume": "allow" if continued else None,
        }
        self._start_writer("mpt-wandb", self._write_jobs, init)
        self.flush()

    def _can_continue(self, saved: dict, run_dir: Path) -> bool:
        """Same project and mode, and no step logged past the checkpoint (no step twice):
        the W&B run logged at most the steps of its run directory's events.jsonl."""
        if not saved.get("run_id") or (saved.get("project"), saved.get("mode")) != (
            self.project,
            self.mode,
        ):
            return False
        resumed_at = self._history[-1].step if self._history else 0
        try:
            logged = ev.read_events(run_dir / "events.jsonl")
        except OSError:
            return False
        return all(e.step <= resumed_at for e in logged if isinstance(e, ev.Step | ev.EpochEnd))

    def _add(self, values: dict[str, float], event: ev.Event) -> None:
        # The row's time (W&B's _timestamp) is the event's: a replayed history keeps its own.
        self._rows.setdefault(event.step, {}).update(values, _timestamp=event.time)

    def _add_facts(self, facts: dict[str, str], event: ev.Event) -> None:
        self._summary.update(facts)

    def flush(self) -> None:
        """Hand the rows and summary to the writer (TrackerSink.write says when)."""
        if self._writer is None or not (self._rows or self._summary):
            return
        self._jobs.put((sorted(self._rows.items()), self._summary))
        self._rows, self._summary = {}, {}

    def _write_jobs(self, init: dict[str, Any]) -> None:
        global _runs_open
        run = None
        with _service_lock:
            _runs_open += 1
            try:
                run = _init_run(init)
            except Exception as e:  # noqa: BLE001 - raised by the next write: one warning
                self._failure = e
            except BaseException as e:  # noqa: BLE001 - W&B's sys.exit must not end the run
                self._failure = MptError(f"wandb.init ended with {type(e).__name__}: {e}")
        self._serve(lambda job: _log_rows(run, *job))
        with _service_lock:
            _runs_open -= 1
            _end_run(run, self._facts.state, last=_runs_open == 0)

    def close(self) -> None:
        if self._writer is not None:
            self._stop_writer()  # the writer finishes the W&B run
            self._writer = None


def _init_run(init: dict[str, Any]):
    """wandb.init, quiet and offline-safe; W&B's wrappers of sys.exit/excepthook undone."""
    os.environ.setdefault("WANDB_SILENT", "true")  # no banner over mpt's console
    os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # no crash reports sent anywhere
    try:
        import wandb
    except ImportError:
        raise MptError(f"log.wandb = true: {MISSING}") from None
    if init["mode"] == "online" and not wandb.login(prompt=False, verify=False):
        raise MptError(
            "log.wandb_mode = online, but no W&B API key is set up; run `wandb login` "
            "(or set WANDB_API_KEY), or set log.wandb_mode = offline"
        )
    settings = wandb.Settings(
        console="off",  # W&B would wrap stdout/stderr: the console draws there
        silent=True,
        x_disable_stats=True,  # mpt logs its own host/GPU figures, once an epoch
        save_code=False,
        disable_git=True,
        x_save_requirements=False,
    )
    hooks = sys.exit, sys.excepthook  # W&B's service wraps both, for its own atexit
    try:
        return wandb.init(**init, settings=settings, reinit="create_new", allow_val_change=True)
    finally:
        sys.exit, sys.excepthook = hooks


def _log_rows(run: Any, rows: list[tuple[int, dict]], summary: dict[str, str]) -> None:
    for step, values in rows:
        run.log(values, step=step)
    run.summary.update(summary)


def _end_run(run: Any, state: str, last: bool) -> None:
    """Finish the W&B run (its tags: the state), and with the `last` run shut W&B's
    service, which otherwise waits for an atexit hook of its own."""
    if run is not None:
        with contextlib.suppress(Exception):
            run.tags = (state,)
            run.finish(exit_code=_EXIT_CODES.get(state, 0))
    if last and "wandb" in sys.modules:
        with contextlib.suppress(BaseException):  # its teardown may sys.exit on a bad status
            sys.modules["wandb"].teardown()
