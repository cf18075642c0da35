"""The log screen (`l` on the dashboard): a run's whole event log, followed as it grows.

It reads RUN_DIR/events.jsonl from its start with a reader of its own (tui/event_log.py)
and then every FOLLOW_INTERVAL while it is shown, reading only the new bytes. The number
keys choose the categories shown (1 run ... 6 step), `/` a text to look for; the list
follows the end unless the user scrolled up. A detached run's RUN_DIR/console.log, when
there is one, shows its last lines in a second panel beneath. Nothing read from a file
is ever taken as markup.
"""

from __future__ import annotations

import threading

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.message import Message
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Input, RichLog, Static

from tui.event_log import CATEGORIES, LogFilter, LogLine, LogUpdate, RunFiles, Shown
from tui.session import RunSource

FOLLOW_INTERVAL = 0.5  # seconds between two reads of the files while the screen is shown
MAX_SHOWN = 1_000  # lines in the list at most: a refill renders no more (~0.5 ms a line)
FIND_DELAY = 0.25  # seconds of no typing before the text filter applies
FIND_HINT = "text to look for; enter keeps it, escape clears it"
NO_MATCH = "No line matches this filter: 0 shows every category, escape clears the text."
STEP_WIDTH = 7  # the step column
STYLES = {
    "run": "bold",
    "epoch": "",
    "checkpoint": "green",
    "control": "yellow",
    "warning": "bold red",
    "step": "dim",
}


def render_line(line: LogLine, width: int, console) -> Text:
    """`HH:MM:SS    step  text`, the text wrapped beneath itself (a hanging indent)."""
    indent = 8 + 1 + STEP_WIDTH + 2
    step = "" if line.step is None else str(line.step)
    body = Text(line.text, style=STYLES.get(line.category, ""))
    wrapped = body.wrap(console, max(10, width - indent), overflow="fold")
    out = Text(f"{line.clock} {step:>{STEP_WIDTH}}  ", style="dim")
    for i, part in enumerate(wrapped):
        if i:
            out.append("\n" + " " * indent)
        out.append_text(part)
    return out


def filter_line(chosen: LogFilter) -> Text:
    """`show: 1 run  2 epoch ...  / text`: the categories on in their colour, the rest dim."""
    out = Text("show: ", style="bold")
    for number, category in enumerate(CATEGORIES, start=1):
        on = category in chosen.categories
        style = (STYLES[category] or "default") + " underline" if on else "dim strike"
        out.append(f"{number} {category}", style=style)
        out.append("  ")
    if chosen.text:
        out.append("text: ", style="bold")
        out.append(chosen.text, style="reverse")
    else:
        out.append("/ find text", style="dim")
    return out


class LogRead(Message):
    """The reading thread found something (posted from that thread)."""

    def __init__(self, update: LogUpdate):
        super().__init__()
        self.update = update


