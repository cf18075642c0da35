"""The profile form: built from the engine's schema, validated as you type, saved as TOML."""

from __future__ import annotations

from pathlib import Path

from textual.widgets import Input, Select, Switch, TabbedContent
from tui_helpers import run_async, set_text, wait_for

from engine.profile import FIELDS, SECTIONS, load_profile, read_profile_file
from tui.app import MptApp
from tui.screens.confirm import ConfirmScreen
from tui.screens.profile_form import ProfileFormScreen
from tui.widgets.field import FieldRow


def form_app(path: str = "profiles/quick.toml") -> MptApp:
    return MptApp("profiles", "runs", open_profile=path)


@run_async
async def test_every_key_of_the_schema_has_a_field_of_its_kind(workdir: Path):
    app = form_app()
    async with app.run_test(size=(120, 40)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        rows = list(app.screen.query(FieldRow))
        assert [r.path for r in rows] == [f.path for f in FIELDS]
        for row in rows:
            expected = {"bool": Switch, "choice": Select}.get(row.spec.kind, Input)
            assert isinstance(row.control, expected), row.path
        tabs = app.screen.query_one("#sections", TabbedContent)
        assert [str(tabs.get_tab(f"section-{s}").label) for s in SECTIONS] == list(SECTIONS)
        # values from the file, defaults for the rest, help text under each
        assert app.screen.row("run.epochs").value == 3
        assert app.screen.row("optim.name").value == "adam"
        assert app.screen.row("data.hflip").value is False
        assert app.screen.row("run.max_steps").control.value == ""
        help_text = str(app.screen.row("optim.lr").query_one(".field-help").render())
        assert "Learning rate" in help_text and "default 0.01" in help_text


@run_async
async def test_a_bad_value_is_marked_at_once_with_the_engines_message(workdir: Path):
    app = form_app()
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        form = app.screen
        form.row("run.epochs").control.focus()
        await pilot.press("ctrl+a", "ctrl+k", "0")
        row = form.row("run.epochs")
        assert row.error == "must be >= 1 (got 0)"
        assert row.has_class("-invalid")
        assert "1 problem: run.epochs: must be >= 1 (got 0)" in str(
            form.query_one("#status").render()
        )
        await pilot.press("backspace", "5")
        assert row.error == ""
        assert str(form.query_one("#status").render()) == "valid"


@run_async
async def test_typing_text_in_a_number_field_shows_the_engines_message(workdir: Path):
    app = form_app()
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        await set_text(pilot, "optim.lr", "fast")
        assert app.screen.row("optim.lr").error == "must be a number (got 'fast')"


@run_async
async def test_save_writes_toml_that_reads_back_and_keeps_the_comments(workdir: Path):
    app = form_app()
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        await set_text(pilot, "run.epochs", "7")
        await set_text(pilot, "model.hidden", "64, 32")
        app.screen.row("data.hflip").control.value = True
        await pilot.pause()
        assert app.screen.dirty
        await pilot.press("ctrl+s")
        assert not app.screen.dirty
        assert "saved profiles/quick.toml" in str(app.screen.query_one("#status").render())
    text = Path("profiles/quick.toml").read_text()
    assert text.startswith("# A small digits run for the tests.\n")
    assert "epochs = 7\n" in text and "hidden = [64, 32]\n" in text and "hflip = true\n" in text
    assert 'name = "adam"\n' in text  # untouched lines stay as they were
    profile = load_profile("profiles/quick.toml")
    assert (profile.run.epochs, profile.model.hidden, profile.data.hflip) == (7, [64, 32], True)
    assert "eval_batch_size" not in text  # defaults nobody wrote are not dumped


@run_async
async def test_an_invalid_profile_is_not_saved(workdir: Path):
    before = Path("profiles/quick.toml").read_text()
    app = form_app()
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        await set_text(pilot, "data.batch_size", "-1")
        await pilot.press("ctrl+s")
        assert "cannot save: fix the 1 problem first" in str(
            app.screen.query_one("#status").render()
        )
    assert Path("profiles/quick.toml").read_text() == before


@run_async
async def test_save_as_creates_a_new_profile_and_leaves_the_old_one(workdir: Path):
    before = Path("profiles/quick.toml").read_text()
    app = form_app()
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        form = app.screen
        await set_text(pilot, "optim.lr", "0.02")
        await pilot.press("f2")
        await pilot.pause()
        name = app.screen.query_one("#name", Input)
        assert name.value == "quick-copy.toml"
        name.value = "faster"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is form)
        assert form.path == Path("profiles/faster.toml")
        assert str(form.query_one("#title").render()) == "profile: profiles/faster.toml"
        status = str(form.query_one("#status").render())
        assert "run.name is now 'faster', so its runs go to their own folder" in status
    assert Path("profiles/quick.toml").read_text() == before
    assert load_profile("profiles/faster.toml").optim.lr == 0.02
    # its runs do not mix with quick.toml's in runs/quick/ (issue 16)
    assert load_profile("profiles/faster.toml").run.name == "faster"
    assert Path("profiles/faster.toml").read_text().startswith("# A small digits run")


