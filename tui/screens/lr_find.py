"""`L`: the LR finder in the console, over the screen that asked (home or the form).

The sweep is `mpt lr-find`'s own (engine/lr_find.py, its defaults: 1e-7 to 10 in 100
steps), run in a thread of this process as the console's runs are, so the screen keeps
drawing and answering. escape stops it between two steps (its Control). When it ends, the
curve of the smoothed loss against the lr, the suggestion and the range it trusts show, and
enter sets optim.lr to the suggestion: the screen dismisses with the lr and the caller
writes it (home: into the profile file, as `--apply`; the form: into its field).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.screen import ModalScreen, Screen
from textual.widgets import ProgressBar, Static
from textual_plotext import PlotextPlot

from engine.control import Control
from engine.errors import MptError
from engine.profile import Profile, load_profile

START, END, STEPS = 1e-7, 10.0, 100  # mpt lr-find's defaults
REPORT_EVERY = 0.1  # seconds between two progress reports of the sweep's thread


class SweepCurve(PlotextPlot):
    """The smoothed loss against the lr (log x), the suggestion a red line: the chart
    `mpt lr-find` prints, drawn at the widget's size."""

    def show(self, sweep, found) -> None:
        from engine.lr_find import draw

        self.plt.clear_figure()
        draw(self.plt, sweep, found)
        self.refresh()


