"""Errors and warnings for people.

Every problem found in a spec is raised as a :class:`SpecError` that names the
spec location (``model.conv[2]``), says what is wrong with the shapes or values
involved, and says how to fix it. The CLI turns it into one message and exit
code 2; nothing else in scaffold prints tracebacks at users.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field


class ScaffoldError(Exception):
    """Base class of the errors the CLI reports without a traceback."""

    exit_code = 2

    def render(self) -> str:
        return f"error: {self}"


@dataclass
class SpecError(ScaffoldError):
    """A problem in a spec, tied to one location in it."""

    where: str
    problem: str
    fix: str = ""
    details: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__init__(self.problem)

    def __str__(self) -> str:
        return f"{self.where}: {self.problem}"

    def render(self) -> str:
        lines = [f"error: {self.where}: {self.problem}"]
        lines += [f"  {line}" for line in self.details]
        if self.fix:
            lines.append(f"  fix: {self.fix}")
        return "\n".join(lines)


class GenerateError(ScaffoldError):
    """A project could not be generated (target exists, template failure...)."""


class GitError(GenerateError):
    """A git command that scaffold ran failed; ``stderr`` is what git said."""

    def __init__(self, message: str, stderr: str = "") -> None:
        super().__init__(message)
        self.stderr = stderr


@dataclass(frozen=True)
class SpecWarning:
    """A likely mistake that does not stop generation."""

    where: str
    message: str

    def render(self) -> str:
        return f"warning: {self.where}: {self.message}"


def did_you_mean(word: str, choices: list[str] | tuple[str, ...]) -> str:
    """Return ', did you mean `x`?' when a close match exists, else ''."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f", did you mean `{close[0]}`?" if close else ""
