"""Between the form and the TOML file: field text <-> values, and a save that keeps the file.

The form shows each key as text (or a switch, or a choice); `parse_field` turns the
text back into the value the engine validates, leaving anything unparsable as the raw
text so that the engine's own message ("must be an integer (got 'abc')") is what the
user sees. `render_profile` edits the file's own text in place (see "the in-place
editor" below): only the text of the values that changed changes.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from engine.profile import FIELD_BY_PATH, FIELDS, SECTIONS, FieldSpec, Profile

MISSING: Any = object()  # an optional key left empty: absent from the profile


_TABLES = ("table", "float_table")  # kinds whose value is a TOML table
_LISTS = ("int_list", "float_list", "str_list")


def field_text(spec: FieldSpec, value: Any) -> str:
    """The text an Input shows for a value: TOML for lists and tables, a name as it is."""
    if value is None:
        return ""
    if spec.kind == "weights" and value == "balanced":
        return value  # a word, not a quoted string: what a person types
    if spec.kind in (*_LISTS, *_TABLES, "weights", "int", "float"):
        return _format_value(value)
    return str(value)


def _scalar(v: Any) -> str:
    if isinstance(v, float) and math.isfinite(v):
        return repr(v)  # shortest text that reads back to the same float
    return tomli_w.dumps({"v": v})[4:].strip()


def parse_field(spec: FieldSpec, text: str) -> Any:
    """The value an Input's text stands for (MISSING for an empty optional key).

    Lists and tables may leave out their brackets ("128, 64", "size = 64"), and a list of
    names its quotes ("mae, r2"); text that is none of these is returned as it is, for
    the engine to say what is wrong with it.
    """
    if spec.kind in ("str", "choice", "name"):
        return text
    stripped = text.strip()
    if not stripped and spec.optional:
        return MISSING
    if spec.kind == "weights" and stripped in ("balanced", '"balanced"', "'balanced'"):
        return "balanced"
    if spec.kind in (*_LISTS, "weights") and not stripped.startswith("["):
        stripped = f"[{stripped}]"  # "128, 64" is fine too
    if spec.kind in _TABLES and not stripped.startswith("{"):
        stripped = f"{{{stripped}}}"  # "size = 64" is fine too
    value = _toml_value(stripped)
    if value is _UNPARSED and spec.kind == "str_list":
        inner = stripped[1:-1]
        if stripped.endswith("]") and not re.search(r"[][\"'{}=#]", inner):
            return [w.strip() for w in inner.split(",") if w.strip()]  # mae, r2
    return text if value is _UNPARSED else value


_UNPARSED: Any = object()


def _toml_value(text: str) -> Any:
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except (tomllib.TOMLDecodeError, RecursionError, ValueError):  # ValueError: 4300+ digits
        return _UNPARSED


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


# ---- the in-place editor ----
# A save edits the file's own text: a changed value replaces only its value text (the
# key, the spacing and an inline comment stay); a key the file lacks uncomments its
# `# key = ...` line in its section when there is one (as `mpt init` writes them), or
# else goes after the section's last line; a missing section goes at the end. An
# optional key emptied, and a key the schema does not know, are commented out, never
# deleted. Every other byte (comments, blank lines, a BOM, CRLF line ends) is kept.

BOM = "\ufeff"
_BARE = r"[A-Za-z0-9_-]+"
_ONE_KEY = rf"(?:{_BARE}|\"[^\"\\\n]*\"|'[^'\n]*')"
_HEADER_RE = re.compile(rf"^\s*\[\s*({_ONE_KEY}(?:\s*\.\s*{_ONE_KEY})*)\s*\]\s*(?:#.*)?$")
_ARRAY_HEADER_RE = re.compile(r"^\s*\[\[")
_KEY_LINE_RE = re.compile(rf"^(\s*)({_ONE_KEY}(?:\s*\.\s*{_ONE_KEY})*)(\s*=\s*)(.*)$")
_COMMENTED_KEY_RE = re.compile(rf"^(\s*)#\s*({_BARE})(\s*=\s*)(.*)$")


class EditError(Exception):
    """The file's text cannot be edited in place to the values asked for."""


