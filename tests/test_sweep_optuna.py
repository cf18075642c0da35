"""`mpt sweep` with method = "optuna" (issue 17): TPE asks each trial's values, the median
pruner stops a hopeless trial with its checkpoint ("pruned"), and the study in the sweep
directory agrees, also across an interrupted sweep's --resume. Real processes, real signals,
real digits runs; the study read back with optuna.load_study."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from durable_helpers import mpt, profile_dict, read_jsonl, spawn_mpt, wait_for, write_toml

from engine.sweep_spec import SweepError, check_range_ends, load_sweep

optuna = pytest.importorskip("optuna")

# Two trials, one at a time. optuna's first trials are seeded random draws (random_trials):
# seed 10 gives trial 1 lr 0.01 and trial 2 lr 1e-7. Trial 1 early-stops above 90% val_acc
# (complete); at epoch 1 trial 2 is far below it, so the pruner certainly stops it, long
# before its 300 epochs.
SWEEP = """\
profile = "profile.toml"
method = "optuna"
trials = 2
seed = 10
monitor = "val_acc"

[random]
"optim.lr" = { choice = [0.01, 1e-7] }

[optuna]
startup_trials = 1
warmup_epochs = 0
random_trials = 2
"""


def sweep_dir_of(text: str) -> Path | None:
    line = next((x for x in text.splitlines() if x.startswith("sweep directory: ")), None)
    return Path(line.removeprefix("sweep directory: ").split("  (")[0]) if line else None


def last_records(sweep_dir: Path) -> dict[int, dict]:
    """trials.jsonl: the last line of each trial."""
    lines = (sweep_dir / "trials.jsonl").read_text().splitlines()
    return {r["trial"]: r for r in map(json.loads, lines)}


def epoch_values(run_dir: Path) -> dict[int, float]:
    """val_acc by epoch, from the run's epoch_end events."""
    ends = [e for e in read_jsonl(run_dir / "events.jsonl") if e["kind"] == "epoch_end"]
    return {e["epoch"]: e["val_acc"] for e in ends}


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> dict:
    """One optuna sweep of two trials, stopped (Ctrl-C) as trial 2's process starts, and
    resumed: trial 1 early-stopped (complete); trial 2 starts again into its own optuna
    trial and is pruned."""
    folder = tmp_path_factory.mktemp("optuna")
    extra = {
        "run": {"epochs": 300},
        "optim": {"name": "adam"},
        "train": {"log_every": 100},
        "early_stop": {"enabled": True, "monitor": "val_acc", "stop_above": 0.9,
                       "patience": 1000},
    }  # fmt: skip
    write_toml(folder / "profile.toml", profile_dict(folder / "runs", extra))
    (folder / "sweep.toml").write_text(SWEEP)
    out = folder / "first.txt"
    with open(out, "w") as f:
        proc = spawn_mpt("sweep", "sweep.toml", cwd=folder, stdout=f, stderr=subprocess.STDOUT)
    # trial 2's process imports torch for seconds before its run begins: stopped in there
    starting = lambda: "trial 2/2 started" in out.read_text() or proc.poll() is not None  # noqa: E731
    wait_for(starting, 120, "trial 2's start", 0.01)
    proc.send_signal(signal.SIGINT)
    stopped = {"code": proc.wait(timeout=120), "said": out.read_text()}
    sweep_dir = sweep_dir_of(stopped["said"])
    assert sweep_dir is not None, stopped["said"]
    stopped["records"] = last_records(folder / sweep_dir)
    done = mpt("sweep", "--resume", sweep_dir, cwd=folder, timeout=240)
    return {"folder": folder, "sweep_dir": folder / sweep_dir, "code": done.returncode,
            "said": done.stdout + done.stderr, "stopped": stopped}  # fmt: skip


def test_a_trial_stopped_before_its_run_began_starts_again_into_its_optuna_trial(swept: dict):
    stopped = swept["stopped"]
    assert stopped["code"] == 130, stopped["said"]
    assert "trial 2/2 stopped before its run began" in stopped["said"]
    second = stopped["records"][1]  # queued again, not failed: asked, not begun
    assert second["state"] == "queued", second
    assert second["values"] == {"optim.lr": 1e-7} and second["optuna_trial"] == 1
    assert "1 of 2 trials to run" in swept["said"]
    assert "trial 2/2 started: optim.lr=1e-07 (pid" in swept["said"]


