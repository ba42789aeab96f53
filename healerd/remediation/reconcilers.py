"""The engine's reconcilers. Each looks at one service at a time `now`, acts, and returns the next time it
needs to run by itself; changes of health also wake the engine (and its 1 s ceiling finds the rest).

- `IncidentReconciler`: opens an incident per machine failure, passes it through the safety gates, resolves it.
- `ProbationReconciler`: machines launched to fill the fleet enter service once their checks pass.
- `FillReconciler`: launches machines up to `desired`.
- `SurplusReconciler`: retires healthy machines above `desired`, those not on the known-good version first.
- `RetentionReconciler` (in `retention.py`): ends quarantines older than `keep_for` (a warning first).
- `RotationReconciler`: compares a load balancer that forgets (HAProxy after a reload) with the rotation every
  check interval and re-applies what is missing; says once when it fails and once when it answers again.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Collection, Mapping
from typing import TYPE_CHECKING, Protocol

import structlog
from structlog.contextvars import bound_contextvars

from ..events import Event, EventType, Severity
from ..health import Condition, ServiceState
from ..leadership import STANDALONE, Leadership
from ..machines import PROBATION, Lifecycle, Machine, Origin, launched_at
from ..probation import ProbationOutcome, probation_deadline
from ..providers.base import ProviderError
from ..zones import uneven
from .fleet import retirement_order
from .incidents import Incident, IncidentState
from .safety import Decision, GateInput, Reason, decide, troubled

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..events import EventBus
    from ..metrics import Metrics
    from ..monitor import Monitor
    from ..rollouts import Rollouts
    from ..rotations.base import Rotation
    from ..store import BaseStore
    from .controls import Controls
    from .fleet import Fleet
    from .incidents import IncidentBook
    from .ladder import Ladder
    from .quarantine import Quarantine
    from .runbook import Runbook
    from .zone_state import ZoneGuard

log = structlog.get_logger("healerd.remediation")

NEVER = math.inf  # nothing to do by itself: an event (or the engine's ceiling) brings it back


class Reconciler(Protocol):
    async def reconcile(self, service: ServiceConfig, now: float) -> float: ...


def _condition(monitor: Monitor, service: str, machine: str) -> Condition | None:
    m = monitor.book.machine(service, machine)
    return m.condition if m else None


def _serving(monitor: Monitor, service: str) -> list[Machine]:
    return [m for m in monitor.machines.get(service, {}).values() if m.lifecycle is Lifecycle.IN_SERVICE]


def _reason(decision: Decision) -> str:
    return decision.reason.value if decision.reason else ""


def _new_kind(inc: Incident, decision: Decision) -> bool:
    """An `unconfirmed` hold for another cause (its zone failing together, then its zone's loss unconfirmed, or
    the machine alone unconfirmed): said again, so that the incident shows the cause that holds it now. Its
    figures changing is not a new cause (the text before the first ':' names the cause)."""
    before = str(inc.details.get("suppressed_detail", ""))
    return decision.reason is Reason.UNCONFIRMED and before.split(":")[0] != decision.detail.split(":")[0]


def incident_targets(
    conditions: Mapping[str, Condition], known: Collection[str], candidates: Collection[str]
) -> list[str]:
    """The serving machines (id -> condition) whose failure needs an incident now: down, with no incident open
    for them, and not a rollout's candidate being judged (its rollout rolls back; nothing is healed)."""
    return [
        mid
        for mid, condition in conditions.items()
        if condition is Condition.DOWN and mid not in known and mid not in candidates
    ]


