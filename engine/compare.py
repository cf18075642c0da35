"""`mpt diff` and `mpt compare`: runs side by side, from their profile.toml and events.jsonl.

No torch and no Textual: both commands only read files. A run's settings are its
profile.toml with every key the file leaves out at the schema's default, so a key set to
its default in one run and absent in another compares as the same. A run's metrics are
those of its epoch_end events (the last of each epoch, as `mpt show` reads them): the
final value is the last epoch's, the best one is the best in the metric's own direction
(lower for losses, mae, mse, rmse, hamming) with the epoch it came in. Whatever can be read
is compared; what could not be is named in a note under the table.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine import events as ev
from engine.errors import MptError
from engine.formatting import FRACTIONS
from engine.formatting import metric as metric_text
from engine.profile import FIELDS, describe_value, read_profile_file
from engine.report import _printable, _table, find_run, read_run
from engine.runs import RunSummary
from engine.task_spec import lower_is_better

MAX_RUNS = 8  # as many curves as one chart tells apart (the console's compare view's limit)
KEY_COLUMNS = 6  # differing keys shown as columns of `mpt compare`; the rest are named below

# Where a run is filed, not how it trains: a sweep gives every trial its own name or
# folder, and the run's label (name/stamp) already says it. Left out of the differences.
FILING_KEYS = ("run.name", "run.out_dir")

ABSENT = object()  # a key one run's profile.toml has and another's (from another mpt) lacks


@dataclass
class ComparedRun:
    """One run as the comparison sees it."""

    run_dir: Path
    summary: RunSummary
    settings: dict[str, Any] | None  # dotted key -> value, defaults filled in; None: unread
    settings_problem: str | None = None  # why profile.toml could not be read
    curves: dict[str, list[tuple[int, float | None]]] = field(default_factory=dict)
    seconds: float = 0.0  # the finished epochs' training time, summed

    @property
    def label(self) -> str:
        """`quickstart/20261202-041500`, its control characters escaped."""
        return _printable(f"{self.summary.name}/{self.summary.stamp}", 80)

    @property
    def metrics(self) -> list[str]:
        """The metrics it has a value of, as `mpt show` orders them: losses before
        metrics, train before val."""
        return sorted(self.curves, key=lambda name: _metric_rank(name, list(self.curves)))

    def final(self, name: str) -> float | None:
        points = self.curves.get(name)
        return points[-1][1] if points else None

    def best(self, name: str) -> tuple[float, int] | None:
        """The best value in the metric's direction and its epoch (the first, on a tie)."""
        found: tuple[float, int] | None = None
        lower = lower_is_better(name)
        for epoch, value in self.curves.get(name, []):
            if value is None or not math.isfinite(value):
                continue
            if found is None or (value < found[0] if lower else value > found[0]):
                found = (value, epoch)
        return found


def _metric_rank(name: str, order: list[str]) -> tuple[int, int]:
    group = {"train_loss": 0, "val_loss": 2}.get(name)
    if group is None:
        group = 1 if name.startswith("train_") else 3 if name.startswith("val_") else 4
    return group, order.index(name)


# ---- reading runs ----


def load_runs(runs: list[str], runs_dir: str | Path = "runs") -> list[ComparedRun]:
    """Each run (a run directory, or a run name under `runs_dir`: its newest run), read.
    MptError for a run that cannot be found or whose events.jsonl cannot be opened."""
    return [load_run(find_run(run, runs_dir)) for run in runs]


def load_run(run_dir: Path) -> ComparedRun:
    history, reader, summary = read_run(run_dir)
    if history.last is None and reader.unreadable:
        summary.state = "unreadable"  # nothing to tell its state from
    settings, problem = _read_settings(run_dir / "profile.toml")
    ends = sorted(history.epoch_ends.values(), key=lambda e: e.epoch)
    compared = ComparedRun(run_dir, summary, settings, problem)
    for end in ends:
        for name, value in _epoch_metrics(end).items():
            compared.curves.setdefault(name, []).append((end.epoch, value))
    # a metric no epoch gave a value of (val_acc of a regression run) is not one it has
    compared.curves = {
        k: points for k, points in compared.curves.items() if any(v is not None for _, v in points)
    }
    compared.seconds = sum(e.seconds for e in ends if math.isfinite(e.seconds))
    return compared


def _epoch_metrics(end: ev.EpochEnd) -> dict[str, float | None]:
    """Every value of one epoch_end by name: the losses, then the task's metrics (an
    epoch_end written before metrics existed has only train_acc and val_acc)."""
    values = {"train_loss": end.train_loss, "val_loss": end.val_loss}
    if not end.metrics:
        values |= {"train_acc": end.train_acc, "val_acc": end.val_acc}
    return values | end.metrics


