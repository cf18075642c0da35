"""`mpt sweep` (issue 17): a sweep file's trials as a supervised queue of ordinary `mpt run`
processes, checked before anything runs, interrupted and resumed exactly, a failed trial
recorded while the others finish. Real processes, real signals, real digits runs."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from durable_helpers import (
    merge,
    metrics,
    mpt,
    profile_dict,
    read_jsonl,
    spawn_mpt,
    train,
    wait_for,
    write_toml,
)

from engine.sweep_spec import SweepError, check_trials, load_sweep

SWEEP = """\
profile = "profile.toml"
method = "grid"
parallel = 2
monitor = "val_loss"

[grid]
"optim.lr" = [0.001, 0.01]
"data.batch_size" = [32, 64]
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A working folder with profile.toml (tiny digits runs into runs/) and sweep.toml."""
    write_toml(tmp_path / "profile.toml", profile_dict(Path("runs"), {"run": {"epochs": 1}}))
    (tmp_path / "sweep.toml").write_text(SWEEP)
    return tmp_path


def sweep_dir_of(stdout: str) -> Path:
    line = next(x for x in stdout.splitlines() if x.startswith("sweep directory: "))
    return Path(line.removeprefix("sweep directory: ").split("  (")[0])


def trial_lines(sweep_dir: Path) -> list[dict]:
    """trials.jsonl: one JSON object a line, each a change of one trial's state."""
    text = (sweep_dir / "trials.jsonl").read_text()
    return [json.loads(line) for line in text.splitlines()]


def last_records(sweep_dir: Path) -> dict[int, dict]:
    return {r["trial"]: r for r in trial_lines(sweep_dir)}


# ---- the file ----


def test_a_grid_is_every_combination_in_the_files_order(folder: Path):
    sweep = load_sweep(folder / "sweep.toml")
    values = [t.values for t in sweep.expand()]
    assert values == [
        {"optim.lr": 0.001, "data.batch_size": 32},
        {"optim.lr": 0.001, "data.batch_size": 64},
        {"optim.lr": 0.01, "data.batch_size": 32},
        {"optim.lr": 0.01, "data.batch_size": 64},
    ]
    assert sweep.expand()[2].overrides() == ["optim.lr=0.01", "data.batch_size=32"]
    assert not check_trials(sweep, sweep.expand())


def test_random_draws_are_in_range_and_the_same_for_the_same_seed(folder: Path):
    (folder / "r.toml").write_text(
        'profile = "profile.toml"\nmethod = "random"\ntrials = 20\nseed = 7\n[random]\n'
        '"optim.lr" = { log_uniform = [1e-4, 1e-1] }\n'
        '"model.dropout" = { uniform = [0.0, 0.5] }\n'
        '"optim.name" = { choice = ["adam", "sgd"] }\n'
        '"data.batch_size" = { int_uniform = [16, 64] }\n'
    )
    trials = load_sweep(folder / "r.toml").expand()
    assert len(trials) == 20 and trials == load_sweep(folder / "r.toml").expand()
    lrs = [t.values["optim.lr"] for t in trials]
    assert all(1e-4 <= lr <= 1e-1 for lr in lrs) and min(lrs) < 1e-3 < max(lrs)  # log scale
    assert all(0.0 <= t.values["model.dropout"] <= 0.5 for t in trials)
    assert {t.values["optim.name"] for t in trials} == {"adam", "sgd"}
    assert all(isinstance(t.values["data.batch_size"], int) for t in trials)
    assert not check_trials(load_sweep(folder / "r.toml"), trials)


@pytest.mark.parametrize(
    ("text", "said"),
    [
        ('method = "grid"\n[grid]\n"optim.lr" = [0.1]', "profile: missing"),
        ('profile = "nope.toml"\n[grid]\n"optim.lr" = [0.1]', "nope.toml: no such file"),
        ('profile = "profile.toml"\n[grid]\n"optim.lrr" = [0.1]', "did you mean 'optim.lr'?"),
        ('profile = "profile.toml"\nmethod = "bayes"', "method: must be one of grid, random"),
        ('profile = "profile.toml"\n[grid]\n"optim.lr" = []', "non-empty list of values"),
        (
            'profile = "profile.toml"\nmethod = "random"\n[random]\n"optim.lr" = {x = [1]}',
            "unknown distribution 'x'",
        ),  # fmt: skip
        (
            'profile = "profile.toml"\nmethod = "random"\ntrials = 2\n[random]\n'
            '"optim.lr" = {log_uniform = [0, 1]}',
            "log_uniform: low must be > 0",
        ),  # fmt: skip
        (
            'profile = "profile.toml"\nparallel = 2\ndevices = ["cuda:0"]\n'
            '[grid]\n"optim.lr" = [1]',
            "one trial runs on a device at a time",
        ),  # fmt: skip
        ('profile = "profile.toml"\nparalel = 2\n[grid]\n"optim.lr" = [1]', "paralel: unknown key"),
    ],
)
def test_a_bad_sweep_file_is_one_sentence_naming_the_key(folder: Path, text: str, said: str):
    (folder / "bad.toml").write_text(text)
    with pytest.raises(SweepError) as e:
        load_sweep(folder / "bad.toml")
    assert said in str(e.value) and str(folder / "bad.toml") in str(e.value)