def test_a_hopeless_trial_is_pruned_and_ends_with_its_checkpoint(swept: dict):
    assert swept["code"] == 0, swept["said"]  # pruned ends a trial well
    lines = [json.loads(x) for x in (swept["sweep_dir"] / "trials.jsonl").read_text().splitlines()]
    assert lines[1] == {**lines[1], "state": "queued", "values": {}}  # asked as it starts
    records = last_records(swept["sweep_dir"])
    assert records[0]["state"] == "early_stopped" and records[0]["optuna_trial"] == 0
    assert records[0]["values"] == {"optim.lr": 0.01}, "optuna's seeded draws changed"
    pruned = records[1]
    assert pruned["values"] == {"optim.lr": 1e-7} and pruned["optuna_trial"] == 1
    assert pruned["state"] == "pruned" and pruned["pruned_epoch"] == 1
    assert "below the median of the completed trials at that epoch" in pruned["problem"]
    run_dir = Path(pruned["run_dir"])
    assert (run_dir / "checkpoints" / "last.pt").is_file()
    # the table: the pruned trial with its epoch; the best is the completed one
    assert "pruned (ep 1)" in swept["said"]
    assert f"best: trial 1, val_acc {records[0]['best'] * 100:.2f}%" in swept["said"]
    # --resume takes a pruned trial as ended
    again = mpt("sweep", "--resume", swept["sweep_dir"], cwd=swept["folder"])
    assert again.returncode == 0 and "nothing to resume" in again.stdout, again.stderr
    # its checkpoint resumes as any run's does (one epoch more than it had ended)
    more = f"run.epochs={max(epoch_values(run_dir)) + 1}"
    resumed = mpt("run", "--resume", run_dir, "--set", more, cwd=swept["folder"])
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "finished (completed) at step" in resumed.stdout


def test_the_study_in_the_sweep_directory_agrees(swept: dict):
    sweep_dir = swept["sweep_dir"]
    records = last_records(sweep_dir)
    study = optuna.load_study(study_name="sweep", storage=f"sqlite:///{sweep_dir}/optuna.db")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE  # val_acc
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "PRUNED"]  # trial 2: asked once
    complete, pruned = trials
    assert complete.params == {"optim.lr": 0.01} and complete.value == records[0]["best"]
    # every epoch's monitor, as the run logged it
    assert complete.intermediate_values == epoch_values(Path(records[0]["run_dir"]))
    assert pruned.params == {"optim.lr": 1e-7} and list(pruned.intermediate_values) == [1]
    assert [t.user_attrs["mpt_trial"] for t in trials] == ["trial-000", "trial-001"]


def test_without_optuna_installed_the_sweep_names_the_extra(tmp_path: Path):
    # a stand-in package that fails to import, as a missing one does
    (tmp_path / "shim" / "optuna").mkdir(parents=True)
    (tmp_path / "shim" / "optuna" / "__init__.py").write_text(
        "raise ImportError(\"No module named 'optuna'\")\n"
    )
    write_toml(tmp_path / "profile.toml", profile_dict(tmp_path / "runs"))
    (tmp_path / "sweep.toml").write_text(SWEEP)
    path = os.pathsep.join(filter(None, [str(tmp_path / "shim"), os.environ.get("PYTHONPATH")]))
    done = mpt("sweep", "sweep.toml", cwd=tmp_path, env={"PYTHONPATH": path})
    assert done.returncode == 2
    assert done.stderr.strip() == (
        'error: sweep.toml: method: "optuna" needs the optuna package, which is not '
        "installed here; install it with: pip install 'mpt[optuna]'"
    )
    assert not (tmp_path / "runs").exists()  # nothing started


@pytest.mark.parametrize(
    ("table", "said"),
    [
        ('prunner = "median"', "[optuna] prunner: unknown key; [optuna] has pruner, "),
        ('pruner = "hyperband"', "[optuna] pruner: must be one of median, none"),
        ("warmup_epochs = -1", "[optuna] warmup_epochs: must be a whole number >= 0 (got -1)"),
    ],
)
def test_a_bad_optuna_setting_is_one_sentence_naming_the_key(tmp_path: Path, table: str, said: str):
    write_toml(tmp_path / "profile.toml", profile_dict(tmp_path / "runs"))
    (tmp_path / "sweep.toml").write_text(SWEEP.split("[optuna]")[0] + "[optuna]\n" + table)
    with pytest.raises(SweepError) as e:
        load_sweep(tmp_path / "sweep.toml")
    assert str(e.value).startswith(f"{tmp_path / 'sweep.toml'}: {said}")
    assert len(str(e.value).splitlines()) == 1


def test_a_range_end_the_profile_refuses_stops_the_sweep_before_anything_runs(tmp_path: Path):
    write_toml(tmp_path / "profile.toml", profile_dict(tmp_path / "runs"))
    (tmp_path / "sweep.toml").write_text(
        SWEEP.replace("{ choice = [0.01, 1e-7] }", "{ uniform = [0.0, 0.1] }")
    )
    done = mpt("sweep", "sweep.toml", cwd=tmp_path)
    assert done.returncode == 2
    assert "[random] optim.lr = 0.0 (its low end): optim.lr: must be > 0" in done.stderr
    assert "--skip-invalid cannot skip them" in done.stderr
    emitted = mpt("sweep", "sweep.toml", "--emit", cwd=tmp_path)
    assert emitted.returncode == 2 and "--emit cannot print them in advance" in emitted.stderr
    assert not (tmp_path / "runs").exists()


def test_the_example_optuna_sweep_file_is_valid_as_shipped():
    repo = Path(__file__).resolve().parents[1]
    sweep = load_sweep(repo / "sweeps" / "quickstart-optuna.toml")
    assert sweep.method == "optuna" and sweep.trials == 4 and sweep.parallel == 2
    assert sweep.optuna["pruner"] == "median" and not check_range_ends(sweep)
