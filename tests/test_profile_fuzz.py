"""Mutated profiles, hundreds of them: the loader accepts a profile or raises ProfileError.

Each example starts from a valid profile (a shipped one, or keys drawn from the schema) and
breaks it: a value of another type, a renamed or unknown key, a section that is not a
table, TOML text cut, spliced or sprinkled with syntax, a `--set` of any shape. Whatever
comes out, nothing but the project's own error escapes, its message names the file and
stays on one line per problem, and an accepted profile writes back to the same profile.
"""

from __future__ import annotations

import datetime as dt
import os
import string

import pytest
import tomli_w
from conftest import PROFILES, REPO
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.errors import ProfileError
from engine.profile import (
    FIELDS,
    SECTIONS,
    apply_overrides,
    load_profile,
    profile_from_dict,
    profile_from_toml,
)

SOURCE = "fuzz.toml"
SHIPPED = [p.read_text() for p in sorted(PROFILES.glob("*.toml"))]
KEYS = [f.path for f in FIELDS]
# 400 examples per test in the suite (1,600 in all, a few seconds); more for a long
# shake-out:
# MPT_FUZZ_EXAMPLES=50000 python -m pytest tests/test_profile_fuzz.py
FUZZ = settings(
    max_examples=int(os.environ.get("MPT_FUZZ_EXAMPLES", "400")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# Any value TOML can hold, nested a little, with the edges that break naive code: huge
# integers, NaN and infinity, NUL and control characters, dates, empty containers.
scalars = st.one_of(
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["", "~nosuchuser/x", "a\x00b", "\n", "..", "/", "cuda:99", "mnsit"]),
    st.dates(),
    st.datetimes(timezones=st.sampled_from([None, dt.UTC])),
    st.times(),
)
toml_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=6,
)
# What a person might type for a key: a real one, one a letter off, or anything.
names = st.one_of(
    st.sampled_from([f.name for f in FIELDS]),
    st.sampled_from([f.name for f in FIELDS]).map(lambda n: n[:-1] or "x"),
    st.text(min_size=1, max_size=10),
)
sections = st.one_of(st.sampled_from(list(SECTIONS)), st.text(min_size=1, max_size=8))


def check(load) -> None:
    """Call `load()`; it returns a Profile that round-trips, or raises a clean ProfileError."""
    try:
        profile = load()
    except ProfileError as e:
        message = str(e)
        assert message and all(line.startswith(e.source) for line in message.splitlines())
        assert len(message.splitlines()) == len(e.problems)
        assert "Traceback (most recent call last)" not in message
        return
    assert profile_from_toml(profile.to_toml()) == profile


@st.composite
def valid_dicts(draw) -> dict:
    """A valid start: a shipped profile, or schema keys set to their own defaults."""
    if draw(st.booleans()):
        import tomllib

        return tomllib.loads(draw(st.sampled_from(SHIPPED)))
    data: dict = {}
    for spec in draw(st.lists(st.sampled_from(FIELDS), max_size=8, unique_by=lambda f: f.path)):
        if spec.default is not None:
            data.setdefault(spec.section, {})[spec.name] = spec.default
    return data


@st.composite
def mutated_dicts(draw) -> dict:
    data = draw(valid_dicts())
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["value", "key", "section", "table", "drop"]))
        if how == "value":  # any key of the schema, any value
            section, name = draw(st.sampled_from(KEYS)).split(".")
            data.setdefault(section, {})
            if isinstance(data[section], dict):
                data[section][name] = draw(toml_values)
        elif how == "key":  # an unknown or misspelled key
            section = draw(sections)
            if isinstance(data.setdefault(section, {}), dict):
                data[section][draw(names)] = draw(toml_values)
        elif how == "section":  # an unknown section, or a known one that is not a table
            data[draw(sections)] = draw(toml_values)
        elif how == "table":
            data[draw(sections)] = draw(st.dictionaries(names, toml_values, max_size=3))
        elif data:
            data.pop(draw(st.sampled_from(sorted(data))))
    return data


@FUZZ
@given(mutated_dicts())
def test_a_profile_with_mutated_keys_types_and_values_loads_or_is_refused_cleanly(data):
    check(lambda: profile_from_dict(data, SOURCE))


# TOML syntax: the characters that make and break it, and a little of everything else.
SYNTAX = "[]{}=\"'#.,:+-_\n\t \\"
snippets = st.one_of(
    st.text(alphabet=SYNTAX + string.ascii_letters + string.digits, max_size=12),
    st.text(max_size=6),
    st.sampled_from(
        ["[run]", "[[run]]", "[run.x]", "x = ", " = 1", '"""', "'''", "\\u0000", "inf", "nan",
         "1979-05-27T07:32:00Z", "0x1F", "1_000", "[" * 50, "{" * 30, "\r\n", "\ufeff"]
    ),
)  # fmt: skip


@st.composite
def mutated_texts(draw) -> str:
    text = (
        draw(st.sampled_from(SHIPPED))
        if draw(st.booleans())
        else tomli_w.dumps(draw(valid_dicts()))
    )
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        how = draw(st.sampled_from(["insert", "delete", "replace", "cut", "duplicate_line"]))
        if how == "insert":
            text = text[:at] + draw(snippets) + text[at:]
        elif how == "delete":
            text = text[:at] + text[at + draw(st.integers(1, 20)) :]
        elif how == "replace":
            text = text[:at] + draw(snippets) + text[at + draw(st.integers(1, 10)) :]
        elif how == "cut":  # a file written halfway
            text = text[:at]
        else:
            lines = text.splitlines(keepends=True) or [""]
            i = draw(st.integers(0, len(lines) - 1))
            text = "".join(lines[: i + 1] + lines[i:])
    return text


@FUZZ
@given(mutated_texts())
def test_a_profile_with_broken_toml_text_loads_or_is_refused_cleanly(text):
    check(lambda: profile_from_toml(text, SOURCE))


@pytest.fixture(scope="module")
def profile_file(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz") / SOURCE


@FUZZ
@given(
    raw=st.one_of(
        st.binary(max_size=200),
        mutated_texts().map(lambda t: t.encode("utf-8", "surrogatepass")),
        st.sampled_from(SHIPPED).map(str.encode).map(lambda b: b[: len(b) // 2] + b"\xff\xfe"),
    )
)
def test_a_profile_file_of_any_bytes_loads_or_is_refused_cleanly(raw, profile_file, monkeypatch):
    monkeypatch.chdir(REPO)  # the shipped npz profile names its data relative to here
    profile_file.write_bytes(raw)
    check(lambda: load_profile(profile_file))


overrides = st.one_of(
    st.tuples(st.sampled_from(KEYS), st.text(max_size=15)).map("=".join),
    st.tuples(st.sampled_from(KEYS), toml_values.map(lambda v: tomli_w.dumps({"v": v})[4:-1])).map(
        "=".join
    ),
    st.text(alphabet=SYNTAX + string.ascii_lowercase + "=", max_size=20),
    st.text(max_size=20),
)


@FUZZ
@given(valid_dicts(), st.lists(overrides, min_size=1, max_size=4))
def test_any_set_override_loads_or_is_refused_cleanly(data, items):
    def load():
        try:
            merged = apply_overrides(data, items)
        except ProfileError as e:
            assert e.source == "--set"
            raise ProfileError(SOURCE, e.problems) from None  # checked like the others
        return profile_from_dict(merged, SOURCE)

    check(load)
