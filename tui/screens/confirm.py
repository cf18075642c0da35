"""A yes/no question: `y` or enter confirms, `n` or escape cancels."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Static


class ConfirmScreen(ModalScreen[bool]):
    """Dismisses with True (y, enter) or False (n, escape)."""

    CSS_PATH = "dialogs.tcss"
    BINDINGS = [
        Binding("y,enter", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]

    def __init__(self, question: str):
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(self.question, id="question", markup=False)  # paths, names: as written
            yield Static("[b]y[/b]/enter: yes    [b]n[/b]/escape: no", id="keys")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
