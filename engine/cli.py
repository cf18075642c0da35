"""`mpt`: the headless command line. torch is imported only once a run starts."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from engine.console import Console, say, silence
from engine.errors import ExportFailed, MptError
from engine.exiting import exit_now, exit_status
from engine.follow import follow
from engine.stop import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, exit_code

app = typer.Typer(
    name="mpt",
    help="mpt: train PyTorch models from TOML profiles, headless or in the terminal console.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)


# readable=False: an unreadable profile is the loader's one sentence, not click's box.
ProfileArg = Annotated[
    Path,
    typer.Argument(
        help="The TOML profile, e.g. profiles/quickstart.toml.", show_default=False, readable=False
    ),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a key: --set optim.lr=0.05 (TOML value; repeatable).",
        show_default=False,
    ),
]


def _fail(message: str, code: int = EXIT_USAGE, console: Console | None = None) -> NoReturn:
    """The CLI's one way out on an error: one sentence to stderr, never a traceback."""
    if console is None:
        say(message, err=True)
    else:
        console.line(message, err=True)
    raise typer.Exit(code) from None


@contextlib.contextmanager
def _user_errors(
    prefix: str = "error: ", also: tuple[type[Exception], ...] = (), console: Console | None = None
) -> Iterator[None]:
    """An MptError (or one of `also`) in the block: `_fail` with its sentence, exit 2
    (1 for an export that failed on a valid request)."""
    try:
        yield
    except (MptError, *also) as e:
        _fail(f"{prefix}{e}", EXIT_FAILED if isinstance(e, ExportFailed) else EXIT_USAGE, console)


def _load(profile: Path, overrides: list[str] | None):
    from engine.profile import load_profile

    with _user_errors(prefix=""):  # a ProfileError's text names the file: no "error: "
        return load_profile(profile, overrides or [])


@app.command()
def validate(profile: ProfileArg, set_: SetOpt = None) -> None:
    """Check a profile without running it: exit 0 if it is valid, 2 with every problem if not.
    The code it names ("package.module:function") is looked up and read, not run."""
    loaded = _load(profile, set_)
    problems = _code_problems(loaded.to_dict())
    if problems:
        _fail("\n".join(f"{profile}: {problem}" for problem in problems))
    from engine import sink_mlflow, sink_wandb

    for sink in (sink_mlflow, sink_wandb):
        if missing := sink.missing_package(loaded):
            say(f"{profile}: warning: {missing}")
    say(f"{profile}: ok")


def _code_problems(profile: dict) -> list[str]:
    """A sentence for each "package.module:function" of the profile (model.arch, data.dataset,
    task.loss) whose module cannot be found or does not define the function: read, never
    run (a profile is checked before anyone decides to run its code)."""
    from engine.user_code import CODE_KEYS, code_problem, imported_code

    found = (
        code_problem(path, key) for key in CODE_KEYS if (path := imported_code(profile, (key,)))
    )
    return [problem for problem in found if problem]


ResumeOpt = Annotated[
    str | None,
    typer.Option(
        "--resume",
        help="Continue from a checkpoint: 'last' (the newest run of this profile), a run "
        "directory, or a .pt file. Without PROFILE, the checkpoint's own profile is used.",
        show_default=False,
    ),
]


TrustCodeOpt = Annotated[
    bool,
    typer.Option(
        "--trust-code",
        help='Import the code ("package.module:function" as model.arch, data.dataset or '
        "task.loss) that the checkpoint's own profile names. Without it mpt refuses to run "
        "code named by a checkpoint; pass it only for checkpoints you made or trust.",
    ),
]


