"""The sweep file: which profile, which values to try, how many at once (issue 17).

```toml
profile = "../profiles/quickstart.toml"   # relative to this file
method = "grid"            # grid | random | optuna
trials = 8                 # random and optuna: how many
parallel = 1               # trials at once
devices = []               # e.g. ["cuda:0", "cuda:1"]: one trial per device at a time
monitor = "val_acc"        # what "best" means (lower is better for losses, mae, ...)
seed = 0                   # the sampler's seed

[grid]                     # every combination, in the file's order
"optim.lr" = [0.001, 0.01]

[random]                   # sampled per trial (random), or asked of optuna's TPE (optuna)
"optim.lr" = { log_uniform = [1e-4, 1e-1] }
"model.dropout" = { uniform = [0.0, 0.5] }
"optim.name" = { choice = ["adam", "sgd"] }

[optuna]                   # method = "optuna": median pruning from the per-epoch monitor
pruner = "median"          # or "none"
startup_trials = 2         # no trial is pruned before this many have completed
warmup_epochs = 1          # a trial trains this many epochs before it can be pruned
random_trials = 4          # TPE's first trials are random draws (default: half, at most 10)
```

`load_sweep` reads and checks the file, and every trial's profile, before anything runs:
each problem is one sentence naming the file and the key. The values of a trial become
`--set key=value` arguments of an ordinary `mpt run` (JSON literals are TOML literals).
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.errors import MptError, ProfileError
from engine.profile import FIELD_BY_PATH, load_profile, read_profile_file

METHODS = ("grid", "random", "optuna")
DISTRIBUTIONS = ("log_uniform", "uniform", "int_uniform", "choice")
TOP_KEYS = ("profile", "method", "trials", "parallel", "devices", "monitor", "seed", "name")
TABLES = ("grid", "random", "optuna")
PRUNERS = ("median", "none")
# [optuna]'s keys and defaults (random_trials: None = half the trials, at most optuna's 10)
OPTUNA_DEFAULTS: dict[str, Any] = {
    "pruner": "median",
    "startup_trials": 2,
    "warmup_epochs": 1,
    "random_trials": None,
}
MAX_TRIALS = 10_000  # a grid beyond this is a typo, not a plan
DEVICE = re.compile(r"cpu|mps|cuda(:\d+)?")


class SweepError(MptError):
    """A sweep file that cannot run: every problem found, one line each."""

    def __init__(self, source: str, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(f"{source}: {p}" for p in problems))


@dataclass
class Trial:
    index: int  # 0-based; shown 1-based
    values: dict[str, Any]  # profile key -> value, in the file's order

    @property
    def name(self) -> str:
        return f"trial-{self.index:03d}"

    def overrides(self) -> list[str]:
        """`--set` items: a JSON literal of a number, a string, a bool or a list is TOML."""
        return [f"{key}={json.dumps(value)}" for key, value in self.values.items()]

    def describe(self) -> str:
        """`optim.lr=0.001568 optim.name="adam"`: floats to 4 significant digits (the
        exact values are in trials.jsonl and the trial's profile.toml)."""
        shown = (f"{k}={_short(v)}" for k, v in self.values.items())
        return " ".join(shown) or "(as is)"


def _short(value: object) -> str:
    """A value as TOML would read it back as the same type: `0.001568`, `-1.0`, `"adam"`."""
    if not isinstance(value, float):
        return json.dumps(value)
    text = f"{value:.4g}"
    return text if any(c in text for c in ".en") else text + ".0"  # (e: 1e-07; n: inf, nan)


@dataclass
class Sweep:
    path: Path  # the sweep file
    profile: Path  # resolved: relative to the sweep file
    name: str
    method: str = "grid"
    trials: int = 0  # random: how many; grid: every combination
    parallel: int = 1
    devices: list[str] = field(default_factory=list)
    monitor: str = "val_acc"
    seed: int = 0
    grid: dict[str, list[Any]] = field(default_factory=dict)
    random: dict[str, dict[str, list[Any]]] = field(default_factory=dict)
    optuna: dict[str, Any] = field(default_factory=dict)  # [optuna], defaults filled in
    overrides: list[str] = field(default_factory=list)  # mpt sweep --set: for every trial

    def expand(self) -> list[Trial]:
        """The trials: every combination of [grid] (the last key varies fastest), or
        `trials` draws from [random] with the sweep's seed (the same file, the same trials);
        optuna: `trials` without values yet (optuna is asked for them as each starts)."""
        if self.method == "optuna":
            return [Trial(i, {}) for i in range(self.trials)]
        if self.method == "grid":
            keys = list(self.grid)
            combos = itertools.product(*(self.grid[k] for k in keys))
            return [Trial(i, dict(zip(keys, combo, strict=True))) for i, combo in enumerate(combos)]
        rng = random.Random(self.seed)
        return [
            Trial(i, {key: _draw(rng, spec) for key, spec in self.random.items()})
            for i in range(self.trials)
        ]

    def to_dict(self) -> dict[str, Any]:
        """The resolved sweep, as the sweep directory keeps it (sweep.json)."""
        return {
            "file": str(self.path),
            "profile": str(self.profile),
            "name": self.name,
            "method": self.method,
            "trials": self.trials,
            "parallel": self.parallel,
            "devices": self.devices,
            "monitor": self.monitor,
            "seed": self.seed,
            "grid": self.grid,
            "random": self.random,
            "optuna": self.optuna,
            "overrides": self.overrides,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sweep:
        return cls(
            path=Path(data["file"]),
            profile=Path(data["profile"]),
            **{k: v for k, v in data.items() if k not in ("file", "profile")},
        )


def _draw(rng: random.Random, spec: dict[str, list[Any]]) -> Any:
    ((kind, args),) = spec.items()
    if kind == "choice":
        return rng.choice(args)
    low, high = args
    if kind == "int_uniform":
        return rng.randint(low, high)
    if kind == "log_uniform":
        return float(math.exp(rng.uniform(math.log(low), math.log(high))))
    return rng.uniform(low, high)


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read and check a sweep file; raises SweepError naming every problem."""
    path = Path(path)
    source = str(path)
    try:
        data = read_profile_file(path)  # a TOML file: the profile reader's checks, sentences
    except ProfileError as e:
        raise SweepError(source, [p.message for p in e.problems]) from None
    problems: list[str] = []
    sweep = _read_top(data, path, problems)
    sweep.overrides = list(overrides or [])
    sweep.grid = _read_grid(data.get("grid", {}), problems)
    sweep.random = _read_random(data.get("random", {}), problems)
    _check_method(sweep, problems)
    if sweep.method == "optuna":
        sweep.optuna = _read_optuna(data.get("optuna", {}), sweep.trials, problems)
        if not problems:
            _require_optuna(problems)
    if problems:
        raise SweepError(source, problems)
    return sweep


def _read_top(data: dict[str, Any], path: Path, problems: list[str]) -> Sweep:
    for key in data:
        if key not in (*TOP_KEYS, *TABLES):
            problems.append(
                f"{key}: unknown key; a sweep file has {', '.join(TOP_KEYS)}, [grid], [random] "
                "and [optuna]"
            )

    def get(key: str, kind: type | tuple[type, ...], default: Any) -> Any:
        value = data.get(key, default)
        if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
            problems.append(f"{key}: must be {_kind_name(kind)} (got {value!r})")
            return default
        return value

    profile = get("profile", str, "")
    if not profile:
        problems.append('profile: missing; name the profile to sweep, e.g. profile = "a.toml"')
    method = get("method", str, "grid")
    if method not in METHODS:
        problems.append(f"method: must be one of {', '.join(METHODS)} (got {method!r})")
    sweep = Sweep(
        path=path,
        profile=(path.parent / profile) if profile else Path(),
        name=get("name", str, path.stem) or path.stem,
        method=method,
        trials=get("trials", int, 0),
        parallel=get("parallel", int, 0),  # 0: not given (see below)
        devices=get("devices", list, []),
        monitor=get("monitor", str, "val_acc"),
        seed=get("seed", int, 0),
    )
    if "parallel" not in data:  # one at a time; with devices, one on each
        sweep.parallel = max(1, len(sweep.devices))
    if sweep.parallel < 1:
        problems.append(f"parallel: must be >= 1 (got {sweep.parallel})")
    if not all(isinstance(d, str) and DEVICE.fullmatch(d) for d in sweep.devices):
        problems.append(
            "devices: must be a list of device names (cpu, mps, cuda or cuda:N), e.g. "
            f'["cuda:0", "cuda:1"] (got {sweep.devices!r})'
        )
    elif sweep.devices and sweep.parallel > len(sweep.devices):
        problems.append(
            f"parallel: {sweep.parallel} trials at once on {len(sweep.devices)} device(s); "
            "one trial runs on a device at a time: set parallel <= the number of devices"
        )
    if profile and not sweep.profile.is_file():
        problems.append(f"profile: {sweep.profile}: no such file (relative to the sweep file)")
    return sweep


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {str: "text", int: "a whole number", list: "a list", bool: "true or false"}
    return names.get(kind, "a number") if isinstance(kind, type) else "a number"


def _check_key(key: str, table: str, problems: list[str]) -> bool:
    if key in FIELD_BY_PATH:
        return True
    close = difflib.get_close_matches(key, list(FIELD_BY_PATH), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    problems.append(f"[{table}] {key}: not a profile key (section.key, e.g. optim.lr){hint}")
    return False


def _read_grid(table: Any, problems: list[str]) -> dict[str, list[Any]]:
    if not isinstance(table, dict):
        problems.append("grid: must be a table of key = [values]")
        return {}
    grid = {}
    for key, values in table.items():
        if not _check_key(key, "grid", problems):
            continue
        if not isinstance(values, list) or not values:
            problems.append(f"[grid] {key}: must be a non-empty list of values (got {values!r})")
            continue
        grid[key] = values
    return grid


def _read_random(table: Any, problems: list[str]) -> dict[str, dict[str, list[Any]]]:
    if not isinstance(table, dict):
        problems.append("random: must be a table of key = { distribution = [...] }")
        return {}
    spaces = {}
    for key, spec in table.items():
        if not _check_key(key, "random", problems):
            continue
        problem = _distribution_problem(spec)
        if problem:
            problems.append(f"[random] {key}: {problem}")
        else:
            spaces[key] = spec
    return spaces


def _distribution_problem(spec: Any) -> str | None:
    usage = (
        "must be one of { log_uniform = [low, high] }, { uniform = [low, high] }, "
        "{ int_uniform = [low, high] }, { choice = [a, b, ...] }"
    )
    if not isinstance(spec, dict) or len(spec) != 1:
        return f"{usage} (got {spec!r})"
    ((kind, args),) = spec.items()
    if kind not in DISTRIBUTIONS:
        return f"unknown distribution {kind!r}; {usage}"
    if not isinstance(args, list) or not args:
        return f"{kind}: must be a non-empty list (got {args!r})"
    if kind == "choice":
        return None
    want = int if kind == "int_uniform" else (int, float)
    if len(args) != 2 or not all(isinstance(a, want) and not isinstance(a, bool) for a in args):
        return f"{kind}: must be [low, high], two numbers (got {args!r})"
    low, high = args
    if not (math.isfinite(low) and math.isfinite(high)) or low > high:
        return f"{kind}: low must be <= high, both finite (got {args!r})"
    if kind == "log_uniform" and low <= 0:
        return f"log_uniform: low must be > 0 (got {low!r})"
    return None


def _check_method(sweep: Sweep, problems: list[str]) -> None:
    if sweep.method == "grid":
        if not sweep.grid and not problems:
            problems.append('grid: method = "grid" needs a [grid] table of key = [values]')
        size = math.prod(len(v) for v in sweep.grid.values())
        if size > MAX_TRIALS:
            problems.append(f"grid: {size:,} combinations; at most {MAX_TRIALS:,}")
        sweep.trials = size
    elif sweep.method in ("random", "optuna"):
        method = sweep.method
        if not sweep.random and not problems:
            problems.append(f'random: method = "{method}" needs a [random] table of distributions')
        if not 1 <= sweep.trials <= MAX_TRIALS:
            problems.append(
                f'trials: method = "{method}" needs 1 to {MAX_TRIALS:,} (got {sweep.trials})'
            )


def _read_optuna(table: Any, trials: int, problems: list[str]) -> dict[str, Any]:
    """[optuna]'s settings, the defaults filled in (sweep.json keeps them as resolved)."""
    settings = dict(OPTUNA_DEFAULTS)
    if not isinstance(table, dict):
        problems.append('optuna: must be a table, e.g. [optuna] pruner = "median"')
        table = {}
    for key, value in table.items():
        if key not in OPTUNA_DEFAULTS:
            close = difflib.get_close_matches(key, list(OPTUNA_DEFAULTS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            problems.append(
                f"[optuna] {key}: unknown key; [optuna] has {', '.join(OPTUNA_DEFAULTS)}{hint}"
            )
        elif key == "pruner":
            if value not in PRUNERS:
                problems.append(
                    f"[optuna] pruner: must be one of {', '.join(PRUNERS)} (got {value!r})"
                )
            else:
                settings[key] = value
        elif not isinstance(value, int) or isinstance(value, bool) or value < 0:
            problems.append(f"[optuna] {key}: must be a whole number >= 0 (got {value!r})")
        else:
            settings[key] = value
    if settings["random_trials"] is None:  # TPE learns from the rest; optuna's default is 10
        settings["random_trials"] = min(10, max(1, trials // 2))
    return settings


def _require_optuna(problems: list[str]) -> None:
    """optuna is an optional extra, imported only for method = "optuna"."""
    try:
        import optuna  # noqa: F401
    except ImportError:
        problems.append(
            'method: "optuna" needs the optuna package, which is not installed here; '
            "install it with: pip install 'mpt[optuna]'"
        )


def check_trials(sweep: Sweep, trials: list[Trial]) -> dict[int, list[str]]:
    """Each trial's profile, validated as `mpt run` would: the problems of the invalid
    ones, by trial index (`optim.lr: must be > 0 (got -1)`)."""
    invalid: dict[int, list[str]] = {}
    for trial in trials:
        try:
            load_profile(sweep.profile, [*sweep.overrides, *trial.overrides()])
        except ProfileError as e:
            invalid[trial.index] = [
                f"{p.key}: {p.message}" if p.key else p.message for p in e.problems
            ]
    return invalid


def range_ends(sweep: Sweep) -> list[tuple[str, dict[str, Any]]]:
    """optuna: the values are asked as trials start, so the profile is checked before with
    each [random] key alone at its range's two ends, and at each choice (the profile's checks
    are bounds: the ends stand for the values between). Each: (what it is, its values)."""
    ends = []
    for key, spec in sweep.random.items():
        ((kind, args),) = spec.items()
        if kind == "choice":
            named = [(value, "a choice") for value in args]
        else:
            cast = int if kind == "int_uniform" else float
            named = [(cast(args[0]), "its low end"), (cast(args[1]), "its high end")]
        ends += [(f"{key} = {json.dumps(value)} ({what})", {key: value}) for value, what in named]
    return ends


def check_range_ends(sweep: Sweep) -> list[str]:
    """The problems at the ends of optuna's ranges (range_ends), one line each."""
    ends = range_ends(sweep)
    invalid = check_trials(sweep, [Trial(i, values) for i, (_, values) in enumerate(ends)])
    return [f"[random] {ends[i][0]}: {'; '.join(p)}" for i, p in invalid.items()]
