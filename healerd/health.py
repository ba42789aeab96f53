"""Health classification, pure: soft/hard states, flap detection, machine condition and service state.

Nothing here does I/O or reads a clock: callers pass `now` and publish the returned events. This is the
only place in healerd that decides health; probation.py judges a new machine's probation from these states.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from .durations import format_duration
from .events import Event, EventType, Severity
from .machines import Lifecycle
from .results import CheckResult, Status

_BOOTING = frozenset({Lifecycle.LAUNCHING, Lifecycle.PROBATION})
FLAP_WINDOW = 21  # states; 20 transitions, as Nagios
_WEIGHTS = tuple(0.75 + 0.5 * i / (FLAP_WINDOW - 2) for i in range(FLAP_WINDOW - 1))  # oldest -> newest


class CheckKey(NamedTuple):
    service: str
    machine: str  # "" for service-level checks
    check: str


class Condition(enum.StrEnum):
    """A machine's health, from its checks' hard states."""

    PENDING = "pending"  # no result yet
    UP = "up"
    IMPAIRED = "impaired"  # some check hard WARNING
    FLAPPING = "flapping"  # reported, not acted on
    DOWN = "down"  # some check hard CRITICAL


class ServiceState(enum.StrEnum):
    OPTIMAL = "optimal"
    DEGRADED = "degraded"
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class Thresholds:
    fall: int = 3
    rise: int = 2
    flap_low: float = 20.0
    flap_high: float = 30.0
    #: a check that stays UNKNOWN this long is itself a problem on-call must see (`check.unknown`)
    unknown_alert_after: float = 300.0


def flap_percent(states: deque[Status] | list[Status]) -> float:
    """Nagios' weighted percent state change over the last 21 states (newest transitions weigh most)."""
    seq = list(states)[-FLAP_WINDOW:]
    offset = (FLAP_WINDOW - 1) - (len(seq) - 1)  # fewer states: align with the newest weights
    total = 0.0
    for i in range(1, len(seq)):
        if seq[i] != seq[i - 1]:
            total += _WEIGHTS[offset + i - 1]
    return total / (FLAP_WINDOW - 1) * 100.0


@dataclass(slots=True)
class CheckHealth:
    """State of one check on one machine."""

    key: CheckKey
    thresholds: Thresholds
    hard: Status = Status.OK
    last: CheckResult | None = None
    last_at: float | None = None
    since: float | None = None  # when the hard state last changed
    ok_streak: int = 0
    bad_streak: int = 0
    flapping: bool = False
    flap_pct: float = 0.0
    ever_ok: bool = False  # one OK result seen (a machine that has booted)
    live: bool = False  # a result of this process' own run seen (not only replayed history)
    unknown_since: float | None = None  # first UNKNOWN of the current unbroken run of UNKNOWNs
    unknown_alerted: bool = False  # `check.unknown` announced for that run
    _states: deque[Status] = field(default_factory=lambda: deque(maxlen=FLAP_WINDOW))
    _changes: int = 0  # transitions inside _states, kept incrementally so the common case is O(1)

    @property
    def state_type(self) -> str:
        """'hard' when the latest result agrees with the hard state, else 'soft' (a change not yet confirmed)."""
        if self.last is None or self.last.status is Status.UNKNOWN or self.last.status is self.hard:
            return "hard"
        return "soft"

    @property
    def soft(self) -> Status:
        return self.last.status if self.last is not None else Status.OK

    @property
    def soft_failing(self) -> bool:
        """A failure seen but not yet confirmed: the scheduler may re-check sooner (retry_interval)."""
        return self.hard is Status.OK and self.bad_streak > 0

    def observe(self, result: CheckResult, now: float) -> tuple[bool, bool]:
        """Record a result. Returns (hard state changed, flapping changed)."""
        self.last = result
        self.last_at = now
        status = result.status
        if status is Status.UNKNOWN:  # the check could not decide: it neither confirms nor refutes
            if self.unknown_since is None:
                self.unknown_since = now
            return False, False
        self.unknown_since = None
        self._push(status)
        hard_changed = False
        if status is Status.OK:
            self.ever_ok = True
            self.ok_streak += 1
            self.bad_streak = 0
            if self.hard is not Status.OK and self.ok_streak >= self.thresholds.rise:
                hard_changed = True
        else:
            self.bad_streak += 1
            self.ok_streak = 0
            if self.hard is Status.OK:
                hard_changed = self.bad_streak >= self.thresholds.fall
            else:
                hard_changed = status is not self.hard  # between problem states the change is immediate
        if hard_changed:
            self.hard = status
            self.since = now
        flap_changed = self._update_flapping()
        return hard_changed, flap_changed

    def unknown_changed(self) -> bool:
        """True when the check just crossed `unknown_alert_after` of UNKNOWNs, or decided again after that."""
        if self.unknown_since is not None:
            due = self.last_at is not None and self.last_at - self.unknown_since >= self.thresholds.unknown_alert_after
            if due and not self.unknown_alerted:
                self.unknown_alerted = True
                return True
            return False
        if self.unknown_alerted:
            self.unknown_alerted = False
            return True
        return False

    def _push(self, status: Status) -> None:
        states = self._states
        if states:
            if len(states) == FLAP_WINDOW and states[0] is not states[1]:
                self._changes -= 1
            if states[-1] is not status:
                self._changes += 1
        states.append(status)

    def _update_flapping(self) -> bool:
        pct = 0.0 if self._changes == 0 else flap_percent(self._states)
        self.flap_pct = pct
        if not self.flapping and pct >= self.thresholds.flap_high:
            self.flapping = True
            return True
        if self.flapping and pct <= self.thresholds.flap_low:
            self.flapping = False
            return True
        return False


