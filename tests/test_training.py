"""The training loop on real data: optimizers, schedules, precision, accumulation, clipping,
seeding, models. Every run goes through the engine's own Run handle; what the run built is
seen through its events, its model (Run.model) and the checkpoints it wrote."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
from conftest import BASE, merge, run_profile
from durable_helpers import load
from durable_helpers import train as train_durable

from engine.errors import ModelError
from engine.models import build_model
from engine.optim import LRFactor, Schedule, build_optimizer
from engine.precision import AUTOCAST_DTYPES
from engine.profile import ModelSection, ScheduleSection

# digits with val_fraction 0.2: 1438 training samples, so 23 steps an epoch at batch 64.
STEPS_PER_EPOCH = 23


def lrs_by_step(done) -> dict[int, float]:
    return {e.step: e.lr for e in done.of("step")}


def all_close(a: dict, b: dict, atol: float) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=0) for k in a)


def last_checkpoint(done) -> dict:
    return load(done.run.run_dir / "checkpoints" / "last.pt")


def settings(group: dict) -> dict:
    """An optimizer's param group without its parameters: the optimizer's settings."""
    return {k: v for k, v in group.items() if k != "params"}


# ---- optimizers ----

OPTIMIZERS = {
    "sgd": ({"lr": 0.1, "momentum": 0.9}, torch.optim.SGD),
    "adam": ({"lr": 0.003}, torch.optim.Adam),
    "adamw": ({"lr": 0.003, "weight_decay": 0.01}, torch.optim.AdamW),
    "rmsprop": ({"lr": 0.001}, torch.optim.RMSprop),
    "adagrad": ({"lr": 0.05}, torch.optim.Adagrad),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_each_optimizer_lowers_the_loss_on_digits(train, name):
    options, cls = OPTIMIZERS[name]
    done = train(
        {"optim": {"name": name, **options}, "run": {"epochs": 3}, "train": {"log_every": 1}},
        write=True,
    )
    # The optimizer the run saved is the torch class the name stands for, with its settings
    # (AdamW differs from Adam only in them: decoupled weight decay).
    built = build_optimizer(done.run.model, done.run.profile.optim, torch.device("cpu"))
    assert type(built) is cls
    saved = settings(last_checkpoint(done)["optimizer"]["param_groups"][0])
    assert settings(built.state_dict()["param_groups"][0]).items() <= saved.items()
    first_step_loss = done.of("step")[0].loss
    assert first_step_loss > 1.5  # about ln(10) before any learning
    assert done.last_epoch.train_loss < 0.4 * first_step_loss
    assert done.last_epoch.val_loss < 0.4 * first_step_loss
    assert done.last_epoch.val_acc > 0.85


def test_optimizer_settings_reach_the_torch_optimizer(train):
    done = train(
        {
            "optim": {"name": "adamw", "lr": 0.002, "betas": [0.8, 0.95], "weight_decay": 0.1},
            "run": {"max_steps": 1},
        },
        write=True,
    )
    group = last_checkpoint(done)["optimizer"]["param_groups"][0]
    assert (group["lr"], group["betas"], group["weight_decay"]) == (0.002, (0.8, 0.95), 0.1)


# ---- schedules: the lr curve against hand-computed values ----


def factor(step: int, total: int = 100, spe: int = 10, base_lr: float = 0.1, **cfg) -> float:
    return LRFactor(ScheduleSection(**cfg), base_lr, spe, total)(step)


def test_lr_factor_none_is_constant():
    assert [factor(s, name="none") for s in (0, 1, 50, 100)] == [1.0, 1.0, 1.0, 1.0]


def test_lr_factor_step_decays_every_step_size_epochs():
    # step_size 2 epochs of 10 steps: x0.5 at steps 20, 40, ...
    got = [factor(s, name="step", step_size=2, gamma=0.5) for s in (0, 19, 20, 39, 40, 60)]
    assert got == [1.0, 1.0, 0.5, 0.5, 0.25, 0.125]


def test_lr_factor_exponential_is_gamma_per_epoch_applied_smoothly():
    got = [factor(s, name="exponential", gamma=0.5) for s in (0, 5, 10, 20, 25)]
    assert got == pytest.approx([1.0, 0.5**0.5, 0.5, 0.25, 0.5**2.5])


def test_lr_factor_cosine_falls_to_min_lr_at_the_end():
    cfg = dict(name="cosine", min_lr=0.01)  # floor 0.01 / 0.1 = 0.1 of the base lr
    got = [factor(s, **cfg) for s in (0, 25, 50, 75, 100, 150)]
    half_way = 0.1 + 0.9 * 0.5
    quarter = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))
    three_q = 0.1 + 0.9 * 0.5 * (1 + math.cos(3 * math.pi / 4))
    assert got == pytest.approx([1.0, quarter, half_way, three_q, 0.1, 0.1])


def test_lr_factor_linear_warmup_then_the_schedule():
    cfg = dict(name="cosine", warmup_steps=4, warmup_start_factor=0.2)
    got = [factor(s, total=104, **cfg) for s in (0, 1, 2, 3, 4, 54, 104)]
    assert got == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 0.5, 0.0])


def test_lr_factor_warmup_epochs_add_to_warmup_steps():
    f = LRFactor(ScheduleSection(name="none", warmup_steps=2, warmup_epochs=1), 0.1, 5, 100)
    assert f.warmup == 7
    assert f(0) == pytest.approx(0.1) and f(7) == 1.0


def _optimizer(lr=0.1):
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)


def test_plateau_cuts_the_lr_when_validation_stops_improving():
    opt = _optimizer()
    schedule = Schedule(opt, ScheduleSection(name="plateau", patience=0, factor=0.5), 0.1, 5, 20)
    lrs = []
    for val_loss in [1.0, 1.0, 1.0, 0.5, 0.5]:
        schedule.after_validation(val_loss)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1, 0.05, 0.025, 0.025, 0.0125])


def test_plateau_waits_patience_validations():
    opt = _optimizer()
    schedule = Schedule(opt, ScheduleSection(name="plateau", patience=2, factor=0.1), 0.1, 5, 20)
    lrs = []
    for _ in range(4):
        schedule.after_validation(1.0)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1, 0.1, 0.1, 0.01])


def test_plateau_after_a_warmup_keeps_its_cuts():
    opt = _optimizer()
    cfg = ScheduleSection(name="plateau", patience=0, factor=0.5, warmup_steps=4)
    schedule = Schedule(opt, cfg, 0.1, 5, 20)
    lrs = [opt.param_groups[0]["lr"]]
    for step in range(1, 7):
        opt.step()
        schedule.after_step(step)
        lrs.append(opt.param_groups[0]["lr"])
    schedule.after_validation(1.0)
    schedule.after_validation(1.0)  # no improvement: 0.1 -> 0.05
    for step in range(7, 9):
        opt.step()
        schedule.after_step(step)  # the warmup's LambdaLR must not undo the cut
    lrs.append(opt.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.01, 0.0325, 0.055, 0.0775, 0.1, 0.1, 0.1, 0.05])


def onecycle(step: int, total: int, max_lr: float, pct: float) -> float:
    """torch's OneCycleLR (cos annealing, div_factor 25, final_div_factor 1e4) by hand."""

    def anneal(start, end, frac):
        return end + (start - end) / 2 * (math.cos(math.pi * frac) + 1)

    initial, final, peak = max_lr / 25, max_lr / 25 / 1e4, pct * total - 1
    if step <= peak:
        return anneal(initial, max_lr, step / peak)
    return anneal(max_lr, final, (step - peak) / (total - 1 - peak))


