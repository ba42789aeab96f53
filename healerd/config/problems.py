"""What is wrong with a config: problems with their YAML path and line, gathered so all are told at once."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from .. import _yaml
from .._yaml import format_path
from ..words import Loc as Loc  # the config modules name places with it
from ..words import misread_numbers, refusals, shorten


@dataclass(frozen=True)
class Problem:
    path: Loc
    message: str
    line: int | None = None

    def render(self, filename: str) -> str:
        where = f"{filename}:{self.line}" if self.line else filename
        return f"{where}: {format_path(self.path) or '(top level)'}: {self.message}"


class ConfigError(Exception):
    """A config that cannot be used, with every problem found."""

    def __init__(self, filename: str, problems: list[Problem]) -> None:
        self.filename = filename
        self.problems = sorted(problems, key=lambda p: p.line or 0)
        super().__init__(self.render())

    def render(self) -> str:
        n = len(self.problems)
        head = f"{self.filename}: {n} problem{'s' if n != 1 else ''} found"
        return "\n".join([head, *("  " + p.render(self.filename) for p in self.problems)])


class Collector:
    """The problems found so far in one document, each placed on its line."""

    def __init__(self, index: _yaml.LineIndex) -> None:
        self.index = index
        self.problems: list[Problem] = []

    def add(self, path: Loc, message: str) -> None:
        self.problems.append(Problem(path, shorten(message), self.index.line(path)))

    def numbers(self, prefix: Loc, model: BaseModel, raw: object) -> bool:
        """Add the numbers `model` accepted from `raw` that the user did not mean; True when there were none."""
        found = list(misread_numbers(model, raw, prefix))
        for loc, message in found:
            self.add(loc, message)
        return not found

    def pydantic(self, prefix: Loc, exc: ValidationError, vocabulary: set[str]) -> None:
        """pydantic's errors in healerd's words, each with its fix: a union's alternatives are one problem."""
        for r in refusals(exc, vocabulary, prefix):
            self.problems.append(Problem(r.loc, r.message, self.index.line(r.at)))


def vocabulary(*models: type[BaseModel]) -> set[str]:
    """The keys the models know, for did-you-mean hints."""
    words: set[str] = set()
    for model in models:
        words.update(model.model_fields)
    return words
