"""`mpt init`, `mpt ls`, `mpt show` and shell completion, run as a user runs them."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap

import pytest
from conftest import MPT, PROFILES, REPO, run_mpt

from engine import events as ev
from engine.profile import FIELDS, Profile, load_profile, profile_from_toml

STAMP = r"\d{8}-\d{6}(-\d+)?"


# ---- mpt init ----


def test_init_writes_a_commented_profile_of_the_defaults(tmp_path):
    result = run_mpt("init", "first", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    path = tmp_path / "profiles" / "first.toml"
    assert result.stdout == (
        "wrote profiles/first.toml; check it with: mpt validate profiles/first.toml, "
        "then: mpt run profiles/first.toml\n"
    )
    text = path.read_text()
    profile = profile_from_toml(text, str(path))
    assert profile == dataclasses.replace(
        Profile(), run=dataclasses.replace(Profile().run, name="first")
    )
    assert run_mpt("validate", path, cwd=tmp_path).returncode == 0


def test_init_shows_every_key_with_its_help(tmp_path):
    assert run_mpt("init", tmp_path / "p.toml", cwd=tmp_path).returncode == 0
    text = (tmp_path / "p.toml").read_text()
    flat = " ".join(line.lstrip("# ") for line in text.splitlines())
    for spec in FIELDS:
        assert re.search(rf"^(# )?{spec.name} = ", text, re.M), spec.path
        assert spec.help.split()[0] in flat, spec.path
    assert text.count("\n[") == len({f.section for f in FIELDS})


def test_init_never_overwrites_without_force(tmp_path):
    path = tmp_path / "profiles" / "mine.toml"
    path.parent.mkdir()
    path.write_text("# my own work\n")
    result = run_mpt("init", "mine", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        "error: profiles/mine.toml already exists; choose another name, or pass --force to "
        "overwrite it\n"
    )
    assert path.read_text() == "# my own work\n"
    assert run_mpt("init", "mine", "--force", cwd=tmp_path).returncode == 0
    assert "[run]" in path.read_text()


def test_init_from_a_profile_keeps_its_values_under_the_new_name(tmp_path):
    source = PROFILES / "quickstart.toml"
    result = run_mpt("init", "digits-wide", "--from", source, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    written = load_profile(tmp_path / "profiles" / "digits-wide.toml")
    want = load_profile(source)
    assert written == dataclasses.replace(
        want, run=dataclasses.replace(want.run, name="digits-wide")
    )
    text = (tmp_path / "profiles" / "digits-wide.toml").read_text()
    assert f"started from {source}" in text.splitlines()[0]
    assert "\nepochs = 15\n" in text and '\nname = "adam"\n' in text


def test_init_from_a_bad_profile_exits_2_naming_the_key(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[optim]\nlr = -1\n")
    result = run_mpt("init", "x", "--from", bad, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == f"error: {bad}: optim.lr: must be > 0 (got -1)\n"
    assert not (tmp_path / "profiles").exists()


# ---- mpt ls and mpt show, on real runs ----


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two quickstart runs (3 and 2 epochs) and one that failed while training (a mistake
    found in setup leaves no run directory), in one runs folder.

    The runs are the engine's own, in this process (what `mpt run` starts, without the
    seconds a new process spends importing torch): the commands under test read them."""
    from engine.run import Run

    cwd = tmp_path_factory.mktemp("tools")
    quick = PROFILES / "quickstart.toml"
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(cwd)  # run.out_dir "runs", relative, as `mpt run` in that folder has it
        for epochs in (3, 2):
            run = Run.start(load_profile(quick, [f"run.epochs={epochs}"]))
            assert run.join(timeout=240) == "completed", run.error
        broken = ["run.name=broken", "optim.lr=1e30", "train.log_every=1"]
        failed = Run.start(load_profile(quick, broken))
        assert failed.join(timeout=240) == "failed" and not failed.user_error, failed.error
    return cwd


def test_ls_lists_every_run_newest_first(runs):
    result = run_mpt("ls", cwd=runs)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["RUN", "STATE", "EPOCH", "BEST", "VAL", "LAST", "CHECKPOINT"]
    assert len(rows) == 3
    quick = [r.split() for r in rows if r.startswith("quickstart/")]
    assert [r[1:3] for r in quick] == [["finished", "2/2"], ["finished", "3/3"]]
    for r in quick:
        assert re.fullmatch(rf"quickstart/{STAMP}", r[0])
        assert re.fullmatch(r"\d+\.\d\d%", r[3])
        assert re.fullmatch(r"checkpoints/step-\d{6}\.pt", r[4])
    (broken,) = [r.split() for r in rows if r.startswith("broken/")]
    assert broken[1:] == ["failed", "1/15", "-", "-"]  # it failed in its first epoch