class IncidentReconciler:
    """One incident per machine failure. An open incident lasts as long as the failure; the safety gates
    decide when it is remediated; once remediated (or escalated) it ends when the service is optimal."""

    def __init__(
        self,
        monitor: Monitor,
        store: BaseStore,
        *,
        bus: EventBus,
        metrics: Metrics,
        controls: Controls,
        incidents: IncidentBook,
        runbook: Runbook,
        rollouts: Rollouts,
        ladder: Ladder,
        zones: ZoneGuard,
        leadership: Leadership = STANDALONE,
    ) -> None:
        self.monitor = monitor
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self.controls = controls
        self.incidents = incidents
        self.runbook = runbook
        self.rollouts = rollouts
        self.ladder = ladder  # a machine taken out of rotation for an incident returns when it is mended
        self.zones = zones  # a zone failing together is the zone guard's: not a storm, and judged as a zone
        #: in a cluster: asks the vantage points (service, machine, timeout) before a remediation starts
        self.leadership = leadership
        self._unconfirmed_until: dict[str, float] = {}

    async def reconcile(self, service: ServiceConfig, now: float) -> float:
        health = self.monitor.book.services.get(service.name)
        if health is None:
            return NEVER
        with bound_contextvars(service=service.name):
            if not health.settled:  # its start-up grace may have ended with nothing else happening
                self.bus.publish_all(self.monitor.book.refresh(service.name, now))
            serving = _serving(self.monitor, service.name)
            book = self.monitor.book
            unhealthy = troubled(
                self.incidents.machines(service.name),
                [
                    mh
                    for m in serving
                    if (mh := book.machine(service.name, m.id)) is not None
                    and not self.zones.in_unhealthy_zone(service.name, m)
                ],
            )
            if unhealthy > service.max_unhealthy:
                await self.controls.storm(service.name, now + service.remediation.storm_cooldown)
            conditions = {m.id: mh.condition for m in serving if (mh := book.machine(service.name, m.id)) is not None}
            candidates = {mid for mid in conditions if self.rollouts.owns(service.name, mid)}
            for mid in incident_targets(conditions, self.incidents.machines(service.name), candidates):
                mh = book.machine(service.name, mid)
                summary = f"{mid} is down: {mh.problem() if mh is not None else 'no health'}"
                first = service.rungs[0].playbook if service.rungs else ""
                await self.incidents.open(service.name, mid, first, summary, now)
            next_at = NEVER
            for inc in self.incidents.of(service.name):
                with bound_contextvars(machine=inc.machine, incident=inc.id):
                    if inc.state is IncidentState.OPEN:
                        # Not remediated (held back, observing, or alert-only): it lasts as long as the failure.
                        over = self._failure_over(service.name, inc.machine)
                        if over:
                            await self._resolve(service, inc, over)
                            continue
                        retry_at = await self._consider(service, inc, now, unhealthy)
                        next_at = min(next_at, retry_at if retry_at is not None else NEVER)
                    elif inc.state is IncidentState.REMEDIATING:
                        continue
                    elif inc.state in (IncidentState.FAILED, IncidentState.REMEDIATED) and self._mended(service, inc):
                        healed = inc.details.get("healed_by")
                        why = f"healed by {healed}" if healed else f"{inc.machine} recovered"
                        await self._resolve(service, inc, why)  # back in rotation
                    elif health.state is ServiceState.OPTIMAL:
                        await self._resolve(service, inc, "the service is optimal again")
            self._count_held(service.name)
            return next_at

    def _mended(self, svc: ServiceConfig, inc: Incident) -> bool:
        """A machine kept out of rotation for a failed remediation passes its checks again (a human mended it)."""
        m = self.monitor.machine(svc.name, inc.machine)
        healthy = _condition(self.monitor, svc.name, inc.machine) in (Condition.UP, Condition.IMPAIRED)
        return (
            bool(inc.details.get("out_of_rotation"))
            and m is not None
            and m.lifecycle is Lifecycle.IN_SERVICE
            and healthy
        )

    async def _resolve(self, svc: ServiceConfig, inc: Incident, why: str) -> None:
        """The failure is over: a machine taken out of rotation for it and healthy again takes traffic again."""
        if self._mended(svc, inc):
            await self.ladder.back_in_rotation(svc, inc)
            why += "; back in rotation"
        await self.incidents.resolve(inc, why)

    def _count_held(self, service: str) -> None:
        """healerd_incidents_held: the service's open incidents by the gate holding each back now (0 for the
        others), so an alert on it lasts exactly as long as the hold."""
        counts = dict.fromkeys((r.value for r in Reason), 0)
        for inc in self.incidents.of(service):
            held = inc.held
            if held is not None:
                counts[held["reason"]] += 1
        gauge = self.metrics.gauge("incidents_held")
        for reason, n in counts.items():
            gauge.labels(service, reason).set(n)

    def _failure_over(self, service: str, machine_id: str) -> str:
        """Why the failure an open incident is about has ended ('' while it lasts)."""
        m = self.monitor.machine(service, machine_id)
        if m is None:
            return f"{machine_id} is no longer part of the fleet"
        if m.lifecycle is not Lifecycle.IN_SERVICE:
            return f"{machine_id} is out of rotation ({m.lifecycle.value})"
        condition = _condition(self.monitor, service, machine_id)
        if condition in (Condition.UP, Condition.IMPAIRED):
            return f"{machine_id} recovered ({condition.value})"
        return ""

    async def _consider(self, svc: ServiceConfig, inc: Incident, now: float, unhealthy: int) -> float | None:
        """Remediate now, or hold back (said once per reason); returns when a holding gate opens by itself."""
        decision = decide(await self._gate_input(svc, inc, now, unhealthy))
        if decision.allowed:
            decision = await self._confirmed(svc, inc, now)
        if decision.allowed:
            self._unconfirmed_until.pop(inc.id, None)
            await self.runbook.begin(svc, inc)
            return None
        if inc.details.get("suppressed") != _reason(decision) or _new_kind(inc, decision):
            await self._hold(svc, inc, decision, now)
        return decision.retry_at

    async def _confirmed(self, svc: ServiceConfig, inc: Incident, now: float) -> Decision:
        """Other vantage points must see the machine down too (a cluster's confirm_from); asked again after one
        check interval when they do not."""
        again = self._unconfirmed_until.get(inc.id)
        if again is not None and now < again:
            return Decision(False, Reason.UNCONFIRMED, str(inc.details.get("suppressed_detail", "")), again)
        timeout = max((c.timeout for c in svc.checks), default=5.0) + 2.0
        verdict = await self.leadership.confirm(svc.name, inc.machine, timeout)
        if verdict is None:  # alone: nobody else to ask
            return Decision.go()
        if verdict.confirmed:
            inc.details["confirmed_by"] = verdict.detail
            return Decision.go()
        again = now + max(5.0, min((c.interval for c in svc.checks), default=5.0))
        self._unconfirmed_until[inc.id] = again
        return Decision(False, Reason.UNCONFIRMED, f"not confirmed: {verdict.detail}", again)

    async def _hold(self, svc: ServiceConfig, inc: Incident, decision: Decision, now: float) -> None:
        """A new reason holds the incident back: saved, counted, and said once (event, log, every notifier)."""
        assert decision.reason is not None
        inc.details["suppressed"] = decision.reason.value
        inc.details["suppressed_detail"] = decision.detail
        inc.details["held_since"] = now
        await self.incidents.save(inc, now)
        self.metrics.counter("remediation_suppressed").labels(svc.name, decision.reason.value).inc()
        self._count_held(svc.name)
        critical = decision.reason in (Reason.MAX_UNHEALTHY, Reason.RETRY_LIMIT)
        held = inc.held or {}
        todo = f" What to do: {held['what_to_do']}" if held.get("what_to_do") else ""
        self.incidents.emit(
            EventType.REMEDIATION_SUPPRESSED,
            inc,
            f"remediation of {inc.machine} held back ({decision.reason.value}): {decision.detail}.{todo}",
            Severity.CRITICAL if critical else Severity.WARNING,
            reason=decision.reason.value,
            detail=decision.detail,
            held=held,
        )
        log.warning("remediation held back", reason=decision.reason.value, detail=decision.detail)
        if decision.reason is Reason.DRY_RUN:
            self.runbook.log_dry_run(inc)

    def _dependencies_down(self, svc: ServiceConfig) -> tuple[str, ...]:
        out = []
        for dep in svc.depends_on:
            health = self.monitor.book.services.get(dep)
            if health is not None and health.state is ServiceState.DOWN:
                out.append(f"{dep}: {health.reason}")
        return tuple(out)

    async def _gate_input(self, svc: ServiceConfig, inc: Incident, now: float, unhealthy: int) -> GateInput:
        rem = svc.remediation
        launches = await self.store.incidents.launches_since(svc.name, now - 3600, by_incidents=True)
        fails = await self.store.incidents.failures(svc.name, inc.machine)
        m = self.monitor.machine(svc.name, inc.machine)
        return GateInput(
            now=now,
            mode=self.controls.mode_for(svc.name),
            paused=self.controls.paused,
            silenced=await self.controls.silenced(svc.name, inc.machine, now),
            flapping=_condition(self.monitor, svc.name, inc.machine) is Condition.FLAPPING,
            dependencies_down=self._dependencies_down(svc),
            monitor_suspect=self.zones.suspect(svc.name),
            zone_unconfirmed=self.zones.held(svc.name, m.zone if m is not None else ""),
            unhealthy=unhealthy,
            max_unhealthy=svc.max_unhealthy,
            storm_until=self.controls.storm_until.get(svc.name, 0.0),
            running=self.incidents.remediating(svc.name),
            max_concurrent=rem.max_concurrent,
            launches_last_hour=int(launches),
            max_per_hour=rem.max_per_hour,
            failures=fails.count,
            last_failure=float(fails.last or 0.0),
            backoff=rem.backoff,
            max_retries=rem.max_retries,
        )


