"""`mpt` as a user runs it: real subprocesses, stdout a pipe, files on disk."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from conftest import PROFILES, REPO, run_mpt
from durable_helpers import events_jsonl

from engine import events as ev
from engine.console import Console, format_epoch

QUICKSTART = PROFILES / "quickstart.toml"
STAMP = r"\d{8}-\d{6}(-\d+)?"
TORCHVISION = ("mnist", "fashion_mnist", "cifar10")


# ---- the quickstart, run once for the tests that read its output ----


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("quickstart")
    result = run_mpt("run", QUICKSTART, cwd=cwd)
    return cwd, result


def test_quickstart_exits_0(quickstart):
    _, result = quickstart
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr


def test_quickstart_prints_the_run_directory_first(quickstart):
    cwd, result = quickstart
    first = result.stdout.splitlines()[0]
    m = re.fullmatch(r"run directory: (\S+)  \(events\.jsonl, profile\.toml\)", first)
    assert m, first
    run_dir = Path(m.group(1))
    assert re.fullmatch(rf"runs/quickstart/{STAMP}", str(run_dir)), run_dir
    assert (cwd / run_dir / "events.jsonl").is_file()
    assert (cwd / run_dir / "profile.toml").is_file()


def test_quickstart_reaches_95_percent_validation_accuracy(quickstart):
    cwd, result = quickstart
    last = result.stdout.splitlines()[-1]
    m = re.fullmatch(r"finished \(completed\) at step \d+ after [\d.]+s: final val acc "
                     r"([\d.]+)%, best ([\d.]+)%", last)  # fmt: skip
    assert m, last
    assert float(m.group(1)) >= 95.0
    (events_file,) = (cwd / "runs" / "quickstart").glob("*/events.jsonl")
    finished = events_jsonl(events_file.parent)[-1]
    assert finished["kind"] == "run_finished" and finished["final_val_acc"] >= 0.95


def test_quickstart_prints_one_line_per_epoch(quickstart):
    _, result = quickstart
    epoch_lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    numbers = [int(re.match(r"epoch +(\d+)/15 ", line).group(1)) for line in epoch_lines]
    assert numbers == list(range(1, 16))
    assert all(
        re.fullmatch(
            r"epoch +\d+/15  loss [\d.]+ val [\d.]+  acc [\d.]+% val [\d.]+%  "
            r"lr [\d.e+-]+  (\d+ms|[\d.]+s|\d+m\d\ds)",
            line,
        )
        for line in epoch_lines
    ), epoch_lines


def test_piped_stdout_has_no_progress_bar_redraws(quickstart):
    _, result = quickstart
    assert "\r" not in result.stdout
    assert "\x1b" not in result.stdout
    assert "#" not in result.stdout  # the bar's fill


# ---- the console: a bar on a terminal, whole lines elsewhere ----


def _started(epochs=2):
    return ev.RunStarted(
        epochs=epochs, dataset="digits", train_samples=100, val_samples=20, num_classes=10,
        input_shape=[1, 8, 8], arch="mlp", parameters=1234, device="cpu", precision="fp32",
        batch_size=16, steps_per_epoch=7, total_steps=14,
    )  # fmt: skip


def _epoch_end():
    return ev.EpochEnd(
        step=7, epoch=1, epochs=2, train_loss=0.5, train_acc=0.8, val_loss=0.6, val_acc=0.75,
        lr=0.01, seconds=1.25,
    )  # fmt: skip


def test_console_on_a_terminal_draws_a_progress_bar():
    out = io.StringIO()
    console = Console(out=out, err=io.StringIO(), tty=True)
    console.show(_started())
    console.show(ev.Step(step=3, epoch=1, loss=1.5, samples_per_s=2000.0, epoch_progress=0.5))
    drawn = out.getvalue().split("\n")[-1]  # the bar ends no line: it is redrawn in place
    assert drawn.startswith("\r\x1b[Kepoch 1/2 [")
    assert "[" + "#" * 12 + "." * 12 + "]" in drawn
    assert " 50%" in drawn and "loss 1.5000" in drawn and "2,000 samples/s" in drawn


def test_console_clears_the_bar_before_the_next_line():
    out = io.StringIO()
    console = Console(out=out, err=io.StringIO(), tty=True)
    console.show(_started())
    console.show(ev.Step(step=3, epoch=1, loss=1.5, epoch_progress=0.5))
    console.show(_epoch_end())
    assert out.getvalue().endswith("\r\x1b[K" + format_epoch(_epoch_end()) + "\n")


def test_console_off_a_terminal_writes_whole_lines_only():
    out = io.StringIO()  # not a terminal: isatty() is false
    console = Console(out=out, err=io.StringIO())
    assert console.tty is False
    console.show(_started())
    for step in range(1, 8):
        console.show(ev.Step(step=step, epoch=1, loss=1.0, epoch_progress=step / 7))
    console.show(_epoch_end())
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text
    assert text.endswith("\n") and len(text.splitlines()) == 2


def test_epoch_line_shows_losses_accuracies_lr_and_seconds():
    assert format_epoch(_epoch_end()) == (
        "epoch 1/2  loss 0.5000 val 0.6000  acc 80.00% val 75.00%  lr 1.00e-02  1.25s"
    )


def test_epoch_line_without_validation_has_no_val_figures():
    e = _epoch_end()
    e.val_loss = e.val_acc = None
    e.metrics = {"train_acc": 0.8, "val_acc": None}
    assert format_epoch(e) == "epoch 1/2  loss 0.5000  acc 80.00%  lr 1.00e-02  1.25s"


def test_the_quickstart_epoch_line_fits_80_columns_and_short_epochs_keep_digits():
    e = _epoch_end()
    e.epoch, e.epochs, e.seconds = 100, 300, 0.031
    assert len(format_epoch(e)) <= 80
    assert format_epoch(e).endswith("  31ms")
    # the longest a classification line gets: 4-digit epochs, both accuracies at 100%
    e.epoch = e.epochs = 1000
    e.metrics = {"train_acc": 1.0, "val_acc": 1.0}
    assert format_epoch(e) == (
        "epoch 1000/1000 loss 0.5000 val 0.6000 acc 100.00% val 100.00% lr 1.00e-02 31ms"
    )


def test_console_sends_errors_and_warnings_to_stderr():
    out, err = io.StringIO(), io.StringIO()
    console = Console(out=out, err=err, tty=False)
    console.show(ev.Warning(message="careful"))
    console.show(ev.RunFailed(error="it broke"))
    assert out.getvalue() == ""
    assert err.getvalue() == "warning: careful\nerror: it broke\n"


# ---- help, and no torch import where none is needed ----


def test_help_lists_the_commands():
    result = run_mpt("--help")
    assert result.returncode == 0, result.stderr
    assert "run" in result.stdout and "validate" in result.stdout


def _imports_torch(code: str) -> bool:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code) + "\nprint('torch' in sys.modules)"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1] == "True"


def test_importing_the_cli_does_not_import_torch():
    assert not _imports_torch("import engine.cli, sys")


def test_help_does_not_import_torch():
    assert not _imports_torch(
        """
        import sys
        from engine.cli import app
        try:
            app(["--help"])
        except SystemExit as e:
            assert e.code == 0, e.code
        """
    )


def test_validate_does_not_import_torch():
    assert not _imports_torch(
        f"""
        import sys
        from engine.cli import app
        try:
            app(["validate", {str(QUICKSTART)!r}])
        except SystemExit as e:
            assert e.code in (0, None), e.code
        """
    )


# ---- mpt validate ----


@pytest.mark.parametrize("profile", sorted(PROFILES.glob("*.toml")), ids=lambda p: p.name)
def test_validate_accepts_every_shipped_profile(profile):
    # Run from the checkout, as the profiles' relative paths (../shared/...) expect.
    # The mnist/cifar10 profiles say data.download = true, so they need no data folder yet.
    result = run_mpt("validate", profile.relative_to(REPO), cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{profile.relative_to(REPO)}: ok"


def test_shipped_torchvision_profiles_validate_with_a_data_root_instead_of_download(tmp_path):
    checked = 0
    for profile in PROFILES.glob("*.toml"):
        if tomllib.loads(profile.read_text())["data"]["dataset"] in TORCHVISION:
            checked += 1
            result = run_mpt(
                "validate", profile, "--set", "data.download=false", "--set",
                f"data.root={tmp_path}",
            )  # fmt: skip
            assert result.returncode == 0, result.stderr
    assert checked >= 2  # mnist-mlp, mnist-amp, cifar10-resnet


# ---- bad input: exit 2, every problem, no traceback, nothing written ----

BAD = {  # the profile, the problems (regexes) after 'p.toml: '
    "malformed_toml": (
        '[run]\nname = "x"\nepochs = = 3\n',
        [r"not valid TOML: .*\(at line 3, column \d+\)"],
    ),
    "unknown_key": ("[optim]\nlrr = 0.1\n", [r"optim\.lrr: unknown key; did you mean 'lr'\?"]),
    "unknown_section": (
        "[trian]\nlog_every = 5\n",
        [r"trian: unknown section; did you mean 'train'\?"],
    ),
    "wrong_type": ('[run]\nepochs = "3"\n', [r"run\.epochs: must be an integer \(got '3'\)"]),
    "lr_not_positive": ("[optim]\nlr = 0.0\n", [r"optim\.lr: must be > 0 \(got 0\.0\)"]),
    "batch_size_below_1": (
        "[data]\nbatch_size = 0\n",
        [r"data\.batch_size: must be >= 1 \(got 0\)"],
    ),
    "unknown_dataset": (
        '[data]\ndataset = "mnsit"\n',
        [r"data\.dataset: must be one of .*; did you mean 'mnist'\? \(got 'mnsit'\)"],
    ),
    "unknown_arch": (
        '[model]\narch = "resnet"\n',
        [r"model\.arch: must be mlp, cnn, resnet18, .*did you mean 'resnet18'\? \(got 'resnet'\)"],
    ),
    "missing_npz": (
        '[data]\ndataset = "npz"\npath = "missing.npz"\n',
        [r"data\.path: no such file; .* \(got 'missing\.npz'\)"],
    ),
    "missing_image_folder": (
        '[data]\ndataset = "image_folder"\npath = "pictures"\n',
        [r"data\.path: no such folder; .* \(got 'pictures'\)"],
    ),
    "missing_mnist_root": (
        '[data]\ndataset = "mnist"\nroot = "datasets"\ndownload = false\n',
        [r"data\.root: no such folder, and data\.download is false; .* \(got 'datasets'\)"],
    ),
    "every_problem_at_once": (
        '[optim]\nlr = -1\nlrr = 2\n[data]\nbatch_size = 0\ndataset = "npz"\npath = "no.npz"\n'
        '[model]\narch = "resnet"\n[trian]\n',
        [
            r"optim\.lr: must be > 0 \(got -1\)",
            r"optim\.lrr: unknown key; did you mean 'lr'\?",
            r"data\.batch_size: must be >= 1 \(got 0\)",
            r"model\.arch: must be .* \(got 'resnet'\)",
            r"trian: unknown section; did you mean 'train'\?",
            r"data\.path: no such file; .* \(got 'no\.npz'\)",
        ],
    ),
}


@pytest.mark.parametrize("command", ["validate", "run"])
@pytest.mark.parametrize("case", list(BAD))
def test_bad_profile_exits_2_listing_every_problem_and_writes_nothing(case, command, tmp_path):
    text, expected = BAD[case]
    (tmp_path / "p.toml").write_text(text)
    result = run_mpt(command, "p.toml", cwd=tmp_path)
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == len(expected), result.stderr
    for pattern in expected:
        assert any(re.fullmatch(r"p\.toml: " + pattern, line) for line in lines), (pattern, lines)
    assert "Traceback" not in result.stderr
    assert result.stdout == ""
    assert [p.name for p in tmp_path.iterdir()] == ["p.toml"]  # no runs/, no data/


@pytest.mark.parametrize("command", ["validate", "run"])
def test_missing_profile_file_exits_2(command, tmp_path):
    result = run_mpt(command, "nope.toml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "nope.toml: no such file"
    assert list(tmp_path.iterdir()) == []


def test_set_without_equals_exits_2(tmp_path):
    result = run_mpt("validate", QUICKSTART, "--set", "optim.lr", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "--set: optim.lr: must look like section.key=value"


def test_set_with_a_bad_value_names_the_key(tmp_path):
    result = run_mpt("run", QUICKSTART, "--set", "optim.lr=-0.5", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == f"{QUICKSTART}: optim.lr: must be > 0 (got -0.5)"
    assert list(tmp_path.iterdir()) == []


def test_set_overrides_reach_the_run_with_toml_types(tmp_path):
    result = run_mpt(
        "run", QUICKSTART, "--set", "optim.lr=0.05", "--set", "run.epochs=2",
        "--set", "data.dataset=synthetic", "--set", "data.synthetic_samples=256",
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    (ran,) = (tmp_path / "runs" / "quickstart").glob("*/profile.toml")
    resolved = tomllib.loads(ran.read_text())
    assert resolved["optim"]["lr"] == 0.05 and isinstance(resolved["optim"]["lr"], float)
    assert resolved["run"]["epochs"] == 2 and isinstance(resolved["run"]["epochs"], int)
    assert resolved["data"]["dataset"] == "synthetic"
    assert resolved["optim"]["name"] == "adam"  # the rest comes from the file
    epochs = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("epoch ")]
    assert epochs == ["1/2", "2/2"]
    assert "synthetic: 205 train / 51 val samples" in result.stdout


# ---- the user's own model ----

USER_MODEL = """
from torch import nn


