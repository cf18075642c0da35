"""RunSession and EventsFile: how the app reads a run's events, without a terminal."""

from __future__ import annotations

import queue
from pathlib import Path

from tui_helpers import event_line

from engine import events as ev
from tui.session import EventsFile, RunSession


class FakeRun:
    """Just enough of engine.run.Run: a queue, a liveness flag and the controls."""

    def __init__(self):
        self.events: queue.Queue = queue.Queue()
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


def test_drain_folds_what_is_waiting_and_sees_the_end():
    run = FakeRun()
    session = RunSession(run)
    run.events.put(ev.RunStarted(name="x", total_steps=10))
    run.events.put(ev.Step(step=5, loss=1.0))
    assert session.drain() == 2 and session.live
    assert session.view.step == 5
    run.events.put(ev.RunFinished(step=10))
    session.drain()
    assert session.ended and session.view.state == "finished"


def test_drain_takes_a_bounded_batch_so_a_flood_never_holds_the_ui():
    run = FakeRun()
    session = RunSession(run)
    for i in range(25):
        run.events.put(ev.Step(step=i))
    assert session.drain(limit=10) == 10
    assert session.drain(limit=10) == 10
    assert session.drain(limit=10) == 5


def test_a_trainer_thread_that_dies_silently_ends_the_session_as_failed():
    run = FakeRun()
    session = RunSession(run)
    run.events.put(ev.RunStarted(name="x"))
    session.drain()
    run.alive = False
    session.drain()
    assert session.ended and session.view.state == "failed"
    assert "without reporting why" in session.view.error


def test_toggle_pause_pauses_then_resumes():
    run = FakeRun()
    session = RunSession(run)
    assert session.toggle_pause() is True
    assert session.toggle_pause() is False
    session.stop()
    assert run.calls == ["pause", "resume", "stop:stopped"] and session.stop_requested


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