class ProbationReconciler:
    """Machines launched to fill the fleet (not by an incident) enter service once their checks pass, and
    are quarantined when they fail or outlast `probation_timeout`."""

    def __init__(self, monitor: Monitor, fleet: Fleet, *, quarantines: Quarantine) -> None:
        self.monitor = monitor
        self.fleet = fleet
        self.quarantines = quarantines

    async def reconcile(self, service: ServiceConfig, now: float) -> float:
        if not service.managed:
            return NEVER
        next_at = NEVER
        with bound_contextvars(service=service.name):
            for m in list(self.monitor.machines.get(service.name, {}).values()):
                if m.lifecycle is not Lifecycle.PROBATION or m.origin is not Origin.FILL:
                    continue
                with bound_contextvars(machine=m.id):
                    timeout = service.remediation.probation_timeout
                    outcome = self.fleet.probation(service, m.id, now, timeout=timeout)
                    if outcome is ProbationOutcome.PASSED:
                        await self.fleet.put_in_service(service, m.id)
                        log.info("machine in service")
                    elif outcome is ProbationOutcome.FAILED or outcome is ProbationOutcome.TIMED_OUT:
                        await self.quarantines.quarantine(service, m.id, PROBATION, False)
                        log.error("machine failed probation and is quarantined")
                    else:
                        next_at = min(next_at, probation_deadline(launched_at(m, now), timeout))
        return next_at


