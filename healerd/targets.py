"""What a check runs against: a machine of a service, or the service itself, and template rendering (the
config checks templates with `words.find_template_problems`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel

M = TypeVar("M", bound=BaseModel)

TEMPLATE_FIELDS = ("address", "host", "port", "id", "service")
#: Service-level checks run once per service: only the service's name is known.
SERVICE_TEMPLATE_FIELDS = ("service",)


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
