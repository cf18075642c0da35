"""RunSession, AttachedRun and EventsFile: how the app reads a run's events, without a terminal."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

from tui_helpers import event_line

from engine import events as ev
from tui.session import AttachedRun, EventsFile, RunSession


class FakeRun:
    """Just enough of engine.run.Run: a queue, a liveness flag and the controls."""

    def __init__(self):
        self.events: queue.Queue = queue.Queue()
        self.history: list = []
        self.profile = None  # a Run has one; None: the view waits for run_started
        self.alive = True
        self.paused = False
        self.run_dir = Path("runs/x/1")
        self.calls: list[str] = []

    def is_alive(self) -> bool:
        return self.alive

    def pause(self):
        self.paused = True
        self.calls.append("pause")

    def resume(self):
        self.paused = False
        self.calls.append("resume")

    def stop(self, reason="stopped"):
        self.calls.append(f"stop:{reason}")


def drain(session, limit: int = 5000) -> int:
    """What the watcher thread and the app do in turn: read what waits, then fold it."""
    session.collect()
    return session.fold(limit)


def test_fold_applies_what_is_waiting_and_sees_the_end():
    run = FakeRun()
    session = RunSession(run)
    run.events.put(ev.RunStarted(name="x", total_steps=10))
    run.events.put(ev.Step(step=5, loss=1.0))
    assert drain(session) == 2 and session.live
    assert session.view.step == 5
    run.events.put(ev.RunFinished(step=10))
    drain(session)
    assert session.ended and session.view.state == "finished"


def test_fold_takes_a_bounded_batch_so_a_flood_never_holds_the_ui():
    run = FakeRun()
    session = RunSession(run)
    for i in range(25):
        run.events.put(ev.Step(step=i))
    assert drain(session, limit=10) == 10 and session.backlog
    assert session.fold(limit=10) == 10
    assert session.fold(limit=10) == 5 and not session.backlog


def test_a_resumed_run_folds_its_history_first():
    run = FakeRun()
    run.history = [ev.RunStarted(name="x", total_steps=90), ev.EpochEnd(step=45, val_acc=0.5)]
    session = RunSession(run)
    assert session.view.val_acc.ys == [0.5]
    run.events.put(ev.RunStarted(name="x", step=45, epoch=2, total_steps=90))
    drain(session)
    assert session.view.val_acc.ys == [0.5] and session.view.step == 45


def test_the_watcher_tells_of_new_events_and_ends_with_the_run():
    run = FakeRun()
    session = RunSession(run)
    told = threading.Event()
    session.watch(told.set)
    run.events.put(ev.Step(step=1))
    assert told.wait(5)
    assert session.fold() == 1 and session.view.step == 1
    told.clear()
    run.events.put(ev.RunFinished(step=1))
    assert told.wait(5)
    session.fold()
    assert session.ended and not session.live
    # the thread still closes its sinks: [notify]'s failure comes after run_finished
    told.clear()
    run.events.put(ev.Warning(step=1, message="[notify] the command exited with status 3"))
    assert told.wait(5)
    session.fold()
    assert list(session.view.messages)[-1].endswith("exited with status 3")
    run.alive = False  # the thread ended: the watcher with it
    session._watcher.join(5)
    assert not session._watcher.is_alive()
    assert session.view.state == "finished"


def test_a_trainer_thread_that_dies_silently_ends_the_session_as_failed():
    run = FakeRun()
    session = RunSession(run)
    run.events.put(ev.RunStarted(name="x"))
    drain(session)
    run.alive = False
    drain(session)
    assert session.ended and session.view.state == "failed"
    assert "without reporting why" in session.view.error


def test_the_controls_reach_the_run_and_say_what_they_did():
    run = FakeRun()
    session = RunSession(run)
    assert session.pause().startswith("pause requested") and session.paused
    assert session.resume() == "resume requested" and not session.paused
    assert session.stop().startswith("stopping")
    assert run.calls == ["pause", "resume", "stop:stopped"]


def test_events_file_returns_only_new_complete_lines(tmp_path: Path):
    path = tmp_path / "events.jsonl"
    path.write_text(event_line("run_started", name="x") + "\n" + '{"kind": "st')
    follow = EventsFile(path)
    assert [e.kind for e in follow.read_new()] == ["run_started"]
    assert follow.read_new() == []
    with open(path, "a") as f:
        f.write('ep", "step": 3, "epoch": 1, "time": 1.0}\n')
    [step] = follow.read_new()
    assert step.kind == "step" and step.step == 3
    assert EventsFile(tmp_path / "missing.jsonl").read_new() == []


def test_an_attached_run_follows_its_events_file(tmp_path: Path):
    run_dir = tmp_path / "runs" / "x" / "1"
    run_dir.mkdir(parents=True)
    path = run_dir / "events.jsonl"
    path.write_text(event_line("run_started", name="x", total_steps=10) + "\n")
    source = AttachedRun.open(run_dir)
    assert source.view.state == "running" and not source.live  # no control channel
    with open(path, "a") as f:
        f.write("not json\n" + event_line("run_finished", step=10, reason="completed") + "\n")
    source.collect()
    assert source.fold() == 2  # the event, and the note of the line it could not read
    assert source.view.state == "finished"
    assert any("could not be read" in m for m in source.view.messages)