def test_devices_set_the_trials_at_once_and_must_be_on_this_machine(folder: Path):
    (folder / "d.toml").write_text(
        'profile = "profile.toml"\ndevices = ["cpu", "cpu"]\n[grid]\n"optim.lr" = [0.1]\n'
    )
    assert load_sweep(folder / "d.toml").parallel == 2  # one trial on each
    (folder / "d.toml").write_text(
        'profile = "profile.toml"\ndevices = ["cuda:0", "gpu1"]\n[grid]\n"optim.lr" = [0.1]\n'
    )
    with pytest.raises(SweepError, match=r"devices: must be a list of device names \(cpu, mps"):
        load_sweep(folder / "d.toml")
    (folder / "d.toml").write_text(
        'profile = "profile.toml"\ndevices = ["cuda:0", "cuda:1"]\n[grid]\n"optim.lr" = [0.1]\n'
    )
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the missing-device case needs one without")
    done = mpt("sweep", "d.toml", cwd=folder)
    assert done.returncode == 2
    assert "devices: cuda:0, cuda:1 not on this machine (no CUDA device)" in done.stderr
    assert not (folder / "runs").exists()


def test_invalid_trial_values_are_refused_before_anything_runs(folder: Path):
    (folder / "sweep.toml").write_text(SWEEP.replace("[0.001, 0.01]", "[0.001, -1]"))
    done = mpt("sweep", "sweep.toml", cwd=folder)
    assert done.returncode == 2
    assert "trial 3 (optim.lr=-1 data.batch_size=32): optim.lr: must be > 0 (got -1)" in (
        done.stderr
    )
    assert "--skip-invalid" in done.stderr
    assert not (folder / "runs").exists()  # nothing ran, nothing was made


# ---- running it ----


