"""Workload W: is mpt's loop at the floor? A benchmark that prints figures, not a test.

Runs, interleaved in one process and repeated, on ../shared/data/mnist-t10k.npz (8,000
train / 2,000 val), the tutorial MLP (784-128-10, SGD 0.01/0.9, batch 64, Normalize
(0.1307, 0.3081)) and a 2-conv CNN:

- floor:    a minimal hand-written loop over pre-normalised tensors (batches by index,
            no DataLoader, no per-step host sync);
- mpt:      the engine, through Run.start, with a consumer draining its event queue;
- tutorial: the tutorials' DataLoader + ToTensor/Normalize loop with loss.item() per step.

Repetition r runs every variant with seed r. Prints the median seconds per epoch of each,
their ratios, the final val accuracies (mean over the seeds), peak resident memory per
variant (each variant once more in a child process), and issue 6's targets, met or not.

    python bench/speed.py                  # W on the CPU, 5 epochs, 3 repetitions
    python bench/speed.py --device cuda --precision fp16
    python bench/speed.py --compile        # train.compile = true against eager, MLP and CNN
    python bench/speed.py --ema            # train.ema_decay = 0.999 against off: EMA's cost
"""

from __future__ import annotations

import argparse
import json
import queue
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
NPZ = ROOT.parent / "shared" / "data" / "mnist-t10k.npz"
MEAN, STD = 0.1307, 0.3081


def load():
    d = np.load(NPZ)
    return d["x_train"], d["y_train"], d["x_test"], d["y_test"]


def make_model(arch: str) -> nn.Module:
    from engine.models import build_model
    from engine.profile import ModelSection

    cfg = ModelSection(arch=arch, hidden=[128], channels=[32, 64])
    return build_model(cfg, (1, 28, 28), 10)


def autocast(device, precision):
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def evaluate(model, x, y, device, precision):
    model.eval()
    correct = 0
    with torch.no_grad(), autocast(device, precision):
        for i in range(0, len(x), 1000):
            correct += (model(x[i : i + 1000]).argmax(1) == y[i : i + 1000]).sum()
    model.train()
    return float(correct) / len(x)


def run_floor(arch, epochs, device, precision, seed=0):
    xtr, ytr, xte, yte = load()

    def prep(a):
        return ((torch.from_numpy(a).float().div(255) - MEAN) / STD).unsqueeze(1).to(device)

    x, y = prep(xtr), torch.from_numpy(ytr).long().to(device)
    xv, yv = prep(xte), torch.from_numpy(yte).long().to(device)
    torch.manual_seed(seed)
    model = make_model(arch).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for idx in torch.randperm(len(x), device=device).split(64):
            with autocast(device, precision):
                loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            if scaler:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
        acc = evaluate(model, xv, yv, device, precision)  # includes the epoch's one sync
        times.append(time.perf_counter() - start)
    return times, acc


def run_tutorial(arch, epochs, device, precision, seed=0):
    from PIL import Image
    from torchvision import transforms

    xtr, ytr, xte, yte = load()
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((MEAN,), (STD,))])

    class Digits(torch.utils.data.Dataset):
        def __init__(self, x, y):
            self.x, self.y = x, y

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return tf(Image.fromarray(self.x[i], mode="L")), int(self.y[i])

    torch.manual_seed(seed)
    train = torch.utils.data.DataLoader(Digits(xtr, ytr), batch_size=64, shuffle=True)
    test = torch.utils.data.DataLoader(Digits(xte, yte), batch_size=1000)
    model = make_model(arch).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type) if precision == "fp16" else None
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        model.train()
        running = 0.0
        for xb, yb in train:
            xb, yb = xb.to(device), yb.to(device)
            opt.zero_grad()
            with autocast(device, precision):
                loss = F.cross_entropy(model(xb), yb)
            if scaler:
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                opt.step()
            running += loss.item()
        model.eval()
        correct = 0
        with torch.no_grad():
            for xb, yb in test:
                correct += (model(xb.to(device)).argmax(1) == yb.to(device)).sum().item()
        times.append(time.perf_counter() - start)
    return times, correct / len(xte)


