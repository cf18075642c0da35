"""A profile as a form: every section and key of the engine's schema, validated as you type.

Each change re-validates the whole profile with `profile_from_dict`, so the messages
under the fields are the engine's own. ctrl+s writes the file (only when valid) by
editing its text in place: only the changed values' text changes, every comment, blank
line and header stays. F2 saves under a new name; ctrl+r starts a run; ctrl+l (`L` would
type into a field) runs the LR finder on the form's values, unsaved edits included, and
sets the optim.lr field to its suggestion, leaving the saving to ctrl+s.

ctrl+s never overwrites what the form did not read: a file it could not read (not TOML,
not UTF-8, a folder, unreadable) is shown as the defaults and kept; a file changed on
disk since it was opened is kept too. F2 can still save the form as a new file.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import Footer, Input, Select, Static, TabbedContent, TabPane

from engine.errors import MptError, Problem, ProfileError
from engine.profile import (
    ESSENTIAL_KEYS,
    FIELD_BY_PATH,
    FIELDS,
    SECTIONS,
    Profile,
    decode_profile,
    parse_toml,
    profile_from_dict,
    read_profile_bytes,
)
from engine.task_spec import KINDS, METRICS, monitors
from tui.messages import StartRun
from tui.profile_text import (
    EditError,
    field_text,
    form_dict,
    render_profile,
    save_dict,
    write_atomic,
)
from tui.widgets.field import FieldRow

MONITOR_KEYS = ("early_stop.monitor", "checkpoint.monitor")  # offered the task's monitors


# the names a narrow screen shortens, in this order, until the tabs fit
SHORT_TABS = {"checkpoint": "ckpt", "precision": "prec", "early_stop": "early", "schedule": "sched"}


def tab_labels(bad: set[str], width: int) -> dict[str, str]:
    """Each section's tab label: a tab with a problem in it says so (`model !`); when the
    tabs are wider than the screen (80 columns hold eleven), long names are shortened, so
    that every tab shows whole: a tab cut to `no` says nothing."""
    labels = {s: f"{s} !" if s in bad else s for s in SECTIONS}
    for long, short in SHORT_TABS.items():
        if sum(len(label) + 1 for label in labels.values()) < width:  # + its margin
            break
        labels[long] = labels[long].replace(long, short)
    return labels


class LrFindInForm:
    """ctrl+l in the form (a mixin of it): the LR finder on the form's values, unsaved
    edits included (what ctrl+r would run); its suggestion goes into the optim.lr field,
    and ctrl+s saves it."""

    def action_lr_find(self: ProfileFormScreen) -> None:
        from tui.screens.lr_find import LrFindScreen

        if self.profile is None:
            self._refuse("find an lr")
            return
        name = self.path.stem if self.path else "new profile"
        self.app.push_screen(LrFindScreen(self.profile, name, "the form"), self._set_lr)

    def _set_lr(self: ProfileFormScreen, lr: float | None) -> None:
        if lr is not None:  # the field's Changed validates it and marks the form edited
            self.show_section("optim", focus="optim.lr")
            self.row("optim.lr").control.value = field_text(FIELD_BY_PATH["optim.lr"], lr)
            self.notify(f"optim.lr = {lr!r} in the form: ctrl+s saves it")


class ProfileFormScreen(LrFindInForm, Screen):
    """Edit one profile (or a new one, from the defaults)."""

    CSS_PATH = "profile_form.tcss"
    BINDINGS = [
        Binding("ctrl+s", "save", "Save"),
        Binding("f2", "save_as", "Save as"),
        Binding("ctrl+r", "run", "Run"),
        Binding("ctrl+l", "lr_find", "LR find"),
        Binding("escape", "back", "Back"),
        Binding("pagedown", "section(1)", "Next section", priority=True),
        Binding("pageup", "section(-1)", "Previous section", show=False, priority=True),
        Binding("down", "field(1)", "Next field", show=False, priority=True),
        Binding("up", "field(-1)", "Previous field", show=False, priority=True),
    ]

    def __init__(
        self,
        path: Path | None,
        data: dict[str, Any] | None = None,
        original: str | None = None,
        load_problem: str = "",
    ):
        super().__init__()
        self.path = path
        self.original = original  # the file's text as read (BOM and line ends included)
        self.data = data or {}
        self.load_problem = load_problem
        self.keep: set[str] = {
            f"{s}.{k}" for s, t in self.data.items() if isinstance(t, dict) for k in t
        }
        self.problems: list[Problem] = []
        self.profile: Profile | None = None
        self._saved_values: dict[str, Any] = {}
        self._row_by_path: dict[str, FieldRow] = {}
        self._validation_pending = False
        self.unknown = _unknown_keys(self.data)  # in the file, not in the schema

    @classmethod
    def open(cls, path: Path) -> ProfileFormScreen:
        """A form for a profile file; a file that cannot be read opens on the defaults
        (and ctrl+s will not overwrite it)."""
        try:
            raw = _read_regular_file(path)
            data = parse_toml(decode_profile(raw, str(path)), str(path))
        except ProfileError as e:
            return cls(path, None, None, load_problem="; ".join(p.message for p in e.problems))
        except MptError as e:
            return cls(path, None, None, load_problem=str(e))
        return cls(path, data, raw.decode("utf-8"))

    @classmethod
    def new(cls) -> ProfileFormScreen:
        return cls(None)

    # ---- building ----
    def compose(self) -> ComposeResult:
        yield Static(id="title", markup=False)
        yield Static(id="status", markup=False)
        # One tab per section: a screen holds a section's keys, not all ~70 at once,
        # which keeps focus moves and redraws quick.
        with TabbedContent(id="sections"):
            for section in SECTIONS:
                pane = TabPane(section, id=f"section-{section}")
                with pane, VerticalScroll(can_focus=False, classes="fields"):
                    for spec in (f for f in FIELDS if f.section == section):
                        value = self._initial_value(spec.section, spec.name)
                        suggest = self._task_monitors if spec.path in MONITOR_KEYS else None
                        yield FieldRow(spec, value, suggest=suggest)
        yield Footer()

    def _task_monitors(self) -> list[str]:
        return task_monitors(self.row("task.kind").value, self.row("task.metrics").value)

    def _initial_value(self, section: str, name: str) -> Any:
        table = self.data.get(section)
        if isinstance(table, dict) and name in table:
            return table[name]
        return FIELD_BY_PATH[f"{section}.{name}"].default

    def on_mount(self) -> None:
        self._validate()
        self._saved_values = self._values()
        self._show_title()
        self.row(FIELDS[0].path).control.focus()

    # ---- state ----
    def _rows(self) -> list[FieldRow]:
        if not self._row_by_path:  # the DOM is large: walk it once
            self._row_by_path = {r.path: r for r in self.query(FieldRow)}
        return list(self._row_by_path.values())

    def row(self, path: str) -> FieldRow:
        self._rows()
        return self._row_by_path[path]

    def _values(self) -> dict[str, Any]:
        return {r.path: r.value for r in self._rows()}

    @property
    def dirty(self) -> bool:
        return self._values() != self._saved_values

    def _validate(self) -> None:
        data = form_dict(self._values())
        try:
            self.profile = profile_from_dict(data, self._source)
            self.problems = []
        except ProfileError as e:
            self.profile, self.problems = None, list(e.problems)
        by_key: dict[str, list[str]] = {}
        for p in self.problems:
            by_key.setdefault(p.key, []).append(p.message)
        for r in self._rows():
            r.error = "; ".join(by_key.pop(r.path, []))
        self._show_status(by_key)
        self._label_tabs()

    def on_resize(self) -> None:
        self._label_tabs()

    def _label_tabs(self) -> None:
        bad = {p.key.partition(".")[0] for p in self.problems}
        tabs = self.query_one("#sections", TabbedContent)
        for section, label in tab_labels(bad, self.size.width).items():
            tab = tabs.get_tab(f"section-{section}")
            if str(tab.label) != label:
                tab.label = label

    @property
    def _source(self) -> str:
        return str(self.path) if self.path else "<new profile>"

    def _show_title(self) -> None:
        name = str(self.path) if self.path else "new profile (not saved yet)"
        self.query_one("#title", Static).update(f"profile: {name}" + (" *" if self.dirty else ""))

    def _show_status(self, unplaced: dict[str, list[str]] | None = None, text: str = "") -> None:
        status = self.query_one("#status", Static)
        if not text:
            n = len(self.problems)
            if n:
                first = self.problems[0]
                text = (
                    f"{n} problem{'s' if n > 1 else ''}: {first.key or 'profile'}: {first.message}"
                )
            elif self.load_problem:
                text = (
                    f"could not read the file {self.path}: {self.load_problem}; showing the "
                    "defaults, and ctrl+s will not overwrite it (F2 saves them as a new file)"
                )
            else:
                text = "valid"
        if unplaced:
            text += "  |  " + "; ".join(f"{k}: {' '.join(v)}" for k, v in unplaced.items())
        if self.unknown:
            text += "  |  commented out on save: " + "; ".join(
                f"{p.key}: {p.message}" for p in self.unknown
            )
        status.update(text)
        status.set_class(bool(self.problems), "-invalid")

    def on_field_row_changed(self, event: FieldRow.Changed) -> None:
        # Many rows report at once (mounting, pasting): validate once for the lot.
        if not self._validation_pending:
            self._validation_pending = True
            self.call_later(self._validate_now)

    def _validate_now(self) -> None:
        self._validation_pending = False
        self._validate()
        self._show_title()

    # ---- moving around ----
    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action == "field":  # arrows inside an open Select move its highlight instead
            focused = self.focused
            return not (
                focused is not None
                and focused.parent is not None
                and isinstance(focused.parent, Select)
                and focused.parent.expanded
            )
        return True

    def action_section(self, delta: int) -> None:
        tabs = self.query_one("#sections", TabbedContent)
        names = list(SECTIONS)
        current = tabs.active.removeprefix("section-")
        section = names[(names.index(current) + delta) % len(names)]
        self.show_section(section)

    def show_section(self, section: str, focus: str | None = None) -> None:
        """Bring a section's tab to the front and focus one of its keys (the first)."""
        self.query_one("#sections", TabbedContent).active = f"section-{section}"
        path = focus or next(f.path for f in FIELDS if f.section == section)
        self.call_after_refresh(self.row(path).control.focus)

    def action_field(self, delta: int) -> None:
        if delta > 0:
            self.focus_next()
        else:
            self.focus_previous()

    # ---- actions ----
    def action_save(self) -> None:
        if self.path is None:
            self.action_save_as()
            return
        why_not = self._cannot_overwrite(self.path)
        if why_not:
            self._show_status(text=f"not saved: {why_not}; F2 saves the form as a new file")
            self.app.bell()
            return
        self._write(self.path)

    def _cannot_overwrite(self, path: Path) -> str:
        """Why ctrl+s must keep the file as it is (empty when it may write)."""
        if self.load_problem or self.original is None:
            return f"{path} could not be read ({self.load_problem}), so it is kept as it is"
        try:
            now = _read_regular_file(path)
        except ProfileError as e:
            if e.problems and e.problems[0].message == "no such file":
                return ""  # deleted meanwhile: writing it again loses nothing
            return f"{path} cannot be read now ({e.problems[0].message}), so it is kept as it is"
        if now != self.original.encode("utf-8"):
            return (
                f"{path} changed on disk since the form read it, so it is kept as it is "
                "(reopen it to see the change)"
            )
        return ""

    def action_save_as(self) -> None:
        from tui.screens.save_as import SaveAsScreen

        if self.profile is None:
            self._refuse("save")
            return
        folder = self.path.parent if self.path else self.app.profiles_dir
        suggestion = f"{self.profile.run.name}.toml"
        if self.path is not None and self.path.name == suggestion:
            suggestion = f"{self.profile.run.name}-copy.toml"

        self.app.push_screen(SaveAsScreen(folder, suggestion), lambda path: _save_as(self, path))

    def _refuse(self, what: str) -> None:
        n = len(self.problems)
        self._show_status(text=f"cannot {what}: fix the {n} problem{'s' if n > 1 else ''} first")
        self.app.bell()

    def _write(self, path: Path) -> bool:
        if self.profile is None:
            self._refuse("save")
            return False
        # A file says what it said, plus what changed; a new file says what it trains.
        data = save_dict(self.profile, self.keep if self.original else ESSENTIAL_KEYS)
        in_place = path == self.path
        try:
            text = render_profile(data, self.original)
        except EditError as e:
            if in_place:
                self._show_status(
                    text=f"not saved: {path} is written in a way the form cannot edit in "
                    f"place ({e}), so it is kept as it is; F2 saves the form as a new file"
                )
                self.app.bell()
                return False
            text = render_profile(data)  # a new file: one value a line
        try:
            write_atomic(path, text, new=not in_place)
        except OSError as e:
            self._show_status(text=f"cannot save {path}: {e.strerror or e}")
            return False
        self.original, self.keep = text, {f"{s}.{k}" for s, t in data.items() for k in t}
        self._saved_values = self._values()
        self.load_problem = ""
        self._show_status(text=f"saved {path}")
        self._show_title()
        return True

    def action_run(self) -> None:
        if self.profile is None:
            self._refuse("run")
            return
        self.post_message(StartRun(self.profile))

    def action_back(self) -> None:
        if not self.dirty:
            self.dismiss()
            return
        from tui.screens.confirm import ConfirmScreen

        def answer(yes: bool | None) -> None:
            if yes:
                self.dismiss()

        self.app.push_screen(ConfirmScreen("Discard the unsaved changes?"), answer)