@app.command()
def run(
    profile: Annotated[
        Path | None,
        typer.Argument(
            help="The TOML profile, e.g. profiles/quickstart.toml.",
            show_default=False,
            readable=False,
        ),
    ] = None,
    set_: SetOpt = None,
    resume: ResumeOpt = None,
    profile_steps: Annotated[
        int,
        typer.Option(
            "--profile-steps",
            min=0,
            help="Record N training steps with torch.profiler (after 1 skipped and 1 warm-up "
            "step) into RUN_DIR/profiler/: open the trace in TensorBoard or ui.perfetto.dev.",
        ),
    ] = 0,
    trust_code: TrustCodeOpt = False,
) -> None:
    """Train with a profile; prints the run directory, then one line per epoch."""
    if profile is None and resume is None:
        _fail("mpt run: give a profile (e.g. profiles/quickstart.toml) or --resume")
    p = _load(profile, set_) if profile is not None else None
    from engine.distributed import world_from_env
    from engine.run import Run

    # Under torchrun every process runs this; rank 0 alone prints, the others only errors.
    world = world_from_env()
    console = Console(prefix="" if world.main else f"rank {world.rank}: ", quiet=not world.main)
    attach = _install_interrupt_handlers(console)
    with _user_errors(also=(OSError,), console=console):
        handle = Run.start(
            p,
            resume=resume,
            overrides=set_ if p is None else None,
            profile_steps=profile_steps,
            trust_code=trust_code,
        )
    attach(handle)
    if world.main:
        console.line(f"run directory: {handle.run_dir}  (events.jsonl, profile.toml)")
    try:
        follow(handle, console)
    finally:
        # Whatever ended the loop, the training thread ends first, with its checkpoint:
        # a process that exits under a running torch thread aborts (std::terminate).
        if handle.is_alive():
            handle.stop("interrupted")
        handle.join()
    if handle.user_error and handle.run_dir is not None and not handle.run_dir.exists():
        console.line(f"removed {handle.run_dir}: the run stopped before training")
    if handle.reason in ("interrupted", "stopped") and handle.run_dir is not None:
        again = " under the same torchrun command" if world.distributed else ""
        console.line(_resume_hint(handle, again, profile))
    # 0 only for a run whose run_finished says it ended as asked; 1 for a run that failed
    # or whose thread ended without saying how (2 for a mistake found before training).
    raise typer.Exit(exit_code(handle.reason, handle.user_error))


def _resume_hint(handle, again: str, profile: Path | None) -> str:
    """After a stop: how to go on from the newest checkpoint, or that there is none.

    The newest checkpoint is this run's, if it saved one; else, for a resumed run, the one
    it started from (its progress is exactly that checkpoint's). A profile that names code
    (a model, dataset or loss "package.module:function") is named in the command too: a
    checkpoint alone never makes mpt import code or run a [notify] command (--trust-code
    aside)."""
    from engine.checkpoint import imported_code

    if (handle.run_dir / "checkpoints" / "last.pt").is_file():
        where = handle.run_dir
    elif handle.resumed_from is not None:
        where = handle.resumed_from
    else:
        return "nothing was saved: the run stopped before its first checkpoint"
    consent = ""
    if imported_code(handle.profile.to_dict()) is not None or handle.profile.notify.command:
        consent = f"{profile} " if profile is not None else "--trust-code "
    return f"resume with: mpt run {consent}--resume {where}{again}"


def _install_interrupt_handlers(console):
    """First Ctrl-C/SIGTERM/SIGHUP: finish the step and stop; a second Ctrl-C: exit at once.

    Installed before the run starts: a signal while a resume loads its checkpoint stops the
    run as soon as it exists (never a KeyboardInterrupt). Returns `attach(handle)`.
    A SIGTERM or SIGHUP that follows is ignored: a closed terminal sends several SIGHUPs
    (the kernel's, then the shell's), and none of them may cut the checkpoint short.
    """
    run = {"handle": None, "signal": None}

    def stopping() -> bool:
        handle = run["handle"]
        return run["signal"] is not None or (handle is not None and handle.control.stop_requested)

    def on_signal(signum, frame):
        if stopping():
            if signum == signal.SIGINT:
                os._exit(EXIT_INTERRUPTED)
            return
        run["signal"] = signum
        if run["handle"] is not None:
            run["handle"].stop("interrupted")  # first: the message may go to a dead terminal
        console.line(
            f"{signal.Signals(signum).name}: stopping after the current step "
            "(press Ctrl-C again to exit at once)",
            err=True,
        )

    def attach(handle) -> None:
        run["handle"] = handle
        if run["signal"] is not None:  # it came while the run was being started
            handle.stop("interrupted")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    return attach


# ---- around runs: init (engine/starter.py), ls and show (engine/report.py), export ----


