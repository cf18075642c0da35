"""Fixtures for the TUI tests: a working folder with profiles/, runs/, and small helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

# quickstart, made quick to test: no periodic checkpoints (each one fsyncs).
QUICK = """\
# A small digits run for the tests.
[run]
name = "quick"
epochs = 3
device = "cpu"

[data]
dataset = "digits"
batch_size = 32
val_fraction = 0.2

[optim]
name = "adam"
lr = 0.001

[train]
log_every = 5

[checkpoint]
every_epochs = 0
save_best = false
"""

# Long enough to pause, checkpoint and stop it by hand: thousands of logged steps.
LONG = """\
[run]
name = "long"
epochs = 200
device = "cpu"

[data]
dataset = "digits"
batch_size = 32
val_fraction = 0.2

[optim]
name = "adam"
lr = 0.001

[train]
log_every = 1

[checkpoint]
every_epochs = 0
save_best = false
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh folder with profiles/{quick,long,quickstart}.toml, made the working directory."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "quick.toml").write_text(QUICK)
    (profiles / "long.toml").write_text(LONG)
    (profiles / "quickstart.toml").write_text((REPO / "profiles" / "quickstart.toml").read_text())
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(autouse=True)
def _no_run_outlives_its_test():
    """A test that fails mid-run must not leave a trainer thread behind."""
    yield
    from tui.session import RunSession

    RunSession.stop_all(timeout=60)
