"""`mpt sweep FILE` and `mpt sweep --resume SWEEP_DIR`: what to run, and the table at the end.

Starting checks the file and every trial's profile before anything runs; resuming reads
the sweep directory back: a trial that ended well stays, an interrupted one (or one whose
process died with checkpoints left) resumes from its run directory, a queued one starts.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from engine.console import Console
from engine.errors import MptError
from engine.formatting import metric
from engine.monitor import resolve_mode
from engine.profile import load_profile
from engine.run import make_run_dir
from engine.runs import summarize_run
from engine.stop import EXIT_FAILED, EXIT_OK
from engine.sweep import ENDED_WELL, SweepDir, SweepRunner, TrialPolicy, TrialRecord, best_of
from engine.sweep_live import refuse_second_runner
from engine.sweep_spec import (
    Sweep,
    SweepError,
    Trial,
    check_range_ends,
    check_trials,
    load_sweep,
)

# a trial in these states is not run again by --resume (failed: it would fail again)
SETTLED = (*ENDED_WELL, "failed", "invalid")


def start(file: Path, overrides: list[str], skip_invalid: bool, console: Console) -> int:
    runner, trials = prepare(file, overrides, skip_invalid, console)
    announce(runner, trials, console)
    queue = [(t, None) for t in trials if runner.records[t.index].state != "invalid"]
    code = runner.run(_policy(runner, queue))
    finish(runner, console)
    return code


def announce(runner: SweepRunner, trials: list[Trial], console: Console) -> None:
    """The sweep's first lines: its directory, its trials, the ones skipped as invalid."""
    console.line(
        f"sweep directory: {runner.folder.path}  ({_trials(len(trials))}, "
        f"{runner.sweep.method}, {len(runner.slots)} at a time; mpt ls {runner.folder.path} "
        "lists their runs)"
    )
    for rec in runner.records.values():
        if rec.state == "invalid":
            console.line(f"trial {rec.trial + 1} skipped: {rec.problem}")


def _policy(
    runner: SweepRunner, queue: list[tuple[Trial, Path | None]], fresh: list[int] | None = None
) -> list[tuple[Trial, Path | None]] | TrialPolicy:
    """What runs next: grid and random, the queue in order; optuna, the queue's trials
    (resumed) then each trial with no values yet (`fresh`, default: all) asked of the study."""
    if runner.sweep.method != "optuna":
        return queue
    from engine.sweep_optuna import OptunaQueue  # (imports optuna: only for its sweeps)

    if fresh is None:
        queue, fresh = [], [trial.index for trial, _ in queue]
    return OptunaQueue.open(runner, queue, fresh)


def emit(file: Path, overrides: list[str], skip_invalid: bool, console: Console) -> int:
    """Make the sweep directory and print each valid trial's `mpt run` command line, one a
    line (for a scheduler: a SLURM job array, xargs -P, Ray); the sweep directory's
    path goes to stderr. `mpt sweep --collect SWEEP_DIR` reads the results back."""
    if load_sweep(file, overrides).method == "optuna":
        raise SweepError(
            str(file),
            ['method: "optuna" asks each trial\'s values when a slot frees, from the results '
             "of the trials before it, so --emit cannot print them in advance; run mpt sweep "
             'FILE on the box, or use method = "random" for a scheduler'],
        )  # fmt: skip
    runner, trials = prepare(file, overrides, skip_invalid, console)
    console.line(
        f"sweep directory: {runner.folder.path}  ({_trials(len(trials))}; run the commands, "
        f"then: mpt sweep --collect {runner.folder.path})",
        err=True,
    )
    for trial in trials:
        if runner.records[trial.index].state != "invalid":  # no device: the scheduler's
            console.line(shlex.join(runner.command(trial, None, mpt=["mpt"])))
    return EXIT_OK