def test_a_grid_sweep_runs_every_trial_two_at_a_time_and_ranks_them(folder: Path):
    # three trials (each a process that imports torch: seconds), two at a time
    (folder / "sweep.toml").write_text(SWEEP.replace("[32, 64]", "[32]").replace(
        "[0.001, 0.01]", "[0.001, 0.01, 0.1]"))  # fmt: skip
    done = mpt("sweep", "sweep.toml", cwd=folder, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    sweep_dir = folder / sweep_dir_of(done.stdout)
    assert sweep_dir.parent == folder / "runs" / "sweep"  # <out_dir>/<sweep name>/<stamp>/
    records = last_records(sweep_dir)
    assert [records[i]["state"] for i in range(3)] == ["finished"] * 3
    # each trial an ordinary run of the profile with its values
    for rec in records.values():
        run_dir = folder / rec["run_dir"]
        profile = (run_dir / "profile.toml").read_text()
        assert f"lr = {rec['values']['optim.lr']}" in profile
        assert f"batch_size = {rec['values']['data.batch_size']}" in profile
        ends = [e for e in read_jsonl(run_dir / "events.jsonl") if e["kind"] == "epoch_end"]
        assert rec["best"] == min(e["val_loss"] for e in ends)
    # two at a time: the second trial started before the first ended
    starts = [r for r in trial_lines(sweep_dir) if r["state"] == "running"]
    ends = [r for r in trial_lines(sweep_dir) if r["state"] == "finished"]
    assert starts[1]["time"] < ends[0]["time"]
    # the table: sorted by the monitor (val_loss: lowest first), the best named
    table = done.stdout.split("trial  state")[1].splitlines()[1:4]
    ranked = sorted(records.values(), key=lambda r: r["best"])
    assert [int(line.split()[0]) for line in table] == [r["trial"] + 1 for r in ranked]
    assert f"best: trial {ranked[0]['trial'] + 1}, val_loss" in done.stdout
    listed = mpt("ls", str(sweep_dir), cwd=folder)
    assert listed.stdout.count("finished") == 3


def test_a_trial_that_fails_at_run_time_is_recorded_and_the_others_finish(folder: Path):
    good = np.load(Path(__file__).resolve().parents[2] / "shared/data/mnist-t10k.npz")
    np.savez(folder / "good.npz", **{k: good[k][:300] for k in good.files})
    (folder / "bad.npz").write_bytes(b"not an npz file at all")
    (folder / "sweep.toml").write_text(
        'profile = "profile.toml"\nparallel = 1\n[grid]\n"data.dataset" = ["npz"]\n'
        '"data.path" = ["bad.npz", "good.npz"]\n'
    )
    done = mpt("sweep", "sweep.toml", cwd=folder, timeout=400)
    assert done.returncode == 1, done.stdout + done.stderr
    records = last_records(folder / sweep_dir_of(done.stdout))
    assert records[0]["state"] == "failed" and "bad.npz" in records[0]["problem"]
    assert records[1]["state"] == "finished"
    assert "trial 1/2 failed: " in done.stdout


def test_an_interrupted_sweep_resumes_its_trials_exactly_and_runs_the_rest(folder: Path):
    base = profile_dict(folder / "runs", {"run": {"epochs": 20}, "train": {"log_every": 1}})
    write_toml(folder / "profile.toml", base)
    (folder / "sweep.toml").write_text(
        'profile = "profile.toml"\nparallel = 2\n[grid]\n"optim.lr" = [0.001, 0.003]\n'
    )
    # what each trial logs when nothing stops it (the same profile and values, trained here)
    reference = [
        metrics([e.to_dict() for e in train(merge(base, {"optim": {"lr": lr}})).events])
        for lr in (0.001, 0.003)
    ]

    out = folder / "out.txt"
    with open(out, "w") as f:
        proc = spawn_mpt("sweep", "sweep.toml", cwd=folder, stdout=f, stderr=subprocess.STDOUT)
    sweep_dir = wait_for(lambda: _printed_sweep_dir(out), 120, "the sweep directory")
    sweep_dir = folder / sweep_dir

    def both_trials_in_epoch_2() -> bool:
        runs = list(sweep_dir.glob("trial-*/*/events.jsonl"))
        in_2 = [any(e.get("epoch", 0) >= 2 for e in read_jsonl(run)) for run in runs]
        return len(runs) == 2 and all(in_2)

    try:
        wait_for(both_trials_in_epoch_2, 120, "both trials' second epoch")
    except AssertionError as e:
        raise AssertionError(f"{e}: {_said(out, proc)}") from None
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=120) == 130, out.read_text()
    records = last_records(sweep_dir)
    assert [records[0]["state"], records[1]["state"]] == ["interrupted"] * 2, records
    assert f"mpt sweep --resume {sweep_dir}" in out.read_text()  # (out_dir is absolute)

    resumed = mpt("sweep", "--resume", str(sweep_dir), cwd=folder, timeout=400)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "trial 1/2 started: optim.lr=0.001, resuming " in resumed.stdout
    assert "trial 2/2 started: optim.lr=0.003, resuming " in resumed.stdout
    records = last_records(sweep_dir)
    for i in (0, 1):
        assert records[i]["state"] == "finished"
        # bit-exact: every logged loss and metric as in the sweep that was never stopped
        got = metrics(read_jsonl(folder / records[i]["run_dir"] / "events.jsonl"))
        assert got == reference[i], f"trial {i + 1}"
    again = mpt("sweep", "--resume", str(sweep_dir), cwd=folder)
    assert again.returncode == 0 and "nothing to resume" in again.stdout


def _said(out: Path, proc: subprocess.Popen) -> str:
    """What the sweep printed, for a failure's message (evaluated when it is made)."""
    return f"exit {proc.poll()}, printed {out.read_text()!r}"


def _printed_sweep_dir(out: Path) -> Path | None:
    text = out.read_text()
    return sweep_dir_of(text) if "sweep directory: " in text else None


def test_usage_mistakes_exit_2_with_one_sentence(folder: Path):
    neither = mpt("sweep", cwd=folder)
    assert neither.returncode == 2 and "give a sweep file, --resume SWEEP_DIR or" in neither.stderr
    nothing = mpt("sweep", "--resume", "runs/none", cwd=folder)
    assert nothing.returncode == 2 and "not a sweep directory" in nothing.stderr
    assert "Traceback" not in neither.stderr + nothing.stderr