def test_ls_of_a_missing_folder_exits_2(tmp_path):
    result = run_mpt("ls", tmp_path / "nope", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith(f"error: {tmp_path / 'nope'}: no such folder")


def test_ls_of_an_empty_folder_says_so(tmp_path):
    result = run_mpt("ls", tmp_path, cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout == f"no runs in {tmp_path}\n"


def test_show_prints_the_summary_and_one_row_per_epoch(runs):
    (run_dir,) = [p for p in (runs / "runs" / "quickstart").iterdir() if len(_epochs(p)) == 3]
    result = run_mpt("show", run_dir.relative_to(runs), cwd=runs)
    assert result.returncode == 0, result.stderr
    summary, table = result.stdout.split("\n\n")
    fields = dict(re.split(r"\s{2,}", line, maxsplit=1) for line in summary.splitlines())
    assert fields["state"] == "finished"
    assert fields["progress"] == "epoch 3/3, step 135/135"
    assert fields["data"] == "digits: 1,438 train / 359 val; input 1x8x8, 10 classes"
    header, *rows = table.splitlines()
    assert header.split()[:2] == ["EPOCH", "STEP"]
    for row, e in zip(rows, _epochs(run_dir), strict=True):
        cells = row.split()
        assert cells[:6] == [
            str(e.epoch),
            str(e.step),
            f"{e.train_loss:.4f}",
            f"{100 * e.train_acc:.2f}%",
            f"{e.val_loss:.4f}",
            f"{100 * e.val_acc:.2f}%",
        ]
    assert len(rows) == 3


def _epochs(run_dir):
    return [e for e in ev.read_events(run_dir / "events.jsonl") if isinstance(e, ev.EpochEnd)]


def test_show_by_name_picks_the_newest_run(runs):
    result = run_mpt("show", "quickstart", cwd=runs)
    assert result.returncode == 0, result.stderr
    assert "progress      epoch 2/2" in result.stdout  # the 2-epoch run came second


def test_show_of_a_failed_run_gives_its_error(runs):
    result = run_mpt("show", "broken", cwd=runs)
    assert result.returncode == 0, result.stderr
    assert "state         failed" in result.stdout
    assert re.search(r"^error\s+the training loss became nan by step \d+", result.stdout, re.M)
    assert result.stdout.endswith("no epoch finished yet\n")


def test_show_of_an_unknown_run_exits_2(runs):
    result = run_mpt("show", "nope", cwd=runs)
    assert result.returncode == 2
    assert result.stderr == (
        "error: nope: no such run directory, and no run of that name in runs; "
        "mpt ls lists the runs\n"
    )


# ---- no torch for the commands that only read files ----


@pytest.mark.parametrize(
    "args",
    [
        ["ls"],
        ["show", "quickstart"],
        ["init", "t"],
        ["diff", "quickstart", "quickstart"],
        ["compare", "quickstart", "quickstart"],
    ],
)
def test_reading_commands_do_not_import_torch(runs, args, tmp_path):
    code = textwrap.dedent(
        f"""
        import os, sys
        os.chdir({str(runs if args[0] != "init" else tmp_path)!r})
        from engine.cli import app
        try:
            app({args!r})
        except SystemExit as e:
            assert e.code in (0, None), e.code
        print('torch' in sys.modules)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


# ---- shell completion (Typer's: mpt --install-completion) ----


def complete(words: str) -> list[str]:
    """What bash completion offers after `words` (Typer's completion protocol)."""
    env = {
        **os.environ,
        "_MPT_COMPLETE": "complete_bash",
        "COMP_WORDS": words,
        "COMP_CWORD": str(len(words.split(" ")) - 1),
    }
    p = subprocess.run([*MPT], env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout.split()


def test_completion_offers_every_subcommand():
    commands = ["validate", "run", "init", "ls", "show", "sweep", "diff", "compare"]
    assert complete("mpt ") == [*commands, "ctl", "rm", "lr-find", "export"]
    assert complete("mpt ex") == ["export"]


def test_completion_offers_the_export_formats():
    assert complete("mpt export x --format ") == ["state_dict", "torchscript", "onnx", "pt2"]


def test_show_completion_prints_a_bash_script():
    result = run_mpt("--show-completion", "bash")
    assert result.returncode == 0, result.stderr
    assert "_MPT_COMPLETE=complete_bash" in result.stdout