class LogScreen(Screen):
    """A run's event log, filtered by category and text; console.log's tail beneath."""

    CSS_PATH = "log.tcss"
    BINDINGS = [
        Binding("escape", "back", "Back"),
        Binding("slash", "find", "Find text"),
        Binding("1", "toggle('run')", "Show/hide", key_display="1-6"),
        *(
            Binding(str(n), f"toggle('{c}')", c, show=False)
            for n, c in enumerate(CATEGORIES[1:], start=2)
        ),
        Binding("0", "show_all", "All"),
        Binding("q", "app.quit", "Quit"),
    ]

    def __init__(self, source: RunSource):
        super().__init__()
        self.source = source
        self.chosen = LogFilter()
        self.files = RunFiles(lambda: source.run_dir)
        self._shown = 0  # lines the filter shows (the list holds the last MAX_SHOWN)
        self._upto = -1  # the `order` of the last line the list has taken account of
        self._note = "Reading the run's events.jsonl..."  # why the list is empty, when it is
        self._console_lines: list[str] = []
        self._wrapped_at = 0  # the width the list's lines were wrapped to
        self._find_timer: Timer | None = None  # the text filter, applied when typing pauses
        self._log_visible = threading.Event()  # the reading thread reads while this is set
        self._log_closed = threading.Event()

    def compose(self) -> ComposeResult:
        yield Static(id="log-title", markup=False)
        yield Static(id="log-filter", markup=False)
        yield Input(id="find", placeholder=FIND_HINT, compact=True)
        # max_lines counts rows: a line may wrap to a few
        yield RichLog(
            id="events", max_lines=4 * MAX_SHOWN, auto_scroll=False, min_width=20, wrap=True
        )
        yield Static(id="console-title", markup=False)
        yield RichLog(id="console", auto_scroll=False, min_width=20, wrap=True)
        yield Footer()

    def on_mount(self) -> None:
        for hidden in ("#find", "#console-title", "#console"):
            self.query_one(hidden).display = False
        self.query_one("#events", RichLog).focus()
        self._log_visible.set()
        threading.Thread(target=self._follow, name="mpt-log-follow", daemon=True).start()
        self.call_after_refresh(self.refill)  # the list's width is known after a layout

    def on_unmount(self) -> None:
        self._log_closed.set()
        self._log_visible.set()  # let the thread see it is over

    def on_screen_suspend(self) -> None:
        self._log_visible.clear()  # a screen on top (or the dashboard again): stop reading

    def on_screen_resume(self) -> None:
        self._log_visible.set()

    def on_resize(self) -> None:
        self.call_after_refresh(self.refill)  # the lines wrap to the new width

    # ---- reading (in a thread: a long run's events.jsonl takes seconds to read) ----
    def _follow(self) -> None:
        note = None
        while self._log_visible.wait() and not self._log_closed.is_set():
            update = self.files.read()
            if update.lines or update.console is not None or update.note != note:
                note = update.note
                self.post_message(LogRead(update))
            self._log_closed.wait(FOLLOW_INTERVAL)

    def on_log_read(self, message: LogRead) -> None:
        """Add what the files gained, keeping the end in view unless the user scrolled
        away from it."""
        update = message.update
        self._note = update.note
        new = [line for line in update.lines if line.order > self._upto]
        if new:
            self._upto = new[-1].order
        shown = [line for line in new if self.chosen.shows(line)]
        listing = self.query_one("#events", RichLog)
        if self._shown == 0 and (shown or not new):
            self.refill()  # the sentence that stood for an empty list goes (or changes)
        elif shown:
            self._shown += len(shown)
            at_end = listing.is_vertical_scroll_end
            self._write(listing, shown[-MAX_SHOWN:])
            if at_end:
                listing.scroll_end(animate=False, immediate=False, x_axis=False)
        if update.console is not None:
            self._console_lines = update.console
            self._show_console()
        self._show_header()

    def refill(self) -> None:
        """Show the lines the filter chooses afresh (a new filter, a new width)."""
        listing = self.query_one("#events", RichLog)
        if not listing.size.width:
            return
        log = self.files.log
        shown = log.shown(self.chosen, MAX_SHOWN) if log is not None else Shown([], 0, -1)
        self._shown, self._upto = shown.matching, max(self._upto, shown.upto)
        listing.clear()
        self._write(listing, shown.lines)
        if not shown.lines:
            note = Text(self._note or NO_MATCH, style="italic")
            listing.write(note, width=listing.scrollable_content_region.width, scroll_end=False)
        listing.scroll_end(animate=False, immediate=False, x_axis=False)
        self._show_console(to_end=True)
        self._show_header()
        self.call_after_refresh(self._check_width)

    def _check_width(self) -> None:
        """Wrap the lines again when the list's width changed since (a field shown or
        gone, a scroll bar): a line wrapped wider than the list would be cut."""
        listing = self.query_one("#events", RichLog)
        if listing.scrollable_content_region.width not in (self._wrapped_at, 0):
            self.refill()

    def _write(self, listing: RichLog, lines: list[LogLine]) -> None:
        width = self._wrapped_at = listing.scrollable_content_region.width
        for line in lines:
            # the width given: else the app's console may cut it narrower (headless)
            listing.write(render_line(line, width, self.app.console), width, scroll_end=False)

    def _show_console(self, to_end: bool = False) -> None:
        """console.log's last lines, in a panel that appears once it has any."""
        if not self._console_lines:
            return
        panel = self.query_one("#console", RichLog)
        title = self.query_one("#console-title", Static)
        panel.styles.height = min(len(self._console_lines), max(3, (self.size.height - 6) // 3))
        if not panel.display:  # its width is known after the next layout: write then
            panel.display = title.display = True
            title.update(f"console.log, its last lines: {self.files.tail.path}")
            self.call_after_refresh(self._show_console, True)
            return
        at_end = panel.is_vertical_scroll_end
        panel.clear()
        width = panel.scrollable_content_region.width
        for text in self._console_lines:
            panel.write(Text(text), width, scroll_end=False)
        if at_end or to_end:
            panel.scroll_end(animate=False, immediate=False, x_axis=False)

    def _show_header(self) -> None:
        log = self.files.log
        total = len(log) if log is not None else 0
        count = f"{self._shown:,} of {total:,} lines"
        if self._shown > MAX_SHOWN:
            count += f" (the newest {MAX_SHOWN:,} listed)"
        if log is not None and log.dropped:
            count += f"; the oldest {log.dropped:,} let go"
        where = log.path if log is not None else "events.jsonl"
        self.query_one("#log-title", Static).update(f"Log: {count} · {where}")
        self.query_one("#log-filter", Static).update(filter_line(self.chosen))

    # ---- keys ----
    def action_toggle(self, category: str) -> None:
        self.chosen = self.chosen.toggled(category)
        self.refill()

    def action_show_all(self) -> None:
        self.chosen = LogFilter(frozenset(CATEGORIES), self.chosen.text)
        self.refill()

    def action_find(self) -> None:
        find = self.query_one("#find", Input)
        find.display = True
        self.set_focus(find)  # at once: the keys typed right after `/` go to it

    def on_key(self, event: events.Key) -> None:
        """Open the find field as soon as `/` comes, before its binding runs: the keys
        typed right after it (fast, or pasted) are already on their way to the list, and
        belong to the field."""
        find = self.query_one("#find", Input)
        if event.key == "slash" and self.focused is not find:
            self.action_find()
            event.stop()
        elif self.focused is find and event.is_printable and event.character:
            find.insert_text_at_cursor(event.character)
            event.stop()

    def on_input_changed(self, message: Input.Changed) -> None:
        """Filter once the typing pauses: a refill of a long log costs a fraction of a
        second, too much for every key."""
        if message.input.id == "find":
            if self._find_timer is not None:
                self._find_timer.stop()
            self._find_timer = self.set_timer(FIND_DELAY, self._apply_find)

    def _apply_find(self) -> None:
        if self._find_timer is not None:
            self._find_timer.stop()
        self._find_timer = None
        text = self.query_one("#find", Input).value
        if text != self.chosen.text:
            self.chosen = self.chosen.with_text(text)
            self.refill()

    def on_input_submitted(self, message: Input.Submitted) -> None:
        if message.input.id == "find":
            self._apply_find()
            if not message.value:
                message.input.display = False
            self.query_one("#events", RichLog).focus()

    def action_back(self) -> None:
        find = self.query_one("#find", Input)
        if find.display:  # escape clears the text first, then leaves
            find.value = ""
            find.display = False
            self._apply_find()
            self.query_one("#events", RichLog).focus()
            return
        self.dismiss()
