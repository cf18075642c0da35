"""Issue 15's workloads for bench/speed.py: your data through a factory, and a regression.

- factory:    MNIST (the npz) through a dataset factory returning a map-style Dataset, the
              tutorial MLP; mpt collates it once and trains on the cached path. Against
              the same floor as workload W.
- regression: 20,000 samples of 32 features, a non-linear target, an MLP 32-128-1, MSE,
              SGD; the floor is the hand-written loop over the same tensors.

Each runs mpt twice: with the default metric (summed in the loop) and with every metric
of its kind (torchmetrics per epoch), so the metrics' share of an epoch shows.

    python bench/speed.py --workload factory
    python bench/speed.py --workload regression
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

NPZ = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-t10k.npz"

MEAN, STD = 0.1307, 0.3081
N, FEATURES = 20_000, 32


class MnistItems(torch.utils.data.Dataset):
    """The npz's images one by one, as a user's Dataset gives them: ((1, 28, 28) uint8, int)."""

    def __init__(self, x: np.ndarray, y: np.ndarray):
        self.x, self.y = torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y).long()
        self.classes = [str(d) for d in range(10)]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return self.x[i], self.y[i]


def mnist_factory():
    d = np.load(NPZ)
    return MnistItems(d["x_train"], d["y_train"]), MnistItems(d["x_test"], d["y_test"])


def regression_tensors(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, FEATURES, generator=g)
    w = torch.randn(FEATURES, 1, generator=g) / FEATURES**0.5
    y = torch.tanh(x @ w) + 0.5 * (x[:, :1] * x[:, 1:2]) + 0.05 * torch.randn(N, 1, generator=g)
    cut = N * 4 // 5
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def regression_factory():
    return regression_tensors()


def run_regression_floor(epochs: int, device, seed: int = 0):
    """A hand-written loop over the tensors: batches by index, MSE, SGD, one sync an epoch."""
    from engine.models import build_model
    from engine.profile import ModelSection

    (x, y), (xv, yv) = (tuple(t.to(device) for t in pair) for pair in regression_tensors())
    torch.manual_seed(seed)
    model = build_model(ModelSection(arch="mlp", hidden=[128]), (FEATURES,), 1).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    times = []
    for _ in range(epochs):
        start = time.perf_counter()
        for idx in torch.randperm(len(x), device=device).split(64):
            loss = F.mse_loss(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            mae = float((model(xv) - yv).abs().mean())  # the epoch's one sync
        model.train()
        times.append(time.perf_counter() - start)
    return times, mae


def profile_for(workload: str, metrics: list[str]) -> dict:
    """The profile sections (besides run) of mpt's side of `workload`."""
    if workload == "factory":
        return {
            "data": {
                "dataset": "workloads:mnist_factory",
                "batch_size": 64,
                "eval_batch_size": 1000,
                "mean": [MEAN],
                "std": [STD],
            },
            "model": {"arch": "mlp", "hidden": [128]},
            "task": {"kind": "classification", "metrics": metrics},
        }
    return {
        "data": {"dataset": "workloads:regression_factory", "batch_size": 64},
        "model": {"arch": "mlp", "hidden": [128]},
        "task": {"kind": "regression", "loss": "mse", "metrics": metrics},
    }


def metric_seconds(workload: str, metrics: list[str], device, reps: int = 30) -> float:
    """The fastest of `reps` validation passes' metric work alone: Task.val_update on every
    validation batch (the real model's outputs for the factory, targets plus noise for the
    regression) and the epoch's val_compute. What `metrics` cost an epoch, without the
    epoch's training, so the noise of a shared VM does not swamp a few per cent."""
    from engine.data import DataBundle, Split
    from engine.profile import TaskSection
    from engine.task import build_task

    torch.manual_seed(0)
    if workload == "factory":
        val = mnist_factory()[1]
        y = val.y.to(device)
        out = torch.randn(len(y), 10, device=device) + 4 * F.one_hot(y, 10)
        bundle = DataBundle(Split(val.x, val.y), None, 10, (1, 28, 28), None, None)
        cfg, batch = TaskSection(metrics=metrics), 1000
    else:
        y = regression_tensors()[1][1].to(device)
        out = y + 0.3 * torch.randn_like(y)
        bundle = DataBundle(Split(y, y), None, 1, (FEATURES,), None, None, kind="regression")
        cfg, batch = TaskSection(kind="regression", loss="mse", metrics=metrics), 512
    task = build_task(cfg, bundle, device)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        for o, t in zip(out.split(batch), y.split(batch), strict=True):
            task.val_update(o, t)
        task.val_compute()
        best = min(best, time.perf_counter() - start)
    return best


ALL_METRICS = {"factory": ["acc", "top5", "f1", "precision", "recall", "auroc"],
               "regression": ["mae", "mse", "rmse", "r2"]}  # fmt: skip
DEFAULT_METRIC = {"factory": ["acc"], "regression": ["mae"]}
HEADLINE = {"factory": "val_acc", "regression": "val_mae"}