def build(in_shape, num_classes):
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, num_classes))


def wrong(in_shape, num_classes):
    c, h, w = in_shape
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 3))
"""

TINY = ["--set", "run.epochs=1", "--set", "run.max_steps=3"]


def test_user_model_from_pythonpath_trains(tmp_path):
    (tmp_path / "lib" / "mymodels").mkdir(parents=True)
    (tmp_path / "lib" / "mymodels" / "__init__.py").write_text("")
    (tmp_path / "lib" / "mymodels" / "small.py").write_text(USER_MODEL)
    result = run_mpt(
        "run", QUICKSTART, "--set", 'model.arch="mymodels.small:build"', *TINY,
        cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "lib")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "mymodels.small:build (650 parameters)" in result.stdout


def test_user_model_beside_the_profile_trains_without_pythonpath(tmp_path):
    # `mpt` is a console script: unlike `python -m`, it does not put the working directory
    # on sys.path by itself; relative data paths resolve there, so must model modules.
    (tmp_path / "mymodel.py").write_text(USER_MODEL)
    result = run_mpt("run", QUICKSTART, "--set", "model.arch=mymodel:build", *TINY, cwd=tmp_path)
    assert result.returncode == 0, result.stderr


def test_user_model_with_the_wrong_output_shape_exits_2_naming_the_shapes(tmp_path):
    (tmp_path / "mymodel.py").write_text(USER_MODEL)
    result = run_mpt("run", QUICKSTART, "--set", "model.arch=mymodel:wrong", *TINY, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: the model outputs (2, 3) for 2 class indices of 10 classes; it must output "
        "(2, 10), one score per class"
    )


def test_user_model_that_cannot_be_imported_exits_2_with_a_clear_error(tmp_path):
    result = run_mpt(
        "run", QUICKSTART, "--set", "model.arch=no_such_pkg.models:build", *TINY, cwd=tmp_path
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: model.arch 'no_such_pkg.models:build': cannot import module "
        "'no_such_pkg.models' (No module named 'no_such_pkg')"
    )
    assert "Traceback" not in result.stderr


def test_user_model_module_without_the_factory_exits_2(tmp_path):
    (tmp_path / "mymodel.py").write_text(USER_MODEL)
    result = run_mpt("run", QUICKSTART, "--set", "model.arch=mymodel:nope", *TINY, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: model.arch 'mymodel:nope': module 'mymodel' has no callable 'nope'"
    )


def test_an_early_stop_line_without_its_values_prints_dashes():
    # a hand-written or older events.jsonl may hold null where a value was expected
    from engine.console import format_early_stop

    e = ev.EarlyStop(why="patience", monitor="val_loss", wait=3, best=None)
    assert format_early_stop(e).endswith("for 3 validation(s) (best -)")
    e = ev.EarlyStop(why="stop_above", monitor="val_acc", value=None)
    assert format_early_stop(e) == "early stopping: val_acc = - is above the threshold"