def workload_profile(arch, epochs, device, precision="fp32", seed=0, log_every=25) -> dict:
    """Workload W's profile (MNIST npz, batch 64, SGD 0.01/0.9, no checkpoints) for `arch`."""
    return {
        "run": {"name": "bench", "epochs": epochs, "device": str(device), "seed": seed},
        "data": {
            "dataset": "npz",
            "path": str(NPZ),
            "batch_size": 64,
            "eval_batch_size": 1000,
            "mean": [MEAN],
            "std": [STD],
        },
        "model": {"arch": arch, "hidden": [128], "channels": [32, 64]},
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "precision": {"mode": precision},
        "train": {"log_every": log_every},
        "checkpoint": {"every_epochs": 0, "save_best": False},
    }


def run_mpt(
    arch, epochs, device, precision, seed=0, live_consumer=True, sections=None, headline="val_acc"
):
    """mpt through Run.start; `sections` replace the profile's (issue 15's workloads)."""
    from engine.profile import profile_from_dict
    from engine.run import Run

    profile = profile_from_dict(
        {**workload_profile(arch, epochs, device, precision, seed), **(sections or {})}
    )
    run = Run.start(profile, write=False)
    epochs_seen = []
    if live_consumer:  # the TUI's path: a thread drains the queue ~10 times a second
        done = threading.Event()

        def drain():
            while not done.is_set():
                time.sleep(0.1)
                try:
                    while True:
                        epochs_seen.append(run.events.get_nowait())
                except queue.Empty:
                    pass

        t = threading.Thread(target=drain)
        t.start()
        run.join()
        done.set()
        t.join()
    else:
        run.join()
    while not run.events.empty():
        epochs_seen.append(run.events.get())
    ends = [e for e in epochs_seen if e.kind == "epoch_end"]
    if run.reason != "completed":
        raise SystemExit(f"mpt run did not complete: {run.error}")
    # Wall time between epoch ends: training, validation and everything else mpt does.
    marks = [next(e.time for e in epochs_seen if e.kind == "run_started")]
    marks += [e.time for e in ends]
    return [b - a for a, b in zip(marks, marks[1:], strict=False)], ends[-1].metrics[headline]


VARIANTS = {"floor": run_floor, "mpt": run_mpt, "tutorial": run_tutorial}


def in_fresh_thread(fn, *args, **kwargs):
    """Run one variant in a new thread, as mpt's trainer runs.

    GNU OpenMP wakes a thread team slowly when another thread of the process (here the
    main thread) keeps a team of its own: a loop in a second thread ran 3.5x slower
    after the main thread had done torch work (docs/DESIGN.md, "Threads and OpenMP").
    So no variant computes in the main thread, and each gets the same conditions.
    """
    out = {}

    def target():
        try:
            out["result"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller
            out["error"] = e

    t = threading.Thread(target=target)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["result"]


def child_rss(variant, arch, epochs, device, precision):
    """Peak resident memory of one variant alone in a fresh process, in MiB.

    VmHWM of the child's own address space: getrusage's ru_maxrss would survive the exec
    and report this (large) parent's resident size for every variant.
    """
    code = (
        "import sys, re; sys.path.insert(0, {root!r}); sys.path.insert(0, {bench!r});"
        "import torch, speed; speed.in_fresh_thread(speed.VARIANTS[{v!r}], {a!r}, {e},"
        " torch.device({d!r}), {p!r});"
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))"
    ).format(
        root=str(ROOT),
        bench=str(ROOT / "bench"),
        v=variant,
        a=arch,
        e=epochs,
        d=str(device),
        p=precision,
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1]) / 1024


