"""What healerd does to machines: rotation in and out, launch from the known-good image, probation,
entering service, retirement (quarantine is `quarantine.Quarantine`). Each call checks the world first and
is idempotent."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import structlog

from .._aio import wait_event
from ..config import Config, ServiceConfig
from ..events import Event, EventType, Severity, new_id
from ..health import CheckKey
from ..machines import Lifecycle, Machine, Origin, launched_at, launched_for
from ..plugins import ROTATION_KINDS
from ..probation import ProbationOutcome, probation_outcome
from ..providers.base import LaunchRequest, Provider, ProviderError
from ..rotations.base import Rotation
from ..store import VersionRecord
from ..zones import next_zone
from .actions import ProbationFailed, StepFailed
from .incidents import IncidentState
from .zone_state import ZoneGuard

if TYPE_CHECKING:
    from ..events import EventBus
    from ..metrics import Metrics
    from ..monitor import Monitor
    from ..store import BaseStore
    from .incidents import Incident, IncidentBook

log = structlog.get_logger("healerd.remediation")


def _launched_at(m: Machine) -> float:
    return m.launch_time or 0.0


def retirement_order(machines: Iterable[Machine], known_good: str | None) -> list[Machine]:
    """The order in which scale-in retires machines: first those not on the known-good version (a machine
    released from quarantine may run a version replaced since; one whose version is not recorded cannot be
    vouched for), then those of the zone with the most machines (the spread evens out), then the newest. A
    fleet on one version thus keeps its longest-proven machines."""
    machines = list(machines)
    per_zone = Counter(m.zone for m in machines)

    def key(m: Machine) -> tuple[bool, int, float, str]:
        stale = known_good is not None and m.image_version != known_good
        return (stale, per_zone[m.zone] if m.zone else 0, _launched_at(m), m.id)

    return sorted(machines, key=key, reverse=True)


def rotation_split(machines: Iterable[Machine], incidents: Iterable[Incident]) -> tuple[list[Machine], list[Machine]]:
    """The machines in service that the rotation serves, and those on their way out (their incident is
    remediating, or they are being retired): what takes those out drains them first, so the rotation's sync and
    reconcile leave them to it. A machine whose remediation failed (a human is needed), or that waits for the
    next rung of its ladder, is in neither: healerd took it out, so the rotation does not serve it meanwhile."""
    remediating: set[str] = set()
    kept_out: set[str] = set()
    for i in incidents:
        if i.state is IncidentState.REMEDIATING:
            remediating.add(i.machine)
        elif i.state is IncidentState.FAILED or (i.state is IncidentState.OPEN and i.details.get("out_of_rotation")):
            kept_out.add(i.machine)
    serving: list[Machine] = []
    leaving: list[Machine] = []
    for m in machines:
        if m.lifecycle is Lifecycle.IN_SERVICE and m.id not in kept_out:
            (leaving if m.id in remediating or m.retiring else serving).append(m)
    return serving, leaving


class Fleet:
    """The machines of every service through their provider and rotation, and the known-good images."""

    def __init__(
        self,
        config: Callable[[], Config],
        monitor: Monitor,
        *,
        store: BaseStore,
        bus: EventBus,
        metrics: Metrics,
        incidents: IncidentBook,
        zones: ZoneGuard | None = None,
    ) -> None:
        self._config = config
        self.monitor = monitor
        self.zones = zones or ZoneGuard(monitor)  # where a new machine must not go (a lost zone, a failing one)
        self.store = store
        self.bus = bus
        self.metrics = metrics
        self.incidents = incidents
        self.rotations: dict[str, Rotation] = {}
        #: service -> why its load balancer failed the last time healerd compared it (absent: it answered)
        self.rotation_faults: dict[str, str] = {}
        self.known_good: dict[str, str] = {}

    @property
    def config(self) -> Config:
        return self._config()

    async def apply(self) -> None:
        """Rotations follow the config; so do known-good images, unless a promotion recorded another one."""
        config = self.config
        for svc in config.services.values():
            current = self.rotations.get(svc.name)
            cls = ROTATION_KINDS.get(svc.rotation_kind)
            assert cls is not None
            if current is None or current.kind != svc.rotation_kind or current.options != svc.rotation:
                self.rotations[svc.name] = cls(
                    svc.name,
                    svc.rotation or cls.Config(),
                    state_dir=config.daemon.state_dir,
                    provider=self.monitor.providers.get(svc.provider),
                )
        for name, image in config.images.items():
            stored = await self.store.images.get(name)
            if stored is None or stored.seeded != image.known_good:
                # new image, or the config's known_good changed: an operator's promotion, and the config wins
                why = (
                    "set in the config" if stored is None else f"known_good changed in the config (was {stored.seeded})"
                )
                record = VersionRecord(name, image.known_good, "known_good", why, "config", time.time(), {})
                await self.store.images.promote(name, record, stored.known_good if stored else None, image.known_good)
                self.known_good[name] = image.known_good
            else:
                self.known_good[name] = stored.known_good if stored.known_good in image.versions else image.known_good

    def rotation_split(self, svc: ServiceConfig) -> tuple[list[Machine], list[Machine]]:
        """The machines the rotation serves, and those on their way out (see `rotation_split`)."""
        return rotation_split(self.monitor.machines.get(svc.name, {}).values(), self.incidents.of(svc.name))

    async def sync_rotation(self, svc: ServiceConfig) -> None:
        """At start: the rotation made what healerd says. One that reconciles is left to the reconcile loop,
        which does it in the background; a load balancer that cannot be reached does not stop the start."""
        rotation = self.rotations.get(svc.name)
        if rotation is None or rotation.reconciles:
            return
        try:
            await rotation.sync(*self.rotation_split(svc))
        except ProviderError as exc:
            self.rotation_checked(svc.name, str(exc))
        else:
            self.rotation_checked(svc.name, None)

    def rotation_checked(self, service: str, error: str | None) -> None:
        """What the service's load balancer did when healerd last compared it (None: it answered). Said once
        when it starts failing and once when it answers again; /readyz and healerd_rotation_up show it."""
        self.metrics.gauge("rotation_up").labels(service).set(0 if error else 1)
        if error is None:
            if self.rotation_faults.pop(service, None) is not None:
                log.warning("the load balancer answers again", service=service)
            return
        if service not in self.rotation_faults:
            log.error(
                "the load balancer fails; monitoring goes on, healerd tries again every check interval",
                service=service,
                error=error,
            )
        self.rotation_faults[service] = error

    async def resume_launches(self) -> None:
        """Machines recorded as launching to fill a fleet when healerd stopped are started again."""
        for svc in self.config.services.values():
            for m in list(self.monitor.machines.get(svc.name, {}).values()):
                if m.lifecycle is Lifecycle.LAUNCHING and m.origin is Origin.FILL:
                    with contextlib.suppress(ProviderError):  # a failed start is retried by the fill loop
                        await self.start(svc, m, None)

    def update_gauges(self) -> None:
        q = self.metrics.gauge("quarantined_machines")
        for name in self.config.services:
            n = sum(1 for m in self.monitor.machines.get(name, {}).values() if m.lifecycle is Lifecycle.QUARANTINED)
            q.labels(name).set(n)

    def provider(self, svc: ServiceConfig) -> Provider:
        return self.monitor.providers[svc.provider]

    def provider_said(self, svc: ServiceConfig, machine_id: str, since: float) -> str:
        """What the service's provider said about the machine since `since` (a command provider's stderr)."""
        return self.provider(svc).said(machine_id, since)

    async def machine(self, service: str, machine_id: str) -> Machine:
        m = self.monitor.machine(service, machine_id) or await self.store.machines.get(service, machine_id)
        if m is None:
            raise StepFailed(f"machine {machine_id} of {service} is not known", terminal=True)
        return m

    # -- rotation -------------------------------------------------------------------------------------
    async def rotation_remove(self, svc: ServiceConfig, machine_id: str) -> None:
        m = await self.machine(svc.name, machine_id)
        await self.rotations[svc.name].remove(m)

    # -- launch, probation, service ----------------------------------------------------------------------------
    async def launch_replacement(self, svc: ServiceConfig, incident: str | None) -> Machine:
        """Launch from the known-good image; for an incident, at most one replacement, ever."""
        assert svc.image is not None
        provider = self.provider(svc)
        if incident is not None:
            for existing in await self.store.machines.for_incident(incident):
                if existing.lifecycle in (Lifecycle.LAUNCHING, Lifecycle.PROBATION, Lifecycle.IN_SERVICE):
                    if existing.lifecycle is Lifecycle.LAUNCHING or not await provider.alive(existing):
                        return await self.start(svc, existing, incident)
                    return existing
                if existing.lifecycle is Lifecycle.QUARANTINED:
                    raise StepFailed(
                        f"the replacement {existing.id} for this incident failed its checks and is "
                        "quarantined; not launching another",
                        terminal=True,
                    )
        image = self.config.images[svc.image]
        version = self.known_good.get(svc.image, image.known_good)
        origin = launched_for(Origin.INCIDENT, incident) if incident else launched_for(Origin.FILL)
        return await self.launch(svc, version, {"launched_for": origin}, incident)

    async def launch(
        self, svc: ServiceConfig, version: str, attributes: dict[str, str], incident: str | None = None
    ) -> Machine:
        """Record a new machine of `version` (with `attributes`, its `launched_for` among them), then start it."""
        assert svc.image is not None
        provider = self.provider(svc)
        machine_id = f"{svc.name}-{new_id()[-8:].lower()}"
        taken = {
            int(m.attributes["port"])
            for m in await self.store.machines.load()
            if m.attributes.get("port", "").isdigit() and m.lifecycle not in (Lifecycle.TERMINATED, Lifecycle.RELEASED)
        }
        live = (Lifecycle.LAUNCHING, Lifecycle.PROBATION, Lifecycle.IN_SERVICE)
        placed = [m.zone for m in self.monitor.machines.get(svc.name, {}).values() if m.lifecycle in live]
        zone = next_zone(provider.zones(svc), placed, self.zones.avoid(svc.name))
        # a provider without zones may take `taken` only (its allocate from before zones)
        address, attrs = provider.allocate(taken, zone) if zone else provider.allocate(taken)
        machine = Machine(
            svc.name,
            machine_id,
            address,
            Lifecycle.LAUNCHING,
            {**attrs, "image": svc.image, "image_version": version, **attributes, "launched_at": str(time.time())},
        )
        # Recorded before the launch: a crash from here on cannot leave an untracked machine.
        await self.monitor.put_machine(machine)
        await self.store.incidents.log_launch(svc.name, machine_id, time.time(), incident)
        return await self.start(svc, machine, incident)

    async def start(self, svc: ServiceConfig, machine: Machine, incident: str | None) -> Machine:
        """Start a machine recorded as launching; it comes back on probation."""
        assert svc.image is not None
        image = self.config.images[svc.image]
        version = machine.image_version or image.known_good
        spec = image.versions.get(version) or image.versions[image.known_good]
        try:
            launched = await self.provider(svc).launch(
                LaunchRequest(svc.name, machine.id, svc.image, version, spec, incident, zone=machine.zone)
            )
        except ProviderError as exc:  # kept on the record: the API shows why the machine is still launching
            failed = {**machine.attributes, "launch_error": str(exc)[:1000]}
            await self.monitor.put_machine(
                Machine(machine.service, machine.id, machine.address, machine.lifecycle, failed)
            )
            raise
        attrs = {**machine.attributes, **launched.attributes}
        attrs.pop("launch_error", None)
        ready = Machine(launched.service, launched.id, launched.address, Lifecycle.PROBATION, attrs)
        if launched.id != machine.id:
            # the provider names its machines itself (an EC2 instance id): the placeholder record is retired
            retired = {**machine.attributes, "became": launched.id, "launched_for": launched_for(Origin.NONE)}
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

    def probation(
        self, svc: ServiceConfig, machine_id: str, now: float, *, timeout: float, started: float | None = None
    ) -> ProbationOutcome:
        m = self.monitor.machine(svc.name, machine_id)
        checks = [(self.monitor.book.check(CheckKey(svc.name, machine_id, s.name)), s.rise, s.fall) for s in svc.checks]
        return probation_outcome(
            checks,
            launched_at=launched_at(m, now),
            boot_timeout=svc.remediation.boot_timeout,
            now=now,
            booted=m is not None and m.origin is Origin.RELEASE,  # released from quarantine: booted long ago
            timeout=timeout,
            started=started,
        )

    async def await_healthy(self, svc: ServiceConfig, machine_id: str, timeout: float, incident: str | None) -> None:
        m = await self.machine(svc.name, machine_id)
        if m.lifecycle is Lifecycle.IN_SERVICE:
            return
        if m.lifecycle is not Lifecycle.PROBATION:
            raise StepFailed(f"{machine_id} is {m.lifecycle.value}, not in probation", terminal=True)
        started = time.time()
        # Decided at each of its check results (not on a poll: a passing replacement enters rotation at once);
        # the short ceiling catches the boot grace and the deadline running out between results.
        with self.monitor.watch(svc.name, machine_id) as result:
            while True:
                result.clear()
                # a second under the step's own timeout: the machine is quarantined before the step is cancelled
                outcome = self.probation(svc, machine_id, time.time(), timeout=max(0.0, timeout - 1.0), started=started)
                if outcome is ProbationOutcome.PASSED:
                    return
                if outcome is ProbationOutcome.FAILED or outcome is ProbationOutcome.TIMED_OUT:
                    failed = outcome is ProbationOutcome.FAILED
                    why = "its checks failed" if failed else f"its checks did not pass within {timeout:g}s"
                    raise ProbationFailed(machine_id, why)  # the caller quarantines it
                await wait_event(result, 0.2)

    async def put_in_service(self, svc: ServiceConfig, machine_id: str) -> None:
        m = await self.machine(svc.name, machine_id)
        if m.lifecycle is not Lifecycle.IN_SERVICE:
            if m.lifecycle is not Lifecycle.PROBATION:
                raise StepFailed(
                    f"{machine_id} is {m.lifecycle.value}; only a machine in probation enters service", terminal=True
                )
            m = Machine(m.service, m.id, m.address, Lifecycle.IN_SERVICE, m.attributes)
            await self.monitor.put_machine(m)
        await self.provider(svc).on_in_service(m, svc)
        await self.rotations[svc.name].add(m)

    async def retire(self, svc: ServiceConfig, m: Machine, why: str, drain: float = 0.0) -> None:
        """Scale in one machine: out of rotation, `drain` seconds for the requests already sent to it, then
        released or terminated as its provider does it. Marked `retiring` first: nothing puts it back."""
        if m.lifecycle is Lifecycle.IN_SERVICE and "retiring" not in m.attributes:
            m = Machine(m.service, m.id, m.address, m.lifecycle, {**m.attributes, "retiring": str(time.time())})
            await self.monitor.put_machine(m)
        await self.rotations[svc.name].remove(m)
        if drain > 0:
            await asyncio.sleep(drain)
        outcome = await self.provider(svc).retire(m)
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
        log.info("machine retired", machine=m.id, outcome=outcome, reason=why)

    def announce_replaced(self, inc: Incident, outputs: dict[str, Any]) -> None:
        self.incidents.emit(
            EventType.MACHINE_REPLACED,
            inc,
            f"{inc.machine} replaced by {outputs.get('replacement')} "
            f"({outputs.get('image_version') or 'known-good'}) and quarantined for forensics",
            replacement=outputs.get("replacement"),
            bundle=outputs.get("bundle"),
        )
