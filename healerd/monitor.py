"""The monitoring loop's state: which checks run against which machines, and what happens to a result.

`apply(config)` turns a config into bound checks (initially and on reload, keeping the state of what did
not change); `handle` takes each result through classification, the store, metrics and the event bus.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import structlog
from prometheus_client import Counter, Histogram

from .checks import CheckEnv
from .config import CheckSpec, Config, ServiceConfig
from .events import Event, EventBus
from .health import CheckKey, Condition, HealthBook, Thresholds
from .leadership import STANDALONE, Ownership
from .machine_addresses import UnusableAddresses
from .machines import Lifecycle, Machine
from .metrics import Metrics
from .monitor_gauges import MONITORED, MonitorGauges
from .plugins import PROVIDER_KINDS
from .providers import Provider
from .providers.base import ProviderEnv
from .results import CheckResult, Status
from .runner import BoundCheck, build_check, run_check
from .scheduler import WheelScheduler
from .store import BaseStore
from .targets import Target

log = structlog.get_logger("healerd.monitor")


@dataclass
class ApplyReport:
    added: int = 0
    removed: int = 0
    kept: int = 0


def thresholds(spec: CheckSpec) -> Thresholds:
    return Thresholds(spec.fall, spec.rise, spec.flap_low, spec.flap_high, spec.unknown_alert_after)


class Monitor:
    def __init__(
        self,
        book: HealthBook,
        bus: EventBus,
        *,
        metrics: Metrics,
        store: BaseStore,
        env: CheckEnv,
        max_concurrent: int,
        ownership: Ownership = STANDALONE,
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
        self.addresses = UnusableAddresses()  # a provider's machine address that no check can use, said once
        #: machines someone waits on (a replacement on probation): set at each of their results
        self._watchers: dict[tuple[str, str], asyncio.Event] = {}
        #: called with every result this node gets, its own and the other nodes' (a rollout's judge samples them)
        self.taps: list[Callable[[CheckKey, CheckResult, float], None]] = []
        self._ready_latched = False
        self._runs = metrics.counter("check_runs")
        self._durations = metrics.histogram("check_duration_seconds")
        self._missed_runs = metrics.counter("scheduler_missed_runs")
        #: which checks this node runs, which events are its to record, and whether it may write machine
        #: records (in a cluster: its shard, and whether it leads); alone, all of them
        self.ownership = ownership
        self.gauges = MonitorGauges(metrics, book, store=store, writes=ownership.acting)
        bus.subscribe(self.gauges.on_event, mirrored=True)

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
                self.providers[name] = cls(name, p.options, env=ProviderEnv(config.daemon.state_dir, self.store))
        wanted: dict[CheckKey, tuple[CheckSpec, Target]] = {}
        for svc in config.services.values():
            grace = svc.remediation.boot_timeout if svc.managed else 0.0
            self._publish(self.book.set_service(svc.name, svc.desired, svc.min_healthy, now, grace))
            machines = await self.providers[svc.provider].list_machines(svc)
            # static: the config is the truth; managed: the store is, and what discovery found joins it
            if self.ownership.acting():
                await self.store.machines.save(machines, svc.provider, now)
                if not svc.managed:
                    await self.store.machines.forget(svc.name, {m.id for m in machines})
            old = self.machines.get(svc.name, {})
            for gone in set(old) - {m.id for m in machines}:
                self._publish(self.book.remove_machine(svc.name, gone, now))
                self.gauges.forget_machine(svc.name, gone)
            self.machines[svc.name] = {m.id: m for m in machines}
            for m in machines:
                self.addresses.say_if_unusable(m)
                self.book.set_machine(svc.name, m.id, m.lifecycle, now, refresh=False)
                if m.id not in old and m.lifecycle in MONITORED:
                    self.gauges.machine_up(svc.name, m.id, True)
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
        self.gauges.update_services()
        return report

    def _bind(self, key: CheckKey, spec: CheckSpec, target: Target) -> None:
        self.book.set_check(key, thresholds(spec))
        bc = bound_check(key, spec, target, self.env, self._runs, self._durations)
        self.checks[key] = bc
        if self.ownership.owns(key):
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
            self.gauges.forget_machine(machine.service, machine.id)
            self.gauges.update_services()
            return
        before = machines.get(machine.id)
        machines[machine.id] = machine
        self._publish(self.book.set_machine(machine.service, machine.id, machine.lifecycle, now))
        if machine.lifecycle not in MONITORED:  # launching, quarantined, released: not an outage of the service
            self.gauges.forget_machine(machine.service, machine.id)
        elif before is None or before.lifecycle not in MONITORED:  # checked from now on
            self.gauges.machine_up(machine.service, machine.id, True)
        for spec in svc.checks:
            key = CheckKey(machine.service, machine.id, spec.name)
            if machine.lifecycle in MONITORED and key not in self.checks:
                self._bind(key, spec, machine.target)
            elif machine.lifecycle not in MONITORED and key in self.checks:
                self._unbind(key)
                self.book.remove_check(key, now)
        self.gauges.update_services()

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
                    self.gauges.machine_up(name, m.id, m.condition is not Condition.DOWN)
        self.gauges.update_services()
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

    def reshard(self) -> tuple[int, int]:
        """Start the checks this node owns now and stop the others (the cluster's membership changed); returns
        (started, stopped). A check that moves here goes on from the history its previous owner built."""
        started = stopped = 0
        for key, bc in self.checks.items():
            mine = self.ownership.owns(key)
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
            self.bus.publish(event, mirrored=not self.ownership.emits(event))

    def _missed(self, bc: BoundCheck) -> None:
        self._missed_runs.labels(bc.key.service, bc.key.check).inc()


def bound_check(
    key: CheckKey, spec: CheckSpec, target: Target, env: CheckEnv, runs: Counter, durations: Histogram
) -> BoundCheck:
    """The check of `spec` built for `target`, with its metric series; one that cannot be built says why at each run."""
    bc = BoundCheck(key=key, spec=spec, check=build_check(spec, target, env), address=target.address)
    bc.metric_children = {s: runs.labels(key.service, key.check, s.name) for s in Status}
    bc.duration_child = durations.labels(key.service, key.check)
    return bc
