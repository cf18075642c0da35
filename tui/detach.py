"""A run that outlives its console: what the process does once the Textual app has gone.

Detaching (`q` then `d`, `d` on the dashboard, or a terminal that goes away) ends the app,
and the process becomes what `mpt run` is: its training thread goes on; the run's lines
(`mpt run`'s console) go to RUN_DIR/console.log; its control channel (RUN_DIR/control/)
takes `mpt ctl` and `mpt-tui --attach`; SIGTERM or Ctrl-C stop it with a checkpoint; a
hang-up is ignored; and the process ends with `mpt run`'s exit code when the run ends.
Nothing here draws on the terminal, which may be gone: standard input, output and error
are /dev/null from the moment of detaching, so no write can fail or block on it.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path

from engine.console import Console
from engine.follow import follow
from engine.run import Run
from engine.stop import exit_code

CONSOLE_LOG = "console.log"


def silence_terminal() -> None:
    """Point fds 0, 1 and 2 at /dev/null: the terminal may be gone (a write to it would
    fail, or block Textual's writer), and a detached process must not hold it."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)


def follow_detached(run: Run, main_thread: bool = True) -> int:
    """Follow `run` to its end as `mpt run` does, writing to RUN_DIR/console.log; the exit
    code. `main_thread`: signal handlers can be set (not in the hang-up watcher's thread)."""
    silence_terminal()
    log = open(Path(run.run_dir) / CONSOLE_LOG, "a", buffering=1, encoding="utf-8")  # noqa: SIM115
    sys.stdout = sys.stderr = log  # a stray print or a thread's traceback lands there too
    console = Console(out=log, err=log, tty=False)
    when = time.strftime("%Y-%m-%d %H:%M:%S")
    console.line(
        f"{when}: detached from the terminal; pid {os.getpid()} on {socket.gethostname()} "
        f"trains on. Watch it: mpt-tui --attach {run.run_dir}; stop it: mpt ctl "
        f"{run.run_dir} stop (or kill {os.getpid()}: a checkpoint first)"
    )
    if main_thread:
        # Textual's terminal driver leaves handlers that talk to the app's loop, gone now:
        # a hang-up's SIGCONT (tmux kill-session) would raise in them and end the process.
        for sig in (
            signal.SIGTSTP,
            signal.SIGCONT,
            signal.SIGWINCH,
            signal.SIGTTIN,
            signal.SIGTTOU,
        ):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: run.stop("interrupted"))
    follow(run, console)
    run.join()
    if run.reason in ("interrupted", "stopped"):
        saved = (Path(run.run_dir) / "checkpoints" / "last.pt").is_file()
        where = run.run_dir if saved else run.resumed_from
        console.line(f"resume with: mpt run --resume {where}" if where else "nothing was saved")
    log.flush()
    return exit_code(run.reason, run.user_error)


def follow_unless_taken(session, takeover: threading.Lock, wait_s: float = 5.0) -> None:
    """A thread's watch over a detach: the main thread takes the run over (`takeover`)
    once the app has shut down. Textual's shut-down can hang on a terminal that died under
    it (its writer's queue full): if the main thread has not taken the run within
    `wait_s`, follow it from this thread and end the process when it ends."""
    time.sleep(wait_s)
    if takeover.acquire(blocking=False):
        os._exit(follow_detached(session.detach(), main_thread=False))