@app.command()
def init(
    name: Annotated[
        str,
        typer.Argument(
            help="The new profile: a name (written to profiles/NAME.toml) or a path ending "
            "in .toml.",
        ),
    ] = "starter",
    from_: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Start from this profile's values instead of the defaults.",
            show_default=False,
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Overwrite the file if it exists.")
    ] = False,
) -> None:
    """Write a commented starter profile: every key with its help, ready to edit."""
    from engine.starter import init_profile

    with _user_errors():
        say(str(init_profile(name, from_, force)))


RunsArg = Annotated[
    Path,
    typer.Argument(help="The runs folder (a profile's run.out_dir).", show_default=True),
]


@app.command("ls")
def ls(runs: RunsArg = Path("runs")) -> None:
    """List the runs in a runs folder, newest first: state, epochs, the best value of each
    run's headline metric (val acc by default), checkpoint; then its sweeps, one line each
    (a sweep directory: its trials' runs)."""
    from engine.report import runs_table
    from engine.sweep_live import find_sweeps

    with _user_errors():
        listed, found = runs_table(runs), find_sweeps(runs)
        sweeps = None
        if found:  # (sweep_ctl reads sweep files: imported only when there are some)
            from engine.sweep_ctl import sweeps_table

            sweeps = sweeps_table(runs, found)
    if sweeps is None:
        say(listed)
    elif listed.startswith("no runs in "):  # a folder of sweeps alone
        say(sweeps)
    else:
        say(f"{listed}\n\n{sweeps}")


@app.command()
def show(
    run: Annotated[
        str,
        typer.Argument(
            help="A run directory, or a run name under --runs (its newest run).",
            show_default=False,
        ),
    ],
    runs: Annotated[
        Path, typer.Option("--runs", help="The runs folder that run names are looked up in.")
    ] = Path("runs"),
) -> None:
    """Print a run's summary and its table of epochs."""
    from engine.report import run_report

    with _user_errors():
        say(run_report(run, runs))


@app.command()
def sweep(
    file: Annotated[
        Path | None,
        typer.Argument(help="The sweep file, e.g. sweeps/quickstart-lr.toml.", show_default=False),
    ] = None,
    set_: SetOpt = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Finish an interrupted sweep: resume its interrupted trials from their "
            "checkpoints and run the ones not started.",
            show_default=False,
        ),
    ] = None,
    skip_invalid: Annotated[
        bool,
        typer.Option(
            "--skip-invalid", help="Run the valid trials when some trials' values are invalid."
        ),
    ] = False,
    emit: Annotated[
        bool,
        typer.Option(
            "--emit",
            help="Run nothing: make the sweep directory and print each trial's mpt run "
            "command, one a line, for a scheduler (a SLURM job array, xargs -P).",
        ),
    ] = False,
    collect: Annotated[
        Path | None,
        typer.Option(
            "--collect",
            help="The trials table of an --emit sweep, from the run directories its "
            "commands wrote.",
            show_default=False,
        ),
    ] = None,
    detach: Annotated[
        bool,
        typer.Option(
            "--detach",
            help="Check the file (or the sweep to --resume), then run the sweep in the "
            "background: it outlives the terminal, its output goes to SWEEP_DIR/console.log, "
            "mpt ctl SWEEP_DIR pause|continue|stop steers it.",
        ),
    ] = False,
) -> None:
    """Run the trials of a sweep file (grid, random or optuna values of profile keys), each an
    ordinary `mpt run`, `parallel` at a time; print the trials sorted by the monitor.
    Exit 0 only when every trial finished."""
    from engine import sweep_plan

    if sum(x is not None for x in (file, resume, collect)) != 1:
        _fail("mpt sweep: give a sweep file, --resume SWEEP_DIR or --collect SWEEP_DIR")
    if emit and file is None:
        _fail("mpt sweep --emit: give the sweep file whose trials to print")
    if detach and (collect is not None or emit):
        _fail("mpt sweep --detach: give the sweep file, or --resume SWEEP_DIR, to run in the "
              "background (not --emit or --collect)")  # fmt: skip
    console = Console()
    with _user_errors(also=(OSError,), console=console):
        if detach:
            code = _detached_sweep(file, resume, set_ or [], skip_invalid, console)
        elif resume is not None:
            code = sweep_plan.resume(resume, console)
        elif collect is not None:
            code = sweep_plan.collect(collect, console)
        elif emit:
            code = sweep_plan.emit(file, set_ or [], skip_invalid, console)
        else:
            code = sweep_plan.start(file, set_ or [], skip_invalid, console)
    raise typer.Exit(code)