@dataclass
class _Span:
    """A key's lines: `head` (indent, key, =), the value's text, `tail` (spaces, comment)."""

    start: int
    end: int  # exclusive
    head: str
    value: str
    tail: str


@dataclass
class _Section:
    name: str | None  # None: the lines before the first header; dotted names as written
    header: int | None
    end: int = 0  # exclusive: the next header (or the end of the file)
    keys: dict[str, _Span] = field(default_factory=dict)
    commented: dict[str, _Span] = field(default_factory=dict)  # `# key = value` lines
    plain: bool = True  # a simple [name] table (not [[name]])


def _lines(text: str) -> list[str]:
    """The lines with their own ends; only \\n ends a line (as in TOML)."""
    return re.findall(r"[^\n]*\n|[^\n]+$", text)


def _content(line: str) -> str:
    return line[:-2] if line.endswith("\r\n") else line.rstrip("\n")


def _eol(line: str) -> str:
    return line[len(_content(line)) :]


def _key_name(text: str) -> str:
    """A key as tomllib names it; a dotted key keeps its dots (no schema key has one)."""
    parts = re.findall(rf"{_ONE_KEY}", text)
    names = [p[1:-1] if p[0] in "\"'" else p for p in parts]
    return ".".join(names)


def _parses(value: str) -> bool:
    try:
        tomllib.loads(f"v = {value}")
    except (tomllib.TOMLDecodeError, RecursionError, ValueError):
        return False
    return True


def _value_span(lines: list[str], i: int, head: str, rest: str, *, max_lines: int) -> _Span | None:
    """The value that starts after `head` on line i, over as few lines as it takes."""
    joined = rest
    for end in range(i + 1, min(len(lines), i + max_lines) + 1):
        if end > i + 1:
            joined += _eol(lines[end - 2]) + _content(lines[end - 1])
        last_start = len(joined) - len(_content(lines[end - 1])) if end > i + 1 else 0
        cuts = [m.start() for m in re.finditer("#", joined) if m.start() >= last_start]
        for cut in [*cuts, len(joined)]:
            candidate = joined[:cut]
            if _parses(candidate):
                value = candidate.rstrip()
                tail = joined[len(value) :] + _eol(lines[end - 1])
                return _Span(i, end, head, value, tail)
    return None


def _scan(lines: list[str]) -> list[_Section]:
    """The sections of a file, each with its keys' spans and its commented-out keys."""
    sections = [_Section(None, None)]
    i = 0
    while i < len(lines):
        text = _content(lines[i])
        current = sections[-1]
        header = _HEADER_RE.match(text)
        if header or _ARRAY_HEADER_RE.match(text):
            current.end = i
            name = _key_name(header.group(1)) if header else text.strip()
            sections.append(_Section(name, i, plain=bool(header)))
            i += 1
            continue
        key = _KEY_LINE_RE.match(text)
        if key:
            head = key.group(1) + key.group(2) + key.group(3)
            span = _value_span(lines, i, head, key.group(4), max_lines=len(lines))
            if span is None:
                raise EditError(f"line {i + 1} holds a value the editor cannot follow")
            current.keys.setdefault(_key_name(key.group(2)), span)
            i = span.end
            continue
        commented = _COMMENTED_KEY_RE.match(text)
        if commented:
            head = commented.group(1) + commented.group(2) + commented.group(3)
            span = _value_span(lines, i, head, commented.group(4), max_lines=1)
            if not commented.group(4):  # `# options = `: a key with no sample value
                span = _Span(i, i + 1, head, "", _eol(lines[i]))
            if span is not None:  # prose that happens to hold an `=` is left alone
                current.commented.setdefault(commented.group(2), span)
        i += 1
    sections[-1].end = len(lines)
    return sections