class LrFindScreen(ModalScreen[float | None]):
    """Runs the sweep on `profile`; dismisses with the suggestion (enter) or None."""

    CSS_PATH = "lr_find.tcss"
    BINDINGS = [
        Binding("y,enter", "accept", "Set optim.lr"),
        Binding("n,escape", "cancel", "Cancel"),
    ]

    class Stepped(Message):
        """The sweep's thread: `done` steps ran, the last at `lr`, its smoothed loss."""

        def __init__(self, done: int, lr: float, smoothed: float) -> None:
            super().__init__()
            self.done, self.lr, self.smoothed = done, lr, smoothed

        def can_replace(self, message: Message) -> bool:
            return isinstance(message, LrFindScreen.Stepped)

    class Ended(Message):
        """The sweep's thread ended: a sweep and its suggestion, or a sentence saying why
        not (`stopped`: escape asked it to)."""

        def __init__(self, sweep=None, found=None, error: str = "", stopped: bool = False):
            super().__init__()
            self.sweep, self.found, self.error, self.stopped = sweep, found, error, stopped

    def __init__(self, profile: Profile, name: str, target: str):
        """`name`: the profile's, for the title; `target`: where enter writes optim.lr
        (`profiles/quick.toml`, `the form`)."""
        super().__init__()
        self.profile = profile
        self.profile_name = name
        self.target = target
        self.control = Control()
        self.state = "running"  # then "stopping", "found" or "failed"
        self.suggestion: float | None = None
        self.outcome = ""  # the last status line: what happened (for a person and a test)

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(
                f"LR finder · {self.profile_name}: lr {START:g} .. {END:g}, {STEPS} steps "
                f"(optim.lr now {self.profile.optim.lr:g})",
                id="lr-title",
                markup=False,
            )
            yield ProgressBar(total=STEPS, show_eta=False, id="lr-progress")
            yield SweepCurve(id="lr-curve")
            yield Static(id="lr-status", markup=False)
            yield Static(id="lr-keys")

    def on_mount(self) -> None:
        self.query_one("#lr-curve").display = False
        session = getattr(self.app, "session", None)
        if session is not None and session.live:  # torch's seed and the CPU are the run's
            self._fail(
                "a run is training in this console, and the LR finder would share its "
                "process: wait for it to end, or run mpt lr-find in a shell"
            )
            return
        self._status("building the model and loading the data...")
        self._keys("[b]escape[/b]: stop")
        self._find()

    def on_unmount(self) -> None:
        self.control.stop()  # the app quits, or the screen went: the thread ends too

    # ---- the sweep's thread ----
    @work(thread=True, exclusive=True, group="lr-find")
    def _find(self) -> None:
        from engine import lr_find as finder

        last = 0.0

        def report(done: int, lr: float, smoothed: float) -> None:
            nonlocal last
            now = time.monotonic()
            if now - last >= REPORT_EVERY or done == STEPS:
                last = now
                self.post_message(self.Stepped(done, lr, smoothed))

        try:
            sweep = finder.run_sweep(self.profile, START, END, STEPS, self.control, report)
            ended = self.Ended(sweep, finder.suggest(sweep))
        except finder.SweepStopped as e:
            ended = self.Ended(error=str(e), stopped=True)
        except MptError as e:  # the profile's data missing, a sweep that never fell...
            ended = self.Ended(error=str(e).splitlines()[0])
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: a sentence, as the CLI's
            from engine.trainer import describe_failure

            ended = self.Ended(error=describe_failure(e, self.profile, None))
        with contextlib.suppress(RuntimeError):  # the app already closed its loop
            self.post_message(ended)

    def on_lr_find_screen_stepped(self, message: Stepped) -> None:
        if self.state != "running":
            return
        self.query_one("#lr-progress", ProgressBar).update(progress=message.done)
        self._status(
            f"step {message.done}/{STEPS} · lr {message.lr:.2g} · "
            f"smoothed loss {message.smoothed:.4g}"
        )

    def on_lr_find_screen_ended(self, message: Ended) -> None:
        if message.stopped:
            self._status(message.error)  # (how far it went, for whoever reads the screen)
            self.dismiss(None)
        elif message.error:
            self._fail(message.error)
        else:
            self._found(message.sweep, message.found)

    def _found(self, sweep, found) -> None:
        self.state, self.suggestion = "found", found.lr
        self.query_one("#lr-progress").display = False
        self.query_one("#dialog").add_class("-found")  # the curve takes the room left
        curve = self.query_one("#lr-curve", SweepCurve)
        curve.display = True
        curve.show(sweep, found)
        ran = f"{len(sweep.lrs)} of {sweep.steps} steps"
        ended = (
            f"stopped after {ran}: the loss diverged at lr {sweep.diverged_at:.3g}"
            if sweep.diverged_at is not None
            else f"ran {ran}, up to lr {sweep.lrs[-1]:.3g}"
        )
        self._status(
            f"{ended}\nsuggestion: optim.lr = {found.lr:g} (the steepest descent of the loss)"
            f"\nthe range it trusts: {found.low:g} .. {found.high:g}"
        )
        self._keys(
            f"[b]enter[/b]: set optim.lr = {found.lr:g} in {_escape(self.target)}"
            "    [b]escape[/b]: cancel"
        )

    def _fail(self, sentence: str) -> None:
        self.state = "failed"
        self.query_one("#lr-progress").display = False
        self._status(sentence)
        self.query_one("#lr-status").add_class("-error")
        self._keys("[b]escape[/b]: close")

    def _status(self, text: str) -> None:
        self.outcome = text
        self.query_one("#lr-status", Static).update(text)

    def _keys(self, text: str) -> None:
        self.query_one("#lr-keys", Static).update(text)

    # ---- keys ----
    def action_accept(self) -> None:
        if self.state == "found":
            self.dismiss(self.suggestion)

    def action_cancel(self) -> None:
        if self.state == "running":  # the thread stops before its next step and says so
            self.state = "stopping"
            self.control.stop()
            self._status("stopping...")
            self._keys("")
        elif self.state != "stopping":
            self.dismiss(None)


def find_for_file(screen: Screen, path: Path) -> None:
    """Home's `L`: the sweep on the profile file at `path`; enter writes its suggestion
    into the file as `mpt lr-find --apply` does (only optim.lr's text changes)."""
    from engine.lr_find import apply_lr

    try:
        profile = load_profile(path)
    except MptError as e:
        first = str(e).splitlines()[0]
        screen.notify(f"cannot find an lr: {first}", severity="error", timeout=8)
        return

    def write(lr: float | None) -> None:
        if lr is None:
            return
        try:
            apply_lr(path, lr)
        except MptError as e:
            screen.notify(str(e), severity="error", timeout=10)
            return
        screen.notify(f"{path}: optim.lr = {lr!r} written (was {profile.optim.lr!r})")

    screen.app.push_screen(LrFindScreen(profile, path.stem, str(path)), write)


def _escape(text: str) -> str:
    return text.replace("[", r"\[")
