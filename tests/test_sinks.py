"""The [log] sinks: metrics.csv and TensorBoard scalars, fed from the run's events."""

from __future__ import annotations

import csv
import math
import queue
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import BASE, PROFILES, REPO, merge, run_mpt

from engine import events as ev
from engine.errors import ProfileError
from engine.profile import profile_from_dict
from engine.run import Run
from engine.sinks import CSV_COLUMNS, CSV_NAME, CsvSink

LOGGED = {"log": {"csv": True, "tensorboard": True}, "run": {"epochs": 3}}


def epoch_ends(run_dir: Path) -> list[ev.EpochEnd]:
    return [e for e in ev.read_events(run_dir / "events.jsonl") if isinstance(e, ev.EpochEnd)]


def read_csv(run_dir: Path) -> list[dict[str, str]]:
    with open(run_dir / CSV_NAME, newline="") as f:
        return list(csv.DictReader(f))


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in the run directory's TensorBoard files, read by TensorBoard itself."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    return {tag: [(s.step, s.value) for s in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """Three epochs of digits with both sinks on, checkpoints every epoch."""
    pytest.importorskip("tensorboard")
    out = tmp_path_factory.mktemp("runs")
    run = Run.start(profile_from_dict(merge(merge(BASE, {"run": {"out_dir": str(out)}}), LOGGED)))
    assert run.join(timeout=120) == "completed", run.error
    return run.run_dir


# ---- metrics.csv ----


def test_csv_has_one_row_per_epoch_equal_to_the_epoch_end_events(logged_run):
    rows = read_csv(logged_run)
    events = epoch_ends(logged_run)
    assert len(rows) == len(events) == 3
    for row, e in zip(rows, events, strict=True):
        assert tuple(row) == CSV_COLUMNS
        assert int(row["epoch"]) == e.epoch and int(row["step"]) == e.step
        for name in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"):
            assert float(row[name]) == getattr(e, name), name  # written at full precision


def test_csv_writes_non_finite_and_missing_values_as_empty_cells(tmp_path):
    log = ev.EventLog(queue.Queue(), tmp_path / "events.jsonl")
    log.attach([CsvSink(tmp_path / CSV_NAME)])
    log.emit(ev.EpochEnd(step=5, epoch=1, train_loss=math.nan, train_acc=0.5, val_loss=None))
    log.close()
    (row,) = read_csv(tmp_path)
    assert row["train_loss"] == "" and row["val_loss"] == "" and row["val_acc"] == ""
    assert row["train_acc"] == "0.5"


def test_no_log_files_unless_the_profile_asks(train):
    done = train(write=True)
    files = {p.name for p in done.run.run_dir.iterdir()}
    assert CSV_NAME not in files
    assert not any(name.startswith("events.out.tfevents") for name in files)


# ---- TensorBoard ----


def test_tensorboard_epoch_scalars_equal_the_epoch_end_events(logged_run):
    found = scalars(logged_run)
    events = epoch_ends(logged_run)
    for name in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"):
        points = found[f"epoch/{name}"]
        assert [step for step, _ in points] == [e.step for e in events], name
        # TensorBoard stores float32
        assert [v for _, v in points] == pytest.approx([getattr(e, name) for e in events]), name


def test_tensorboard_step_scalars_equal_the_step_events(logged_run):
    found = scalars(logged_run)
    steps = [e for e in ev.read_events(logged_run / "events.jsonl") if isinstance(e, ev.Step)]
    assert steps
    assert [s for s, _ in found["train/loss"]] == [e.step for e in steps]
    assert [v for _, v in found["train/loss"]] == pytest.approx([e.loss for e in steps])
    assert [v for _, v in found["train/lr"]] == pytest.approx([e.lr for e in steps])
    assert not any(tag.startswith("gpu/") for tag in found)  # the CPU: no GPU memory


def test_tensorboard_shows_gpu_memory_from_cuda_step_events(tmp_path):
    pytest.importorskip("tensorboard")
    from engine.sinks import TensorBoardSink

    sink = TensorBoardSink(tmp_path)
    mib = 1024 * 1024
    sink.write(
        ev.Step(step=20, loss=0.5, gpu_mem_allocated=100 * mib, gpu_mem_reserved=200 * mib,
                gpu_mem_peak=150 * mib, gpu_mem_total=80_000 * mib)
    )  # fmt: skip
    sink.close()
    found = scalars(tmp_path)
    assert found["gpu/mem_allocated_mib"] == [(20, 100.0)]
    assert found["gpu/mem_reserved_mib"] == [(20, 200.0)]
    assert found["gpu/mem_peak_mib"] == [(20, 150.0)]


# ---- resume: the new run directory holds the whole history, as its events.jsonl does ----


