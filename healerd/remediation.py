"""The remediation engine: opens incidents, applies the safety gates, runs playbooks step by step with a
journal in the store, and resumes whatever a crash interrupted.

Every step's start, outcome and outputs are committed before the next step starts; every action checks
the world first, so re-running a step after `kill -9` neither loses nor duplicates anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from .actions import ACTIONS, StepContext, StepFailed
from .config import Config, Mode, ServiceConfig
from .events import Event, EventType, Severity, new_id
from .forensics import write_bundle
from .health import CheckKey, Condition, ServiceState
from .machines import Lifecycle, Machine
from .playbooks import OnFailure, Playbook, load_playbooks
from .plugins import ROTATION_KINDS
from .providers.base import LaunchRequest, Provider, ProviderError
from .results import Status
from .rotation import Rotation
from .safety import Decision, GateInput, Reason, decide
from .store import STORE_FAULTS, IncidentRecord

if TYPE_CHECKING:
    from .events import EventBus
    from .metrics import Metrics
    from .monitor import Monitor
    from .store import Store

log = structlog.get_logger("healerd.remediation")

RECONCILE_INTERVAL = 1.0


class IncidentState(enum.StrEnum):
    OPEN = "open"  # remediation not started (held back by a gate, or observing)
    REMEDIATING = "remediating"
    REMEDIATED = "remediated"  # the playbook succeeded; resolved once the service is optimal
    FAILED = "failed"  # escalated to a human; no automatic retry
    RESOLVED = "resolved"


ACTIVE = (IncidentState.OPEN, IncidentState.REMEDIATING, IncidentState.REMEDIATED, IncidentState.FAILED)


@dataclass
class Incident:
    id: str
    service: str
    machine: str
    state: IncidentState
    playbook: str
    opened_at: float
    updated_at: float
    summary: str
    resolved_at: float | None = None
    replacement: str | None = None
    error: str | None = None
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "machine": self.machine,
            "state": self.state.value,
            "playbook": self.playbook,
            "opened_at": self.opened_at,
            "updated_at": self.updated_at,
            "resolved_at": self.resolved_at,
            "summary": self.summary,
            "replacement": self.replacement,
            "error": self.error,
            "details": self.details,
        }

    @classmethod
    def from_row(cls, r: tuple[Any, ...]) -> Incident:
        return cls(
            id=r[0],
            service=r[1],
            machine=r[2],
            state=IncidentState(r[3]),
            playbook=r[4],
            opened_at=r[5],
            updated_at=r[6],
            resolved_at=r[7],
            summary=r[8],
            replacement=r[9],
            error=r[10],
            details=r[11],
        )


class RemediationEngine:
    def __init__(
        self,
        config: Config,
        monitor: Monitor,
        store: Store,
        bus: EventBus,
        metrics: Metrics,
        mode: Mode | None = None,
        crash_at: str | None = None,
    ) -> None:
        self.config = config
        #: Fault injection for the crash-safety tests, armed only by `healerd run --crash-at ACTION[:after]`
        #: (never by the environment): SIGKILL when that step has been journaled as started (or, with
        #: `:after`, when its action has run but its success is not yet journaled).
        self.crash_at = crash_at
        self.monitor = monitor
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self.cli_mode = mode
        self.playbooks: dict[str, Playbook] = {}
        self.rotations: dict[str, Rotation] = {}
        self.known_good: dict[str, str] = {}
        self.incidents: dict[str, Incident] = {}  # active ones (not resolved), by id
        self.runtime_mode: Mode | None = None
        self.service_modes: dict[str, Mode] = {}
        self.paused = False
        self.storm_until: dict[str, float] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._loop_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._fill_pending: set[str] = set()
        self._retire_pending: set[str] = set()
        bus.subscribe(self._on_event)

    # -- configuration --------------------------------------------------------------------------------------
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
        self.playbooks = books
        return []

    async def apply(self, config: Config) -> None:
        self.config = config
        for svc in config.services.values():
            current = self.rotations.get(svc.name)
            cls = ROTATION_KINDS.get(svc.rotation_kind)
            assert cls is not None
            if current is None or current.kind != svc.rotation_kind or current.options != svc.rotation:
                self.rotations[svc.name] = cls(
                    svc.name,
                    svc.rotation or cls.Config(),
                    config.daemon.state_dir,
                    self.monitor.providers.get(svc.provider),
                )
        for name, image in config.images.items():
            stored = await self.store.images.get(name)
            if stored is None or stored.seeded != image.known_good:
                # new image, or the config's known_good changed: the config wins
                await self.store.images.save(name, image.known_good, image.known_good, time.time())
                self.known_good[name] = image.known_good
            else:
                self.known_good[name] = stored.known_good if stored.known_good in image.versions else image.known_good

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def start(self) -> None:
        mode = await self.store.meta.get("mode")
        self.runtime_mode = Mode(mode) if mode else None
        self.paused = (await self.store.meta.get("paused")) == "1"
        modes = await self.store.meta.get("service_modes")
        self.service_modes = {k: Mode(v) for k, v in json.loads(modes).items()} if modes else {}
        storms = await self.store.meta.get("storm_until")
        self.storm_until = {k: float(v) for k, v in json.loads(storms).items()} if storms else {}
        for svc in self.config.services.values():
            await self.sync_rotation(svc)
        for r in await self.store.incidents.unresolved():
            inc = Incident.from_row(r)
            self.incidents[inc.id] = inc
        self._update_gauges()
        for inc in list(self.incidents.values()):
            if inc.state is IncidentState.REMEDIATING:
                await self.store.incidents.mark_running_steps_interrupted(inc.id, time.time())
                log.info("resuming remediation", incident=inc.id, service=inc.service, machine=inc.machine)
                self._spawn(inc)
        for svc in self.config.services.values():
            for m in list(self.monitor.machines.get(svc.name, {}).values()):
                if m.lifecycle is Lifecycle.LAUNCHING and m.attributes.get("launched_for") == "fill":
                    with contextlib.suppress(ProviderError):  # a failed start is retried by the fill loop
                        await self._start(svc, m, None)
        self._loop_task = asyncio.create_task(self._loop(), name="healerd-remediation")

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for inc in self.incidents.values():
            if inc.state is IncidentState.REMEDIATING:
                await self.store.incidents.mark_running_steps_interrupted(inc.id, time.time())

    async def sync_rotation(self, svc: ServiceConfig) -> None:
        rotation = self.rotations.get(svc.name)
        if rotation is None:
            return
        members = [m for m in self.monitor.machines.get(svc.name, {}).values() if m.lifecycle is Lifecycle.IN_SERVICE]
        await rotation.sync(members)

    # -- modes, pause, silences ------------------------------------------------------------------------------
    def mode_for(self, service: str) -> Mode:
        if service in self.service_modes:
            return self.service_modes[service]
        if self.runtime_mode is not None:
            return self.runtime_mode
        if self.cli_mode is not None:
            return self.cli_mode
        svc = self.config.services.get(service)
        if svc is not None and svc.remediation.mode is not None:
            return svc.remediation.mode
        return self.config.daemon.mode

    async def set_mode(self, mode: Mode | None, service: str | None = None) -> None:
        if service is None:
            self.runtime_mode = mode
            self.service_modes.clear()
            await self.store.meta.set("mode", mode.value if mode else "")
        elif mode is None:
            self.service_modes.pop(service, None)
        else:
            self.service_modes[service] = mode
        await self.store.meta.set("service_modes", json.dumps({k: v.value for k, v in self.service_modes.items()}))
        log.info("mode changed", mode=mode.value if mode else "config", service=service or "all")
        self._wake.set()

    async def set_paused(self, paused: bool) -> None:
        self.paused = paused
        await self.store.meta.set("paused", "1" if paused else "0")
        log.info("remediation paused" if paused else "remediation resumed")
        self._wake.set()

    async def add_silence(
        self, service: str | None, machine: str | None, duration: float, comment: str, created_by: str = ""
    ) -> dict[str, Any]:
        now = time.time()
        sid = new_id(now)
        await self.store.silences.add(sid, service, machine, now, now + duration, comment, created_by)
        return {
            "id": sid,
            "service": service,
            "machine": machine,
            "starts_at": now,
            "ends_at": now + duration,
            "comment": comment,
        }

    async def delete_silence(self, sid: str) -> bool:
        deleted = await self.store.silences.delete(sid)
        self._wake.set()
        return deleted

    async def silences(self, now: float | None = None) -> list[dict[str, Any]]:
        now = time.time() if now is None else now
        return await self.store.silences.active(now)

    def _silenced(self, silences: list[dict[str, Any]], service: str, machine: str) -> bool:
        return any((s["service"] in (None, service)) and (s["machine"] in (None, machine)) for s in silences)

    # -- the loop --------------------------------------------------------------------------------------------
    def _on_event(self, event: Event) -> None:
        if event.type in (EventType.MACHINE_UNHEALTHY, EventType.SERVICE_STATE_CHANGED, EventType.MACHINE_FLAPPING):
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), RECONCILE_INTERVAL)
            self._wake.clear()
            try:
                await self.reconcile(time.time())
            except asyncio.CancelledError:
                raise
            except STORE_FAULTS:  # the store is failing and said so once: nothing is decided without it
                await asyncio.sleep(RECONCILE_INTERVAL)
            except Exception:  # keep healing the rest; the error is logged with its traceback
                log.exception("remediation reconcile failed")

    async def reconcile(self, now: float) -> None:
        silences = await self.silences(now)
        for svc in list(self.config.services.values()):
            health = self.monitor.book.services.get(svc.name)
            if health is None:
                continue
            if not health.settled:  # its start-up grace may have ended with nothing else happening
                self.bus.publish_all(self.monitor.book.refresh(svc.name, now))
            machines = self.monitor.machines.get(svc.name, {})
            down = [
                m
                for m in machines.values()
                if m.lifecycle is Lifecycle.IN_SERVICE and self._condition(svc.name, m.id) is Condition.DOWN
            ]
            unhealthy = self._unhealthy(svc, machines)
            if unhealthy > svc.max_unhealthy:
                await self._storm(svc.name, now + svc.remediation.storm_cooldown)
            active_machines = {i.machine for i in self.incidents.values() if i.service == svc.name}
            for m in down:
                if m.id not in active_machines:
                    await self.open_incident(svc, m, now)
            for inc in sorted(self.incidents.values(), key=lambda i: i.opened_at):
                if inc.service != svc.name:
                    continue
                if inc.state is IncidentState.OPEN:
                    # Not remediated (held back, observing, or alert-only): it lasts as long as the failure.
                    over = self._failure_over(svc.name, inc.machine)
                    if over:
                        await self.resolve(inc, over)
                        continue
                    await self._consider(svc, inc, now, unhealthy, silences)
                elif inc.state is not IncidentState.REMEDIATING and health.state is ServiceState.OPTIMAL:
                    await self.resolve(inc, "the service is optimal again")
            if svc.managed:
                await self._promote_probation(svc, now)
                await self._fill(svc, now, silences)
                await self._retire_surplus(svc, now, silences)
                if svc.remediation.keep_for is not None:
                    await self._retention(svc, now)

    def _unhealthy(self, svc: ServiceConfig, machines: dict[str, Machine]) -> int:
        """Machines of the service in trouble now, for the max_unhealthy short-circuit: in service and down or
        failing (even unconfirmed: machines breaking together are confirmed one check apart), plus the machines
        of incidents still open (already out of rotation, still part of the same storm)."""
        ids = {i.machine for i in self.incidents.values() if i.service == svc.name}
        for m in machines.values():
            if m.lifecycle is not Lifecycle.IN_SERVICE:
                continue
            mh = self.monitor.book.machine(svc.name, m.id)
            if mh is None:
                continue
            if mh.condition is Condition.DOWN or any(
                c.bad_streak > 0 and c.last is not None and c.last.status is Status.CRITICAL for c in mh.checks.values()
            ):
                ids.add(m.id)
        return len(ids)

    async def _storm(self, service: str, until: float) -> None:
        """Start or extend a storm cooldown; persisted, so a restart makes the same decisions."""
        before = self.storm_until.get(service, 0.0)
        self.storm_until[service] = max(before, until)
        if until - before >= 1.0:  # extended by a reconcile tick or more: worth a write
            await self.store.meta.set("storm_until", json.dumps(self.storm_until))

    def _failure_over(self, service: str, machine_id: str) -> str:
        """Why the failure an open incident is about has ended ('' while it lasts)."""
        m = self.monitor.machine(service, machine_id)
        if m is None:
            return f"{machine_id} is no longer part of the fleet"
        if m.lifecycle is not Lifecycle.IN_SERVICE:
            return f"{machine_id} is out of rotation ({m.lifecycle.value})"
        condition = self._condition(service, machine_id)
        if condition in (Condition.UP, Condition.IMPAIRED):
            return f"{machine_id} recovered ({condition.value})"
        return ""

    def _condition(self, service: str, machine: str) -> Condition | None:
        m = self.monitor.book.machine(service, machine)
        return m.condition if m else None

    # -- incidents ----------------------------------------------------------------------------------------
    async def open_incident(self, svc: ServiceConfig, machine: Machine, now: float) -> Incident:
        mh = self.monitor.book.machine(svc.name, machine.id)
        summary = f"{machine.id} is down: {mh.problem() if mh else 'checks failing'}"
        inc = Incident(
            new_id(now), svc.name, machine.id, IncidentState.OPEN, svc.remediation.playbook, now, now, summary[:1000]
        )
        await self._save(inc)
        self.incidents[inc.id] = inc
        self._emit(EventType.INCIDENT_OPENED, inc, f"incident {inc.id} opened: {inc.summary}", Severity.CRITICAL)
        self._update_gauges()
        return inc

    async def _save(self, inc: Incident) -> None:
        inc.updated_at = time.time()
        await self.store.incidents.save(
            IncidentRecord(
                inc.id,
                inc.service,
                inc.machine,
                inc.state.value,
                inc.playbook,
                inc.opened_at,
                inc.updated_at,
                inc.resolved_at,
                inc.summary,
                inc.replacement,
                inc.error,
                inc.details,
            )
        )

    def _emit(
        self,
        type_: EventType,
        inc: Incident,
        summary: str,
        severity: Severity = Severity.INFO,
        firing: bool = True,
        machine: str | None = None,
        **details: Any,
    ) -> None:
        self.bus.publish(
            Event(
                type_,
                inc.service,
                summary,
                time.time(),
                machine=machine or inc.machine,
                incident=inc.id,
                severity=severity,
                firing=firing,
                details=details,
            )
        )

    async def _consider(
        self, svc: ServiceConfig, inc: Incident, now: float, unhealthy: int, silences: list[dict[str, Any]]
    ) -> None:
        decision = decide(await self._gate_input(svc, inc, now, unhealthy, silences))
        if decision.allowed:
            await self._begin(svc, inc)
            return
        assert decision.reason is not None
        if inc.details.get("suppressed") != decision.reason.value:
            inc.details["suppressed"] = decision.reason.value
            inc.details["suppressed_detail"] = decision.detail
            await self._save(inc)
            self.metrics.counter("remediation_suppressed").labels(svc.name, decision.reason.value).inc()
            sev = (
                Severity.CRITICAL if decision.reason in (Reason.MAX_UNHEALTHY, Reason.RETRY_LIMIT) else Severity.WARNING
            )
            self._emit(
                EventType.REMEDIATION_SUPPRESSED,
                inc,
                f"remediation of {inc.machine} held back: {decision.detail}",
                sev,
                reason=decision.reason.value,
                detail=decision.detail,
            )
            log.warning(
                "remediation held back",
                service=svc.name,
                machine=inc.machine,
                incident=inc.id,
                reason=decision.reason.value,
                detail=decision.detail,
            )
            if decision.reason is Reason.DRY_RUN:
                self._log_dry_run(svc, inc)

    def _log_dry_run(self, svc: ServiceConfig, inc: Incident) -> None:
        playbook = self.playbooks.get(inc.playbook)
        for step in playbook.steps if playbook else ():
            log.info(
                "dry-run: would run step",
                service=svc.name,
                machine=inc.machine,
                incident=inc.id,
                step=step.index + 1,
                action=step.action,
                params=step.params.model_dump(),
                timeout=step.timeout,
            )

    async def _gate_input(
        self, svc: ServiceConfig, inc: Incident, now: float, unhealthy: int, silences: list[dict[str, Any]]
    ) -> GateInput:
        rem = svc.remediation
        running = sum(
            1 for i in self.incidents.values() if i.service == svc.name and i.state is IncidentState.REMEDIATING
        )
        launches = await self.store.incidents.launches_since(svc.name, now - 3600, by_incidents=True)
        fails = await self.store.incidents.failures(svc.name, inc.machine)
        return GateInput(
            now=now,
            mode=self.mode_for(svc.name),
            paused=self.paused,
            silenced=self._silenced(silences, svc.name, inc.machine),
            flapping=self._condition(svc.name, inc.machine) is Condition.FLAPPING,
            unhealthy=unhealthy,
            max_unhealthy=svc.max_unhealthy,
            storm_until=self.storm_until.get(svc.name, 0.0),
            running=running,
            max_concurrent=rem.max_concurrent,
            launches_last_hour=int(launches),
            max_per_hour=rem.max_per_hour,
            failures=fails.count,
            last_failure=float(fails.last or 0.0),
            backoff=rem.backoff,
            max_retries=rem.max_retries,
        )

    async def _begin(self, svc: ServiceConfig, inc: Incident) -> None:
        if not svc.managed:
            # static machines cannot be replaced: alert only
            if inc.details.get("suppressed") != "static":
                inc.details["suppressed"] = "static"
                await self._save(inc)
            return
        inc.state = IncidentState.REMEDIATING
        inc.details.pop("suppressed", None)
        inc.details["started_at"] = time.time()
        await self._save(inc)
        self._emit(
            EventType.REMEDIATION_STARTED,
            inc,
            f"remediating {inc.machine} with playbook {inc.playbook}",
            Severity.WARNING,
            playbook=inc.playbook,
        )
        log.info("remediation started", service=svc.name, machine=inc.machine, incident=inc.id, playbook=inc.playbook)
        self._spawn(inc)

    def _spawn(self, inc: Incident) -> None:
        self._update_gauges()
        task = asyncio.create_task(self._run(inc), name=f"healerd-incident-{inc.id}")
        self._tasks[inc.id] = task
        task.add_done_callback(lambda t, i=inc.id: self._tasks.pop(i, None))  # type: ignore[misc]

    async def _steps(self, incident: str) -> dict[int, dict[str, Any]]:
        return {s["index"]: s for s in await self.store.incidents.steps(incident)}

    async def _journal(
        self,
        incident: str,
        idx: int,
        action: str,
        state: str,
        attempts: int,
        outputs: dict[str, Any] | None = None,
        error: str | None = None,
        start: bool = False,
    ) -> None:
        now = time.time()
        if start:
            await self.store.incidents.start_step(incident, idx, action, state, attempts, now)
        else:
            await self.store.incidents.end_step(incident, idx, state, now, outputs or {}, error)

    def _crash_point(self, action: str, when: str) -> None:
        target = self.crash_at
        if target and target == (action if when == "before" else f"{action}:after"):
            log.warning("fault injection: killing healerd", at=target)
            os.kill(os.getpid(), signal.SIGKILL)

    async def _run(self, inc: Incident) -> None:
        svc = self.config.services.get(inc.service)
        playbook = self.playbooks.get(inc.playbook)
        started = float(inc.details.get("started_at", time.time()))
        in_progress = self.metrics.gauge("remediations_in_progress").labels(inc.service)
        in_progress.inc()
        try:
            if svc is None or playbook is None:
                await self._fail(inc, f"service or playbook {inc.playbook!r} no longer configured", terminal=True)
                return
            journal = await self._steps(inc.id)
            outputs: dict[str, Any] = {}
            for done in journal.values():
                if done["state"] == "succeeded":
                    outputs.update(done["outputs"])
            for step in playbook.steps:
                row = journal.get(step.index)
                if row and row["state"] in ("succeeded", "continued"):
                    continue
                action = ACTIONS.get(step.action)
                assert action is not None
                attempts = row["attempts"] if row else 0
                error: str | None = None
                terminal = False
                slog = log.bind(
                    service=inc.service, machine=inc.machine, incident=inc.id, step=step.index + 1, action=step.action
                )
                for _ in range(step.retries + 1):
                    attempts += 1
                    await self._journal(inc.id, step.index, step.action, "running", attempts, start=True)
                    self._crash_point(step.action, "before")
                    ctx = StepContext(self, inc, svc, step, dict(outputs))
                    slog.info("step started", attempt=attempts)
                    try:
                        out = await asyncio.wait_for(action().run(ctx), step.timeout)
                    except StepFailed as exc:
                        error, terminal = str(exc), exc.terminal
                    except TimeoutError:
                        error = f"{step.action} timed out after {step.timeout:g}s"
                        terminal = step.action == "checks.await_healthy"
                    except ProviderError as exc:
                        error = str(exc)
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:  # a bug in an action fails the step with its message
                        slog.exception("step raised")
                        error = f"{step.action} raised {type(exc).__name__}: {exc}"
                    else:
                        self._crash_point(step.action, "after")
                        outputs.update(out)
                        await self._journal(inc.id, step.index, step.action, "succeeded", attempts, out)
                        slog.info("step succeeded", outputs=out)
                        error = None
                        if "replacement" in out and inc.replacement != out["replacement"]:
                            inc.replacement = out["replacement"]
                            await self._save(inc)
                        break
                    await self._journal(inc.id, step.index, step.action, "failed", attempts, error=error)
                    slog.warning("step failed", error=error)
                    if terminal:
                        break
                    await asyncio.sleep(min(30.0, 2.0 ** min(attempts, 5)))
                if error is not None:
                    if step.on_failure is OnFailure.CONTINUE:
                        await self._journal(inc.id, step.index, step.action, "continued", attempts, error=error)
                        continue
                    await self._fail(inc, f"step {step.index + 1} ({step.action}) failed: {error}", terminal)
                    return
            inc.state = IncidentState.REMEDIATED
            inc.details["finished_at"] = time.time()
            await self._save(inc)
            duration = time.time() - started
            self.metrics.counter("remediations").labels(inc.service, inc.playbook, "succeeded").inc()
            self.metrics.histogram("remediation_duration_seconds").labels(inc.service, inc.playbook).observe(duration)
            self._emit(
                EventType.REMEDIATION_SUCCEEDED,
                inc,
                f"{inc.machine} remediated in {duration:.0f}s"
                + (f": replaced by {inc.replacement}" if inc.replacement else ""),
                replacement=inc.replacement,
                duration=round(duration, 3),
            )
            log.info(
                "remediation succeeded",
                service=inc.service,
                machine=inc.machine,
                incident=inc.id,
                replacement=inc.replacement,
                seconds=round(duration, 1),
            )
            self._wake.set()
        finally:
            in_progress.dec()
            self._update_gauges()

    async def _fail(self, inc: Incident, error: str, terminal: bool) -> None:
        inc.state = IncidentState.FAILED
        inc.error = error
        await self._save(inc)
        await self.store.incidents.log_failure(inc.service, inc.machine, time.time(), inc.id)
        self.metrics.counter("remediations").labels(inc.service, inc.playbook, "failed").inc()
        self._emit(
            EventType.REMEDIATION_FAILED,
            inc,
            f"remediation of {inc.machine} failed, a human is needed: {error}",
            Severity.CRITICAL,
            error=error,
        )
        log.error(
            "remediation failed; escalating", service=inc.service, machine=inc.machine, incident=inc.id, error=error
        )

    async def resolve(self, inc: Incident, why: str) -> None:
        inc.state = IncidentState.RESOLVED
        inc.resolved_at = time.time()
        await self._save(inc)
        self.incidents.pop(inc.id, None)
        self._emit(EventType.INCIDENT_RESOLVED, inc, f"incident {inc.id} resolved: {why}", firing=False)
        log.info("incident resolved", service=inc.service, machine=inc.machine, incident=inc.id, why=why)
        self._update_gauges()

    # -- primitives used by the actions ------------------------------------------------------------------
    def _provider(self, svc: ServiceConfig) -> Provider:
        return self.monitor.providers[svc.provider]

    async def _machine(self, service: str, machine_id: str) -> Machine:
        m = self.monitor.machine(service, machine_id) or await self.store.machines.get(service, machine_id)
        if m is None:
            raise StepFailed(f"machine {machine_id} of {service} is not known", terminal=True)
        return m

    async def rotation_remove(self, svc: ServiceConfig, machine_id: str) -> None:
        m = await self._machine(svc.name, machine_id)
        await self.rotations[svc.name].remove(m)

    async def quarantine(self, svc: ServiceConfig, machine_id: str, incident: str, freeze: bool) -> dict[str, Any]:
        m = await self._machine(svc.name, machine_id)
        if m.lifecycle is Lifecycle.QUARANTINED:
            return dict(json.loads(m.attributes.get("evidence", "{}")))
        await self.rotations[svc.name].remove(m)
        evidence = await self._provider(svc).quarantine(m, incident, freeze)
        attrs = {
            **m.attributes,
            "quarantined_at": str(time.time()),
            "incident": incident,
            "evidence": json.dumps(evidence, default=str),
        }
        await self.monitor.put_machine(Machine(m.service, m.id, m.address, Lifecycle.QUARANTINED, attrs))
        inc = self.incidents.get(incident)
        if inc is not None:
            self._emit(
                EventType.MACHINE_QUARANTINED,
                inc,
                f"{m.id} quarantined (kept for forensics)",
                Severity.WARNING,
                machine=m.id,
                evidence=evidence,
            )
        self._update_gauges()
        return evidence

    async def collect_forensics(self, inc: Incident, evidence: dict[str, Any]) -> Path:
        svc = self.config.services[inc.service]
        m = await self._machine(inc.service, inc.machine)
        provider = self._provider(svc)
        checks = {
            spec.name: await self.store.results.recent(CheckKey(inc.service, m.id, spec.name), 50)
            for spec in svc.checks
        }
        files: dict[str, Any] = {
            "incident.json": await self.incident_view(inc.id),
            "checks.json": checks,
            "machine.json": await provider.describe(m),
            "console.log": await provider.console(m),
            "evidence.json": evidence,
        }
        root = self.config.daemon.state_dir / "forensics"
        bundle = await asyncio.to_thread(write_bundle, root, inc.id, files)
        keys = await provider.store_evidence(bundle, inc.id)
        if keys:
            log.info("evidence bundle mirrored", incident=inc.id, objects=len(keys))
        return bundle

    async def launch_replacement(self, svc: ServiceConfig, incident: str | None) -> Machine:
        """Launch from the known-good image; for an incident, at most one replacement, ever."""
        assert svc.image is not None
        provider = self._provider(svc)
        if incident is not None:
            for existing in await self.store.machines.for_incident(incident):
                if existing.lifecycle in (Lifecycle.LAUNCHING, Lifecycle.PROBATION, Lifecycle.IN_SERVICE):
                    if existing.lifecycle is Lifecycle.LAUNCHING or not await provider.alive(existing):
                        return await self._start(svc, existing, incident)
                    return existing
                if existing.lifecycle is Lifecycle.QUARANTINED:
                    raise StepFailed(
                        f"the replacement {existing.id} for this incident failed its checks and is "
                        "quarantined; not launching another",
                        terminal=True,
                    )
        image = self.config.images[svc.image]
        version = self.known_good.get(svc.image, image.known_good)
        machine_id = f"{svc.name}-{new_id()[-8:].lower()}"
        taken = {
            int(m.attributes["port"])
            for m in await self.store.machines.load()
            if m.attributes.get("port", "").isdigit() and m.lifecycle not in (Lifecycle.TERMINATED, Lifecycle.RELEASED)
        }
        address, attrs = provider.allocate(taken)
        machine = Machine(
            svc.name,
            machine_id,
            address,
            Lifecycle.LAUNCHING,
            {
                **attrs,
                "image": svc.image,
                "image_version": version,
                "launched_for": incident or "fill",
                "launched_at": str(time.time()),
            },
        )
        # Recorded before the launch: a crash from here on cannot leave an untracked machine.
        await self.monitor.put_machine(machine)
        await self.store.incidents.log_launch(svc.name, machine_id, time.time(), incident)
        return await self._start(svc, machine, incident)

    async def _start(self, svc: ServiceConfig, machine: Machine, incident: str | None) -> Machine:
        assert svc.image is not None
        image = self.config.images[svc.image]
        version = machine.attributes.get("image_version") or image.known_good
        spec = image.versions.get(version) or image.versions[image.known_good]
        launched = await self._provider(svc).launch(
            LaunchRequest(svc.name, machine.id, svc.image, version, spec, incident)
        )
        attrs = {**machine.attributes, **launched.attributes}
        ready = Machine(launched.service, launched.id, launched.address, Lifecycle.PROBATION, attrs)
        if launched.id != machine.id:
            # the provider names its machines itself (an EC2 instance id): the placeholder record is retired
            retired = {**machine.attributes, "became": launched.id, "launched_for": ""}
            await self.monitor.put_machine(
                Machine(machine.service, machine.id, machine.address, Lifecycle.TERMINATED, retired)
            )
        await self.monitor.put_machine(ready)
        log.info(
            "machine launched",
            service=svc.name,
            machine=ready.id,
            address=ready.address,
            image=svc.image,
            version=version,
            incident=incident,
        )
        return ready

    def probation_state(self, svc: ServiceConfig, machine_id: str, now: float | None = None) -> str:
        """'passed' when every check has `rise` OK results in a row; 'failed' when one is hard failing after
        the machine has booted (it passed once, or `boot_timeout` elapsed since it was launched)."""
        now = time.time() if now is None else now
        m = self.monitor.machine(svc.name, machine_id)
        launched = float((m.attributes.get("launched_at") if m else None) or now)
        # a machine released from quarantine has booted long ago: no grace for it
        booting = now - launched < svc.remediation.boot_timeout and (
            m is None or m.attributes.get("launched_for") != "release"
        )
        passed = True
        for spec in svc.checks:
            ch = self.monitor.book.check(CheckKey(svc.name, machine_id, spec.name))
            if ch is None:
                return "pending"
            if ch.ok_streak < spec.rise or ch.hard is not Status.OK:
                passed = False
            # `fall` failures in a row now (a hard state left over from booting is recovering, not failing)
            failing = ch.bad_streak >= spec.fall
            if failing and not (booting and not ch.ever_ok):
                return "failed"
        return "passed" if passed else "pending"

    async def await_healthy(self, svc: ServiceConfig, machine_id: str, timeout: float, incident: str | None) -> None:
        m = await self._machine(svc.name, machine_id)
        if m.lifecycle is Lifecycle.IN_SERVICE:
            return
        if m.lifecycle is not Lifecycle.PROBATION:
            raise StepFailed(f"{machine_id} is {m.lifecycle.value}, not in probation", terminal=True)
        deadline = time.monotonic() + max(0.0, timeout - 1.0)
        while True:
            state = self.probation_state(svc, machine_id)
            if state == "passed":
                return
            if state == "failed" or time.monotonic() > deadline:
                why = "its checks failed" if state == "failed" else f"its checks did not pass within {timeout:g}s"
                await self.quarantine(svc, machine_id, incident or "probation", False)
                raise StepFailed(
                    f"{machine_id} failed probation ({why}); it is quarantined and does not enter rotation",
                    terminal=True,
                )
            await asyncio.sleep(0.2)

    async def put_in_service(self, svc: ServiceConfig, machine_id: str) -> None:
        m = await self._machine(svc.name, machine_id)
        if m.lifecycle is not Lifecycle.IN_SERVICE:
            if m.lifecycle is not Lifecycle.PROBATION:
                raise StepFailed(
                    f"{machine_id} is {m.lifecycle.value}; only a machine in probation enters service", terminal=True
                )
            m = Machine(m.service, m.id, m.address, Lifecycle.IN_SERVICE, m.attributes)
            await self.monitor.put_machine(m)
        await self._provider(svc).on_in_service(m, svc)
        await self.rotations[svc.name].add(m)

    def announce_replaced(self, inc: Incident, outputs: dict[str, Any]) -> None:
        self._emit(
            EventType.MACHINE_REPLACED,
            inc,
            f"{inc.machine} replaced by {outputs.get('replacement')} "
            f"({outputs.get('image_version') or 'known-good'}) and quarantined for forensics",
            replacement=outputs.get("replacement"),
            bundle=outputs.get("bundle"),
        )

    # -- the fleet: keep `desired` machines ------------------------------------------------------------------
    async def _promote_probation(self, svc: ServiceConfig, now: float) -> None:
        """Machines launched to fill the fleet (not by an incident) enter service once their checks pass."""
        for m in list(self.monitor.machines.get(svc.name, {}).values()):
            if m.lifecycle is not Lifecycle.PROBATION or m.attributes.get("launched_for") != "fill":
                continue
            state = self.probation_state(svc, m.id)
            if state == "passed":
                await self.put_in_service(svc, m.id)
                log.info("machine in service", service=svc.name, machine=m.id)
            elif (
                state == "failed"
                or now - float(m.attributes.get("launched_at", now)) > svc.remediation.probation_timeout
            ):
                await self.quarantine(svc, m.id, "probation", False)
                log.error("machine failed probation and is quarantined", service=svc.name, machine=m.id)

    async def _fill(self, svc: ServiceConfig, now: float, silences: list[dict[str, Any]]) -> None:
        machines = self.monitor.machines.get(svc.name, {}).values()
        have = sum(
            1 for m in machines if m.lifecycle in (Lifecycle.LAUNCHING, Lifecycle.PROBATION, Lifecycle.IN_SERVICE)
        )
        missing = svc.desired - have
        if missing <= 0:
            return
        if any(i.service == svc.name for i in self.incidents.values()):
            return  # an incident is handling (or escalated) the gap: never launch around it
        gate = GateInput(
            now=now,
            mode=self.mode_for(svc.name),
            paused=self.paused,
            silenced=self._silenced(silences, svc.name, ""),
            launches_last_hour=await self.store.incidents.launches_since(svc.name, now - 3600),
            max_per_hour=max(svc.remediation.max_per_hour, svc.desired),
            max_concurrent=1 << 30,
        )
        decision: Decision = decide(gate)
        if not decision.allowed:
            if svc.name not in self._fill_pending:
                self._fill_pending.add(svc.name)
                log.warning(
                    "fleet below desired, not launching",
                    service=svc.name,
                    missing=missing,
                    reason=decision.reason.value if decision.reason else "",
                    detail=decision.detail,
                )
            return
        self._fill_pending.discard(svc.name)
        log.info("launching machines to reach desired", service=svc.name, missing=missing, desired=svc.desired)
        for _ in range(missing):
            try:
                await self.launch_replacement(svc, None)
            except ProviderError as exc:
                log.error("launch failed", service=svc.name, error=str(exc))
                return

    async def _retire_surplus(self, svc: ServiceConfig, now: float, silences: list[dict[str, Any]]) -> None:
        """More machines in service than `desired` (a machine released back to rotation, a lowered desired):
        the newest surplus machine leaves rotation and is retired, never quarantined, and only while the
        healthy machines left still reach `desired` (so never below min_healthy)."""
        in_service = [
            m for m in self.monitor.machines.get(svc.name, {}).values() if m.lifecycle is Lifecycle.IN_SERVICE
        ]
        if len(in_service) <= svc.desired:
            return
        if any(i.service == svc.name and i.state is IncidentState.REMEDIATING for i in self.incidents.values()):
            return  # a playbook is moving machines: look again once it is done
        healthy = [m for m in in_service if self._condition(svc.name, m.id) is Condition.UP]
        if len(healthy) <= svc.desired:
            return  # the surplus is a sick machine: its incident handles it
        gate = GateInput(
            now=now,
            mode=self.mode_for(svc.name),
            paused=self.paused,
            silenced=self._silenced(silences, svc.name, ""),
            max_per_hour=1 << 30,
            max_concurrent=1 << 30,
        )
        decision = decide(gate)
        victim = max(healthy, key=lambda m: (float(m.attributes.get("launched_at") or 0.0), m.id))
        if not decision.allowed:
            if svc.name not in self._retire_pending:
                self._retire_pending.add(svc.name)
                log.warning(
                    "fleet above desired, not retiring",
                    service=svc.name,
                    surplus=len(in_service) - svc.desired,
                    would_retire=victim.id,
                    reason=decision.reason.value if decision.reason else "",
                    detail=decision.detail,
                )
            return
        self._retire_pending.discard(svc.name)
        await self.retire(svc, victim, f"{len(in_service)} in service for desired {svc.desired}")

    async def retire(self, svc: ServiceConfig, m: Machine, why: str) -> None:
        """Scale in one machine: out of rotation, then released or terminated as its provider does it."""
        await self.rotations[svc.name].remove(m)
        outcome = await self._provider(svc).retire(m)
        lifecycle = Lifecycle.TERMINATED if outcome == "terminated" else Lifecycle.RELEASED
        await self.monitor.put_machine(
            Machine(m.service, m.id, m.address, lifecycle, {**m.attributes, "retired_at": str(time.time())})
        )
        self.bus.publish(
            Event(
                EventType.MACHINE_RETIRED,
                svc.name,
                f"{m.id} retired ({outcome}): {why}",
                time.time(),
                machine=m.id,
                severity=Severity.INFO,
                firing=False,
                details={"outcome": outcome, "reason": why, "desired": svc.desired},
            )
        )
        log.info("surplus machine retired", service=svc.name, machine=m.id, outcome=outcome, reason=why)

    async def _retention(self, svc: ServiceConfig, now: float) -> None:
        """Quarantines older than keep_for end: a warning first (keep_warning before), then termination."""
        keep = svc.remediation.keep_for
        assert keep is not None
        for m in list(self.monitor.machines.get(svc.name, {}).values()):
            if m.lifecycle is not Lifecycle.QUARANTINED:
                continue
            since = float(m.attributes.get("quarantined_at") or now)
            ends = since + keep
            if now >= ends:
                await self.terminate(
                    m.id, f"terminated: its quarantine reached keep_for ({keep:g}s); evidence and snapshots are kept"
                )
                log.warning("quarantine retention ended; machine terminated", service=svc.name, machine=m.id)
            elif now >= ends - svc.remediation.keep_warning and not m.attributes.get("retention_warned"):
                await self.monitor.put_machine(
                    Machine(m.service, m.id, m.address, m.lifecycle, {**m.attributes, "retention_warned": str(now)})
                )
                self._quarantine_event(
                    m,
                    f"{m.id} will be terminated in {ends - now:.0f}s (quarantine keep_for); "
                    "release it or copy what you need",
                    now,
                    True,
                    {"retention": "expiring", "terminate_at": ends},
                )
                log.warning(
                    "quarantine retention ending soon", service=svc.name, machine=m.id, seconds_left=round(ends - now)
                )

    # -- quarantine operations (API, CLI) ------------------------------------------------------------------
    def _quarantine_event(self, m: Machine, summary: str, now: float, firing: bool, details: dict[str, Any]) -> None:
        self.bus.publish(
            Event(
                EventType.MACHINE_QUARANTINED,
                m.service,
                summary,
                now,
                machine=m.id,
                incident=m.attributes.get("incident"),
                severity=Severity.WARNING if firing or "retention" in details else Severity.INFO,
                firing=firing,
                details=details,
            )
        )

    def _announce_quarantine_end(self, m: Machine, what: str) -> None:
        self._quarantine_event(m, f"{m.id} {what}", time.time(), False, {"ended": what})
        log.info(
            "quarantine ended", service=m.service, machine=m.id, incident=m.attributes.get("incident"), outcome=what
        )

    async def quarantined(self) -> list[dict[str, Any]]:
        out = []
        for m in await self.store.machines.load():
            if m.lifecycle is Lifecycle.QUARANTINED:
                bundle = self.config.daemon.state_dir / "forensics" / m.attributes.get("incident", "-")
                out.append(
                    {
                        "service": m.service,
                        "id": m.id,
                        "address": m.address,
                        "incident": m.attributes.get("incident"),
                        "quarantined_at": float(m.attributes.get("quarantined_at", 0) or 0),
                        "image_version": m.attributes.get("image_version"),
                        "bundle": str(bundle) if bundle.is_dir() else None,
                        "evidence": json.loads(m.attributes.get("evidence", "{}")),
                    }
                )
        return out

    async def release(self, machine_id: str, to_rotation: bool, timeout: float = 60.0) -> dict[str, Any]:
        m = await self.store.machines.find(machine_id)
        if m is None or m.lifecycle is not Lifecycle.QUARANTINED:
            raise LookupError(f"{machine_id} is not a quarantined machine (see GET /api/v1/quarantine)")
        svc = self.config.services.get(m.service)
        if svc is None:
            raise LookupError(f"service {m.service} of {machine_id} is no longer configured")
        provider = self._provider(svc)
        await provider.release(m)
        if not to_rotation:
            await self.monitor.put_machine(Machine(m.service, m.id, m.address, Lifecycle.RELEASED, m.attributes))
            self._announce_quarantine_end(m, "released from quarantine (no longer managed)")
            return {"machine": m.id, "lifecycle": "released", "detail": "released from quarantine; no longer managed"}
        # back on probation: its checks run again from scratch, and it returns only if they pass
        for spec in svc.checks:
            self.monitor.book.remove_check(CheckKey(m.service, m.id, spec.name), time.time())
        await self.monitor.put_machine(
            Machine(m.service, m.id, m.address, Lifecycle.PROBATION, {**m.attributes, "launched_for": "release"})
        )
        try:
            await self.await_healthy(svc, m.id, timeout, m.attributes.get("incident"))
        except StepFailed as exc:
            raise RuntimeError(f"{m.id} was not returned to rotation: {exc}") from None
        await self.put_in_service(svc, m.id)
        self._announce_quarantine_end(m, "released from quarantine: its checks passed, back in rotation")
        return {"machine": m.id, "lifecycle": "in_service", "detail": "its checks passed; back in rotation"}

    async def terminate(self, machine_id: str, why: str = "terminated (its evidence bundle is kept)") -> dict[str, Any]:
        m = await self.store.machines.find(machine_id)
        if m is None or m.lifecycle is not Lifecycle.QUARANTINED:
            raise LookupError(f"{machine_id} is not a quarantined machine (see GET /api/v1/quarantine)")
        svc = self.config.services.get(m.service)
        if svc is None:
            raise LookupError(f"service {m.service} of {machine_id} is no longer configured")
        await self._provider(svc).terminate(m)
        await self.monitor.put_machine(Machine(m.service, m.id, m.address, Lifecycle.TERMINATED, m.attributes))
        self._update_gauges()
        self._announce_quarantine_end(m, why)
        return {"machine": m.id, "lifecycle": "terminated", "detail": "terminated; its evidence bundle is kept"}

    # -- views ------------------------------------------------------------------------------------------------
    async def incident_list(self, limit: int = 100, state: str | None = None) -> list[dict[str, Any]]:
        return [Incident.from_row(r).as_dict() for r in await self.store.incidents.recent(limit, state)]

    async def incident_view(self, incident_id: str) -> dict[str, Any] | None:
        row = await self.store.incidents.get(incident_id)
        if row is None:
            return None
        inc = Incident.from_row(row)
        steps = list((await self._steps(inc.id)).values())
        events = await self.store.events.recent(limit=1000)
        timeline: list[dict[str, Any]] = [
            {"timestamp": e["timestamp"], "kind": "event", "type": e["type"], "summary": e["summary"]}
            for e in events
            if e["incident"] == inc.id
        ]
        for s in steps:
            timeline.append(
                {
                    "timestamp": s["started_at"],
                    "kind": "step",
                    "type": f"step.{s['action']}",
                    "summary": f"step {s['index'] + 1} {s['action']} started (attempt {s['attempts']})",
                }
            )
            if s["ended_at"]:
                timeline.append(
                    {
                        "timestamp": s["ended_at"],
                        "kind": "step",
                        "type": f"step.{s['action']}",
                        "summary": f"step {s['index'] + 1} {s['action']} {s['state']}"
                        + (f": {s['error']}" if s["error"] else ""),
                    }
                )
        timeline.sort(key=lambda t: t["timestamp"] or 0)
        return {**inc.as_dict(), "steps": steps, "timeline": timeline}

    async def resolve_by_hand(self, incident_id: str, who: str) -> dict[str, Any]:
        inc = self.incidents.get(incident_id)
        if inc is None:
            raise LookupError(f"{incident_id} is not an open incident (see GET /api/v1/incidents)")
        if inc.state is IncidentState.REMEDIATING:
            raise RuntimeError(f"{incident_id} is being remediated; wait for it to finish or fail")
        await self.resolve(inc, f"resolved by hand{f' ({who})' if who else ''}")
        return inc.as_dict()

    def status(self) -> dict[str, Any]:
        return {
            "mode": (self.runtime_mode or self.cli_mode or self.config.daemon.mode).value,
            "paused": self.paused,
            "service_modes": {name: self.mode_for(name).value for name in self.config.services},
            "incidents_open": len(self.incidents),
            "remediating": sum(1 for i in self.incidents.values() if i.state is IncidentState.REMEDIATING),
        }

    def _update_gauges(self) -> None:
        q = self.metrics.gauge("quarantined_machines")
        for name in self.config.services:
            n = sum(1 for m in self.monitor.machines.get(name, {}).values() if m.lifecycle is Lifecycle.QUARANTINED)
            q.labels(name).set(n)
