"""The cost of a [log] sink per epoch: workload W's MLP with step logging every 10 steps,
with no sink and with each sink asked for, interleaved and repeated. A benchmark that
prints figures, not a test.

    python bench/sinks.py                  # mlflow and wandb vs none, 60 epochs, 3 repetitions
    python bench/sinks.py --sinks mlflow csv --reps 5
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from speed import workload_profile  # noqa: E402

SINKS = {
    "none": {},
    "csv": {"csv": True},
    "tensorboard": {"tensorboard": True},
    "mlflow": {"mlflow": True},
    "wandb": {"wandb": True},  # offline: files in the run directory
}


def seconds_per_epoch(sink: str, epochs: int, seed: int, out: Path) -> tuple[float, float]:
    """(the median epoch's wall seconds, the mean's from the first epoch's end (the first
    pays the setup) until the run has ended and closed its sinks, their last figures
    written): a typical epoch, and one with the sink's periodic and final writes spread in."""
    from engine import events as ev
    from engine.profile import profile_from_dict
    from engine.run import Run

    sections = workload_profile("mlp", epochs, "cpu", seed=seed, log_every=10)
    sections["run"] |= {"name": f"bench-{sink}", "out_dir": str(out)}
    profile = profile_from_dict({**sections, "log": SINKS[sink]})
    run = Run.start(profile)
    run.join()
    ended = time.time()
    if run.reason != "completed":
        raise SystemExit(f"{sink}: the run did not complete: {run.error}")
    ends = [e.time for e in ev.read_events(run.run_dir / "events.jsonl") if e.kind == "epoch_end"]
    gaps = [b - a for a, b in zip(ends, ends[1:], strict=False)]
    return statistics.median(gaps), (ended - ends[0]) / len(gaps)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sinks", nargs="+", default=["mlflow", "wandb"], choices=sorted(SINKS))
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    variants = ["none", *[s for s in args.sinks if s != "none"]]
    times: dict[str, list[float]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        seconds_per_epoch("none", 2, 0, Path(tmp))  # warm up: imports, the data cache
        for rep in range(args.reps):
            for variant in variants:
                times[variant].append(seconds_per_epoch(variant, args.epochs, rep, Path(tmp)))
    print(
        f"MLP, log_every 10, s/epoch over epochs 2..{args.epochs}, median of {args.reps} reps:"
        " a typical epoch; and with the sink's periodic and final writes (its close) spread in"
    )
    base = [statistics.median(t[i] for t in times["none"]) for i in (0, 1)]
    for variant in variants:
        typical, spread = (statistics.median(t[i] for t in times[variant]) for i in (0, 1))
        print(f"  {variant:12s} {typical:.4f} s {100 * (typical / base[0] - 1):+6.1f}%   "
              f"{spread:.4f} s {100 * (spread / base[1] - 1):+6.1f}%")  # fmt: skip


if __name__ == "__main__":
    main()
