"""One bad line in one run's events.jsonl: every reader skips or mends it and says so.

A real run's events.jsonl (digits, two epochs, in this process), copied into one run
directory per kind of damage; `mpt ls` and `mpt show` as a user runs them, the engine's
one reader (engine.events.EventsReader) under them, and a fuzz of line contents.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from durable_helpers import mpt, profile_dict, train
from event_strategies import FIELD_NAMES, JSON
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from engine import events as ev
from engine.cli import app
from engine.errors import MptError
from engine.report import run_report
from engine.runs import list_runs, summarize_run

STAMP = "20260101-000000"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    """A real finished run: two epochs, a checkpoint each, a CSV log (replayed on resume)."""
    out = tmp_path_factory.mktemp("good")
    extra = {
        "run": {"name": "good", "epochs": 2},
        "model": {"hidden": [16]},
        "train": {"log_every": 5},
        "checkpoint": {"every_epochs": 1},
        "log": {"csv": True},
    }
    done = train(profile_dict(out / "runs", extra), write=True)
    return done.run_dir


def lines_of(run_dir: Path) -> list[bytes]:
    return (run_dir / "events.jsonl").read_bytes().split(b"\n")[:-1]


def _first(kind: str) -> Callable[[list[bytes]], int]:
    return lambda lines: next(i for i, b in enumerate(lines) if json.loads(b)["kind"] == kind)


def changed(kind: str, **fields) -> Callable[[list[bytes]], list[bytes]]:
    """The first `kind` line with `fields` set (NaN and Infinity written as JSON can't)."""

    def damage(lines: list[bytes]) -> list[bytes]:
        i = _first(kind)(lines)
        data = {**json.loads(lines[i]), **fields}
        return [*lines[:i], json.dumps(data, allow_nan=True).encode(), *lines[i + 1 :]]

    return damage


def inserted(raw: bytes) -> Callable[[list[bytes]], list[bytes]]:
    """`raw` as a line of its own after the third line (among the step events)."""
    return lambda lines: [*lines[:3], raw, *lines[3:]]


def unfinished(damage):
    """The damage, with run_finished taken off: the state comes from run_started's pid."""
    return lambda lines: [b for b in damage(lines) if b'"run_finished"' not in b[:30]]


def torn(lines: list[bytes]) -> list[bytes]:
    return [*lines[:-1], lines[-1][: len(lines[-1]) // 2]]


DEEP = b'{"kind": "step", "step": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
HUGE_NUMBER = b'{"kind": "epoch_end", "step": ' + b"9" * 5000 + b', "epoch": 1, "time": 1.0}'
HUGE_LINE = b'{"kind": "warning", "message": "' + b"x" * (9 * 2**20) + b'"}'

# kind of damage -> (what it does to the good run's lines, lines marked as unreadable)
DAMAGE = {
    "string_for_number": (changed("epoch_end", val_acc="high"), 1),
    "bool_for_number": (changed("step", step=True), 1),
    "null_for_number": (changed("run_started", epochs=None, total_steps=None), 1),
    "number_for_string": (changed("checkpoint_saved", path=7), 1),
    "object_for_list": (changed("run_started", input_shape={"c": 1}), 1),
    "nan_and_infinity": (changed("epoch_end", val_acc=float("nan"), seconds=float("inf")), 1),
    "list_not_object": (inserted(b"[1, 2, 3]"), 1),
    "deeply_nested": (inserted(DEEP), 1),
    "invalid_utf8_in_text": (inserted(b'{"kind": "warning", "message": "caf\xe9"}'), 1),
    "invalid_utf8_garbage": (inserted(b"\xff\xfe\xfd garbage"), 1),
    "nul_bytes": (inserted(b"\x00" * 4096), 1),
    "huge_number": (inserted(HUGE_NUMBER), 1),
    "huge_line": (inserted(HUGE_LINE), 1),
    "unknown_kind": (inserted(b'{"kind": "teleport", "step": 1, "epoch": 1, "time": 1.0}'), 1),
    "missing_fields": (inserted(b'{"kind": "epoch_end"}'), 1),
    "extra_field": (changed("epoch_end", colour="red"), 0),  # a newer mpt's: read, ignored
    "torn_last_line": (torn, 0),  # what SIGKILL leaves: skipped as ever, not counted
    "time_out_of_range": (changed("run_started", time=1e300), 0),
    "pid_out_of_range": (
        unfinished(changed("run_started", pid=2**62, host=socket.gethostname())),
        0,
    ),
    "escape_sequence_in_name": (changed("run_started", name="\x1b]0;owned\x07\x1b[2J"), 0),
}


# each its own stamp: `mpt ls` names a run by run_started's name (good) and its stamp
STAMPS = {kind: f"20260101-{i:06d}" for i, kind in enumerate(DAMAGE)}
GOOD_STAMP = "20260201-000000"


def damaged_run(good: Path, runs: Path, kind: str) -> Path:
    """A copy of the good run under runs/<kind>/<its stamp> with one kind of damage."""
    damage, _ = DAMAGE[kind]
    run_dir = runs / kind / STAMPS[kind]
    shutil.copytree(good, run_dir, symlinks=True)
    lines = damage(lines_of(good))
    end = b"" if kind == "torn_last_line" else b"\n"
    (run_dir / "events.jsonl").write_bytes(b"\n".join(lines) + end)
    return run_dir


@pytest.fixture(scope="module")
def runs(good: Path, tmp_path_factory) -> Path:
    """A runs folder: the good run and one run per kind of damage."""
    folder = tmp_path_factory.mktemp("runs")
    shutil.copytree(good, folder / "good" / GOOD_STAMP, symlinks=True)
    for kind in DAMAGE:
        damaged_run(good, folder, kind)
    return folder


@pytest.mark.parametrize("kind", DAMAGE)
def test_the_reader_keeps_every_event_around_a_bad_line_and_counts_it(good, runs, kind):
    path = runs / kind / STAMPS[kind] / "events.jsonl"
    reader = ev.EventsReader(path)
    events = reader.read_all()
    assert reader.unreadable == DAMAGE[kind][1], reader.describe()
    # every undamaged line is read as it was, in order
    before, after = lines_of(good), path.read_bytes().split(b"\n")
    kept = [ev.event_from_line(b) for b in after if b in before]
    assert [e for e in events if e in kept] == kept
    if reader.unreadable:
        line = next(i for i, (x, y) in enumerate(zip(before, after, strict=False)) if x != y) + 1
        assert f"(line {line}: " in reader.describe()


def test_a_field_of_the_wrong_type_reads_as_its_default_and_the_rest_of_the_event_stays(good):
    damage = changed("epoch_end", val_acc="high")
    line = damage(lines_of(good))[_first("epoch_end")(lines_of(good))]
    original = next(e for e in ev.read_events(good / "events.jsonl") if e.kind == "epoch_end")
    event = ev.event_from_line(line)
    assert event.val_acc is None  # its default
    assert (event.train_loss, event.val_loss, event.step) == (
        original.train_loss,
        original.val_loss,
        original.step,
    )


def test_mpt_ls_lists_every_run_and_marks_those_with_bad_lines(runs: Path):
    result = mpt("ls", str(runs), cwd=runs, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    rows = {line.split()[0].rsplit("/")[-1]: line for line in result.stdout.splitlines()[1:]}
    assert set(rows) == {GOOD_STAMP, *STAMPS.values()}
    good = summarize_run(runs / "good" / GOOD_STAMP)
    assert rows[GOOD_STAMP].split()[:4] == [
        f"good/{GOOD_STAMP}",
        "finished",
        "2/2",
        f"{100 * good.best_val_acc:.2f}%",
    ]
    for kind, (_, bad) in DAMAGE.items():
        assert ("1 bad line" in rows[STAMPS[kind]]) == bool(bad), rows[STAMPS[kind]]
    # a name from run_started is printed escaped, never as the escape sequence it holds
    assert rows[STAMPS["escape_sequence_in_name"]].startswith("\\x1b]0;owned\\x07\\x1b[2J/")
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout


@pytest.mark.parametrize("kind", DAMAGE)
def test_mpt_show_of_a_run_with_a_bad_line_prints_it_and_names_the_line(runs: Path, kind):
    result = CliRunner().invoke(app, ["show", str(runs / kind / STAMPS[kind])])
    assert result.exit_code == 0, (result.output, result.exception)
    summary, table = result.output.split("\nEPOCH ")
    assert summary.startswith("run  ") and "\nstate " in summary
    assert [row.split()[0] for row in table.splitlines()[1:]] == ["1", "2"]  # every epoch
    if DAMAGE[kind][1]:
        assert "events.jsonl  1 line" in result.output, result.output
    if kind == "torn_last_line":
        assert "last line is cut short" in result.output
    assert "\x1b" not in result.output


def test_mpt_show_of_a_run_with_bad_lines_names_them_as_a_user_runs_it(runs: Path):
    result = mpt("show", str(runs / "deeply_nested" / STAMPS["deeply_nested"]), cwd=runs)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert "events.jsonl  1 line could not be read (line 4: nested too deep to read)" in (
        result.stdout
    )


def test_mpt_show_of_a_run_with_nothing_readable_exits_2_in_one_sentence(tmp_path: Path):
    run_dir = tmp_path / "runs" / "junk" / STAMP
    run_dir.mkdir(parents=True)
    (run_dir / "events.jsonl").write_bytes(b"\xff\xfe\n[1]\n" + DEEP + b"\n")
    result = mpt("show", str(run_dir), cwd=tmp_path, timeout=120)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(f"error: {run_dir / 'events.jsonl'}: no line of it could")
    ls = mpt("ls", str(tmp_path / "runs"), cwd=tmp_path, timeout=120)
    assert ls.returncode == 0 and ", 3 bad lines" in ls.stdout  # and listed


def test_a_fifo_or_folder_named_events_jsonl_never_hangs_or_stops_the_list(tmp_path: Path):
    fifo = tmp_path / "fifo" / STAMP
    fifo.mkdir(parents=True)
    os.mkfifo(fifo / "events.jsonl")
    folder = tmp_path / "folder" / STAMP
    (folder / "events.jsonl").mkdir(parents=True)
    result = mpt("ls", str(tmp_path), cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    states = {line.split()[0]: line.split()[1] for line in result.stdout.splitlines()[1:]}
    assert states == {f"fifo/{STAMP}": "unreadable", f"folder/{STAMP}": "unreadable"}


def test_a_checkpoint_link_to_a_pruned_file_does_not_stop_the_list(good: Path, tmp_path: Path):
    run_dir = tmp_path / "r" / STAMP
    shutil.copytree(good, run_dir, symlinks=True)
    for f in (run_dir / "checkpoints").iterdir():
        f.unlink()
    (run_dir / "checkpoints" / "best.pt").symlink_to("step-000999.pt")  # pruned since
    lines = [b for b in lines_of(good) if b'"checkpoint_saved"' not in b[:40]]
    (run_dir / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    [summary] = list_runs(tmp_path)
    assert summary.state == "finished" and summary.last_checkpoint is None


def test_resuming_a_run_whose_history_has_bad_lines_copies_them_and_trains_on(good: Path):
    from engine import checkpoint as ckpt

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "runs" / "good" / STAMP
        shutil.copytree(good, run_dir, symlinks=True)
        first = run_dir / "checkpoints" / "step-000023.pt"
        history = ckpt.load(first)["progress"]["events"]
        lines = lines_of(good)
        # within the history: bytes that are not UTF-8, a line nested too deep, and a
        # message holding U+2028, which Python's splitlines() takes for a line end
        lines[2] = b'{"kind": "warning", "message": "caf\xe9 \xff"'
        lines[3] = DEEP
        warning = {"kind": "warning", "step": 1, "epoch": 1, "time": 1.0, "message": "a\u2028b"}
        separator = json.dumps(warning, ensure_ascii=False)
        lines[4] = separator.encode()
        (run_dir / "events.jsonl").write_bytes(b"\n".join(lines) + b"\n")

        done = train(None, resume=str(first), overrides=[f"run.out_dir={tmp}/resumed"])
        assert done.reason == "completed", done.run.error
        reader = ev.EventsReader(done.run_dir / "events.jsonl")
        events = reader.read_all()
        assert reader.skipped == 2 and reader.lines == len(events) + 2
        copied = (done.run_dir / "events.jsonl").read_bytes().split(b"\n")[:history]
        assert copied[4] == lines[4]  # one line, as it was
        assert "a\u2028b" in [e.message for e in events if e.kind == "warning"]
        assert [e.epoch for e in events if e.kind == "epoch_end"] == [1, 2]
        assert (done.run_dir / "metrics.csv").is_file()


# ---- fuzz: no line content makes a reader raise ----

EVENT_LINE = st.builds(
    lambda kind, fields: json.dumps({"kind": kind, **fields}, allow_nan=True).encode(),
    st.sampled_from([*ev.EVENT_TYPES, "teleport"]),
    st.dictionaries(st.sampled_from(FIELD_NAMES), JSON, max_size=6),
)
LINE = st.one_of(EVENT_LINE, st.binary(max_size=80), JSON.map(lambda v: json.dumps(v).encode()))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(LINE, max_size=6), st.booleans())
def test_no_line_content_makes_the_reader_ls_or_show_raise(lines: list[bytes], newline: bool):
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "fuzz" / STAMP
        run_dir.mkdir(parents=True)
        content = b"\n".join(lines) + (b"\n" if newline else b"")
        (run_dir / "events.jsonl").write_bytes(content)
        reader = ev.EventsReader(run_dir / "events.jsonl")
        reader.read_all()
        assert reader.unreadable <= content.count(b"\n") + 1  # a binary line may hold a newline
        [summary] = list_runs(tmp)
        assert summary.state
        try:
            run_report(str(run_dir))
        except MptError as e:
            assert "no line of it could be read" in str(e) or "not a run" in str(e)
