"""mpt-tui: profiles, runs and a live dashboard, in the terminal.

The app owns at most one `RunSession` (the run started here) and the run a dashboard
follows from its events.jsonl (`AttachedRun`); both are `RunSource`s (tui/session.py).
Their watcher threads post `EventsArrived`; the app folds the events and publishes
`run_updated`, which the dashboard redraws on. Screens post messages (tui/messages.py)
for what only the app does: start a run, show a dashboard. torch is never imported here:
the trainer imports it in its own thread, so the first paint does not wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import threading
import time
from enum import StrEnum
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from textual import work
from textual.app import App
from textual.binding import Binding
from textual.signal import Signal

from engine.console import say
from engine.errors import MptError
from engine.exiting import exit_now, exit_status
from engine.profile import Profile
from engine.stop import EXIT_INTERRUPTED, EXIT_OK, StopReason
from engine.sweep_live import is_sweep_dir
from tui.messages import EventsArrived, OpenDashboard, OpenRun, OpenSweep, StartRun
from tui.screens.home import HomeScreen
from tui.session import AttachedRun, RunSession, RunSource


class OnHangup(StrEnum):
    detach = "detach"
    stop = "stop"


HANGUP_POLL = 0.2  # seconds between two looks at whether the terminal is still there
NOTICE_SECONDS, ERROR_SECONDS = 3, 10  # how long a notice and an error stay up


class MptApp(App):
    """The mpt console: a home screen of profiles and runs, forms, and the dashboard."""

    TITLE = "mpt"
    CSS_PATH = ["app.tcss", "widgets/widgets.tcss"]
    ENABLE_COMMAND_PALETTE = False
    BINDINGS = [Binding("ctrl+q", "quit", "Quit", show=False, priority=True)]

    def __init__(
        self,
        profiles_dir: str | Path = "profiles",
        runs_dir: str | Path = "runs",
        *,
        open_profile: str | Path | None = None,
        run_profile: Profile | None = None,
        resume: str | Path | None = None,
        attach: str | Path | None = None,
        on_hangup: str = "detach",
    ):
        """`attach`: a run directory (its dashboard) or a sweep directory (its trials)."""
        super().__init__()
        self.profiles_dir = Path(profiles_dir)
        self.runs_dir = Path(runs_dir)
        self.session: RunSession | None = None  # the run this app trains
        self.run_updated: Signal[RunSource] = Signal(self, "run_updated")
        self._open_profile = open_profile
        self._run_profile = run_profile
        self._resume = resume
        self._attach = attach
        self._quitting = False
        self.on_hangup = on_hangup  # "detach": a live run trains on; "stop": checkpoint, end
        self.detached: RunSession | None = None  # the run the process follows after the app
        self.takeover = threading.Lock()  # held by whoever follows the detached run
        self.event_loop: asyncio.AbstractEventLoop | None = None

    def on_mount(self) -> None:
        self.push_screen(HomeScreen(self.profiles_dir, self.runs_dir, lambda: self.session))
        loop = self.event_loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGHUP):  # kill, or the SSH link dropped
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, self.on_signal, sig)
        if self._open_profile is not None:
            from tui.screens.profile_form import ProfileFormScreen

            self.push_screen(ProfileFormScreen.open(Path(self._open_profile)))
        elif self._run_profile is not None:
            # after the first paint: the trainer thread's torch import competes for the GIL
            self.call_after_refresh(self.start_run, self._run_profile)
        elif self._resume is not None:
            from tui.screens.resume import ResumeScreen

            self.push_screen(ResumeScreen(Path(self._resume)))
        elif self._attach is not None and is_sweep_dir(Path(self._attach)):
            self.open_sweep(Path(self._attach))
        elif self._attach is not None:
            self.open_run(Path(self._attach))

    # ---- what the screens ask for ----
    def on_start_run(self, message: StartRun) -> None:
        self.start_run(message.profile, resume=message.resume)

    def on_open_run(self, message: OpenRun) -> None:
        self.open_run(message.run_dir)

    def on_open_sweep(self, message: OpenSweep) -> None:
        self.open_sweep(message.path)

    def open_sweep(self, path: Path) -> None:
        """A sweep's trials, live (the sweep runs in a process of its own)."""
        from tui.screens.sweep import SweepScreen

        self.push_screen(SweepScreen(path))

    def on_open_dashboard(self, message: OpenDashboard) -> None:
        if self.session is not None:
            self.push_screen(_dashboard(self.session))

    def open_run(self, run_dir: Path) -> None:
        """A run's dashboard: the live one of this app, else one read from its events."""
        session = self.session
        if session is not None and session.run_dir and _same(session.run_dir, run_dir):
            self.push_screen(_dashboard(session))
            return
        source = AttachedRun.open(run_dir)
        self._watch(source)
        self.push_screen(_dashboard(source), lambda _: source.close())

    # ---- the one live run ----
    def start_run(self, profile: Profile, *, resume: str | Path | None = None) -> bool:
        """Start (or resume) a run and show its dashboard; False, with a notice, if refused.

        A resume loads the checkpoint (and torch) first, so it starts in a thread and the
        dashboard appears when it is ready.
        """
        if self.session is not None and self.session.live:
            self.notify("a run is already live here; stop it first", severity="warning")
            return False
        if resume is not None:
            self.notify(f"loading {resume} ...", timeout=NOTICE_SECONDS)
            self._start_resumed(profile, resume)
            return True
        try:
            session = RunSession.start(profile)
        except (MptError, OSError) as e:
            self.notify(f"cannot start: {e}", severity="error", timeout=ERROR_SECONDS)
            return False
        self._show_session(session)
        return True

    @work(thread=True, exclusive=True, group="start-run")
    def _start_resumed(self, profile: Profile, resume: str | Path) -> None:
        try:
            session = RunSession.start(profile, resume=resume)
        except Exception as e:  # noqa: BLE001 - said on screen; a worker error would end the app
            text = str(e) if isinstance(e, MptError | OSError) else f"{type(e).__name__}: {e}"
            self.call_from_thread(
                self.notify, f"cannot resume: {text}", severity="error", timeout=ERROR_SECONDS
            )
            return
        self.call_from_thread(self._show_session, session)

    def _show_session(self, session: RunSession) -> None:
        self.session = session
        self._watch(session)
        self.push_screen(_dashboard(session))

    # ---- the one update path: a watcher posts, the app folds, the screens redraw ----
    def _watch(self, source: RunSource) -> None:
        source.watch(lambda: self.post_message(EventsArrived(source)))

    def on_events_arrived(self, message: EventsArrived) -> None:
        source = message.source
        version = source.view.version
        source.fold()
        if source.view.version != version:
            self.run_updated.publish(source)
        if source.backlog:  # a flood: the rest in the next turn, after a redraw
            self.post_message(EventsArrived(source))
        session = self.session
        if self._quitting and session is not None and session.ended:
            interrupted = session.view.finish_reason == StopReason.INTERRUPTED
            self.exit(return_code=EXIT_INTERRUPTED if interrupted else EXIT_OK)

    # ---- quitting: never leave a live run behind without stopping it cleanly ----
    def on_signal(self, sig: int) -> None:
        """SIGHUP (the terminal is gone): a live run detaches and trains on (tui/detach.py),
        unless --on-hangup stop. SIGTERM, and SIGHUP with --on-hangup stop: stop the run as
        `mpt run` does (a checkpoint first), then quit.

        After SIGHUP the terminal is gone and Textual cannot restore it (it would wait
        on it for ever): the process ends by itself once the run has stopped.
        """
        session = self.session
        live = session is not None and session.live
        if live and sig == signal.SIGHUP and self.on_hangup == "detach":
            from tui.detach import silence_terminal

            silence_terminal()  # before the next screen update writes to the dead terminal
            self.detach()
            return
        if live:
            session.stop("interrupted")
        if sig == signal.SIGHUP:
            code = 128 + int(sig)
            threading.Thread(target=_exit_after, args=(session if live else None, code)).start()
            return
        if not live or self._quitting:
            self.exit(return_code=128 + int(sig))
            return
        self._quitting = True

    async def action_quit(self) -> None:
        session = self.session
        if session is None or not session.live:
            self.exit()
            return
        if self._quitting:  # asked twice: the run is taking long to stop; go now
            self.exit()
            return
        from tui.screens.choice import ChoiceScreen

        def answer(choice: str | None) -> None:
            if choice == "stop":
                self._quitting = True
                session.stop()
                self.notify("stopping the run (saving a checkpoint), then quitting...")
            elif choice == "detach":
                self.detach()

        question = (
            "A run is live. Stop it (saving a checkpoint) and quit, or detach: quit and let "
            "it train on (mpt ls lists it; mpt-tui --attach and mpt ctl reach it)?"
        )
        choices = [("s", "stop and quit", "stop"), ("d", "detach", "detach")]
        self.push_screen(ChoiceScreen(question, choices), answer)

    def action_detach(self) -> None:
        """Quit and let the live run train on in this process, its lines in console.log."""
        session = self.session
        if session is None or not session.live or session.run_dir is None:
            self.notify("no run of this console is live: nothing to detach")
            return
        if self.detached is None:
            from tui.detach import follow_unless_taken

            self.detached = session
            name = "mpt-detach-watch"
            args = (session, self.takeover)
            threading.Thread(target=follow_unless_taken, args=args, name=name, daemon=True).start()
        self.exit(return_code=EXIT_OK)

    def detach(self) -> None:
        self.action_detach()


