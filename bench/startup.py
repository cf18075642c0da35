"""Start-up: `mpt --help`, `mpt validate`, mpt-tui's first paint, and `mpt run`'s time to
its first step and to its exit. Prints figures.

Each command runs in a fresh process, several times; the median wall time is printed
beside its target (issue 6: <= 0.4 s for the CLI, <= 1.5 s for the TUI's first paint).
The TUI runs in a real pseudo-terminal (80x24); its first paint is the moment the profile
list's first name has been written to the terminal. `mpt run profiles/quickstart.toml` is
timed against a bare `python -c "import torch"` (issue 19: the first step <= that + 0.6 s;
the whole command <= the first step + the training + 0.3 s), and against `import torch` plus
building one optimizer, which imports torch._dynamo (~1 s): a floor no training process
that uses torch.optim goes under, so mpt's own part is the first step minus that.

    python bench/startup.py              # 7 repetitions
    python bench/startup.py --reps 15
"""

from __future__ import annotations

import argparse
import fcntl
import os
import pty
import select
import shutil
import signal
import statistics
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"mpt --help": 0.4, "mpt validate": 0.4, "mpt-tui first paint": 1.5}


def _exe(name: str) -> str:
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if not found:
        raise SystemExit(f"{name} is not on PATH: install mpt first (pip install -e .)")
    return found


def time_command(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def time_first_paint(
    argv: list[str], marker: bytes, timeout: float = 20.0, before_kill=None
) -> float:
    """Seconds from spawning `argv` in an 80x24 pty until `marker` appears on its screen
    (`before_kill(pid)`: a last look at the process, e.g. its peak memory)."""
    start = time.perf_counter()
    pid, fd = pty.fork()
    if pid == 0:  # the child: a terminal of its own, as in tmux or an SSH session
        os.chdir(ROOT)
        os.environ["TERM"] = "xterm-256color"
        os.execv(argv[0], argv)
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    seen = b""
    try:
        while time.perf_counter() - start < timeout:
            ready, _, _ = select.select([fd], [], [], 0.05)
            if ready:
                try:
                    seen += os.read(fd, 65536)
                except OSError:
                    break
                if marker in seen:
                    return time.perf_counter() - start
        raise SystemExit(f"{' '.join(argv)}: {marker!r} did not appear in {timeout:.0f} s")
    finally:
        if before_kill is not None:
            before_kill(pid)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(fd)


def time_run(mpt: str, out: Path) -> tuple[float, float, float]:
    """(seconds to the first step event, seconds of training: first step to the last
    event, seconds of the whole command) of the quickstart, from the process's start."""
    import json
    import tempfile

    with tempfile.TemporaryDirectory(dir=out) as folder:
        start = time.time()
        subprocess.run(
            [mpt, "run", "profiles/quickstart.toml", "--set", f"run.out_dir={json.dumps(folder)}"],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True,
        )  # fmt: skip
        whole = time.time() - start
        (log,) = Path(folder).glob("*/*/events.jsonl")
        events = [json.loads(line) for line in log.read_text().splitlines()]
    first = next(e["time"] for e in events if e["kind"] == "step")
    return first - start, events[-1]["time"] - first, whole


# What any training process pays before its first step: torch, and the torch._dynamo that
# torch.optim imports when the first optimizer is built (Optimizer.add_param_group is
# wrapped by torch._disable_dynamo, which imports it on its first call).
ONE_OPTIMIZER = "import torch; torch.optim.SGD([torch.zeros(1, requires_grad=True)])"


def time_until_done(code: str) -> float:
    """Seconds from spawning `python -c code` until the code has run (not its exit: a
    process that imported torch._dynamo takes a while to tear down)."""
    start = time.time()
    done = subprocess.run(
        [sys.executable, "-c", f"{code}; import time; print(time.time())"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return float(done.stdout.split()[-1]) - start


def run_figures(reps: int) -> None:
    mpt = _exe("mpt")
    bare, floor, runs = [], [], []
    for _ in range(reps):  # interleaved, so drift hits each alike
        bare.append(time_until_done("import torch"))
        floor.append(time_until_done(ONE_OPTIMIZER))
        runs.append(time_run(mpt, Path("/tmp")))
    torch_s, floor_s = statistics.median(bare), statistics.median(floor)
    first, training, whole = (statistics.median(r[i] for r in runs) for i in range(3))
    print(f"mpt run profiles/quickstart.toml, median of {reps}")
    print(f"  bare import torch       {torch_s:7.2f} s")
    print(f"  torch + one optimizer   {floor_s:7.2f} s  (torch.optim imports torch._dynamo: "
          f"{floor_s - torch_s:.2f} s)")  # fmt: skip
    target = torch_s + 0.6
    print(f"  first step              {first:7.2f} s  target <= {target:.2f}  "
          f"{'ok' if first <= target else 'MISS'}")  # fmt: skip
    print(f"    mpt's own part        {first - floor_s:7.2f} s  (first step - torch and one "
          f"optimizer; target <= 0.6)  {'ok' if first - floor_s <= 0.6 else 'MISS'}")  # fmt: skip
    target = first + training + 0.3
    print(f"  whole command           {whole:7.2f} s  target <= {target:.2f} (training "
          f"{training:.2f} s)  {'ok' if whole <= target else 'MISS'}")  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--run-reps", type=int, default=3, help="quickstart runs (0: none)")
    args = ap.parse_args()
    mpt, tui = _exe("mpt"), _exe("mpt-tui")
    probes = {
        "mpt --help": lambda: time_command([mpt, "--help"]),
        "mpt validate": lambda: time_command([mpt, "validate", "profiles/quickstart.toml"]),
        "mpt-tui first paint": lambda: time_first_paint([tui, "profiles"], b"quickstart"),
    }
    for probe in probes.values():
        probe()  # warm the file cache once, as any second start is
    times: dict[str, list[float]] = {name: [] for name in probes}
    for _ in range(args.reps):
        for name, probe in probes.items():  # interleaved, so drift hits each alike
            times[name].append(probe())
    print(f"start-up, median of {args.reps} fresh processes")
    print(f"  {'command':<22}{'median s':>10}{'max s':>8}{'target s':>10}")
    for name, values in times.items():
        med = statistics.median(values)
        flag = "ok" if med <= TARGETS[name] else "OVER"
        print(f"  {name:<22}{med:>10.3f}{max(values):>8.3f}{TARGETS[name]:>10.1f}  {flag}")
    if args.run_reps:
        run_figures(args.run_reps)


if __name__ == "__main__":
    main()
