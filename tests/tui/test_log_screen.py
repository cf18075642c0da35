"""The log screen (issue 16, "Read the log"): `l` on the dashboard shows the run's whole
event log, filtered by category and text, followed as events.jsonl grows; a detached
run's console.log shows its last lines beneath. tui/event_log.py is tested on real event
objects and real files, the screen through the runs list and the dashboard as a person
opens it, and its look at 80x24 and 120x40 (snapshots: fixed times, UTC, no clock).
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import time
from pathlib import Path

import pytest
from test_tui_snapshots import T0, recorded_run
from tui_helpers import event_line, run_async, wait_for, write_run

from engine import events as ev
from engine.console import Console, format_epoch, format_finished, format_started
from tui.app import MptApp
from tui.event_log import (
    CATEGORIES,
    ConsoleTail,
    LogFilter,
    RunLog,
    clean,
    describe,
)

RUN = "runs/quickstart/20260101-000000"
MARKUP_WARNING = "loss is [bold]NaN[/bold] at [/x]: see [link=x]docs[/link]"


# ---- tui/event_log.py: events as lines ----


def started() -> ev.RunStarted:
    return ev.RunStarted(
        step=0,
        epoch=1,
        time=T0,
        run_dir=RUN,
        name="quickstart",
        device="cpu",
        precision="fp32",
        dataset="digits",
        train_samples=1438,
        val_samples=359,
        num_classes=10,
        input_shape=[1, 8, 8],
        arch="mlp",
        parameters=9610,
        epochs=15,
        steps_per_epoch=45,
        total_steps=675,
        batch_size=32,
        global_batch=32,
        pid=4242,
        host="gpu-box",
    )


def test_each_event_is_one_line_in_the_headless_consoles_words_with_its_categories():
    epoch = ev.EpochEnd(step=45, epoch=1, epochs=15, train_loss=0.5, val_loss=0.4, val_acc=0.9)
    finished = ev.RunFinished(step=675, epoch=15, reason="completed", seconds=61.0)
    cases = [
        (started(), f"started (pid 4242 on gpu-box): {format_started(started())}", ("run",)),
        (epoch, format_epoch(epoch), ("epoch",)),
        (finished, format_finished(finished), ("run",)),
        (ev.Paused(step=50), "paused", ("control",)),
        (ev.Resumed(step=50), "resumed", ("control",)),
        (ev.Warning(step=7, message="disk low"), "warning: disk low", ("warning",)),
        (
            ev.CheckpointSaved(step=90, path=f"{RUN}/checkpoints/step-000090.pt", reason="epoch"),
            "checkpoint saved (epoch): checkpoints/step-000090.pt",
            ("checkpoint",),
        ),
        (
            ev.CheckpointSaved(
                step=91, path=f"{RUN}/checkpoints/step-000091.pt", reason="requested"
            ),
            "checkpoint saved (requested): checkpoints/step-000091.pt",
            ("checkpoint", "control"),
        ),
        (
            ev.RunFinished(step=91, reason="stopped", seconds=3.0),
            "finished (stopped) at step 91 after 3.00s",
            ("run", "control"),
        ),
    ]
    for event, text, categories in cases:
        line = describe(event, run_dir=RUN)
        assert (line.text, line.categories, line.step) == (text, categories, event.step)


def test_a_failure_is_a_warning_with_its_traceback_and_steps_are_their_own_category():
    failed = describe(
        ev.RunFailed(step=3, error="CUDA out of memory", traceback="Traceback:\n\n  line 1\n")
    )
    assert failed.category == "warning" and "run" in failed.categories
    assert failed.text == "failed: CUDA out of memory\n  Traceback:\n    line 1"
    step = describe(ev.Step(step=10, epoch=1, loss=0.25, lr=1e-3, epoch_progress=0.5))
    assert step.category == "step" and "loss 0.2500" in step.text and "50%" in step.text
    # an early stop that is not stopping says only when the monitor stopped improving
    assert describe(ev.EarlyStop(monitor="val_loss", value=0.3, best=0.3, wait=0)) is None
    waiting = describe(ev.EarlyStop(monitor="val_loss", value=0.4, best=0.3, wait=2, patience=5))
    assert waiting.text.startswith("early stopping: val_loss has not improved for 2 of 5")


def test_any_event_a_file_can_hold_is_described_never_raised():
    """Fields as a damaged events.jsonl can have them: nulls where the engine always
    writes a number, times beyond the platform's clock, huge integers."""
    for cls in ev.EVENT_TYPES.values():
        for value in (None, 0, -1, 2**62, 1e300, -1e300):
            fields = {}
            for f in dataclasses.fields(cls):
                if f.name == "time" and isinstance(value, float):
                    fields["time"] = value
                elif f.type.endswith("| None"):
                    fields[f.name] = value if value is None or "float" in f.type else 2**62
            line = describe(cls(**fields))
            if line is not None:
                assert line.text and line.clock and line.categories
    patience = describe(ev.EarlyStop(stopping=True, why="patience", monitor="val_loss", best=None))
    assert patience.text.startswith("early stopping: val_loss has not improved")
    assert patience.text.endswith("(best -)")
    assert describe(ev.Paused(time=1e300)).clock == "--:--:--"


