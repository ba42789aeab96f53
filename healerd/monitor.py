"""The monitoring loop's state: which checks run against which machines, and what happens to a result.

`apply(config)` turns a config into bound checks (initially and on reload, keeping the state of what did
not change); `handle` takes each result through classification, the store, metrics and the event bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import structlog

from .checks import CheckEnv
from .checks.base import Check, Unbuildable
from .config import CheckSpec, Config, ServiceConfig
from .events import Event, EventBus
from .health import CheckKey, Condition, HealthBook, ServiceState, Thresholds
from .machines import Lifecycle, Machine, address_problem
from .metrics import Metrics
from .plugins import PROVIDER_KINDS
from .providers import Provider
from .providers.base import ProviderEnv
from .results import CheckResult, Status
from .runner import BoundCheck, run_check
from .scheduler import WheelScheduler
from .store import BaseStore
from .targets import Target, render_model

log = structlog.get_logger("healerd.monitor")

#: lifecycles whose machines are checked (probation: checked, not in rotation)
MONITORED = frozenset({Lifecycle.PROBATION, Lifecycle.IN_SERVICE})


@dataclass
class ApplyReport:
    added: int = 0
    removed: int = 0
    kept: int = 0


def thresholds(spec: CheckSpec) -> Thresholds:
    return Thresholds(spec.fall, spec.rise, spec.flap_low, spec.flap_high, spec.unknown_alert_after)


class MonitorViews:
    """The monitor's state as the API and the CLI show it."""

    book: HealthBook
    machines: dict[str, dict[str, Machine]]
    checks: dict[CheckKey, BoundCheck]

    def service_view(self, name: str) -> dict[str, Any]:
        svc = self.book.services[name]
        return {
            "name": name,
            "state": svc.state.value,
            "reason": svc.reason,
            "since": svc.since,
            "desired": svc.desired,
            "min_healthy": svc.min_healthy,
            "machines": svc.counts() | {"total": len(svc.machines)},
            "service_checks": {k: self._check_view(c) for k, c in svc.service_checks.items()},
        }

    def machine_view(self, service: str, machine_id: str) -> dict[str, Any]:
        m = self.book.services[service].machines[machine_id]
        machine = self.machines.get(service, {}).get(machine_id)
        return {
            "service": service,
            "id": machine_id,
            "address": machine.address if machine else "",
            "version": machine.attributes.get("image_version") if machine else None,
            "lifecycle": m.lifecycle.value,
            "condition": m.condition.value,
            "up": m.condition is not Condition.DOWN,
            "flapping": m.condition is Condition.FLAPPING,
            "since": m.since,
            "checks": {k: self._check_view(c) for k, c in m.checks.items()},
        }

    def _check_view(self, c: Any) -> dict[str, Any]:
        last = c.last
        bc = self.checks.get(c.key)
        return {
            "status": last.status.name if last else None,
            "message": last.message if last else None,
            "duration": round(last.duration, 6) if last else None,
            "metrics": [m.as_dict() for m in last.metrics] if last else [],
            "last_run": c.last_at,
            "hard_state": c.hard.name,
            "state_type": c.state_type,
            "since": c.since,
            "ok_streak": c.ok_streak,
            "fail_streak": c.bad_streak,
            "flapping": c.flapping,
            "flap_percent": round(c.flap_pct, 1),
            "interval": bc.spec.interval if bc else None,
        }


class ResultWatchers:
    """Who wants each check result as it comes, besides the health book."""

    book: HealthBook

    def _publish(self, events: list[Event]) -> None:
        raise NotImplementedError

    def observe_input(self, key: CheckKey, result: CheckResult, now: float) -> None:
        """A result that no scheduled check made (an alert from Alertmanager): into the book, watchers, events."""
        events = self.book.observe(key, result, now)
        self._after_result(key, result, now)
        if events:
            self._publish(events)

    def remove_input(self, key: CheckKey, now: float) -> None:
        """A virtual check whose input is over (a resolved alert): out of the book, the machine recomputed."""
        events = self.book.remove_check(key, now)
        if events:
            self._publish(events)

    def __init__(self) -> None:
        #: machines someone waits on (a replacement on probation): set at each of their results
        self._watchers: dict[tuple[str, str], asyncio.Event] = {}
        #: called with every result this node gets, its own and the other nodes' (a rollout's judge samples them)
        self.taps: list[Callable[[CheckKey, CheckResult, float], None]] = []

    def _after_result(self, key: CheckKey, result: CheckResult, ts: float) -> None:
        for tap in self.taps:
            tap(key, result, ts)
        if self._watchers:
            watcher = self._watchers.get((key.service, key.machine))
            if watcher is not None:
                watcher.set()

    @contextlib.contextmanager
    def watch(self, service: str, machine: str) -> Iterator[asyncio.Event]:
        """An event set at each result of the machine's checks, while the block runs."""
        event = self._watchers.setdefault((service, machine), asyncio.Event())
        try:
            yield event
        finally:
            self._watchers.pop((service, machine), None)


