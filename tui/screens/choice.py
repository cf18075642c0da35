"""A question with a few answers, each on a key; escape cancels (dismisses with None)."""

from __future__ import annotations

from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class ChoiceScreen(ModalScreen[str | None]):
    """`choices`: (key, what it does, the value it dismisses with)."""

    CSS_PATH = "dialogs.tcss"
    BINDINGS = [Binding("escape", "choose(None)", "Cancel")]

    def __init__(self, question: str, choices: list[tuple[str, str, str]]):
        super().__init__()
        self.question = question
        self.choices = choices

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question, id="question", markup=False)  # paths, names: as written
            keys = "    ".join(f"[b]{key}[/b]: {label}" for key, label, _ in self.choices)
            yield Static(f"{keys}    [b]escape[/b]: cancel", id="keys")

    def on_key(self, event: events.Key) -> None:
        for key, _, value in self.choices:
            if event.key == key:
                event.stop()
                self.dismiss(value)
                return

    def action_choose(self, value: str | None) -> None:
        self.dismiss(value)
