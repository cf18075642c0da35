"""engine/task.py: the task's loss and metrics, checked against hand computations and
against sklearn.metrics on real data (sklearn's digits and diabetes)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import task_ranks
import torch
import torch.nn.functional as F
from durable_helpers import REPO
from sklearn import metrics as skm
from sklearn.datasets import load_diabetes, load_digits
from sklearn.utils.class_weight import compute_class_weight

from engine.data import DataBundle, Split
from engine.errors import DataError, ModelError
from engine.profile import TaskSection
from engine.task import build_task

CPU = torch.device("cpu")


# ---- real data and a model trained on it in a blink ----
def _digits():
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16, dtype=torch.float32), torch.tensor(y)


def _fit_logits(x, targets, loss_fn, outputs, steps):
    """A linear model fitted by a few full-batch gradient steps: good, not perfect."""
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], outputs)
    for _ in range(steps):
        model.zero_grad()
        loss_fn(model(x), targets).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
    return model


@pytest.fixture(scope="module")
def digits():
    """Classification: train 1400 / val 397 digits and a model's val logits."""
    x, y = _digits()
    model = _fit_logits(x[:1400], y[:1400], F.cross_entropy, 10, steps=15)
    data = DataBundle(Split(x[:1400], y[:1400]), Split(x[1400:], y[1400:]), 10, (64,), None, None)
    return data, model(x[1400:]).detach(), y[1400:]


def _labels(digit: torch.Tensor) -> torch.Tensor:
    """Four real labels of a digit: even, above 4, drawn with a loop, a one."""
    loops = torch.isin(digit, torch.tensor([0, 6, 8, 9]))
    return torch.stack([digit % 2 == 0, digit > 4, loops, digit == 1], 1).float()


@pytest.fixture(scope="module")
def multilabel():
    x, digit = _digits()
    y = _labels(digit)
    model = _fit_logits(x[:1400], y[:1400], F.binary_cross_entropy_with_logits, 4, steps=10)
    data = DataBundle(
        Split(x[:1400], y[:1400]), Split(x[1400:], y[1400:]), 4, (64,), None, None, "multilabel"
    )
    return data, model(x[1400:]).detach(), y[1400:]


def _diabetes(targets: int):
    """Regression on diabetes: the disease progression (and s5, a blood serum measure),
    and a least-squares fit's predictions of the val split."""
    x, y = load_diabetes(return_X_y=True)
    x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
    y = torch.stack([y / 100, x[:, 8] * 10], 1)[:, :targets]
    x = x[:, [0, 1, 2, 3, 4, 5, 6, 7, 9]]  # without s5, a target
    data = DataBundle(
        Split(x[:300], y[:300]), Split(x[300:], y[300:]), targets, (9,), None, None, "regression"
    )
    ones = torch.ones(len(x), 1)
    solution = torch.linalg.lstsq(torch.cat([x, ones], 1)[:300], y[:300]).solution
    return data, (torch.cat([x, ones], 1) @ solution)[300:]  # least squares, on val


def _task(data, kind=None, **keys):
    return build_task(TaskSection(kind=kind or data.kind, **keys), data, CPU)


def _epoch(task, out, y, batch=100):
    """One validation epoch over (out, y) in batches, as the loop runs it."""
    for i in range(0, len(y), batch):
        task.val_update(out[i : i + batch], y[i : i + batch])
    return task.val_compute()


def _bundle(kind, outputs, y):
    return DataBundle(Split(torch.zeros(len(y), 3), y), None, outputs, (3,), None, None, kind)


# ---- losses ----
def test_default_cross_entropy_is_torchs_own_bit_for_bit(digits):
    data, out, y = digits
    task = _task(data)
    assert task.loss_name == "cross_entropy" and task.class_weights is None
    for reduction in ("mean", "sum"):
        assert torch.equal(
            task.loss(out, y, reduction), F.cross_entropy(out, y, reduction=reduction)
        )


def test_label_smoothing_matches_the_hand_formula(digits):
    data, out, y = digits
    eps = 0.1
    logp = out.log_softmax(1)
    per_sample = -(1 - eps) * logp.gather(1, y[:, None])[:, 0] - eps / 10 * logp.sum(1)
    task = _task(data, label_smoothing=eps)
    torch.testing.assert_close(task.loss(out, y, "mean"), per_sample.mean())
    torch.testing.assert_close(task.loss(out, y, "sum"), per_sample.sum())