def print_targets(arch, med, acc, rss, live):
    """Issue 6's targets, each with the figure measured now."""
    limit = 1.10 if arch == "mlp" else 1.15
    checks = [
        (
            f"mpt <= {limit:.2f} x floor",
            med["mpt"] / med["floor"],
            med["mpt"] <= limit * med["floor"],
        ),
        ("live consumer >= 0.97 x headless", live, live >= 0.97),
        ("peak RSS <= 1.2 x floor", rss["mpt"] / rss["floor"], rss["mpt"] <= 1.2 * rss["floor"]),
    ]
    if "tutorial" in med:
        speedup = med["tutorial"] / med["mpt"]
        gap = 100 * abs(acc["mpt"] - acc["tutorial"])
        checks += [
            (">= 10 x faster than the tutorial", speedup, speedup >= 10),
            ("val acc within 0.5 points of the tutorial", gap, gap <= 0.5),
        ]
    print("  targets:")
    for name, figure, ok in checks:
        print(f"    {'met ' if ok else 'MISS'}  {name:<44}{figure:>8.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    ap.add_argument("--arch", nargs="+", default=["mlp", "cnn"])
    ap.add_argument(
        "--skip-tutorial-for",
        nargs="*",
        default=["cnn"],
        help="archs for which the (slow) tutorial loop is not run",
    )
    ap.add_argument("--json", help="also write the figures to this file")
    ap.add_argument(
        "--workload",
        default="mnist",
        choices=["mnist", "factory", "regression"],
        help="mnist: workload W; factory, regression: issue 15's (bench/workloads.py)",
    )
    ap.add_argument(
        "--compile",
        action="store_true",
        help="mpt with train.compile = true against mpt eager: seconds per epoch and the ratio",
    )
    ap.add_argument(
        "--ema",
        action="store_true",
        help="mpt with train.ema_decay = 0.999 against off: seconds per epoch, the ratio, "
        "and the average's update per optimizer step",
    )
    args = ap.parse_args()
    if args.compile:
        return compile_workload(args)
    if args.ema:
        return ema_workload(args)
    if args.workload != "mnist":
        return task_workload(args)
    device = torch.device(args.device)
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"{args.precision}, {args.epochs} epochs x {args.reps} repetitions"
    )
    results = {}
    for arch in args.arch:
        variants = ["floor", "mpt", "mpt-headless"]
        if arch not in args.skip_tutorial_for:
            variants.append("tutorial")
        per = {v: [] for v in variants}
        accs = {v: [] for v in variants}
        for rep in range(args.reps):  # repetition r runs every variant with seed r
            for v in variants:  # interleaved, so drift hits every variant alike
                if v == "mpt-headless":
                    t, acc = in_fresh_thread(
                        run_mpt,
                        arch,
                        args.epochs,
                        device,
                        args.precision,
                        seed=rep,
                        live_consumer=False,
                    )
                else:
                    t, acc = in_fresh_thread(
                        VARIANTS[v], arch, args.epochs, device, args.precision, seed=rep
                    )
                per[v] += t[1:] if len(t) > 1 else t  # first epoch warms up caches
                accs[v].append(acc)
        med = {v: statistics.median(per[v]) for v in variants}
        acc = {v: statistics.fmean(accs[v]) for v in variants}
        rss = {v: child_rss(v, arch, 1, device, args.precision) for v in ("floor", "mpt")}
        results[arch] = {
            "median_epoch_s": med,
            "mean_val_acc": acc,
            "peak_rss_mib": rss,
        }
        print(f"\n{arch}: median seconds per epoch (epochs 2..{args.epochs}, all repetitions)")
        print(f"  {'variant':<13}{'s/epoch':>9}{'x floor':>9}{'val acc':>9}  (mean of the seeds)")
        for v in variants:
            print(f"  {v:<13}{med[v]:>9.3f}{med[v] / med['floor']:>9.2f}{100 * acc[v]:>8.2f}%")
        live = med["mpt-headless"] / med["mpt"]
        print(f"  mpt with a live consumer / headless throughput: {live:.3f}")
        if "tutorial" in med:
            print(f"  tutorial / mpt: {med['tutorial'] / med['mpt']:.1f}x faster")
            bound = med["tutorial"] / med["floor"]
            print(f"  tutorial / floor: {bound:.1f}x (the most a loop at the floor gets)")
        print(
            f"  peak RSS (1 epoch, own process): floor {rss['floor']:.0f} MiB, "
            f"mpt {rss['mpt']:.0f} MiB ({rss['mpt'] / rss['floor']:.2f}x)"
        )
        print_targets(arch, med, acc, rss, live)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def compile_workload(args) -> None:
    """mpt with torch.compile against mpt eager on workload W, per arch: the median epoch
    after the first (which pays for compiling), their ratio, and the first epoch's cost."""
    device = torch.device(args.device)
    compiled = {"train": {"log_every": 25, "compile": True}}
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"{args.precision}, {args.epochs} epochs x {args.reps} repetitions, compile vs eager"
    )
    results = {}
    for arch in args.arch:
        per = {"eager": [], "compiled": []}
        first = {"eager": [], "compiled": []}
        acc = {"eager": [], "compiled": []}
        for rep in range(args.reps):  # interleaved, so drift hits both alike
            for v, sections in (("eager", None), ("compiled", compiled)):
                t, a = in_fresh_thread(
                    run_mpt, arch, args.epochs, device, args.precision, rep, False, sections
                )
                first[v].append(t[0])
                per[v] += t[1:] if len(t) > 1 else t
                acc[v].append(a)
        med = {v: statistics.median(per[v]) for v in per}
        ratio = med["compiled"] / med["eager"]
        results[arch] = {"median_epoch_s": med, "compiled_over_eager": ratio}
        print(f"\n{arch}: median seconds per epoch (epochs 2..{args.epochs}, all repetitions)")
        for v in per:
            print(
                f"  {v:<10}{med[v]:>9.3f} s   first epoch {statistics.median(first[v]):>7.2f} s"
                f"   val acc {100 * statistics.fmean(acc[v]):.2f}%"
            )
        print(f"  compiled / eager: {ratio:.2f} (below 1: compile is faster)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def ema_update_seconds(arch: str, device: torch.device, steps: int = 2000) -> float:
    """Seconds of one update of the weights' moving average (engine/ema.py) on the
    workload's model, timed alone over `steps` updates."""
    from engine.ema import WeightAverage

    model = make_model(arch).to(device)
    average = WeightAverage(model, 0.999, 1)
    for step in range(1, 51):  # warm up (the first update is a copy)
        average.after_step(step)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for step in range(51, 51 + steps):
        average.after_step(step)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / steps


def run_to_end(profile, what: str = "mpt run") -> list:
    """Every event of a run of `profile` (nothing written), once it has completed."""
    from engine.run import Run

    run = Run.start(profile, write=False)
    run.join()
    events = []
    while not run.events.empty():
        events.append(run.events.get())
    if run.reason != "completed":
        raise SystemExit(f"{what} did not complete: {run.error}")
    return events


def run_mpt_steps(arch, epochs, device, precision, seed, sections):
    """(seconds an optimizer step, seconds an epoch, headline) of mpt on workload W: the
    step's from the step events' throughput (log windows hold training only), after the
    first epoch; the epoch's between epoch ends (validation included)."""
    from engine.profile import profile_from_dict

    profile = profile_from_dict(
        {**workload_profile(arch, epochs, device, precision, seed), **sections}
    )
    events = run_to_end(profile)
    ends = [e for e in events if e.kind == "epoch_end"]
    steps = [64 / e.samples_per_s for e in events if e.kind == "step" and e.epoch > 1]
    epochs_s = [b.time - a.time for a, b in zip(ends, ends[1:], strict=False)]
    return statistics.median(steps), statistics.median(epochs_s), ends[-1].metrics["val_acc"]


def ema_workload(args) -> None:
    """mpt with train.ema_decay = 0.999 against without, on workload W per arch: seconds an
    optimizer step (training only) and an epoch (with EMA an epoch validates twice: the
    average and the raw weights), their ratios, and the update's own cost timed alone."""
    device = torch.device(args.device)
    ema = {"train": {"log_every": 25, "ema_decay": 0.999}}
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"{args.precision}, {args.epochs} epochs x {args.reps} repetitions, EMA vs off"
    )
    results = {}
    for arch in args.arch:
        got = {"off": [], "ema": []}  # (step s, epoch s, val acc) per repetition
        for rep in range(args.reps):  # interleaved, so drift hits both alike
            for v, sections in (("off", {"train": {"log_every": 25}}), ("ema", ema)):
                got[v].append(
                    in_fresh_thread(
                        run_mpt_steps, arch, args.epochs, device, args.precision, rep, sections
                    )
                )
        step = {v: statistics.median(g[0] for g in got[v]) for v in got}
        epoch = {v: statistics.median(g[1] for g in got[v]) for v in got}
        update = in_fresh_thread(ema_update_seconds, arch, device)
        results[arch] = {
            "median_step_s": step,
            "median_epoch_s": epoch,
            "step_ema_over_off": step["ema"] / step["off"],
            "epoch_ema_over_off": epoch["ema"] / epoch["off"],
            "update_s": update,
        }
        print(f"\n{arch}: medians over epochs 2..{args.epochs} of every repetition")
        for v in got:
            acc = statistics.fmean(g[2] for g in got[v])
            print(
                f"  {v:<6}step {1e3 * step[v]:>8.3f} ms   epoch {epoch[v]:>8.3f} s   "
                f"val acc {100 * acc:.2f}%"
            )
        print(
            f"  ema / off: a step {step['ema'] / step['off']:.3f}, an epoch "
            f"{epoch['ema'] / epoch['off']:.3f} (its second validation included)"
        )
        print(
            f"  the update alone: {1e6 * update:.1f} us, {100 * update / step['off']:.1f}% of "
            "a step without EMA"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


def task_workload(args) -> None:
    """Issue 15's workloads: mpt on a factory's data or a regression against the floor, and
    with every metric of the task against the default one."""
    import workloads as w

    device, name = torch.device(args.device), args.workload
    floor = (
        (lambda e, d, seed: run_floor("mlp", e, d, "fp32", seed))
        if name == "factory"
        else (lambda e, d, seed: w.run_regression_floor(e, d, seed))
    )
    variants = {
        "floor": floor,
        "mpt": lambda e, d, seed: run_mpt(
            "mlp", e, d, "fp32", seed, False, w.profile_for(name, w.DEFAULT_METRIC[name]),
            w.HEADLINE[name],
        ),
        "mpt-all-metrics": lambda e, d, seed: run_mpt(
            "mlp", e, d, "fp32", seed, False, w.profile_for(name, w.ALL_METRICS[name]),
            w.HEADLINE[name],
        ),
    }  # fmt: skip
    print(
        f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, "
        f"workload {name}, {args.epochs} epochs x {args.reps} repetitions"
    )
    per = {v: [] for v in variants}
    paired = {v: [] for v in variants}  # per repetition: its median over the floor's
    for rep in range(args.reps):
        rep_med = {}
        for v, fn in variants.items():  # interleaved, so drift hits every variant alike
            t, _ = in_fresh_thread(fn, args.epochs, device, rep)
            t = t[1:] if len(t) > 1 else t  # the first epoch warms up caches
            per[v] += t
            rep_med[v] = statistics.median(t)
        for v in variants:
            paired[v].append(rep_med[v] / rep_med["floor"])
    med = {v: statistics.median(per[v]) for v in variants}
    ratio = {v: statistics.median(paired[v]) for v in variants}
    print(f"\n{name}: median seconds per epoch (epochs 2..{args.epochs}, all repetitions), "
          "and the median of the repetitions' ratios to the floor")  # fmt: skip
    for v in variants:
        print(f"  {v:<16}{med[v]:>9.3f} s{ratio[v]:>9.2f} x floor")
    # What the metrics cost, measured alone: an epoch's metric work with every metric of the
    # kind minus that with the default one, against the floor's epoch (the fastest of each).
    default = in_fresh_thread(w.metric_seconds, name, w.DEFAULT_METRIC[name], device)
    every = in_fresh_thread(w.metric_seconds, name, w.ALL_METRICS[name], device)
    share = (every - default) / min(per["floor"])
    metrics = ", ".join(w.ALL_METRICS[name])
    print(f"  metric work an epoch: default {1000 * default:.2f} ms, every metric "
          f"{1000 * every:.2f} ms; the fastest floor epoch {min(per['floor']):.3f} s")  # fmt: skip
    print("  targets:")
    print(f"    {'met ' if ratio['mpt'] <= 1.10 else 'MISS'}  mpt <= 1.10 x floor"
          f"{ratio['mpt']:>32.3f}")  # fmt: skip
    print(f"    {'met ' if share <= 0.05 else 'MISS'}  every metric ({metrics}) <= 5% of an "
          f"epoch{100 * share:>8.1f}%")  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps({name: {"median_epoch_s": med}}, indent=2))


if __name__ == "__main__":
    main()
