"""One process of test_task's torchrun-like test: it joins the process group as mpt does
(engine/distributed.py, from RANK/WORLD_SIZE/MASTER_*), validates its share of each case
and prints the metrics as JSON. Rank 1 validates no classification sample, rank 0 no
multilabel one; the regression samples are split 100/50."""

from __future__ import annotations

import json

import torch

from engine.data import DataBundle, Split
from engine.distributed import Collectives, world_from_env
from engine.exiting import exit_now
from engine.profile import TaskSection
from engine.task import build_task

CPU = torch.device("cpu")


def cases():
    """(kind, data, metrics, val outputs, val targets, rank 0's share)."""
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 10, (150,), generator=g)
    out = torch.randn(150, 10, generator=g) + 2 * torch.nn.functional.one_hot(y, 10)
    c = DataBundle(Split(torch.zeros(150, 3), y), None, 10, (3,), None, None)
    t = torch.randn(150, 2, generator=g)
    r = DataBundle(Split(torch.zeros(150, 3), t), None, 2, (3,), None, None, "regression")
    labels = (torch.rand(150, 4, generator=g) > 0.5).float()
    logits = torch.randn(150, 4, generator=g) + 2 * labels - 1
    m = DataBundle(Split(torch.zeros(150, 3), labels), None, 4, (3,), None, None, "multilabel")
    return [
        ("classification", c, ["auroc", "f1", "top5", "acc"], out, y, 150),
        ("multilabel", m, ["auroc", "f1", "hamming"], logits, labels, 0),
        ("regression", r, ["r2", "mae"], t + torch.randn(150, 2, generator=g), t, 100),
    ]


def validate(task, out, y, batch=64):
    for i in range(0, len(y), batch):
        task.val_update(out[i : i + batch], y[i : i + batch])
    return task.val_compute()


if __name__ == "__main__":
    world = world_from_env()
    collectives = Collectives(world, CPU)  # the process group, as a run makes it
    results = {}
    for kind, data, metrics, out, y, first in cases():
        task = build_task(TaskSection(kind=kind, metrics=metrics), data, CPU, world.distributed)
        share = slice(0, first) if world.rank == 0 else slice(first, None)
        results[kind] = validate(task, out[share], y[share])
    collectives.close()
    print(json.dumps(results))
    # As mpt's own processes end (engine/exiting.py): gloo's teardown in the interpreter's
    # exit aborted a rank once (SIGABRT after its results were printed).
    exit_now(0)
