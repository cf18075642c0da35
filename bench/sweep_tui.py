"""Does watching a sweep cost its trials anything? A benchmark that prints figures, not a test.

Runs sweeps/quickstart-lr.toml (4 quickstart trials, 2 at a time) with `mpt sweep`, once
with nothing watching and once with the console's sweep screen open on it (`mpt-tui
--attach SWEEP_DIR` in a tmux pane of 80x24, or with `--console headless` the app with no
terminal), alternating, each `--repeat` times, in a temporary folder. Prints the sweep's
wall seconds, the CPU seconds of the sweep and its trials (the `mpt sweep` process and
every process it waited for), the console's own CPU seconds, their medians and the ratios
(with the console / without: 1.00 means no cost).

    python bench/sweep_tui.py              # 2 repetitions of each
    python bench/sweep_tui.py --repeat 3 --console headless
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
MPT = str(Path(sys.executable).with_name("mpt"))
MPT_TUI = str(Path(sys.executable).with_name("mpt-tui"))
TMUX = ["tmux", "-L", "mpt-bench-sweep-tui"]  # a server of its own: never anyone else's


def children_cpu() -> float:
    """CPU seconds of every process this one (and its children) has waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def sweep_dir_of(log: Path, proc: subprocess.Popen) -> Path:
    """The sweep directory `mpt sweep` names on its first line."""
    while proc.poll() is None:
        for line in log.read_text().splitlines():
            if line.startswith("sweep directory: "):
                return Path(line.removeprefix("sweep directory: ").split("  (")[0])
        time.sleep(0.05)
    sys.exit(f"mpt sweep ended before naming its directory:\n{log.read_text()}")


class Console:
    """The console's sweep screen on a sweep directory, in tmux or headless."""

    def __init__(self, kind: str, folder: Path, sweep_dir: Path):
        self.kind = kind
        if kind == "tmux":
            command = f"cd {folder} && exec {MPT_TUI} --attach {sweep_dir}"
            subprocess.run([*TMUX, "new", "-d", "-s", "bench", "-x", "80", "-y", "24", command],
                           check=True, env=os.environ)  # fmt: skip
            pid = subprocess.run([*TMUX, "list-panes", "-t", "bench", "-F", "#{pane_pid}"],
                                 capture_output=True, text=True, check=True).stdout  # fmt: skip
            self.process = psutil.Process(int(pid.split()[0]))
        else:
            code = (
                "import sys; from tui.app import MptApp; "
                "MptApp('profiles', 'runs', attach=sys.argv[1]).run(headless=True, size=(80, 24))"
            )
            self.proc = subprocess.Popen([sys.executable, "-c", code, str(sweep_dir)], cwd=folder)
            self.process = psutil.Process(self.proc.pid)
        self.cpu = 0.0

    def sample(self) -> None:
        """The console's CPU seconds so far (kept: it cannot be read once it has gone)."""
        try:
            times = self.process.cpu_times()
            self.cpu = times.user + times.system
        except psutil.Error:
            pass

    def close(self) -> None:
        self.sample()
        if self.kind == "tmux":
            subprocess.run([*TMUX, "kill-session", "-t", "bench"], check=False)
        else:
            self.proc.terminate()
            self.proc.wait()


def one_sweep(folder: Path, console: str | None) -> tuple[float, float, float]:
    """Wall seconds, the sweep's CPU seconds and the console's, of one whole sweep."""
    log = folder / "sweep.log"
    cpu_before = children_cpu()
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [MPT, "sweep", "sweeps/quickstart-lr.toml"], cwd=folder, stdout=out, stderr=out
        )
    watching = Console(console, folder, folder / sweep_dir_of(log, proc)) if console else None
    while proc.poll() is None:
        if watching is not None:
            watching.sample()
        time.sleep(0.2)
    wall = time.perf_counter() - start
    cpu = children_cpu() - cpu_before
    console_cpu = 0.0
    if watching is not None:
        watching.close()
        console_cpu = watching.cpu
    if proc.returncode != 0:
        sys.exit(f"mpt sweep failed:\n{log.read_text()}")
    shutil.rmtree(folder / "runs")
    return wall, cpu, console_cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--console", choices=["tmux", "headless"], default="tmux")
    args = parser.parse_args()
    if args.console == "tmux" and shutil.which("tmux") is None:
        sys.exit("tmux is not installed: use --console headless")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        shutil.copytree(ROOT / "profiles", folder / "profiles")
        shutil.copytree(ROOT / "sweeps", folder / "sweeps")
        seen: dict[str, list[tuple[float, float, float]]] = {"without": [], "with": []}
        for _ in range(args.repeat):
            for mode in ("without", "with"):
                figures = one_sweep(folder, args.console if mode == "with" else None)
                seen[mode].append(figures)
                wall, cpu, console_cpu = figures
                print(
                    f"{mode} the console: wall {wall:.1f} s, trials' CPU {cpu:.1f} s, "
                    f"console's CPU {console_cpu:.1f} s",
                    flush=True,
                )
    median = {m: [statistics.median(f[i] for f in seen[m]) for i in range(3)] for m in seen}
    (w0, c0, _), (w1, c1, k1) = median["without"], median["with"]
    print(
        f"median: without wall {w0:.1f} s / CPU {c0:.1f} s; with the console ({args.console}) "
        f"wall {w1:.1f} s / CPU {c1:.1f} s, the console itself {k1:.1f} s CPU; "
        f"ratio with/without: wall {w1 / w0:.2f}x, trials' CPU {c1 / c0:.2f}x"
    )


if __name__ == "__main__":
    main()
