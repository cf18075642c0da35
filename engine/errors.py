"""The project's own error types: each carries a sentence a person can act on."""

from __future__ import annotations

from dataclasses import dataclass


class MptError(Exception):
    """A user mistake or an environment problem, described in one sentence.

    The CLI and the TUI show `str(error)` and never a traceback.
    """


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a profile: where (`key`) and what (`message`)."""

    key: str
    message: str

    def render(self, source: str) -> str:
        where = f"{source}: {self.key}" if self.key else source
        return f"{where}: {self.message}"


class ProfileError(MptError):
    """A profile that cannot run; lists every problem found at once."""

    def __init__(self, source: str, problems: list[Problem]):
        self.source = source
        self.problems = problems
        super().__init__("\n".join(p.render(source) for p in problems))


class DataError(MptError):
    """A dataset that cannot be found, downloaded or read."""


class ModelError(MptError):
    """A model that cannot be built or does not fit the data."""


class ExportFailed(MptError):
    """`mpt export` could not write the model in the asked format; exit 1."""


class TrainingFailed(MptError):
    """Training cannot go on (e.g. the loss became non-finite); the run ends with exit 1."""