@dataclass(slots=True)
class MachineHealth:
    service: str
    id: str
    lifecycle: Lifecycle
    checks: dict[str, CheckHealth] = field(default_factory=dict)
    condition: Condition = Condition.PENDING
    #: the condition last announced by an event (flapping hides changes until it settles)
    reported: Condition = Condition.UP
    since: float | None = None

    def compute(self) -> Condition:
        if not self.checks or all(c.last is None for c in self.checks.values()):
            return Condition.PENDING
        if any(c.flapping for c in self.checks.values()):
            return Condition.FLAPPING
        worst = Status.worst([c.hard for c in self.checks.values()])
        if worst is Status.CRITICAL:
            return Condition.DOWN
        if worst is Status.WARNING:
            return Condition.IMPAIRED
        return Condition.UP

    def problem(self) -> str:
        bad = [c for c in self.checks.values() if c.hard is not Status.OK or c.flapping]
        parts = []
        for c in bad:
            msg = c.last.message if c.last else ""
            parts.append(f"{c.key.check} {'flapping' if c.flapping else c.hard.name}: {msg}".strip())
        return "; ".join(parts)


def category(m: MachineHealth) -> str | None:
    """How a machine counts toward its service's state (None: not in service)."""
    if m.lifecycle is not Lifecycle.IN_SERVICE:
        return None
    if m.condition is Condition.UP or m.condition is Condition.PENDING:
        return "healthy"
    if m.condition is Condition.DOWN:
        return "down"
    return "impaired"