def collect(path: Path, console: Console) -> int:
    """The trials table of a sweep whose trials something else ran (--emit): each trial's
    newest run directory, its state and best value, recorded in trials.jsonl."""
    folder = SweepDir(path)
    sweep, trials = folder.read_sweep()
    if sweep.method == "optuna":
        raise MptError(
            f"{path}: an optuna sweep's trials are run by mpt sweep, not by a scheduler, so "
            f"there is nothing to collect; mpt sweep --resume {path} finishes it"
        )
    runner = SweepRunner(sweep, folder, console)
    records = folder.records()
    for trial in trials:
        rec = records.get(trial.index) or TrialRecord(trial.index, trial.values)
        run_dir = folder.newest_run(trial.index)
        summary = summarize_run(run_dir) if run_dir else None
        if summary is not None and rec.state != "invalid":
            rec.state, rec.run_dir = summary.state, str(run_dir)
            rec.best, rec.best_epoch = best_of(run_dir, sweep.monitor)
            folder.record(rec)
        runner.records[trial.index] = rec
    finish(runner, console)
    done = all(r.state in ENDED_WELL for r in runner.records.values())
    return EXIT_OK if done else EXIT_FAILED  # (one not run yet, or still running: not done)


def prepare(
    file: Path, overrides: list[str], skip_invalid: bool, console: Console
) -> tuple[SweepRunner, list[Trial]]:
    """Check the file and every trial, make the sweep directory and record the trials."""
    sweep = load_sweep(file, overrides)
    _check_devices(sweep)
    trials = sweep.expand()
    if sweep.method == "optuna":
        _check_range_ends(sweep)
    invalid = check_trials(sweep, trials) if sweep.method != "optuna" else {}
    if invalid and (not skip_invalid or len(invalid) == len(trials)):
        lines = [
            f"trial {i + 1} ({trials[i].describe()}): {'; '.join(p)}" for i, p in invalid.items()
        ]
        more = "" if skip_invalid else " (or --skip-invalid runs the others)"
        raise SweepError(str(file), [*lines, f"fix the values above{more}"])
    base = load_profile(sweep.profile, [*sweep.overrides, f"run.name={json.dumps(sweep.name)}"])
    folder = SweepDir(make_run_dir(base))  # <out_dir>/<sweep name>/<stamp>/, made safely
    # the trials (and a resume) read the profile as it was when the sweep started
    copy = folder.path / "profile.toml"
    copy.write_bytes(sweep.profile.read_bytes())
    sweep.profile = copy
    folder.write_sweep(sweep, trials)
    runner = SweepRunner(sweep, folder, console)
    for trial in trials:
        rec = TrialRecord(trial.index, trial.values)
        if trial.index in invalid:
            rec.state, rec.problem = "invalid", "; ".join(invalid[trial.index])
        runner.records[trial.index] = rec
        folder.record(rec)
    return runner, trials


def _check_range_ends(sweep: Sweep) -> None:
    """optuna's values are not known before: its ranges' ends and choices must be valid."""
    problems = check_range_ends(sweep)
    if problems:
        raise SweepError(
            str(sweep.path),
            [*problems, "narrow the ranges or drop the choices above (optuna draws the values "
             "as trials start, so --skip-invalid cannot skip them)"],
        )  # fmt: skip


