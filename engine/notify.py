"""`[notify]`: tell the user how a run ended, by a shell command and/or a webhook.

A sink beside the CSV and TensorBoard ones (engine/sinks.py): it sees the run's events
and, at the run's one terminal event (run_finished or run_failed, written after the
final checkpoint), starts the notification in background threads, so that the event
reaches the console at once. The run's thread waits for them when it closes its sinks,
never longer than their timeouts (COMMAND_TIMEOUT_S, WEBHOOK_TIMEOUT_S). A notification
that fails never fails the run: it is one `warning: [notify] ...` line on stderr and a
warning event on the run's queue. Not in events.jsonl: its last line stays the
run_finished or run_failed that says how the run ended (`mpt ls` reads it).

Endings, as `notify.on` names them (MPT_EVENT), from run_finished's reason (MPT_REASON):
finished (completed, max_time), early_stopped, stopped (a stop the user asked for),
interrupted (Ctrl-C, SIGTERM, a closed terminal); failed is run_failed.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from engine import events as ev

# run_finished.reason -> the ending `notify.on` names; a reason not here (a newer mpt's)
# notifies as "finished".
ENDING_OF_REASON = {
    "completed": "finished",
    "max_time": "finished",
    "early_stopped": "early_stopped",
    "stopped": "stopped",
    "interrupted": "interrupted",
}
COMMAND_TIMEOUT_S = 30.0  # then the command's process group is killed
WEBHOOK_TIMEOUT_S = 5.0
_GRACE_S = 2.0  # past a timeout, for a killed command to be reaped
_TAIL_CHARS = 200  # of a failed command's stderr, quoted in the warning


def ending_of(event: ev.Event) -> str | None:
    """The notify.on name of a terminal event; None for any other event."""
    if isinstance(event, ev.RunFailed):
        return "failed"
    if isinstance(event, ev.RunFinished):
        return ENDING_OF_REASON.get(event.reason or "completed", "finished")
    return None


def drop_checkpoint_command(profile: Any, overrides: list[str], path: Path) -> list[str]:
    """A resume that takes its profile from a checkpoint never runs the checkpoint's
    notify.command by itself: a run folder can come from anyone, and a shell command is
    code (as a model factory is: --trust-code). Clears it; the warning to show, if any.
    A command the user sets (`--set notify.command=...`) is theirs and stays."""
    from engine.profile import parse_override

    if not profile.notify.command:
        return []
    if any(parse_override(o)[0] == "notify.command" for o in overrides):
        return []
    profile.notify.command = ""
    return [
        f"[notify] the command that {path}'s profile names is not run: mpt runs a command "
        "from a checkpoint only with --trust-code (or pass your profile, or "
        "--set notify.command=...)"
    ]


def _headline(event: ev.Event, last_epoch: ev.EpochEnd | None) -> str:
    """ "val_acc=0.9712": the task's headline metric at the end, when known."""
    if isinstance(event, ev.RunFinished) and event.headline:
        name, value = event.headline, event.final_headline
    elif last_epoch is not None and last_epoch.metrics:
        name = next((k for k in last_epoch.metrics if k.startswith("val_")), "")
        value = last_epoch.metrics.get(name)
    else:
        return ""
    if not name or value is None or not math.isfinite(value):
        return ""
    return f"{name}={value:.4f}"


def _plain(data: dict[str, Any]) -> dict[str, Any]:
    """JSON's values: NaN and infinity as null, as events.jsonl writes them."""
    return {
        k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in data.items()
    }


