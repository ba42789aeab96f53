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


class Origin(enum.StrEnum):
    """Why healerd launched a machine, as its `launched_for` attribute records it (the attribute holds the
    incident's id for an incident's replacement, and is empty or absent for machines healerd did not launch)."""

    FILL = "fill"  # launched (or adopted) to bring the fleet to `desired`
    RELEASE = "release"  # released from quarantine, back on probation
    INCIDENT = "incident"  # the replacement launched by an incident
    ROLLOUT = "rollout"  # launched by a rollout (its `rollout` attribute names it)
    NONE = ""


#: the `incident` attribute of a machine quarantined for failing probation outside any incident
PROBATION = "probation"


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

    @property
    def origin(self) -> Origin:
        value = self.attributes.get("launched_for") or ""
        if value in (Origin.FILL, Origin.RELEASE, Origin.ROLLOUT):
            return Origin(value)
        return Origin.INCIDENT if value else Origin.NONE


def launched_for(origin: Origin, incident: str | None = None) -> str:
    """The `launched_for` attribute value for a machine of this origin (an incident's id for INCIDENT)."""
    if origin is Origin.INCIDENT:
        assert incident, "an incident's replacement names its incident"
        return incident
    return origin.value
