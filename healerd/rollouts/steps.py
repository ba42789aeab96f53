"""What a rollout's stages are made of, besides its machines (machines.py) and the refresh (refresh.py):
`RolloutSteps` writes its record, waits in its holds (paused, an incident being remediated, not in mode auto) and
checks that it may go on. `RolloutHost` types what all of them read of the rollouts that hold a run."""

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
from ..machines import Lifecycle
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

    @property
    def config(self) -> Config: ...

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


class Rollback(Exception):
    """The rollout fails: roll back with this reason (and the judge's figures, when it is the judge's call)."""

    def __init__(self, reason: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.figures = figures or {}


class Unconfigured(Exception):
    """The service or its image left the config: the run stops, its record kept for a start that has them."""


class RolloutSteps:
    """A rollout's record's writes, the holds it waits in, and the checks that it may go on."""

    def __init__(self, host: RolloutHost, r: Rollout) -> None:
        self.host = host
        self.r = r
        self.fleet = host.fleet
        self.monitor = host.monitor
        self.wake = host.wakes[r.service]

    @property
    def svc(self) -> ServiceConfig:
        return self.host.config.services[self.r.service]

    def configured(self) -> bool:
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

    async def enter(self, stage: Stage, reason: str = "", announce: Event | None = None) -> None:
        """The rollout is at `stage` (recorded with the event announcing it, then the event is published)."""
        self.r.stage = stage
        if reason:
            self.r.reason = reason
        if announce is not None:
            await self.host.announce(self.r, announce)
        else:
            await self.host.save(self.r)
        log.info("rollout stage", stage=stage.value, reason=reason or None)
        self.crash_point(f"rollout.{stage.value}")

    def crash_point(self, where: str) -> None:
        if self.host.crash_at and self.host.crash_at == where:
            log.warning("fault injection: killing healerd", at=where)
            os.kill(os.getpid(), signal.SIGKILL)

    # -- checks that the rollout may go on, and telling the provider ---------------------------------------
    def canary_fine(self, machine_id: str) -> None:
        m = self.monitor.machine(self.r.service, machine_id)
        if m is None or m.lifecycle is not Lifecycle.IN_SERVICE:
            raise Rollback(f"canary {machine_id} left service ({m.lifecycle.value if m else 'gone'})")
        health = self.monitor.book.machine(self.r.service, machine_id)
        if health is not None and health.condition is Condition.DOWN:
            raise Rollback(f"canary {machine_id} is down: {health.problem()}")

    def service_fine(self) -> None:
        health = self.monitor.book.services.get(self.r.service)
        if health is not None and health.settled and health.state is ServiceState.DOWN:
            raise Rollback(f"{self.r.service} fell below min_healthy ({self.svc.min_healthy} machines)")

    async def tell_provider(self, version: str) -> None:
        spec = self.host.config.images[self.r.image].versions.get(version)
        if spec is None:
            return
        try:
            await self.fleet.provider(self.svc).on_promoted(self.svc, spec)
        except ProviderError as exc:  # the rollout goes on: healerd launches from the version it names itself
            log.error("the provider could not be told the known-good version", version=version, error=str(exc))

    # -- holds --------------------------------------------------------------------------------------------
    async def hold(self, *, abortable: bool = True, bake: bool = False) -> None:
        """Wait while the rollout or healerd is paused, the service is not in auto, or one of its incidents is
        being remediated (the bake goes on meanwhile: only its verdict waits). An abort fails the rollout."""
        host, r = self.host, self.r
        while True:
            if not self.configured():
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
                    self.wait_reason("")
                    await host.save(r)
                return
            if self.wait_reason(f"held: {why}"):
                await host.save(r)
                log.info("rollout held", reason=why)
            await self.sleep(TICK)

    def wait_reason(self, why: str) -> bool:
        """Set what the rollout waits for; True when it changed."""
        if self.r.data.get("waiting", "") == why:
            return False
        if why:
            self.r.data["waiting"] = why
        else:
            self.r.data.pop("waiting", None)
        return True

    def end(self) -> float:
        """The rollout ends now (returned): not active, not paused, waiting for nothing."""
        r = self.r
        r.active = r.paused = False
        r.ended_at = time.time()
        for key in ("wave", "waiting", "samples"):
            r.data.pop(key, None)
        return r.ended_at

    def progress(self, **figures: Any) -> None:
        self.r.data["progress"] = figures

    async def sleep(self, seconds: float) -> None:
        self.wake.clear()
        await wait_event(self.wake, seconds)