@run_async
async def test_a_new_profile_starts_from_the_defaults_and_saves_as_a_new_file(workdir: Path):
    app = MptApp("profiles", "runs")
    async with app.run_test() as pilot:
        await pilot.pause()
        await pilot.press("n")
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        form = app.screen
        assert form.path is None
        for f in FIELDS:
            assert form.row(f.path).value == (
                f.default if f.default is not None else form.row(f.path).value
            )
        await set_text(pilot, "run.name", "fresh")
        await pilot.press("ctrl+s")  # no file yet: asks for a name
        await pilot.pause()
        assert app.screen.query_one("#name", Input).value == "fresh.toml"
        await pilot.press("enter")
        await wait_for(pilot, lambda: app.screen is form)
    data = read_profile_file("profiles/fresh.toml")
    assert data["run"]["name"] == "fresh"
    assert data["data"]["dataset"] == "digits"  # the essentials are written out
    assert load_profile("profiles/fresh.toml").run.epochs == 10


@run_async
async def test_leaving_with_unsaved_changes_asks_first(workdir: Path):
    app = form_app()
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        form = app.screen
        await set_text(pilot, "run.epochs", "9")
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        await pilot.pause()
        assert app.screen is form
        await pilot.press("escape")
        await pilot.pause()
        await pilot.press("y")
        await wait_for(pilot, lambda: not isinstance(app.screen, ProfileFormScreen | ConfirmScreen))


@run_async
async def test_a_file_that_is_not_toml_opens_on_the_defaults_with_the_reason(workdir: Path):
    Path("profiles/broken.toml").write_text("[run\nname = ")
    app = form_app("profiles/broken.toml")
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        status = str(app.screen.query_one("#status").render())
        assert "could not read the file" in status and "not valid TOML" in status


@run_async
async def test_sections_are_tabs_and_a_problem_marks_its_tab(workdir: Path):
    app = form_app()
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        form = app.screen
        tabs = form.query_one("#sections", TabbedContent)
        assert tabs.active == "section-run"
        await pilot.press("pagedown")
        assert tabs.active == "section-data"
        await wait_for(pilot, lambda: form.focused is form.row("data.dataset").control)
        await set_text(pilot, "optim.lr", "0")
        assert str(tabs.get_tab("section-optim").label) == "optim !"
        assert form.row("optim.lr").error == "must be > 0 (got 0)"
        await pilot.press("pageup", "pageup")
        assert tabs.active == "section-data"


@run_async
async def test_every_tab_shows_whole_at_80_columns(workdir: Path):
    # Twelve sections are 84 columns of tabs: at 80, `notify` showed as `no`. Long names
    # are shortened as far as needed, and come back on a wider screen.
    app = form_app()
    async with app.run_test(size=(80, 24)) as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        form = app.screen
        tabs = form.query_one("#sections", TabbedContent)

        def shown() -> dict[str, str]:
            return {s: str(tabs.get_tab(f"section-{s}").label) for s in SECTIONS}

        def whole() -> bool:
            regions = [tabs.get_tab(f"section-{s}").region for s in SECTIONS]
            return all(r.width and r.right <= 80 for r in regions)

        await pilot.pause()
        assert shown()["checkpoint"] == "ckpt" and shown()["notify"] == "notify"
        assert whole()
        await set_text(pilot, "optim.lr", "0")  # a problem mark makes a tab wider
        await pilot.pause()
        assert shown()["optim"] == "optim !" and shown()["precision"].startswith("prec")
        assert whole()
        await pilot.resize_terminal(120, 40)
        await wait_for(pilot, lambda: shown()["checkpoint"] == "checkpoint")


@run_async
async def test_a_misspelled_key_in_the_file_is_named_with_the_engines_hint(workdir: Path):
    Path("profiles/typo.toml").write_text('[run]\nname = "typo"\nepoch = 3\n')
    app = form_app("profiles/typo.toml")
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        status = str(app.screen.query_one("#status").render())
        assert "commented out on save: run.epoch: unknown key; did you mean 'epochs'?" in status


def test_a_fields_range_is_written_as_the_engine_writes_it():
    from engine.profile import FIELD_BY_PATH
    from tui.widgets.field import describe_spec

    assert "<= 1e+30" in describe_spec(FIELD_BY_PATH["optim.lr"])  # not 31 digits
    assert "<= 4294967295" in describe_spec(FIELD_BY_PATH["run.seed"])


@run_async
async def test_keys_that_arrive_together_act_in_the_order_typed(workdir: Path):
    # A laggy SSH link delivers keystrokes in bursts; Textual's Input ran its bound keys
    # (backspace, arrows) after the printable ones of the same burst (textual #6605).
    from textual import events

    app = form_app()
    async with app.run_test() as pilot:
        await wait_for(pilot, lambda: isinstance(app.screen, ProfileFormScreen))
        row = app.screen.row("run.out_dir")
        row.control.focus()
        await pilot.press("end")
        typed = [*["backspace"] * 12, *"myruns/abc", "left", "left", "backspace", "X", "end", "!"]
        for key in typed:  # posted at once, as one read of the terminal delivers them
            character = key if len(key) == 1 else None
            app.post_message(events.Key("slash" if key == "/" else key, character))
        await wait_for(pilot, lambda: row.control.value.endswith("!"))
        assert row.control.value == "myruns/Xbc!"
