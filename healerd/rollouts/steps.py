"""What a rollout's stages are made of (`RolloutSteps`, which `RolloutRun` drives): writing its record, finding
its machines again by slot or launching them, taking them through probation, retiring machines (drained, never
quarantined), and the holds a rollout waits in (paused, an incident being remediated, not in mode auto)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import TYPE_CHECKING, Any, Protocol

import structlog

from .._aio import wait_event
from ..config import Config, Mode, ServiceConfig
from ..events import Event
from ..health import Condition, ServiceState
from ..machines import Lifecycle, Machine, Origin, launched_at
from ..probation import ProbationOutcome
from ..providers.base import ProviderError
from .record import Rollout, Stage

if TYPE_CHECKING:
    from ..events import EventType, Severity
    from ..metrics import Metrics
    from ..monitor import Monitor
    from ..remediation.controls import Controls
    from ..remediation.fleet import Fleet
    from ..remediation.incidents import IncidentBook
    from ..store import BaseStore


class RolloutHost(Protocol):
    """What a rollout's run reads and calls of the rollouts that hold it (rollouts.control.Rollouts)."""

    config: Config
    store: BaseStore
    metrics: Metrics
    fleet: Fleet
    monitor: Monitor
    incidents: IncidentBook
    controls: Controls
    wakes: dict[str, asyncio.Event]
    #: fault injection for the crash-safety tests, never armed otherwise
    crash_at: str | None

    async def save(self, r: Rollout) -> None: ...

    def event(self, r: Rollout, kind: EventType, summary: str, severity: Severity = ..., **details: Any) -> Event: ...

    async def announce(self, r: Rollout, event: Event) -> None: ...


log = structlog.get_logger("healerd.rollout")

#: seconds between looks at the world while waiting (a hold, a bake), besides the wake-ups
TICK = 1.0
#: seconds before a run the store failed under goes on
STORE_RETRY = 5.0
LIVE = (Lifecycle.LAUNCHING, Lifecycle.PROBATION, Lifecycle.IN_SERVICE)
GONE = (Lifecycle.TERMINATED, Lifecycle.RELEASED)