def _insert_at(lines: list[str], section: _Section, is_last: bool) -> int:
    """Where a new key of `section` goes: after its last line that is not blank and not
    a comment that belongs to the next header (comments right above it)."""
    i = section.end
    if not is_last:
        while i > section.header + 1 and _content(lines[i - 1]).lstrip().startswith("#"):
            i -= 1
    while i > section.header + 1 and not _content(lines[i - 1]).strip():
        i -= 1
    return i


def _comment_out(lines: list[str], start: int, end: int) -> list[str]:
    out = []
    for line in lines[start:end]:
        text = _content(line)
        stripped = text.lstrip()
        if stripped and not stripped.startswith("#"):
            indent = text[: len(text) - len(stripped)]
            line = f"{indent}# {stripped}{_eol(line)}"
        out.append(line)
    return out


def edit_profile_text(original: str, data: dict[str, dict[str, Any]]) -> str:
    """The original text edited so that it reads back to exactly `data`.

    Only the text of what changes is touched (see above). A table value (data.options)
    is edited where the file has it: inline on its key's line, or as a [data.options]
    sub-table; a new one is written inline. Raises EditError when the file is written in
    a way this editor cannot edit in place (dotted keys at the top, a value it cannot
    follow); the result is checked, never guessed.
    """
    bom = BOM if original.startswith(BOM) else ""
    body = original[len(bom) :]
    lines = _lines(body)
    eol = "\r\n" if lines and lines[0].endswith("\r\n") else "\n"
    try:
        old = tomllib.loads(body)
    except (tomllib.TOMLDecodeError, RecursionError, ValueError) as e:
        raise EditError(f"the file is not valid TOML ({e})") from None
    sections = _scan(lines)
    subtables = {s.name for s in sections if s.plain and _is_subtable(s.name)}
    edits: list[tuple[int, int, list[str]]] = []  # (start, end, new lines), end exclusive

    def set_value(span: _Span, value: Any) -> None:
        edits.append((span.start, span.end, [f"{span.head}{_format_value(value)}{span.tail}"]))

    seen: set[str | None] = set()
    for n, section in enumerate(sections):
        wanted = _walk(data, section.name) if section.plain and section.name else None
        if wanted is None and (section.name is None or section.name in SECTIONS):
            wanted = {}  # a section the form leaves at its defaults: its keys commented out
        known = section.name in SECTIONS or section.name in data or section.name in subtables
        if section.name is not None and (
            section.name in seen or not known or not isinstance(wanted, dict)
        ):
            # a section the schema does not know (or a sub-table emptied): comment it out
            edits.append(
                (section.header, section.end, _comment_out(lines, section.header, section.end))
            )
            continue
        seen.add(section.name)
        table = wanted or {}
        if section.name is None:
            _refuse_dotted_sections(section, data)
        old_table = _walk(old, section.name) if section.name else old
        for name, span in section.keys.items():
            if name not in table:
                edits.append((span.start, span.end, _comment_out(lines, span.start, span.end)))
            elif _differs(old_table, name, table[name]):
                set_value(span, table[name])
        if section.name is None:
            continue
        new_lines = []
        for name, value in table.items():
            if name in section.keys or f"{section.name}.{name}" in subtables:
                continue  # (a sub-table of the file is edited under its own header)
            if name in section.commented:  # uncomment `# name = default` where it stands
                span = section.commented[name]
                indent = span.head[: len(span.head) - len(span.head.lstrip())]
                span.head = indent + span.head.lstrip().lstrip("#").lstrip()
                set_value(span, value)
            else:
                new_lines.append(f"{_bare_key(name)} = {_format_value(value)}{eol}")
        if new_lines:
            at = _insert_at(lines, section, is_last=n == len(sections) - 1)
            if at > 0 and not lines[at - 1].endswith("\n"):
                new_lines[0] = eol + new_lines[0]
            edits.append((at, at, new_lines))
    appended = _new_sections(data, seen, subtables, eol, bool(lines))
    if appended and lines and not lines[-1].endswith("\n"):
        appended.insert(0, eol)
    for start, end, new in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        lines[start:end] = new
    text = bom + "".join(lines) + "".join(appended)
    try:
        same = _without_empty(tomllib.loads(text[len(bom) :])) == _without_empty(data)
    except (tomllib.TOMLDecodeError, RecursionError, ValueError):
        same = False
    if not same:
        raise EditError("the edited text would not read back to the form's values")
    return text