def test_control_characters_from_the_file_are_shown_escaped_never_sent():
    warning = describe(ev.Warning(message="\x1b]0;owned\x07 red \x1b[31mtext\x9b\tend"))
    assert warning.text == "warning: \\x1b]0;owned\\x07 red \\x1b[31mtext\\x9b\tend"


def test_the_time_is_local_hh_mm_ss(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        assert describe(ev.Paused(time=T0 + 3661)).clock == "01:01:01"
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_the_filter_chooses_categories_and_a_text_case_insensitively():
    lines = [
        describe(ev.Warning(message="Disk LOW")),
        describe(ev.Paused()),
        describe(ev.Step(loss=0.5)),
        describe(ev.CheckpointSaved(path="x.pt", reason="requested")),
    ]
    chosen = LogFilter()
    assert "step" not in chosen.categories  # there can be thousands: shown when asked
    assert [chosen.shows(x) for x in lines] == [True, True, False, True]
    assert [chosen.toggled("step").shows(x) for x in lines] == [True] * 4
    only_control = LogFilter(frozenset({"control"}))
    assert [only_control.shows(x) for x in lines] == [False, True, False, True]
    assert [chosen.with_text("disk low").shows(x) for x in lines] == [True, False, False, False]
    assert LogFilter(frozenset(CATEGORIES)).everything


# ---- RunLog: events.jsonl, read as it grows ----


def write_lines(path: Path, lines: list[str], mode: str = "a") -> None:
    with path.open(mode) as f:
        f.write("".join(line + "\n" for line in lines))


def test_the_log_reads_only_what_was_added_and_waits_for_a_line_being_written(tmp_path):
    path = tmp_path / "events.jsonl"
    write_lines(path, [json.dumps(started().to_dict())], "w")
    log = RunLog(path)
    assert [line.text.split(":")[0] for line in log.read_new()] == ["started (pid 4242 on gpu-box)"]
    assert log.read_new() == []
    half = event_line("paused", step=5)
    with path.open("a") as f:
        f.write(half[:10])  # the writer is mid-line
    assert log.read_new() == []
    with path.open("a") as f:
        f.write(half[10:] + "\n")
    assert [line.text for line in log.read_new()] == ["paused"]
    assert [line.order for line in log.lines] == [0, 1]


def test_lines_that_cannot_be_read_become_warning_lines_naming_them(tmp_path):
    path = tmp_path / "events.jsonl"
    damaged = event_line("warning", message=5)
    write_lines(path, [event_line("paused"), "not json {", damaged, "[1, 2]"], "w")
    log = RunLog(path)
    texts = [(line.category, line.text) for line in log.read_new()]
    assert texts == [
        ("control", "paused"),
        ("warning", "warning: "),  # the event, its message at its default
        ("warning", "events.jsonl line 2 could not be read: not JSON"),
        ("warning", "events.jsonl line 3 could be read only in part: warning.message is not "
                    "text (got 5)"),
        ("warning", "events.jsonl line 4 could not be read: not an event (a JSON array)"),
    ]  # fmt: skip
    # past the reader's first 20 named problems, the rest are counted, one line a read
    write_lines(path, ["garbage"] * 30)
    more = [line.text for line in log.read_new()]
    assert more[:-1] == [f"events.jsonl line {n} could not be read: not JSON" for n in range(5, 22)]
    assert more[-1] == "events.jsonl: 13 more lines could not be read (33 in all)"


def test_a_long_run_keeps_the_newest_step_lines_and_every_other_line(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = []
    for i in range(1, 501):
        lines.append(event_line("step", step=i, loss=0.5))
        if i % 100 == 0:
            lines.append(event_line("epoch_end", step=i, epoch=i // 100, epochs=5))
    write_lines(path, lines, "w")
    log = RunLog(path, max_step_lines=50)
    log.read_new()
    steps = [line.step for line in log.lines if line.category == "step"]
    assert steps == list(range(451, 501))
    assert [line.step for line in log.lines if line.category == "epoch"] == [
        100,
        200,
        300,
        400,
        500,
    ]
    assert log.dropped == 450 and len(log) == 55
    write_lines(path, [event_line("step", step=501, loss=0.5)])
    log.read_new()
    assert log.dropped == 451 and log.lines[-1].step == 501
    shown = log.shown(LogFilter(frozenset(CATEGORIES)), last=3)
    assert [line.category for line in shown.lines] == ["step", "epoch", "step"]
    assert [line.step for line in shown.lines] == [500, 500, 501] and shown.matching == 55


# ---- ConsoleTail: console.log's last lines, never the whole file ----


def test_the_console_tail_reads_the_end_of_a_big_file_and_follows_it(tmp_path):
    path = tmp_path / "console.log"
    path.write_text("".join(f"line {i} " + "x" * 90 + "\n" for i in range(100_000)))  # ~10 MB
    tail = ConsoleTail(path, keep=20, max_bytes=4096)
    assert tail.read_new()
    assert list(tail.lines)[-1].startswith("line 99999 ")
    assert len(tail.lines) == 20 and all(x.startswith("line 9999") for x in list(tail.lines)[-9:])
    assert not tail.read_new()
    with path.open("a") as f:
        f.write("one more\nand half")
    assert tail.read_new() and list(tail.lines)[-1] == "one more"
    with path.open("a") as f:
        f.write(" a line\n")
    tail.read_new()
    assert list(tail.lines)[-2:] == ["one more", "and half a line"]
    path.write_text("started again\n")  # cut short: read from the start
    tail.read_new()
    assert list(tail.lines) == ["started again"]


def test_console_lines_lose_carriage_returns_and_escape_sequences():
    assert clean("epoch 1 [###...]  10%\r\x1b[Kepoch 1/3  train loss 0.5") == (
        "epoch 1/3  train loss 0.5"
    )
    assert clean("\x1b[31mred\x1b[0m\tand a tab\x07") == "red\tand a tab"


def test_the_console_tail_shows_what_mpt_runs_console_writes(tmp_path):
    """console.log written by the engine's Console, as a detached run writes it."""
    path = tmp_path / "console.log"
    tail = ConsoleTail(path)
    with path.open("a", buffering=1, encoding="utf-8") as log:
        console = Console(out=log, err=log, tty=False)
        console.show(started())
        console.show(ev.Step(step=1, loss=0.5))  # not a line: no terminal
        tail.read_new()
        assert list(tail.lines) == [format_started(started())]
        epoch = ev.EpochEnd(step=45, epoch=1, epochs=15, train_loss=0.5, val_loss=0.4)
        console.show(epoch)
        console.show(ev.Warning(message=MARKUP_WARNING))
    tail.read_new()
    assert list(tail.lines)[1:] == [format_epoch(epoch), f"warning: {MARKUP_WARNING}"]


# ---- the screen ----


@pytest.fixture
def recorded(workdir: Path) -> Path:
    """A run mid-way, with a warning holding markup, controls and a line that is no event."""
    lines = (
        [json.dumps(started().to_dict())]
        + recorded_run(3)[1:]
        + [
            event_line("warning", step=150, epoch=4, time=T0 + 20, message=MARKUP_WARNING),
            event_line("paused", step=152, epoch=4, time=T0 + 21),
            "{not an event",
            event_line("resumed", step=152, epoch=4, time=T0 + 30),
            event_line(
                "checkpoint_saved",
                step=153,
                epoch=4,
                time=T0 + 31,
                path=f"{RUN}/checkpoints/step-000153.pt",
                reason="requested",
            ),
        ]
    )
    return write_run(workdir / "runs", "quickstart", "20260101-000000", lines)


def texts(app, selector: str = "#events") -> list[str]:
    """What a panel of the log screen holds, line by line, as the terminal shows it."""
    return [strip.text.rstrip() for strip in app.screen.query_one(selector).lines]


def header(app) -> str:
    return str(app.screen.query_one("#log-title").render())


async def open_log(pilot) -> None:
    """The runs list, the run, then `l`, as a person opens it; wait for its lines."""
    await pilot.press("tab", "enter")
    await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "DashboardScreen")
    await pilot.press("l")
    await wait_for(pilot, lambda: type(pilot.app.screen).__name__ == "LogScreen")
    await wait_for(pilot, lambda: "paused" in "".join(texts(pilot.app)))


@run_async
async def test_l_opens_the_whole_log_and_escape_goes_back(recorded):
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(120, 40)) as pilot:
        await open_log(pilot)
        shown = "\n".join(texts(app))
        for expected in (
            "started (pid 4242 on gpu-box): digits: 1,438 train / 359 val samples",
            "epoch  3/15",
            "checkpoint saved (epoch): checkpoints/step-000135.pt",
            "paused",
            "resumed",
            "checkpoint saved (requested): checkpoints/step-000153.pt",
            "events.jsonl line 43 could not be read: not JSON",
        ):
            assert expected in shown, expected
        assert "samples/s" not in shown  # step lines wait for `6`
        assert header(app).startswith("Log: 12 of 42 lines · runs/quickstart/20260101-000000/")
        await pilot.press("escape")
        assert type(app.screen).__name__ == "DashboardScreen"


@run_async
async def test_a_warning_with_markup_characters_shows_as_written(recorded):
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(120, 40)) as pilot:
        await open_log(pilot)
        assert any(f"warning: {MARKUP_WARNING}" in line for line in texts(app))


@run_async
async def test_number_keys_choose_categories_and_slash_finds_text(recorded):
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(120, 40)) as pilot:
        await open_log(pilot)
        await pilot.press("6")  # steps too: every line
        assert header(app).startswith("Log: 42 of 42 lines")
        assert sum("samples/s" in line for line in texts(app)) == 30
        await pilot.press("6", "1", "2", "3", "5")  # only controls are left
        assert header(app).startswith("Log: 3 of 42 lines")
        assert [line[18:] for line in texts(app)] == [
            "paused",
            "resumed",
            "checkpoint saved (requested): checkpoints/step-000153.pt",
        ]
        await pilot.press("0", "slash", "S", "T", "E", "P", "-", "0", "0", "0", "1", "3")
        await wait_for(
            pilot, lambda: header(app).startswith("Log: 1 of 42 lines")
        )  # the checkpoint of step 135
        await pilot.press("enter")  # keeps the text; the list takes the keys again
        await pilot.press("escape")  # clears the text
        assert header(app).startswith("Log: 42 of 42 lines")
        await pilot.press("slash", "n", "o", "t", "h", "i", "n", "g", " ", "s", "o", "enter")
        assert header(app).startswith("Log: 0 of 42 lines")
        assert texts(app)[0].startswith("No line matches this filter")
        await pilot.press("escape", "escape")
        assert type(app.screen).__name__ == "DashboardScreen"


