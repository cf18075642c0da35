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


# ---- the kinds of issue 15: names, lists of names, tables, weights ----


@pytest.mark.parametrize(
    ("path", "text", "value"),
    [
        ("data.dataset", "mypkg.data:make", "mypkg.data:make"),  # any import path: plain text
        ("task.loss", "auto", "auto"),
        ("task.metrics", '["mae", "r2"]', ["mae", "r2"]),
        ("task.metrics", "mae, r2", ["mae", "r2"]),  # quotes and brackets may be left out
        ("task.metrics", "[mae]", ["mae"]),
        ("task.metrics", "", []),
        ("model.freeze", "backbone., stem.", ["backbone.", "stem."]),
        ("data.options", '{ root = "/data/x", size = 64 }', {"root": "/data/x", "size": 64}),
        ("data.options", "size = 64", {"size": 64}),  # braces may be left out
        ("data.options", "", {}),
        ("optim.lr_mult", '{ "fc." = 10.0 }', {"fc.": 10.0}),
        ("task.class_weights", "balanced", "balanced"),
        ("task.class_weights", '"balanced"', "balanced"),
        ("task.class_weights", "1, 2.5", [1, 2.5]),
        ("task.class_weights", "", []),
        ("data.options", "size =", "size ="),  # left for the engine to refuse
        ("task.metrics", "[mae, r2", "[mae, r2"),
    ],
)
def test_parse_field_of_the_new_kinds(path, text, value):
    assert parse_field(spec(path), text) == value


@pytest.mark.parametrize(
    ("path", "value", "text"),
    [
        ("task.metrics", ["mae", "r2"], '["mae", "r2"]'),
        ("data.options", {"root": "/data/x", "size": 64}, '{ root = "/data/x", size = 64 }'),
        ("data.options", {}, "{}"),
        ("optim.lr_mult", {"fc.": 10.0}, '{ "fc." = 10.0 }'),
        ("model.options", {"weights": {"name": "x"}}, '{ weights = { name = "x" } }'),
        ("task.class_weights", "balanced", "balanced"),
        ("task.class_weights", [1.0, 2.0], "[1.0, 2.0]"),
        ("data.dataset", "mypkg.data:make", "mypkg.data:make"),
    ],
)
def test_field_text_of_the_new_kinds_reads_back(path, value, text):
    assert field_text(spec(path), value) == text
    assert parse_field(spec(path), text) == value


def test_a_bad_table_gets_the_engines_own_message():
    from engine.errors import ProfileError

    with pytest.raises(ProfileError) as e:
        profile_from_dict({"data": {"options": parse_field(spec("data.options"), "size =")}})
    assert e.value.problems[0].message.startswith("must be a table, e.g. { size = 64 }")


TASK_FILE = """\
[data]
dataset = "mypkg.data:make"  # my own
batch_size = 32

[data.options]
# where the files are
root = "/data/x"
size = 64

[task]
kind = "regression"
"""


def test_a_table_is_written_inline_on_its_keys_own_line():
    data = {"data": {"dataset": "mypkg.data:make", "options": {"size": 64}}}
    data["optim"] = {"lr_mult": {"fc.": 10.0}}
    data["task"] = {"metrics": ["mae", "r2"], "class_weights": "balanced"}
    text = render_profile(data)
    assert text == (
        "[data]\n"
        'dataset = "mypkg.data:make"\n'
        "options = { size = 64 }\n"
        "\n"
        "[optim]\n"
        'lr_mult = { "fc." = 10.0 }\n'
        "\n"
        "[task]\n"
        'metrics = ["mae", "r2"]\n'
        'class_weights = "balanced"\n'
    )
    assert tomllib.loads(text) == data


def test_an_inline_table_is_edited_where_it_stands():
    original = "[data]\noptions = { size = 64 }  # small\nbatch_size = 8\n"
    data = tomllib.loads(original)
    data["data"]["options"] = {"size": 128, "root": "/x"}
    assert render_profile(data, original) == (
        '[data]\noptions = { size = 128, root = "/x" }  # small\nbatch_size = 8\n'
    )


def test_a_sub_table_the_user_wrote_is_kept_and_edited_under_its_header():
    data = tomllib.loads(TASK_FILE)
    assert render_profile(data, TASK_FILE) == TASK_FILE  # unchanged: not rewritten inline
    data["data"]["options"]["size"] = 128
    data["data"]["options"]["crop"] = [8, 8]
    data["data"]["batch_size"] = 16
    text = render_profile(data, TASK_FILE)
    assert text == TASK_FILE.replace("batch_size = 32", "batch_size = 16").replace(
        "size = 64\n", "size = 128\ncrop = [8, 8]\n"
    )
    assert tomllib.loads(text) == data


def test_a_sub_table_emptied_in_the_form_is_commented_out_with_its_header():
    data = tomllib.loads(TASK_FILE)
    del data["data"]["options"]
    text = render_profile(data, TASK_FILE)
    assert '# [data.options]\n# where the files are\n# root = "/data/x"\n# size = 64\n' in text
    assert tomllib.loads(text) == data


def test_a_key_mpt_init_left_without_a_sample_value_is_set_where_it_stands():
    original = "[data]\n# Keyword arguments.\n# options = \nbatch_size = 8\n"
    data = {"data": {"options": {"size": 64}, "batch_size": 8}}
    assert render_profile(data, original) == (
        "[data]\n# Keyword arguments.\noptions = { size = 64 }\nbatch_size = 8\n"
    )


def new_profile_from_the_form_and_from_mpt_init(p: Profile) -> tuple[dict, dict]:
    from engine.profile import ESSENTIAL_KEYS
    from engine.starter import starter_profile

    form = render_profile(save_dict(p, ESSENTIAL_KEYS))
    assert profile_from_toml(form) == p
    init = tomllib.loads(starter_profile(p, p.run.name))
    return tomllib.loads(form), {s: t for s, t in init.items() if t}  # (all keys commented)


def test_a_new_profile_from_the_form_sets_the_keys_mpt_init_sets():
    p = Profile()
    p.run.name = "mine"
    p.task.kind, p.task.metrics, p.task.loss = "regression", ["mae", "r2"], "huber"
    p.data.dataset = "mypkg.data:make"
    p.early_stop.monitor = "val_r2"
    form, init = new_profile_from_the_form_and_from_mpt_init(p)
    assert form == init
    assert form["task"] == {"kind": "regression", "metrics": ["mae", "r2"], "loss": "huber"}


def test_a_new_profile_with_tables_from_the_form_sets_the_keys_mpt_init_sets():
    p = Profile()
    p.run.name = "mine"
    p.task.class_weights = "balanced"
    p.model.arch, p.model.options = "torchvision:resnet18", {"zero_init_residual": True}
    p.optim.lr_mult = {"fc.": 10.0, "layer4.0": 2}
    form, init = new_profile_from_the_form_and_from_mpt_init(p)
    assert form == init