def test_onecycle_rises_to_max_lr_then_falls_and_stays_at_its_floor():
    opt = _optimizer()
    cfg = ScheduleSection(name="onecycle", max_lr=0.1, pct_start=0.25)
    schedule = Schedule(opt, cfg, 0.01, 5, 20)
    lrs = [opt.param_groups[0]["lr"]]
    for step in range(1, 21):
        opt.step()
        schedule.after_step(step)
        lrs.append(opt.param_groups[0]["lr"])
    want = [onecycle(min(s, 19), 20, 0.1, 0.25) for s in range(21)]
    assert lrs == pytest.approx(want)
    assert lrs[0] == pytest.approx(0.004) and lrs[4] == pytest.approx(0.1)
    assert lrs[-1] == lrs[-2] == pytest.approx(0.1 / 25 / 1e4)  # not bent back up


# The same curves as a run reports them: the lr in each step event (after that step).


def _run_lrs(train, schedule: dict, epochs: int = 2, lr: float = 0.1):
    done = train(
        {
            "optim": {"name": "sgd", "lr": lr},
            "schedule": schedule,
            "run": {"epochs": epochs},
            "train": {"log_every": 1},
        }
    )
    lrs = lrs_by_step(done)
    assert sorted(lrs) == list(range(1, epochs * STEPS_PER_EPOCH + 1))
    return done, lrs


