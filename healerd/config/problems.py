"""What is wrong with a config: problems with their YAML path and line, gathered so all are told at once."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import BaseModel, ValidationError

from .. import _yaml
from .._yaml import format_path
from ..targets import did_you_mean

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Problem:
    path: Loc
    message: str
    line: int | None = None

    def render(self, filename: str) -> str:
        where = f"{filename}:{self.line}" if self.line else filename
        return f"{where}: {format_path(self.path) or '(top level)'}: {self.message}"


#: how much of a wrong value a problem quotes (a list of 20,000 machines is not quoted whole)
GOT_MAX = 200


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
        self.problems.append(Problem(path, message, self.index.line(path)))

    def numbers(self, prefix: Loc, model: BaseModel, raw: object) -> bool:
        """Add the numbers `model` accepted from `raw` that the user did not mean; True when there were none."""
        found = list(misread_numbers(model, raw, prefix))
        for loc, message in found:
            self.add(loc, message)
        return not found

    def pydantic(self, prefix: Loc, exc: ValidationError, vocabulary: set[str]) -> None:
        for err in exc.errors(include_url=False):
            loc = (*prefix, *err["loc"])
            typ = err["type"]
            if typ == "extra_forbidden":
                key = str(err["loc"][-1]) if err["loc"] else "?"
                msg = f"unknown key {key!r}{did_you_mean(key, sorted(vocabulary))}; remove it or fix its spelling"
            elif typ == "missing":
                key = str(err["loc"][-1]) if err["loc"] else "?"
                msg = f"missing required key {key!r}"
                loc = loc[:-1] if err["loc"] else loc
                self.problems.append(Problem((*loc, key), msg, self.index.line(loc)))
                continue
            else:
                msg = err["msg"].removeprefix("Value error, ")
                if typ not in ("value_error", "assertion_error") and "input" in err:
                    got = repr(err["input"])
                    msg += f" (got {got if len(got) <= GOT_MAX else got[: GOT_MAX - 5] + ' ...'})"
                if typ == "string_type" and isinstance(err.get("input"), int | float):
                    msg += "; put it in quotes to make it text"
            self.add(loc, msg)


def misread_numbers(value: object, raw: object, path: Loc) -> Iterator[tuple[Loc, str]]:
    """Numbers a model accepted that cannot be meant: true/false where a number goes (pydantic, like Python,
    takes True for 1) and .nan/.inf (which every bound check lets through). Any model, plugins' too."""
    if isinstance(value, BaseModel):
        # declared fields only: the extra ones (a check's kind fields) are validated by a model of their own
        if isinstance(raw, dict):
            for name in type(value).model_fields:
                if name in raw:
                    yield from misread_numbers(getattr(value, name), raw[name], (*path, name))
    elif isinstance(value, bool):
        return
    elif isinstance(value, int | float):
        if isinstance(raw, bool):
            yield path, f"expected a number, got {str(raw).lower()} (a boolean); write a number"
        elif not math.isfinite(value):
            yield path, f"expected a finite number, got {raw!r}; write a number"
    elif isinstance(value, list | tuple) and isinstance(raw, list):
        for i, (item, raw_item) in enumerate(zip(value, raw, strict=False)):
            yield from misread_numbers(item, raw_item, (*path, i))
    elif isinstance(value, dict) and isinstance(raw, dict):
        for key, item in value.items():
            if key in raw:
                yield from misread_numbers(item, raw[key], (*path, key))


def vocabulary(*models: type[BaseModel]) -> set[str]:
    """The keys the models know, for did-you-mean hints."""
    words: set[str] = set()
    for model in models:
        words.update(model.model_fields)
    return words