def test_class_weights_mean_divides_by_the_samples_not_the_weights(digits):
    data, out, y = digits
    weights = [float(c + 1) for c in range(10)]
    w = torch.tensor(weights)
    per_sample = -w[y] * out.log_softmax(1).gather(1, y[:, None])[:, 0]
    task = _task(data, class_weights=weights)
    torch.testing.assert_close(task.loss(out, y, "mean"), per_sample.sum() / len(y))
    torch.testing.assert_close(task.loss(out, y, "sum"), per_sample.sum())
    torchs_mean = F.cross_entropy(out, y, weight=w)  # divides by the sum of w[y] instead
    assert not torch.allclose(task.loss(out, y, "mean"), torchs_mean)


def test_class_weights_with_smoothing_weigh_each_class_term_by_its_weight(digits):
    data, out, y = digits
    eps, w = 0.2, torch.linspace(0.5, 2.0, 10)
    logp = out.log_softmax(1)
    nll = -logp.gather(1, y[:, None])[:, 0]
    per_sample = (1 - eps) * w[y] * nll - eps / 10 * (logp * w).sum(1)
    task = _task(data, class_weights=w.tolist(), label_smoothing=eps)
    torch.testing.assert_close(task.loss(out, y, "mean"), per_sample.sum() / len(y))


def test_bce_is_per_sample_the_mean_over_labels(multilabel):
    data, out, y = multilabel
    p = out.sigmoid()
    per_sample = -(y * p.log() + (1 - y) * (1 - p).log()).mean(1)
    task = _task(data)
    assert task.loss_name == "bce"
    torch.testing.assert_close(task.loss(out, y, "mean"), per_sample.mean())
    torch.testing.assert_close(task.loss(out, y, "sum"), per_sample.sum())


@pytest.mark.parametrize(
    "name, per_element",
    [
        ("mse", lambda e: e**2),
        ("l1", lambda e: e.abs()),
        ("huber", lambda e: torch.where(e.abs() < 1, 0.5 * e**2, e.abs() - 0.5)),
    ],
)
def test_regression_losses_are_per_sample_the_mean_over_targets(name, per_element):
    data, out = _diabetes(2)
    out, y = out * 1.5, data.val.y  # errors on both sides of 1
    per_sample = per_element(out - y).mean(1)
    task = _task(data, loss=name)
    torch.testing.assert_close(task.loss(out, y, "mean"), per_sample.mean())
    torch.testing.assert_close(task.loss(out, y, "sum"), per_sample.sum())


@pytest.mark.parametrize(
    "kind, keys",
    [
        ("classification", {"class_weights": "balanced"}),
        ("multilabel", {}),
        ("regression", {"loss": "mse"}),
        ("regression", {"loss": "huber"}),
    ],
)
def test_the_losses_take_half_precision_outputs_in_float32(digits, multilabel, kind, keys):
    if kind == "regression":
        data, out = _diabetes(2)
        y = data.val.y
    else:
        data, out, y = digits if kind == "classification" else multilabel
    task = _task(data, **keys)
    half = out.bfloat16()
    for reduction in ("mean", "sum"):
        got = task.loss(half, y, reduction)
        assert got.dtype == torch.float32
        assert torch.equal(got, task.loss(half.float(), y, reduction))


@pytest.mark.parametrize(
    "keys",
    [
        {},
        {"label_smoothing": 0.1},
        {"class_weights": "balanced"},
        {"class_weights": [1.0] * 9 + [5.0], "label_smoothing": 0.05},
    ],
)
def test_two_halves_summed_over_the_samples_are_the_whole_mean(digits, keys):
    data, out, y = digits
    task = _task(data, **keys)
    halves = task.loss(out[:150], y[:150], "sum") + task.loss(out[150:], y[150:], "sum")
    torch.testing.assert_close(halves / len(y), task.loss(out, y, "mean"))


@pytest.mark.parametrize("name", ["bce", "mse", "l1", "huber"])
def test_two_halves_equal_the_whole_for_the_other_losses(multilabel, name):
    if name == "bce":
        data, out, y = multilabel
    else:
        data, out = _diabetes(2)
        y = data.val.y
    task = _task(data, loss=name)
    halves = task.loss(out[:50], y[:50], "sum") + task.loss(out[50:], y[50:], "sum")
    torch.testing.assert_close(halves / len(y), task.loss(out, y, "mean"))