def _dashboard(source: RunSource):
    """The dashboard screen of `source` (imported when first shown: plotext and the curves
    do not hold up the home screen's first paint)."""
    from tui.screens.dashboard import DashboardScreen

    return DashboardScreen(source)


def _same(a: Path, b: Path) -> bool:
    return a.resolve() == b.resolve()


def _exit_after(session: RunSession | None, code: int) -> None:
    """End the process once the run has saved its checkpoint and stopped (however long the
    step takes: nobody is waiting at a terminal that is gone)."""
    if session is not None:
        session.join()
    os._exit(code)


def _watch_for_hangup(app: MptApp, fd: int) -> None:
    """Once the terminal is gone (tmux kill-session, a closed window, SSH dropped), stop the
    run with a checkpoint and end the process with 129, as SIGHUP does.

    A thread of its own, because the app's loop cannot be relied on then: Textual's writer
    thread dies on the first write to the dead terminal, its queue fills and the next
    screen update blocks the loop for good, with the SIGHUP handler and every timer in it.
    A hung-up terminal fails tcgetattr (EIO), so isatty turns false.
    """
    while os.isatty(fd):
        time.sleep(HANGUP_POLL)
    if app.detached is not None:  # SIGHUP came first: the app is detaching already
        return
    session = app.session
    if session is not None and session.live and app.on_hangup == "detach":
        from tui.detach import follow_unless_taken, silence_terminal

        silence_terminal()
        if app.event_loop is not None:  # ask the app's loop (it may be stuck: never wait on it)
            app.event_loop.call_soon_threadsafe(app.detach)
        follow_unless_taken(session, app.takeover)  # the loop may never get to it
        return
    if session is not None and session.live:
        session.stop("interrupted")
    else:
        session = None
    _exit_after(session, 128 + int(signal.SIGHUP))