def task_monitors(kind: Any, metrics: Any) -> list[str]:
    """What a monitor key may name for a task (as the form holds it: maybe invalid)."""
    kind = kind if kind in KINDS else "classification"
    metrics = metrics if isinstance(metrics, list) else []
    return monitors(kind, [m for m in metrics if m in METRICS[kind]])


def _read_regular_file(path: Path) -> bytes:
    """The file's bytes; a FIFO or a device is refused before reading (it could block)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        mode = stat.S_IFREG  # let the reading say what is wrong
    if not stat.S_ISREG(mode) and not stat.S_ISDIR(mode):
        problem = Problem("", "is not a regular file (a FIFO or a device), not a profile file")
        raise ProfileError(str(path), [problem])
    return read_profile_bytes(path)


def _unknown_keys(data: dict[str, Any]) -> list[Problem]:
    """What the engine says about keys and sections of a file that the schema lacks."""
    try:
        profile_from_dict(data)
    except ProfileError as e:
        return [p for p in e.problems if p.key and p.key not in FIELD_BY_PATH]
    return []


def _name_runs_after(form: ProfileFormScreen, path: Path) -> str | None:
    """A profile saved as a new file would share the old one's runs folder (run.name):
    name its runs after the new file instead, when that is a valid run.name. The new
    name, or None when run.name stays."""
    control = form.row("run.name").control
    old = control.value
    if path.stem == old or form.profile is None:
        return None
    with control.prevent(Input.Changed):  # validated here, not again after the save
        control.value = path.stem
        form._validate()
        if form.profile is None:  # not a valid run.name: keep the old one
            control.value = old
            form._validate()
            return None
    return path.stem


def _save_as(form: ProfileFormScreen, path: Path | None) -> None:
    """F2's answer: write the form to `path` (None: cancelled), its runs named after it."""
    if path is None:
        return
    renamed = _name_runs_after(form, path)
    if form._write(path):
        form.path = path
        form._show_title()
        if renamed:
            form._show_status(
                text=f"saved {path}; run.name is now {renamed!r}, so its runs go to their "
                f"own folder ({form.profile.run.out_dir}/{renamed}/), not the old profile's"
            )
