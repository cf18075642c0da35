"""`mpt init`: a commented starter profile, written from the schema.

Every section and key appears, each with its help text as a comment. Keys that the
starting profile sets (or that a first run usually changes) are written as values;
the rest are commented out with their defaults, ready to uncomment. The text reads
back to the starting profile, with `run.name` set to the new name.
"""

from __future__ import annotations

import math
import os
import re
import textwrap
from pathlib import Path
from typing import Any

import tomli_w

from engine.errors import MptError
from engine.profile import (
    ESSENTIAL_KEYS,
    FIELDS,
    NAME_MAX,
    SECTIONS,
    Profile,
    describe_value,
    load_profile,
    name_bytes,
    profile_from_toml,
)

# Optional keys have no default to show: a sample value to uncomment.
EXAMPLES = {
    "run.max_steps": 1000,
    "run.max_time": 3600.0,
    "schedule.max_lr": 0.1,
    "early_stop.stop_above": 0.99,
    "early_stop.stop_below": 0.01,
}


def _value(v: Any) -> str:
    if isinstance(v, float) and math.isfinite(v):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):  # an inline table on the key's own line: options = { size = 64 }
        items = ", ".join(f"{_key(k)} = {_value(x)}" for k, x in v.items())
        return "{ " + items + " }" if items else "{}"
    return tomli_w.dumps({"v": v})[4:].strip()


def _key(k: str) -> str:
    """A table key as TOML writes it: bare when it can be, else a quoted string."""
    return k if re.fullmatch(r"[A-Za-z0-9_-]+", k) else tomli_w.dumps({"v": k})[4:].strip()


def starter_profile(base: Profile | None = None, name: str = "starter", source: str = "") -> str:
    """The commented TOML text of `base` (the defaults when None) under the run name `name`."""
    base = base or Profile()
    default = Profile()
    head = [
        f"# mpt profile {name!r}"
        + (f", started from {source}" if source else ", started from the defaults")
        + ".",
        "# Check it with: mpt validate <this file>; run it with: mpt run <this file>",
        "# Commented keys show their default; uncomment one to change it.",
    ]
    lines = head
    for section in SECTIONS:
        lines += ["", f"[{section}]"]
        for spec in (f for f in FIELDS if f.section == section):
            value = getattr(getattr(base, section), spec.name)
            if spec.path == "run.name":
                value = name
            wrapped = textwrap.wrap(spec.help, width=86)
            if spec.choices:
                wrapped.append("One of: " + ", ".join(spec.choices) + ".")
            lines += [f"# {w}" for w in wrapped]
            if value is None:
                example = EXAMPLES.get(spec.path, 1)
                lines.append(f"# {spec.name} = {_value(example)}")
                continue
            changed = value != getattr(getattr(default, section), spec.name)
            prefix = "" if changed or spec.path in ESSENTIAL_KEYS else "# "
            lines.append(f"{prefix}{spec.name} = {_value(value)}")
    return "\n".join(lines) + "\n"


def starter_path(name: str) -> tuple[Path, str]:
    """(file, run name): a bare NAME goes to profiles/NAME.toml; a path is taken as is."""
    if name.endswith(".toml") or "/" in name or os.sep in name:
        path = Path(name).expanduser()
        return path, path.stem
    return Path("profiles") / f"{name}.toml", name


def init_profile(name: str, base_file: Path | None = None, force: bool = False) -> str:
    """`mpt init`: write the starter profile; returns what to print. Raises MptError."""
    path, run_name = starter_path(name)
    if not run_name or run_name in (".", ".."):
        raise MptError(f"{describe_value(name)}: give the profile a name, e.g. mpt init my-run")
    if name_bytes(path.name) > NAME_MAX:  # the file's name, and the run's folder's
        raise MptError(
            f"{describe_value(name)}: the name is too long for a file ({name_bytes(path.name)} "
            f"bytes, at most {NAME_MAX}); choose a shorter name"
        )
    base = load_profile(base_file) if base_file is not None else None
    text = starter_profile(base, run_name, str(base_file) if base_file else "")
    profile_from_toml(text, str(path))  # it must read back: a bug here, not the user's
    if path.is_dir():
        raise MptError(f"{path}: is a folder; give a file name ending in .toml")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w" if force else "x", encoding="utf-8") as f:  # x: never overwrite
            f.write(text)
    except FileExistsError:
        raise MptError(
            f"{path} already exists; choose another name, or pass --force to overwrite it"
        ) from None
    except OSError as e:
        raise MptError(f"{path}: cannot write it ({e.strerror})") from None
    return f"wrote {path}; check it with: mpt validate {path}, then: mpt run {path}"