class Monitor(MonitorViews, ResultWatchers):
    def __init__(
        self,
        book: HealthBook,
        bus: EventBus,
        metrics: Metrics,
        store: BaseStore,
        env: CheckEnv,
        max_concurrent: int,
    ) -> None:
        self.book = book
        self.bus = bus
        self.metrics = metrics
        self.store = store
        self.env = env
        self.scheduler = WheelScheduler(
            self.run,
            max_concurrent,
            on_lag=metrics.histogram("scheduler_lag_seconds").observe,
            on_missed=self._missed,
        )
        self.checks: dict[CheckKey, BoundCheck] = {}
        self.machines: dict[str, dict[str, Machine]] = {}
        self.providers: dict[str, Provider] = {}
        self.services: dict[str, ServiceConfig] = {}
        self._pending_first: set[CheckKey] = set()
        self._bad_addresses: dict[tuple[str, str], str] = {}  # (service, machine) -> the address said unusable
        ResultWatchers.__init__(self)
        self._ready_latched = False
        self._runs = metrics.counter("check_runs")
        self._durations = metrics.histogram("check_duration_seconds")
        self._machine_up = metrics.gauge("machine_up")
        self._missed_runs = metrics.counter("scheduler_missed_runs")
        #: in a cluster (set by it): which checks this node runs, which events are this node's to record, and
        #: whether it may write machine records (the leader); alone, all of them
        self.owns: Callable[[CheckKey], bool] = lambda key: True
        self.emits: Callable[[Event], bool] = lambda event: True
        self.writes: Callable[[], bool] = lambda: True
        bus.subscribe(self._on_event, mirrored=True)
        store.history.states = self._states_counted

    def _say_if_unusable(self, m: Machine) -> None:
        """A provider's machine whose address cannot go into a check's URL or a load balancer's command: said
        once per address (its checks then read UNKNOWN with the reason; nothing is written with it)."""
        key = (m.service, m.id)
        problem = address_problem(m.address, port_required=False)
        if problem is None:
            self._bad_addresses.pop(key, None)
        elif self._bad_addresses.get(key) != m.address:
            self._bad_addresses[key] = m.address
            log.error(
                "a machine's address is unusable",
                service=m.service,
                machine=m.id,
                address=m.address[:100],
                problem=problem,
                hint="the provider gave it: fix the machine's address where the provider reads it",
            )

    # -- readiness ----------------------------------------------------------------------------------------
    @property
    def checks_without_result(self) -> int:
        return len(self._pending_first)

    @property
    def ready(self) -> bool:
        """True once every check has completed at least one run (the first round is done)."""
        if not self._ready_latched and self.scheduler.running and not self._pending_first:
            self._ready_latched = True  # once ready, a reload that adds checks does not make it unready
        return self._ready_latched

    # -- config -------------------------------------------------------------------------------------------
    async def apply(self, config: Config, now: float | None = None) -> ApplyReport:
        now = time.time() if now is None else now
        report = ApplyReport()
        for name, p in config.providers.items():
            current = self.providers.get(name)
            if current is None or current.kind != p.kind or current.options != p.options:
                cls = PROVIDER_KINDS.get(p.kind)
                assert cls is not None
                self.providers[name] = cls(name, p.options, ProviderEnv(config.daemon.state_dir, self.store))
        wanted: dict[CheckKey, tuple[CheckSpec, Target]] = {}
        for svc in config.services.values():
            grace = svc.remediation.boot_timeout if svc.managed else 0.0
            self._publish(self.book.set_service(svc.name, svc.desired, svc.min_healthy, now, grace))
            machines = await self.providers[svc.provider].list_machines(svc)
            # static: the config is the truth; managed: the store is, and what discovery found joins it
            if self.writes():
                await self.store.machines.save(machines, svc.provider, now)
                if not svc.managed:
                    await self.store.machines.forget(svc.name, {m.id for m in machines})
            old = self.machines.get(svc.name, {})
            for gone in set(old) - {m.id for m in machines}:
                self._publish(self.book.remove_machine(svc.name, gone, now))
                self._forget_up(svc.name, gone)
            self.machines[svc.name] = {m.id: m for m in machines}
            for m in machines:
                self._say_if_unusable(m)
                self.book.set_machine(svc.name, m.id, m.lifecycle, now, refresh=False)
                if m.id not in old and m.lifecycle in MONITORED:
                    self._machine_up.labels(svc.name, m.id).set(1)
                if m.lifecycle in MONITORED:
                    for spec in svc.checks:
                        wanted[CheckKey(svc.name, m.id, spec.name)] = (spec, m.target)
            for spec in svc.service_checks:
                wanted[CheckKey(svc.name, "", spec.name)] = (spec, Target(svc.name, ""))
        for name in set(self.services) - set(config.services):
            self.book.remove_service(name)
            self.machines.pop(name, None)
        # Remove what is gone or changed; keep what is identical (its schedule and state continue).
        for key, bc in list(self.checks.items()):
            want = wanted.get(key)
            if want is not None and want[0].fingerprint == bc.spec.fingerprint and want[1].address == bc.address:
                report.kept += 1
                continue
            self._unbind(key)
            if want is None:
                report.removed += 1
                self._publish(self.book.remove_check(key, now))
        for key, (spec, target) in wanted.items():
            if key not in self.checks:
                report.added += 1
                self._bind(key, spec, target)
        self.services = dict(config.services)
        for svc in config.services.values():
            self._publish(self.book.refresh(svc.name, now))
        self.update_service_gauges()
        return report

    def _bind(self, key: CheckKey, spec: CheckSpec, target: Target) -> None:
        self.book.set_check(key, thresholds(spec))
        bc = self.bind(key, spec, target)
        self.checks[key] = bc
        if self.owns(key):
            self._pending_first.add(key)
            self.scheduler.add(bc)
        else:
            bc.active = False

    def _unbind(self, key: CheckKey) -> None:
        bc = self.checks.pop(key, None)
        if bc is not None:
            self.scheduler.remove(bc)
        self._pending_first.discard(key)

    # -- machines changing at run time (remediation) ----------------------------------------------------
    def machine(self, service: str, machine_id: str) -> Machine | None:
        return self.machines.get(service, {}).get(machine_id)

    async def put_machine(self, machine: Machine, now: float | None = None) -> None:
        """Record a machine (new, or with a new lifecycle/attributes) and start or stop its checks."""
        now = time.time() if now is None else now
        svc = self.services.get(machine.service)
        provider = svc.provider if svc else ""
        await self.store.machines.upsert(machine, provider, now)
        self.follow_machine(machine, now)

    def follow_machine(self, machine: Machine, now: float) -> None:
        """Take a machine's new record (written here, or by the cluster's leader) into the checks and the book."""
        svc = self.services.get(machine.service)
        if svc is None:
            return
        machines = self.machines.setdefault(machine.service, {})
        if machine.lifecycle in (Lifecycle.RELEASED, Lifecycle.TERMINATED):
            machines.pop(machine.id, None)
            for spec in svc.checks:
                key = CheckKey(machine.service, machine.id, spec.name)
                self._unbind(key)
            self._publish(self.book.remove_machine(machine.service, machine.id, now))
            self._forget_up(machine.service, machine.id)
            self.update_service_gauges()
            return
        before = machines.get(machine.id)
        machines[machine.id] = machine
        self._publish(self.book.set_machine(machine.service, machine.id, machine.lifecycle, now))
        if machine.lifecycle not in MONITORED:  # launching, quarantined, released: not an outage of the service
            self._forget_up(machine.service, machine.id)
        elif before is None or before.lifecycle not in MONITORED:  # checked from now on
            self._machine_up.labels(machine.service, machine.id).set(1)
        for spec in svc.checks:
            key = CheckKey(machine.service, machine.id, spec.name)
            if machine.lifecycle in MONITORED and key not in self.checks:
                self._bind(key, spec, machine.target)
            elif machine.lifecycle not in MONITORED and key in self.checks:
                self._unbind(key)
                self.book.remove_check(key, now)
        self.update_service_gauges()

    def _forget_up(self, service: str, machine_id: str) -> None:
        with contextlib.suppress(KeyError):
            self._machine_up.remove(service, machine_id)

    def bind(self, key: CheckKey, spec: CheckSpec, target: Target) -> BoundCheck:
        check: Check[Any]
        try:
            options = render_model(spec.options, target.fields())
            check = spec.check_class(options, target, self.env)
        except (ValueError, TypeError) as exc:  # e.g. a provider's address that makes no URL: said by every run
            check = Unbuildable(target, self.env, f"cannot run {spec.kind} on {target.address[:100]!r}: {exc}"[:500])
        bc = BoundCheck(key=key, spec=spec, check=check, address=target.address)
        bc.metric_children = {s: self._runs.labels(key.service, key.check, s.name) for s in Status}
        bc.duration_child = self._durations.labels(key.service, key.check)
        return bc

    async def restore(self) -> int:
        """Replay stored recent results so hard states and flap history survive a restart (no events)."""
        history = await self.store.results.history()
        restored = 0
        for key, entries in history.items():
            ch = self.book.check(key)
            if ch is None:  # not run; a quarantined machine's check still shows what it saw last
                svc = self.services.get(key.service)
                spec = next((s for s in svc.checks if s.name == key.check), None) if svc is not None else None
                if spec is not None:
                    self.book.recall(key, thresholds(spec), entries)
                continue
            for ts, result in entries:
                self.book.observe(key, result, ts, replay=True)
            restored += 1
        now = time.time()
        for name in self.services:
            self.book.resync(name, now)
            for m in self.book.services[name].machines.values():
                if m.lifecycle in MONITORED:
                    self._machine_up.labels(name, m.id).set(0 if m.condition is Condition.DOWN else 1)
        self.update_service_gauges()
        return restored

    # -- results ------------------------------------------------------------------------------------------
    async def run(self, bc: BoundCheck) -> None:
        result = await run_check(bc.check, bc.spec.timeout, bc.spec.timeout_status)
        if bc.active:
            self.handle(bc, result, time.time())

    def handle(self, bc: BoundCheck, result: CheckResult, now: float) -> None:
        key = bc.key
        bc.runs += 1
        bc.metric_children[result.status].inc()
        bc.duration_child.observe(result.duration)
        self.store.results.add(key, result, now)
        self.store.history.book.result(key.service, key.machine, key.check, result.status, result.duration, now)
        if bc.runs == 1:
            self._pending_first.discard(key)
        log.debug(
            "check result",
            service=key.service,
            machine=key.machine,
            check=key.check,
            status=result.status.name,
            message=result.message,
            duration=round(result.duration, 6),
        )
        events = self.book.observe(key, result, now)
        self._after_result(key, result, now)
        ch = self.book.check(key)
        if ch is not None and ch.soft_failing:
            self.scheduler.retry_soon(bc)
        if events:
            self._publish(events)

    def observe_remote(self, key: CheckKey, result: CheckResult, ts: float) -> None:
        """A result another node of the cluster got (for the machines it checks): into the book, not the store."""
        if key not in self.checks or self.checks[key].active:
            return  # not a check of the current config, or one this node runs itself now
        self._pending_first.discard(key)
        events = self.book.observe(key, result, ts)
        self._after_result(key, result, ts)
        if events:
            self._publish(events)

    def reshard(self) -> tuple[int, int]:
        """Start the checks this node owns now and stop the others (the cluster's membership changed); returns
        (started, stopped). A check that moves here goes on from the history its previous owner built."""
        started = stopped = 0
        for key, bc in self.checks.items():
            mine = self.owns(key)
            if mine and not bc.active:
                self.scheduler.add(bc)
                started += 1
            elif not mine and bc.active:
                self.scheduler.remove(bc)
                self._pending_first.discard(key)
                stopped += 1
        return started, stopped

    def owned_machines(self) -> int:
        """Machines with at least one check run by this node."""
        return len({(k.service, k.machine) for k, bc in self.checks.items() if bc.active and k.machine})

    def _publish(self, events: list[Event]) -> None:
        for event in events:
            self.bus.publish(event, mirrored=not self.emits(event))

    def _missed(self, bc: BoundCheck) -> None:
        self._missed_runs.labels(bc.key.service, bc.key.check).inc()

    def _on_event(self, event: Event) -> None:
        if event.machine and event.type.value in (
            "machine.unhealthy",
            "machine.recovered",
            "machine.flapping",
        ):
            m = self.book.machine(event.service, event.machine)
            if m is not None and m.lifecycle in MONITORED:
                self._machine_up.labels(event.service, event.machine).set(0 if m.condition is Condition.DOWN else 1)
        if event.type.value == "service.state_changed":
            self.update_service_gauges()

    def _states_counted(self) -> dict[str, bool]:
        """The services whose time up or down this node counts in the history (the leader's, in a cluster)."""
        if not self.writes():
            return {}
        return {n: s.state is ServiceState.DOWN for n, s in self.book.services.items() if s.settled}

    def update_service_gauges(self) -> None:
        state_g = self.metrics.gauge("service_state")
        machines_g = self.metrics.gauge("service_machines")
        for name, svc in self.book.services.items():
            for st in ServiceState:
                state_g.labels(name, st.value).set(1 if svc.state is st else 0)
            if svc.settled and self.writes():
                self.store.history.book.service_state(name, svc.state is ServiceState.DOWN, time.time())
            tally = Tally(m.lifecycle for m in svc.machines.values())
            for lc in Lifecycle:
                machines_g.labels(name, lc.value).set(tally.get(lc, 0))