@dataclass(slots=True)
class ServiceHealth:
    name: str
    desired: int
    min_healthy: int
    machines: dict[str, MachineHealth] = field(default_factory=dict)
    service_checks: dict[str, CheckHealth] = field(default_factory=dict)
    state: ServiceState = ServiceState.OPTIMAL
    since: float | None = None
    reason: str = ""
    #: in-service machines by category, kept incrementally: a result never costs O(fleet)
    tally: dict[str, int] = field(default_factory=lambda: {"healthy": 0, "impaired": 0, "down": 0})
    #: the state last announced by an event; alarms start only once the service `settled`
    announced: ServiceState = ServiceState.OPTIMAL
    #: latched once the first full round after start-up is done and the fleet stopped booting (or
    #: `settle_by` passed): no alarm about a state nobody has observed yet
    settled: bool = False
    settle_by: float = 0.0
    pending: int = 0  # checks bound without a live result yet (the first round is not done)
    booting: int = 0  # machines launching or on probation

    def counts(self) -> dict[str, int]:
        return dict(self.tally)

    def move(self, old: str | None, new: str | None) -> None:
        if old != new:
            if old is not None:
                self.tally[old] -= 1
            if new is not None:
                self.tally[new] += 1

    def recount(self) -> None:
        self.tally = {"healthy": 0, "impaired": 0, "down": 0}
        for m in self.machines.values():
            self.move(None, category(m))

    def observed(self) -> bool:
        """True once something about the service has been observed (a machine or service check result)."""
        return any(m.condition is not Condition.PENDING for m in self.machines.values()) or any(
            c.last is not None for c in self.service_checks.values()
        )

    def try_settle(self, now: float) -> bool:
        if not self.settled and self.pending == 0 and (self.booting == 0 or now >= self.settle_by):
            self.settled = self.observed()
        return self.settled

    def compute(self) -> tuple[ServiceState, str]:
        c = self.counts()
        serving = c["healthy"] + c["impaired"]
        failing = {k: v for k, v in self.service_checks.items() if v.hard is not Status.OK}
        crit = [k for k, v in failing.items() if v.hard is Status.CRITICAL]
        if crit:
            return ServiceState.DOWN, f"service check {', '.join(crit)} CRITICAL"
        if serving < self.min_healthy:
            return (
                ServiceState.DOWN,
                f"{serving} serving machine(s), fewer than min_healthy {self.min_healthy}",
            )
        if c["healthy"] >= self.desired and c["impaired"] == 0 and c["down"] == 0 and not failing:
            return ServiceState.OPTIMAL, f"{c['healthy']}/{self.desired} machines healthy"
        reasons = []
        if c["healthy"] < self.desired:
            reasons.append(f"{c['healthy']}/{self.desired} machines healthy")
        if c["down"]:
            reasons.append(f"{c['down']} down in rotation")
        if c["impaired"]:
            reasons.append(f"{c['impaired']} impaired")
        if failing:
            reasons.append(f"service check {', '.join(failing)} WARNING")
        return ServiceState.DEGRADED, ", ".join(reasons)