def _read_settings(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """profile.toml as dotted keys in schema order, defaults in place of what it leaves
    out, then keys the schema does not know (a newer or older mpt's); or why it could not
    be read. The profile is not validated: a run's settings are what they were (a data
    path since moved is still the path the run trained on)."""
    try:
        data = read_profile_file(path)
    except MptError as e:
        return None, str(e)
    settings: dict[str, Any] = {}
    for spec in FIELDS:
        table = data.get(spec.section)
        given = table.get(spec.name, ABSENT) if isinstance(table, dict) else ABSENT
        settings[spec.path] = spec.default if given is ABSENT else given
    for section, table in data.items():
        if isinstance(table, dict):
            for name, value in table.items():
                settings.setdefault(f"{section}.{name}", value)
        else:
            settings.setdefault(section, table)
    return settings, None


# ---- what differs ----


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a is b or (a is not ABSENT and b is not ABSENT and a == b)


def profile_differences(
    runs: list[ComparedRun], ignore: tuple[str, ...] = FILING_KEYS
) -> list[str]:
    """The dotted keys whose values are not the same in every run whose profile.toml was
    read, in schema order (keys the schema does not know last); `ignore`d keys (by
    default run.name and run.out_dir) left out."""
    read = [r.settings for r in runs if r.settings is not None]
    keys = list(dict.fromkeys(k for s in read for k in s))
    return [
        k
        for k in keys
        if k not in ignore
        and not all(_same(s.get(k, ABSENT), read[0].get(k, ABSENT)) for s in read[1:])
    ]


def setting_text(run: ComparedRun, key: str, limit: int = 40) -> str:
    """A setting as TOML writes it (`0.01`, `'adam'`, `[64, 32]`); `-` for a key the run's
    profile leaves out with no default; `?` when its profile.toml could not be read."""
    if run.settings is None:
        return "?"
    value = run.settings.get(key, ABSENT)
    if value is ABSENT or value is None:
        return "-"
    return _printable(describe_value(value, limit), limit)


# ---- numbers ----


def _best_text(run: ComparedRun, name: str, long: bool = False) -> str:
    found = run.best(name)
    if found is None:
        return "-"
    value, epoch = found
    return f"{metric_text(name, value)} ({'epoch ' if long else ''}{epoch})"


def _final_text(run: ComparedRun, name: str) -> str:
    return metric_text(name, run.final(name)) if name in run.curves else "-"


def duration(seconds: float | None) -> str:
    """`3.2 s`, `4:05`, `1:02:03`; `-` for no time at all."""
    if not seconds or not math.isfinite(seconds):
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}" if hours else f"{m}:{s:02d}"


def _epochs(s: RunSummary) -> str:
    return f"{s.epoch}/{s.epochs}" if s.epochs else "-"


def _steps(s: RunSummary) -> str:
    return f"{s.step}/{s.total_steps}" if s.total_steps else "-"


def _state(s: RunSummary) -> str:
    return _printable(s.state_text, 40)


# ---- notes: what could not be read ----


def _notes(runs: list[ComparedRun], names: list[str] | None = None) -> list[str]:
    """A line for each run whose files could not be read whole; `names` labels the runs
    (A, B in a diff; name/stamp otherwise)."""
    notes = []
    for run, name in zip(runs, names or [r.label for r in runs], strict=True):
        s = run.summary
        if s.state == "unreadable":
            notes.append(
                f"{name}: no line of events.jsonl could be read as an event "
                f"({_printable(s.problems or '', 400)}); it has no metrics to compare"
            )
        elif s.problems:
            notes.append(
                f"{name}: events.jsonl: {_printable(s.problems, 400)}; compared what could be read"
            )
        if run.settings_problem:
            notes.append(
                f"{name}: {_printable(run.settings_problem, 400)}; its settings are not compared"
            )
    return notes


# ---- mpt diff ----


def diff_report(a: ComparedRun, b: ComparedRun) -> str:
    """The keys whose values differ (`key  A  B`), then state, epochs, steps, time and the
    final and best value of each metric the two runs share, side by side."""
    lines = [f"A  {_printable(str(a.run_dir), 400)}", f"B  {_printable(str(b.run_dir), 400)}", ""]
    lines.append(_settings_diff(a, b))
    lines += ["", _metrics_side_by_side(a, b)]
    only = [
        f"only {name} has {', '.join(_printable(m, 40) for m in mine)}"
        for name, mine in (
            ("A", [m for m in a.metrics if m not in b.curves]),
            ("B", [m for m in b.metrics if m not in a.curves]),
        )
        if mine
    ]
    notes = _notes([a, b], ["A", "B"])
    if only or notes:
        lines.append("")
    return "\n".join(lines + [f"{line} (not compared)" for line in only] + notes)