def test_a_resumed_run_continues_the_csv_and_tensorboard_history(logged_run):
    first = logged_run / "checkpoints" / "step-000046.pt"  # the end of epoch 2 (23 steps each)
    assert first.is_file(), sorted(p.name for p in first.parent.iterdir())
    run = Run.start(resume=first, overrides=["run.epochs=4"])
    assert run.join(timeout=120) == "completed", run.error
    rows, before = read_csv(run.run_dir), read_csv(logged_run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert rows[:2] == before[:2]  # the history, replayed as it was
    events = epoch_ends(run.run_dir)
    assert [int(r["step"]) for r in rows] == [e.step for e in events]
    found = scalars(run.run_dir)
    assert [v for _, v in found["epoch/val_acc"]] == pytest.approx([e.val_acc for e in events])
    assert [s for s, _ in found["epoch/val_acc"]] == [23, 46, 69, 92]


def test_log_keys_may_change_on_resume_with_a_warning(logged_run):
    first = logged_run / "checkpoints" / "step-000046.pt"
    run = Run.start(resume=first, overrides=["log.tensorboard=false"])
    assert run.join(timeout=120) == "completed", run.error
    warnings = [
        e.message for e in ev.read_events(run.run_dir / "events.jsonl") if e.kind == "warning"
    ]
    assert "resume changes log.tensorboard from True to False" in warnings
    assert not list(run.run_dir.glob("events.out.tfevents*"))
    assert len(read_csv(run.run_dir)) == 3


# ---- a sink never stops training ----


class BrokenSink:
    def write(self, event):
        if isinstance(event, ev.EpochEnd):
            raise OSError(28, "No space left on device")

    def close(self):
        pass


def test_a_failing_sink_is_dropped_with_a_warning_and_events_go_on(tmp_path):
    q: queue.Queue = queue.Queue()
    log = ev.EventLog(q, tmp_path / "events.jsonl")
    log.attach([BrokenSink()])
    log.emit(ev.EpochEnd(step=1, epoch=1))
    log.emit(ev.EpochEnd(step=2, epoch=2))
    log.close()
    kinds = [e.kind for e in ev.read_events(tmp_path / "events.jsonl")]
    assert kinds == ["epoch_end", "warning", "epoch_end"]  # the warning follows the failing write
    (warning,) = [e for e in ev.read_events(tmp_path / "events.jsonl") if e.kind == "warning"]
    assert warning.message.startswith("BrokenSink stopped logging: OSError")


# ---- tensorboard asked for but not installed ----

HIDE_TENSORBOARD = """
import importlib.machinery, sys

class HideTensorBoard(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name.partition(".")[0] == "tensorboard":
            return None
        return super().find_spec(name, path, target)

sys.meta_path[:] = [
    HideTensorBoard if f is importlib.machinery.PathFinder else f for f in sys.meta_path
]
"""


def test_the_profile_refuses_tensorboard_when_it_is_not_installed(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "tensorboard" else real(name, *a),
    )
    with pytest.raises(ProfileError) as info:
        profile_from_dict({"log": {"tensorboard": True}}, "p.toml")
    assert str(info.value) == (
        "p.toml: log.tensorboard: needs the tensorboard package, which is not installed; "
        "pip install 'mpt[tensorboard]' or set log.tensorboard = false (got true)"
    )


def test_mpt_run_without_tensorboard_exits_2_before_training(tmp_path):
    import subprocess

    code = HIDE_TENSORBOARD + textwrap.dedent(
        f"""
        sys.argv = ["mpt", "run", {str(PROFILES / "quickstart.toml")!r},
                    "--set", "log.tensorboard=true"]
        from engine.cli import main
        main()
        """
    )
    p = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [
        f"{PROFILES / 'quickstart.toml'}: log.tensorboard: needs the tensorboard package, which "
        "is not installed; pip install 'mpt[tensorboard]' or set log.tensorboard = false "
        "(got true)"
    ]
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_a_broken_tensorboard_import_fails_the_run_with_one_sentence(monkeypatch, tmp_path):
    # find_spec sees the package but torch.utils.tensorboard cannot import: a user error.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    data = merge(BASE, {"run": {"out_dir": str(tmp_path)}, "log": {"tensorboard": True}})
    pytest.importorskip("tensorboard")
    run = Run.start(profile_from_dict(data))
    assert run.join(timeout=60) == "failed"
    assert run.user_error
    assert run.error.startswith(
        "log.tensorboard = true: torch.utils.tensorboard cannot be imported (ModuleNotFoundError: "
    )
    assert run.error.endswith("; pip install 'mpt[tensorboard]' or set log.tensorboard = false")
    assert "\n" not in run.error


def test_validate_accepts_a_log_section(tmp_path):
    profile = tmp_path / "p.toml"
    profile.write_text((PROFILES / "quickstart.toml").read_text() + "\n[log]\ncsv = true\n")
    result = run_mpt("validate", profile, cwd=REPO)
    assert result.returncode == 0, result.stderr


def test_sinks_are_not_opened_without_a_run_directory():
    from engine.sinks import open_sinks

    assert open_sinks(profile_from_dict({"log": {"csv": True}}).log, None) == []