def _detached_sweep(
    file: Path | None, resume: Path | None, overrides: list[str], skip_invalid: bool, console
) -> int:
    from engine.sweep_ctl import CONSOLE_LOG, read_sweep_state, resume_detached, start_detached

    if resume is not None:
        path = resume_detached(resume, console)
    else:
        path = start_detached(file, overrides, skip_invalid, console)
    state = read_sweep_state(path)
    if not state.live:  # (a resume with nothing left to run: said so)
        return 0
    runner = f" (pid {state.pid})" if state.pid else ""
    console.line(
        f"the sweep runs in the background{runner}, its output in {path / CONSOLE_LOG}; "
        f"mpt ls {path} lists its trials' runs, mpt ctl {path} pause|continue|stop "
        "steers it"
    )
    return 0


# ---- runs side by side: diff and compare (engine/compare.py) ----


_RUN_HELP = "A run directory, or a run name under --runs (its newest run)."
RunAArg = Annotated[str, typer.Argument(metavar="RUN_A", help=_RUN_HELP, show_default=False)]
RunBArg = Annotated[str, typer.Argument(metavar="RUN_B", help=_RUN_HELP, show_default=False)]
RunsFolderOpt = Annotated[
    Path, typer.Option("--runs", help="The runs folder that run names are looked up in.")
]


@app.command()
def diff(run_a: RunAArg, run_b: RunBArg, runs: RunsFolderOpt = Path("runs")) -> None:
    """Print the profile keys whose values differ between two runs (defaults filled in;
    run.name and run.out_dir aside), then their state, epochs, steps, time and the final
    and best value of each metric they share, side by side."""
    from engine.compare import diff_report, load_runs

    with _user_errors():
        say(diff_report(*load_runs([run_a, run_b], runs)))


@app.command()
def compare(
    run_list: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="RUN",
            help="2 to 8 runs: run directories, or run names under --runs (the newest run).",
            show_default=False,
        ),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            "--metric",
            "-m",
            help="What to compare by, e.g. val_acc, val_loss, val_mae (default: the first "
            "run's headline metric).",
            show_default=False,
        ),
    ] = None,
    runs: RunsFolderOpt = Path("runs"),
    plot: Annotated[
        bool | None,
        typer.Option(
            "--plot/--no-plot",
            help="Draw the metric's curves under the table (default: on a terminal only; "
            "--plot off one draws them without colours).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Print one row a run, the best first: state, epochs, the final and best value of
    --metric, and the profile keys that differ between the runs; on a terminal, a chart
    of the metric's curves per epoch."""
    from engine.compare import (
        check_count,
        choose_metric,
        compare_report,
        curves_chart,
        load_runs,
        with_sweeps_opened,
    )

    with _user_errors():
        run_list = with_sweeps_opened(run_list or [])
        check_count(run_list)
        compared = load_runs(run_list, runs)
        say(compare_report(compared, metric))
        terminal = sys.stdout.isatty()
        if plot if plot is not None else terminal:
            say("")
            say(curves_chart(compared, choose_metric(compared, metric)[0], color=terminal))


# ---- steering and tidying from a shell: ctl and rm (engine/ctl.py) ----


@app.command()
def ctl(
    run: Annotated[
        str,
        typer.Argument(
            help="A live run's directory, a run name under --runs (its newest run), or a "
            "live sweep's directory (its queue and its running trials).",
            show_default=False,
        ),
    ],
    command: Annotated[
        str,
        typer.Argument(
            help="pause, continue, checkpoint or stop.",
            show_default=False,
            autocompletion=lambda incomplete: [
                c for c in ("pause", "continue", "checkpoint", "stop") if c.startswith(incomplete)
            ],
        ),
    ],
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", min=0.0, help="Seconds to wait for the run to acknowledge the command."
        ),
    ] = 10.0,
    runs: Annotated[
        Path, typer.Option("--runs", help="The runs folder that run names are looked up in.")
    ] = Path("runs"),
) -> None:
    """Pause, continue, checkpoint or stop a live run; waits for the run to acknowledge.

    Exit 0 once the run's events say it was done, 1 if the run is not live or did not
    acknowledge within --timeout (the command is then taken back if it was not taken).
    On a sweep directory: pause holds its queue and pauses its running trials, continue
    undoes both, stop is Ctrl-C's (checkpoints; mpt sweep --resume finishes it)."""
    from engine.ctl import NotLive, steer
    from engine.report import find_run
    from engine.sweep_ctl import is_sweep_dir, steer_sweep

    with _user_errors(also=(OSError,)):
        try:
            if is_sweep_dir(Path(run).expanduser()):  # a sweep: its queue and its trials
                done = steer_sweep(Path(run).expanduser(), command, timeout)
            else:
                done = steer(find_run(run, runs), command, timeout)
        except NotLive as e:
            _fail(f"error: {e}", EXIT_FAILED)
    say(done)


