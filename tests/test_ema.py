"""train.ema_decay: a moving average of the weights, validated, checkpointed, resumed and
exported (issue 18, engine/ema.py).

The model has a batch-norm layer, so that the average's buffers (running statistics)
are seen to follow too. Digits, a small MLP, the CPU: 12 optimizer steps an epoch (23
micro-batches of 64, two to a step).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from durable_helpers import assert_same, load, profile_dict, train
from torch import nn

from engine import checkpoint as ckpt
from engine.errors import ProfileError
from engine.export import export_checkpoint, load_model
from engine.formatting import metric
from engine.profile import profile_from_dict
from engine.task_spec import lower_is_better


def bn_mlp(in_shape, num_classes):
    """The tests' model ("test_ema:bn_mlp"): an MLP with batch norm and dropout."""
    n = 1
    for size in in_shape:
        n *= size
    return nn.Sequential(
        nn.Flatten(), nn.Linear(n, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1),
        nn.Linear(32, num_classes),
    )  # fmt: skip


EMA = {
    "run": {"name": "ema", "epochs": 3},
    "model": {"arch": "test_ema:bn_mlp"},
    "optim": {"name": "adamw", "lr": 0.01},
    "train": {"grad_accum": 2, "log_every": 4, "ema_decay": 0.9, "ema_every": 2},
    "checkpoint": {"every_steps": 6, "keep_last": 0},
}
STEPS = 36  # 3 epochs of 12 optimizer steps
K_MID_EPOCH = 18


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same run twice, with and without EMA, each once per module."""
    out = tmp_path_factory.mktemp("runs")
    with_ema = train(profile_dict(out, EMA))
    without = train(profile_dict(out, EMA, {"run": {"name": "raw"}, "train": {"ema_decay": 0}}))
    return with_ema, without


def epoch_ends(done) -> list[dict]:
    """epoch_end lines of events.jsonl, less the clock's figures."""
    clock = ("time", "seconds", "samples_per_s")
    return [
        {k: v for k, v in e.items() if k not in clock}
        for e in done.jsonl()
        if e["kind"] == "epoch_end"
    ]


def test_validation_reports_the_average_and_the_raw_headline_as_val_raw(runs):
    with_ema, without = runs
    ends, plain = epoch_ends(with_ema), epoch_ends(without)
    assert len(ends) == len(plain) == 3
    # EMA changes nothing in training: the raw weights' accuracy is the run without it's.
    assert [e["val_raw_acc"] for e in ends] == [e["val_acc"] for e in plain]
    assert [e["train_loss"] for e in ends] == [e["train_loss"] for e in plain]
    assert all("val_raw_acc" not in e for e in plain)
    assert any(e["val_acc"] != e["val_raw_acc"] for e in ends)
    assert all(e["val_loss"] != p["val_loss"] for e, p in zip(ends, plain, strict=True))


def test_ema_leaves_the_raw_weights_as_without_it(runs):
    with_ema, without = runs
    assert_same(with_ema.run.model.state_dict(), without.run.model.state_dict())


def test_the_checkpoint_holds_the_average_counted_in_optimizer_steps(runs):
    with_ema, _ = runs
    state = load(with_ema.ckpt_dir / "last.pt")
    assert state["version"] == ckpt.VERSION == 3
    ema = state["ema"]
    assert ema["n_averaged"] == STEPS // 2  # every 2 optimizer steps, not micro-batches
    assert ema["weights"].keys() == state["model"].keys()
    for name in ("1.weight", "2.running_mean", "2.running_var"):  # buffers averaged too
        assert not torch.equal(ema["weights"][name], state["model"][name]), name


def test_best_pt_and_early_stopping_follow_the_average(tmp_path):
    es = {"early_stop": {"enabled": True, "monitor": "val_acc", "patience": 5}}
    done = train(profile_dict(tmp_path, EMA, es, {"checkpoint": {"monitor": "val_acc"}}))
    ends = epoch_ends(done)
    assert [e.value for e in done.of("early_stop")] == [e["val_acc"] for e in ends]
    best = [e for e in done.of("checkpoint_saved") if e.reason == "best"]
    assert best and all(b.value in [e["val_acc"] for e in ends] for b in best)
    assert best[-1].value == max(e["val_acc"] for e in ends)


