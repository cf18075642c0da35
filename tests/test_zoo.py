"""Zoo models ("torchvision:NAME", "timm:NAME"), model.pretrained, model.freeze and
optim.lr_mult: real models on real digits (8x8, one channel)."""

from __future__ import annotations

import sys
import warnings

import pytest
import torch
from conftest import BASE, merge, run_profile

from engine.errors import ModelError
from engine.export import export_checkpoint
from engine.finetune import freeze, load_pretrained, trainable_parameters
from engine.models import build_model
from engine.optim import Schedule, build_optimizer
from engine.profile import ModelSection, OptimSection, ScheduleSection

DIGITS = (1, 8, 8)
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """32 real digits images, scaled to [0, 1], as a (32, 1, 8, 8) float batch."""
    from sklearn.datasets import load_digits

    images = load_digits().images[:32] / 16.0
    return torch.tensor(images, dtype=torch.float32).unsqueeze(1)


def zoo(arch: str, outputs: int = 10, shape=DIGITS, seed: int = 0, **options) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelSection(arch=arch, options=options), shape, outputs, CPU)


def first_conv(model: torch.nn.Module) -> torch.nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))


def outputs(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


# ---- the zoos ----


@pytest.mark.parametrize(
    "arch", ["torchvision:resnet18", "torchvision:mobilenet_v3_small", "timm:test_resnet"]
)
def test_a_zoo_model_takes_one_channel_images_and_gives_the_data_outputs(arch, digits):
    model = zoo(arch)
    assert first_conv(model).in_channels == 1
    assert outputs(model, digits).shape == (32, 10)


def test_the_adapted_first_convolution_keeps_its_other_hyper_parameters():
    conv = first_conv(zoo("torchvision:resnet18"))
    assert (conv.out_channels, conv.kernel_size, conv.stride, conv.padding) == (
        64, (7, 7), (2, 2), (3, 3)
    )  # fmt: skip
    assert conv.bias is None


def test_model_options_reach_the_builder():
    model = zoo("torchvision:mobilenet_v3_small", dropout=0.5)
    assert [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)] == [0.5]


@pytest.mark.parametrize(
    "arch, hint",
    [("torchvision:resnet81", "did you mean 'resnet18'"), ("timm:test_resnt", "'test_resnet'")],
)
def test_an_unknown_zoo_name_is_refused_with_close_matches(arch, hint):
    with pytest.raises(ModelError, match=f"model.arch '{arch}'.*{hint}"):
        zoo(arch)


def test_a_detection_model_is_not_an_image_classifier():
    with pytest.raises(ModelError, match="no image classifier 'fcn_resnet50'"):
        zoo("torchvision:fcn_resnet50")


@pytest.mark.parametrize("arch", ["torchvision:resnet18", "timm:test_resnet"])
def test_an_option_the_builder_does_not_take_names_model_options(arch):
    with pytest.raises(ModelError, match=r"model.options \{'depth_of_field': 3\}.*'depth_of"):
        zoo(arch, depth_of_field=3)


@pytest.mark.parametrize("key", ["weights", "pretrained"])
def test_an_option_that_would_download_is_refused(key):
    with pytest.raises(ModelError, match=f"model.options '{key}'.*never downloads"):
        zoo("torchvision:resnet18", **{key: "DEFAULT"})


def test_a_zoo_model_on_data_that_are_not_images_is_refused():
    with pytest.raises(ModelError, match=r"takes images \(C, H, W\).*shape \(64,\)"):
        zoo("timm:test_resnet", shape=(64,))


