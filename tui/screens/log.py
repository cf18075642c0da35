"""The log screen (`l` on the dashboard): a run's whole event log, followed as it grows.

It reads RUN_DIR/events.jsonl from its start with a reader of its own (tui/event_log.py)
and then every FOLLOW_INTERVAL while it is shown, reading only the new bytes. The number
keys choose the categories shown (1 run ... 6 step), `/` a text to look for; the list
follows the end unless the user scrolled up. A detached run's RUN_DIR/console.log, when
there is one, shows its last lines in a second panel beneath. Nothing read from a file
is ever taken as markup.
"""

from __future__ import annotations

from pathlib import Path

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Input, RichLog, Static

from tui.detach import CONSOLE_LOG
from tui.event_log import CATEGORIES, ConsoleTail, LogFilter, LogLine, RunLog
from tui.session import RunSource

FOLLOW_INTERVAL = 0.5  # seconds between two reads of the files while the screen is shown
MAX_SHOWN = 2_000  # lines in the list at most: a refill renders no more than these
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
        self.log_: RunLog | None = None
        self.tail: ConsoleTail | None = None
        self._shown = 0  # lines the filter shows (the list holds the last MAX_SHOWN)
        self._timer: Timer | None = None
        self._note = ""  # why the list is empty, when it is

    def compose(self) -> ComposeResult:
        yield Static(id="log-title", markup=False)
        yield Static(id="log-filter", markup=False)
        yield Input(
            id="find",
            placeholder="text to look for; enter keeps it, escape clears it",
            compact=True,
        )
        yield RichLog(id="events", max_lines=MAX_SHOWN, auto_scroll=False, min_width=20)
        yield Static(id="console-title", markup=False)
        yield RichLog(id="console", max_lines=MAX_SHOWN, auto_scroll=False, min_width=20)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#find", Input).display = False
        self.query_one("#console-title").display = False
        self.query_one("#console").display = False
        self.query_one("#events", RichLog).focus()
        self._timer = self.set_interval(FOLLOW_INTERVAL, self.follow)
        self.call_after_refresh(self.refill)  # the list's width is known after a layout

    def on_screen_suspend(self) -> None:
        if self._timer is not None:
            self._timer.pause()

    def on_screen_resume(self) -> None:
        if self._timer is not None:
            self._timer.resume()
        self.follow()

    def on_resize(self) -> None:
        self.call_after_refresh(self.refill)  # the lines wrap to the new width

    # ---- reading ----
    def _open(self) -> bool:
        """Start reading once the run has a directory; False while it has none."""
        if self.log_ is not None:
            return True
        run_dir = self.source.run_dir
        if run_dir is None:
            self._note = "The run has no directory yet: its log begins when it starts."
            return False
        self.log_ = RunLog(Path(run_dir) / "events.jsonl")
        self.tail = ConsoleTail(Path(run_dir) / CONSOLE_LOG)
        return True

    def _read(self) -> list[LogLine]:
        """Read the events written since the last look (the first look reads them all)."""
        if not self._open():
            return []
        try:
            new = self.log_.read_new()
        except OSError as e:
            what = "no file" if isinstance(e, FileNotFoundError) else e.strerror or str(e)
            self._note = f"{self.log_.path}: {what} yet; the log shows its events once it has some."
            return []
        self._note = "" if len(self.log_) else "No events in this run's events.jsonl yet."
        return new

    def follow(self) -> None:
        """Add what the files gained since the last look, keeping the end in view unless
        the user scrolled away from it."""
        new = self._read()
        shown = [line for line in new if self.chosen.shows(line)]
        events = self.query_one("#events", RichLog)
        if shown and events.size.width:
            at_end = events.is_vertical_scroll_end
            if self._shown == 0:
                events.clear()  # the sentence that stood for an empty list
            width = events.scrollable_content_region.width
            for line in shown[-MAX_SHOWN:]:
                events.write(render_line(line, width, self.app.console), scroll_end=False)
            if at_end:
                events.scroll_end(animate=False, immediate=False, x_axis=False)
        self._shown += len(shown)
        self._follow_console()
        self._show_header()

    def refill(self) -> None:
        """Show the lines the filter chooses afresh (a new filter, a new width)."""
        events = self.query_one("#events", RichLog)
        if not events.size.width:
            return
        if self.log_ is None:
            self._read()
        lines, self._shown = self.log_.shown(self.chosen, MAX_SHOWN) if self.log_ else ([], 0)
        events.clear()
        width = events.scrollable_content_region.width
        for line in lines:
            events.write(render_line(line, width, self.app.console), scroll_end=False)
        if not lines:
            events.write(Text(self._empty_note(), style="italic"), scroll_end=False)
        events.scroll_end(animate=False, immediate=False, x_axis=False)
        self._follow_console(refill=True)
        self._show_header()

    def _empty_note(self) -> str:
        if self._note:
            return self._note
        return "No line matches this filter: 0 shows every line, escape clears the text."

    def _follow_console(self, refill: bool = False) -> None:
        """console.log's last lines, in a panel that appears once it has any."""
        if self.tail is None:
            return
        try:
            grown = self.tail.read_new()
        except OSError:
            return  # no console.log: a run this console trains, or one never detached
        if not self.tail.lines or not (grown or refill):
            return
        panel = self.query_one("#console", RichLog)
        title = self.query_one("#console-title", Static)
        if not panel.display:
            panel.display = title.display = True
        panel.styles.height = min(len(self.tail.lines), max(3, (self.size.height - 6) // 3))
        title.update(f"console.log, its last lines: {self.tail.path}")
        at_end = panel.is_vertical_scroll_end
        panel.clear()
        for text in self.tail.lines:
            panel.write(Text(text), scroll_end=False)
        if at_end or refill:
            panel.scroll_end(animate=False, immediate=False, x_axis=False)

    def _show_header(self) -> None:
        total = len(self.log_) if self.log_ is not None else 0
        where = self.log_.path if self.log_ is not None else "events.jsonl"
        count = f"{self._shown:,} of {total:,} lines"
        if self._shown > MAX_SHOWN:
            count += f" (the last {MAX_SHOWN:,} here)"
        if self.log_ is not None and self.log_.dropped:
            count += f"; the oldest {self.log_.dropped:,} step lines let go"
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
        if message.input.id == "find" and message.value != self.chosen.text:
            self.chosen = self.chosen.with_text(message.value)
            self.refill()

    def on_input_submitted(self, message: Input.Submitted) -> None:
        if message.input.id == "find":
            if not message.value:
                message.input.display = False
            self.query_one("#events", RichLog).focus()

    def action_back(self) -> None:
        find = self.query_one("#find", Input)
        if find.has_focus or find.display:  # escape clears the text first, then leaves
            find.value = ""
            find.display = False
            self.query_one("#events", RichLog).focus()
            return
        self.dismiss()
