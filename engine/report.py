"""`mpt ls` and `mpt show`: runs as text, from their events.jsonl (no torch).

`mpt ls` is one line per run, from engine.runs (the same summaries as the TUI's run
list); `mpt show` is one run's summary and its table of epochs.
"""

from __future__ import annotations

import os
import re
import stat
import time
from pathlib import Path

from engine import events as ev
from engine.errors import MptError
from engine.formatting import metric, number, percent
from engine.history import RunHistory
from engine.runs import RunSummary, list_runs, summarize
from engine.summary import load_summary

# What events.jsonl says is printed to a terminal: its control characters (an escape
# sequence, a newline in a table cell) are shown escaped, never sent as they are.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def _printable(text: str, limit: int = 200) -> str:
    """Text from events.jsonl as it is printed: control characters escaped, cut at `limit`."""
    text = _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _when(t: float | None) -> str | None:
    """A time of day, or None for one the platform cannot show (a damaged field)."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else None
    except (OverflowError, OSError, ValueError):
        return None


def _checkpoint(s: RunSummary) -> str:
    if s.last_checkpoint is None:
        return "-"
    try:
        return str(s.last_checkpoint.relative_to(s.run_dir))
    except ValueError:
        return str(s.last_checkpoint)


def _table(header: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        out = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(out).rstrip()

    return "\n".join(line(r) for r in [header, *rows])


def runs_table(runs_dir: str | Path) -> str:
    """Every run under `runs_dir`, newest first: run, state, epochs, best val acc, checkpoint."""
    root = Path(runs_dir).expanduser()
    if not root.is_dir():
        raise MptError(
            f"{runs_dir}: no such folder; give the runs folder (a profile's run.out_dir, "
            "by default runs)"
        )
    runs = list_runs(root)
    if not runs:
        return f"no runs in {runs_dir}"
    rows = [
        [
            _printable(f"{s.name}/{s.stamp}", 80),
            _printable(_state(s), 80),
            f"{s.epoch}/{s.epochs}" if s.epochs else "-",  # no run_started: unknown
            _best(s),
            _printable(_checkpoint(s)),
        ]
        for s in runs
    ]
    return _table(["RUN", "STATE", "EPOCH", "BEST VAL", "LAST CHECKPOINT"], rows, {2, 3})


def _state(s: RunSummary) -> str:
    """The state, and for a live run where it trains: `running (pid 1234 on gpubox)`."""
    return f"{s.state_text} ({s.process})" if s.process else s.state_text


def _best(s) -> str:
    """The best value of the run's headline metric: `97.25%` (accuracy), `0.4123 mae`."""
    if s.headline == "val_acc":
        return percent(s.best_val_acc)
    if s.best_headline is None:
        return "-"
    return f"{metric(s.headline, s.best_headline)} {s.headline.removeprefix('val_')}"


def find_run(run: str, runs_dir: str | Path = "runs") -> Path:
    """A run directory, or a run name under `runs_dir` (its newest run)."""
    path = Path(run).expanduser()
    if (path / "events.jsonl").is_file():
        return path
    named = Path(runs_dir).expanduser() / run
    if "/" not in run and named.is_dir():
        found = list_runs(named.parent)
        newest = [s for s in found if s.run_dir.parent.name == run]
        if newest:
            return newest[0].run_dir
    if path.is_dir():
        raise MptError(f"{run}: not a run directory (it has no events.jsonl)")
    raise MptError(
        f"{run}: no such run directory, and no run of that name in {runs_dir}; "
        "mpt ls lists the runs"
    )


def read_run(run_dir: Path) -> tuple[RunHistory, ev.EventsReader, RunSummary]:
    """A run directory's events.jsonl read whole (every line that can be), folded into its
    history and summary; the reader says what could not be read. The lines a valid
    summary.json covers come from it (engine/summary.py). MptError when the file cannot
    be opened."""
    path = run_dir / "events.jsonl"
    history, reader = RunHistory(), ev.EventsReader(path)
    try:
        st = os.stat(path)
        loaded = load_summary(run_dir, st.st_size) if stat.S_ISREG(st.st_mode) else None
        if loaded is not None:  # the lines summary.json covers are not read again
            history, reader = loaded[0], loaded[1].reader
        events = reader.read_all()
    except OSError as e:
        raise MptError(f"{path}: cannot be read ({e.strerror or e})") from None
    history.add(events)
    return history, reader, summarize(history, run_dir, reader, st.st_mtime)


