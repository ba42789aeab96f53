"""Machines of the fleet and their lifecycle."""

from __future__ import annotations

import enum
import ipaddress
import json
import re
from dataclasses import dataclass, field
from typing import Any

from .targets import Target


class Lifecycle(enum.StrEnum):
    LAUNCHING = "launching"
    PROBATION = "probation"  # checks run, not in rotation
    IN_SERVICE = "in_service"  # the only lifecycle that takes traffic
    QUARANTINED = "quarantined"
    UNREACHABLE = "unreachable"  # in a lost zone: nothing can be done to it; kept as a record until it returns
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
    def zone(self) -> str:
        """The zone (datacenter, availability zone) it stands in; "" when unknown."""
        return self.attributes.get("zone", "")

    @property
    def origin(self) -> Origin:
        value = self.attributes.get("launched_for") or ""
        if value in (Origin.FILL, Origin.RELEASE, Origin.ROLLOUT):
            return Origin(value)
        return Origin.INCIDENT if value else Origin.NONE

    # -- what healerd records in its attributes, typed (the attributes stay strings in the store) -----------
    @property
    def launch_time(self) -> float | None:
        """When healerd launched it (None: not recorded, such as a static machine)."""
        return _number(self.attributes.get("launched_at"))

    @property
    def image_version(self) -> str | None:
        return self.attributes.get("image_version") or None

    @property
    def incident(self) -> str | None:
        """The incident that quarantined it, or that it replaces a machine for (`probation`: none)."""
        return self.attributes.get("incident") or None

    @property
    def quarantined_at(self) -> float | None:
        return _number(self.attributes.get("quarantined_at"))

    @property
    def evidence(self) -> dict[str, Any]:
        """What its provider kept when it was quarantined (snapshots, the isolation it applied)."""
        try:
            found = json.loads(self.attributes.get("evidence") or "{}")
        except ValueError:
            return {}
        return found if isinstance(found, dict) else {}

    @property
    def retiring(self) -> bool:
        """On its way out (scale-in, a rollout's old version): nothing puts it back in rotation."""
        return "retiring" in self.attributes

    @property
    def retention_warned(self) -> bool:
        """Its quarantine's end (keep_for) has been announced."""
        return bool(self.attributes.get("retention_warned"))

    @property
    def launch_error(self) -> str | None:
        """Why its last launch failed (it is still launching: asked for again)."""
        return self.attributes.get("launch_error") or None

    @property
    def became(self) -> str | None:
        """The id its provider gave it, when the provider names machines itself (this record is the placeholder)."""
        return self.attributes.get("became") or None


def launched_for(origin: Origin, incident: str | None = None) -> str:
    """The `launched_for` attribute value for a machine of this origin (an incident's id for INCIDENT)."""
    if origin is Origin.INCIDENT:
        assert incident, "an incident's replacement names its incident"
        return incident
    return origin.value


def launched_at(m: Machine | None, now: float) -> float:
    """When the machine was launched, as recorded in its attributes; `now` when nothing was recorded."""
    launched = m.launch_time if m else None
    return now if launched is None else launched


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text else None
    except ValueError:
        return None


#: a host name: dot-separated labels of letters, digits, '-' (and '_', which container networks use)
_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9_-]{1,63}(?<!-))*\.?")
ADDRESS_FIX = "write host:port, like 10.0.0.5:8080, [fd00::5]:8080 or web-1.example.com:8080"


def address_problem(address: str, *, port_required: bool = True) -> str | None:
    """What makes `address` unusable as a machine's address, or None. An address lands in check URLs and load
    balancer commands through `{address}`, `{host}` and `{port}`: only an IPv4 address, an IPv6 address in
    brackets or a DNS name, and a port 1-65535 (optional for a provider that gives bare IPs) are taken."""
    if len(address) > 260:
        return f"it is {len(address)} characters long (a host name is at most 253); {ADDRESS_FIX}"
    host, sep, written = address.rpartition(":")
    port: str | None = written
    if not sep or (host and not host.endswith("]") and ":" in host):  # no port, or a bare IPv6 address
        host, port = address, None
    if port is None and ":" in address and _ip(address) is not None:
        return "an IPv6 address goes in brackets before its port, like [fd00::5]:8080"
    if port is None and port_required:
        return f"the port is missing; {ADDRESS_FIX}"
    if port == "":
        return f"the port is missing after ':'; {ADDRESS_FIX}"
    if port is not None and (not port.isascii() or not port.isdigit() or not 1 <= int(port) <= 65535):
        return f"the port {port[:20]!r} is not a port from 1 to 65535; {ADDRESS_FIX}"
    bracketed = host.startswith("[") and host.endswith("]")
    bare = host[1:-1] if bracketed else host
    ip = _ip(bare)
    if bracketed and (ip is None or ip.version != 6):
        return f"{host!r} is not an IPv6 address in brackets; {ADDRESS_FIX}"
    if not bracketed and (ip is None or ip.version != 4) and not _HOSTNAME.fullmatch(bare):
        why = "is empty" if not bare else "is not an IP address or a host name"
        if any(c.isspace() or c == ";" or not c.isprintable() for c in bare):
            why += " (spaces, ';' and control characters cannot be in one)"
        return f"the host {bare[:60]!r} {why}; {ADDRESS_FIX}"
    return None


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None