def _start_hangup_watch(app: MptApp) -> None:
    """Watch the terminal Textual draws on, when there is one."""
    try:
        fd = sys.__stderr__.fileno()  # Textual's LinuxDriver writes to sys.__stderr__
    except (AttributeError, OSError, ValueError):
        return
    if os.isatty(fd):
        name = "mpt-hangup-watch"
        threading.Thread(target=_watch_for_hangup, args=(app, fd), name=name, daemon=True).start()


def _train_on(app: MptApp) -> int:
    """After a detach: say where the run's lines go, follow it to its end; the exit code."""
    from tui.detach import follow_detached

    if not app.takeover.acquire(blocking=False):  # a watcher follows it (the app was slow
        threading.Event().wait()  # to shut down); it ends the process when the run ends
    run = app.detached.detach()
    if sys.__stdout__ is not None and sys.__stdout__.isatty():
        # say() never raises: the terminal may have gone since
        say(
            f"detached: the run trains on in this process (pid {os.getpid()}); its lines "
            f"go to {run.run_dir}/console.log; mpt ls, mpt-tui --attach {run.run_dir}, "
            f"mpt ctl {run.run_dir} stop. This shell's prompt comes back when the run "
            "ends; for it now: Ctrl-Z, then bg (the run trains on when the shell closes)"
        )
    return follow_detached(run)


