"""Ask for a new profile's file name; dismisses with the path, or None when cancelled."""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Static

from tui.widgets.ordered_input import OrderedInput


class SaveAsScreen(ModalScreen[Path | None]):
    """enter saves under the typed name (in the profiles folder), escape cancels."""

    CSS_PATH = "dialogs.tcss"
    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, folder: Path, suggestion: str):
        super().__init__()
        self.folder = folder
        self.suggestion = suggestion

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Static(f"Save as a new profile in {self.folder}/", id="question")
            yield OrderedInput(self.suggestion, placeholder="name.toml", id="name")
            yield Static("enter: save    escape: cancel", id="keys")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        name = event.value.strip()
        if not name:
            self.query_one("#keys", Static).update("type a file name")
            return
        path = Path(name).expanduser()
        if not path.is_absolute() and path.parent == Path("."):
            path = self.folder / path
        if path.suffix != ".toml":
            path = path.with_name(path.name + ".toml")
        if path.exists():
            self.query_one("#keys", Static).update(f"{path} exists; choose another name")
            return
        self.dismiss(path)

    def action_cancel(self) -> None:
        self.dismiss(None)