def _settings_diff(a: ComparedRun, b: ComparedRun) -> str:
    if a.settings is None or b.settings is None:
        return "the profiles are not compared (a profile.toml could not be read; see below)"
    keys = profile_differences([a, b])
    if keys:
        rows = [[_printable(k, 80), setting_text(a, k, 60), setting_text(b, k, 60)] for k in keys]
        return _table(["KEY", "A", "B"], rows, set())
    filing = profile_differences([a, b], ignore=())
    return "the profiles are the same" + (f" but for {', '.join(filing)}" if filing else "")


def _metrics_side_by_side(a: ComparedRun, b: ComparedRun) -> str:
    rows = [
        ["state", _state(a.summary), _state(b.summary)],
        ["epochs", _epochs(a.summary), _epochs(b.summary)],
        ["steps", _steps(a.summary), _steps(b.summary)],
        ["time", duration(a.seconds), duration(b.seconds)],
    ]
    for name in (m for m in a.metrics if m in b.curves):
        shown = _printable(name, 40)
        rows.append([shown, _final_text(a, name), _final_text(b, name)])
        rows.append([f"{shown} best", _best_text(a, name, True), _best_text(b, name, True)])
    return _table(["", "A", "B"], rows, set())


# ---- mpt compare ----


def with_sweeps_opened(runs: list[str]) -> list[str]:
    """Each argument that is a sweep directory (it has sweep.json) stands for its trials'
    runs (each trial's newest run directory, in trial order); the others as they are."""
    from engine.sweep import SweepDir

    opened = []
    for run in runs:
        folder = SweepDir(Path(run).expanduser())
        if not (folder.path / "sweep.json").is_file():
            opened.append(run)
            continue
        numbers = sorted(
            int(t.name[6:]) for t in folder.path.glob("trial-*") if t.name[6:].isdigit()
        )
        found = [folder.newest_run(n) for n in numbers]
        if not any(found):
            raise MptError(f"{run}: a sweep directory whose trials have no runs yet")
        opened += [str(p) for p in found if p is not None]
    return opened


def check_count(runs: list[str]) -> None:
    """MptError unless there are 2 to MAX_RUNS runs to compare."""
    if len(runs) < 2:
        raise MptError(
            "mpt compare: give two or more runs (run directories or run names); "
            "mpt show RUN prints one"
        )
    if len(runs) > MAX_RUNS:
        raise MptError(
            f"mpt compare: {len(runs)} runs given, at most {MAX_RUNS} compare at once "
            "(as many curves as one chart tells apart); pick the ones to compare"
        )


def choose_metric(runs: list[ComparedRun], asked: str | None) -> tuple[str, str | None]:
    """The metric to compare by, and a note when it is not the one the user would assume.

    Asked for: it, if any run has it (MptError naming the metrics they have, if none).
    Not asked: the first run's headline (val_acc, val_mae...) if every run has it, else
    the first of the first run's metrics that every run has, validation first."""
    have = list(dict.fromkeys(m for r in runs for m in r.metrics))
    if asked is not None:
        if asked in have:
            return asked, None
        shown = _printable(asked, 80)
        if not have:
            raise MptError(f"--metric {shown}: none of these runs has finished an epoch yet")
        raise MptError(
            f"--metric {shown}: none of these runs has it; their metrics are "
            f"{', '.join(_printable(m, 40) for m in have)}"
        )
    headline = runs[0].summary.headline
    first = runs[0].metrics
    candidates = [headline]
    candidates += [m for m in first if m.startswith("val_") and not m.endswith("loss")]
    candidates += ["val_loss", *[m for m in first if not m.startswith("val_")]]
    for name in candidates:
        if all(name in r.curves for r in runs):
            if name == headline:
                return name, None
            return name, (
                f"compared by {_printable(name, 40)}, the first metric every run has "
                f"({_printable(headline, 40)} is not one of every run's; --metric picks another)"
            )
    return headline, None


