"""Playbook actions: one table (the registry), one small class per action. Each checks the world first
and is idempotent, so a step re-run after a crash does the right thing. An action acts on the fleet
(`FleetHands`) and on the quarantine (`QuarantineHands`), never on the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from ..machines import Machine
    from .incidents import Incident

#: the service's config: opaque to the actions, which hand it back to the engine (they never read it), so that
#: actions, registered as plugins, do not depend on the config package that validates them
S = TypeVar("S")
S_contra = TypeVar("S_contra", contravariant=True)


class StepFailed(Exception):
    """A step could not do its work; `terminal` failures are not retried (the outcome would not change)."""

    def __init__(self, message: str, terminal: bool = False) -> None:
        super().__init__(message)
        self.terminal = terminal


class ProbationFailed(StepFailed):
    """A machine on probation failed its checks or ran out of time: whoever waited on it quarantines it."""

    def __init__(self, machine_id: str, why: str) -> None:
        super().__init__(
            f"{machine_id} failed probation ({why}); it is quarantined and does not enter rotation", terminal=True
        )


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FleetHands(Protocol[S_contra]):
    """What the actions do to the fleet (the remediation's `Fleet`)."""

    async def rotation_remove(self, svc: S_contra, machine_id: str) -> None: ...
    async def launch_replacement(self, svc: S_contra, incident: str | None) -> Machine: ...
    async def await_healthy(self, svc: S_contra, machine_id: str, timeout: float, incident: str | None) -> None: ...
    async def put_in_service(self, svc: S_contra, machine_id: str) -> None: ...
    def announce_replaced(self, inc: Incident, outputs: dict[str, Any]) -> None: ...
    async def machine(self, service: str, machine_id: str) -> Machine: ...
    def provider_said(self, svc: S_contra, machine_id: str, since: float) -> str: ...


class RepairHands(Protocol[S_contra]):
    """What the actions do to a sick machine they repair and keep (the remediation's `Repair`)."""

    async def restart(self, svc: S_contra, machine_id: str, verb: str) -> None: ...
    async def await_recovered(self, svc: S_contra, machine_id: str, timeout: float) -> None: ...


class QuarantineHands(Protocol[S_contra]):
    """What the actions do to a sick machine they keep (the remediation's `Quarantine`)."""

    async def quarantine(self, svc: S_contra, machine_id: str, incident: str, freeze: bool) -> dict[str, Any]: ...
    async def collect_forensics(self, inc: Incident, evidence: dict[str, Any]) -> Path: ...


class StepSpec(Protocol):
    """What an action reads of its playbook step."""

    @property
    def params(self) -> BaseModel: ...

    @property
    def timeout(self) -> float: ...


@dataclass
class StepContext(Generic[S]):
    fleet: FleetHands[S]
    quarantine: QuarantineHands[S]
    repair: RepairHands[S]
    incident: Incident
    service: S
    step: StepSpec
    outputs: dict[str, Any] = field(default_factory=dict)  # what earlier steps produced


class Action:
    kind: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams
    default_timeout: ClassVar[float] = 120.0
    description: ClassVar[str] = ""
    #: what the service's provider must do for this action to run (a playbook needing a verb the provider
    #: lacks is refused with the config)
    verbs: ClassVar[frozenset[str]] = frozenset()
    #: a step of this action that times out fails the playbook at once, without its retries: waiting longer
    #: would not change the answer
    timeout_ends_playbook: ClassVar[bool] = False

    async def run(self, ctx: StepContext[Any]) -> dict[str, Any]:
        raise NotImplementedError


class RotationRemove(Action):
    kind = "rotation.remove"
    description = "take the sick machine out of rotation"

    async def run(self, ctx: StepContext[Any]) -> dict[str, Any]:
        await ctx.fleet.rotation_remove(ctx.service, ctx.incident.machine)
        return {}


class QuarantineParams(NoParams):
    freeze: bool = False  # also stop the machine's processes (local: SIGSTOP)


class MachineQuarantine(Action):
    kind = "machine.quarantine"
    Params = QuarantineParams
    verbs = frozenset({"quarantine"})
    description = "isolate the sick machine and keep it for forensics"

    async def run(self, ctx: StepContext[Any]) -> dict[str, Any]:
        params = ctx.step.params
        assert isinstance(params, QuarantineParams)
        evidence = await ctx.quarantine.quarantine(ctx.service, ctx.incident.machine, ctx.incident.id, params.freeze)
        return {"quarantine": evidence}


class ForensicsCollect(Action):
    kind = "forensics.collect"
    description = "write the evidence bundle (timeline, check history, metadata, console output, manifest)"

    async def run(self, ctx: StepContext[Any]) -> dict[str, Any]:
        path = await ctx.quarantine.collect_forensics(ctx.incident, ctx.outputs.get("quarantine", {}))
        return {"bundle": str(path)}


class LaunchReplacement(Action):
    kind = "machine.launch_replacement"
    default_timeout = 300.0
    verbs = frozenset({"launch"})
    description = "launch a replacement from the known-good image (once per incident)"

    async def run(self, ctx: StepContext[Any]) -> dict[str, Any]:
        machine = await ctx.fleet.launch_replacement(ctx.service, ctx.incident.id)
        return {
            "replacement": machine.id,
            "replacement_address": machine.address,
            "image_version": machine.image_version,
        }


class AwaitParams(NoParams):
    #: whose checks: the replacement a previous step launched, or the sick machine itself (after a repair)
    target: Literal["replacement", "machine"] = "replacement"


class AwaitHealthy(Action):
    kind = "checks.await_healthy"
    Params = AwaitParams
    default_timeout = 600.0
    timeout_ends_playbook = True
    description = (
        "run the service's checks on the replacement (or the repaired machine) until they pass rise times in a row"
    )

    async def run(self, ctx: StepContext[Any]) -> dict[str, Any]:
        params = ctx.step.params
        assert isinstance(params, AwaitParams)
        if params.target == "machine":
            await ctx.repair.await_recovered(ctx.service, ctx.incident.machine, ctx.step.timeout)
            return {"healthy": ctx.incident.machine}
        replacement = ctx.outputs.get("replacement")
        if not replacement:
            raise StepFailed("no replacement to check: machine.launch_replacement must come first", terminal=True)
        try:
            await ctx.fleet.await_healthy(ctx.service, replacement, ctx.step.timeout, ctx.incident.id)
        except ProbationFailed:
            await ctx.quarantine.quarantine(ctx.service, replacement, ctx.incident.id, False)
            raise
        return {"healthy": replacement}


class RotationAdd(Action):
    kind = "rotation.add"
    description = "put the replacement in service and in rotation"

    async def run(self, ctx: StepContext[Any]) -> dict[str, Any]:
        replacement = ctx.outputs.get("replacement")
        if not replacement:
            raise StepFailed("no replacement to add: machine.launch_replacement must come first", terminal=True)
        await ctx.fleet.put_in_service(ctx.service, replacement)
        return {"in_service": replacement}


class Notify(Action):
    kind = "notify"
    default_timeout = 30.0
    description = "tell on-call what was done (machine.replaced event)"

    async def run(self, ctx: StepContext[Any]) -> dict[str, Any]:
        ctx.fleet.announce_replaced(ctx.incident, ctx.outputs)
        return {}