@app.command("rm")
def rm(
    run_dirs: Annotated[
        list[Path] | None,
        typer.Argument(help="Run directories to remove.", show_default=False),
    ] = None,
    failed: Annotated[
        str | None,
        typer.Option(
            "--failed",
            help="Also remove every failed or crashed run of this name (a profile's run.name).",
            show_default=False,
        ),
    ] = None,
    out_dir: Annotated[
        Path,
        typer.Option("--out-dir", "--runs", help="The runs folder that --failed looks in."),
    ] = Path("runs"),
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Remove without asking.")] = False,
) -> None:
    """Remove run directories (never a live run); asks first unless --yes.

    Off a terminal (a script, cron) it removes nothing without --yes (exit 2)."""
    from engine.ctl import RunIsLive, describe, plan_removal, remove
    from engine.memory import format_bytes

    if not run_dirs and failed is None:
        _fail("mpt rm: give run directories to remove, or --failed NAME")
    with _user_errors():
        try:
            removals = plan_removal(run_dirs or [], failed, out_dir)
        except RunIsLive as e:
            _fail(f"error: {e}", EXIT_FAILED)
    if not removals:
        say(f"no failed or crashed runs of {failed} in {out_dir}")
        return
    if not yes and not _confirmed(f"remove {describe(removals)}?", removals):
        say("nothing removed")
        return
    for removal in removals:
        try:
            remove(removal)
        except OSError as e:
            _fail(f"error: {removal.run_dir}: cannot remove it ({e.strerror or e})", EXIT_FAILED)
        say(f"removed {removal.run_dir} ({format_bytes(removal.size)})")


def _confirmed(question: str, removals) -> bool:
    """The user's yes at a terminal; off one there is nobody to ask: exit 2."""
    if not sys.stdin.isatty():
        _fail(
            f"mpt rm: {question.removesuffix('?')} needs a yes, and stdin is not a terminal "
            "to ask on; pass --yes"
        )
    for removal in removals:
        say(f"  {removal.run_dir}", err=True)
    try:
        return typer.confirm(question, default=False, err=True)
    except typer.Abort:  # end of input (Ctrl-D): no
        return False


