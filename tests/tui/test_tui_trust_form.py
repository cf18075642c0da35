"""Issue 13, group 2: ctrl+s in the profile form never destroys the file.

A file the form could not read is kept byte for byte (and the form says why); a file
changed on disk since it was opened is kept; a save edits only the changed values' text.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from textual.widgets import Input
from tui_helpers import run_async, wait_for

from engine.profile import load_profile
from engine.starter import init_profile
from tui.app import MptApp
from tui.screens.profile_form import ProfileFormScreen

BAD_FILES = {
    "syntax.toml": b'[run]\nname = "mine"\nepochs = 3\n[optim\nlr = 0.1\n',
    "latin1.toml": '[run]\nname = "caf\xe9"\n'.encode("latin-1"),
    "folder.toml": None,  # a folder named like a profile
    "fifo.toml": "fifo",  # reading it would block the app
}


def status(app) -> str:
    return str(app.screen.query_one("#status").render())


async def open_form(pilot, app) -> ProfileFormScreen:
    await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
    return app.screen


async def set_text(pilot, form: ProfileFormScreen, path: str, text: str) -> None:
    form.show_section(path.partition(".")[0], focus=path)
    await pilot.pause()
    form.row(path).control.value = text
    await pilot.pause()
    await wait_for(pilot, lambda: form.row(path).value == int(text))  # each is an int here


def make_bad(path: Path, content: bytes | str | None) -> None:
    if content == "fifo":
        os.mkfifo(path)
    elif content is None:
        path.mkdir()
        (path / "inside.txt").write_text("mine\n")
    else:
        path.write_bytes(content)


def snapshot(path: Path) -> object:
    if path.is_fifo():
        return "fifo"
    return sorted(p.name for p in path.iterdir()) if path.is_dir() else path.read_bytes()


@pytest.mark.parametrize("name", list(BAD_FILES))
@pytest.mark.timeout(60)
@run_async
async def test_ctrl_s_keeps_a_file_the_form_could_not_read_and_says_why(workdir: Path, name):
    path = Path("profiles") / name
    make_bad(path, BAD_FILES[name])
    before = snapshot(path)
    app = MptApp("profiles", "runs", open_profile=str(path))
    async with app.run_test() as pilot:
        form = await open_form(pilot, app)
        opened = status(app)
        await set_text(pilot, form, "run.epochs", "4")  # even after an edit
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert snapshot(path) == before
        assert f"could not read the file {path}" in opened
        assert "ctrl+s will not overwrite it" in opened
        shown = status(app)
        assert f"not saved: {path} could not be read" in shown and "kept as it is" in shown
        assert "F2 saves the form as a new file" in shown
        await pilot.press("f2")  # a new file is still fine
        await wait_for(pilot, lambda: app.screen is not form)
        app.screen.query_one("#name", Input).value = "rescued.toml"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is form)
        assert "saved profiles/rescued.toml" in status(app)
    assert snapshot(path) == before
    assert load_profile("profiles/rescued.toml").run.epochs == 4


@run_async
async def test_a_file_with_a_bom_opens_and_saves_with_its_bom(workdir: Path):
    path = Path("profiles/bom.toml")
    text = '# mine\r\n[run]\r\nname = "bom"   # kept\r\nepochs = 3\r\n'
    path.write_bytes(b"\xef\xbb\xbf" + text.encode())
    app = MptApp("profiles", "runs", open_profile=str(path))
    async with app.run_test() as pilot:
        form = await open_form(pilot, app)
        assert form.row("run.epochs").value == 3 and "could not read" not in status(app)
        await pilot.press("ctrl+s")  # unchanged: byte for byte the same
        await pilot.pause()
        assert path.read_bytes() == b"\xef\xbb\xbf" + text.encode()
        await set_text(pilot, form, "run.epochs", "8")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert f"saved {path}" in status(app)
    assert path.read_bytes() == b"\xef\xbb\xbf" + text.replace("epochs = 3", "epochs = 8").encode()


@run_async
async def test_a_file_changed_on_disk_since_it_was_opened_is_not_clobbered(workdir: Path):
    path = Path("profiles/quick.toml")
    app = MptApp("profiles", "runs", open_profile=str(path))
    async with app.run_test() as pilot:
        form = await open_form(pilot, app)
        await set_text(pilot, form, "run.epochs", "9")
        theirs = path.read_text().replace("lr = 0.001", "lr = 0.005  # edited in vim")
        path.write_text(theirs)
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert f"not saved: {path} changed on disk since the form read it" in status(app)
        assert form.dirty
    assert path.read_text() == theirs


@run_async
async def test_saving_an_init_profile_changes_only_the_changed_lines(workdir: Path):
    path = Path("profiles/my-run.toml")
    init_profile(str(path))
    before = path.read_text().splitlines()
    os.chmod(path, 0o640)
    link = Path("profiles/link.toml")
    link.symlink_to("my-run.toml")
    app = MptApp("profiles", "runs", open_profile=str(link))
    async with app.run_test() as pilot:
        form = await open_form(pilot, app)
        await set_text(pilot, form, "run.epochs", "3")  # a value the file sets
        await set_text(pilot, form, "checkpoint.keep_last", "5")  # a commented default
        await set_text(pilot, form, "schedule.warmup_steps", "10")
        await pilot.press("ctrl+s")
        await pilot.pause()
        assert f"saved {link}" in status(app)
    assert link.is_symlink() and oct(path.stat().st_mode & 0o777) == "0o640"
    after = path.read_text().splitlines()
    assert len(after) == len(before) == 249  # the starter: [task], [notify], mlflow, wandb, ema
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert changed == [
        ("epochs = 10", "epochs = 3"),
        ("# warmup_steps = 0", "warmup_steps = 10"),
        ("# keep_last = 3", "keep_last = 5"),
    ]