def test_balanced_weights_are_sklearns():
    x, y = _digits()
    keep = (y >= 5) | (torch.arange(len(y)) % 4 == 0)  # classes 0-4 a quarter as frequent
    data = _bundle("classification", 10, y[keep])
    task = _task(data, class_weights="balanced")
    want = compute_class_weight("balanced", classes=np.arange(10), y=y[keep].numpy())
    np.testing.assert_allclose(task.class_weights.numpy(), want, rtol=1e-6)
    assert task.class_weights.dtype == torch.float32


def test_balanced_weights_refuse_a_class_without_training_samples():
    y = torch.tensor([0, 1, 1, 3, 0])
    data = _bundle("classification", 4, y)
    data.classes = ["cat", "dog", "owl", "eel"]
    with pytest.raises(DataError, match=r"task.class_weights \"balanced\": class 2 \('owl'\)"):
        _task(data, class_weights="balanced")


def test_a_weight_list_needs_one_weight_per_class():
    data = _bundle("classification", 10, torch.arange(10))
    with pytest.raises(DataError) as e:
        _task(data, class_weights=[1.0, 2.0, 3.0])
    assert str(e.value) == (
        "task.class_weights has 3 weights but the data has 10 classes; give one weight per class"
    )


# ---- validation metrics against sklearn ----
def _sk_classification(name, out, y):
    p, yt = out.argmax(1).numpy(), y.numpy()
    return {
        "acc": lambda: skm.accuracy_score(yt, p),
        "top5": lambda: skm.top_k_accuracy_score(yt, out.numpy(), k=5),
        "f1": lambda: skm.f1_score(yt, p, average="macro"),
        "precision": lambda: skm.precision_score(yt, p, average="macro", zero_division=0),
        "recall": lambda: skm.recall_score(yt, p, average="macro"),
        "auroc": lambda: skm.roc_auc_score(yt, out.softmax(1).numpy(), multi_class="ovr"),
    }[name]()


@pytest.mark.parametrize("name", ["acc", "top5", "f1", "precision", "recall", "auroc"])
def test_classification_metric_is_sklearns(digits, name):
    data, out, y = digits
    got = _epoch(_task(data, metrics=[name]), out, y)
    assert got[f"val_{name}"] == pytest.approx(_sk_classification(name, out.double(), y), abs=1e-6)


def test_val_acc_is_the_correct_count_over_the_samples_and_always_there(digits):
    data, out, y = digits
    task = _task(data, metrics=["f1"])
    assert task.metric_names == ["f1"] and task.headline == "f1" and task.train_names == ["acc"]
    got = _epoch(task, out, y)
    assert list(got) == ["val_f1", "val_acc"]
    assert got["val_acc"] == (out.argmax(1) == y).sum().item() / len(y)


def test_auroc_ranks_batches_of_small_logits_like_the_others(digits):
    # torchmetrics softmaxes only a batch with a value outside [0, 1]: these are all inside
    data, out, y = digits
    small = 0.5 + out / (out.abs().max() * 4)
    got = _epoch(_task(data, metrics=["auroc"]), small, y, batch=50)
    want = skm.roc_auc_score(y.numpy(), small.double().softmax(1).numpy(), multi_class="ovr")
    assert got["val_auroc"] == pytest.approx(want, abs=1e-6)


def test_auroc_counts_tied_scores_a_half_as_sklearn_does(digits):
    data, out, y = digits
    coarse = (out * 2).round() / 2  # many ties within every class's scores
    probs = coarse.softmax(1).double()  # the float32 probabilities the task ranks, ties and all
    got = _epoch(_task(data, metrics=["auroc"]), coarse, y)
    want = skm.roc_auc_score(y.numpy(), probs.numpy(), multi_class="ovr")
    assert got["val_auroc"] == pytest.approx(want, abs=1e-6)


def test_auroc_leaves_out_a_class_missing_from_the_validation_data(digits):
    data, out, y = digits
    keep = y != 3  # no positive sample of class 3: its AUROC is undefined
    got = _epoch(_task(data, metrics=["auroc"]), out[keep], y[keep])
    probs, yk = out[keep].double().softmax(1).numpy(), y[keep].numpy()
    per_class = [skm.roc_auc_score(yk == c, probs[:, c]) for c in range(10) if c != 3]
    assert got["val_auroc"] == pytest.approx(sum(per_class) / 9, abs=1e-6)


