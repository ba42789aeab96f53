"""Remediation playbooks: YAML files of steps, loaded and validated with path and line for every error."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .. import _yaml
from .._yaml import format_path
from ..durations import parse_duration, require_above_zero
from ..plugins import ACTIONS
from ..words import Loc, did_you_mean, misread_numbers, refusals

DEFAULT_PLAYBOOK = "replace-machine"


class OnFailure(enum.StrEnum):
    ABORT = "abort"
    CONTINUE = "continue"


class StepModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    action: str
    with_: dict[str, Any] = Field(default_factory=dict, alias="with")
    timeout: float | None = None
    retries: int = Field(default=0, ge=0, le=20)
    on_failure: OnFailure = OnFailure.ABORT

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: object) -> float | None:
        if v is None:
            return None
        # a step given no time at all fails before it starts: a timeout of 0 is a typo, never a plan
        return require_above_zero(parse_duration(v, what="timeout"), what="timeout", example="2m")


#: the keys of a step, for did-you-mean hints (`with` is a Python word: the model's field is with_)
STEP_KEYS = ["action", "with", "timeout", "retries", "on_failure"]


class PlaybookModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    #: each one validated alone, so that every bad step is told; at most 99 (a ladder journals rung * 100 + step)
    steps: list[Any] = Field(min_length=1, max_length=99)


@dataclass(frozen=True)
class Step:
    index: int
    action: str
    params: BaseModel
    timeout: float
    retries: int
    on_failure: OnFailure


@dataclass(frozen=True)
class Playbook:
    name: str
    description: str
    steps: tuple[Step, ...]
    path: Path
    actions: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class PlaybookProblem:
    path: Path
    line: int | None
    where: str
    message: str

    def render(self) -> str:
        return f"{self.path}:{self.line or 0}: {self.where or '(top level)'}: {self.message}"


#: the playbooks shipped with healerd (replace-machine): found wherever the config lives
BUILTIN = Path(__file__).parent.parent / "_builtin" / "playbooks"


def load_playbooks(folders: list[Path]) -> tuple[dict[str, Playbook], list[PlaybookProblem]]:
    """The built-in playbooks, then every `*.yaml`/`*.yml` under the folders; a later folder's playbook of the
    same name wins (a site's own replace-machine.yaml overrides the built-in one)."""
    folders = [BUILTIN, *(f for f in folders if f.resolve() != BUILTIN.resolve())]
    books: dict[str, Playbook] = {}
    problems: list[PlaybookProblem] = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")]):
            try:
                data, index = _yaml.load(path.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, _yaml.YamlSyntaxError) as exc:
                problems.append(PlaybookProblem(path, getattr(exc, "line", None), "", f"cannot read: {exc}"))
                continue
            found = _FileProblems(path, index)
            book = _playbook(data, found)
            problems.extend(found.problems)
            if book is not None:
                books[book.name] = book
    return books, problems


@dataclass
class _FileProblems:
    """The problems of one playbook file, each placed on its line."""

    path: Path
    index: _yaml.LineIndex
    problems: list[PlaybookProblem] = field(default_factory=list)

    def add(self, loc: Loc, message: str, at: Loc | None = None) -> None:
        line = self.index.line(loc if at is None else at)
        self.problems.append(PlaybookProblem(self.path, line, format_path(loc), message))

    def pydantic(self, prefix: Loc, exc: ValidationError, keys: list[str]) -> None:
        for r in refusals(exc, keys, prefix):
            self.add(r.loc, r.message, r.at)

    def numbers(self, prefix: Loc, model: BaseModel, raw: object) -> bool:
        """True when `model` took no number the author cannot have meant (true for 1, .nan)."""
        found = list(misread_numbers(model, raw, prefix))
        for loc, message in found:
            self.add(loc, message)
        return not found


def _playbook(data: object, found: _FileProblems) -> Playbook | None:
    """The playbook in `data`, or None after reporting every problem to `found`."""
    try:
        model = PlaybookModel.model_validate(data)
    except ValidationError as exc:
        found.pydantic((), exc, list(PlaybookModel.model_fields))
        return None
    steps = [step for i, raw in enumerate(model.steps) if (step := _step(i, raw, found)) is not None]
    if len(steps) < len(model.steps):
        return None
    return Playbook(model.name, model.description, tuple(steps), found.path, tuple(s.action for s in steps))


def _step(i: int, raw: object, found: _FileProblems) -> Step | None:
    loc: Loc = ("steps", i)
    try:
        sm = StepModel.model_validate(raw)
    except ValidationError as exc:
        found.pydantic(loc, exc, STEP_KEYS)
        return None
    if not found.numbers(loc, sm, raw):
        return None
    action = ACTIONS.get(sm.action)
    if action is None:
        found.add(
            (*loc, "action"),
            f"unknown action {sm.action!r}{did_you_mean(sm.action, ACTIONS.kinds())}; "
            f"use one of the actions {', '.join(ACTIONS.kinds())}",
        )
        return None
    try:
        params = action.Params.model_validate(sm.with_)
    except ValidationError as exc:
        found.pydantic((*loc, "with"), exc, list(action.Params.model_fields))
        return None
    if not found.numbers((*loc, "with"), params, sm.with_):
        return None
    return Step(i, sm.action, params, sm.timeout or action.default_timeout, sm.retries, sm.on_failure)
