"""Your data, your task, your model, end to end: factories, regression and multilabel
runs, their metrics in every output, exact resume on both data paths, torchrun, export
and the example profiles, through the public surfaces (Run, events, checkpoints, CLI).
"""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from durable_helpers import (
    REPO,
    assert_same,
    events_jsonl,
    load,
    metrics,
    mpt,
    printed_run_dir,
    profile_dict,
    run_dir_of,
    spawn_mpt,
    train,
    wait_for,
    write_toml,
)

# A regression factory (tensor pairs, val given) and a multilabel one (a Dataset without
# `targets`, val None so that data.val_fraction splits it), written where a user would.
FACTORIES = """
import os

import torch

if "MPT_TEST_MARKER" in os.environ:  # a test's witness that this module was imported
    open(os.environ["MPT_TEST_MARKER"], "a").write("imported\\n")


def regression(n=600, features=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, 2, generator=g)
    y = x @ w + 0.1 * torch.randn(n, 2, generator=g)
    cut = n * 4 // 5
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


class Labels(torch.utils.data.Dataset):
    classes = ["a", "b", "c", "d"]

    def __init__(self, n, seed):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 8, generator=g)
        self.y = (self.x[:, :4] + 0.3 * torch.randn(n, 4, generator=g) > 0).float()

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def multilabel(n=500, seed=0):
    return {"train": Labels(n, seed), "val": None}
"""

REGRESSION = {
    "data": {"dataset": "user_factories:regression", "batch_size": 32},
    "task": {"kind": "regression", "metrics": ["mae", "r2", "rmse"]},
    "model": {"arch": "mlp", "hidden": [32], "dropout": 0.1},
    "optim": {"name": "adam", "lr": 0.01},
    "checkpoint": {"monitor": "val_mae"},
}
MULTILABEL = {
    "data": {"dataset": "user_factories:multilabel", "batch_size": 32, "val_fraction": 0.2},
    "task": {"kind": "multilabel", "metrics": ["f1", "acc", "hamming"]},
    "model": {"arch": "mlp", "hidden": [32], "dropout": 0.1},
    "optim": {"name": "adam", "lr": 0.01},
    "checkpoint": {"monitor": "val_f1"},
}
# Resume exactness: shuffling, dropout, accumulation, AdamW moments, a schedule.
EXACT = {
    "run": {"epochs": 3},
    "optim": {"name": "adamw", "lr": 0.01, "weight_decay": 0.01},
    "schedule": {"name": "cosine", "warmup_steps": 3},
    "train": {"grad_accum": 2, "log_every": 1},
    "checkpoint": {"every_steps": 5, "keep_last": 0},
}


@pytest.fixture()
def factories(tmp_path, monkeypatch):
    (tmp_path / "user_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("user_factories", None)
    return tmp_path


def test_a_regression_factory_reports_its_metrics_everywhere(factories, tmp_path):
    data = profile_dict(tmp_path, REGRESSION, {"run": {"epochs": 4}, "log": {"csv": True}})
    done = train(data)

    started = done.of("run_started")[0]
    assert (started.task, started.loss, started.num_classes) == ("regression", "mse", 2)
    assert started.metrics == ["mae", "r2", "rmse"] and started.input_shape == [6]
    ends = done.jsonl()
    epoch_ends = [e for e in ends if e["kind"] == "epoch_end"]
    last = epoch_ends[-1]
    for key in ("train_mae", "train_rmse", "val_mae", "val_r2", "val_rmse"):
        assert isinstance(last[key], float), key
    assert last["train_acc"] is None and last["val_acc"] is None
    assert last["val_r2"] > 0.5  # a linear target: learnt in a few epochs
    assert epoch_ends[-1]["val_mae"] < epoch_ends[0]["val_mae"]
    with open(done.run_dir / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0])[:7] == [
        "epoch", "step", "train_loss", "train_mae", "train_rmse", "val_loss", "val_mae"
    ]  # fmt: skip
    assert float(rows[-1]["val_r2"]) == pytest.approx(last["val_r2"])
    best = load(done.ckpt_dir / "best.pt")
    assert best["best_checkpoint"]["best"] == min(e["val_mae"] for e in epoch_ends)
    assert best["task"]["kind"] == "regression" and best["task"]["outputs"] == 2
    finished = done.of("run_finished")[0]
    assert finished.headline == "val_mae" and finished.final_headline == last["val_mae"]