class NotifySink:
    """Runs notify.command and posts to notify.webhook at the endings notify.on names."""

    def __init__(self, notify: Any, run_dir: Path, events: queue.Queue | None = None):
        self.command: str = notify.command
        self.webhook: str = notify.webhook
        self.on = set(notify.on)
        self.run_dir = run_dir
        self.run_name = run_dir.parent.name
        self._events = events  # the run's queue: a failed notification is a warning there
        # A resumed run replays its history into its sinks: never notify an older ending (a
        # history ends at its checkpoint today, before any run_finished, but need not).
        self._opened = time.time()
        self._last_epoch: ev.EpochEnd | None = None
        self._threads: list[tuple[threading.Thread, float]] = []
        self._sent = False

    def write(self, event: ev.Event) -> None:
        if isinstance(event, ev.RunStarted) and event.name:
            self.run_name = event.name
        elif isinstance(event, ev.EpochEnd):
            self._last_epoch = event
        ending = ending_of(event)
        if ending is None or self._sent or event.time < self._opened:
            return
        self._sent = True  # once per run, whatever follows
        if ending in self.on:
            self._start(self.message(event, ending))

    def message(self, event: ev.Event, ending: str) -> dict[str, Any]:
        """What is sent: the terminal event's fields, the run, and a one-line `text`."""
        reason = "failed" if isinstance(event, ev.RunFailed) else event.reason or "completed"
        headline = _headline(event, self._last_epoch)
        data = _plain(event.to_dict())
        data.pop("traceback", None)  # long, and for a person at the run's log, not a chat
        return {
            **data,
            "event": ending,
            "reason": reason,
            "run_name": self.run_name,
            "run_dir": str(self.run_dir),
            "headline": headline,
            "text": _summary(self.run_name, ending, reason, headline, event, self.run_dir),
        }

    def _start(self, message: dict[str, Any]) -> None:
        jobs = []
        if self.command:
            jobs.append((self._run_command, COMMAND_TIMEOUT_S))
        if self.webhook:
            jobs.append((self._post_webhook, WEBHOOK_TIMEOUT_S))
        for job, timeout in jobs:
            # Daemon threads: a hung DNS lookup must not keep the process from exiting.
            thread = threading.Thread(target=job, args=(message,), name="mpt-notify", daemon=True)
            thread.start()
            self._threads.append((thread, time.monotonic() + timeout + _GRACE_S))

    def _run_command(self, message: dict[str, Any]) -> None:
        env = {
            **os.environ,
            "MPT_EVENT": message["event"],
            "MPT_RUN_DIR": message["run_dir"],
            "MPT_RUN_NAME": message["run_name"],
            "MPT_REASON": message["reason"],
            "MPT_HEADLINE": message["headline"],
        }
        line = (json.dumps(message) + "\n").encode("utf-8")
        try:
            # As cron runs a command: the user's own string, through /bin/sh. Its own
            # session, so that a timeout kills whatever it started along with it.
            proc = subprocess.Popen(
                ["/bin/sh", "-c", self.command],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as e:
            self._warn(f"the command could not be started ({e.strerror or e})")
            return
        try:
            _, err = proc.communicate(line, timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            self._warn(f"the command did not finish within {COMMAND_TIMEOUT_S:g} s and was killed")
            return
        if proc.returncode != 0:
            said = _tail(err)
            status = _status(proc.returncode)
            self._warn(f"the command {status}" + (f": {said}" if said else ""))

    def _post_webhook(self, message: dict[str, Any]) -> None:
        import urllib.error
        import urllib.request

        where = _site(self.webhook)  # the path of a Slack-style hook is its secret: never shown
        request = urllib.request.Request(
            self.webhook,
            data=json.dumps(message).encode("utf-8"),
            headers={"Content-Type": "application/json", "User-Agent": "mpt-notify"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=WEBHOOK_TIMEOUT_S) as answer:
                answer.read(65536)
        except urllib.error.HTTPError as e:
            self._warn(f"the webhook at {where} answered HTTP {e.code} {e.reason}")
        except urllib.error.URLError as e:
            if isinstance(e.reason, TimeoutError):
                self._warn(f"the webhook at {where} did not answer within {WEBHOOK_TIMEOUT_S:g} s")
                return
            text = getattr(e.reason, "strerror", None) or str(e.reason)
            self._warn(f"the webhook at {where} could not be reached ({text})")
        except TimeoutError:
            self._warn(f"the webhook at {where} did not answer within {WEBHOOK_TIMEOUT_S:g} s")
        except Exception as e:  # noqa: BLE001 - a notification never fails the run
            self._warn(f"the webhook at {where} failed ({type(e).__name__}: {e})")

    def _warn(self, message: str) -> None:
        text = f"[notify] {message}"
        with contextlib.suppress(Exception):  # stderr closed: the queue still has it
            print(f"warning: {text}", file=sys.stderr, flush=True)
        if self._events is not None:
            self._events.put_nowait(ev.Warning(message=text))

    def close(self) -> None:
        """Wait for the notifications under way, each no longer than its timeout."""
        for thread, deadline in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
            if thread.is_alive():  # e.g. a DNS lookup that no timeout covers
                self._warn("gave up waiting for a notification; the process exits without it")
        self._threads = []


def _summary(name: str, ending: str, reason: str, headline: str, event, run_dir: Path) -> str:
    """One line for a person: `mpt: run digits finished (completed), val_acc=0.9712 - DIR`."""
    how = ending if reason in (ending, "failed") else f"{ending} ({reason})"
    text = f"mpt: run {name} {how} at epoch {event.epoch}, step {event.step}"
    if headline:
        text += f", {headline}"
    if isinstance(event, ev.RunFailed) and event.error:
        text += f": {event.error}"
    return f"{text} - {run_dir}"


def _site(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"  # no user:password either


def _tail(err: bytes) -> str:
    text = " ".join(err.decode("utf-8", "replace").split())
    return text if len(text) <= _TAIL_CHARS else "..." + text[-_TAIL_CHARS:]


def _status(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
        return f"was killed by signal {-code}"
    return f"exited with status {code}"


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=_GRACE_S)
    except subprocess.TimeoutExpired:  # something outside the group holds the pipe
        for pipe in (proc.stdin, proc.stderr):
            with contextlib.suppress(OSError):
                pipe.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=_GRACE_S)