def test_auroc_with_no_class_defined_is_none():
    y = torch.zeros(4, dtype=torch.int64)  # every sample one class: no negatives for it
    got = _epoch(_task(_bundle("classification", 3, y), metrics=["auroc"]), torch.randn(4, 3), y)
    assert got["val_auroc"] is None


@pytest.mark.parametrize("name", ["f1", "precision", "recall"])
def test_f1_family_leaves_out_a_class_neither_predicted_nor_present(digits, name):
    data, out, y = digits
    out = out.clone()
    out[:, 3] = -1e4  # class 3 is never predicted ...
    keep = y != 3  # ... nor present: scikit-learn leaves it out of the average
    out[:40, 5] = 1e4  # class 5 predicted where it is not: its precision falls
    out[y == 7, 7] = -1e4  # class 7 present but never predicted: precision 0, recall 0
    want = _sk_classification(name, out[keep].double(), y[keep])
    got = _epoch(_task(data, metrics=[name]), out[keep], y[keep])
    assert got[f"val_{name}"] == pytest.approx(want, abs=1e-9)


def test_multilabel_precision_and_recall_count_every_label(multilabel):
    data, out, y = multilabel
    out = out.clone()
    out[:, 2] = -10.0  # label 2 never predicted: precision 0 (scikit-learn's zero_division)
    got = _epoch(_task(data, metrics=["precision", "recall"]), out, y)
    p, yt = (out > 0).numpy(), y.numpy().astype(int)
    want = skm.precision_score(yt, p, average="macro", zero_division=0)
    assert got["val_precision"] == pytest.approx(want, abs=1e-9)
    assert got["val_recall"] == pytest.approx(skm.recall_score(yt, p, average="macro"), abs=1e-9)


def test_top5_with_fewer_than_five_classes_is_top_all():
    y = torch.tensor([0, 1, 2, 0])
    got = _epoch(_task(_bundle("classification", 3, y), metrics=["top5"]), torch.randn(4, 3), y)
    assert got["val_top5"] == 1.0


def test_multilabel_metrics_are_sklearns(multilabel):
    data, out, y = multilabel
    task = _task(data, metrics=["f1", "acc", "auroc", "hamming"])
    got = _epoch(task, out, y)
    p, yt = (out > 0).numpy(), y.numpy().astype(int)
    assert got["val_f1"] == pytest.approx(skm.f1_score(yt, p, average="macro"), abs=1e-6)
    assert got["val_hamming"] == pytest.approx(skm.hamming_loss(yt, p), abs=1e-12)
    assert got["val_acc"] == pytest.approx(1 - skm.hamming_loss(yt, p), abs=1e-12)
    want = skm.roc_auc_score(yt, out.double().numpy(), average="macro")
    assert got["val_auroc"] == pytest.approx(want, abs=1e-6)
    assert 0.6 < got["val_acc"] < 0.99  # a real model: neither chance nor perfect


@pytest.mark.parametrize("targets", [1, 2])
def test_regression_metrics_are_sklearns(targets):
    data, out = _diabetes(targets)
    y = data.val.y
    got = _epoch(_task(data, metrics=["r2", "mae", "mse", "rmse"]), out, y, batch=64)
    o, t = out.double().numpy(), y.double().numpy()
    mse = skm.mean_squared_error(t, o)
    assert got["val_mae"] == pytest.approx(skm.mean_absolute_error(t, o), rel=1e-5)
    assert got["val_mse"] == pytest.approx(mse, rel=1e-5)
    assert got["val_rmse"] == pytest.approx(math.sqrt(mse), rel=1e-5)
    assert got["val_r2"] == pytest.approx(skm.r2_score(t, o), abs=1e-5)
    assert got["val_r2"] > 0.2  # fitted, not random


def test_half_precision_outputs_are_measured_as_their_float_values(digits):
    data, out, y = digits
    task = _task(data, metrics=["auroc", "f1", "top5"])
    bf16 = out.bfloat16()
    assert _epoch(task, bf16, y) == _epoch(task, bf16.float(), y)


def test_val_compute_starts_the_next_epoch_afresh(digits):
    data, out, y = digits
    task = _task(data, metrics=["auroc", "acc"])
    first = _epoch(task, out, y)
    assert _epoch(task, out, y) == first
    assert task.val_compute() == {"val_auroc": None, "val_acc": None}  # nothing seen


