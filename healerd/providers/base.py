"""The provider interface: where machines come from, and what can be done to them.

A static provider only lists machines. A provider that can launch machines declares an `ImageVersion`
model (what one image version is for it: a command, an AMI, a launch template) and implements the
lifecycle calls. Every call is idempotent and checks the world before acting.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ..machines import Machine

if TYPE_CHECKING:
    from ..specs import ServiceSpec
    from ..store import BaseStore


class ProviderOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderError(Exception):
    """A provider call failed; the message names the call and the resource."""


class ProviderUnsupported(ProviderError):
    """The provider does not do this (a verb it lacks): the ladder moves on, the config that needs it is refused."""


#: Every verb a provider can be asked for.
ALL_VERBS = frozenset(
    ("list", "launch", "quarantine", "release", "terminate", "restart", "reboot", "describe", "console", "alive")
)


@dataclass
class ProviderEnv:
    state_dir: Path
    store: BaseStore | None = None


@dataclass(frozen=True)
class LaunchRequest:
    service: str
    machine_id: str  # chosen by healerd, recorded before the launch so a crash cannot orphan it
    image: str
    version: str
    spec: BaseModel  # the provider's ImageVersion
    incident: str | None = None
    zone: str = ""  # where healerd wants it (one of the provider's `zones`); "" when it has none


class Provider:
    """Base of provider kinds. `kind` names it in config; `Config` validates its options."""

    kind: ClassVar[str] = ""
    Config: ClassVar[type[ProviderOptions]] = ProviderOptions
    #: set by providers that launch machines from images
    ImageVersion: ClassVar[type[BaseModel] | None] = None
    #: what the kind can do to machines (list, launch, quarantine, release, terminate, restart, reboot,
    #: describe, console, alive): a playbook whose actions need a verb it lacks is a config error
    VERBS: ClassVar[frozenset[str]] = frozenset({"list"})

    def __init__(self, name: str, options: BaseModel, *, env: ProviderEnv | None = None) -> None:
        self.name = name
        self.options = options
        self.env = env

    @classmethod
    def verbs_for(cls, options: BaseModel) -> frozenset[str]:
        """What a provider of this kind with these options does (the config is checked against it)."""
        return cls.VERBS

    def supports(self, verb: str) -> bool:
        """Whether this provider does `verb` (a kind whose machines tell it at run time may answer per instance)."""
        return verb in self.VERBS

    async def start(self) -> None:
        """Called once the daemon is up (open clients, adopt machines)."""

    async def close(self) -> None:
        """Called at shutdown."""

    async def list_machines(self, service: ServiceSpec) -> list[Machine]:
        raise NotImplementedError

    def zones(self, service: ServiceSpec) -> tuple[str, ...]:
        """The zones it launches the service's machines in, in order (healerd spreads them evenly); none:
        it does not say, and every machine is placed where the provider puts it."""
        return ()

    # -- lifecycle: only providers with an ImageVersion implement these --------------------------------
    def allocate(self, taken: set[int], zone: str = "") -> tuple[str, dict[str, str]]:
        """The address and attributes a new machine will have, known before it starts (if any)."""
        return "", {"zone": zone} if zone else {}

    async def launch(self, request: LaunchRequest) -> Machine:
        raise ProviderError(f"provider {self.name} ({self.kind}) cannot launch machines")

    async def quarantine(self, machine: Machine, incident: str | None, freeze: bool = False) -> dict[str, Any]:
        """Isolate the machine but keep it; returns evidence (e.g. snapshot ids)."""
        return {}

    async def release(self, machine: Machine) -> None:
        """Undo the isolation (the machine keeps running)."""

    async def on_in_service(self, machine: Machine, service: ServiceSpec) -> None:
        """Called when a machine enters service (e.g. join a cloud scaling group)."""

    async def rollout_problem(self, service: ServiceSpec, extra: int) -> str | None:
        """Why the service cannot hold `extra` machines above its size for a rollout (a cloud group's maximum),
        or None."""
        return None

    async def on_promoted(self, service: ServiceSpec, spec: BaseModel) -> None:
        """A version became the service's known-good one (a rollout promoted it, or rolled back to it): e.g.
        point a cloud scaling group's own launches at it."""

    async def terminate(self, machine: Machine) -> None:
        raise ProviderError(f"provider {self.name} ({self.kind}) cannot terminate machines")

    async def retire(self, machine: Machine) -> str:
        """Scale in a healthy surplus machine (already out of rotation); returns 'terminated' or 'released'.
        Machines healerd launched are terminated: nothing is left running unmanaged."""
        await self.terminate(machine)
        return "terminated"

    async def alive(self, machine: Machine) -> bool:
        return True

    def said(self, machine_id: str, since: float) -> str:
        """What the provider said about the machine since `since` (a command provider: its stderr), for the
        timeline of the incident whose step called it."""
        return ""

    # -- repair (the escalation ladder): optional -----------------------------------------------------------
    async def restart(self, machine: Machine) -> Machine:
        """Restart what the machine runs (its process, its service), keeping the machine; returns it as it is
        now (its attributes may have changed: a new process id)."""
        raise ProviderUnsupported(f"provider {self.name} ({self.kind}) cannot restart machines")

    async def reboot(self, machine: Machine) -> Machine:
        """Reboot the machine, keeping it (its id and address); returns it as it is now."""
        raise ProviderUnsupported(f"provider {self.name} ({self.kind}) cannot reboot machines")

    async def describe(self, machine: Machine) -> dict[str, Any]:
        """Metadata for the forensics bundle."""
        return {"id": machine.id, "address": machine.address, "attributes": machine.attributes}

    async def console(self, machine: Machine, limit: int = 1 << 20) -> str:
        """Recent console / process output for the forensics bundle."""
        return ""

    async def store_evidence(self, bundle: Path, incident: str) -> list[str]:
        """Mirror a forensics bundle somewhere durable (e.g. S3); returns where it went."""
        return []