def resume(path: Path, console: Console) -> int:
    folder = SweepDir(path)
    sweep, trials = folder.read_sweep()
    refuse_second_runner(path)  # its trials are that runner's: none is run twice
    runner = SweepRunner(sweep, folder, console)
    records = folder.records()
    queue: list[tuple[Trial, Path | None]] = []
    fresh: list[int] = []  # optuna: trials not asked yet
    for trial in trials:
        rec = records.get(trial.index) or TrialRecord(trial.index, trial.values)
        runner.records[trial.index] = rec
        trial = Trial(trial.index, rec.values)  # (optuna: the values it was asked)
        if rec.state in SETTLED:
            continue
        if sweep.method == "optuna" and rec.optuna_trial is None:
            fresh.append(trial.index)
            continue
        run_dir = folder.newest_run(trial.index)
        summary = summarize_run(run_dir) if run_dir else None
        if summary is not None and summary.state in (*ENDED_WELL, "failed"):
            # it ended while no sweep watched (the sweep was killed, its trial was not)
            rec.state, rec.run_dir = summary.state, str(run_dir)
            rec.best, rec.best_epoch = best_of(run_dir, sweep.monitor)
            folder.record(rec)
            continue
        if summary is not None and summary.live:
            raise MptError(
                f"{path}: trial {trial.index + 1}'s run {run_dir} is still {summary.state}"
                f"{f' ({summary.process})' if summary.process else ''}; stop it (mpt ctl "
                f"{run_dir} stop) or let it end, then resume the sweep"
            )
        has_checkpoint = run_dir is not None and (run_dir / "checkpoints" / "last.pt").is_file()
        queue.append((trial, run_dir if has_checkpoint else None))
    if not queue and not fresh:
        if sweep.method == "optuna":  # trials that ended while no sweep watched: told now
            from engine.sweep_optuna import open_study, settle_study

            settle_study(open_study(sweep, folder.path), runner.records)
        console.line(f"{path}: every trial has ended; nothing to resume")
        finish(runner, console)
        return runner.exit_code()
    to_run = len(queue) + len(fresh)
    starting = all(
        records.get(t.index, TrialRecord(0, {})).state in ("queued", "invalid") for t in trials
    ) and not any(r for _, r in queue)
    doing = "starting" if starting else "resuming"  # (a detached sweep's runner starts so)
    console.line(f"{doing} the sweep {path}: {to_run} of {len(trials)} trials to run")
    code = runner.run(_policy(runner, queue, fresh))
    finish(runner, console)
    return code


def _check_devices(sweep: Sweep) -> None:
    """Every CUDA device the file names is on this machine: else no trial could start."""
    wanted = [d for d in sweep.devices if d.startswith("cuda")]
    if not wanted:
        return
    import torch  # (only for a sweep that names devices)

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    missing = [d for d in wanted if int(d.partition(":")[2] or 0) >= count]
    if missing:
        seen = f"{count} CUDA device(s)" if count else "no CUDA device"
        raise SweepError(
            str(sweep.path),
            [f"devices: {', '.join(missing)} not on this machine ({seen}); name the devices "
             "it has, or leave devices out to run on the profile's run.device"],
        )  # fmt: skip


def finish(runner: SweepRunner, console: Console) -> None:
    """The trials sorted by the monitor (best first), and the best run directory."""
    for line in trials_table(runner.sweep, list(runner.records.values())):
        console.line(line)
    if runner.stopping:
        console.line(f"resume with: mpt sweep --resume {runner.folder.path}")


def trials_table(sweep: Sweep, records: list[TrialRecord]) -> list[str]:
    monitor = sweep.monitor
    sign = 1 if resolve_mode(monitor, "auto") == "min" else -1
    ranked = sorted(records, key=lambda r: (r.best is None, sign * (r.best or 0.0), r.trial))
    keys = list(sweep.grid if sweep.method == "grid" else sweep.random)
    header = ["trial", "state", f"best {monitor}", *keys, "run directory"]
    rows = [
        [
            str(r.trial + 1),
            r.state + (f" (ep {r.pruned_epoch})" if r.state == "pruned" else ""),
            metric(monitor, r.best) + (f" (ep {r.best_epoch})" if r.best is not None else ""),
            *(_value(r.values.get(k)) for k in keys),
            r.run_dir or "-",
        ]
        for r in ranked
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
             for row in [header, *rows]]  # fmt: skip
    # (a pruned trial stopped part-way: never the best)
    best = next(
        (r for r in ranked if r.best is not None and r.state in ENDED_WELL and r.state != "pruned"),
        None,
    )
    if best is not None:
        lines.append(
            f"best: trial {best.trial + 1}, {monitor} {metric(monitor, best.best)}: {best.run_dir}"
        )
    return lines


def _value(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else json.dumps(value) if not isinstance(value, str) else value


def _trials(n: int) -> str:
    return "1 trial" if n == 1 else f"{n} trials"