def test_the_example_sweep_file_is_valid_as_shipped():
    repo = Path(__file__).resolve().parents[1]
    sweep = load_sweep(repo / "sweeps" / "quickstart-lr.toml")
    trials = sweep.expand()
    assert len(trials) == 4 and sweep.parallel == 2
    assert not check_trials(sweep, trials)


def test_a_killed_sweep_leaves_its_trial_training_and_resume_never_starts_a_second_copy(
    folder: Path,
):
    # SIGKILL reaches the sweep alone: its trial is a process of its own and trains on.
    # --resume refuses while that run is live; once it has ended (here: stopped by the
    # user), --resume takes its end as it is and runs the trials not started.
    (folder / "sweep.toml").write_text(
        'profile = "profile.toml"\nparallel = 1\n[grid]\n"run.epochs" = [1000, 1]\n'
    )
    out = folder / "out.txt"
    with open(out, "w") as f:
        proc = spawn_mpt("sweep", "sweep.toml", cwd=folder, stdout=f, stderr=subprocess.STDOUT)
    sweep_dir = folder / wait_for(lambda: _printed_sweep_dir(out), 120, "the sweep directory")
    run_dir = wait_for(
        lambda: next((sweep_dir / "trial-000").glob("*/events.jsonl"), None), 120, "trial 1"
    ).parent
    wait_for(lambda: any(e["kind"] == "step" for e in read_jsonl(run_dir / "events.jsonl")),
             120, "trial 1's first step")  # fmt: skip
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    refused = mpt("sweep", "--resume", str(sweep_dir), cwd=folder)
    assert refused.returncode == 2
    assert f"trial 1's run {run_dir} is still running" in refused.stderr
    assert not list((sweep_dir / "trial-001").glob("*"))  # nothing started beside it

    stopped = mpt("ctl", str(run_dir), "stop", cwd=folder, timeout=120)
    assert stopped.returncode == 0, stopped.stderr
    # the sweep directory holds all it needs: its own copy of the profile, as it started
    (folder / "sweep.toml").unlink()
    (folder / "profile.toml").write_text("[run]\nepochs = 0\n")
    resumed = mpt("sweep", "--resume", str(sweep_dir), cwd=folder, timeout=400)
    records = last_records(sweep_dir)
    assert records[0]["state"] == "stopped" and records[0]["run_dir"] == str(run_dir)
    assert records[1]["state"] == "finished", resumed.stdout + resumed.stderr
    assert resumed.returncode == 0


def test_emit_prints_each_trials_command_and_collect_reads_what_they_wrote(folder: Path):
    # beyond one box: the commands go to a scheduler (here: run by hand), the table back
    (folder / "sweep.toml").write_text(SWEEP.replace("[32, 64]", "[64]"))
    emitted = mpt("sweep", "sweep.toml", "--emit", cwd=folder)
    assert emitted.returncode == 0, emitted.stderr
    printed = sweep_dir_of(emitted.stderr)  # (relative: the profile's out_dir is)
    sweep_dir = folder / printed
    commands = [shlex.split(line) for line in emitted.stdout.splitlines()]
    assert len(commands) == 2 and all(c[:3] == ["mpt", "run", str(printed / "profile.toml")]
                                      for c in commands)  # fmt: skip
    assert "optim.lr=0.01" in commands[1] and 'run.name="trial-001"' in commands[1]
    assert not list(sweep_dir.glob("trial-*/*"))  # nothing ran

    first = mpt(*commands[0][1:], cwd=folder)
    assert first.returncode == 0, first.stderr
    partial = mpt("sweep", "--collect", str(sweep_dir), cwd=folder)
    assert partial.returncode == 1  # one trial not run yet
    records = last_records(sweep_dir)
    assert records[0]["state"] == "finished" and records[1]["state"] == "queued"
    assert Path(records[0]["run_dir"]).parent.name == "trial-000"

    assert mpt(*commands[1][1:], cwd=folder).returncode == 0
    whole = mpt("sweep", "--collect", str(sweep_dir), cwd=folder)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    assert "best: trial " in whole.stdout
    assert [r["state"] for r in last_records(sweep_dir).values()] == ["finished"] * 2
    # a sweep directory stands for its trials' runs in mpt compare
    compared = mpt("compare", str(sweep_dir), "--no-plot", cwd=folder)
    assert compared.returncode == 0, compared.stderr
    assert "2 runs by best val_acc" in compared.stdout and "trial-001/" in compared.stdout
