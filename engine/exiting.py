"""How mpt's commands end: as Python would, less the module teardown that costs seconds
once torch is loaded."""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import threading
from typing import NoReturn

from engine.console import say


def exit_status(e: SystemExit) -> int:
    """The exit status Python makes of a SystemExit (a message: printed, status 1)."""
    if e.code is None or isinstance(e.code, int):
        return e.code or 0
    say(str(e.code), err=True)
    return 1


def exit_now(code: int) -> NoReturn:
    """Exit as Python does (non-daemon threads joined, atexit handlers run, stdout and
    stderr flushed) but without tearing down every module: with torch and its compiler
    loaded, that teardown's garbage collection took 1.5-2.5 s after the run had ended."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):  # a dead stream: exit all the same
            if stream is not None:
                stream.flush()
    os._exit(code & 0xFF)
