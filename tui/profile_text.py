"""Between the form and the TOML file: field text <-> values, and a readable save.

The form shows each key as text (or a switch, or a choice); `parse_field` turns the
text back into the value the engine validates, leaving anything unparsable as the raw
text so that the engine's own message ("must be an integer (got 'abc')") is what the
user sees. `render_profile` writes what the person wrote, not a dump of every default:
the keys of the original file plus those that differ from the defaults, in the file's
own order, with its comments, one value a line.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

import tomli_w

from engine.profile import FIELD_BY_PATH, FIELDS, SECTIONS, FieldSpec, Profile

MISSING: Any = object()  # an optional key left empty: absent from the profile


def field_text(spec: FieldSpec, value: Any) -> str:
    """The text an Input shows for a value."""
    if value is None:
        return ""
    if spec.kind in ("int_list", "float_list"):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    if spec.kind in ("int", "float"):
        return _scalar(value)
    return str(value)


def _scalar(v: Any) -> str:
    if isinstance(v, float) and math.isfinite(v):
        return repr(v)  # shortest text that reads back to the same float
    return tomli_w.dumps({"v": v})[4:].strip()


def parse_field(spec: FieldSpec, text: str) -> Any:
    """The value an Input's text stands for (MISSING for an empty optional key)."""
    if spec.kind in ("str", "choice"):
        return text
    stripped = text.strip()
    if not stripped and spec.optional:
        return MISSING
    if spec.kind in ("int_list", "float_list") and not stripped.startswith("["):
        stripped = f"[{stripped}]"  # "128, 64" is fine too
    try:
        return tomllib.loads(f"v = {stripped}")["v"]
    except tomllib.TOMLDecodeError:
        return text  # let the engine say what is wrong with it


def form_dict(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Nest {"section.key": value} into {"section": {"key": value}}, dropping MISSING."""
    data: dict[str, dict[str, Any]] = {}
    for path, value in values.items():
        if value is MISSING:
            continue
        section, _, name = path.partition(".")
        data.setdefault(section, {})[name] = value
    return data


def values_of(profile: Profile) -> dict[str, Any]:
    """Every field's value in a profile, by path (None for an absent optional key)."""
    return {spec.path: getattr(getattr(profile, spec.section), spec.name) for spec in FIELDS}


def save_dict(profile: Profile, keep: set[str] = frozenset()) -> dict[str, dict[str, Any]]:
    """The keys worth writing: those that differ from the default, and those in `keep`."""
    data: dict[str, dict[str, Any]] = {}
    for path, value in values_of(profile).items():
        spec = FIELD_BY_PATH[path]
        if value is None:
            continue  # TOML has no null: an absent optional key stays absent
        if path in keep or value != spec.default:
            data.setdefault(spec.section, {})[spec.name] = value
    return data


# ---- the readable writer ----
_TABLE_RE = re.compile(r"^\s*\[\s*([A-Za-z0-9_-]+)\s*\]\s*(#.*)?$")
_KEY_RE = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")


@dataclass
class _Layout:
    """What a TOML file says besides its values: comments and order."""

    header: list[str] = field(default_factory=list)  # comment lines before the first table
    section_order: list[str] = field(default_factory=list)
    key_order: dict[str, list[str]] = field(default_factory=dict)
    before: dict[str, list[str]] = field(default_factory=dict)  # "section" / "section.key"
    lines: dict[str, str] = field(default_factory=dict)  # "section.key" -> its original line
    keys: set[str] = field(default_factory=set)


def read_layout(text: str) -> _Layout:
    """Find the comments, the order of sections and keys, and each key's own line."""
    layout = _Layout()
    pending: list[str] = []
    section: str | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            pending.append(line.rstrip())
            continue
        table = _TABLE_RE.match(line)
        if table:
            if section is None:
                # the header is the comment block at the top; what touches the table is its own
                cut = _last_blank(pending)
                layout.header, pending = pending[:cut], pending[cut:]
            section = table.group(1)
            layout.section_order.append(section)
            layout.key_order.setdefault(section, [])
            layout.before[section] = _trim(pending)
            pending = []
            continue
        match = _KEY_RE.match(line)
        if match and section is not None:
            path = f"{section}.{match.group(1)}"
            layout.key_order[section].append(match.group(1))
            layout.before[path] = _trim(pending)
            layout.lines[path] = line.rstrip()
            layout.keys.add(path)
        pending = []
    return layout


def _last_blank(lines: list[str]) -> int:
    for i in range(len(lines) - 1, -1, -1):
        if not lines[i].strip():
            return i + 1
    return 0


def _trim(lines: list[str]) -> list[str]:
    while lines and not lines[0].strip():
        lines = lines[1:]
    return [x for x in lines if x.strip()]  # keep comments, drop inner blank lines


def _line_value(line: str) -> tuple[Any, bool]:
    """The value a `key = value  # comment` line holds, if it parses alone."""
    try:
        data = tomllib.loads(line.strip())
    except tomllib.TOMLDecodeError:
        return None, False
    return (next(iter(data.values())), True) if len(data) == 1 else (None, False)


def _format_value(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    return _scalar(value)


def render_profile(data: dict[str, dict[str, Any]], original: str | None = None) -> str:
    """TOML text for `data`, keeping the original file's comments and order where it can.

    A key whose value did not change keeps its original line (and inline comment).
    The result always reads back (tomllib) to exactly `data`.
    """
    layout = read_layout(original or "")
    out: list[str] = []
    if layout.header:
        out += layout.header
    sections = [s for s in layout.section_order if s in data]
    sections += [s for s in SECTIONS if s in data and s not in sections]
    sections += [s for s in data if s not in sections]
    for section in sections:
        table = data[section]
        if out and out[-1] != "":
            out.append("")
        out += layout.before.get(section, [])
        out.append(f"[{section}]")
        keys = [k for k in layout.key_order.get(section, []) if k in table]
        keys += [k for k in table if k not in keys]
        for name in keys:
            path = f"{section}.{name}"
            value = table[name]
            out += layout.before.get(path, [])
            old = layout.lines.get(path)
            if old is not None:
                old_value, ok = _line_value(old)
                if ok and old_value == value and type(old_value) is type(value):
                    out.append(old)
                    continue
            out.append(f"{_bare_key(name)} = {_format_value(value)}")
    text = "\n".join(out).strip("\n") + "\n"
    if tomllib.loads(text) != data:  # never write a file that reads back differently
        text = tomli_w.dumps(data)
    return text


def _bare_key(name: str) -> str:
    return (
        name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else tomli_w.dumps({name: 0}).split(" =")[0]
    )