# ---- training sums ----
def test_classification_sums_are_the_correct_count(digits):
    data, out, y = digits
    task = _task(data)
    sums = task.train_sums(out, y)
    zero = task.zero_sums()
    assert sums.dtype == zero.dtype == torch.int64 and sums.shape == zero.shape == ()
    assert torch.equal(sums, (out.argmax(1) == y).sum())
    assert task.train_metrics(zero + sums, len(y)) == {"train_acc": sums.item() / len(y)}


def test_multilabel_sums_give_train_acc_and_hamming(multilabel):
    data, out, y = multilabel
    task = _task(data, metrics=["auroc", "hamming", "acc"])
    assert task.train_names == ["hamming", "acc"]
    sums = (
        task.zero_sums() + task.train_sums(out[:200], y[:200]) + task.train_sums(out[200:], y[200:])
    )
    assert sums.dtype == torch.float32 and sums.shape == ()
    got = task.train_metrics(sums, len(y))
    hamming = skm.hamming_loss(y.numpy().astype(int), (out > 0).numpy())
    assert got == pytest.approx({"train_hamming": hamming, "train_acc": 1 - hamming}, abs=1e-6)


def test_regression_sums_give_train_mae_mse_rmse():
    data, out = _diabetes(2)
    y = data.val.y
    task = _task(data, metrics=["r2", "rmse", "mae", "mse"])
    assert task.train_names == ["rmse", "mae", "mse"]  # r2 needs every prediction
    sums = task.zero_sums() + task.train_sums(out[:70], y[:70]) + task.train_sums(out[70:], y[70:])
    assert sums.shape == (2,) and sums.dtype == torch.float32
    got = task.train_metrics(sums.tolist(), len(y))  # host values, as a list
    o, t = out.double().numpy(), y.double().numpy()
    mse = skm.mean_squared_error(t, o)
    want = {
        "train_rmse": math.sqrt(mse),
        "train_mae": skm.mean_absolute_error(t, o),
        "train_mse": mse,
    }
    assert got == pytest.approx(want, rel=1e-5)


def test_train_metrics_take_a_float_and_no_samples_give_none(digits):
    task = _task(digits[0])
    assert task.train_metrics(30.0, 40) == {"train_acc": 0.75}
    assert task.train_metrics(torch.tensor(0), 0) == {"train_acc": None}


