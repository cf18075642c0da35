"""`mpt diff` and `mpt compare` on real runs, run as a user runs them."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import select
import shutil
import struct
import subprocess
import termios
import time

import pytest
from conftest import MPT, PROFILES, run_mpt
from durable_helpers import profile_dict

from engine import events as ev
from engine.formatting import metric

# Three digits runs that differ in optim.lr and data.batch_size (the first at the default
# lr, 0.01), and a regression run (scikit-learn's diabetes table).
DIGITS = {
    "fast": {"optim": {"lr": 0.2}, "data": {"batch_size": 32}},
    "base": {"optim": {"lr": 0.01}},
    "slow": {"optim": {"lr": 0.001}},
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The runs folder (`cwd/runs`) and each run's directory by its key.

    The runs are the engine's own, in this process (what `mpt run` starts, without the
    seconds a new process spends importing torch): the commands under test read them."""
    from engine.profile import load_profile, profile_from_dict
    from engine.run import Run

    cwd = tmp_path_factory.mktemp("compare")
    out = cwd / "runs"
    made = {}
    for key, extra in DIGITS.items():
        data = profile_dict(out, {"run": {"name": "digits", "epochs": 2}}, extra)
        data["train"]["log_every"] = 20
        run = Run.start(profile_from_dict(data, "<test>"))
        assert run.join(timeout=240) == "completed", run.error
        made[key] = run.run_dir
    diabetes = load_profile(
        PROFILES / "diabetes-regression.toml", ["run.epochs=1", f"run.out_dir='{out}'"]
    )
    run = Run.start(diabetes)
    assert run.join(timeout=240) == "completed", run.error
    made["diabetes"] = run.run_dir
    return cwd, made


def _epochs(run_dir) -> list[ev.EpochEnd]:
    return [e for e in ev.read_events(run_dir / "events.jsonl") if isinstance(e, ev.EpochEnd)]


def _rows(block: str) -> dict[str, list[str]]:
    """A table's rows by their first cell, cells split at two or more spaces."""
    rows = [re.split(r"\s{2,}", line.strip()) for line in block.splitlines()[1:]]
    return {r[0]: r[1:] for r in rows}


def _copy(run_dir, tmp_path, name="copy"):
    """A copy of a run directory (a run of another name: runs/<name>/<stamp>) to edit."""
    target = tmp_path / "runs" / name / run_dir.name
    shutil.copytree(run_dir, target)
    return target


# ---- mpt diff ----


def test_diff_prints_the_keys_that_differ_and_the_metrics_side_by_side(runs):
    cwd, made = runs
    a, b = made["base"], made["fast"]
    result = run_mpt("diff", a, b, cwd=cwd)
    assert result.returncode == 0, result.stderr
    head, keys, side, *rest = result.stdout.rstrip("\n").split("\n\n")
    assert head.splitlines() == [f"A  {a}", f"B  {b}"]
    assert rest == []  # nothing to note: every line of both runs was read
    # schema order (data before optim); values as TOML writes them
    assert keys.splitlines()[0].split() == ["KEY", "A", "B"]
    assert _rows(keys) == {"data.batch_size": ["64", "32"], "optim.lr": ["0.01", "0.2"]}
    rows = _rows(side)
    assert rows["state"] == ["finished", "finished"]
    assert rows["epochs"] == ["2/2", "2/2"]
    assert rows["steps"] == ["46/46", "90/90"]  # 1,438 samples: 23 batches of 64, 45 of 32
    assert all(re.fullmatch(r"\d+\.\d s", t) for t in rows["time"])
    ends = {"A": _epochs(a), "B": _epochs(b)}
    for name in ("train_loss", "train_acc", "val_loss", "val_acc"):
        for column, side_ends in enumerate(ends.values()):
            values = [getattr(e, name) for e in side_ends]
            assert rows[name][column] == metric(name, values[-1])
            best = (min if name.endswith("loss") else max)(values)
            at = values.index(best) + 1
            assert rows[f"{name} best"][column] == f"{metric(name, best)} (epoch {at})"
    assert list(rows)[4:] == [
        "train_loss",
        "train_loss best",
        "train_acc",
        "train_acc best",
        "val_loss",
        "val_loss best",
        "val_acc",
        "val_acc best",
    ]