def _cli(
    path: Annotated[
        Path | None,
        typer.Argument(
            help="A profiles folder to list (default: profiles/), or one profile to open.",
            show_default=False,
        ),
    ] = None,
    runs: Annotated[
        Path, typer.Option("--runs", help="The runs folder to list (the profiles' run.out_dir).")
    ] = Path("runs"),
    run: Annotated[
        Path | None,
        typer.Option(
            "--run", help="Start this profile at once in the dashboard.", show_default=False
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="With --run or --sweep: override a key, --set optim.lr=0.05 (TOML value; "
            "repeatable).",
            show_default=False,
        ),
    ] = None,
    resume: Annotated[
        Path | None,
        typer.Option(
            "--resume",
            help="Open the resume screen for this run directory.",
            show_default=False,
        ),
    ] = None,
    attach: Annotated[
        Path | None,
        typer.Option(
            "--attach",
            help="Watch a run another process trains (mpt run in tmux or nohup): its "
            "dashboard, with p/c/s sent to that process; or a sweep directory (mpt sweep "
            "--detach): its trials. Quitting leaves either running.",
            show_default=False,
        ),
    ] = None,
    sweep: Annotated[
        Path | None,
        typer.Option(
            "--sweep",
            help="Start this sweep file (as mpt sweep FILE --detach) and show its trials. "
            "The sweep runs in a process of its own: quitting leaves it running.",
            show_default=False,
        ),
    ] = None,
    on_hangup: Annotated[
        OnHangup,
        typer.Option(
            "--on-hangup",
            help="When the terminal goes away (SSH dropped, tmux kill-session) with a run "
            "live: detach (it trains on; its lines go to RUN_DIR/console.log) or stop it "
            "with a checkpoint and exit 129.",
        ),
    ] = OnHangup.detach,
) -> None:
    """mpt-tui: edit profiles, start and watch runs, pause, checkpoint, stop and resume them."""
    profiles_dir, open_profile = _profiles_and_file(path)
    profile = None
    if sweep is not None:
        attach = _start_sweep(sweep, set_ or [], alone=(run, resume, attach) == (None,) * 3)
    elif run is not None:
        profile = _load_run_profile(run, set_ or [])
    elif set_:
        _usage("--set needs --run PROFILE or --sweep FILE")
    if attach is not None and not (attach / "events.jsonl").is_file() and not is_sweep_dir(attach):
        _usage(
            f"{attach}: no events.jsonl or sweep.json here; give a run or a sweep directory "
            "(mpt ls)"
        )
    app = MptApp(
        profiles_dir,
        runs,
        open_profile=open_profile,
        run_profile=profile,
        resume=resume,
        attach=attach,
        on_hangup=on_hangup.value,
    )
    _start_hangup_watch(app)
    try:
        app.run()
    except BaseException:
        RunSession.stop_all()  # e.g. the app crashed: still end the run with a checkpoint
        raise
    if app.detached is not None:  # the app is gone; the run trains on in this process
        raise typer.Exit(_train_on(app))
    if attach is not None and is_sweep_dir(attach):
        _say_the_sweep_runs_on(attach)
    RunSession.stop_all()  # a run still training (none should be): stop it with a checkpoint
    if app.return_code:
        raise typer.Exit(app.return_code)


def _profiles_and_file(path: Path | None) -> tuple[Path, Path | None]:
    """The profiles folder to list, and the profile to open (the argument, if a file)."""
    if path is None:
        return Path("profiles"), None
    return (path, None) if path.is_dir() else (path.parent, path)


def _usage(text: str) -> NoReturn:
    """A usage mistake: its sentence on stderr, exit 2, no console."""
    typer.echo(text, err=True)
    raise typer.Exit(2)


def _load_run_profile(path: Path, overrides: list[str]) -> Profile:
    from engine.profile import load_profile

    try:
        return load_profile(path, overrides)
    except MptError as e:
        _usage(str(e))


def _start_sweep(file: Path, overrides: list[str], alone: bool) -> Path:
    """Start the sweep file in a process of its own (mpt sweep --detach); its directory.
    A file that cannot run: its sentences on stderr, exit 2, no console. `alone`: no
    --run, --resume or --attach was given with it (else nothing starts)."""
    from engine.sweep_ctl import start_detached

    if not alone:
        _usage(
            "--sweep FILE starts a sweep and shows it: give it without --run, --resume or --attach"
        )

    try:
        return start_detached(file, overrides)
    except MptError as e:
        _usage(str(e))


def _say_the_sweep_runs_on(path: Path) -> None:
    """After the console: a sweep still running goes on without it; say how to reach it."""
    from engine.sweep_ctl import read_sweep_state

    try:
        live = read_sweep_state(path).live
    except (MptError, OSError):
        return
    if live and sys.__stdout__ is not None and sys.__stdout__.isatty():
        say(
            f"the sweep {path} runs on in its own process: mpt-tui --attach {path} shows it, "
            f"mpt ctl {path} stop stops it"
        )


def main() -> None:
    try:
        typer.run(_cli)
        code = 0
    except SystemExit as e:
        code = exit_status(e)
    if "torch" in sys.modules:  # (a run trained here: skip the teardown's seconds)
        exit_now(code)
    raise SystemExit(code)


if __name__ == "__main__":
    main()
