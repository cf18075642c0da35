"""The child process of tests/test_sigkill.py: `mpt ...` through the CLI's own code. A module
of its own (no pytest import), so that a process forked from the forkserver starts at once."""

from __future__ import annotations

import os


def mpt(folder: str, args: list[str]) -> None:
    """`mpt *args` in `folder` on one thread, output discarded; exits with mpt's exit code."""
    import torch

    # One thread: two trials at a time on two cores, and the same arithmetic in every
    # process (the console-script trials get OMP_NUM_THREADS=1).
    torch.set_num_threads(1)
    os.chdir(folder)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    os.dup2(null, 2)
    from engine.cli import app

    code = 0
    try:
        app(args, prog_name="mpt")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    # The exit code as mpt chose it, for when the forkserver loses the process's status.
    with open(os.path.join(folder, f".exit-{os.getpid()}"), "w") as f:
        f.write(str(code))
    os._exit(code)