#: the longest wait before a failed fill launch is asked for again
RELAUNCH_MAX = 30.0


class FillReconciler:
    """Launches machines until the service has `desired` (launching, on probation or in service), unless an
    incident is handling the gap or a gate holds (said once)."""

    def __init__(
        self,
        monitor: Monitor,
        store: BaseStore,
        *,
        fleet: Fleet,
        controls: Controls,
        incidents: IncidentBook,
        rollouts: Rollouts,
        zones: ZoneGuard,
    ) -> None:
        self.monitor = monitor
        self.store = store
        self.fleet = fleet
        self.controls = controls
        self.incidents = incidents
        self.rollouts = rollouts
        self.zones = zones
        self._held: set[str] = set()  # services whose "not launching" was said
        #: machines whose fill launch failed: attempts so far, and when to ask again (doubling, at most 30 s)
        self._relaunch: dict[str, tuple[int, float]] = {}
        #: launches asked for again, in the background: a provider that hangs does not hold the engine
        self.relaunching: dict[str, asyncio.Task[None]] = {}

    async def reconcile(self, service: ServiceConfig, now: float) -> float:
        if not service.managed:
            return NEVER
        with bound_contextvars(service=service.name):
            machines = self.monitor.machines.get(service.name, {}).values()
            live = (Lifecycle.LAUNCHING, Lifecycle.PROBATION, Lifecycle.IN_SERVICE)
            # a lost zone's share beyond zone_loss.max_surge is not launched again
            missing = service.desired - self.zones.short(service) - sum(1 for m in machines if m.lifecycle in live)
            if missing <= 0 and self._uneven(service):
                missing = 1  # one more in the emptiest zone; the surplus then leaves the fullest one
            # a fill launch that failed stays recorded as launching (and counted): it is asked for again
            stalled = [m for m in machines if m.lifecycle is Lifecycle.LAUNCHING and m.origin is Origin.FILL]
            if (missing <= 0 and not stalled) or self.rollouts.busy(service.name):  # a rollout sets its size
                return NEVER
            if self.incidents.machines(service.name):
                return NEVER  # an incident is handling (or escalated) the gap: never launch around it
            decision = decide(await self._gate_input(service, now))
            if not decision.allowed:
                if service.name not in self._held:
                    self._held.add(service.name)
                    log.warning(
                        "fleet below desired, not launching",
                        missing=missing,
                        reason=_reason(decision),
                        detail=decision.detail,
                    )
                return decision.retry_at or NEVER
            self._held.discard(service.name)
            next_at = NEVER
            for m in stalled:  # under the same machine_id: a provider that did start it finds it
                attempts, due = self._relaunch.get(m.id, (0, 0.0))
                if m.id in self.relaunching:
                    continue
                if now < due:
                    next_at = min(next_at, due)
                    continue
                self.relaunching[m.id] = asyncio.create_task(
                    self._launch_again(service, m, attempts), name=f"healerd-relaunch-{m.id}"
                )
            if missing > 0:
                log.info("launching machines to reach desired", missing=missing, desired=service.desired)
            for _ in range(missing):
                try:
                    await self.fleet.launch_replacement(service, None)
                except ProviderError as exc:
                    log.error("launch failed", error=str(exc))
                    break
            return next_at

    def _uneven(self, svc: ServiceConfig) -> bool:
        """The service is whole and healthy but spread unevenly across its zones (after a lost zone returned)."""
        zones = self.fleet.provider(svc).zones(svc)
        verdict = self.zones.verdict(svc.name)
        if len(zones) < 2 or verdict.unhealthy or self.zones.unreachable(svc.name):
            return False
        machines = list(self.monitor.machines.get(svc.name, {}).values())
        if any(m.lifecycle in (Lifecycle.LAUNCHING, Lifecycle.PROBATION) for m in machines):
            return False
        serving = [m for m in machines if m.lifecycle is Lifecycle.IN_SERVICE]
        if len(serving) != svc.desired:
            return False
        if any(_condition(self.monitor, svc.name, m.id) is not Condition.UP for m in serving):
            return False
        return uneven(zones, [m.zone for m in serving])

    async def _launch_again(self, service: ServiceConfig, m: Machine, attempts: int) -> None:
        with bound_contextvars(service=service.name, machine=m.id):
            try:
                await self.fleet.start(service, m, None)
            except ProviderError as exc:
                wait = min(RELAUNCH_MAX, 2.0 ** (attempts + 1))
                self._relaunch[m.id] = (attempts + 1, time.time() + wait)
                log.error("launch failed; asked again later", error=str(exc), retry_in=wait)
            except Exception:  # a bug: said, and the machine is asked for again later
                log.exception("launch failed")
                self._relaunch[m.id] = (attempts + 1, time.time() + RELAUNCH_MAX)
            else:
                self._relaunch.pop(m.id, None)
            finally:
                self.relaunching.pop(m.id, None)

    async def stop(self) -> None:
        """Cancel the launches asked for again (the next leader, or the next start, asks again)."""
        tasks = list(self.relaunching.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _gate_input(self, svc: ServiceConfig, now: float) -> GateInput:
        return GateInput(
            now=now,
            mode=self.controls.mode_for(svc.name),
            paused=self.controls.paused,
            silenced=await self.controls.silenced(svc.name, "", now),
            monitor_suspect=self.zones.suspect(svc.name),
            launches_last_hour=await self.store.incidents.launches_since(svc.name, now - 3600),
            max_per_hour=max(svc.remediation.max_per_hour, svc.desired),
            max_concurrent=1 << 30,
        )


class SurplusReconciler:
    """More machines in service than `desired` (a machine released back to rotation, a lowered desired):
    one surplus machine at a time (not on the known-good version first, then the newest: `retirement_order`)
    leaves rotation and is retired, never quarantined, and only while the healthy machines left still reach
    `desired` (so never below min_healthy)."""

    def __init__(
        self, monitor: Monitor, fleet: Fleet, *, controls: Controls, incidents: IncidentBook, rollouts: Rollouts
    ) -> None:
        self.monitor = monitor
        self.fleet = fleet
        self.controls = controls
        self.incidents = incidents
        self.rollouts = rollouts
        self._held: set[str] = set()  # services whose "not retiring" was said

    async def reconcile(self, service: ServiceConfig, now: float) -> float:
        if not service.managed:
            return NEVER
        with bound_contextvars(service=service.name):
            in_service = _serving(self.monitor, service.name)
            if len(in_service) <= service.desired or self.rollouts.busy(service.name):
                return NEVER
            if self.incidents.remediating(service.name):
                return NEVER  # a playbook is moving machines: look again once it is done
            healthy = [m for m in in_service if _condition(self.monitor, service.name, m.id) is Condition.UP]
            if len(healthy) <= service.desired:
                return NEVER  # the surplus is a sick machine: its incident handles it
            gate = GateInput(
                now=now,
                mode=self.controls.mode_for(service.name),
                paused=self.controls.paused,
                silenced=await self.controls.silenced(service.name, "", now),
                max_per_hour=1 << 30,
                max_concurrent=1 << 30,
            )
            decision = decide(gate)
            known_good = self.fleet.known_good.get(service.image) if service.image else None
            victim = retirement_order(healthy, known_good)[0]
            if not decision.allowed:
                if service.name not in self._held:
                    self._held.add(service.name)
                    log.warning(
                        "fleet above desired, not retiring",
                        surplus=len(in_service) - service.desired,
                        would_retire=victim.id,
                        reason=_reason(decision),
                        detail=decision.detail,
                    )
                return decision.retry_at or NEVER
            self._held.discard(service.name)
            why = f"{len(in_service)} in service for desired {service.desired}"
            version = victim.image_version
            if known_good and version != known_good:
                why += f"; it runs {version or 'an unrecorded version'}, not the known-good {known_good}"
            await self.fleet.retire(service, victim, why)
            return NEVER


class RotationReconciler:
    """A load balancer that forgets (HAProxy's runtime changes are lost on a reload or a restart) is compared
    with healerd's rotation every check interval, and what it lost is applied again, with an event. Each pass
    runs in the background: a load balancer that is slow or silent holds up nothing but its own next pass."""

    def __init__(self, fleet: Fleet, bus: EventBus, *, metrics: Metrics) -> None:
        self.fleet = fleet
        self.bus = bus
        self.metrics = metrics
        self._due: dict[str, float] = {}
        self._passes: dict[str, asyncio.Task[None]] = {}

    async def reconcile(self, service: ServiceConfig, now: float) -> float:
        rotation = self.fleet.rotations.get(service.name)
        if rotation is None or not rotation.reconciles:
            return NEVER
        due = self._due.get(service.name, 0.0)
        if now < due:
            return due
        interval = min((c.interval for c in service.checks), default=5.0)
        self._due[service.name] = now + interval
        running = self._passes.get(service.name)
        if running is None or running.done():
            self._passes[service.name] = asyncio.create_task(
                self._pass(service, rotation), name=f"healerd-rotation-{service.name}"
            )
        return now + interval

    @property
    def running(self) -> list[asyncio.Task[None]]:
        """The passes going on now, one task per service at most."""
        return [t for t in self._passes.values() if not t.done()]

    async def stop(self) -> None:
        tasks = self.running
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._passes.clear()
        self._due.clear()
        self.fleet.rotation_faults.clear()  # what a node no longer compares, it does not report

    async def _pass(self, service: ServiceConfig, rotation: Rotation) -> None:
        with bound_contextvars(service=service.name):
            # split when the pass starts (not when it was asked for): a drain may have begun meanwhile
            serving, leaving = self.fleet.rotation_split(service)
            try:
                fixed = await rotation.reconcile(serving, leaving)
            except ProviderError as exc:
                self.fleet.rotation_checked(service.name, str(exc))
                return
            except Exception as exc:  # a bug, or an answer nobody foresaw: its traceback once, not every pass
                if service.name not in self.fleet.rotation_faults:
                    log.exception("comparing the rotation with the load balancer failed")
                self.fleet.rotation_checked(service.name, f"{type(exc).__name__}: {exc}")
                return
            self.fleet.rotation_checked(service.name, None)
            for what in fixed:
                self.metrics.counter("rotation_repairs").labels(service.name).inc()
                log.warning("rotation repaired", repair=what)
                self.bus.publish(
                    Event(
                        EventType.ROTATION_REPAIRED,
                        service.name,
                        f"the load balancer had lost healerd's rotation: {what}",
                        time.time(),
                        severity=Severity.WARNING,
                        details={"repair": what, "rotation": rotation.kind},
                    )
                )