def test_run_without_schedule_keeps_the_lr(train):
    _, lrs = _run_lrs(train, {"name": "none"})
    assert set(lrs.values()) == {0.1}


def test_run_step_schedule_halves_the_lr_each_epoch(train):
    done, lrs = _run_lrs(train, {"name": "step", "step_size": 1, "gamma": 0.5}, epochs=3)
    for step, lr in lrs.items():
        assert lr == pytest.approx(0.1 * 0.5 ** (step // STEPS_PER_EPOCH)), step
    assert [e.lr for e in done.of("epoch_end")] == pytest.approx([0.05, 0.025, 0.0125])


def test_run_exponential_schedule(train):
    _, lrs = _run_lrs(train, {"name": "exponential", "gamma": 0.5})
    for step, lr in lrs.items():
        assert lr == pytest.approx(0.1 * 0.5 ** (step / STEPS_PER_EPOCH)), step


def test_run_cosine_schedule_ends_at_min_lr(train):
    done, lrs = _run_lrs(train, {"name": "cosine", "min_lr": 0.001})
    total = 2 * STEPS_PER_EPOCH
    for step, lr in lrs.items():
        want = 0.001 + (0.1 - 0.001) * 0.5 * (1 + math.cos(math.pi * step / total))
        assert lr == pytest.approx(want), step
    assert done.last_epoch.lr == pytest.approx(0.001)


def test_run_linear_warmup_rises_from_the_start_factor(train):
    _, lrs = _run_lrs(train, {"name": "none", "warmup_steps": 10, "warmup_start_factor": 0.1})
    for step, lr in lrs.items():
        want = 0.1 * (0.1 + 0.9 * step / 10) if step < 10 else 0.1
        assert lr == pytest.approx(want), step


def test_run_warmup_epochs_then_step_decay(train):
    schedule = {"name": "step", "warmup_epochs": 1, "step_size": 1, "gamma": 0.5}
    _, lrs = _run_lrs(train, schedule, epochs=3)
    spe = STEPS_PER_EPOCH
    for step, lr in lrs.items():
        warming = step < spe
        want = 0.1 * (0.1 + 0.9 * step / spe if warming else 0.5 ** ((step - spe) // spe))
        assert lr == pytest.approx(want), step


def test_run_onecycle_schedule(train):
    _, lrs = _run_lrs(train, {"name": "onecycle", "max_lr": 0.05, "pct_start": 0.3})
    total = 2 * STEPS_PER_EPOCH
    for step, lr in lrs.items():
        assert lr == pytest.approx(onecycle(min(step, total - 1), total, 0.05, 0.3)), step


def test_run_plateau_cuts_the_lr_when_val_loss_stalls(train):
    # An lr so small that val_loss moves by far less than the 1e-4 relative threshold.
    done = train(
        {
            "optim": {"name": "sgd", "lr": 1e-7},
            "schedule": {"name": "plateau", "patience": 0, "factor": 0.5},
            "run": {"epochs": 3},
        }
    )
    assert [e.lr for e in done.of("epoch_end")] == pytest.approx([1e-7, 5e-8, 2.5e-8])


# ---- precision ----


@pytest.mark.parametrize("mode", ["fp32", "bf16", "fp16"])
def test_each_precision_trains_to_a_sane_accuracy(train, mode):
    done = train(
        {
            "precision": {"mode": mode},
            "optim": {"name": "adam", "lr": 0.003},
            "run": {"epochs": 3},
        },
        write=True,
    )
    want = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[mode]
    assert AUTOCAST_DTYPES.get(mode) == want
    assert done.of("run_started")[0].precision == mode
    assert (last_checkpoint(done)["scaler"] is not None) == (mode == "fp16")  # fp16 scales
    assert done.last_epoch.val_acc > 0.9
    assert all(math.isfinite(e.train_loss) for e in done.of("epoch_end"))


def test_reduced_precision_really_changes_the_arithmetic(train):
    weights = {}
    for mode in ("fp32", "bf16", "fp16"):
        done = train({"precision": {"mode": mode}, "run": {"max_steps": 5}})
        weights[mode] = done.weights()
    assert not all_close(weights["fp32"], weights["bf16"], atol=0)
    assert not all_close(weights["fp32"], weights["fp16"], atol=0)
    # ... but not by much: the same five steps, each in its own precision.
    assert all_close(weights["fp32"], weights["bf16"], atol=1e-2)


# ---- gradient accumulation ----


def test_grad_accum_4_of_16_equals_one_batch_of_64(train):
    common = {"run": {"epochs": 2}, "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9}}
    accumulated = train(merge(common, {"data": {"batch_size": 16}, "train": {"grad_accum": 4}}))
    one_batch = train(merge(common, {"data": {"batch_size": 64}, "train": {"grad_accum": 1}}))
    assert accumulated.of("run_finished")[0].step == one_batch.of("run_finished")[0].step == 46
    assert all_close(accumulated.weights(), one_batch.weights(), atol=1e-5)
    a, b = accumulated.last_epoch, one_batch.last_epoch
    assert a.train_loss == pytest.approx(b.train_loss, abs=1e-5)
    assert a.val_acc == b.val_acc


def test_grad_accum_is_not_the_same_as_small_batches(train):
    # The counterpart of the test above: without accumulation, batch 16 trains differently.
    common = {"run": {"epochs": 1}, "optim": {"name": "sgd", "lr": 0.1}}
    small = train(merge(common, {"data": {"batch_size": 16}}))
    big = train(merge(common, {"data": {"batch_size": 64}}))
    assert not all_close(small.weights(), big.weights(), atol=1e-3)


def test_grad_accum_counts_optimizer_steps_not_micro_batches(train):
    done = train({"data": {"batch_size": 16}, "train": {"grad_accum": 4, "log_every": 1}})
    started = done.of("run_started")[0]
    assert (started.batch_size, started.grad_accum, started.global_batch) == (16, 4, 64)
    assert started.steps_per_epoch == STEPS_PER_EPOCH == len(done.of("step"))


# ---- gradient clipping ----


def _one_sgd_step_update_norm(out_dir: Path, clip_norm: float, mode: str = "fp32") -> float:
    """Plain SGD with lr 1: a step's update is exactly the (clipped) gradient. Measured on
    the step after a checkpoint, resumed from it: every clip_norm starts from the same
    weights, and so clips the same gradient."""
    run = {"epochs": 2, "max_steps": 1, "out_dir": str(out_dir)}  # ends after step 1
    sgd = {"optim": {"name": "sgd", "lr": 1.0}, "run": run}
    first = run_profile(merge(BASE, merge(sgd, {"precision": {"mode": mode}})), write=True)
    checkpoint = first.run.run_dir / "checkpoints" / "last.pt"
    overrides = [f"train.clip_norm={clip_norm}", "run.max_steps=2"]
    done = train_durable(resume=checkpoint, overrides=overrides)
    before, after = load(checkpoint)["model"], done.run.model.state_dict()
    return math.sqrt(sum(float(((after[k] - before[k]) ** 2).sum()) for k in before))


@pytest.mark.parametrize("mode", ["fp32", "fp16"])
def test_clip_norm_bounds_the_gradient_norm(out_dir, mode):
    norm = _one_sgd_step_update_norm(out_dir, 1e-3, mode)
    assert norm == pytest.approx(1e-3, rel=1e-3)  # the gradient is far larger: clipped to 1e-3


def test_without_clipping_the_same_gradient_is_larger(out_dir):
    assert _one_sgd_step_update_norm(out_dir, 0.0) > 0.05


def test_clipping_changes_the_result_of_a_run(train):
    common = {"optim": {"name": "sgd", "lr": 0.5}, "run": {"max_steps": 10}}
    clipped = train(merge(common, {"train": {"clip_norm": 0.1}}))
    free = train(common)
    assert not all_close(clipped.weights(), free.weights(), atol=1e-4)


# ---- seeding ----

AUGMENTED = {
    "model": {"dropout": 0.3},
    "data": {"random_crop": 1, "hflip": True},
    "run": {"epochs": 2},
}


def test_same_seed_gives_identical_weights(train):
    first = train(merge(AUGMENTED, {"run": {"seed": 7}}))
    second = train(merge(AUGMENTED, {"run": {"seed": 7}}))
    a, b = first.weights(), second.weights()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [e.train_loss for e in first.of("epoch_end")] == [
        e.train_loss for e in second.of("epoch_end")
    ]


def test_different_seeds_give_different_weights(train):
    a = train(merge(AUGMENTED, {"run": {"seed": 7}})).weights()
    b = train(merge(AUGMENTED, {"run": {"seed": 8}})).weights()
    assert not any(torch.equal(a[k], b[k]) for k in a)


def test_deterministic_mode_does_not_outlive_its_run(train):
    # One process may run several profiles (the TUI does): run.deterministic is per run.
    try:
        train({"run": {"deterministic": True, "max_steps": 1}})
        train({"run": {"deterministic": False, "max_steps": 1}})
        assert not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)


def test_deterministic_on_cuda_fixes_the_cublas_workspace_unless_the_user_did(monkeypatch):
    # torch refuses cuBLAS calls under use_deterministic_algorithms without it (PyTorch docs,
    # "Reproducibility"). The switch itself needs no GPU: only a device that names CUDA.
    from engine.device import set_process_switches

    cuda = torch.device("cuda")
    try:
        monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
        set_process_switches(torch.device("cpu"), True, 0)
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        set_process_switches(cuda, False, 0)
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
        set_process_switches(cuda, True, 0)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
        set_process_switches(cuda, True, 0)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = False


# ---- models ----

ARCH_RUNS = {
    "mlp": {"model": {"arch": "mlp", "hidden": [32, 16]}},
    "cnn": {"model": {"arch": "cnn", "channels": [8, 16], "hidden": [32]}},
    "resnet18": {
        "model": {"arch": "resnet18"},
        "data": {
            "dataset": "synthetic",
            "synthetic_shape": [3, 32, 32],
            "synthetic_samples": 40,
            "synthetic_classes": 4,
            "batch_size": 8,
            "eval_batch_size": 8,
        },
        "run": {"max_steps": 2},
        "train": {"log_every": 1},
    },
}


@pytest.mark.parametrize("arch", list(ARCH_RUNS))
def test_each_builtin_model_builds_and_trains_a_step(train, arch):
    done = train(merge({"run": {"max_steps": 3}, "train": {"log_every": 1}}, ARCH_RUNS[arch]))
    started = done.of("run_started")[0]
    assert started.arch == arch and started.parameters > 0
    steps = done.of("step")
    assert len(steps) == done.of("run_finished")[0].step >= 2
    assert all(math.isfinite(s.loss) for s in steps)
    assert done.last_epoch.val_acc is not None


def test_resnet18_small_input_keeps_32px_images_from_shrinking():
    small = build_model(ModelSection(arch="resnet18"), (3, 32, 32), 10)
    assert small.conv1.kernel_size == (3, 3) and isinstance(small.maxpool, torch.nn.Identity)
    imagenet = build_model(ModelSection(arch="resnet18", small_input=False), (1, 64, 64), 10)
    assert imagenet.conv1.kernel_size == (7, 7) and imagenet.conv1.in_channels == 1
    assert imagenet(torch.zeros(2, 1, 64, 64)).shape == (2, 10)


def test_mlp_has_the_tutorial_shape():
    model = build_model(ModelSection(arch="mlp", hidden=[128]), (1, 28, 28), 10)
    linear = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(784, 128), (128, 10)]


def test_cnn_refuses_images_smaller_than_its_pooling():
    with pytest.raises(ModelError, match=r"model.arch 'cnn' needs images of at least 2x2"):
        build_model(ModelSection(arch="cnn"), (1, 1, 1), 10)


# ---- the user's own model ----

USER_MODELS = """
from torch import nn

calls = []


def build(in_shape, num_classes):
    calls.append((in_shape, num_classes))
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))


def too_few_outputs(in_shape, num_classes):
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes - 1))


def broken(in_shape, num_classes):
    raise ValueError("no such layer")


def not_a_module(in_shape, num_classes):
    return "model"
"""


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    package = tmp_path / "usermodels_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "usermodels_pkg.nets"
    for name in ("usermodels_pkg.nets", "usermodels_pkg"):
        __import__("sys").modules.pop(name, None)


def test_user_factory_gets_in_shape_and_num_classes_and_trains(train, user_models):
    done = train(
        {
            "model": {"arch": f"{user_models}:build"},
            "optim": {"name": "adam", "lr": 0.01},
            "run": {"epochs": 2},
        }
    )
    module = __import__(user_models, fromlist=["calls"])
    assert module.calls == [((1, 8, 8), 10)]
    assert done.last_epoch.val_acc > 0.8


def test_user_model_with_the_wrong_output_shape_fails_at_the_first_batch(train, user_models):
    done = train({"model": {"arch": f"{user_models}:too_few_outputs"}}, check=False)
    assert done.reason == "failed" and done.run.user_error
    assert done.run.error == (
        "the model outputs (2, 9) for 2 class indices of 10 classes; it must output (2, 10), "
        "one score per class"
    )
    (failed,) = done.of("run_failed")
    assert failed.step == 0 and failed.user_error and failed.traceback == ""
    assert not done.of("step")


def test_user_factory_that_raises_is_reported_with_its_place(train, user_models):
    done = train({"model": {"arch": f"{user_models}:broken"}}, check=False)
    assert done.run.user_error
    assert done.run.error.startswith(
        f"model.arch '{user_models}:broken': the factory raised ValueError: no such layer ("
    )
    assert "nets.py:" in done.run.error


def test_user_factory_must_return_a_module(train, user_models):
    done = train({"model": {"arch": f"{user_models}:not_a_module"}}, check=False)
    assert done.run.error == (
        f"model.arch '{user_models}:not_a_module': the factory must return a "
        "torch.nn.Module, got str"
    )


def test_user_module_that_does_not_exist_is_a_clear_error(train):
    done = train({"model": {"arch": "no_such_module_xyz:build"}}, check=False)
    assert done.run.user_error
    assert done.run.error == (
        "model.arch 'no_such_module_xyz:build': cannot import module 'no_such_module_xyz' "
        "(No module named 'no_such_module_xyz')"
    )


# ---- limits ----


def test_max_steps_stops_the_run_at_that_step(train):
    done = train({"run": {"epochs": 5, "max_steps": 30}})
    finished = done.of("run_finished")[0]
    assert (finished.reason, finished.step) == ("completed", 30)
    assert [e.step for e in done.of("epoch_end")] == [STEPS_PER_EPOCH, 30]
