"""What a check runs against: a machine of a service, or the service itself, and template rendering."""

from __future__ import annotations

import difflib
import string
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

TEMPLATE_FIELDS = ("address", "host", "port", "id", "service")
#: Service-level checks run once per service: only the service's name is known.
SERVICE_TEMPLATE_FIELDS = ("service",)
_FORMATTER = string.Formatter()


@dataclass(frozen=True, slots=True)
class Target:
    """A machine (or, for service-level checks, the service: id '' and no address)."""

    service: str
    id: str
    address: str = ""

    @property
    def host(self) -> str:
        host, _, port = self.address.rpartition(":")
        if not port.isdigit():
            return self.address
        return host.strip("[]")

    @property
    def port(self) -> str:
        _, sep, port = self.address.rpartition(":")
        return port if sep and port.isdigit() else ""

    def fields(self) -> dict[str, str]:
        return {
            "address": self.address,
            "host": self.host,
            "port": self.port,
            "id": self.id,
            "service": self.service,
        }


def template_problems(value: str, allowed: tuple[str, ...] = TEMPLATE_FIELDS) -> list[str]:
    """Problems with the `{field}` references in one string (empty when it is a valid template)."""
    try:
        parts = list(_FORMATTER.parse(value))
    except ValueError as exc:
        return [f"bad template {value!r}: {exc}; write a literal brace as {{{{ or }}}}"]
    problems = []
    for _literal, name, spec, conv in parts:
        if name is None:
            continue
        if name not in allowed:
            hint = did_you_mean(name, allowed)
            what = "unknown template field" if name not in TEMPLATE_FIELDS else "template field not available here"
            problems.append(
                f"{what} {{{name}}} in {value!r}{hint}; "
                f"known fields: {', '.join('{' + f + '}' for f in allowed)} "
                "(write a literal brace as {{ or }})"
            )
        elif spec or conv:
            problems.append(f"template field {{{name}}} takes no format spec or conversion in {value!r}")
    return problems


def did_you_mean(word: str, choices: tuple[str, ...] | list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def render_value(value: Any, fields: dict[str, str]) -> Any:
    """Render templates in strings, lists, dicts and nested models."""
    if isinstance(value, str):
        return value.format_map(fields) if "{" in value or "}" in value else value
    if isinstance(value, list):
        return [render_value(v, fields) for v in value]
    if isinstance(value, tuple):
        return tuple(render_value(v, fields) for v in value)
    if isinstance(value, dict):
        return {k: render_value(v, fields) for k, v in value.items()}
    if isinstance(value, BaseModel):
        return render_model(value, fields)
    return value


def render_model(model: M, fields: dict[str, str]) -> M:
    update = {}
    for name in type(model).model_fields:
        value = getattr(model, name)
        rendered = render_value(value, fields)
        if rendered is not value and rendered != value:
            update[name] = rendered
    return model.model_copy(update=update) if update else model


def find_template_problems(
    value: Any, allowed: tuple[str, ...] = TEMPLATE_FIELDS
) -> list[tuple[tuple[str | int, ...], str]]:
    """Walk raw config data; every bad template with its relative path."""
    out: list[tuple[tuple[str | int, ...], str]] = []
    if isinstance(value, str):
        out.extend(((), p) for p in template_problems(value, allowed))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out.extend(((i, *path), p) for path, p in find_template_problems(v, allowed))
    elif isinstance(value, dict):
        for k, v in value.items():
            out.extend(((str(k), *path), p) for path, p in find_template_problems(v, allowed))
    return out
