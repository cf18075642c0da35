"""method = "optuna" (issue 17): TPE sampling and median pruning from the per-epoch monitor.

The study lives in the sweep directory: SWEEP_DIR/optuna.db (optuna's RDB storage on
sqlite), named after the sweep, its direction the monitor's (engine.monitor). A trial is
asked of the study when a slot frees; its values and its optuna trial number go to
trials.jsonl as it starts. While it runs, the new lines of its run's events.jsonl are read
each poll (EventsReader: only the bytes written since) and each epoch's monitor value is
reported with the epoch as the step; when the pruner says so the runner stops it (SIGTERM:
its interrupt checkpoint, as `mpt run` saves one) and the study is told PRUNED. A trial
that ends well is told COMPLETE with its best monitor value; a failed or invalid one FAIL;
an interrupted one stays RUNNING and `mpt sweep --resume` resumes it into the same optuna
trial (the epochs it reported before are not reported again).

optuna is an optional extra (`pip install 'mpt[optuna]'`): imported here only.
"""

from __future__ import annotations

import json
import statistics
import warnings
from pathlib import Path
from typing import Any

from engine import events as ev
from engine.errors import MptError
from engine.formatting import metric
from engine.monitor import resolve_mode
from engine.sweep import ENDED_WELL, Prune, Running, SweepRunner, TrialRecord, monitor_value
from engine.sweep_spec import Sweep, Trial, check_trials

STUDY_FILE = "optuna.db"
SCALARS = (bool, int, float, str)  # what optuna keeps as a categorical choice


def distributions(sweep: Sweep) -> dict[str, Any]:
    """[random] as optuna's distributions, in the file's order."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    space: dict[str, Any] = {}
    for key, spec in sweep.random.items():
        ((kind, args),) = spec.items()
        if kind == "choice":
            space[key] = CategoricalDistribution([_choice(value) for value in args])
        elif kind == "int_uniform":
            space[key] = IntDistribution(args[0], args[1])
        else:
            low, high = float(args[0]), float(args[1])
            space[key] = FloatDistribution(low, high, log=kind == "log_uniform")
    return space


def _choice(value: Any) -> Any:
    """optuna's choices are None, bool, int, float or str: a list or a table is its JSON."""
    return value if isinstance(value, SCALARS) else json.dumps(value)


def values_of(sweep: Sweep, params: dict[str, Any]) -> dict[str, Any]:
    """optuna's params as the trial's profile values (a list or table choice decoded)."""
    values = {}
    for key, spec in sweep.random.items():
        ((kind, args),) = spec.items()
        value = params[key]
        if kind == "choice":
            value = next((c for c in args if _choice(c) == value), value)
        values[key] = value
    return values