class Rollback(Exception):
    """The rollout fails: roll back with this reason (and the judge's figures, when it is the judge's call)."""

    def __init__(self, reason: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.figures = figures or {}


class Unconfigured(Exception):
    """The service or its image left the config: the run stops, its record kept for a start that has them."""


class RolloutSteps:
    """What a rollout's stages are made of: its record's writes, its machines (found again by slot, launched,
    through probation, retired), the holds it waits in, and the checks that it may go on."""

    def __init__(self, host: RolloutHost, r: Rollout) -> None:
        self.host = host
        self.r = r
        self.p = r.params
        self.fleet = host.fleet
        self.monitor = host.monitor
        self.wake = host.wakes[r.service]

    @property
    def svc(self) -> ServiceConfig:
        return self.host.config.services[self.r.service]

    def _configured(self) -> bool:
        """False when the service or its image left the config (the rollout waits, recorded, for a restart with
        them); a Rollback when the candidate version did (nothing may be launched from it any more)."""
        r, config = self.r, self.host.config
        svc, image = config.services.get(r.service), config.images.get(r.image)
        if svc is None or image is None or svc.image != r.image:
            log.warning("the service or its image is no longer configured; the rollout stops where it is")
            return False
        if r.version not in image.versions and r.stage is not Stage.ROLLED_BACK:
            raise Rollback(f"version {r.version} was removed from the config of image {r.image}")
        return True

    async def _enter(self, stage: Stage, reason: str = "", announce: Event | None = None) -> None:
        """The rollout is at `stage` (recorded with the event announcing it, then the event is published)."""
        self.r.stage = stage
        if reason:
            self.r.reason = reason
        if announce is not None:
            await self.host.announce(self.r, announce)
        else:
            await self.host.save(self.r)
        log.info("rollout stage", stage=stage.value, reason=reason or None)
        self._crash_point(f"rollout.{stage.value}")

    def _crash_point(self, where: str) -> None:
        if self.host.crash_at and self.host.crash_at == where:
            log.warning("fault injection: killing healerd", at=where)
            os.kill(os.getpid(), signal.SIGKILL)

    async def _room_for_one_out(self, reverting: bool) -> None:
        """Wait until taking one more machine out leaves at least max(min_healthy, desired - max_unavailable)."""
        svc = self.svc
        floor = max(svc.min_healthy, svc.desired - self.p.max_unavailable)
        while True:
            up = [m for m in self._serving() if self._condition(m.id) is Condition.UP]
            if len(up) - 1 >= floor:
                self._wait_reason("")
                return
            self._wait_reason(f"{len(up)} healthy in rotation: taking one out would leave fewer than {floor}")
            await self._hold(abortable=not reverting)
            await self._sleep(TICK)

    # -- checks that the rollout may go on, and telling the provider ---------------------------------------
    def _canary_fine(self, machine_id: str) -> None:
        m = self.monitor.machine(self.r.service, machine_id)
        if m is None or m.lifecycle is not Lifecycle.IN_SERVICE:
            raise Rollback(f"canary {machine_id} left service ({m.lifecycle.value if m else 'gone'})")
        health = self.monitor.book.machine(self.r.service, machine_id)
        if health is not None and health.condition is Condition.DOWN:
            raise Rollback(f"canary {machine_id} is down: {health.problem()}")

    def _service_fine(self) -> None:
        health = self.monitor.book.services.get(self.r.service)
        if health is not None and health.settled and health.state is ServiceState.DOWN:
            raise Rollback(f"{self.r.service} fell below min_healthy ({self.svc.min_healthy} machines)")

    async def _tell_provider(self, version: str) -> None:
        spec = self.host.config.images[self.r.image].versions.get(version)
        if spec is None:
            return
        try:
            await self.fleet.provider(self.svc).on_promoted(self.svc, spec)
        except ProviderError as exc:  # the rollout goes on: healerd launches from the version it names itself
            log.error("the provider could not be told the known-good version", version=version, error=str(exc))

    # -- machines -----------------------------------------------------------------------------------------
    async def _machine_for(self, slot: str, version: str, role: str) -> Machine:
        """The machine of this rollout's `slot`: found again if it was recorded, else launched from `version`."""
        svc = self.svc
        provider = self.fleet.provider(svc)
        for m in await self.host.store.machines.load(svc.name):
            if (
                m.attributes.get("rollout") != self.r.id
                or m.attributes.get("rollout_slot") != slot
                or m.attributes.get("became")
            ):
                continue
            m = self.monitor.machine(svc.name, m.id) or m
            if m.lifecycle is Lifecycle.LAUNCHING:
                return await self.fleet.start(svc, m, None)
            if m.lifecycle in (Lifecycle.PROBATION, Lifecycle.IN_SERVICE):
                if not await provider.alive(m):
                    return await self.fleet.start(svc, m, None)
                return m
            raise Rollback(f"{m.id} ({role} machine of {version}) is {m.lifecycle.value}: it failed earlier")
        attributes = {
            "launched_for": Origin.ROLLOUT.value,
            "rollout": self.r.id,
            "rollout_slot": slot,
            "rollout_role": role,
        }
        try:
            machine = await self.fleet.launch(svc, version, attributes)
        except ProviderError as exc:
            raise Rollback(f"launching a {role} machine of {version} failed: {exc}") from None
        self._crash_point(f"rollout.launched:{role}")
        return machine

    async def _ready(self, machines: list[Machine], role: str) -> None:
        """Each machine passes probation and enters rotation; one that fails is retired and the rollout fails."""
        outcomes = await asyncio.gather(*(self._probation(m.id) for m in machines))
        if self.r.stage is not Stage.ROLLED_BACK and self.r.data.get("abort"):
            raise Rollback(str(self.r.data["abort"]))
        failed = [(m, why) for m, why in zip(machines, outcomes, strict=True) if why]
        for m, _ in failed:
            await self._retire_id(m.id, f"failed probation as a {role} machine")
        if failed:
            m, why = failed[0]
            raise Rollback(f"{role} machine {m.id} of {m.attributes.get('image_version')} failed probation: {why}")
        for m in machines:
            await self.fleet.put_in_service(self.svc, m.id)

    async def _probation(self, machine_id: str) -> str | None:
        svc = self.svc
        m = self.monitor.machine(svc.name, machine_id)
        if m is not None and m.lifecycle is Lifecycle.IN_SERVICE:
            return None
        started = launched_at(m, time.time())
        with self.monitor.watch(svc.name, machine_id) as result:
            while True:
                result.clear()
                if self.r.stage is not Stage.ROLLED_BACK and self.r.data.get("abort"):
                    return str(self.r.data["abort"])
                outcome = self.fleet.probation(
                    svc, machine_id, time.time(), timeout=self.p.probation_timeout, started=started
                )
                if outcome is ProbationOutcome.PASSED:
                    return None
                if outcome is ProbationOutcome.FAILED:
                    health = self.monitor.book.machine(svc.name, machine_id)
                    return f"its checks failed ({health.problem() if health else 'no result'})"
                if outcome is ProbationOutcome.TIMED_OUT:
                    return f"its checks did not pass within {self.p.probation_timeout:g}s"
                await wait_event(result, 0.5)

    async def _retire_id(self, machine_id: str, why: str) -> None:
        m = self.monitor.machine(self.r.service, machine_id) or await self.host.store.machines.get(
            self.r.service, machine_id
        )
        if m is not None:
            await self._retire(m, why)

    async def _retire(self, m: Machine, why: str) -> None:
        """Out of rotation, drained, released or terminated; never a quarantined machine (an incident keeps it)."""
        m = self.monitor.machine(m.service, m.id) or m
        if m.lifecycle in GONE or m.lifecycle is Lifecycle.QUARANTINED:
            return
        await self.fleet.retire(self.svc, m, why, drain=self.p.drain if m.lifecycle is Lifecycle.IN_SERVICE else 0.0)

    def _serving(self) -> list[Machine]:
        return [
            m
            for m in self.monitor.machines.get(self.r.service, {}).values()
            if m.lifecycle is Lifecycle.IN_SERVICE and "retiring" not in m.attributes
        ]

    def _mine(self) -> list[Machine]:
        """This rollout's machines of the candidate still running (launching, on probation or serving)."""
        return [
            m
            for m in self.monitor.machines.get(self.r.service, {}).values()
            if m.attributes.get("rollout") == self.r.id
            and m.attributes.get("image_version") == self.r.version
            and m.lifecycle in LIVE
        ]

    def _condition(self, machine_id: str) -> Condition | None:
        health = self.monitor.book.machine(self.r.service, machine_id)
        return health.condition if health else None

    def _healing(self) -> bool:
        return bool(self.host.incidents.machines(self.r.service))

    # -- holds --------------------------------------------------------------------------------------------
    async def _hold(self, *, abortable: bool = True, bake: bool = False) -> None:
        """Wait while the rollout or healerd is paused, the service is not in auto, or one of its incidents is
        being remediated (the bake goes on meanwhile: only its verdict waits). An abort fails the rollout."""
        host, r = self.host, self.r
        while True:
            if not self._configured():
                raise Unconfigured(r.service)
            if abortable and r.data.get("abort"):
                raise Rollback(str(r.data["abort"]))
            why = ""
            if r.paused:
                why = "the rollout is paused (healerd rollout resume)"
            elif host.controls.paused:
                why = "healerd is paused"
            elif (mode := host.controls.mode_for(r.service)) is not Mode.AUTO:
                why = f"{r.service} is in mode {mode.value}"
            elif host.incidents.remediating(r.service) and not bake:
                why = f"an incident of {r.service} is being remediated"
            if not why:
                if r.data.get("waiting", "").startswith("held:"):
                    self._wait_reason("")
                    await host.save(r)
                return
            if self._wait_reason(f"held: {why}"):
                await host.save(r)
                log.info("rollout held", reason=why)
            await self._sleep(TICK)

    def _wait_reason(self, why: str) -> bool:
        """Set what the rollout waits for; True when it changed."""
        if self.r.data.get("waiting", "") == why:
            return False
        if why:
            self.r.data["waiting"] = why
        else:
            self.r.data.pop("waiting", None)
        return True

    def _end(self) -> float:
        """The rollout ends now (returned): not active, not paused, waiting for nothing."""
        r = self.r
        r.active = r.paused = False
        r.ended_at = time.time()
        for key in ("wave", "waiting", "samples"):
            r.data.pop(key, None)
        return r.ended_at

    def _progress(self, **figures: Any) -> None:
        self.r.data["progress"] = figures

    async def _sleep(self, seconds: float) -> None:
        self.wake.clear()
        await wait_event(self.wake, seconds)
