"""The fast path of issue 6, as behaviour: where the data lives and what a step does.

Timings live in bench/ (speed.py, startup.py); these tests pin the choices that make
them, so that a change cannot quietly bring the slow path back.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from conftest import MNIST_NPZ

from engine.data import BatchTransform, Split


def test_cached_splits_are_normalised_once_on_the_device(train):
    done = train()
    trainer = done.run.trainer
    assert trainer.cache == "device"
    assert trainer.data.train.x.dtype == torch.float32  # no per-step normalisation
    assert trainer.data.val.x.dtype == torch.float32
    assert done.of("run_started")[0].data_cache == "device"


def test_normalising_once_gives_bit_identical_inputs_to_normalising_per_batch():
    import numpy as np

    x = torch.from_numpy(np.load(MNIST_NPZ)["x_test"][:300]).unsqueeze(1)
    split = Split(x, torch.zeros(len(x), dtype=torch.int64))
    transform = BatchTransform([0.1307], [0.3081], torch.device("cpu"))
    once = transform.normalize_split(split, chunk=128).x  # chunks that do not divide 300
    idx = torch.randperm(len(x))[:64]
    assert torch.equal(transform(once[idx]), transform(x[idx]))


def test_a_memory_cache_keeps_uint8_and_normalises_per_batch(train):
    trainer = train({"data": {"cache": "memory"}}).run.trainer
    assert trainer.data.train.x.dtype == torch.uint8


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw"])
def test_sgd_adam_and_adamw_use_the_fused_kernel_on_the_cpu(train, name):
    trainer = train({"optim": {"name": name}}).run.trainer
    assert trainer.optimizer.defaults["fused"] is True


def test_fp32_enters_no_autocast_context_and_bf16_does(train):
    assert isinstance(train().run.trainer._autocast(), contextlib.nullcontext)
    bf16 = train({"precision": {"mode": "bf16"}}).run.trainer
    assert isinstance(bf16._autocast(), torch.autocast)