def run_report(run: str, runs_dir: str | Path = "runs") -> str:
    """A run's summary (from engine.runs and its run_started) and its table of epochs.

    Lines of events.jsonl that could not be read are named after the summary; the rest
    is shown."""
    run_dir = find_run(run, runs_dir)
    history, reader, s = read_run(run_dir)
    if history.last is None and reader.unreadable:
        path = run_dir / "events.jsonl"
        raise MptError(f"{path}: no line of it could be read as an event ({reader.describe()})")
    info = [("run", str(run_dir)), ("name", s.name), ("state", s.state)]
    if _when(s.started):
        info.append(("started", _when(s.started)))
    if history.started is not None:
        r = history.started
        val = f" / {r.val_samples:,} val" if r.val_samples else ", no validation"
        shape = "x".join(map(str, r.input_shape))
        outputs = {"classification": "classes", "multilabel": "labels"}.get(r.task, "targets")
        info.append(
            ("data", f"{r.dataset}: {r.train_samples:,} train{val}; input {shape}, "
             f"{r.num_classes} {outputs}")
        )  # fmt: skip
        if r.task != "classification" or r.metrics[1:]:
            info.append(("task", f"{r.task}, loss {r.loss}, metrics {', '.join(r.metrics)}"))
        trained = ""
        if r.trainable_parameters is not None and r.trainable_parameters < r.parameters:
            trained = f" ({r.trainable_parameters:,} trained)"
        info.append(
            ("model", f"{r.arch}, {r.parameters:,} parameters{trained}; {r.device}, {r.precision}")
        )
        if r.resumed_from:
            info.append(("resumed from", r.resumed_from))
    info.append(("progress", f"epoch {s.epoch}/{s.epochs}, step {s.step}/{s.total_steps}"))
    best = _best(s).removesuffix(" " + s.headline.removeprefix("val_"))
    info.append((f"best {s.headline.replace('_', ' ')}", best))
    info.append(("checkpoint", str(s.last_checkpoint) if s.last_checkpoint else "-"))
    if s.error:
        info.append(("error", s.error))
    notes = [s.problems] if s.problems else []
    if reader.torn:  # as a SIGKILL leaves it: not counted as unreadable
        notes.append("its last line is cut short (its writer was stopped mid-line) and skipped")
    if notes:
        info.append(("events.jsonl", "; ".join(notes)))
    info = [(k, _printable(v, 2000)) for k, v in info]
    epochs = history.epoch_ends
    width = max(len(k) for k, _ in info)
    lines = [f"{k.ljust(width)}  {v}" for k, v in info]
    if epochs:
        lines += ["", _epochs_table(sorted(epochs.values(), key=lambda e: e.epoch))]
    else:
        lines += ["", "no epoch finished yet"]
    return "\n".join(lines)


def _epochs_table(ends: list[ev.EpochEnd]) -> str:
    """One row an epoch: loss and every metric of the task, train then val."""
    names = list(dict.fromkeys(k for e in ends for k in e.metrics)) or ["train_acc", "val_acc"]
    train = [k for k in names if k.startswith("train_")]
    val = [k for k in names if k.startswith("val_")]

    def value(e: ev.EpochEnd, name: str) -> str:
        fallback = {"train_acc": e.train_acc, "val_acc": e.val_acc}.get(name)
        return metric(name, e.metrics.get(name, fallback))

    rows = [
        [str(e.epoch), str(e.step), number(e.train_loss)]
        + [value(e, k) for k in train]
        + [number(e.val_loss)]
        + [value(e, k) for k in val]
        + [f"{e.lr:.2e}", number(e.seconds, 2)]
        for e in ends
    ]
    header = ["EPOCH", "STEP", "TRAIN LOSS"] + [k.replace("_", " ").upper() for k in train]
    header += ["VAL LOSS"] + [k.replace("_", " ").upper() for k in val] + ["LR", "SECONDS"]
    return _table(header, rows, set(range(len(header))))