def _new_sections(
    data: dict[str, Any], seen: set[str | None], subtables: set[str], eol: str, after: bool
) -> list[str]:
    """The lines of the sections the file lacks, at its end, in the schema's order."""
    appended: list[str] = []
    for name in _section_order(data):
        if name in seen:
            continue
        if after or appended:
            appended.append(eol)
        appended.append(f"[{_bare_key(name)}]{eol}")
        appended += [
            f"{_bare_key(k)} = {_format_value(v)}{eol}"
            for k, v in data[name].items()
            if f"{name}.{k}" not in subtables
        ]
    return appended


def _is_subtable(name: str | None) -> bool:
    """Whether a [section] header of the file is a table value of a key: [data.options]."""
    if name is None or "." not in name:
        return False
    section, key, *_ = name.split(".")
    spec = FIELD_BY_PATH.get(f"{section}.{key}")
    return spec is not None and spec.kind in _TABLES


def _walk(data: dict[str, Any], name: str) -> Any:
    """The value at a dotted section name (`data.options`), or None."""
    value: Any = data
    for part in name.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def _refuse_dotted_sections(top: _Section, data: dict[str, Any]) -> None:
    """Keys above the first header that set a section (`optim.lr = 0.1`, `run = {...}`):
    editing them in place is beyond this editor; moving them would rewrite the file."""
    for name in top.keys:
        if name.partition(".")[0] in data:
            raise EditError(f"it sets {name} above the first [section]")


def _differs(table: Any, name: str, value: Any) -> bool:
    # 1 == 1.0: a float key written as an integer keeps its text when unchanged
    return not isinstance(table, dict) or table.get(name) != value


def _without_empty(data: dict[str, Any]) -> dict[str, Any]:
    """An empty [section] (its keys commented out) means the same as none."""
    return {k: v for k, v in data.items() if v != {}}


def _section_order(data: dict[str, Any]) -> list[str]:
    return [s for s in SECTIONS if s in data] + [s for s in data if s not in SECTIONS]


def _format_value(value: Any) -> str:
    """A value on one line: a list as [1, 2], a table as an inline { size = 64 }."""
    if isinstance(value, list):
        return "[" + ", ".join(_format_value(v) for v in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = (f"{_bare_key(k)} = {_format_value(v)}" for k, v in value.items())
        return "{ " + ", ".join(items) + " }"
    return _scalar(value)


def render_profile(data: dict[str, dict[str, Any]], original: str | None = None) -> str:
    """TOML text for `data`: the original file edited in place, or a new file.

    A new file is one value a line, sections in the schema's order. Raises EditError
    when the original cannot be edited in place; the text always reads back to `data`.
    """
    return edit_profile_text(original or "", data)


def _bare_key(name: str) -> str:
    return (
        name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else tomli_w.dumps({name: 0}).split(" =")[0]
    )


def write_atomic(path: Path, text: str, *, new: bool = False) -> None:
    """Replace the file at `path` with `text` at once: a crash leaves the old file or the
    new one, never half of one. The mode (and owner, where allowed) of the old file is
    kept; through a symlink, the target is written and the link stays. `new`: refuse to
    replace a file that exists. Raises OSError.
    """
    target = Path(os.path.realpath(path))
    try:
        old = os.stat(target)
    except FileNotFoundError:
        old = None
    if new and old is not None:
        raise FileExistsError(17, "the file exists", str(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".mpt-save-{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        if old is not None:
            os.chmod(tmp, old.st_mode & 0o7777)
            with contextlib.suppress(OSError):  # not allowed: the saver owns it now
                os.chown(tmp, old.st_uid, old.st_gid)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # the rename survives a power cut once synced
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