# ---- custom losses ----
@pytest.fixture
def user_losses(tmp_path, monkeypatch):
    """A module of the user's losses beside the profile, imported fresh by each test."""
    (tmp_path / "my_losses.py").write_text(
        textwrap.dedent(
            """
            import torch.nn.functional as F

            def focal(output, target):
                ce = F.cross_entropy(output, target, reduction="none")
                return (1 - (-ce).exp()) ** 2 * ce

            def averaged(output, target):
                return F.cross_entropy(output, target)

            def broken(output, target):
                raise ValueError("no targets like these")

            def elementwise(output, target):
                return F.mse_loss(output, target, reduction="none")
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_losses", raising=False)  # another test's, imported
    yield tmp_path / "my_losses.py"


def test_a_custom_loss_is_reduced_from_its_per_sample_losses(digits, user_losses):
    data, out, y = digits
    task = _task(data, loss="my_losses:focal")
    assert task.loss_name == "my_losses:focal"
    task.check_batch(out.requires_grad_(), y)
    ce = F.cross_entropy(out, y, reduction="none")
    per_sample = (1 - (-ce).exp()) ** 2 * ce
    torch.testing.assert_close(task.loss(out, y, "mean"), per_sample.mean())
    torch.testing.assert_close(task.loss(out, y, "sum"), per_sample.sum())


def test_a_custom_loss_returning_a_mean_is_refused(digits, user_losses):
    data, out, y = digits
    task = _task(data, loss="my_losses:averaged")
    with pytest.raises(ModelError) as e:
        task.check_batch(out[:32], y[:32])
    assert str(e.value) == (
        "task.loss 'my_losses:averaged' returned torch.float32 of shape []; it must return "
        "per-sample losses, a float tensor of shape [batch] (or elementwise losses [batch, "
        '...], averaged per sample; e.g. reduction="none"); the check\'s batch holds 32 samples'
    )


def test_an_elementwise_custom_loss_is_averaged_per_sample(user_losses):
    # F.mse_loss(out, y, reduction="none") as a user writes it: [batch, targets]
    g = torch.Generator().manual_seed(0)
    out, y = torch.randn(8, 3, generator=g), torch.randn(8, 3, generator=g)
    data = DataBundle(Split(torch.randn(8, 4), y), None, 3, (4,), None, None, "regression")
    task = build_task(
        TaskSection(kind="regression", loss="my_losses:elementwise"), data, torch.device("cpu")
    )
    task.check_batch(out, y)
    per_sample = ((out - y) ** 2).mean(1)
    torch.testing.assert_close(task.loss(out, y, "sum"), per_sample.sum())
    torch.testing.assert_close(task.loss(out, y, "mean"), per_sample.mean())


def test_a_custom_loss_that_raises_is_named_with_where(digits, user_losses):
    data, out, y = digits
    task = _task(data, loss="my_losses:broken")
    with pytest.raises(ModelError) as e:
        task.check_batch(out, y)
    assert str(e.value) == (
        f"task.loss 'my_losses:broken' raised ValueError: no targets like these ({user_losses}:12)"
    )


def test_a_custom_loss_that_cannot_import_is_refused_at_build(digits):
    with pytest.raises(ModelError, match=r"^task.loss 'no_such_pkg.mod:fn': cannot import"):
        _task(digits[0], loss="no_such_pkg.mod:fn")


def test_label_smoothing_with_a_custom_loss_is_refused(digits, user_losses):
    with pytest.raises(ModelError, match=r"^task.label_smoothing applies to the built-in"):
        _task(digits[0], loss="my_losses:focal", label_smoothing=0.1)


# ---- the first batch ----
def test_a_regression_output_wider_than_the_targets_is_refused():
    task = _task(_bundle("regression", 1, torch.zeros(8, 1)))
    with pytest.raises(ModelError) as e:
        task.check_batch(torch.zeros(8, 3), torch.zeros(8, 1))
    assert str(e.value) == (
        "the model outputs (8, 3) for regression targets (8, 1); it must output (8, 1), "
        "one value per target"
    )


def test_a_flat_regression_output_gets_a_hint():
    task = _task(_bundle("regression", 1, torch.zeros(8, 1)))
    with pytest.raises(ModelError, match=r"outputs \(8,\) .* e\.g\. out\.unsqueeze\(1\)$"):
        task.check_batch(torch.zeros(8), torch.zeros(8, 1))


def test_a_multilabel_output_with_a_label_too_many_is_refused():
    task = _task(_bundle("multilabel", 4, torch.zeros(8, 4)))
    with pytest.raises(ModelError) as e:
        task.check_batch(torch.zeros(8, 5), torch.zeros(8, 4))
    assert str(e.value) == (
        "the model outputs (8, 5) for multilabel targets (8, 4); it must output (8, 4), "
        "one logit per label"
    )


def test_a_classifier_with_the_wrong_class_count_is_refused(digits):
    task = _task(digits[0])
    with pytest.raises(ModelError, match=r"outputs \(4, 3\) for 4 class indices of 10 classes"):
        task.check_batch(torch.zeros(4, 3), torch.zeros(4, dtype=torch.int64))


def test_float_targets_for_classification_point_to_the_other_kinds(digits):
    with pytest.raises(DataError, match="use task.kind 'multilabel', for numbers 'regression'"):
        _task(digits[0]).check_batch(torch.zeros(4, 10), torch.zeros(4, 10))


# ---- several processes ----
def test_two_processes_sync_at_compute_even_with_an_empty_share():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "WORLD_SIZE": "2",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    script = str(REPO / "tests" / "task_ranks.py")
    ranks = [
        subprocess.Popen(
            [sys.executable, script],
            env={**env, "RANK": str(r)},
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    outputs = [p.communicate(timeout=120) for p in ranks]
    assert [p.returncode for p in ranks] == [0, 0], outputs
    results = [json.loads(out.splitlines()[-1]) for out, _ in outputs]
    assert results[0] == results[1]
    for kind, data, metrics, out, y, _ in task_ranks.cases():
        alone = task_ranks.validate(
            build_task(TaskSection(kind=kind, metrics=metrics), data, CPU), out, y
        )
        assert results[0][kind] == pytest.approx(alone, abs=1e-6), kind
