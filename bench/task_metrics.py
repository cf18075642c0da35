"""What engine/task.py's metrics cost the loop: a benchmark that prints figures, not a test.

On sklearn's digits (1,437 train / 360 val, 64 features), an MLP 64-128-10 trained with
SGD at batch 64 on the CPU, interleaved and repeated, medians printed:

- train:     forward, task.loss, backward, optimizer step, train_sums into the epoch's sums;
- train_sums alone, per step (batch 64), for each kind: 2,000 calls, median of 7 rounds;
- val:       a validation pass (batch 256): forward and the loss sum only;
- val+acc:   the same plus val_update/val_compute of the default metrics (acc: sums only);
- val+all:   ... of every classification metric (top5, f1, precision, recall, auroc:
             torchmetrics);
- import:    `import torchmetrics` after torch, in a fresh process (what a profile asking
             for a torchmetrics metric adds to a run's start).

    python bench/task_metrics.py [--repeats 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

import torch
from sklearn.datasets import load_digits
from torch import nn

from engine.data import DataBundle, Split
from engine.profile import TaskSection
from engine.task import build_task

CPU = torch.device("cpu")


def _data():
    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x / 16, dtype=torch.float32), torch.tensor(y)
    return DataBundle(Split(x[:1437], y[:1437]), Split(x[1437:], y[1437:]), 10, (64,), None, None)


def _train_epoch(model, opt, task, data, sums: bool) -> float:
    start = time.perf_counter()
    total = task.zero_sums()
    x, y = data.train.x, data.train.y
    for i in range(0, len(y), 64):
        xb, yb = x[i : i + 64], y[i : i + 64]
        out = model(xb)
        loss = task.loss(out, yb, "mean")
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if sums:
            total += task.train_sums(out, yb)
    total.item()
    return time.perf_counter() - start


@torch.no_grad()
def _val(model, task, data, metrics: bool) -> float:
    start = time.perf_counter()
    loss_sum = torch.zeros(())
    x, y = data.val.x, data.val.y
    for i in range(0, len(y), 256):
        out = model(x[i : i + 256])
        loss_sum += task.loss(out, y[i : i + 256], "sum")
        if metrics:
            task.val_update(out, y[i : i + 256])
    if metrics:
        task.val_compute()
    loss_sum.item()
    return time.perf_counter() - start


def _import_seconds() -> float:
    code = (
        "import time, torch; t = time.perf_counter(); import torchmetrics; "
        "print(time.perf_counter() - t)"
    )
    return float(
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
    )


def _per_call(fn, calls: int) -> float:
    """Median seconds of one fn() over rounds of `calls` calls."""
    rounds = []
    for _ in range(7):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        rounds.append((time.perf_counter() - start) / calls)
    return statistics.median(rounds)


def _sums_cost(kind: str, outputs: int, out: torch.Tensor, y: torch.Tensor) -> float:
    data = DataBundle(Split(out, y), None, outputs, (outputs,), None, None, kind)
    task = build_task(TaskSection(kind=kind), data, CPU)
    total = task.zero_sums()

    def add():
        nonlocal total
        total = total + task.train_sums(out, y)

    return _per_call(add, 2000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's own)")
    args = parser.parse_args()
    if args.threads:  # one thread: steady figures on a small, shared machine
        torch.set_num_threads(args.threads)
    data = _data()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    acc = build_task(TaskSection(), data, CPU)
    every = build_task(
        TaskSection(metrics=["acc", "top5", "f1", "precision", "recall", "auroc"]), data, CPU
    )
    steps = -(-len(data.train) // 64)
    times: dict[str, list[float]] = {k: [] for k in ("train", "val", "val+acc", "val+all")}
    for _ in range(args.repeats + 1):  # the first round warms up, and is dropped
        times["train"].append(_train_epoch(model, opt, acc, data, sums=True))
        times["val"].append(_val(model, acc, data, metrics=False))
        times["val+acc"].append(_val(model, acc, data, metrics=True))
        times["val+all"].append(_val(model, every, data, metrics=True))
    med = {k: statistics.median(v[1:]) for k, v in times.items()}
    epoch = med["train"] + med["val"]
    print(
        f"epoch: {epoch * 1e3:.1f} ms: train {med['train'] * 1e3:.1f} ms ({steps} steps, "
        f"{med['train'] / steps * 1e6:.0f} us/step), val {med['val'] * 1e3:.2f} ms"
    )
    out, y = model(data.train.x[:64]).detach(), data.train.y[:64]
    cases = {
        "classification": (10, out, y),
        "multilabel": (10, out, (torch.rand(64, 10) > 0.5).float()),
        "regression": (10, out, torch.randn(64, 10)),
    }
    for kind, (outputs, o, t) in cases.items():
        cost = _sums_cost(kind, outputs, o, t)
        print(
            f"train_sums {kind} (batch 64): {cost * 1e6:.1f} us/step, "
            f"{cost * steps / epoch:.2%} of an epoch"
        )
    for name in ("val+acc", "val+all"):
        extra = med[name] - med["val"]
        print(f"{name}: {extra * 1e3:+.2f} ms/epoch ({extra / epoch:+.2%} of an epoch)")
    print(f"import torchmetrics (after torch, fresh process): {_import_seconds():.2f} s")


if __name__ == "__main__":
    main()