def test_timm_missing_is_a_sentence(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # `import timm` raises ImportError
    with pytest.raises(ModelError, match=r"needs the timm package.*pip install 'mpt\[timm\]'"):
        zoo("timm:test_resnet")


def test_a_zoo_model_too_big_for_the_memory_is_refused_before_it_is_built(monkeypatch):
    import engine.memory

    monkeypatch.setattr(engine.memory, "host_memory_free", lambda: 10_000_000)  # 10 MB
    with pytest.raises(ModelError, match=r"model.arch 'torchvision:resnet18': the model has "):
        zoo("torchvision:resnet18")


@pytest.fixture
def user_factory(tmp_path, monkeypatch):
    """A module `zoo_factory_mod` with `tiny(in_shape, num_classes, width=4)`."""
    (tmp_path / "zoo_factory_mod.py").write_text(
        "import torch\n"
        "def tiny(in_shape, num_classes, width=4):\n"
        "    c, h, w = in_shape\n"
        "    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(c * h * w, width),\n"
        "                               torch.nn.ReLU(), torch.nn.Linear(width, num_classes))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "zoo_factory_mod:tiny"


def test_model_options_reach_the_users_factory(user_factory):
    model = build_model(ModelSection(arch=user_factory, options={"width": 7}), DIGITS, 10)
    assert model[1].out_features == 7


def test_an_option_the_users_factory_does_not_take_names_model_options(user_factory):
    cfg = ModelSection(arch=user_factory, options={"depth": 3})
    with pytest.raises(ModelError, match=r"model.options \{'depth': 3\}: the factory .* does no"):
        build_model(cfg, DIGITS, 10)


# ---- model.pretrained ----


def test_pretrained_weights_give_the_saved_model_outputs(tmp_path, digits):
    saved = zoo("timm:test_resnet", seed=1)
    torch.save(saved.state_dict(), tmp_path / "w.pt")
    fresh = zoo("timm:test_resnet", seed=2)
    assert load_pretrained(fresh, tmp_path / "w.pt", 10) == []
    assert torch.equal(outputs(fresh, digits), outputs(saved, digits))


@pytest.mark.parametrize(
    "wrap",
    [
        lambda w: {"format": "mpt-checkpoint", "version": 1, "model": w, "profile": {}},
        lambda w: {"state_dict": w, "epoch": 3},
        lambda w: {f"module.{k}": v for k, v in w.items()},  # saved from DDP
    ],
    ids=["mpt-checkpoint", "state_dict-key", "ddp-prefix"],
)
def test_pretrained_reads_checkpoints_and_wrapped_state_dicts(tmp_path, digits, wrap):
    saved = zoo("timm:test_resnet", seed=1)
    torch.save(wrap(saved.state_dict()), tmp_path / "w.pt")
    fresh = zoo("timm:test_resnet", seed=2)
    load_pretrained(fresh, tmp_path / "w.pt", 10)
    assert torch.equal(outputs(fresh, digits), outputs(saved, digits))


def test_a_head_for_other_outputs_starts_fresh_with_a_notice(tmp_path):
    saved = zoo("torchvision:resnet18", outputs=7, seed=1)
    torch.save(saved.state_dict(), tmp_path / "w.pt")
    fresh = zoo("torchvision:resnet18", outputs=10, seed=2)
    head_before = fresh.fc.weight.clone()
    notices = load_pretrained(fresh, tmp_path / "w.pt", 10)
    assert notices == [
        "model.pretrained: fc.weight, fc.bias not loaded (7 -> 10 outputs): the head starts fresh"
    ]
    assert torch.equal(fresh.fc.weight, head_before)
    assert torch.equal(fresh.layer4[1].conv2.weight, saved.layer4[1].conv2.weight)


def test_colour_weights_load_into_a_one_channel_model_summed(tmp_path):
    colour = zoo("torchvision:resnet18", shape=(3, 8, 8), seed=1)
    torch.save(colour.state_dict(), tmp_path / "w.pt")
    grey = zoo("torchvision:resnet18", seed=2)
    notices = load_pretrained(grey, tmp_path / "w.pt", 10)
    assert notices == ["model.pretrained: conv1.weight adapted from 3 to 1 input channel (summed)"]
    assert torch.allclose(grey.conv1.weight, colour.conv1.weight.sum(1, keepdim=True))


def test_weights_of_another_architecture_are_listed_not_loaded(tmp_path):
    torch.save(zoo("torchvision:resnet18").state_dict(), tmp_path / "w.pt")
    model = zoo("torchvision:mobilenet_v3_small")
    with pytest.raises(ModelError) as caught:
        load_pretrained(model, tmp_path / "w.pt", 10)
    message = str(caught.value)
    assert message.startswith(f"model.pretrained '{tmp_path / 'w.pt'}' does not fit the model")
    assert "missing from the file: features.0.0.weight, features.0.1.weight," in message
    assert "not in the model: conv1.weight, bn1.weight, bn1.bias," in message
    assert message.count(", ") < 20 and "more" in message  # the first few of each


def test_weights_of_other_widths_are_listed_by_shape(tmp_path):
    torch.save(zoo("torchvision:mobilenet_v3_small", width_mult=0.5).state_dict(), tmp_path / "w")
    model = zoo("torchvision:mobilenet_v3_small")
    with pytest.raises(ModelError, match=r"other shapes: features.0.0.weight \[8, 1, 3, 3\] in "):
        load_pretrained(model, tmp_path / "w", 10)


def test_a_file_torch_did_not_write_is_a_sentence(tmp_path):
    (tmp_path / "w.pt").write_text("not weights")
    with pytest.raises(ModelError, match="model.pretrained .*not a file torch.save wrote"):
        load_pretrained(zoo("timm:test_resnet"), tmp_path / "w.pt", 10)


def test_a_saved_whole_model_needs_code_and_is_refused(tmp_path):
    model = zoo("timm:test_resnet")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model, tmp_path / "w.pt")
    with pytest.raises(ModelError, match="need code to load.*save model.state_dict"):
        load_pretrained(model, tmp_path / "w.pt", 10)


def test_a_file_without_a_state_dict_is_a_sentence(tmp_path):
    torch.save({"epoch": 3, "note": "no weights"}, tmp_path / "w.pt")
    with pytest.raises(ModelError, match="holds no state_dict"):
        load_pretrained(zoo("timm:test_resnet"), tmp_path / "w.pt", 10)


# ---- model.freeze ----


def test_freeze_counts_and_frozen_parameters_get_no_gradient(digits):
    model = zoo("torchvision:resnet18")
    trainable, total = freeze(model, ["conv1.", "bn1.", "layer"])
    assert (trainable, total) == (512 * 10 + 10, sum(p.numel() for p in model.parameters()))
    assert trainable_parameters(model) == trainable
    model.train()(digits).sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("fc."))
    assert model.fc.weight.grad is not None