def test_a_multilabel_dataset_with_names_trains_and_keeps_its_label_names(factories, tmp_path):
    done = train(profile_dict(tmp_path, MULTILABEL, {"run": {"epochs": 3}}))

    started = done.of("run_started")[0]
    assert (started.task, started.loss, started.num_classes) == ("multilabel", "bce", 4)
    assert started.classes == ["a", "b", "c", "d"]
    assert started.val_samples == 100  # val None: data.val_fraction 0.2 of 500
    last = [e for e in done.jsonl() if e["kind"] == "epoch_end"][-1]
    assert last["val_f1"] > 0.6
    assert last["train_hamming"] == pytest.approx(1 - last["train_acc"])
    assert load(done.ckpt_dir / "last.pt")["task"]["classes"] == ["a", "b", "c", "d"]


def _all_metrics(records: list[dict]) -> list[tuple]:
    """metrics() and every train_/val_ metric of each epoch_end."""
    extra = [
        tuple(sorted((k, v) for k, v in r.items() if k.startswith(("train_", "val_"))))
        for r in records
        if r["kind"] == "epoch_end"
    ]
    return metrics(records) + extra


def _final(done) -> dict:
    saved = load(done.ckpt_dir / "last.pt")
    saved.pop("time"), saved["progress"].pop("events")
    return {"model": done.run.model.state_dict(), "last.pt": saved}


