"""`mpt` commands for the tests in real processes, without each paying torch's import.

Every `mpt run` a test starts as a new interpreter spends ~5 s of CPU importing torch
(torch._dynamo comes with the first optimizer) before it does anything; the suite ran
~150 of them. Here one process per test worker imports what every `mpt` command imports,
runs nothing, and then forks a child for each command: the child is a real process with
its own pid, working directory, environment, stdin from /dev/null and stdout/stderr
files, that runs the console script's `engine.cli:main` with the console script's
sys.path and sys.argv and exits as the interpreter would (non-daemon threads joined,
atexit handlers run). Only what an interpreter fixes at its start cannot follow a
request: a command with PYTHON*, OMP_*, MKL_*, CUDA_*, TORCH* or LD_* variables of its
own (PYTHONUNBUFFERED aside: the output is read when the command has ended) is run the old
way, as a new `mpt` process. Tests about starting up (import time, lazy imports) run
their own interpreters and never come here.

Run as a script, this file is that warm process; `run` is the tests' side.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

STARTUP_VARIABLES = ("PYTHON", "OMP_", "MKL_", "CUDA_", "TORCH", "LD_")


# ---- the warm process ----
def _serve(sock: socket.socket, script: str) -> None:
    reader = sock.makefile("r")
    for line in reader:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            sock.close()
            _child(request, script)  # never returns
        sock.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        _, status = os.waitpid(pid, 0)
        sock.sendall(json.dumps({"status": status}).encode() + b"\n")


def _child(request: dict, script: str) -> None:
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), fd)
        sys.argv = [script, *request["args"]]
        from engine.cli import main

        try:
            main()
            code = 0
        except SystemExit as e:  # as the interpreter turns it into an exit status
            if e.code is None or isinstance(e.code, int):
                code = e.code or 0
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:  # noqa: BLE001 - printed as an uncaught exception is
            import traceback

            traceback.print_exc()
            code = 1
        threading._shutdown()  # what the interpreter does at exit: join non-daemon threads,
        atexit._run_exitfuncs()  # then the atexit handlers
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):  # a closed or full stream: exit all the same
                stream.flush()
        os._exit(code & 0xFF)


def main() -> None:
    script = sys.argv[2]
    sys.path[0] = str(Path(script).parent)  # the console script's sys.path: not the cwd
    import torch

    import engine.cli  # noqa: F401
    import engine.run  # noqa: F401
    import engine.trainer  # noqa: F401

    # The first optimizer imports torch._dynamo (2 s); no tensor op runs, so no thread
    # pool starts before the forks.
    torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    _serve(socket.socket(fileno=int(sys.argv[1])), script)


# ---- the tests' side ----
class _Warm:
    def __init__(self, script: str):
        ours, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            [sys.executable, __file__, str(theirs.fileno()), script],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # (its stderr stays the worker's: a crash shows)
        )
        theirs.close()
        self.sock = ours
        self.reader = ours.makefile("r")
        self.lock = threading.Lock()
        atexit.register(self.close)

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def run(self, args: list[str], cwd: Path, env: dict, timeout: float):
        with self.lock, tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            request = {"args": args, "cwd": str(cwd), "env": env}
            request |= {"stdout": str(out), "stderr": str(err)}
            self.sock.sendall(json.dumps(request).encode() + b"\n")
            pid = json.loads(self.reader.readline())["pid"]
            timer = threading.Timer(timeout, os.kill, (pid, signal.SIGKILL))
            timer.start()
            try:
                status = json.loads(self.reader.readline())["status"]
            finally:
                timer.cancel()
            text = (out.read_text(errors="replace"), err.read_text(errors="replace"))
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
                raise subprocess.TimeoutExpired(["mpt", *args], timeout, *text)
            code = os.waitstatus_to_exitcode(status)
            return code, *text


_warm: _Warm | None = None


def run(script: str, args: list[str], cwd: Path, env: dict[str, str], timeout: float):
    """(exit status, stdout, stderr) of `mpt ARGS` (the console script `script`) in `cwd`
    with exactly the environment `env`, stdin from /dev/null."""
    global _warm
    startup = {k for k in {*env, *os.environ} if k.startswith(STARTUP_VARIABLES)}
    if any(env.get(k) != os.environ.get(k) for k in startup - {"PYTHONUNBUFFERED"}):
        p = subprocess.run(
            [script, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )
        return p.returncode, p.stdout, p.stderr
    if _warm is None or _warm.proc.poll() is not None:
        _warm = _Warm(script)
    return _warm.run(args, cwd, env, timeout)


if __name__ == "__main__":
    main()