def test_a_freeze_prefix_matching_nothing_lists_the_model_prefixes():
    with pytest.raises(
        ModelError,
        match=r"model.freeze 'backbone.' matches no parameter; .*start with conv1., bn1., "
        r"layer1., layer2., layer3. and 2 more",
    ):
        freeze(zoo("torchvision:resnet18"), ["backbone."])


def test_freezing_every_parameter_is_refused():
    with pytest.raises(ModelError, match="model.freeze .* freezes every parameter"):
        freeze(zoo("timm:test_resnet"), ["conv1.", "bn1.", "layer", "fc."])


# ---- optim.lr_mult ----


def lr_groups(model, lr_mult, schedule="none", steps=4, **schedule_keys):
    """The optimizer's lrs by group after `steps` scheduled steps, and its group sizes."""
    cfg = OptimSection(name="sgd", lr=0.1, lr_mult=lr_mult)
    optimizer = build_optimizer(model, cfg, CPU)
    plan = Schedule(optimizer, ScheduleSection(name=schedule, **schedule_keys), 0.1, 5, 20)
    for step in range(1, steps + 1):
        optimizer.step()
        plan.after_step(step)
    groups = optimizer.param_groups
    return [g["lr"] for g in groups], [len(g["params"]) for g in groups]


def test_lr_mult_groups_by_the_longest_prefix_base_group_first():
    model = zoo("torchvision:resnet18")
    freeze(model, ["conv1.", "bn1."])
    lrs, sizes = lr_groups(model, {"layer4.": 0.5, "layer4.1.": 2.0, "fc.": 10.0})
    assert lrs == pytest.approx([0.1, 0.05, 0.2, 1.0])
    # base: layer1 (12 tensors), layer2 and layer3 (15 each, with their downsample);
    # layer4. only: layer4.0 (9); layer4.1. (6); fc (2)
    assert sizes == [42, 9, 6, 2]


