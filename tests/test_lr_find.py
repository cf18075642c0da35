"""`mpt lr-find`: the lr sweep on the quickstart (digits, a small MLP, the CPU), its
suggestion, `--apply`, and the sentences for a bad range and a hopeless one."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from durable_helpers import REPO, mpt

from engine.errors import MptError
from engine.lr_find import apply_lr

QUICKSTART = REPO / "profiles" / "quickstart.toml"
STEPS = "60"  # enough for the curve to fall and diverge on digits, in about a second


def _profile(folder: Path) -> Path:
    """A copy of the quickstart, with an inline comment on its lr line."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "quickstart.toml"
    text = QUICKSTART.read_text().replace("lr = 0.001\n", "lr = 0.001  # Adam's default\n")
    assert "# Adam's default" in text
    path.write_text(text)
    return path


def _number(pattern: str, text: str) -> float | None:
    found = re.search(pattern, text)
    return float(found.group(1)) if found else None


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """One sweep of the quickstart copy: (its folder, the profile, the result)."""
    folder = tmp_path_factory.mktemp("lr-find")
    path = _profile(folder)
    return folder, path, mpt("lr-find", path.name, "--steps", STEPS, cwd=folder)


def test_lr_find_suggests_an_lr_in_the_sweep_below_its_divergence_and_writes_no_run(first):
    folder, path, result = first
    assert result.returncode == 0, result.stderr
    suggestion = _number(r"suggestion: optim\.lr = (\S+)", result.stdout)
    assert suggestion is not None, result.stdout
    assert 1e-7 <= suggestion <= 10
    diverged = _number(r"diverged at lr (\S+)", result.stdout)
    assert diverged is not None and suggestion < diverged, result.stdout
    assert re.search(r"the range it trusts: \S+ \.\. \S+", result.stdout)
    assert "\x1b[" not in result.stdout  # off a terminal: the table, no chart
    assert sorted(p.name for p in folder.iterdir()) == ["quickstart.toml"]  # no runs/
    assert "lr = 0.001  # Adam's default" in path.read_text()  # no --apply: untouched


def test_lr_find_is_deterministic_with_the_seed(first, tmp_path):
    _, _, result = first
    again = mpt("lr-find", _profile(tmp_path).name, "--steps", STEPS, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout == result.stdout


def test_apply_writes_the_suggestion_as_optim_lr_and_keeps_the_rest_of_the_file(tmp_path):
    path = _profile(tmp_path)
    before = path.read_text()
    result = mpt("lr-find", path.name, "--steps", STEPS, "--apply", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    suggestion = _number(r"suggestion: optim\.lr = (\S+)", result.stdout)
    assert f"optim.lr = {suggestion!r} written (was 0.001)" in result.stdout
    expected = before.replace("lr = 0.001  #", f"lr = {suggestion!r}  #")
    assert path.read_text() == expected  # one value changed; comments and layout kept


def test_apply_adds_the_key_or_the_section_a_file_lacks(tmp_path):
    path = tmp_path / "p.toml"
    path.write_bytes(b'# mine\r\n[run]\r\nseed = 1 # kept\r\n\r\n[optim]\r\nname = "adam"\r\n')
    apply_lr(path, 0.003)
    assert path.read_bytes() == (
        b'# mine\r\n[run]\r\nseed = 1 # kept\r\n\r\n[optim]\r\nname = "adam"\r\nlr = 0.003\r\n'
    )
    path.write_text("[run]\nseed = 1\n")
    apply_lr(path, 0.02)
    assert path.read_text() == "[run]\nseed = 1\n\n[optim]\nlr = 0.02\n"


@pytest.mark.parametrize(
    ("args", "sentence"),
    [
        (["--start", "1", "--end", "0.1"], "mpt lr-find: --start (1) must be below --end (0.1)"),
        (["--set", "optim.lr=-1"], "quickstart.toml: optim.lr: must be > 0 (got -1)"),
    ],
)
def test_a_bad_range_or_profile_is_exit_2_with_one_sentence(tmp_path, args, sentence):
    result = mpt("lr-find", _profile(tmp_path).name, *args, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == sentence
    assert not (tmp_path / "runs").exists()


def test_a_hopeless_sweep_reports_its_divergence_in_one_sentence(tmp_path):
    path = _profile(tmp_path)
    result = mpt(
        "lr-find", path.name, "--start", "10", "--end", "1000", "--steps", "20", cwd=tmp_path
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith("mpt lr-find: the loss diverged at lr ")
    assert result.stderr.strip().endswith("try a lower --start")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "suggestion" not in result.stdout


def test_apply_refuses_a_file_it_cannot_edit_in_place_and_leaves_it(tmp_path):
    path = tmp_path / "p.toml"
    path.write_text("optim.lr = 0.1  # dotted, above any [section]\n")
    with pytest.raises(MptError, match=r"p\.toml: optim\.lr cannot be set in place .*by hand"):
        apply_lr(path, 0.02)
    assert path.read_text() == "optim.lr = 0.1  # dotted, above any [section]\n"