@app.command("lr-find")
def lr_find(
    profile: ProfileArg,
    set_: SetOpt = None,
    start: Annotated[float, typer.Option("--start", help="The sweep's first lr.")] = 1e-7,
    end: Annotated[float, typer.Option("--end", help="The sweep's last lr.")] = 10.0,
    steps: Annotated[int, typer.Option("--steps", help="Training steps (one lr each).")] = 100,
    apply: Annotated[
        bool,
        typer.Option("--apply", help="Write the suggestion into the profile file as optim.lr."),
    ] = False,
    plot: Annotated[
        bool | None,
        typer.Option(
            "--plot/--no-plot",
            help="Draw the loss against the lr (default: on a terminal only).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Find a learning rate: train STEPS steps on a fresh copy of the profile's model, the
    lr growing from --start to --end, until the loss diverges; print the smoothed loss
    against the lr and suggest the lr of its steepest descent. Writes no run."""
    from engine import lr_find as finder

    with _user_errors(prefix=""):  # its sentence names the command
        finder.check_range(start, end, steps)
    p = _load(profile, set_)
    try:
        with _user_errors(prefix=""):
            sweep = finder.run_sweep(p, start, end, steps)
    except typer.Exit:  # (the sentence of a user error, said)
        raise
    except KeyboardInterrupt:
        _fail("mpt lr-find: interrupted; nothing was written", EXIT_INTERRUPTED)
    except Exception as e:  # noqa: BLE001 - e.g. out of memory: a sentence, exit 1
        from engine.trainer import describe_failure

        _fail(f"error: {describe_failure(e, p, None)}", EXIT_FAILED)
    found = _suggestion(finder, sweep)
    terminal = sys.stdout.isatty()
    if plot if plot is not None else terminal:
        columns, lines = os.get_terminal_size() if terminal else (80, 24)
        size = min(columns, 100), max(12, min(lines - 20, 24))  # room for the table under it
        say(finder.chart(sweep, found, *size, color=terminal))
    say(finder.summary(sweep, found))
    if apply:
        with _user_errors(prefix=""):
            finder.apply_lr(profile, found.lr)
        say(f"{profile}: optim.lr = {found.lr!r} written (was {p.optim.lr!r})")


def _suggestion(finder, sweep):
    """The sweep's suggestion; a sweep whose loss never fell: its sentence, exit 1."""
    try:
        return finder.suggest(sweep)
    except finder.SweepUseless as e:
        _fail(str(e), EXIT_FAILED)


class ExportFormat(StrEnum):
    state_dict = "state_dict"
    torchscript = "torchscript"
    onnx = "onnx"
    pt2 = "pt2"


@app.command()
def export(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            help="A checkpoint file, or a run directory (its checkpoints/last.pt).",
            show_default=False,
        ),
    ],
    format_: Annotated[
        ExportFormat,
        typer.Option(
            "--format",
            "-f",
            help="state_dict (for model.load_state_dict), torchscript (torch.jit.load), "
            "onnx (needs pip install 'mpt\\[onnx]'), or pt2 (torch.export.load).",
        ),
    ] = ExportFormat.state_dict,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            "-o",
            help="Where to write it (default: <run dir>/exports/step-NNNNNN.<format>).",
            show_default=False,
        ),
    ] = None,
    input_shape: Annotated[
        str | None,
        typer.Option(
            "--input-shape",
            help="C,H,W of the input, when the run's events.jsonl is not beside the checkpoint.",
            show_default=False,
        ),
    ] = None,
    num_classes: Annotated[
        int | None,
        typer.Option(
            "--num-classes",
            help="Number of classes, when the run's events.jsonl is not beside the checkpoint.",
            show_default=False,
            min=1,
        ),
    ] = None,
    trust_code: TrustCodeOpt = False,
    raw: Annotated[
        bool,
        typer.Option(
            "--raw",
            help="Export the raw weights of a run with train.ema_decay, not their moving "
            "average (the default where the checkpoint has one).",
        ),
    ] = False,
) -> None:
    """Export a checkpoint's model for deployment: state_dict, TorchScript, ONNX or pt2."""
    from engine.export import export_checkpoint  # imports torch

    with _user_errors():
        written = export_checkpoint(
            checkpoint, format_.value, out, input_shape, num_classes, trust_code, raw
        )
    say(str(written))


def main() -> None:
    _open_std_fds()
    try:
        app()
        code = 0
    except SystemExit as e:
        code = exit_status(e)
    finally:
        # Python flushes stdout and stderr at exit; on a dead one that would print
        # "Exception ignored" and turn the exit code into 120. Flush now, silencing the dead.
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except (OSError, ValueError):
                silence(stream)
    if "torch" in sys.modules:
        exit_now(code)
    raise SystemExit(code)


def _open_std_fds() -> None:
    """A process started with stdin, stdout or stderr closed (`>&-`): put /dev/null there,
    so that no file mpt opens (events.jsonl, a checkpoint) takes fd 0, 1 or 2 and receives
    what a library or a child process writes to it."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        devnull = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
        if devnull != fd:
            os.dup2(devnull, fd)
            os.close(devnull)
        if getattr(sys, name) is None:  # Python found the fd closed at start: no stream
            setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115 - lives as long as the process


if __name__ == "__main__":
    main()