@pytest.mark.parametrize(
    "task,cache,workers",
    [
        (REGRESSION, "auto", 0),  # collated once: the cached device path
        (REGRESSION, "stream", 1),  # the user's items through a DataLoader worker
        (MULTILABEL, "auto", 0),
        (MULTILABEL, "stream", 0),
    ],
    ids=["regression-cached", "regression-streamed", "multilabel-cached", "multilabel-streamed"],
)
def test_resume_of_a_factory_run_is_exact_on_both_data_paths(
    factories, tmp_path, task, cache, workers
):
    data = profile_dict(tmp_path, task, EXACT, {"data": {"cache": cache, "num_workers": workers}})
    first = train(data)
    assert first.of("run_started")[0].data_cache == ("device" if cache == "auto" else "stream")
    steps = sorted(int(p.stem[5:]) for p in first.ckpt_dir.glob("step-*.pt"))
    mid = steps[len(steps) // 2]  # inside an epoch or at its end, whichever it is

    again = train(resume=first.ckpt_dir / f"step-{mid:06d}.pt", trust_code=True)  # our code

    assert_same(_final(again), _final(first))
    assert _all_metrics(again.jsonl()) == _all_metrics(first.jsonl())


def test_torchrun_with_two_processes_matches_one_for_a_regression(factories, tmp_path):
    data = profile_dict(
        tmp_path,
        REGRESSION,
        {"run": {"epochs": 3, "seed": 3}, "model": {"dropout": 0.0}, "train": {"log_every": 5}},
        {"data": {"batch_size": 16}, "checkpoint": {"every_epochs": 0, "save_best": False}},
    )
    path = write_toml(tmp_path / "ddp.toml", data)
    env = {"PYTHONPATH": f"{factories}:{REPO}", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "engine.cli", "run", str(path)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    ddp_dir = printed_run_dir(done.stdout)
    single = train(profile_dict(tmp_path, data, {"data": {"batch_size": 32}}))

    ddp = torch.load(ddp_dir / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key, value in single.run.model.state_dict().items():
        torch.testing.assert_close(ddp[key], value, rtol=0, atol=1e-5)
    ends = [e for e in events_jsonl(ddp_dir) if e["kind"] == "epoch_end"]
    alone = [e for e in single.jsonl() if e["kind"] == "epoch_end"]
    for a, b in zip(ends, alone, strict=True):  # train sums and torchmetrics meet per process
        for key in ("train_loss", "train_mae", "val_loss", "val_mae", "val_r2"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_the_regression_example_reaches_r2_0_4_and_exports_with_its_card(tmp_path):
    out = str(tmp_path / "runs")
    r = mpt("run", "profiles/diabetes-regression.toml", "--set", f"run.out_dir={out}", cwd=REPO)
    assert r.returncode == 0, r.stderr
    run_dir = printed_run_dir(r.stdout)
    last = [e for e in events_jsonl(run_dir) if e["kind"] == "epoch_end"][-1]
    assert last["val_r2"] >= 0.4, last
    assert " r2 " in r.stdout and " val " in r.stdout and "final val_mae" in r.stdout

    shown = mpt("show", str(run_dir), cwd=tmp_path)
    assert shown.returncode == 0 and "VAL R2" in shown.stdout and "best val mae" in shown.stdout

    exported = mpt("export", str(run_dir), "--format", "torchscript", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    assert "predictions [batch, 1]" in exported.stdout
    (model_file,) = (run_dir / "exports").glob("*.torchscript.pt")
    card = json.loads(model_file.with_name(model_file.name + ".json").read_text())
    assert (card["task"], card["input_shape"], card["outputs"]) == ("regression", [10], 1)
    scripted = torch.jit.load(str(model_file))
    assert scripted(torch.zeros(3, 10)).shape == (3, 1)


@pytest.mark.parametrize(
    "profile,headline",
    [("digits-f1.toml", "val_f1"), ("digits-multilabel.toml", "val_f1")],
)
def test_the_example_profiles_train_end_to_end(tmp_path, monkeypatch, profile, headline):
    from engine.profile import load_profile
    from engine.run import Run

    monkeypatch.chdir(REPO)  # as its comment says: run from the repository root
    overrides = [f"run.out_dir={json.dumps(str(tmp_path / 'runs'))}", "run.epochs=3"]
    run = Run.start(load_profile(f"profiles/{profile}", overrides))  # what `mpt run` starts
    assert run.join(timeout=240) == "completed", run.error
    last = [e for e in events_jsonl(run.run_dir) if e["kind"] == "epoch_end"][-1]
    assert last[headline] > 0.5, last


def test_the_resnet18_finetune_example_loads_a_pretrained_file_and_freezes(tmp_path):
    import torchvision

    weights = tmp_path / "resnet18-imagenet.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)  # 1000 classes
    out = str(tmp_path / "runs")
    r = mpt(
        "run", "profiles/resnet18-finetune.toml", "--set", f"run.out_dir={out}",
        "--set", f"model.pretrained={json.dumps(str(weights))}", "--set", "run.epochs=1",
        "--set", "data.synthetic_samples=256", "--set", "data.synthetic_shape=[3, 16, 16]",
        "--set", "run.device=cpu", cwd=REPO,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    run_dir = printed_run_dir(r.stdout)
    records = events_jsonl(run_dir)
    started = records[0]
    assert started["trainable_parameters"] < started["parameters"]
    warnings = " ".join(e["message"] for e in records if e["kind"] == "warning")
    assert "fc.weight" in warnings  # the 1000-class head starts fresh, and says so
    assert "of them trained" in r.stdout


BAD = {
    "r2 for classification": (
        {"task": {"metrics": ["acc", "r2"]}},
        "task.metrics: 'r2' does not fit task.kind 'classification'",
    ),
    "unknown metric": ({"task": {"metrics": ["accuracy"]}}, "unknown metric 'accuracy'"),
    "monitor not reported": (
        {"checkpoint": {"monitor": "val_f1"}},
        "checkpoint.monitor: must be one of val_loss, train_loss, val_acc, train_acc",
    ),
    "factory missing": (
        {"data": {"dataset": "user_factories:nothing"}},
        "data.dataset 'user_factories:nothing'",
    ),
    "class indices for multilabel": (
        {"data": {"dataset": "user_factories:regression"}, "task": {"kind": "multilabel"}},
        "data.dataset",
    ),
    "freeze matches nothing": ({"model": {"freeze": ["backbone."]}}, "model.freeze"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_sentence_exit_2_and_no_run_directory(factories, tmp_path, case):
    extra, expected = BAD[case]
    path = write_toml(tmp_path / "p.toml", profile_dict(tmp_path / "runs", extra))
    r = mpt("run", str(path), cwd=factories)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert expected in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert not list((tmp_path / "runs").glob("*/*")), "a run directory was left behind"


def test_the_resume_hint_after_ctrl_c_names_the_profile_that_names_code(factories, tmp_path):
    # `mpt run --resume RUN_DIR` alone would be refused (a checkpoint never makes mpt
    # import code): the hint is a command that works.
    data = profile_dict(tmp_path / "runs", REGRESSION, {"run": {"epochs": 500}})
    path = write_toml(factories / "mine.toml", data)
    marker = tmp_path / "imported"
    proc = spawn_mpt(
        "run", path, cwd=factories, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )  # fmt: skip
    try:
        wait_for(lambda: run_dir_of(tmp_path / "runs" / "tiny"), 120, "the run directory")
        run_dir = run_dir_of(tmp_path / "runs" / "tiny")
        wait_for(lambda: "epoch_end" in _text(run_dir / "events.jsonl"), 120, "an epoch")
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    hint = f"resume with: mpt run {path} --resume {run_dir}"
    assert hint in out.decode().splitlines()
    env = {"MPT_TEST_MARKER": str(marker)}  # the factory module writes it when imported

    alone = mpt("run", "--resume", run_dir, cwd=factories, env=env)  # the checkpoint alone

    assert alone.returncode == 2, alone.stderr
    assert "its profile imports code 'user_factories:regression'" in alone.stderr
    assert "--trust-code" in alone.stderr and not marker.exists()
    step = load(run_dir / "checkpoints" / "last.pt")["progress"]["step"]
    again = mpt(*hint.removeprefix("resume with: mpt ").split(), "--set",
                f"run.max_steps={step + 3}", cwd=factories, env=env)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert marker.read_text() == "imported\n"  # the user's own profile: their consent


def _text(path: Path) -> str:
    return path.read_text() if path.is_file() else ""
