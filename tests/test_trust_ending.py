"""How a run ends: never a failure reported as success, never an empty "finished" run,
never a run directory left by a mistake found before training.

Issue 13, groups 5 (user code that exits or kills the training thread), 6 (resuming a
run with nothing left to do) and 11 (model and data mistakes found after the run
directory was made). Real runs, real user modules written to tmp_path, the real CLI.
"""

from __future__ import annotations

import ctypes
import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import run_mpt
from durable_helpers import events_jsonl, finish, profile_dict, start, train

from engine.checkpoint import CheckpointError

QUICKSTART = Path(__file__).resolve().parents[1] / "profiles" / "quickstart.toml"
SHORT = ["--set", "run.epochs=1", "--set", "run.max_steps=5"]

USER_CODE = """
import sys
import time

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, in_shape, num_classes, ending=None, after=2):
        super().__init__()
        c, h, w = in_shape
        self.fc = nn.Linear(c * h * w, num_classes)
        self.ending, self.after, self.calls = ending, after, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.ending is not None and self.calls > self.after:
                self.ending()
        return self.fc(x.flatten(1))


def exit_0():
    sys.exit(0)


class Killed(BaseException):
    pass


def raise_(error):
    def ending():
        raise error
    return ending


def exits_in_forward(in_shape, num_classes):
    return Net(in_shape, num_classes, exit_0)


def exits_in_factory(in_shape, num_classes):
    sys.exit(3)


def keyboard_interrupt(in_shape, num_classes):
    return Net(in_shape, num_classes, raise_(KeyboardInterrupt))


def system_exit(in_shape, num_classes):
    return Net(in_shape, num_classes, raise_(SystemExit("bye")))


def generator_exit(in_shape, num_classes):
    return Net(in_shape, num_classes, raise_(GeneratorExit))


def base_exception(in_shape, num_classes):
    return Net(in_shape, num_classes, raise_(Killed("by the model")))


def slow(in_shape, num_classes):
    return Net(in_shape, num_classes, lambda: time.sleep(0.01), after=0)


# ---- model mistakes the first batch shows (group 11) ----


class NoParameters(nn.Module):
    def forward(self, x):
        return x.flatten(1)[:, :10] * 1.0


class Pair(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        out = self.fc(x.flatten(1))
        return out, out


class Detached(Pair):
    def forward(self, x):
        return self.fc(x.flatten(1)).detach()


class Integers(Pair):
    def forward(self, x):
        return self.fc(x.flatten(1)).round().long()


class LayerMadeInForward(Pair):
    def forward(self, x):
        return nn.Linear(64, 10)(x.flatten(1))


class TupleWhenTraining(Pair):
    def forward(self, x):
        out = self.fc(x.flatten(1))
        return (out, out) if self.training else out


def no_parameters(in_shape, num_classes):
    return NoParameters()


def pair(in_shape, num_classes):
    return Pair()


def detached(in_shape, num_classes):
    return Detached()


def integers(in_shape, num_classes):
    return Integers()


def layer_made_in_forward(in_shape, num_classes):
    return LayerMadeInForward()


def tuple_when_training(in_shape, num_classes):
    return TupleWhenTraining()
"""


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """A module of user models in tmp_path, importable in this process and in `mpt`."""
    name = f"ending_models_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(USER_CODE)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)


def run_dirs(out_dir: Path) -> list[Path]:
    """The run directories under <out_dir>/<name>/."""
    return sorted(p for p in out_dir.glob("*/*") if p.is_dir())


def last_event(run_dir: Path) -> dict:
    return events_jsonl(run_dir)[-1]


# ---- group 5: however the training thread ends, a run that did not finish failed ----


