"""Controls from another thread: pause, resume, checkpoint now, stop.

DESIGN.md, Threads and control: controls are thread-safe and take effect at the next
optimizer-step boundary. This test thread plays the TUI: it holds the Run handle,
reads its events and calls its controls while the trainer thread trains.
"""

from __future__ import annotations

import queue
import time

import pytest
from durable_helpers import finish, load, profile_dict, start

# Long enough never to end by itself during a test: 500 epochs of 23 steps.
LONG = (
    {"run": {"name": "controlled", "epochs": 500}, "train": {"log_every": 1}},
    {"checkpoint": {"every_epochs": 0, "save_best": False}},
)


class Watch:
    """Reads a live run's events as they come; remembers every one."""

    def __init__(self, run):
        self.run = run
        self.seen: list = []

    def until(self, kind: str, test=lambda e: True, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                e = self.run.events.get(timeout=0.05)
            except queue.Empty:
                assert self.run.is_alive(), f"the run ended: {self.run.reason} {self.run.error}"
                continue
            self.seen.append(e)
            if e.kind == kind and test(e):
                return e
        raise AssertionError(f"no {kind} event within {timeout} s")

    def collect(self, seconds: float) -> list:
        """Every event that arrives within `seconds`."""
        got, deadline = [], time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                got.append(self.run.events.get(timeout=left))
            except queue.Empty:
                break
        self.seen += got
        return got

    def last_step(self) -> int:
        return max(e.step for e in self.seen if e.kind == "step")


@pytest.fixture
def live(tmp_path):
    """A long run, already training (some step events seen); stopped at the end."""
    run = start(profile_dict(tmp_path, *LONG))
    watch = Watch(run)
    watch.until("step", lambda e: e.step >= 3)
    yield watch
    run.stop()
    run.join(timeout=60)


def test_pause_emits_paused_at_a_step_boundary(live):
    live.run.pause()
    paused = live.until("paused")
    assert paused.step == live.last_step()
    assert live.run.paused


def test_no_steps_run_while_paused(live):
    live.run.pause()
    paused = live.until("paused")

    during = live.collect(0.5)

    assert [e.kind for e in during] == []
    live.run.resume()
    assert live.until("resumed").step == paused.step  # not one step taken meanwhile


def test_checkpoint_while_paused_writes_one_at_the_paused_step(live):
    live.run.pause()
    paused = live.until("paused")

    live.run.checkpoint()
    saved = live.until("checkpoint_saved")

    assert saved.reason == "requested"
    assert saved.step == paused.step
    state = load(saved.path)
    assert state["progress"]["step"] == paused.step
    assert live.collect(0.3) == []  # still paused afterwards


def test_resume_emits_resumed_and_training_goes_on_from_the_paused_step(live):
    live.run.pause()
    paused = live.until("paused")
    live.collect(0.2)

    live.run.resume()
    resumed = live.until("resumed")
    nxt = live.until("step")

    assert resumed.step == paused.step
    assert nxt.step == paused.step + 1
    assert not live.run.paused


def test_time_paused_counts_in_no_epoch_seconds_nor_samples_per_s(live):
    live.run.pause()
    paused = live.until("paused")
    time.sleep(2.0)
    live.run.resume()
    live.until("resumed")
    after = live.until("step")  # log_every 1: its window held the pause
    end = live.until("epoch_end", lambda e: e.epoch == paused.epoch)

    window = 64 / after.samples_per_s  # (a step of 64 samples: durable_helpers)
    assert window < 1.0, f"the step after the pause took {window:.2f} s by its samples/s"
    assert end.seconds < 1.5, f"the paused epoch took {end.seconds:.2f} s by its epoch_end"


def test_checkpoint_while_training_writes_one_at_a_step_boundary(live):
    live.run.checkpoint()
    saved = live.until("checkpoint_saved")

    assert saved.reason == "requested"
    assert saved.step == live.last_step()
    state = load(saved.path)
    assert state["progress"]["step"] == saved.step
    assert state["progress"]["group"] == saved.step % 23


def test_stop_saves_a_checkpoint_then_finishes_stopped(live):
    live.run.stop()
    done = finish(live.run, timeout=60)
    live.seen += done.events

    kinds = [(e.kind, getattr(e, "reason", None)) for e in live.seen[-2:]]
    assert kinds == [("checkpoint_saved", "stop"), ("run_finished", "stopped")]
    saved, finished = live.seen[-2:]
    assert saved.step == finished.step == live.last_step()
    assert load(saved.path)["progress"]["step"] == finished.step
    assert done.reason == "stopped"


def test_stop_while_paused_ends_the_run_without_resuming(live):
    live.run.pause()
    live.until("paused")

    live.run.stop()
    done = finish(live.run, timeout=60)

    assert [e.kind for e in done.events] == ["checkpoint_saved", "run_finished"]
    assert done.events[0].reason == "stop"
    assert done.reason == "stopped"
