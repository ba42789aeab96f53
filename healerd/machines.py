"""Machines of the fleet and their lifecycle."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from .targets import Target


class Lifecycle(enum.StrEnum):
    LAUNCHING = "launching"
    PROBATION = "probation"  # checks run, not in rotation
    IN_SERVICE = "in_service"  # the only lifecycle that takes traffic
    QUARANTINED = "quarantined"
    RELEASED = "released"
    TERMINATED = "terminated"


@dataclass(frozen=True, slots=True)
class Machine:
    service: str
    id: str
    address: str
    lifecycle: Lifecycle = Lifecycle.IN_SERVICE
    attributes: dict[str, str] = field(default_factory=dict)

    @property
    def target(self) -> Target:
        return Target(self.service, self.id, self.address)
