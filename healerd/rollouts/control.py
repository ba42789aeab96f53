"""Image promotion by evidence (docs/rollouts.md): the rollout record, and `Rollouts`, which starts, pauses, resumes
and aborts rollouts, resumes them after a restart (or a takeover) and shows them.

One rollout at a time per service, run by `RolloutRun` (run.py) in its own task; every step is
recorded in the store before the next one starts, and every step looks at the world first, so `kill -9`
anywhere resumes without a duplicate or an orphan machine. Only the cluster's leader runs rollouts (they live
in the remediation engine, which only the leader runs); any node shows them from the store.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import structlog

from ..config import Config, Mode, ServiceConfig
from ..config.models import ImageConfig, RolloutConfig
from ..events import Event, EventType, Severity, new_id
from ..providers.base import ProviderError
from .record import JUDGING, Rollout, RolloutRefused, Stage, rollout_view, version_record
from .run import RolloutRun

if TYPE_CHECKING:
    from ..events import EventBus
    from ..metrics import Metrics
    from ..monitor import Monitor
    from ..remediation.controls import Controls
    from ..remediation.fleet import Fleet
    from ..remediation.incidents import IncidentBook
    from ..store import BaseStore

log = structlog.get_logger("healerd.rollout")


class Rollouts:
    """The rollouts of every service: one task each while it runs."""

    def __init__(
        self,
        config: Callable[[], Config],
        monitor: Monitor,
        *,
        store: BaseStore,
        bus: EventBus,
        metrics: Metrics,
        fleet: Fleet,
        incidents: IncidentBook,
        controls: Controls,
        wake_engine: Callable[[], None] = lambda: None,
        crash_at: str | None = None,
    ) -> None:
        self._config = config
        self.monitor = monitor
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self.fleet = fleet
        self.incidents = incidents
        self.controls = controls
        #: fault injection for the crash-safety tests (`healerd run --crash-at rollout.<stage>`), never armed otherwise
        self.crash_at = crash_at
        self.wake_engine = wake_engine
        self.active: dict[str, Rollout] = {}  # by service
        self.wakes: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._started = False
        self._saving = asyncio.Lock()

    @property
    def config(self) -> Config:
        return self._config()

    # -- what the engine's reconcilers ask ------------------------------------------------------------------
    def busy(self, service: str) -> bool:
        """A rollout of the service is running: it, not the fill and surplus loops, sets the fleet's size."""
        return service in self.active

    def owns(self, service: str, machine_id: str) -> bool:
        """The machine is a candidate being judged: the rollout handles its failure (a rollback), not a playbook."""
        r = self.active.get(service)
        if r is None or r.stage not in JUDGING:
            return False
        m = self.monitor.machine(service, machine_id)
        return m is not None and m.attributes.get("rollout") == r.id

    # -- lifecycle (the leader's engine) ------------------------------------------------------------------
    async def start(self) -> None:
        """Resume the rollouts a stop, a crash or a takeover interrupted."""
        self._started = True
        self.active = {}
        for rec in await self.store.rollouts.active():
            if rec.service not in self.config.services:
                log.warning(
                    "rollout of a service no longer configured left as it is", rollout=rec.id, service=rec.service
                )
                continue
            r = Rollout.from_record(rec)
            self.active[r.service] = r
            self.republish(r)
            log.info("resuming rollout", rollout=r.id, service=r.service, version=r.version, stage=r.stage.value)
            self._spawn(r)
        for name in self.config.services:  # one that ended with its last event on its way
            last = await self.store.rollouts.latest(name)
            if last is not None and not last.active and last.data.get("announce"):
                ended = Rollout.from_record(last)
                self.republish(ended)
                await self.save(ended)
        self.update_gauges()

    async def stop(self) -> None:
        self._started = False
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.active = {}

    def _spawn(self, r: Rollout) -> None:
        self.wakes[r.service] = asyncio.Event()
        task = asyncio.create_task(RolloutRun(self, r).run(), name=f"healerd-rollout-{r.service}")
        self._tasks[r.service] = task
        task.add_done_callback(lambda t, s=r.service: self._done(s, t))  # type: ignore[misc]

    def _done(self, service: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(service) is task:
            self._tasks.pop(service, None)
            r = self.active.get(service)
            if r is not None and not r.active:
                self.active.pop(service, None)
        self.update_gauges()
        self.wake_engine()

    def update_gauges(self) -> None:
        gauge = self.metrics.gauge("rollout_stage")
        for name in self.config.services:
            r = self.active.get(name)
            for stage in Stage:
                if stage is not Stage.COMPLETED:
                    gauge.labels(name, stage.value).set(1 if r is not None and r.stage is stage else 0)

    async def view(self, service: str) -> dict[str, Any] | None:
        """The service's rollout: the running one, else the last one the store holds (None: never rolled out)."""
        r = self.active.get(service)
        record = r.record() if r is not None else await self.store.rollouts.latest(service)
        return rollout_view(record, self.monitor) if record is not None else None

    # -- requests (API, CLI) --------------------------------------------------------------------------------
    async def begin(
        self, service: str, version: str, canary: int | None = None, bake: float | None = None, by: str = ""
    ) -> dict[str, Any]:
        svc, image, known_good = admit(
            self.config,
            service,
            version,
            acting=self._started,
            active=self.active,
            known_good=self.fleet.known_good,
            mode=self.controls.mode_for(service),
            paused=self.controls.paused,
            remediating=self.incidents.remediating(service) > 0,
        )
        params = image.rollout.model_copy(
            update={k: v for k, v in (("canary", canary), ("bake", bake)) if v is not None}
        )
        params = RolloutConfig.model_validate(params.model_dump())  # the overrides are checked too
        try:
            room = await self.fleet.provider(svc).rollout_problem(svc, max(params.canary, params.max_surge))
        except ProviderError as exc:
            raise RolloutRefused(503, "provider unavailable", f"cannot ask the provider for room: {exc}") from None
        if room:
            raise RolloutRefused(409, "no room for the rollout", room)
        now = time.time()
        r = Rollout(
            new_id(now),
            service,
            image.name,
            version,
            known_good,
            Stage.CANARY if params.canary else Stage.PROMOTED,
            started_at=now,
            updated_at=now,
            data={"params": params.model_dump(), "by": by, "desired": svc.desired},
        )
        if not params.canary:
            r.data["judge"] = {
                "outcome": "skipped",
                "reason": f"canary 0: promoted by {by or 'an operator'} without a judgement",
            }
        started = self.event(
            r,
            EventType.ROLLOUT_STARTED,
            f"rollout of {svc.image} {version} to {service} started by {by or 'an operator'} (canary {params.canary}, "
            f"bake {params.bake:g}s; known-good {known_good})",
            stage=r.stage.value,
            by=by,
        )
        await self.store.images.mark(
            version_record(r, "candidate", f"rollout {r.id} started by {by or 'an operator'}", now)
        )
        self.active[service] = r
        await self.announce(r, started)
        log.info("rollout started", rollout=r.id, service=service, version=version, canary=params.canary, by=by)
        self._spawn(r)
        self.update_gauges()
        return rollout_view(r.record(), self.monitor)

    async def set_paused(self, service: str, paused: bool, by: str = "") -> dict[str, Any]:
        r = self._running(service)
        if r.paused != paused:
            r.paused = paused
            what = "paused" if paused else "resumed"
            await self.announce(
                r,
                self.event(
                    r,
                    EventType.ROLLOUT_PAUSED if paused else EventType.ROLLOUT_RESUMED,
                    f"rollout of {r.version} to {service} {what}{f' by {by}' if by else ''} (stage {r.stage.value})",
                    stage=r.stage.value,
                    by=by,
                ),
            )
            self.wakes[service].set()
        return rollout_view(r.record(), self.monitor)

    async def abort(self, service: str, by: str = "") -> dict[str, Any]:
        r = self._running(service)
        if r.stage in (Stage.COMPLETED, Stage.ROLLED_BACK):
            raise RolloutRefused(409, "already ending", f"the rollout is {r.stage.value}: {r.reason}")
        r.data["abort"] = f"aborted{f' by {by}' if by else ''}"
        await self.save(r)
        self.wakes[service].set()
        return rollout_view(r.record(), self.monitor)

    def _running(self, service: str) -> Rollout:
        if service not in self.config.services:
            raise RolloutRefused(
                404, "unknown service", f"no service {service!r}; services: {', '.join(self.config.services)}"
            )
        r = self.active.get(service)
        if r is None:
            raise RolloutRefused(
                409, "no rollout running", f"{service} has no rollout running (healerd rollout status {service})"
            )
        return r

    # -- what the runs use ----------------------------------------------------------------------------------
    async def save(self, r: Rollout) -> None:
        """Write the whole record; one write at a time (the API's and the run's), so the newest one lands last."""
        async with self._saving:
            r.updated_at = time.time()
            await self.store.rollouts.save(r.record())
        self.update_gauges()

    def event(
        self, r: Rollout, kind: EventType, summary: str, severity: Severity = Severity.INFO, **details: Any
    ) -> Event:
        return Event(
            kind,
            r.service,
            summary,
            time.time(),
            severity=severity,
            firing=kind not in (EventType.ROLLOUT_COMPLETED, EventType.ROLLOUT_PROMOTED, EventType.ROLLOUT_RESUMED),
            details={"rollout": r.id, "image": r.image, "version": r.version, "previous": r.previous, **details},
        )

    async def announce(self, r: Rollout, event: Event) -> None:
        """Record the event with the rollout, then publish it: a crash in between publishes it on resume (same
        id: the event log keeps it once), so no rollout event is lost."""
        r.data.setdefault("announce", []).append(event.as_dict())
        await self.save(r)
        self.publish(r, event)

    def publish(self, r: Rollout, event: Event) -> None:
        self.bus.publish(event)
        left = [a for a in r.data.get("announce", []) if a["id"] != event.id]
        if left:
            r.data["announce"] = left
        else:
            r.data.pop("announce", None)

    def republish(self, r: Rollout) -> None:
        """The events a crash kept from going out."""
        for a in list(r.data.get("announce", [])):
            event = Event(
                EventType(a["type"]),
                a["service"],
                a["summary"],
                a["timestamp"],
                severity=Severity(a["severity"]),
                firing=a["status"] == "firing",
                details=a["details"],
                id=a["id"],
            )
            log.info("publishing a rollout event a stop kept back", event_type=event.type.value, event_id=event.id)
            self.publish(r, event)


def admit(
    config: Config,
    service: str,
    version: str,
    *,
    acting: bool,
    active: Mapping[str, Rollout],
    known_good: Mapping[str, str],
    mode: Mode,
    paused: bool,
    remediating: bool,
) -> tuple[ServiceConfig, ImageConfig, str]:
    """May a rollout of `version` to `service` start now? Returns the service, its image and its known-good
    version, or raises RolloutRefused with the status, the reason and what to do."""
    svc = config.services.get(service)
    if svc is None:
        raise RolloutRefused(404, "unknown service", f"no service {service!r}; services: {', '.join(config.services)}")
    if svc.image is None or not svc.managed:
        raise RolloutRefused(
            409,
            "service not launched from an image",
            f"{service} has no image: its machines are not healerd's to replace",
        )
    image = config.images[svc.image]
    if version not in image.versions:
        raise RolloutRefused(
            404,
            "unknown version",
            f"image {svc.image} has no version {version!r}; versions: {', '.join(image.versions)} "
            "(add it under images.<image>.versions and reload)",
        )
    if not acting:
        raise RolloutRefused(409, "not acting", "this healerd is not running remediation (a follower or stopping)")
    current = active.get(service)
    if current is not None:
        raise RolloutRefused(
            409,
            "a rollout is running",
            f"{service} is rolling out {current.version} ({current.id}, stage {current.stage.value}); wait for it, "
            f"or `healerd rollout abort {service}`",
        )
    good = known_good.get(svc.image, image.known_good)
    if version == good:
        raise RolloutRefused(409, "already known-good", f"{version} is already the known-good version of {svc.image}")
    if mode is not Mode.AUTO or paused:
        why = "healerd is paused (resume it)" if paused else f"{service} is in mode {mode.value}"
        raise RolloutRefused(
            409, "not acting", f"a rollout launches and retires machines, and {why}; switch to auto first"
        )
    if remediating:
        raise RolloutRefused(
            409, "remediation running", f"an incident of {service} is being remediated; try again once it ends"
        )
    for other in active.values():
        if other.image == svc.image:
            raise RolloutRefused(
                409,
                "image busy",
                f"{svc.image} is being rolled out to {other.service} ({other.id}); one at a time per image",
            )
    return svc, image, good
