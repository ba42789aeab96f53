"""The remediation engine: the composition root of remediation and its loop.

It builds the collaborators (controls, incidents, fleet, views, quarantine, runbook, rollouts, reconcilers),
runs the reconcilers for every service until the earliest time one of them asks for (or an event wakes it;
one failing for one service leaves the others to their work), and does the few operator actions that span
parts (resolve, acknowledge, clear a storm). Callers reach everything else through the part that owns it:
`engine.controls`, `engine.views`, `engine.quarantines`, `engine.book`, `engine.fleet`.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from structlog.contextvars import bound_contextvars

from .._aio import wait_event
from ..config import Config, Mode
from ..events import Event, EventType, Severity
from ..leadership import STANDALONE, Leadership
from ..rollouts import Rollouts
from ..store import STORE_FAULTS, Fenced
from .controls import Controls
from .fleet import Fleet
from .incidents import ACTIVE, Incident, IncidentBook, IncidentState
from .ladder import Ladder
from .playbooks import load_playbooks
from .quarantine import Quarantine
from .reconcilers import (
    FillReconciler,
    IncidentReconciler,
    ProbationReconciler,
    Reconciler,
    RotationReconciler,
    SurplusReconciler,
)
from .repair import Repair
from .retention import RetentionReconciler
from .runbook import Runbook, StepJournal
from .views import Views
from .zone_guard import ZoneReconciler
from .zone_state import ZoneGuard

if TYPE_CHECKING:
    from ..events import EventBus
    from ..metrics import Metrics
    from ..monitor import Monitor
    from ..store import BaseStore

__all__ = ["ACTIVE", "RECONCILE_INTERVAL", "Incident", "IncidentState", "RemediationEngine"]

log = structlog.get_logger("healerd.remediation")

#: the longest the loop sleeps: not every change of health wakes it (a recovery, a probation result)
RECONCILE_INTERVAL = 1.0
#: the shortest: a reconciler asking for a time already past does not spin the loop
MIN_INTERVAL = 0.05


class RemediationEngine:
    def __init__(
        self,
        config: Callable[[], Config],
        monitor: Monitor,
        *,
        store: BaseStore,
        bus: EventBus,
        metrics: Metrics,
        leadership: Leadership = STANDALONE,
        mode: Mode | None = None,
        crash_at: str | None = None,
    ) -> None:
        self._config = config
        self.monitor = monitor
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self.book = IncidentBook(store, bus, on_change=self._update_gauges)
        self.controls = Controls(config, store, cli_mode=mode, wake=self._wake.set)
        self.zones = ZoneGuard(monitor)
        self.fleet = Fleet(
            config, monitor, store=store, bus=bus, metrics=metrics, incidents=self.book, zones=self.zones
        )
        self.journal = StepJournal(store)
        self.views = Views(config, store, journal=self.journal, controls=self.controls, incidents=self.book)
        self.quarantines = Quarantine(config, monitor, store=store, bus=bus, fleet=self.fleet, views=self.views)
        self.repair = Repair(self.fleet, monitor)
        self.ladder = Ladder(self.book, self.repair, fleet=self.fleet, store=store, metrics=metrics)
        self.runbook = Runbook(
            config,
            self.book,
            journal=self.journal,
            store=store,
            metrics=metrics,
            fleet=self.fleet,
            quarantine=self.quarantines,
            repair=self.repair,
            ladder=self.ladder,
            may_act=leadership.acting,
            crash_at=crash_at,
            wake=self._wake.set,
            on_change=self._update_gauges,
        )
        self.rollouts = Rollouts(
            config,
            monitor,
            store=store,
            bus=bus,
            metrics=metrics,
            fleet=self.fleet,
            incidents=self.book,
            controls=self.controls,
            wake_engine=self._wake.set,
            crash_at=crash_at,
        )
        self.rotation_passes = RotationReconciler(self.fleet, bus, metrics=metrics)
        self.incident_passes = IncidentReconciler(
            monitor,
            store,
            bus=bus,
            metrics=metrics,
            controls=self.controls,
            incidents=self.book,
            runbook=self.runbook,
            rollouts=self.rollouts,
            ladder=self.ladder,
            zones=self.zones,
            leadership=leadership,
        )
        self.fill_passes = FillReconciler(
            monitor,
            store,
            fleet=self.fleet,
            controls=self.controls,
            incidents=self.book,
            rollouts=self.rollouts,
            zones=self.zones,
        )
        self.zone_passes = ZoneReconciler(
            self.zones,
            self.fleet,
            controls=self.controls,
            quarantines=self.quarantines,
            bus=bus,
            metrics=metrics,
            leadership=leadership,
        )
        self.reconcilers: tuple[Reconciler, ...] = (
            self.zone_passes,  # first: a lost zone's machines leave before their incidents are considered
            self.incident_passes,
            ProbationReconciler(monitor, self.fleet, quarantines=self.quarantines),
            self.fill_passes,
            SurplusReconciler(monitor, self.fleet, controls=self.controls, incidents=self.book, rollouts=self.rollouts),
            RetentionReconciler(monitor, self.quarantines),
            self.rotation_passes,
        )
        bus.subscribe(self._on_event, mirrored=True)

    # -- configuration --------------------------------------------------------------------------------------
    @property
    def config(self) -> Config:
        return self._config()

    def load_playbooks(self, config: Config) -> list[str]:
        books, problems = load_playbooks(list(config.daemon.playbook_paths))
        if problems:
            return [p.render() for p in problems]
        missing = {s.remediation.playbook for s in config.services.values() if s.managed} - set(books)
        if missing:
            return [
                f"playbook {m!r} not found in {', '.join(map(str, config.daemon.playbook_paths))}"
                for m in sorted(missing)
            ]
        self.runbook.use(books)
        return []

    async def apply(self) -> None:
        """The config changed (or this node starts leading): the fleet's rotations and images follow it."""
        await self.fleet.apply()

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        await self.controls.load()
        await self.book.load()
        for svc in self.config.services.values():  # a machine a resumed playbook is draining is left to it
            await self.fleet.sync_rotation(svc)
        self._update_gauges()
        await self.runbook.resume()
        await self.fleet.resume_launches()
        await self.rollouts.start()
        self._loop_task = asyncio.create_task(self._loop(), name="healerd-remediation")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        await self.rotation_passes.stop()
        await self.fill_passes.stop()
        self.zone_passes.stop()
        await self.rollouts.stop()
        await self.runbook.stop()

    @property
    def running(self) -> bool:
        return self._loop_task is not None

    async def follow_store(self) -> None:
        """On a follower: the incidents and the modes as the leader keeps them, for this node's views."""
        if self._loop_task is None:
            await self.controls.load()
            await self.book.load()

    # -- the loop --------------------------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        if event.type in (EventType.MACHINE_UNHEALTHY, EventType.SERVICE_STATE_CHANGED, EventType.MACHINE_FLAPPING):
            self._wake.set()

    async def _loop(self) -> None:
        next_at = math.inf
        while True:
            delay = min(RECONCILE_INTERVAL, max(MIN_INTERVAL, next_at - time.time()))
            await wait_event(self._wake, delay)
            self._wake.clear()
            next_at = math.inf
            try:
                next_at = await self.reconcile(time.time())
            except asyncio.CancelledError:
                raise
            except STORE_FAULTS:  # the store is failing and said so once: nothing is decided without it
                await asyncio.sleep(RECONCILE_INTERVAL)
            except Fenced:  # this node lost the cluster's lead; the cluster stops this loop
                await asyncio.sleep(RECONCILE_INTERVAL)
            except Exception:  # keep healing the rest; the error is logged with its traceback
                log.exception("remediation reconcile failed")

    async def reconcile(self, now: float) -> float:
        """One pass of every reconciler over every service; returns the earliest time one asks for."""
        next_at = math.inf
        for svc in list(self.config.services.values()):
            if svc.name not in self.monitor.book.services:
                continue
            for reconciler in self.reconcilers:
                try:
                    next_at = min(next_at, await reconciler.reconcile(svc, now))
                except STORE_FAULTS:
                    raise  # the loop handles these: nothing is decided without the store or the lease
                except (asyncio.CancelledError, Fenced):
                    raise
                except Exception:  # one reconciler failing for one service leaves the others to do their work
                    log.exception("reconcile failed; retrying", service=svc.name, reconciler=type(reconciler).__name__)
                    next_at = min(next_at, now + RECONCILE_INTERVAL)
        return next_at

    # -- what an operator does to incidents (API, CLI) -------------------------------------------------------
    async def resolve_by_hand(self, incident_id: str, who: str) -> dict[str, Any]:
        inc = self.book.active.get(incident_id)
        if inc is None:
            raise LookupError(f"{incident_id} is not an open incident (see GET /api/v1/incidents)")
        if inc.state is IncidentState.REMEDIATING:
            raise RuntimeError(f"{incident_id} is being remediated; wait for it to finish or fail")
        with bound_contextvars(service=inc.service, machine=inc.machine, incident=inc.id):
            await self.book.resolve(inc, f"resolved by hand{f' ({who})' if who else ''}")
        return inc.as_dict()

    async def acknowledge(self, incident_id: str, by: str, comment: str) -> dict[str, Any]:
        """A human is on the incident: no more reminders; who and when show wherever it does."""
        inc = self.book.active.get(incident_id)
        if inc is None:
            raise LookupError(f"{incident_id} is not an open incident (see GET /api/v1/incidents?state=open)")
        with bound_contextvars(service=inc.service, machine=inc.machine, incident=inc.id):
            await self.book.acknowledge(inc, by, comment)
        return inc.as_dict()

    async def clear_storm(self, service: str, by: str) -> dict[str, Any]:
        """End the service's storm cooldown now (recorded with who); the engine looks at its incidents again at
        once. Returns what was cleared: the seconds the cooldown had left (0: none was running)."""
        now = time.time()
        left = await self.controls.clear_storm(service, now)
        if left:
            who = by or "api"
            with bound_contextvars(service=service):
                log.warning("storm cooldown cleared", by=who, seconds_left=round(left))
                held: list[Incident | None] = [i for i in self.book.of(service) if i.held is not None]
                summary = f"storm cooldown of {service} cleared by {who} ({left:.0f}s were left): remediation may act"
                for inc in held or [None]:  # in each held incident's timeline, or once for the service
                    self.bus.publish(
                        Event(
                            EventType.STORM_CLEARED,
                            service,
                            summary,
                            time.time(),
                            machine=inc.machine if inc else None,
                            incident=inc.id if inc else None,
                            severity=Severity.INFO,
                            details={"by": who, "seconds_left": round(left, 1)},
                        )
                    )
        return {"service": service, "cleared": bool(left), "seconds_left": round(left, 1), "by": by or "api"}

    def _update_gauges(self) -> None:
        self.fleet.update_gauges()
