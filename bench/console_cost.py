"""The console's own cost (issue 19, item 5). A benchmark that prints figures, not a test.

(a) A live run's throughput with `mpt-tui --attach RUN_DIR` watching it in a real
    pseudo-terminal of 200x60 and of 80x24, against the same run with nothing watching
    (headless): `mpt run` of workload W's MLP (the MNIST npz, bench/speed.py's profile)
    for --seconds of training (run.max_time), the three kinds interleaved, each --reps
    times. Samples/s from the run's step events, over the steps after the console's first
    paint (and after --skip seconds of training in every kind), and the console's own CPU
    use meanwhile. Target >= 0.97x headless.
(b) The console's CPU use, in % of one core, from /proc/PID/stat over --idle seconds: on an
    idle home screen (`mpt-tui profiles`), and attached to a paused run (`mpt ctl RUN pause`;
    the paused training process's own use is printed too). Target <= 2%.

    python bench/console_cost.py                   # 3 reps of 15 s, 10 s idle windows
    python bench/console_cost.py --only throughput --reps 5
    python bench/console_cost.py --reps 1 --seconds 8 --idle 5
"""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed  # noqa: E402
from startup import ROOT, _exe  # noqa: E402

THROUGHPUT_TARGET = 0.97  # attached / headless samples/s
CPU_TARGET = 2.0  # % of one core
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SIZES = {"200x60": (200, 60), "80x24": (80, 24)}


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` (its threads included) from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # fields 14, 15 of stat(5)


def cpu_percent(pid: int, seconds: float) -> float:
    before, start = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - before) / (time.monotonic() - start)


class PtyConsole:
    """mpt-tui in a pseudo-terminal of its own, its output drained (as a terminal reads it)."""

    def __init__(self, args: list[str], size: tuple[int, int], cwd: Path):
        cols, rows = size
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: a terminal of its own, as in tmux or an SSH session
            os.chdir(cwd)
            os.environ["TERM"] = "xterm-256color"
            argv = [_exe("mpt-tui"), *args]
            os.execv(argv[0], argv)
        import fcntl
        import termios

        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        self.seen = bytearray()
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.reader = threading.Thread(target=self._drain, daemon=True)
        self.reader.start()

    def _drain(self) -> None:
        while not self.done.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:
                    return
                with self.lock:
                    self.seen += chunk
                    del self.seen[: -(1 << 16)]  # the tail is enough to find a marker

    def wait_for(self, marker: bytes, timeout: float = 60.0) -> float:
        """The time.time() at which `marker` appeared on the screen."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                if marker in self.seen:
                    return time.time()
            time.sleep(0.02)
        raise SystemExit(f"mpt-tui: {marker!r} did not appear in {timeout:.0f} s")

    def close(self) -> None:
        self.done.set()
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.reader.join()
        os.close(self.fd)


def write_profile(folder: Path, seconds: float) -> Path:
    import tomli_w

    data = speed.workload_profile("mlp", 10_000, "cpu", log_every=25)
    data["run"].update(name="console-cost", out_dir=str(folder / "runs"), max_time=seconds)
    path = folder / "console-cost.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def start_run(profile: Path, folder: Path) -> tuple[subprocess.Popen, Path]:
    """`mpt run PROFILE` in the background, and its run directory once events.jsonl is there."""
    before = set((folder / "runs").glob("console-cost/*"))
    proc = subprocess.Popen(
        [_exe("mpt"), "run", str(profile)],
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    while proc.poll() is None:
        made = set((folder / "runs").glob("console-cost/*")) - before
        if made and (next(iter(made)) / "events.jsonl").is_file():
            return proc, next(iter(made))
        time.sleep(0.02)
    raise SystemExit(f"mpt run {profile} ended before writing events.jsonl")


def samples_per_s(run_dir: Path, after: float) -> float:
    """Training samples per second over the step events at or after `after` (time.time())."""
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    batch = next(e["global_batch"] for e in events if e["kind"] == "run_started")
    steps = [e for e in events if e["kind"] == "step" and e["time"] >= after]
    if len(steps) < 2:
        raise SystemExit(f"{run_dir}: fewer than 2 step events after the window's start")
    return (steps[-1]["step"] - steps[0]["step"]) * batch / (steps[-1]["time"] - steps[0]["time"])


def one_run(folder: Path, profile: Path, kind: str, skip: float) -> tuple[float, float, float]:
    """(samples/s, the console's CPU % of one core while the run trained, the seconds of
    training not counted) of one run, watched by the console at `kind`'s size or not at all.
    The window starts --skip seconds into training, or at the console's first paint if that
    came later."""
    proc, run_dir = start_run(profile, folder)
    console, painted, console_pct = None, 0.0, 0.0
    try:
        if kind != "headless":
            console = PtyConsole(["--attach", str(run_dir)], SIZES[kind], folder)
            painted = console.wait_for(b"RUNNING")
            cpu, at = cpu_seconds(console.pid), time.monotonic()
        proc.wait()
        if console is not None:
            console_pct = 100 * (cpu_seconds(console.pid) - cpu) / (time.monotonic() - at)
    finally:
        if console is not None:
            console.close()
    if proc.returncode != 0:
        raise SystemExit(f"mpt run {profile} exited {proc.returncode}")
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines()]
    steps = [e["time"] for e in events if e["kind"] == "step"]
    if not steps:
        raise SystemExit(f"{run_dir}: no step events (a machine too busy? raise --seconds)")
    start = max(steps[0] + skip, painted)
    return samples_per_s(run_dir, start), console_pct, start - steps[0]


def throughput(folder: Path, profile: Path, reps: int, skip: float) -> None:
    kinds = ["headless", *SIZES]
    seen: dict[str, list[float]] = {k: [] for k in kinds}
    one_run(folder, profile, "headless", skip)  # not counted: the first run pays for cold files
    for rep in range(reps):
        for kind in kinds if rep % 2 == 0 else kinds[::-1]:  # interleaved, both orders
            rate, console_pct, skipped = one_run(folder, profile, kind, skip)
            seen[kind].append(rate)
            watched = "" if kind == "headless" else f", the console {console_pct:.1f}% of a core"
            print(f"  rep {rep + 1} {kind:<9}{rate:>10,.0f} samples/s (from {skipped:.1f} s "
                  f"into training{watched})", flush=True)  # fmt: skip
    base = statistics.median(seen["headless"])
    spread = (max(seen["headless"]) - min(seen["headless"])) / base
    print(f"(a) live run throughput, median of {reps}: headless {base:,.0f} samples/s "
          f"(spread {100 * spread:.0f}% of it)")  # fmt: skip
    # A spread wider than the margin being judged: the machine's load, not the console.
    noisy = spread > 2 * (1 - THROUGHPUT_TARGET)
    if noisy:
        print("    (headless runs differ by more than the margin judged: too noisy to say)")
    for kind in SIZES:
        ratio = statistics.median(seen[kind]) / base
        flag = "????" if noisy else "met " if ratio >= THROUGHPUT_TARGET else "MISS"
        print(f"    {flag} attached at {kind:<7} / headless{ratio:>8.3f}  "
              f"(target >= {THROUGHPUT_TARGET})")  # fmt: skip


def idle_cpu(folder: Path, profile: Path, seconds: float) -> None:
    print(f"(b) CPU use over {seconds:g} s, % of one core (target <= {CPU_TARGET:g}%)")
    for kind, size in SIZES.items():
        home = PtyConsole(["profiles"], size, ROOT)
        try:
            home.wait_for(b"quickstart")
            time.sleep(1.0)  # the runs list fills in a worker after the first paint
            pct = cpu_percent(home.pid, seconds)
        finally:
            home.close()
        flag = "met " if pct <= CPU_TARGET else "MISS"
        print(f"    {flag} mpt-tui idle home screen at {kind:<7}{pct:>7.2f}%")
    proc, run_dir = start_run(profile, folder)
    try:
        pause = [_exe("mpt"), "ctl", str(run_dir), "pause", "--timeout", "120"]
        subprocess.run(pause, cwd=folder, check=True, stdout=subprocess.DEVNULL)
        for kind, size in SIZES.items():
            console = PtyConsole(["--attach", str(run_dir)], size, folder)
            try:
                console.wait_for(b"PAUSED")
                time.sleep(1.0)
                pct = cpu_percent(console.pid, seconds)
            finally:
                console.close()
            flag = "met " if pct <= CPU_TARGET else "MISS"
            print(f"    {flag} mpt-tui attached to a paused run at {kind:<7}{pct:>7.2f}%")
        print(f"         the paused mpt run itself{cpu_percent(proc.pid, seconds):>20.2f}%")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=15.0, help="training seconds of a run")
    ap.add_argument("--skip", type=float, default=4.0, help="training seconds not counted")
    ap.add_argument("--idle", type=float, default=10.0, help="seconds of each CPU window")
    ap.add_argument("--only", choices=["throughput", "cpu"], help="one part alone")
    args = ap.parse_args()
    # mpt and mpt-tui run this checkout's code (an editable install may point elsewhere)
    path = [str(ROOT), os.environ.get("PYTHONPATH")]
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, path))
    print(f"mpt-tui's cost, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    with tempfile.TemporaryDirectory(prefix="mpt-console-cost-") as tmp:
        folder = Path(tmp)
        profile = write_profile(folder, args.seconds)
        if args.only != "cpu":
            throughput(folder, profile, args.reps, args.skip)
        if args.only != "throughput":
            idle_cpu(folder, write_profile(folder, 600.0), args.idle)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