def test_diff_takes_a_key_left_out_as_its_default_and_sets_the_run_name_aside(runs, tmp_path):
    cwd, made = runs
    a = made["base"]  # optim.lr = 0.01, the default
    b = _copy(a, tmp_path, name="renamed")
    text = (b / "profile.toml").read_text()
    assert "lr = 0.01\n" in text
    text = text.replace("lr = 0.01\n", "").replace('name = "digits"', 'name = "renamed"')
    (b / "profile.toml").write_text(text)
    result = run_mpt("diff", a, b, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n\n")[1] == "the profiles are the same but for run.name"
    same = run_mpt("diff", a, a, cwd=cwd)
    assert same.returncode == 0, same.stderr
    assert same.stdout.split("\n\n")[1] == "the profiles are the same"


def test_diff_by_run_name_takes_its_newest_run(runs):
    cwd, made = runs
    result = run_mpt("diff", "digits", "diabetes-regression", cwd=cwd)
    assert result.returncode == 0, result.stderr
    newest = [made["slow"].relative_to(cwd), made["diabetes"].relative_to(cwd)]
    assert result.stdout.splitlines()[:2] == [f"A  {newest[0]}", f"B  {newest[1]}"]


def test_diff_of_runs_of_different_tasks_compares_the_metrics_they_share(runs):
    cwd, made = runs
    result = run_mpt("diff", made["base"], made["diabetes"], cwd=cwd)
    assert result.returncode == 0, result.stderr
    _, keys, side, only = result.stdout.rstrip("\n").split("\n\n")
    assert _rows(keys)["task.kind"] == ["'classification'", "'regression'"]
    assert _rows(keys)["data.dataset"] == ["'digits'", "'examples.diabetes:make'"]
    names = [k for k in _rows(side) if k not in ("state", "epochs", "steps", "time")]
    assert names == ["train_loss", "train_loss best", "val_loss", "val_loss best"]
    assert only.splitlines() == [
        "only A has train_acc, val_acc (not compared)",
        "only B has train_mae, val_mae, val_r2 (not compared)",
    ]


def test_diff_of_a_missing_run_or_a_folder_that_is_no_run_exits_2_in_one_sentence(runs, tmp_path):
    cwd, made = runs
    result = run_mpt("diff", made["base"], "nope", cwd=cwd)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "error: nope: no such run directory, and no run of that name in runs; "
        "mpt ls lists the runs\n"
    )
    (tmp_path / "notes").mkdir()
    result = run_mpt("diff", tmp_path / "notes", made["base"], cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == (
        f"error: {tmp_path / 'notes'}: not a run directory (it has no events.jsonl)\n"
    )


def test_diff_and_compare_read_a_damaged_run_and_say_what_they_skipped(runs, tmp_path):
    cwd, made = runs
    b = _copy(made["fast"], tmp_path)
    lines = (b / "events.jsonl").read_text().splitlines(keepends=True)
    lines.insert(3, "{not json\n")
    (b / "events.jsonl").write_text("".join(lines))
    (b / "profile.toml").write_text("[optim\n")
    result = run_mpt("diff", made["base"], b, cwd=cwd)
    assert result.returncode == 0, result.stderr
    _, settings, side, notes = result.stdout.rstrip("\n").split("\n\n")
    assert settings.startswith("the profiles are not compared")
    assert _rows(side)["epochs"] == ["2/2", "2/2"]
    assert _rows(side)["state"] == ["finished", "finished, 1 bad line"]
    first, second = notes.splitlines()
    assert first == (
        "B: events.jsonl: 1 line could not be read (line 4: not JSON); compared what could be read"
    )
    assert second.startswith(f"B: {b / 'profile.toml'}: not valid TOML")
    assert second.endswith("; its settings are not compared")
    result = run_mpt("compare", made["base"], b, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert f"digits/{b.name}: events.jsonl: 1 line could not be read (line 4" in result.stdout


def test_a_run_with_no_readable_event_and_no_profile_is_still_listed(runs, tmp_path):
    cwd, made = runs
    b = _copy(made["fast"], tmp_path)
    (b / "events.jsonl").write_text('garbage\n{"a": 1}\n')
    (b / "profile.toml").unlink()
    result = run_mpt("compare", made["base"], b, cwd=cwd)
    assert result.returncode == 0, result.stderr
    table, notes = result.stdout.rstrip("\n").split("\n\n")
    row = re.split(r"\s{2,}", table.splitlines()[-1])
    assert row == [f"copy/{b.name}", "unreadable, 2 bad lines", "-", "-", "-"]
    assert notes.splitlines() == [
        f"copy/{b.name}: no val_acc",
        f"copy/{b.name}: no line of events.jsonl could be read as an event (2 lines could "
        "not be read (line 1: not JSON; line 2: no kind)); it has no metrics to compare",
        f"copy/{b.name}: {b / 'profile.toml'}: no such file; its settings are not compared",
    ]


def test_text_from_the_files_is_printed_with_control_characters_escaped(runs, tmp_path):
    cwd, made = runs
    b = _copy(made["base"], tmp_path)
    text = (b / "profile.toml").read_text()
    (b / "profile.toml").write_text(text.replace('path = ""', 'path = "\\u001b]0;owned\\u0007"'))
    result = run_mpt("diff", made["base"], b, cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert _rows(result.stdout.split("\n\n")[1])["data.path"] == ["''", "'\\x1b]0;owned\\x07'"]


# ---- mpt compare ----


def test_compare_prints_a_row_a_run_best_first_with_the_keys_that_differ(runs):
    cwd, made = runs
    result = run_mpt("compare", made["slow"], made["base"], made["fast"], cwd=cwd)
    assert result.returncode == 0, result.stderr
    title, header, *lines = result.stdout.rstrip("\n").split("\n")
    assert title == "3 runs by best val_acc (higher is better)"
    assert re.split(r"\s{2,}", header) == [
        "RUN",
        "STATE",
        "EPOCH",
        "FINAL",
        "BEST (EPOCH)",
        "data.batch_size",
        "optim.lr",
    ]
    rows = [re.split(r"\s{2,}", line) for line in lines]
    best = {}
    for row in rows:
        key = next(k for k, d in made.items() if row[0] == f"digits/{d.name}")
        values = [e.val_acc for e in _epochs(made[key])]
        best[key] = max(values)
        at = values.index(best[key]) + 1
        settings = {"fast": ["32", "0.2"], "base": ["64", "0.01"], "slow": ["64", "0.001"]}
        assert row[1:] == [
            "finished",
            "2/2",
            metric("val_acc", values[-1]),
            f"{metric('val_acc', best[key])} ({at})",
            *settings[key],
        ]
    assert list(best.values()) == sorted(best.values(), reverse=True)
    assert len(rows) == 3
    assert "┌" not in result.stdout  # off a terminal: no chart


def test_compare_by_a_loss_puts_the_lowest_first_and_plot_draws_the_chart_off_a_terminal(runs):
    cwd, made = runs
    result = run_mpt(
        "compare", "--metric", "val_loss", "--plot", made["slow"], made["fast"], cwd=cwd
    )
    assert result.returncode == 0, result.stderr
    table, chart = result.stdout.rstrip("\n").split("\n\n")
    assert table.splitlines()[0] == "2 runs by best val_loss (lower is better)"
    best = [min(e.val_loss for e in _epochs(made[k])) for k in ("slow", "fast")]
    first = table.splitlines()[2]
    assert first.startswith(f"digits/{made['slow' if best[0] < best[1] else 'fast'].name}")
    assert "\x1b" not in chart  # off a terminal: plain text, a character a run
    assert "┌" in chart and "epoch" in chart and "val_loss" in chart.splitlines()[0]
    legend = chart.splitlines()[-2:]
    assert legend[0].startswith("** digits/") and legend[1].startswith("++ digits/")
    assert {line.split("  ")[-1] for line in legend} == {
        "data.batch_size=64 optim.lr=0.001",
        "data.batch_size=32 optim.lr=0.2",
    }
    assert "*" in chart.split("┌")[1] and "+" in chart.split("┌")[1]  # both curves drawn


def _on_a_terminal(args: list[str], cwd) -> tuple[int, str]:
    """Run `mpt` with stdout on a real pty (80x24), stderr piped; what it printed there."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    proc = subprocess.Popen(
        [*MPT, *args], stdout=slave, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
        cwd=cwd, env=env,
    )  # fmt: skip
    os.close(slave)
    out = b""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 1.0)
        if not ready:
            continue
        try:
            chunk = os.read(master, 65536)
        except OSError as e:  # EIO: the child closed the pty
            assert e.errno == errno.EIO
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    code = proc.wait(timeout=60)
    assert proc.stderr.read() == b""
    proc.stderr.close()
    return code, out.decode()


def test_compare_on_a_terminal_draws_the_curves_in_colour_with_a_legend(runs):
    cwd, made = runs
    code, out = _on_a_terminal(["compare", made["base"], made["slow"]], cwd)
    assert code == 0, out
    text = out.replace("\r\n", "\n")
    table, chart = text.rstrip("\n").split("\n\n")
    assert table.splitlines()[0] == "2 runs by best val_acc (higher is better)"
    assert "┌" in chart and "└" in chart
    assert "\x1b[38;5;" in chart  # the curves in colour
    assert re.search("[\u2801-\u28ff]", chart)  # drawn with braille dots
    plain = re.sub(r"\x1b\[[0-9;]*m", "", chart)
    assert max(len(line) for line in plain.splitlines()) <= 80
    legend = plain.splitlines()[-2:]
    assert all(line.startswith("━━ digits/") for line in legend)
    assert {line.split("  ")[-1] for line in legend} == {"optim.lr=0.01", "optim.lr=0.001"}


def test_compare_no_plot_on_a_terminal_prints_the_table_alone(runs):
    cwd, made = runs
    code, out = _on_a_terminal(["compare", "--no-plot", made["base"], made["slow"]], cwd)
    assert code == 0, out
    assert "┌" not in out and "\x1b" not in out
    assert len(out.strip().splitlines()) == 4  # title, header, two rows


def test_compare_of_runs_of_different_tasks_uses_a_metric_they_share(runs):
    cwd, made = runs
    result = run_mpt("compare", made["base"], made["diabetes"], cwd=cwd)
    assert result.returncode == 0, result.stderr
    table, notes = result.stdout.rstrip("\n").split("\n\n")
    assert table.splitlines()[0] == "2 runs by best val_loss (lower is better)"
    assert notes.splitlines()[0] == (
        "compared by val_loss, the first metric every run has (val_acc is not one of every "
        "run's; --metric picks another)"
    )
    # more than six keys differ: six columns, the rest named under the table
    header = re.split(r"\s{2,}", table.splitlines()[1])
    assert len(header) == 5 + 6
    assert re.fullmatch(
        r"\d+ more keys differ: .*\(mpt diff RUN_A RUN_B shows them\)", notes.splitlines()[1]
    )

    by_mae = run_mpt("compare", "-m", "val_mae", made["base"], made["diabetes"], cwd=cwd)
    assert by_mae.returncode == 0, by_mae.stderr
    rows = by_mae.stdout.splitlines()
    assert rows[2].startswith(f"diabetes-regression/{made['diabetes'].name}")
    assert re.split(r"\s{2,}", rows[3])[3:5] == ["-", "-"]  # the digits run has no val_mae
    assert f"digits/{made['base'].name}: no val_mae" in by_mae.stdout


def test_compare_usage_mistakes_exit_2_in_one_sentence(runs):
    cwd, made = runs
    a, b = made["base"], made["fast"]
    cases = {
        (): "error: mpt compare: give two or more runs (run directories or run names); "
        "mpt show RUN prints one\n",
        (a,): "error: mpt compare: give two or more runs (run directories or run names); "
        "mpt show RUN prints one\n",
        (a,) * 9: "error: mpt compare: 9 runs given, at most 8 compare at once (as many curves "
        "as one chart tells apart); pick the ones to compare\n",
        (a, b, "--metric", "val_mae"): "error: --metric val_mae: none of these runs has it; "
        "their metrics are train_loss, train_acc, val_loss, val_acc\n",
        (a, "nope"): "error: nope: no such run directory, and no run of that name in runs; "
        "mpt ls lists the runs\n",
    }
    for args, message in cases.items():
        result = run_mpt("compare", *args, cwd=cwd)
        assert (result.returncode, result.stderr, result.stdout) == (2, message, ""), args
