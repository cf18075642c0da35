"""`mpt`: the headless command line. torch is imported only once a run starts."""

from __future__ import annotations

import os
import queue
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from engine.errors import MptError

app = typer.Typer(
    name="mpt",
    help="mpt: train PyTorch models from TOML profiles, headless or in the terminal console.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

ProfileArg = Annotated[
    Path,
    typer.Argument(help="The TOML profile, e.g. profiles/quickstart.toml.", show_default=False),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--set",
        help="Override a key: --set optim.lr=0.05 (TOML value; repeatable).",
        show_default=False,
    ),
]


def _load(profile: Path, overrides: list[str] | None):
    from engine.profile import load_profile

    try:
        return load_profile(profile, overrides or [])
    except MptError as e:
        print(e, file=sys.stderr)
        raise typer.Exit(EXIT_USAGE) from None


@app.command()
def validate(profile: ProfileArg, set_: SetOpt = None) -> None:
    """Check a profile without running it: exit 0 if it is valid, 2 with every problem if not."""
    _load(profile, set_)
    print(f"{profile}: ok")


ResumeOpt = Annotated[
    str | None,
    typer.Option(
        "--resume",
        help="Continue from a checkpoint: 'last' (the newest run of this profile), a run "
        "directory, or a .pt file. Without PROFILE, the checkpoint's own profile is used.",
        show_default=False,
    ),
]


@app.command()
def run(
    profile: Annotated[
        Path | None,
        typer.Argument(help="The TOML profile, e.g. profiles/quickstart.toml.", show_default=False),
    ] = None,
    set_: SetOpt = None,
    resume: ResumeOpt = None,
) -> None:
    """Train with a profile; prints the run directory, then one line per epoch."""
    if profile is None and resume is None:
        print(
            "mpt run: give a profile (e.g. profiles/quickstart.toml) or --resume", file=sys.stderr
        )
        raise typer.Exit(EXIT_USAGE)
    p = _load(profile, set_) if profile is not None else None
    from engine.console import Console
    from engine.run import Run

    console = Console()
    try:
        handle = Run.start(p, resume=resume, overrides=set_ if p is None else None)
    except (MptError, OSError) as e:
        console.line(f"error: {e}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    console.line(f"run directory: {handle.run_dir}  (events.jsonl, profile.toml)")
    _install_interrupt_handlers(handle, console)
    from engine import events as ev

    while True:
        try:
            event = handle.events.get(timeout=0.2)
        except queue.Empty:
            if not handle.is_alive() and handle.events.empty():
                break
            continue
        console.show(event)
        if isinstance(event, ev.RunFinished | ev.RunFailed):
            break
    handle.join()
    if handle.reason in ("interrupted", "stopped") and handle.run_dir is not None:
        console.line(f"resume with: mpt run --resume {handle.run_dir}")
    raise typer.Exit(_exit_code(handle))


def _exit_code(handle) -> int:
    if handle.reason == "failed":
        return EXIT_USAGE if handle.user_error else EXIT_FAILED
    if handle.reason == "interrupted":
        return EXIT_INTERRUPTED
    return EXIT_OK


def _install_interrupt_handlers(handle, console) -> None:
    """First Ctrl-C/SIGTERM/SIGHUP: finish the step and stop; a second one: exit at once."""

    def on_signal(signum, frame):
        if handle.control.stop_requested:
            os._exit(EXIT_INTERRUPTED)
        console.line(
            f"{signal.Signals(signum).name}: stopping after the current step "
            "(press Ctrl-C again to exit at once)",
            err=True,
        )
        handle.stop("interrupted")

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
