"""Issue 13, groups 2 and 12: a save keeps every byte the user did not change, and a
profile's errors name keys and values briefly (a BOM, a long run.name, a 5 MB value).

The save is the form's: `render_profile(save_dict(profile, file keys), original text)`.
"""

from __future__ import annotations

import difflib
import os
import time
import tomllib
from pathlib import Path

import pytest
from conftest import run_mpt

from engine.errors import ProfileError
from engine.profile import (
    FIELD_BY_PATH,
    apply_overrides,
    load_profile,
    profile_from_dict,
    read_profile_file,
)
from engine.starter import init_profile
from tui.profile_text import EditError, render_profile, save_dict

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "profiles").glob("*.toml"))


def init_texts(tmp_path: Path) -> dict[str, str]:
    """`mpt init` output: from the defaults, and --from each shipped profile."""
    texts = {}
    for base in [None, *SHIPPED]:
        name = f"from-{base.stem}" if base else "my-run"
        out = tmp_path / f"{name}.toml"
        init_profile(str(out), base)
        texts[f"init {name}"] = out.read_text(encoding="utf-8")
    return texts


@pytest.fixture
def every_profile_text(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.chdir(REPO)  # the shipped profiles name their data relative to the checkout
    texts = {p.name: p.read_text(encoding="utf-8") for p in SHIPPED}
    return texts | init_texts(tmp_path)


def saved(original: str, changes: dict[str, object]) -> str:
    """What the form writes for `original` with some keys set (None: emptied)."""
    data = tomllib.loads(original.removeprefix("\ufeff"))
    file_keys = {f"{s}.{k}" for s, t in data.items() for k in t}
    for path, value in changes.items():
        section, _, name = path.partition(".")
        table = data.setdefault(section, {})
        if value is None:
            table.pop(name, None)
        else:
            table[name] = value
    known = {
        s: {k: v for k, v in t.items() if f"{s}.{k}" in FIELD_BY_PATH} for s, t in data.items()
    }
    return render_profile(save_dict(profile_from_dict(known), file_keys), original)


def changed_lines(before: str, after: str) -> tuple[list[str], list[str]]:
    """(lines taken out, lines put in), in order."""
    out, into = [], []
    a, b = before.splitlines(), after.splitlines()
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op != "equal":
            out += a[i1:i2]
            into += b[j1:j2]
    return out, into


def test_an_unchanged_save_is_byte_identical_for_every_shipped_and_init_profile(
    every_profile_text,
):
    assert len(every_profile_text) == 2 * len(SHIPPED) + 1
    for name, text in every_profile_text.items():
        assert saved(text, {}) == text, name


def test_a_change_touches_only_the_changed_values_text(every_profile_text):
    for name, text in every_profile_text.items():
        text = text.replace("\nepochs = ", "\nepochs = 3  # a comment of mine\nxepochs = ", 1)
        text = text.replace("\nxepochs = ", "\n# was: ", 1)  # a key line with an inline comment
        after = saved(text, {"run.epochs": 7, "checkpoint.keep_last": 9, "train.grad_accum": 2})
        out, into = changed_lines(text, after)
        keep_last_before = [x for x in text.splitlines() if "keep_last =" in x]
        assert "epochs = 3  # a comment of mine" in out, name
        assert "epochs = 7  # a comment of mine" in into, name  # the comment stays
        assert "keep_last = 9" in into and "grad_accum = 2" in into, name
        expected_out = {"epochs = 3  # a comment of mine", *keep_last_before}
        expected_out |= {x for x in text.splitlines() if x.startswith("# grad_accum =")}
        assert set(out) <= expected_out, (name, out)
        assert set(into) <= {
            "epochs = 7  # a comment of mine",
            "keep_last = 9",
            "grad_accum = 2",
            "",
            "[checkpoint]",
            "[train]",
        }, (name, into)
        assert [x for x in into if x and not x.startswith("[")] == [
            "epochs = 7  # a comment of mine",
            "grad_accum = 2",
            "keep_last = 9",
        ], name
        for line in text.splitlines():  # every comment and header is still there
            if line.lstrip().startswith(("#", "[")) and line not in out:
                assert line in after.splitlines(), (name, line)
        assert load_profile_text(after).checkpoint.keep_last == 9


def load_profile_text(text: str):
    return profile_from_dict(tomllib.loads(text.removeprefix("\ufeff")))


INIT_LIKE = """\
# header comment

[run]
# The name.
name = "mine"   # a name I like
# epochs = 10

[optim]
lr = 0.1

# about the schedule
[schedule]
name = "step"
hidden_list = 0
"""


def test_a_commented_default_is_uncommented_where_it_stands_and_a_new_key_ends_its_section():
    after = saved(INIT_LIKE.replace("hidden_list = 0\n", ""), {"run.epochs": 4, "optim.eps": 0.5})
    assert after == INIT_LIKE.replace("hidden_list = 0\n", "").replace(
        "# epochs = 10", "epochs = 4"
    ).replace("lr = 0.1\n", "lr = 0.1\neps = 0.5\n")


def test_an_emptied_optional_key_and_an_unknown_key_are_commented_out_not_deleted():
    text = INIT_LIKE.replace("[optim]\n", "[optim]\nmomentum = 0.5 # mine\n").replace(
        "# epochs = 10", "max_steps = 100"
    )
    after = saved(text, {"run.max_steps": None})
    assert "# max_steps = 100\n" in after
    assert "# hidden_list = 0\n" in after  # unknown to the schema: kept as a comment
    assert "momentum = 0.5 # mine\n" in after
    assert len(after.splitlines()) == len(text.splitlines())
    assert "max_steps" not in tomllib.loads(after)["run"]


def test_a_bom_crlf_line_ends_and_no_final_newline_are_kept():
    text = "\ufeff" + INIT_LIKE.replace("hidden_list = 0\n", "").replace("\n", "\r\n")
    assert saved(text, {}) == text
    after = saved(text.removesuffix("\r\n"), {"optim.lr": 0.2, "log.csv": True})
    assert after.startswith("\ufeff# header comment\r\n")
    assert "lr = 0.2\r\n" in after and after.endswith(
        'name = "step"\r\n\r\n[log]\r\ncsv = true\r\n'
    )
    assert "\n" not in after.replace("\r\n", "")


def test_a_multi_line_value_and_a_hash_inside_a_string_are_followed():
    text = '[run]\nname = "a#b"  # c\n\n[model]\nhidden = [\n  64,  # first\n  32,\n]\n'
    assert saved(text, {}) == text
    after = saved(text, {"run.name": "x#y", "model.hidden": [16]})
    assert after == '[run]\nname = "x#y"  # c\n\n[model]\nhidden = [16]\n'


def test_a_layout_the_editor_cannot_follow_is_refused_not_rewritten():
    text = 'run.name = "dotted"\noptim = {lr = 0.1}\n'
    with pytest.raises(EditError):
        saved(text, {"run.epochs": 3})


def test_a_new_file_lists_its_sections_in_schema_order():
    text = render_profile({"optim": {"lr": 0.5}, "run": {"name": "n"}})
    assert text == '[run]\nname = "n"\n\n[optim]\nlr = 0.5\n'


# ---- group 12: the engine's reading and its messages ----
def test_a_profile_with_a_bom_reads_like_one_without(tmp_path: Path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf" + (REPO / "profiles/quickstart.toml").read_bytes())
    assert load_profile(path) == load_profile(REPO / "profiles/quickstart.toml")
    assert read_profile_file(path)["run"]["name"] == "quickstart"


@pytest.mark.parametrize("name", ["a" * 256, "é" * 128, "x" * 300], ids=["256", "é128", "300"])
def test_a_run_name_too_long_for_a_folder_is_refused_by_its_key(name: str):
    with pytest.raises(ProfileError) as e:
        profile_from_dict({"run": {"name": name}})
    assert [p.key for p in e.value.problems] == ["run.name"]
    assert "too long for a folder name" in str(e.value) and "at most 255" in str(e.value)
    assert len(str(e.value)) < 300


def test_a_run_name_of_255_bytes_is_fine():
    assert profile_from_dict({"run": {"name": "a" * 253 + "é"}}).run.name.endswith("é")


BIG = "v" * 5_000_000


@pytest.mark.parametrize(
    "data",
    [
        {"run": {BIG: 1}},  # an unknown key
        {BIG: {"a": 1}},  # an unknown section
        {"data": {"dataset": BIG}},  # a choice, with did-you-mean
        {"model": {"arch": BIG}},  # did-you-mean of the architectures
        {"run": {"epochs": BIG}},  # a type error
        {"model": {"hidden": [BIG]}},  # inside a list
        {"model": {"hidden": list(range(100_000))}},  # a long list
        {"run": {"epochs": [[[BIG]]]}},
        {"run": {"device": BIG}},
        {"run": BIG},  # a section that is not a table
        {"run": {"epochs": {BIG: BIG}}},  # an inline table
    ],
    ids=lambda data: repr(data)[:30],
)
def test_a_huge_key_or_value_is_cut_in_the_message_and_answered_at_once(data):
    start = time.monotonic()
    with pytest.raises(ProfileError) as e:
        profile_from_dict(data)
    assert time.monotonic() - start < 5.0
    for problem in e.value.problems:
        assert len(problem.key) <= 80 and len(problem.message) <= 300, problem


@pytest.mark.parametrize(
    "item",
    [f"run.{BIG}=1", f"run.epochs={BIG}", f"{BIG}", f"{BIG}=1"],
    ids=["key", "value", "no-equals", "section"],
)
def test_a_huge_set_item_is_cut_in_the_message(item: str):
    with pytest.raises(ProfileError) as e:
        profile_from_dict(apply_overrides({}, [item]))
    assert len(str(e.value)) < 400


def test_an_integer_of_thousands_of_digits_is_a_sentence_not_a_traceback(tmp_path: Path):
    path = tmp_path / "digits.toml"
    path.write_text("[run]\nepochs = " + "1" * 5000 + "\n")
    with pytest.raises(ProfileError, match="a number with too many digits"):
        load_profile(path)
    with pytest.raises(ProfileError) as e:
        load_profile(REPO / "profiles/quickstart.toml", ["run.epochs=" + "1" * 5000])
    assert [p.key for p in e.value.problems] == ["run.epochs"] and len(str(e.value)) < 300


def test_mpt_init_and_validate_refuse_a_name_too_long_in_one_short_sentence(tmp_path: Path):
    result = run_mpt("init", "d" * 1000, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "too long for a file (1005 bytes, at most 255)" in result.stderr
    assert len(result.stderr) < 300 and not list(tmp_path.iterdir())
    profile = tmp_path / "p.toml"
    profile.write_text('[run]\nname = "' + "n" * 300 + '"\n')
    result = run_mpt("validate", str(profile), cwd=tmp_path)
    assert result.returncode == 2 and "run.name: is too long for a folder name" in result.stderr


def test_a_fifo_or_a_device_as_the_profile_is_refused_without_hanging(tmp_path: Path):
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    result = run_mpt("validate", str(fifo), cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and "fifo.toml: the file is empty" in result.stderr
    result = run_mpt("validate", "/dev/zero", cwd=tmp_path, timeout=60)
    assert result.returncode == 2 and "/dev/zero: is a device, not a profile file" in result.stderr
