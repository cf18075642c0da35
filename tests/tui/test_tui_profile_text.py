"""Between the form and the file: field text <-> values, and a save a person can still read."""

from __future__ import annotations

import tomllib

import pytest

from engine.profile import FIELD_BY_PATH, Profile, profile_from_dict, profile_from_toml
from tui.profile_text import (
    MISSING,
    field_text,
    form_dict,
    parse_field,
    render_profile,
    save_dict,
    values_of,
)


def spec(path: str):
    return FIELD_BY_PATH[path]


@pytest.mark.parametrize(
    ("path", "text", "value"),
    [
        ("run.epochs", "12", 12),
        ("optim.lr", "0.05", 0.05),
        ("optim.lr", "1e-3", 0.001),
        ("model.hidden", "[128, 64]", [128, 64]),
        ("model.hidden", "128, 64", [128, 64]),
        ("optim.betas", "0.9, 0.99", [0.9, 0.99]),
        ("run.name", " spaced ", " spaced "),
        ("run.max_steps", "", MISSING),
        ("run.epochs", "ten", "ten"),  # left for the engine to refuse
        ("run.epochs", "", ""),
    ],
)
def test_parse_field(path, text, value):
    assert parse_field(spec(path), text) == value


def test_what_cannot_parse_gets_the_engines_own_message():
    from engine.errors import ProfileError

    with pytest.raises(ProfileError) as e:
        profile_from_dict({"run": {"epochs": parse_field(spec("run.epochs"), "ten")}})
    assert e.value.problems[0].message == "must be an integer (got 'ten')"


def test_field_text_reads_back_to_the_same_value():
    for path, value in values_of(Profile()).items():
        s = spec(path)
        if s.kind in ("bool", "choice") or value is None:
            continue
        assert parse_field(s, field_text(s, value)) == value, path


def test_form_dict_nests_keys_and_drops_missing_ones():
    assert form_dict({"run.epochs": 3, "run.max_steps": MISSING, "optim.lr": 0.1}) == {
        "run": {"epochs": 3},
        "optim": {"lr": 0.1},
    }


def test_save_dict_keeps_what_differs_from_the_defaults_and_what_the_file_had():
    p = Profile()
    p.optim.lr = 0.5
    assert save_dict(p) == {"optim": {"lr": 0.5}}
    assert save_dict(p, {"run.epochs"}) == {"run": {"epochs": 10}, "optim": {"lr": 0.5}}


ORIGINAL = """\
# My profile.
# Two lines of header.

# the run itself
[run]
name = "mine"   # a name I like
epochs = 3

[optim]
# faster
lr = 1e-3
"""


def test_a_save_keeps_comments_order_and_untouched_lines():
    data = {"run": {"name": "mine", "epochs": 5}, "optim": {"lr": 0.001, "name": "adam"}}
    text = render_profile(data, ORIGINAL)
    assert text == (
        "# My profile.\n"
        "# Two lines of header.\n"
        "\n"
        "# the run itself\n"
        "[run]\n"
        'name = "mine"   # a name I like\n'
        "epochs = 5\n"
        "\n"
        "[optim]\n"
        "# faster\n"
        "lr = 1e-3\n"
        'name = "adam"\n'
    )
    assert tomllib.loads(text) == data


def test_a_new_profile_is_written_one_value_a_line_in_schema_order():
    data = {"optim": {"betas": [0.9, 0.95]}, "run": {"name": "new", "max_time": 60.0}}
    text = render_profile(data)
    assert text == ('[run]\nname = "new"\nmax_time = 60.0\n\n[optim]\nbetas = [0.9, 0.95]\n')
    assert profile_from_toml(text).optim.betas == [0.9, 0.95]