class HealthBook:
    """Every check's, machine's and service's health. `observe` is the one entry point for results."""

    def __init__(self) -> None:
        self.services: dict[str, ServiceHealth] = {}
        self._checks: dict[CheckKey, CheckHealth] = {}

    # -- topology -------------------------------------------------------------------------------------
    def set_service(
        self, name: str, desired: int, min_healthy: int, now: float, settle_grace: float = 0.0
    ) -> list[Event]:
        """Add a service or change its sizes. `settle_grace`: how long machines booting at start-up may keep
        its alarms quiet (the first full round always does)."""
        svc = self.services.get(name)
        if svc is None:
            svc = ServiceHealth(name, desired, min_healthy, since=now, settle_by=now + settle_grace)
            self.services[name] = svc
        svc.desired, svc.min_healthy = desired, min_healthy
        return self._service_changed(svc, now) if svc.machines or svc.service_checks else []

    def remove_service(self, name: str) -> None:
        svc = self.services.pop(name, None)
        if svc is None:
            return
        for key in [k for k in self._checks if k.service == name]:
            del self._checks[key]

    def set_machine(
        self, service: str, machine: str, lifecycle: Lifecycle, now: float, refresh: bool = True
    ) -> list[Event]:
        """Add a machine or change its lifecycle. With refresh=False (bulk loads) call `refresh` after."""
        svc = self.services[service]
        m = svc.machines.get(machine)
        if m is None:
            m = svc.machines[machine] = MachineHealth(service, machine, lifecycle, since=now)
            svc.move(None, category(m))
            svc.booting += lifecycle in _BOOTING
        elif m.lifecycle is lifecycle:
            return []
        else:
            old = category(m)
            svc.booting += (lifecycle in _BOOTING) - (m.lifecycle in _BOOTING)
            if m.lifecycle is Lifecycle.QUARANTINED:
                # out of quarantine: what its stopped checks said last is history, its checks start again
                m.checks = {name: c for name, c in m.checks.items() if self._checks.get(c.key) is c}
                m.condition, m.since = m.compute(), now
            m.lifecycle = lifecycle
            svc.move(old, category(m))
        return self._service_changed(svc, now) if refresh else []

    def resync(self, service: str, now: float) -> list[Event]:
        """After results were replayed silently (restore): recompute conditions and counts, no events."""
        svc = self.services.get(service)
        if svc is None:
            return []
        for m in svc.machines.values():
            m.condition = m.compute()
            if m.condition not in (Condition.PENDING, Condition.FLAPPING):
                m.reported = m.condition
        svc.recount()
        svc.state, svc.reason = svc.compute()
        if svc.observed():
            svc.announced = svc.state  # what was true before the restart was announced then
        return []

    def refresh(self, service: str, now: float) -> list[Event]:
        """Recompute a service's state after bulk changes."""
        svc = self.services.get(service)
        return self._service_changed(svc, now) if svc else []

    def remove_machine(self, service: str, machine: str, now: float) -> list[Event]:
        svc = self.services.get(service)
        m = svc.machines.pop(machine, None) if svc is not None else None
        if svc is None or m is None:
            return []
        svc.move(category(m), None)
        svc.booting -= m.lifecycle in _BOOTING
        for name in m.checks:
            ch = self._checks.pop(CheckKey(service, machine, name), None)
            if ch is not None and not ch.live:
                svc.pending -= 1
        return self._service_changed(svc, now)

    def set_check(self, key: CheckKey, thresholds: Thresholds) -> CheckHealth:
        """Add a check (or update its thresholds, keeping its state)."""
        ch = self._checks.get(key)
        if ch is None:
            ch = self._checks[key] = CheckHealth(key, thresholds)
            svc = self.services[key.service]
            svc.pending += 1
            if key.machine:
                svc.machines[key.machine].checks[key.check] = ch
            else:
                svc.service_checks[key.check] = ch
        else:
            ch.thresholds = thresholds
        return ch

    def remove_check(self, key: CheckKey, now: float) -> list[Event]:
        """Stop taking results of a check. A quarantined machine keeps the check's last state on show."""
        ch = self._checks.pop(key, None)
        svc = self.services.get(key.service)
        if ch is None or svc is None:
            return []
        if not ch.live:
            svc.pending -= 1
        if key.machine:
            m = svc.machines.get(key.machine)
            if m is not None:
                if m.lifecycle is Lifecycle.QUARANTINED:
                    # its checks stop, and what they said last stays: it reads as what it was taken out for
                    # (down, and why), not `pending`
                    return []
                m.checks.pop(key.check, None)
                return self._machine_changed(svc, m, now)
            return []
        svc.service_checks.pop(key.check, None)
        return self._service_changed(svc, now)

    def recall(self, key: CheckKey, thresholds: Thresholds, history: Iterable[tuple[float, CheckResult]]) -> bool:
        """After a restart: a quarantined machine's stopped check as its stored results left it, on show and not
        run (no events). False when `key` is not a check of a quarantined machine."""
        svc = self.services.get(key.service)
        m = svc.machines.get(key.machine) if svc is not None and key.machine else None
        if m is None or m.lifecycle is not Lifecycle.QUARANTINED or key in self._checks:
            return False
        ch = CheckHealth(key, thresholds)
        for ts, result in history:
            ch.observe(result, ts)
        m.checks[key.check] = ch
        m.condition = m.compute()
        m.since = max((c.since or 0.0 for c in m.checks.values()), default=0.0) or m.since
        if m.condition not in (Condition.PENDING, Condition.FLAPPING):
            m.reported = m.condition
        return True

    def check(self, key: CheckKey) -> CheckHealth | None:
        return self._checks.get(key)

    def machine(self, service: str, machine: str) -> MachineHealth | None:
        svc = self.services.get(service)
        return svc.machines.get(machine) if svc else None

    # -- results --------------------------------------------------------------------------------------
    def observe(self, key: CheckKey, result: CheckResult, now: float, replay: bool = False) -> list[Event]:
        """Take one result. `replay`: history restored at start-up (it does not count as this run's round)."""
        ch = self._checks.get(key)
        if ch is None:  # a result for a check removed meanwhile (reload): dropped
            return []
        first = ch.last is None
        first_live = not ch.live and not replay
        hard_changed, flap_changed = ch.observe(result, now)
        events: list[Event] = []
        svc = self.services[key.service]
        if first_live:
            ch.live = True
            svc.pending -= 1
        if ch.unknown_changed() and not replay:
            events.append(self._unknown_event(ch, now))
        if not (hard_changed or flap_changed or first or first_live):
            return events
        if not key.machine:
            if hard_changed or flap_changed or (first_live and svc.pending == 0):
                events += self._service_changed(svc, now)
            return events
        m = svc.machines[key.machine]
        if flap_changed:
            events.append(self._flap_event(m, ch, now))
        events += self._machine_changed(svc, m, now)
        if first_live and svc.pending == 0 and not svc.settled:
            events += self._service_changed(svc, now)
        return events

    def _unknown_event(self, ch: CheckHealth, now: float) -> Event:
        key = ch.key
        where = f"{key.machine} " if key.machine else f"service {key.service} "
        if ch.unknown_alerted:
            assert ch.unknown_since is not None and ch.last is not None
            summary = (
                f"{where}check {key.check} cannot decide: UNKNOWN for {format_duration(now - ch.unknown_since)} "
                f"({ch.last.message})"
            )
        else:
            summary = f"{where}check {key.check} decides again: {ch.last.status.name if ch.last else 'OK'}"
        return Event(
            EventType.CHECK_UNKNOWN,
            key.service,
            summary,
            now,
            machine=key.machine or None,
            check=key.check,
            severity=Severity.WARNING,
            firing=ch.unknown_alerted,
            details={"unknown_since": ch.unknown_since, "message": ch.last.message if ch.last else ""},
        )

    def _flap_event(self, m: MachineHealth, ch: CheckHealth, now: float) -> Event:
        pct = round(ch.flap_pct, 1)
        if ch.flapping:
            summary = f"{m.id} is flapping on {ch.key.check} ({pct}% state change); not remediated while it flaps"
        else:
            summary = f"{m.id} stopped flapping on {ch.key.check} ({pct}% state change)"
        return Event(
            EventType.MACHINE_FLAPPING,
            m.service,
            summary,
            now,
            machine=m.id,
            check=ch.key.check,
            severity=Severity.WARNING,
            firing=ch.flapping,
            details={"flap_percent": pct, "hard_state": ch.hard.name},
        )

    def _machine_changed(self, svc: ServiceHealth, m: MachineHealth, now: float) -> list[Event]:
        new = m.compute()
        if new is m.condition:
            return []
        before = category(m)
        old, m.condition, m.since = m.condition, new, now
        svc.move(before, category(m))
        events: list[Event] = []
        if m.lifecycle is not Lifecycle.IN_SERVICE:
            # a machine on probation or in quarantine takes no traffic: its ups and downs are not news
            if new not in (Condition.FLAPPING, Condition.PENDING):
                m.reported = new
            return self._service_changed(svc, now)
        # Flapping and pending hide the ups and downs; announce only settled changes.
        if new not in (Condition.FLAPPING, Condition.PENDING) and new is not m.reported:
            if new is Condition.UP:
                events.append(
                    Event(
                        EventType.MACHINE_RECOVERED,
                        m.service,
                        f"{m.id} recovered",
                        now,
                        machine=m.id,
                        firing=False,
                        details={"from": m.reported.value, "to": new.value},
                    )
                )
            else:
                sev = Severity.CRITICAL if new is Condition.DOWN else Severity.WARNING
                events.append(
                    Event(
                        EventType.MACHINE_UNHEALTHY,
                        m.service,
                        f"{m.id} is {new.value}: {m.problem()}",
                        now,
                        machine=m.id,
                        severity=sev,
                        details={
                            "condition": new.value,
                            "from": m.reported.value,
                            "checks": {k: c.hard.name for k, c in m.checks.items()},
                        },
                    )
                )
            m.reported = new
        elif old is Condition.PENDING and new is Condition.UP:
            m.reported = new
        return events + self._service_changed(svc, now)

    def _service_changed(self, svc: ServiceHealth, now: float) -> list[Event]:
        state, reason = svc.compute()
        svc.reason = reason
        if state is not svc.state:
            svc.state, svc.since = state, now
        if not svc.try_settle(now) or state is svc.announced:
            # before the first full round (machines booting, checks without a result): no alarm about a
            # state nobody has observed yet
            return []
        old, svc.announced = svc.announced, state
        sev = {
            ServiceState.OPTIMAL: Severity.INFO,
            ServiceState.DEGRADED: Severity.WARNING,
            ServiceState.DOWN: Severity.CRITICAL,
        }[state]
        return [
            Event(
                EventType.SERVICE_STATE_CHANGED,
                svc.name,
                f"service {svc.name} is {state.value}: {reason}",
                now,
                severity=sev,
                firing=state is not ServiceState.OPTIMAL,
                details={"from": old.value, "to": state.value, "reason": reason, **svc.counts()},
            )
        ]
