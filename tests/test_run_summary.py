"""summary.json and curve.jsonl (engine/summary.py): a run keeps them beside events.jsonl, and
every view built from them and the lines after equals the view of the whole file; a summary
that is damaged, made up, stale or of another events.jsonl is passed over.

Real runs on digits (a finished one, a paused one, an interrupted one resumed, one killed
with SIGKILL) and real files; views through their public surfaces (read_run, run_report,
summarize_run, the dashboard's AttachedRun).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import time
from pathlib import Path

import pytest
from durable_helpers import finish, next_event, profile_dict, spawn_mpt, start, wait_for
from durable_helpers import train as train_run

from engine import events as ev
from engine.report import read_run, run_report
from engine.runs import summarize_run
from engine.summary import CURVE, CURVE_POINTS, SUMMARY, SummaryRecorder
from tui.session import AttachedRun

EPOCHS = {"run": {"epochs": 2}, "checkpoint": {"every_epochs": 1}}


def aside(run_dir: Path, *names: str):
    """Move the named files away (the views then read events.jsonl whole); returns a
    function that puts them back."""
    moved = []
    for name in names:
        if (run_dir / name).exists():
            (run_dir / name).rename(run_dir / f"{name}.aside")
            moved.append(name)

    def back() -> None:
        for name in moved:
            (run_dir / f"{name}.aside").rename(run_dir / name)

    return back


def whole(run_dir: Path):
    """read_run and run_report of the run with no summary.json: events.jsonl read whole."""
    back = aside(run_dir, SUMMARY)
    try:
        return read_run(run_dir), run_report(str(run_dir))
    finally:
        back()


def assert_same_views(run_dir: Path) -> None:
    (history, reader, summary), report = read_run(run_dir), run_report(str(run_dir))
    (history0, reader0, summary0), report0 = whole(run_dir)
    assert summary == summary0
    assert history.epoch_ends == history0.epoch_ends
    assert (reader.lines, reader.describe(), reader.torn) == (
        reader0.lines,
        reader0.describe(),
        reader0.torn,
    )
    assert report == report0
    assert summarize_run(run_dir) == summary0


def covered(run_dir: Path) -> int:
    return json.loads((run_dir / SUMMARY).read_text())["offset"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished")
    return train_run(profile_dict(out, EPOCHS)).run_dir


def test_a_finished_run_keeps_a_summary_of_all_its_events(finished):
    assert covered(finished) == (finished / "events.jsonl").stat().st_size
    assert (finished / CURVE).is_file()
    assert_same_views(finished)


def test_a_summary_consistent_with_events_jsonl_is_what_views_show(finished, tmp_path):
    # made up, but matching its events.jsonl: shown, as a made-up events.jsonl would be
    run_dir = tmp_path / "runs" / "tiny" / finished.name
    shutil.copytree(finished, run_dir)
    doc = json.loads((run_dir / SUMMARY).read_text())
    doc["history"]["best_val_acc"] = 0.125
    (run_dir / SUMMARY).write_text(json.dumps(doc))
    assert read_run(run_dir)[2].best_val_acc == 0.125
    assert summarize_run(run_dir).best_val_acc == 0.125


def _forged(doc: dict) -> list:
    """Summaries that must not be used: each is passed over for events.jsonl."""
    h = doc["history"]
    return [
        b"",
        b"not json",
        b"[1, 2]",
        json.dumps({**doc, "format": 2}).encode(),
        json.dumps({**doc, "offset": doc["offset"] + 1}).encode(),
        json.dumps({**doc, "offset": doc["offset"] - 1}).encode(),
        json.dumps({**doc, "offset": -1}).encode(),
        json.dumps({**doc, "offset": 10**40}).encode(),
        json.dumps({**doc, "offset": True}).encode(),
        json.dumps({**doc, "lines": "many"}).encode(),
        json.dumps({**doc, "head": "0" * 64}).encode(),
        json.dumps({**doc, "tail": None}).encode(),
        json.dumps({**doc, "skipped": 10**6}).encode(),
        json.dumps({**doc, "problems": [[1, 2, 3]]}).encode(),
        json.dumps({**doc, "problems": [[1, "x", True]] * 50}).encode(),
        json.dumps({**doc, "history": None}).encode(),
        json.dumps({**doc, "history": {**h, "started": {"kind": "step"}}}).encode(),
        json.dumps({**doc, "history": {**h, "last": {"kind": "nope", "step": 1}}}).encode(),
        json.dumps({**doc, "history": {**h, "epoch_ends": [{"kind": "epoch_end"}]}}).encode(),
        json.dumps({**doc, "history": {**h, "epoch_ends": [h["last"]]}}).encode(),
        json.dumps({**doc, "history": {**h, "checkpoints": [1]}}).encode(),
        json.dumps({**doc, "history": {**h, "paused": 0}}).encode(),
        json.dumps({**doc, "history": {**h, "best_val_acc": "1"}}).encode(),
        json.dumps({**doc, "history": {**h, "best_val_acc": 0.5}})
        .replace('acc": 0.5', 'acc": 1e999')
        .encode(),
        b"[" * 100_000,
    ]  # fmt: skip


def test_a_damaged_or_made_up_summary_is_passed_over(finished, tmp_path):
    run_dir = tmp_path / "runs" / "tiny" / finished.name
    shutil.copytree(finished, run_dir)
    doc = json.loads((run_dir / SUMMARY).read_text())
    expected = whole(run_dir)
    for i, data in enumerate(_forged(doc)):
        (run_dir / SUMMARY).write_bytes(data)
        (_, _, summary), report = read_run(run_dir), run_report(str(run_dir))
        assert (summary, report) == (expected[0][2], expected[1]), f"forged summary {i}"
        assert summarize_run(run_dir) == expected[0][2], f"forged summary {i}"


@pytest.mark.parametrize("kind", ["folder", "fifo", "link to /dev/zero"])
def test_a_summary_that_is_no_plain_file_is_passed_over_without_blocking(finished, tmp_path, kind):
    run_dir = tmp_path / "runs" / "tiny" / finished.name
    shutil.copytree(finished, run_dir)
    expected = whole(run_dir)[0][2]
    for name in (SUMMARY, CURVE):
        (run_dir / name).unlink()
        if kind == "folder":
            (run_dir / name).mkdir()
        elif kind == "fifo":
            os.mkfifo(run_dir / name)
        else:
            (run_dir / name).symlink_to("/dev/zero")
    assert read_run(run_dir)[2] == expected
    assert summarize_run(run_dir) == expected
    view = AttachedRun.open(run_dir).view
    assert (view.state, view.step) == ("finished", expected.step)


def test_a_replaced_or_rewritten_events_jsonl_is_read_whole(finished, tmp_path):
    run_dir = tmp_path / "runs" / "tiny" / finished.name
    shutil.copytree(finished, run_dir)
    lines = (run_dir / "events.jsonl").read_bytes().splitlines(keepends=True)
    # another run's events (here: the same run's, cut after its first epoch) in its place
    first_epoch = next(i for i, x in enumerate(lines) if b'"epoch_end"' in x)
    (run_dir / "events.jsonl.new").write_bytes(b"".join(lines[: first_epoch + 1]))
    (run_dir / "events.jsonl.new").replace(run_dir / "events.jsonl")
    assert_same_views(run_dir)
    # the same length, rewritten in place: its head differs
    data = b"".join(lines)
    (run_dir / "events.jsonl").write_bytes(data.replace(b'"tiny"', b'"tinz"', 1))
    (run_dir / SUMMARY).write_bytes((finished / SUMMARY).read_bytes())
    assert read_run(run_dir)[2].name == "tinz"


def test_a_stale_summary_is_completed_from_the_lines_after_it(finished, tmp_path):
    # a summary of the first lines, the rest appended after it: as a live run's summary is
    lines = (finished / "events.jsonl").read_text().splitlines()
    run_dir = tmp_path / "runs" / "tiny" / finished.name
    run_dir.mkdir(parents=True)
    cut = len(lines) // 2
    log = ev.EventLog(
        queue.Queue(), run_dir / "events.jsonl", lines[:cut], SummaryRecorder(run_dir)
    )
    log.close()
    with open(run_dir / "events.jsonl", "a") as f:
        f.write("".join(x + "\n" for x in lines[cut:]))
    assert 0 < covered(run_dir) < (run_dir / "events.jsonl").stat().st_size
    assert_same_views(run_dir)


def test_bad_lines_of_a_resumed_history_are_counted_as_events_jsonl_counts_them(finished, tmp_path):
    lines = (finished / "events.jsonl").read_text().splitlines()
    lines[3:3] = ["not json", '{"kind": "step", "step": "x", "epoch": 1, "time": 1.0}', ""]
    run_dir = tmp_path / "runs" / "tiny" / finished.name
    run_dir.mkdir(parents=True)
    ev.EventLog(queue.Queue(), run_dir / "events.jsonl", lines, SummaryRecorder(run_dir)).close()
    assert covered(run_dir) == (run_dir / "events.jsonl").stat().st_size
    assert read_run(run_dir)[1].unreadable == 2
    assert_same_views(run_dir)


def test_a_paused_run_and_an_interrupted_run_resumed_read_the_same_from_their_summary(tmp_path):
    run = start(profile_dict(tmp_path, EPOCHS, {"checkpoint": {"every_steps": 10}}))
    next_event(run, "checkpoint_saved", 120)
    run.pause()
    next_event(run, "paused", 120)
    wait_for(lambda: summarize_run(run.run_dir).state == "paused", 30, "the paused state")
    assert_same_views(run.run_dir)
    assert_same_dashboard(run.run_dir)
    run.stop("interrupted")
    run.resume()
    first = finish(run)
    assert first.reason == "interrupted"
    assert_same_views(first.run_dir)
    again = train_run(resume=str(first.run_dir))
    assert again.run_dir != first.run_dir
    assert_same_views(again.run_dir)
    assert_same_dashboard(again.run_dir)
    history = read_run(again.run_dir)[0]
    assert history.started.resumed_from and sorted(history.epoch_ends) == [1, 2]


def test_a_run_killed_with_sigkill_reads_the_same_from_its_summary(tmp_path):
    from durable_helpers import write_toml

    data = profile_dict(tmp_path / "runs", {"run": {"epochs": 5000, "name": "killed"}})
    proc = spawn_mpt("run", write_toml(tmp_path / "p.toml", data), cwd=tmp_path)
    try:
        folder = tmp_path / "runs" / "killed"

        def summarised_epoch():
            found = list(folder.glob("*/summary.json"))
            return found and b'"epoch_end"' in found[0].read_bytes() and found[0].parent

        run_dir = wait_for(summarised_epoch, 120, "a summary with an epoch in it")
        time.sleep(0.2)  # more lines after it
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    assert_same_views(run_dir)
    os.utime(run_dir / "events.jsonl", (1, 1))  # long silent: crashed, not running
    assert read_run(run_dir)[2].state == "crashed"
    assert_same_views(run_dir)
    assert_same_dashboard(run_dir)


def test_the_dashboard_of_a_long_run_starts_from_a_bounded_curve(finished, tmp_path):
    # many step events through the run's own EventLog, then what views need equals
    lines = (finished / "events.jsonl").read_text().splitlines()
    run_dir = tmp_path / "runs" / "tiny" / finished.name
    run_dir.mkdir(parents=True)
    log = ev.EventLog(queue.Queue(), run_dir / "events.jsonl", lines[:-1], SummaryRecorder(run_dir))
    last = ev.event_from_line(lines[-1])
    for i in range(3 * CURVE_POINTS):
        log.emit(ev.Step(step=last.step + i, epoch=last.epoch, loss=1.0 / (i + 1), time=last.time))
    log.emit(ev.event_from_line(lines[-1]))
    log.close()
    curve = (run_dir / CURVE).read_bytes().splitlines()
    assert sum(b'"kind": "step"' in x for x in curve) <= CURVE_POINTS + 1
    assert_same_dashboard(run_dir)
    assert_same_views(run_dir)


def assert_same_dashboard(run_dir: Path) -> None:
    """The dashboard of the run from curve.jsonl and the lines after it shows what the
    dashboard of its whole events.jsonl shows (its curves hold fewer points)."""
    fast = AttachedRun.open(run_dir).view
    back = aside(run_dir, CURVE)
    slow = AttachedRun.open(run_dir).view
    back()
    for name in ("state", "step", "epoch", "loss", "lr", "finish_reason", "last_checkpoint"):
        assert getattr(fast, name) == getattr(slow, name), name
    assert list(fast.messages) == list(slow.messages)
    assert fast.warnings == slow.warnings
    assert {k: (t.last, t.best) for k, t in fast.metrics.items()} == {
        k: (t.last, t.best) for k, t in slow.metrics.items()
    }
    assert fast.train_loss.points()[0][-1:] == slow.train_loss.points()[0][-1:]


def test_a_listing_indexes_runs_that_stopped_changing_and_checks_each_entry(finished, tmp_path):
    from engine.report import runs_table
    from engine.run_index import INDEX
    from engine.runs import list_runs

    runs = tmp_path / "runs0"
    for stamp in ("20260101-000000", "20260101-000001"):
        shutil.copytree(finished, runs / "tiny" / stamp)
    for name in (SUMMARY, CURVE):  # one run from before summaries
        (runs / "tiny" / "20260101-000001" / name).unlink()
    table = runs_table(runs)
    doc = json.loads((runs / INDEX).read_text())
    assert set(doc["runs"]) == {"tiny/20260101-000000", "tiny/20260101-000001"}
    moves = iter(range(1, 100))

    def listed_afresh() -> dict:
        """list_runs as a new `mpt ls` process sees it: the folder moved (its files keep
        their inodes), so nothing of it is followed in this process yet."""
        nonlocal runs
        runs = runs.rename(tmp_path / f"runs{next(moves)}")
        return {(s.run_dir.parent.name, s.run_dir.name): s for s in list_runs(runs)}

    expected = listed_afresh()
    assert runs_table(runs) == table.replace("runs0", runs.name)
    first = ("tiny", "20260101-000000")
    entry = doc["runs"]["tiny/20260101-000000"]
    forged = [
        {**entry, "row": {**entry["row"], "best_val_acc": 0.25}},  # key holds: shown
        {**entry, "key": [0, 0, 0, 0], "row": {**entry["row"], "best_val_acc": 0.5}},
        {**entry, "row": {**entry["row"], "unreadable": -1}},
        {**entry, "row": {**entry["row"], "state": "running"}},  # never a live run to steer
        {**entry, "row": {**entry["row"], "best_headline": float("inf")}},
        {**entry, "row": {**entry["row"], "error": 3}},
        {**entry, "row": "garbage"},
        "garbage",
    ]
    for i, bad in enumerate(forged):
        runs_index = {**doc["runs"], "tiny/20260101-000000": bad}
        (runs / INDEX).write_text(json.dumps({**doc, "runs": runs_index}))
        got = listed_afresh()[first]
        want = expected[first]
        assert got.best_val_acc == (0.25 if i == 0 else want.best_val_acc), f"index entry {i}"
        if i:
            assert (got.state, got.step, got.unreadable) == (want.state, want.step, 0)
    for garbage in (b"", b"[]", b"{" * 100_000, b'{"format": 2, "runs": []}'):
        (runs / INDEX).write_bytes(garbage)
        got = listed_afresh()
        assert [(s.best_val_acc, s.state, s.step) for s in got.values()] == [
            (s.best_val_acc, s.state, s.step) for s in expected.values()
        ]
    # a changed events.jsonl (appended to) is no longer its entry's
    with open(runs / "tiny" / "20260101-000000" / "events.jsonl", "a") as f:
        f.write("not json\n")
    assert listed_afresh()[first].unreadable == 1


def test_a_summary_that_cannot_be_written_warns_once_and_the_run_goes_on(finished, tmp_path):
    lines = (finished / "events.jsonl").read_text().splitlines()
    run_dir = tmp_path / "runs" / "tiny" / finished.name
    run_dir.mkdir(parents=True)
    (run_dir / f".{SUMMARY}.tmp").mkdir()  # in the way of every write, as a full disk is
    events: queue.Queue = queue.Queue()
    log = ev.EventLog(events, run_dir / "events.jsonl", (), SummaryRecorder(run_dir))
    for line in lines:
        log.emit(ev.event_from_line(line))
    warnings = [e.message for e in drain_queue(events) if e.kind == "warning"]
    assert len(warnings) == 1 and SUMMARY in warnings[0], warnings
    assert not (run_dir / SUMMARY).exists()
    (run_dir / f".{SUMMARY}.tmp").rmdir()  # writing works again: the next write catches up
    log.close()
    assert (run_dir / "events.jsonl").read_text().splitlines() == lines
    assert covered(run_dir) == (run_dir / "events.jsonl").stat().st_size
    assert_same_views(run_dir)


def drain_queue(events: queue.Queue) -> list:
    out = []
    while not events.empty():
        out.append(events.get_nowait())
    return out


def test_an_index_row_whose_checkpoint_is_gone_names_the_run_s_own_newest(finished, tmp_path):
    from engine.run_index import INDEX
    from engine.runs import list_runs

    runs = tmp_path / "runs"
    shutil.copytree(finished, runs / "tiny" / finished.name)
    (listed,) = list_runs(runs)
    doc = json.loads((runs / INDEX).read_text())
    (rel,) = doc["runs"]
    doc["runs"][rel]["row"]["last_checkpoint"] = str(tmp_path / "pruned" / "step-000001.pt")
    (runs / INDEX).write_text(json.dumps(doc))
    moved = runs.rename(tmp_path / "moved")  # a new process's listing: nothing followed yet
    (again,) = list_runs(moved)
    assert again.last_checkpoint is not None and again.last_checkpoint.is_file()
    assert again.last_checkpoint.parent == moved / "tiny" / finished.name / "checkpoints"
    assert (again.state, again.step) == (listed.state, listed.step)