def open_study(sweep: Sweep, folder: Path) -> Any:
    """The sweep's study in SWEEP_DIR/optuna.db: made on the first call, loaded after."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the sweep prints its own lines
    settings = sweep.optuna
    if settings["pruner"] == "median":
        # pruning is off while step < n_warmup_steps; the steps are epochs, from 1
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=settings["startup_trials"],
            n_warmup_steps=settings["warmup_epochs"] + 1,
        )
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(
        storage=f"sqlite:///{(folder / STUDY_FILE).resolve()}",
        study_name=sweep.name,
        direction="minimize" if resolve_mode(sweep.monitor, "auto") == "min" else "maximize",
        pruner=pruner,
        load_if_exists=True,  # --resume
    )
    # a resumed sweep's sampler must not draw again what its first part drew: its seed
    # moves on by the trials asked before
    asked = len(study.get_trials(deepcopy=False))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(
            seed=sweep.seed + asked,
            n_startup_trials=settings["random_trials"],
            constant_liar=sweep.parallel > 1,  # trials at once are not asked the same values
        )
    return study


class OptunaQueue:
    """The trials of an optuna sweep (engine.sweep.TrialPolicy): the resumed ones first
    (their values and optuna trials are known), then each new one asked as a slot frees."""

    def __init__(
        self,
        runner: SweepRunner,
        study: Any,
        resumed: list[tuple[Trial, Path | None]],
        fresh: list[int],
    ):
        self.runner, self.study = runner, study
        self.sweep = runner.sweep
        self.space = distributions(self.sweep)
        self.resumed = list(resumed)
        self.fresh = list(fresh)  # trial indices with no optuna trial yet
        self.live: dict[int, Any] = {}  # trial index -> its optuna.Trial
        self.reported: dict[int, dict[int, float]] = {}  # trial index -> epoch -> value
        self.readers: dict[int, ev.EventsReader] = {}

    @classmethod
    def open(
        cls, runner: SweepRunner, resumed: list[tuple[Trial, Path | None]], fresh: list[int]
    ) -> OptunaQueue:
        study = open_study(runner.sweep, runner.folder.path)
        settle_study(study, runner.records)
        return cls(runner, study, resumed, fresh)

    # ---- which trial next ----
    def pending(self) -> bool:
        return bool(self.resumed or self.fresh)

    def next_trial(self) -> tuple[Trial, Path | None] | None:
        while self.resumed or self.fresh:
            if self.resumed:
                trial, resume = self.resumed.pop(0)
                self._reopen(trial.index)
                return trial, resume
            trial = self._ask(self.fresh.pop(0))
            if trial is not None:
                return trial, None
        return None

    def _ask(self, index: int) -> Trial | None:
        asked = self.study.ask(self.space)
        asked.set_user_attr("mpt_trial", Trial(index, {}).name)  # its folder in SWEEP_DIR
        trial = Trial(index, values_of(self.sweep, asked.params))
        rec = self.runner.records[index]
        rec.values, rec.optuna_trial = trial.values, asked.number
        problems = check_trials(self.sweep, [trial]).get(index)
        if problems:  # the ends were valid, a combination is not: recorded, the rest go on
            self.study.tell(asked, state=_state("FAIL"))
            rec.state, rec.problem = "invalid", "; ".join(problems)
            self.runner.folder.record(rec)
            self.runner.console.line(f"trial {index + 1} skipped ({trial.describe()}): "
                                     f"{rec.problem}")  # fmt: skip
            return None
        self.live[index], self.reported[index] = asked, {}
        return trial

    def _reopen(self, index: int) -> None:
        """An interrupted trial goes on reporting to its own optuna trial."""
        import optuna

        number = self.runner.records[index].optuna_trial
        running = self.study.get_trials(deepcopy=False, states=(_state("RUNNING"),))
        frozen = next((t for t in running if t.number == number), None)
        if frozen is None:  # (optuna.db replaced or edited since)
            raise MptError(
                f"{self.runner.folder.path / STUDY_FILE}: trial {index + 1}'s optuna trial "
                f"{number} is not running in the study; trials.jsonl and the study disagree, "
                "so this sweep cannot be resumed: start it again"
            )
        # optuna re-opens a running trial of another process only by its storage id
        self.live[index] = optuna.trial.Trial(self.study, frozen._trial_id)
        self.reported[index] = dict(frozen.intermediate_values)

    # ---- while it runs, and at its end ----
    def progress(self, r: Running) -> Prune | None:
        index = r.trial.index
        if index not in self.live:
            return None
        for epoch, value in self._new_values(r):
            self.live[index].report(value, epoch)
            if self.live[index].should_prune():
                why = self._why(index, epoch)
                self.study.tell(self.live.pop(index), state=_state("PRUNED"))
                return Prune(epoch, why)
        return None

    def ended(self, r: Running, rec: TrialRecord) -> None:
        index = r.trial.index
        trial = self.live.pop(index, None)
        if trial is not None and rec.state not in ("interrupted", "queued"):
            for epoch, value in self._new_values(r):  # the last epochs before it exited
                trial.report(value, epoch)
            if rec.state in ENDED_WELL and rec.best is not None:
                self.study.tell(trial, rec.best)
            else:
                self.study.tell(trial, state=_state("FAIL"))
        self.readers.pop(index, None)  # one stopped stays RUNNING: --resume goes on with it

    def _new_values(self, r: Running) -> list[tuple[int, float]]:
        """The monitor's values of the epochs the trial's run wrote since the last call and
        not reported before (a resumed run's events begin with its first part's)."""
        index = r.trial.index
        if index not in self.readers:
            run_dir = self.runner.folder.newest_run(index)
            if run_dir is None or run_dir == r.before:
                return []  # its run directory is not made yet
            self.readers[index] = ev.EventsReader(run_dir / "events.jsonl")
        try:
            events = self.readers[index].read_new()
        except OSError:
            return []
        found = []
        for e in events:
            value = monitor_value(e, self.sweep.monitor)
            if value is not None and e.epoch not in self.reported[index]:
                self.reported[index][e.epoch] = float(value)
                found.append((e.epoch, float(value)))
        return found

    def _why(self, index: int, epoch: int) -> str:
        """The median pruner's reason in words: the trial's best so far against the median
        of the completed trials at this epoch."""
        monitor = self.sweep.monitor
        done = self.study.get_trials(deepcopy=False, states=(_state("COMPLETE"),))
        there = [t.intermediate_values[epoch] for t in done if epoch in t.intermediate_values]
        lower = resolve_mode(monitor, "auto") == "min"
        best = (min if lower else max)(self.reported[index].values())
        median = metric(monitor, statistics.median(there)) if there else "-"
        return (
            f"its best {monitor} so far, {metric(monitor, best)}, is "
            f"{'above' if lower else 'below'} the median of the completed trials at that "
            f"epoch ({median})"
        )


def _state(name: str) -> Any:
    from optuna.trial import TrialState

    return TrialState[name]


def settle_study(study: Any, records: dict[int, TrialRecord]) -> None:
    """On --resume: the study's RUNNING trials whose sweep trial has settled (the sweep was
    killed between the two records) are told its end; one no sweep trial holds (killed
    between the ask and the trial's start) is FAIL: its sweep trial is asked anew."""
    by_number = {r.optuna_trial: r for r in records.values() if r.optuna_trial is not None}
    for frozen in study.get_trials(deepcopy=False, states=(_state("RUNNING"),)):
        rec = by_number.get(frozen.number)
        if rec is None or rec.state in ("failed", "invalid"):
            study.tell(frozen.number, state=_state("FAIL"))
        elif rec.state == "pruned":
            study.tell(frozen.number, state=_state("PRUNED"))
        elif rec.state in ENDED_WELL:
            done = rec.best is not None
            study.tell(frozen.number, rec.best if done else None,
                       state=_state("COMPLETE" if done else "FAIL"))  # fmt: skip