def test_sys_exit_0_in_forward_fails_the_run_exit_1_naming_it(tmp_path, user_code):
    out = tmp_path / "runs"
    result = run_mpt(
        "run", QUICKSTART, "--set", f"model.arch={user_code}:exits_in_forward",
        "--set", f"run.out_dir={out}", *SHORT, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, (result.stdout, result.stderr)
    (run_dir,) = run_dirs(out)
    end = last_event(run_dir)
    assert end["kind"] == "run_failed" and end["step"] >= 1  # during training
    assert end["error"].startswith(
        f"the training code called sys.exit(0) ({tmp_path / user_code}.py:"
    )
    assert end["error"] in result.stderr and "Traceback" not in result.stderr
    # the checkpoint policy of a failure: nothing saved after it
    assert not list(run_dir.glob("checkpoints/*"))
    listed = run_mpt("ls", out, cwd=tmp_path)
    assert re.search(r"quickstart/\S+\s+failed\s", listed.stdout), listed.stdout


def test_sys_exit_in_the_model_factory_fails_the_run_exit_1(tmp_path, user_code):
    out = tmp_path / "runs"
    result = run_mpt(
        "run", QUICKSTART, "--set", f"model.arch={user_code}:exits_in_factory",
        "--set", f"run.out_dir={out}", *SHORT, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 1, (result.stdout, result.stderr)
    (run_dir,) = run_dirs(out)
    end = last_event(run_dir)
    assert end["kind"] == "run_failed" and not end["user_error"]
    assert end["error"].startswith("the training code called sys.exit(3) (")


@pytest.mark.parametrize(
    ("factory", "error"),
    [
        ("keyboard_interrupt", r"KeyboardInterrupt raised inside the training code \(.*, "
            "not by Ctrl-C"),
        ("system_exit", r"the training code called sys\.exit\('bye'\) \("),
        ("generator_exit", r"GeneratorExit raised inside the training code \("),
        ("base_exception", r"Killed: by the model raised inside the training code \("),
    ],
)  # fmt: skip
def test_a_base_exception_in_the_model_fails_the_run_with_one_run_failed(
    factory, error, tmp_path, user_code
):
    data = profile_dict(tmp_path / "runs", {"model": {"arch": f"{user_code}:{factory}"}})
    done = finish(start(data))
    assert done.reason == "failed" and not done.run.user_error
    assert re.match(error, done.run.error), done.run.error
    assert [e.kind for e in done.events if e.kind in ("run_finished", "run_failed")] == [
        "run_failed"
    ]
    assert done.of("run_failed")[0].step >= 1  # during training
    assert last_event(done.run_dir)["error"] == done.run.error


def test_an_exception_sent_to_the_training_thread_fails_the_run(tmp_path, user_code):
    class Stopped(BaseException):
        pass

    data = profile_dict(
        tmp_path / "runs",
        {"model": {"arch": f"{user_code}:slow"}, "run": {"epochs": 50}},
    )
    run = start(data)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until training is under way
        if run.events.get(timeout=120).kind == "step":
            break
    (thread,) = [t for t in threading.enumerate() if t.name == "mpt-trainer" and t.is_alive()]
    sent = ctypes.pythonapi.PyThreadState_SetAsyncExc(
        ctypes.c_ulong(thread.ident), ctypes.py_object(Stopped)
    )
    assert sent == 1
    done = finish(run)
    assert done.reason == "failed"
    assert done.run.error.startswith("Stopped raised inside the training code ("), done.run.error
    assert last_event(done.run_dir)["kind"] == "run_failed"


# ---- group 6: resuming a run with nothing left to do is refused, before any run dir ----


@pytest.fixture
def finished(tmp_path):
    """A tiny run that finished its one epoch (23 steps), with its checkpoints."""
    out = tmp_path / "runs"
    done = train(profile_dict(out))
    assert done.reason == "completed"
    return done


def test_resuming_a_finished_run_exits_2_saying_what_to_raise(finished, tmp_path):
    out = finished.run_dir.parent.parent
    result = run_mpt("run", "--resume", finished.run_dir, cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip() == (
        f"error: {finished.ckpt_dir / 'last.pt'}: the run already finished its 1 epoch "
        "(step 23); to train further raise run.epochs (e.g. to 2)"
    )
    assert run_dirs(out) == [finished.run_dir]  # no new, empty run directory


def test_resuming_with_fewer_epochs_than_done_is_refused(tmp_path):
    done = train(profile_dict(tmp_path / "runs", {"run": {"epochs": 2}}))
    with pytest.raises(CheckpointError) as info:
        start(resume=done.run_dir, overrides=["run.epochs=1"])
    assert str(info.value) == (
        f"{done.ckpt_dir / 'last.pt'}: the run has done 2 epochs, more than run.epochs = 1 "
        "(step 46); to train further raise run.epochs (e.g. to 4)"
    )
    assert run_dirs(tmp_path / "runs") == [done.run_dir]


def test_resuming_a_run_that_reached_max_steps_is_refused(tmp_path):
    # max_steps ends inside an epoch: that partial epoch counts as done (it is validated)
    done = train(profile_dict(tmp_path / "runs", {"run": {"epochs": 3, "max_steps": 5}}))
    with pytest.raises(CheckpointError) as info:
        start(resume=done.run_dir)
    assert str(info.value) == (
        f"{done.ckpt_dir / 'last.pt'}: the run reached run.max_steps = 5 (step 5); to train "
        "further raise run.max_steps (e.g. to 10)"
    )
    assert run_dirs(tmp_path / "runs") == [done.run_dir]


def test_resuming_an_early_stopped_run_is_refused_until_its_stop_changes(tmp_path):
    # mode max on train_loss: the second epoch "does not improve", patience 1 stops there
    stop = {"enabled": True, "monitor": "train_loss", "mode": "max", "patience": 1}
    done = train(profile_dict(tmp_path / "runs", {"run": {"epochs": 4}, "early_stop": stop}))
    assert done.reason == "early_stopped" and done.of("epoch_end")[-1].epoch == 2
    with pytest.raises(CheckpointError) as info:
        start(resume=done.run_dir)
    assert str(info.value) == (
        f"{done.ckpt_dir / 'last.pt'}: the run stopped early (train_loss did not improve for "
        "1 validation, early_stop.patience = 1); to train further raise early_stop.patience "
        "(e.g. to 3) or set early_stop.enabled = false"
    )
    assert run_dirs(tmp_path / "runs") == [done.run_dir]
    resumed = finish(start(resume=done.run_dir, overrides=["early_stop.enabled=false"]))
    assert resumed.reason == "completed" and resumed.of("epoch_end")[-1].epoch == 4


def test_resuming_a_run_stopped_by_a_threshold_names_the_threshold(tmp_path):
    stop = {"enabled": True, "monitor": "train_loss", "stop_below": 100.0}
    done = train(profile_dict(tmp_path / "runs", {"run": {"epochs": 3}, "early_stop": stop}))
    assert done.reason == "early_stopped"
    with pytest.raises(CheckpointError, match=r"the run stopped early \(train_loss [\d.]+ is "
                       r"below early_stop.stop_below = 100.0\); to train further lower "
                       r"early_stop.stop_below or set early_stop.enabled = false$"):  # fmt: skip
        start(resume=done.run_dir)


def test_a_run_that_ran_out_of_max_time_resumes_with_a_fresh_budget(tmp_path):
    done = train(profile_dict(tmp_path / "runs", {"run": {"epochs": 2, "max_time": 1e-9}}))
    assert done.reason == "max_time"
    stopped_at = done.of("run_finished")[0].step
    resumed = finish(start(resume=done.run_dir))
    assert resumed.reason == "max_time"
    assert resumed.of("run_finished")[0].step > stopped_at


# ---- group 11: model and data mistakes, before training, leave no run directory ----


@pytest.mark.parametrize(
    ("factory", "error"),
    [
        ("no_parameters", "the model has no trainable parameters; create its layers in "
            "__init__ as attributes (self.fc = nn.Linear(...)) and leave requires_grad on"),
        ("pair", "forward must return one tensor of logits (batch, num_classes); got tuple"),
        ("tuple_when_training", "forward must return one tensor of logits (batch, "
            "num_classes); got tuple"),
        ("detached", "the output is detached from the model's parameters (no grad_fn); leave "
            ".detach(), .item(), .numpy() and torch.no_grad() out of forward"),
        ("integers", "forward must return floating-point logits; got a tensor of torch.int64 "
            "(leave argmax and rounding out of forward)"),
        ("layer_made_in_forward", "the loss reaches none of the model's parameters; create the "
            "layers forward uses in __init__, not inside forward"),
    ],
)  # fmt: skip
def test_a_model_the_optimizer_cannot_train_is_refused_leaving_no_run_directory(
    factory, error, tmp_path, user_code
):
    out = tmp_path / "runs"
    done = finish(start(profile_dict(out, {"model": {"arch": f"{user_code}:{factory}"}})))
    assert done.reason == "failed" and done.run.user_error
    assert done.run.error == f"model.arch '{user_code}:{factory}': {error}"
    assert [e.kind for e in done.events] == ["run_failed"]
    assert run_dirs(out) == []


def test_mpt_run_of_a_model_returning_a_tuple_exits_2_and_writes_no_run_directory(
    tmp_path, user_code
):
    out = tmp_path / "runs"
    result = run_mpt(
        "run", QUICKSTART, "--set", f"model.arch={user_code}:pair",
        "--set", f"run.out_dir={out}", *SHORT, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip() == (
        f"error: model.arch '{user_code}:pair': forward must return one tensor of logits "
        "(batch, num_classes); got tuple"
    )
    assert run_dirs(out) == []
    assert run_mpt("ls", out, cwd=tmp_path).stdout.count("quickstart/") == 0


def test_mpt_run_of_an_npz_with_other_array_names_exits_2_and_writes_no_run_directory(
    tmp_path,
):
    data = tmp_path / "d.npz"
    np.savez(data, images=np.zeros((4, 8, 8), np.uint8), labels=np.zeros(4, np.int64))
    out = tmp_path / "runs"
    result = run_mpt(
        "run", QUICKSTART, "--set", 'data.dataset="npz"', "--set", f"data.path={data}",
        "--set", f"run.out_dir={out}", "--set", "log.csv=true", *SHORT, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert result.stderr.strip() == (
        f"error: {data}: needs arrays x_train and y_train (Keras layout), found images, labels"
    )
    assert run_dirs(out) == []


def test_a_failed_setup_removes_only_what_the_run_wrote(tmp_path, user_code):
    # Something else in the run directory (not the run's own) keeps the folder; the
    # run's files go all the same, so no run list shows a run that never trained.
    out = tmp_path / "runs"
    run = start(profile_dict(out, {"model": {"arch": f"{user_code}:pair"}}))
    keep = run.run_dir / "notes.txt"
    keep.write_text("mine")
    done = finish(run)
    assert done.run.user_error
    assert sorted(p.name for p in done.run_dir.iterdir()) == ["notes.txt"]
    assert keep.read_text() == "mine"
