"""One profile key in a form: its name, an Input/Select/Switch, its help, and its error.

Built from the engine's FieldSpec. The row posts `FieldRow.Changed` when its value
changes; the form validates the whole profile and sets `error` back on each row.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.reactive import reactive
from textual.suggester import Suggester
from textual.widget import Widget
from textual.widgets import Input, Label, Select, Static, Switch

from engine.profile import FieldSpec, format_bound
from tui.profile_text import field_text, parse_field
from tui.widgets.ordered_input import OrderedInput

_KIND_NAMES = {
    "int": "integer",
    "float": "number",
    "bool": "true/false",
    "str": "text",
    "choice": "choice",
    "int_list": "list of integers",
    "float_list": "list of numbers",
    "str_list": "list of strings",
    "table": "table",
    "float_table": "table of numbers",
    "weights": '"balanced" or list of numbers',
}


class SuggestFrom(Suggester):
    """Completes what is typed with the first of `choices()` it starts (right arrow takes
    it); asked anew each time, so the choices may follow the rest of the form."""

    def __init__(self, choices: Callable[[], Iterable[str]]):
        super().__init__(use_cache=False, case_sensitive=True)
        self.choices = choices

    async def get_suggestion(self, value: str) -> str | None:
        return next((c for c in self.choices() if c.startswith(value)), None)


def describe_spec(spec: FieldSpec) -> str:
    """The type, range and default of a key, for the line under its help text."""
    parts = [_KIND_NAMES.get(spec.kind, spec.kind)]
    if spec.kind == "name":  # a Select cannot take an import path: the Input's help names them
        parts[0] = f'{", ".join(spec.choices)}, or "package.module:function"'
    bounds = [
        f"{op} {format_bound(v)}"
        for op, v in ((">=", spec.ge), (">", spec.gt), ("<=", spec.le), ("<", spec.lt))
        if v is not None
    ]
    if bounds:
        parts.append(", ".join(bounds))
    if spec.optional:
        parts.append("optional: empty = none")
    default = "none" if spec.default is None else field_text(spec, spec.default) or '""'
    if spec.kind == "bool":
        default = "true" if spec.default else "false"
    parts.append(f"default {default}")
    return "; ".join(parts)


def control_id(path: str) -> str:
    return "field-" + path.replace(".", "--")


class FieldRow(Vertical):
    """A form row for one key; `value` is what the engine will validate."""

    error: reactive[str] = reactive("")

    class Changed(Message):
        """The user changed the row's value."""

        def __init__(self, row: FieldRow) -> None:
            super().__init__()
            self.row = row

    def __init__(
        self,
        spec: FieldSpec,
        value: Any,
        *,
        label: str | None = None,
        suggest: Callable[[], Iterable[str]] | None = None,
    ):
        """`suggest`: the values a text key's Input offers as you type (without it, a name
        key offers its built-in choices, a weights key "balanced")."""
        super().__init__(classes="field-row")
        self.spec = spec
        self.label = label or spec.name
        self._initial = value
        if suggest is None and spec.kind in ("name", "weights"):
            own = spec.choices if spec.kind == "name" else ("balanced",)
            suggest = lambda: own  # noqa: E731 - a constant list, asked as the others
        self._suggest = suggest
        self._control: Widget | None = None

    @property
    def path(self) -> str:
        return self.spec.path

    def compose(self) -> ComposeResult:
        spec = self.spec
        with Horizontal(classes="field-line"):
            yield Label(self.label, classes="field-name", markup=False)
            yield self._make_control(spec, self._initial)
        help_text = Text.assemble(spec.help, (f"  ({describe_spec(spec)})", "dim"))
        yield Static(help_text, classes="field-help")
        yield Static("", classes="field-error", markup=False)

    def _make_control(self, spec: FieldSpec, value: Any) -> Widget:
        cid = control_id(spec.path)
        if spec.kind == "bool":
            return Switch(bool(value) if isinstance(value, bool) else bool(spec.default), id=cid)
        if spec.kind == "choice":
            options = [(c, c) for c in spec.choices]
            if value not in spec.choices:  # show what the file says, and let validation flag it
                options.append((f"{value} (not a choice)", value))
            return Select(options, value=value, allow_blank=False, compact=True, id=cid)
        plain = isinstance(value, str) and spec.kind in ("str", "name")
        text = value if plain else field_text(spec, value)
        suggester = SuggestFrom(self._suggest) if self._suggest else None
        placeholder = "(none)" if spec.optional else ""
        return OrderedInput(
            text, placeholder=placeholder, compact=True, suggester=suggester, id=cid
        )

    @property
    def control(self) -> Widget:
        if self._control is None:
            self._control = self.query_one(f"#{control_id(self.spec.path)}")
        return self._control

    @property
    def value(self) -> Any:
        control = self.control
        if isinstance(control, Switch):
            return control.value
        if isinstance(control, Select):
            return control.value
        assert isinstance(control, Input)
        return parse_field(self.spec, control.value)

    def watch_error(self, error: str) -> None:
        self.set_class(bool(error), "-invalid")
        self.query_one(".field-error", Static).update(error)

    def _changed(self, event: Message) -> None:
        event.stop()
        self.post_message(self.Changed(self))

    def on_input_changed(self, event: Input.Changed) -> None:
        self._changed(event)

    def on_select_changed(self, event: Select.Changed) -> None:
        self._changed(event)

    def on_switch_changed(self, event: Switch.Changed) -> None:
        self._changed(event)