@pytest.mark.parametrize(
    "schedule, keys",
    [("cosine", {"warmup_steps": 2}), ("exponential", {"gamma": 0.5}), ("onecycle", {})],
)
def test_every_group_follows_the_schedule_with_its_multiplier(schedule, keys):
    model = zoo("timm:test_resnet")
    lrs, _ = lr_groups(model, {"fc.": 10.0, "conv1.": 0.1}, schedule, **keys)
    base = lrs[0]
    assert base != pytest.approx(0.1)  # the schedule moved it
    assert lrs == pytest.approx([base, base * 10, base * 0.1])


def test_plateau_cuts_every_group_keeping_their_ratio():
    model = zoo("timm:test_resnet")
    cfg = OptimSection(name="sgd", lr=0.1, lr_mult={"fc.": 10.0})
    optimizer = build_optimizer(model, cfg, CPU)
    plan = Schedule(optimizer, ScheduleSection(name="plateau", patience=0), 0.1, 5, 20)
    for loss in (1.0, 2.0, 3.0):
        plan.after_validation(loss)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.001, 0.01])


def test_an_lr_mult_prefix_matching_no_trainable_parameter_is_refused():
    model = zoo("torchvision:resnet18")
    freeze(model, ["conv1."])
    with pytest.raises(ModelError, match=r"optim.lr_mult 'conv1.' matches no trainable param"):
        build_optimizer(model, OptimSection(lr_mult={"conv1.": 0.1}), CPU)


def test_frozen_parameters_are_left_out_of_the_optimizer():
    model = zoo("timm:test_resnet")
    freeze(model, ["conv1.", "bn1.", "layer1."])
    optimizer = build_optimizer(model, OptimSection(name="adamw"), CPU)
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert held == {id(p) for p in model.parameters() if p.requires_grad}


# ---- a run, and its export ----


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """A short run of timm's test_resnet from a 7-output file, its stem frozen, its head
    at 10 x optim.lr."""
    folder = tmp_path_factory.mktemp("finetune")
    start = zoo("timm:test_resnet", outputs=7, seed=3)
    torch.save(start.state_dict(), folder / "start.pt")
    model = {"arch": "timm:test_resnet", "pretrained": str(folder / "start.pt")}
    profile = merge(
        BASE,
        {"run": {"out_dir": str(folder / "runs"), "max_steps": 4}},
        {"model": {**model, "freeze": ["conv1.", "bn1."]}, "optim": {"lr_mult": {"fc.": 10.0}}},
    )
    return run_profile(profile, write=True), start


def test_a_run_starts_from_the_pretrained_weights_and_trains_only_the_unfrozen(finetuned):
    done, start = finetuned
    (notice,) = [e.message for e in done.of("warning")]
    assert notice == (
        "model.pretrained: fc.weight, fc.bias not loaded (7 -> 10 outputs): the head starts fresh"
    )
    (started,) = done.of("run_started")
    assert started.arch == "timm:test_resnet"
    trained, saved = done.weights(), start.state_dict()
    frozen = [n for n, _ in start.named_parameters() if n.startswith(("conv1.", "bn1."))]
    assert frozen and all(torch.equal(trained[n], saved[n]) for n in frozen)
    assert not torch.equal(trained["layer4.0.conv1.weight"], saved["layer4.0.conv1.weight"])


def test_a_zoo_checkpoint_exports_to_torchscript_without_trust_code(finetuned, tmp_path, digits):
    done, _ = finetuned
    out = tmp_path / "m.torchscript.pt"
    export_checkpoint(done.run.run_dir, "torchscript", out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(out))
    assert torch.allclose(loaded(digits), outputs(done.run.model, digits), atol=1e-5)