@run_async
async def test_the_log_follows_a_growing_file_unless_scrolled_up(recorded):
    events = recorded / "events.jsonl"
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_log(pilot)
        await pilot.press("6")
        listing = app.screen.query_one("#events")
        await wait_for(pilot, lambda: listing.is_vertical_scroll_end and listing.max_scroll_y)
        write_lines(events, [event_line("warning", step=160, epoch=4, message="first new")])
        await wait_for(pilot, lambda: "warning: first new" in texts(app)[-1])
        await wait_for(pilot, lambda: listing.is_vertical_scroll_end)  # it follows the end
        await pilot.press("home")  # the user reads the beginning
        write_lines(events, [event_line("warning", step=161, epoch=4, message="second new")])
        await wait_for(pilot, lambda: "warning: second new" in texts(app)[-1])
        await pilot.pause(0.2)
        assert listing.scroll_y == 0  # the new line waits at the end, unseen
        assert header(app).startswith("Log: 44 of 44 lines")


@run_async
async def test_a_run_without_events_says_so_in_a_sentence(workdir):
    run_dir = write_run(workdir / "runs", "quickstart", "20260101-000000", [])
    (run_dir / "events.jsonl").unlink()
    from tui.screens.log import LogScreen
    from tui.session import AttachedRun

    app = MptApp("profiles", "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await app.push_screen(LogScreen(AttachedRun(run_dir)))
        await wait_for(pilot, lambda: "no such file" in "".join(texts(app)))
        shown = "".join(texts(app)).replace(" ", "")  # (wrapped at 80 columns)
        assert shown == f"{run_dir}/events.jsonl:thereisnosuchfile;itseventsshowhereoncewritten."
        write_lines(run_dir / "events.jsonl", [event_line("paused", step=3)], "w")
        await wait_for(pilot, lambda: any(line.endswith("paused") for line in texts(app)))


@run_async
async def test_console_log_shows_its_last_lines_beneath_and_follows_them(recorded):
    console_log = recorded / "console.log"
    console_log.write_text("".join(f"console line {i}\n" for i in range(300)))
    app = MptApp("profiles", "runs")
    async with app.run_test(size=(80, 24)) as pilot:
        await open_log(pilot)
        await wait_for(pilot, lambda: texts(app, "#console")[-1:] == ["console line 299"])
        title = str(app.screen.query_one("#console-title").render())
        assert title == f"console.log, its last lines: {RUN}/console.log"
        assert len(texts(app, "#console")) == 200  # its last 200 lines, 6 rows in view
        assert app.screen.query_one("#console").size.height == 6
        with console_log.open("a") as f:
            f.write(f"warning: {MARKUP_WARNING}\n")
        await wait_for(pilot, lambda: texts(app, "#console")[-1] == f"warning: {MARKUP_WARNING}")


# ---- a real detached run: its console.log in the log of the console that attaches ----


@pytest.mark.skipif(not Path(__file__).parents[3].joinpath("shared").is_dir(), reason="no data")
def test_the_log_of_an_attached_detached_run_shows_its_console_log(tmp_path):
    from test_detach import Console as PtyConsole

    c = PtyConsole(tmp_path)
    try:
        c.wait_for_steps()
        c.type("d")
        c.trains_on()

        async def look() -> list[str]:
            app = MptApp(str(tmp_path), str(tmp_path / "runs"), attach=c.run_dir)
            async with app.run_test(size=(120, 40)) as pilot:
                await wait_for(pilot, lambda: type(app.screen).__name__ == "DashboardScreen")
                await pilot.press("l")
                # (its lines are laid out a moment before their text is drawn)
                await wait_for(pilot, lambda: any(texts(app, "#console")))
                return texts(app, "#console")

        import asyncio

        lines = asyncio.run(look())
        assert re.match(
            r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d: detached from the terminal; pid", lines[0]
        )
        shown = "".join(lines).replace(" ", "")  # wrapped at 120 columns
        assert f"mpt-tui--attach{c.run_dir}" in shown
        # the run's own lines, as mpt run prints them (from the epoch it was detached in:
        # an epoch takes 0.2 s, the first may end before the console lets go)
        assert re.search(r"epoch\d+/1000loss", shown), shown
        assert c.stop_from_outside() == 0
    finally:
        c.close()


# ---- the look, at 80x24 and 120x40 ----


@pytest.mark.parametrize("size", [(80, 24), (120, 40)], ids=["80x24", "120x40"])
def test_log_screen_snapshot(snap_compare, recorded, size, monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    buffer = io.StringIO()
    console = Console(out=buffer, err=buffer, tty=False)
    console.line("2026-01-01 00:00:40: detached from the terminal; pid 4242 on gpu-box ...")
    for line in recorded_run(3)[1:]:
        event = ev.event_from_line(line)
        console.show(event)
    console.show(ev.Warning(message=MARKUP_WARNING))
    (recorded / "console.log").write_text(buffer.getvalue())

    async def open_it(pilot):
        await open_log(pilot)
        await wait_for(pilot, lambda: bool(pilot.app.screen.query_one("#console").lines))
        await pilot.pause(0.2)

    try:
        assert snap_compare(MptApp("profiles", "runs"), terminal_size=size, run_before=open_it)
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
