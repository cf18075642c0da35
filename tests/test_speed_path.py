"""The fast path of issue 6, as behaviour: where the data lives and what a step does.

Timings live in bench/ (speed.py, startup.py); these tests pin the choices that make
them, so that a change cannot quietly bring the slow path back.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import MNIST_NPZ

from engine.data import BatchTransform, Split, load_data
from engine.optim import build_optimizer
from engine.placement import DataPlacement
from engine.precision import autocast
from engine.profile import profile_from_dict

CPU = torch.device("cpu")


def digits_placement(cache: str) -> DataPlacement:
    """The digits set placed on the CPU as a run with data.cache = `cache` places it."""
    profile = profile_from_dict({"data": {"dataset": "digits", "val_fraction": 0.2}})
    data = load_data(profile.data, seed=0)
    transform = BatchTransform(data.mean, data.std, CPU)
    return DataPlacement(data, cache, CPU, transform)


def test_cached_splits_are_normalised_once_on_the_device(train):
    assert train().of("run_started")[0].data_cache == "device"
    placed = digits_placement("auto")
    assert placed.mode == "device"
    assert placed.train.x.dtype == torch.float32  # no per-step normalisation
    assert placed.val.x.dtype == torch.float32


def test_normalising_once_gives_bit_identical_inputs_to_normalising_per_batch():
    import numpy as np

    x = torch.from_numpy(np.load(MNIST_NPZ)["x_test"][:300]).unsqueeze(1)
    split = Split(x, torch.zeros(len(x), dtype=torch.int64))
    transform = BatchTransform([0.1307], [0.3081], torch.device("cpu"))
    once = transform.normalize_split(split, chunk=128).x  # chunks that do not divide 300
    idx = torch.randperm(len(x))[:64]
    assert torch.equal(transform(once[idx]), transform(x[idx]))


def test_a_memory_cache_keeps_uint8_and_normalises_per_batch(train):
    assert train({"data": {"cache": "memory"}}).of("run_started")[0].data_cache == "memory"
    placed = digits_placement("memory")
    assert placed.train.x.dtype == torch.uint8
    xb, _ = next(placed.batches("train", [torch.arange(8)]))
    assert xb.dtype == torch.uint8  # BatchTransform normalises each batch on the device


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_sgd_adam_and_adamw_use_the_fused_kernel_on_the_cpu(name):
    profile = profile_from_dict({"optim": {"name": name}})
    optimizer = build_optimizer(torch.nn.Linear(4, 2), profile.optim, CPU)
    assert optimizer.defaults["fused"] is True


def test_fp32_enters_no_autocast_context_and_bf16_does():
    assert isinstance(autocast("cpu", "fp32"), contextlib.nullcontext)
    assert isinstance(autocast("cpu", "bf16"), torch.autocast)
