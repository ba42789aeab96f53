"""`static` provider: the machines are the ones listed under the service; healerd monitors and alerts."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..machines import Lifecycle, Machine
from .base import Provider

if TYPE_CHECKING:
    from ..specs import ServiceSpec


class StaticProvider(Provider):
    kind = "static"
    VERBS = frozenset({"list"})

    async def list_machines(self, service: ServiceSpec) -> list[Machine]:
        return [
            Machine(service.name, m.id, m.address, Lifecycle.IN_SERVICE, {"zone": m.zone} if m.zone else {})
            for m in service.machines
        ]
