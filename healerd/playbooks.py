"""Remediation playbooks: YAML files of steps, loaded and validated with path and line for every error."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import _yaml
from ._yaml import format_path
from .durations import parse_duration
from .plugins import ACTIONS
from .targets import did_you_mean

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
        return None if v is None else parse_duration(v)


class PlaybookModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    description: str = ""
    steps: list[dict[str, Any]] = Field(min_length=1)


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
BUILTIN = Path(__file__).parent / "_builtin" / "playbooks"


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

            def add(loc: tuple[str | int, ...], message: str, path: Path = path, index: Any = index) -> None:
                problems.append(PlaybookProblem(path, index.line(loc), format_path(loc), message))

            def add_errors(
                prefix: tuple[str | int, ...], exc: ValidationError, fields: list[str], add: Any = add
            ) -> None:
                for err in exc.errors(include_url=False):
                    loc = (*prefix, *err["loc"])
                    if err["type"] == "extra_forbidden" and err["loc"]:
                        key = str(err["loc"][-1])
                        add(loc, f"unknown key {key!r}{did_you_mean(key, fields)}; remove it or fix its spelling")
                    else:
                        add(loc, err["msg"].removeprefix("Value error, "))

            try:
                model = PlaybookModel.model_validate(data)
            except ValidationError as exc:
                add_errors((), exc, list(PlaybookModel.model_fields))
                continue
            steps: list[Step] = []
            for i, raw in enumerate(model.steps):
                loc: tuple[str | int, ...] = ("steps", i)
                try:
                    sm = StepModel.model_validate(raw)
                except ValidationError as exc:
                    add_errors(loc, exc, ["action", "with", "timeout", "retries", "on_failure"])
                    continue
                action = ACTIONS.get(sm.action)
                if action is None:
                    add(
                        (*loc, "action"),
                        f"unknown action {sm.action!r}{did_you_mean(sm.action, ACTIONS.kinds())}; "
                        f"actions: {', '.join(ACTIONS.kinds())}",
                    )
                    continue
                try:
                    params = action.Params.model_validate(sm.with_)
                except ValidationError as exc:
                    add_errors((*loc, "with"), exc, list(action.Params.model_fields))
                    continue
                steps.append(
                    Step(i, sm.action, params, sm.timeout or action.default_timeout, sm.retries, sm.on_failure)
                )
            if len(steps) == len(model.steps):
                books[model.name] = Playbook(
                    model.name, model.description, tuple(steps), path, tuple(s.action for s in steps)
                )
    return books, problems