@pytest.mark.parametrize("k", [12, K_MID_EPOCH], ids=["epoch_end", "mid_epoch"])
def test_resume_continues_the_average_bit_for_bit(runs, k):
    straight, _ = runs
    at = straight.ckpt_dir / f"step-{k:06d}.pt"
    assert load(at)["ema"]["n_averaged"] == k // 2

    again = train(resume=at, trust_code=True)  # (its profile names the tests' model)

    a, b = load(straight.ckpt_dir / "last.pt"), load(again.ckpt_dir / "last.pt")
    for state in (a, b):
        state.pop("time"), state["progress"].pop("events")  # bookkeeping (test_resume.py)
    assert_same(b, a)
    assert epoch_ends(again) == epoch_ends(straight)


def test_resuming_a_checkpoint_without_an_average_starts_one_and_says_so(runs):
    _, without = runs
    at = without.ckpt_dir / f"step-{K_MID_EPOCH:06d}.pt"
    assert load(at)["ema"] is None
    again = train(resume=at, overrides=["train.ema_decay=0.9"], trust_code=True)

    messages = [w.message for w in again.of("warning")]
    assert any("holds no moving average of the weights" in m for m in messages), messages
    assert load(again.ckpt_dir / "last.pt")["ema"]["n_averaged"] == (STEPS - K_MID_EPOCH) // 2
    assert all("val_raw_acc" in e for e in epoch_ends(again) if e["step"] > K_MID_EPOCH)


def _model_with(state: dict, weights: str) -> nn.Module:
    model = bn_mlp((1, 8, 8), 10)
    model.load_state_dict(state["ema"]["weights"] if weights == "ema" else state["model"])
    return model.eval()


def test_export_takes_the_average_by_default_and_the_raw_weights_with_raw(runs, tmp_path):
    with_ema, _ = runs
    state = load(with_ema.ckpt_dir / "last.pt")
    x = torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    outputs = {}
    for raw in (False, True):
        out = tmp_path / f"{raw}.torchscript.pt"
        text = export_checkpoint(with_ema.run_dir, "torchscript", out, trust_code=True, raw=raw)
        assert text.startswith(f"wrote {out} (torchscript, from ")
        assert text.splitlines()[0].endswith(
            "; raw weights) and True.torchscript.pt.json"
            if raw
            else "; the weights' moving average, --raw for the raw ones) and "
            "False.torchscript.pt.json"
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.jit is deprecated upstream
            loaded = torch.jit.load(str(out))
        with torch.no_grad():
            outputs[raw] = loaded(x)
            expected = _model_with(state, "raw" if raw else "ema")(x)
        torch.testing.assert_close(outputs[raw], expected)
    assert not torch.allclose(outputs[False], outputs[True])
    for raw, weights in ((False, "ema"), (True, "raw")):  # the rebuilt model, every format's
        model, *_ = load_model(with_ema.run_dir, trust_code=True, raw=raw)
        assert_same(model.state_dict(), _model_with(state, weights).state_dict())


@pytest.mark.parametrize(
    ("train_keys", "message"),
    [
        ({"ema_decay": 1.0}, "train.ema_decay: must be < 1 (got 1.0)"),
        ({"ema_decay": -0.5}, "train.ema_decay: must be >= 0 (got -0.5)"),
        ({"ema_every": 0}, "train.ema_every: must be >= 1 (got 0)"),
    ],
)
def test_out_of_range_ema_keys_are_one_sentence(train_keys, message):
    with pytest.raises(ProfileError) as info:
        profile_from_dict({"train": train_keys}, "p.toml")
    assert str(info.value) == f"p.toml: {message}"


def test_a_checkpoint_whose_average_does_not_fit_the_model_is_refused(runs, tmp_path):
    with_ema, _ = runs
    state = torch.load(with_ema.ckpt_dir / "last.pt", weights_only=True)
    state["ema"]["weights"]["1.weight"] = torch.zeros(3, 3)
    bad = tmp_path / "bad.pt"
    torch.save(state, bad)
    with pytest.raises(ckpt.CheckpointError, match=r"ema\.weights\['1\.weight'\] must have"):
        ckpt.load(bad)


def test_a_raw_metric_reads_as_its_metric_in_tables_and_plots():
    # The dashboard, mpt compare and mpt show format and rank by the metric's name.
    assert metric("val_raw_acc", 0.9725) == metric("val_acc", 0.9725) == "97.25%"
    assert lower_is_better("val_raw_mae") and not lower_is_better("val_raw_acc")
