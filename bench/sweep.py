"""Is `parallel = 2` worth it? A benchmark that prints figures, not a test.

Runs sweeps/quickstart-lr.toml (4 quickstart trials: digits, MLP, 15 epochs) with
`mpt sweep`, once with `parallel = 1` and once with `parallel = 2`, alternating, each
`--repeat` times, in a temporary folder, and prints the wall seconds of each, their
medians and the ratio (sequential / parallel: above 1 means parallel is faster).

    python bench/sweep.py              # 2 repetitions of each
    python bench/sweep.py --repeat 3
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MPT = str(Path(sys.executable).with_name("mpt"))


def one_sweep(folder: Path, parallel: int) -> float:
    sweep = folder / "sweeps" / "quickstart-lr.toml"
    text = (ROOT / "sweeps" / "quickstart-lr.toml").read_text()
    sweep.write_text(text.replace("parallel = 2", f"parallel = {parallel}"))
    start = time.perf_counter()
    done = subprocess.run(
        [MPT, "sweep", str(sweep)], cwd=folder, capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"mpt sweep (parallel {parallel}) failed:\n{done.stdout}{done.stderr}")
    shutil.rmtree(folder / "runs")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "sweeps").mkdir()
        shutil.copytree(ROOT / "profiles", folder / "profiles")
        times: dict[int, list[float]] = {1: [], 2: []}
        for _ in range(args.repeat):
            for parallel in (1, 2):
                times[parallel].append(one_sweep(folder, parallel))
                print(f"parallel {parallel}: {times[parallel][-1]:.1f} s", flush=True)
    one, two = (statistics.median(times[p]) for p in (1, 2))
    print(f"median: parallel 1 {one:.1f} s, parallel 2 {two:.1f} s; ratio {one / two:.2f}x")


if __name__ == "__main__":
    main()
