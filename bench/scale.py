"""Scale: mpt's views of long runs and of many runs (issue 19, items 2 and 3). Prints figures.

It makes, in a scratch folder (removed at the end unless --keep):
- a *long* run: one real quickstart run's events.jsonl stretched to --long-mb (default 200)
  MB of step events (about a million), with an epoch_end every 45,000 steps and its real
  run_finished at the end; its summary.json and curve.jsonl made as a run makes them (the
  engine's SummaryRecorder told each line);
- *many* runs: --many (default 2,000) run directories, each a copy of the real quickstart
  run's events.jsonl (112 lines, 44 KB), profile.toml, summary.json and curve.jsonl.
Then it times, each in a fresh process (median of --reps):
- `mpt ls` and `mpt show` of the long run; `mpt-tui --attach LONG`'s first paint (the
  dashboard's header drawn in an 80x24 pseudo-terminal) and its peak RSS (VmHWM);
- `mpt ls` of the many runs; mpt-tui's home screen over them: its first paint (the profiles
  list drawn) and the moment the runs list shows its first run.
Each figure is printed beside its target from the issue, `ok` or `MISS`; then, once and for
information, the same figures with the summaries removed (runs from before summary.json).

    python bench/scale.py                 # 200 MB, 2,000 runs, 3 repetitions
    python bench/scale.py --long-mb 50 --many 500 --reps 1
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from startup import ROOT, _exe, time_command, time_first_paint  # noqa: E402

from engine import events as ev  # noqa: E402
from engine.run_index import INDEX  # noqa: E402
from engine.summary import CURVE, SUMMARY, SummaryRecorder  # noqa: E402

TARGETS = {  # seconds; MB for RSS
    "long: mpt ls": 0.8,
    "long: mpt show": 1.0,
    "long: attach first paint": 1.5,
    "long: attach peak RSS MB": 300,
    "many: mpt ls": 0.3,
    "many: home first paint": 0.5,
}


def real_run(scratch: Path) -> Path:
    """One real quickstart run (its events are the pattern for every made-up one)."""
    out = scratch / "seed"
    where = f"run.out_dir={json.dumps(str(out))}"
    subprocess.run(
        [_exe("mpt"), "run", "profiles/quickstart.toml", "--set", where],
        cwd=ROOT, stdout=subprocess.DEVNULL, check=True,
    )  # fmt: skip
    (events,) = out.glob("*/*/events.jsonl")
    return events.parent


def make_long(seed: Path, runs: Path, megabytes: int) -> Path:
    """The long run, and its summary.json and curve.jsonl as a run keeps them: each line
    written is told to the engine's own SummaryRecorder, as the run's EventLog tells it."""
    lines = [json.loads(x) for x in (seed / "events.jsonl").read_text().splitlines()]
    started, finished = lines[0], lines[-1]
    step_line = next(e for e in lines if e["kind"] == "step")
    epoch_end = next(e for e in lines if e["kind"] == "epoch_end")
    run_dir = runs / "long" / "20260101-000000"
    run_dir.mkdir(parents=True)
    shutil.copy(seed / "profile.toml", run_dir / "profile.toml")
    per_epoch, limit = 45_000, megabytes * 1_000_000
    step = written = 0
    recorder = SummaryRecorder(run_dir)

    def write(f, data: dict, event: ev.Event | None = None) -> int:
        line = (json.dumps(data) + "\n").encode()
        f.write(line)
        recorder.add(event or ev.event_from_line(line), line)
        return len(line)

    with open(run_dir / "events.jsonl", "wb") as f:
        started = {**started, "run_dir": str(run_dir), "epochs": 10**9, "total_steps": 10**9}
        written += write(f, started)
        while written < limit:
            step += 1
            epoch = step // per_epoch + 1
            line = {**step_line, "step": step, "epoch": epoch, "time": started["time"] + step}
            written += write(f, line, ev.Step(step=step, epoch=epoch, time=line["time"]))
            if step % per_epoch == 0:
                e = {**epoch_end, "step": step, "epoch": epoch - 1, "epochs": 10**9}
                written += write(f, e)
        write(f, {**finished, "step": step, "epoch": epoch})
    recorder.close()
    return run_dir


def make_many(seed: Path, runs: Path, count: int) -> None:
    """Copies of the real run, each with the summary.json and curve.jsonl it wrote."""
    for i in range(count):
        run_dir = runs / f"run{i % 20:02d}" / f"2026{1 + i // 600:02d}01-{i % 600:06d}"
        run_dir.mkdir(parents=True)
        for name in ("events.jsonl", "profile.toml", SUMMARY, CURVE):
            shutil.copy(seed / name, run_dir / name)


def without_summaries(*folders: Path) -> None:
    """Runs as mpt wrote them before summary.json (and the runs folder's index): every
    view reads events.jsonl whole."""
    for folder in folders:
        for path in [*folder.glob(f"*/*/{SUMMARY}"), *folder.glob(f"*/*/{CURVE}")]:
            path.unlink()
        (folder / INDEX).unlink(missing_ok=True)


def attach_paint_and_rss(run_dir: Path) -> tuple[float, float]:
    """(first paint s, peak RSS MB) of mpt-tui --attach RUN_DIR in an 80x24 pty."""
    peak: list[float] = []

    def before_kill(pid: int) -> None:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            return
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak.append(int(line.split()[1]) / 1024)

    # the header names the state once the history is read
    seconds = time_first_paint(
        [_exe("mpt-tui"), "--attach", str(run_dir)], b"FINISHED", timeout=120,
        before_kill=before_kill,
    )  # fmt: skip
    return seconds, (peak[0] if peak else float("nan"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--long-mb", type=int, default=200)
    ap.add_argument("--many", type=int, default=2000)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = ap.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="mpt-scale-"))
    mpt, tui = _exe("mpt"), _exe("mpt-tui")
    try:
        seed = real_run(scratch)
        long_runs, many_runs = scratch / "long-runs", scratch / "many-runs"
        began = time.perf_counter()
        long_dir = make_long(seed, long_runs, args.long_mb)
        make_many(seed, many_runs, args.many)
        size = (long_dir / "events.jsonl").stat().st_size / 1e6
        print(f"made a {size:.0f} MB run and {args.many:,} runs in "
              f"{time.perf_counter() - began:.1f} s ({scratch})")  # fmt: skip
        empty = scratch / "no-runs"
        (empty / "x" / "y").mkdir(parents=True)
        probes = {
            "empty: mpt ls": lambda: time_command([mpt, "ls", str(empty)]),
            "long: mpt ls": lambda: time_command([mpt, "ls", str(long_runs)]),
            "long: mpt show": lambda: time_command([mpt, "show", str(long_dir)]),
            "many: mpt ls": lambda: time_command([mpt, "ls", str(many_runs)]),
            "many: home first paint": lambda: time_first_paint(
                [tui, "profiles", "--runs", str(many_runs)], b"quickstart"
            ),
        }
        figures: dict[str, list[float]] = {name: [] for name in [*probes, *TARGETS]}
        for _ in range(args.reps):
            for name, probe in probes.items():
                figures[name].append(probe())
            paint, rss = attach_paint_and_rss(long_dir)
            figures["long: attach first paint"].append(paint)
            figures["long: attach peak RSS MB"].append(rss)
        print(f"median of {args.reps}, each a fresh process")
        for name, target in TARGETS.items():
            med = statistics.median(figures[name])
            unit = "MB" if "RSS" in name else "s"
            flag = "ok" if med <= target else "MISS"
            print(f"  {name:<28}{med:>9.2f} {unit:<3} target <= {target:g} {unit}  {flag}")
        med = statistics.median(figures["empty: mpt ls"])
        print(f"  {'empty: mpt ls':<28}{med:>9.2f} s   (start-up alone, for information)")
        without_summaries(long_runs, many_runs)
        print("for information: the same runs without summary.json (runs from before it), once")
        legacy = {name: probe() for name, probe in probes.items()}
        legacy["long: attach first paint"], legacy["long: attach peak RSS MB"] = (
            attach_paint_and_rss(long_dir)
        )
        for name in TARGETS:
            unit = "MB" if "RSS" in name else "s"
            print(f"  {name:<28}{legacy[name]:>9.2f} {unit}")
    finally:
        if args.keep:
            print(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("TZ", "UTC")
    main()
