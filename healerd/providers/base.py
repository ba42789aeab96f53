"""The provider interface: lists the machines of a service."""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from pydantic import BaseModel, ConfigDict

from ..machines import Machine

if TYPE_CHECKING:
    from ..config import ServiceConfig


class ProviderOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Provider:
    """Base of provider kinds. `kind` names it in config; `Config` validates its options."""

    kind: ClassVar[str] = ""
    Config: ClassVar[type[ProviderOptions]] = ProviderOptions

    def __init__(self, name: str, options: BaseModel) -> None:
        self.name = name
        self.options = options

    async def list_machines(self, service: ServiceConfig) -> list[Machine]:
        raise NotImplementedError