def compare_table(runs: list[ComparedRun], name: str) -> str:
    """One row a run, the best first: run, state, epochs, the final and best value of
    `name` (best with its epoch), and the settings that differ between the runs."""
    keys = profile_differences(runs)[:KEY_COLUMNS]
    rows = [
        [
            run.label,
            _state(run.summary),
            _epochs(run.summary),
            _final_text(run, name),
            _best_text(run, name),
            *(setting_text(run, k) for k in keys),
        ]
        for run in ranked(runs, name)
    ]
    header = ["RUN", "STATE", "EPOCH", "FINAL", "BEST (EPOCH)", *(_printable(k, 80) for k in keys)]
    direction = "lower" if lower_is_better(name) else "higher"
    title = f"{len(runs)} runs by best {_printable(name, 40)} ({direction} is better)"
    if not keys and all(r.settings is not None for r in runs):
        title += "; their profiles are the same"
    return "\n".join([title, _table(header, rows, {2, 3, 4})])


def ranked(runs: list[ComparedRun], name: str) -> list[ComparedRun]:
    """The runs by their best value of `name`, the best first; runs without one last, in
    the order they were given."""
    lower = lower_is_better(name)

    def key(run: ComparedRun) -> tuple[bool, float]:
        found = run.best(name)
        if found is None:
            return True, 0.0
        return False, found[0] if lower else -found[0]

    return sorted(runs, key=key)


def compare_report(runs: list[ComparedRun], asked: str | None) -> str:
    """`mpt compare`'s text: the table, then notes (the metric chosen, runs that lack it,
    files that could not be read whole)."""
    name, chosen = choose_metric(runs, asked)
    notes = [chosen] if chosen else []
    more = profile_differences(runs)[KEY_COLUMNS:]
    if more:
        notes.append(
            f"{len(more)} more key{'s' if len(more) > 1 else ''} differ: "
            f"{_printable(', '.join(more), 400)} (mpt diff RUN_A RUN_B shows them)"
        )
    notes += [f"{r.label}: no {_printable(name, 40)}" for r in runs if name not in r.curves]
    notes += _notes(runs)
    return "\n".join([compare_table(runs, name), *([""] + notes if notes else [])])


# ---- the chart ----

COLORS = ("cyan+", "orange+", "green+", "magenta+", "blue+", "red+", "gray+", "orange")
MARKS = ("*", "+", "x", "o", "#", "@", "%", "&")  # off a terminal, without colours


def legend_text(run: ComparedRun, keys: list[str]) -> str:
    """`quickstart/20261202-041500  optim.lr=0.1 data.batch_size=32`: the run and the
    values that tell it from the others."""
    values = " ".join(f"{_printable(k, 80)}={setting_text(run, k, 20)}" for k in keys)
    return f"{run.label}  {values}".rstrip()


def curves_chart(runs: list[ComparedRun], name: str, color: bool, size=None) -> str:
    """A plotext chart of `name` per epoch, a line a run (in `ranked` order), and a
    legend under it. `color`: ANSI colours and braille lines (a terminal); else plain
    text, each run drawn with its own character."""
    import plotext as plt  # only when a chart is drawn

    runs = ranked(runs, name)
    width, height = size or _chart_size()
    plt.clear_figure()
    plt.theme("clear")  # the terminal's own background, colours only for the lines
    plt.plotsize(width, height)
    percent = _is_fraction(name)  # drawn as the table prints it: 93.31, not 0.9331
    scale = 100.0 if percent else 1.0
    last_epoch = 1
    for i, run in enumerate(runs):
        points = [(e, v) for e, v in run.curves.get(name, []) if v is not None and math.isfinite(v)]
        if points:
            xs = [e for e, _ in points]
            ys = [v * scale for _, v in points]
            marker = "braille" if color else MARKS[i]
            plt.plot(xs, ys, color=COLORS[i], marker=marker)
            last_epoch = max(last_epoch, xs[-1])
    step = max(1, math.ceil(last_epoch / 10))
    ticks = list(range(1, last_epoch + 1, step))
    plt.xticks(ticks, [str(t) for t in ticks])
    plt.title(_printable(name, 40) + (" (%)" if percent else ""))
    plt.xlabel("epoch")
    chart = plt.build()
    keys = profile_differences(runs)[:KEY_COLUMNS]
    legend = []
    for i, run in enumerate(runs):
        mark = plt.colorize("━━", COLORS[i]) if color else MARKS[i] * 2
        legend.append(f"{mark} {legend_text(run, keys)[: width - 3]}")
    text = "\n".join([chart.rstrip("\n"), *legend])
    return text if color else plt.uncolorize(text)


def _is_fraction(name: str) -> bool:
    base = name.partition("_")[2] if name.startswith(("train_", "val_")) else name
    return base in FRACTIONS


def _chart_size() -> tuple[int, int]:
    columns, lines = shutil.get_terminal_size((80, 24))
    return max(40, min(columns, 120)), max(10, min(20, lines - 4))
