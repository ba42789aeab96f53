"""The remediation safety decision, pure: may healerd act on this machine now, and if not, why.

Healerd must never make an outage worse; every gate has a safe default and names itself when it holds.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from ..health import Condition, MachineHealth
from ..modes import Mode
from ..results import Status


class Reason(enum.StrEnum):
    PAUSED = "paused"
    SILENCED = "silenced"
    OBSERVE = "observe"
    FLAPPING = "flapping"
    MAX_UNHEALTHY = "max_unhealthy"
    STORM_COOLDOWN = "storm_cooldown"
    MAX_CONCURRENT = "max_concurrent"
    MAX_PER_HOUR = "max_per_hour"
    RETRY_LIMIT = "retry_limit"
    BACKOFF = "backoff"
    DRY_RUN = "dry_run"
    UNCONFIRMED = "unconfirmed"
    DEPENDENCY_DOWN = "dependency_down"
    MONITOR_SUSPECT = "monitor_suspect"


#: what an operator can do about each gate ({service} is filled in): the status, the API, the incident's timeline
#: and every notifier say it next to the gate's figures
WHAT_TO_DO: dict[Reason, str] = {
    Reason.PAUSED: "resume remediation: healerd mode resume",
    Reason.SILENCED: "wait for the silence to end, or end it: healerd silence list, then healerd silence rm ID",
    Reason.OBSERVE: "let healerd act: healerd mode auto --service {service}",
    Reason.FLAPPING: "find why the machine keeps changing state; healerd replaces it once it stays down",
    Reason.MAX_UNHEALTHY: "check the monitoring path first (network, checks); if the machines really are down, "
    "replace them by hand or raise max_unhealthy; healerd acts again once no more than max_unhealthy fail",
    Reason.STORM_COOLDOWN: "wait for the cooldown to end, or end it now: healerd storm clear {service}",
    Reason.MAX_CONCURRENT: "nothing: the next remediation starts when the running one ends",
    Reason.MAX_PER_HOUR: "find why so many machines were replaced (a bad image, a dependency); raise "
    "remediation.max_per_hour only if the replacements were right",
    Reason.RETRY_LIMIT: "a human decides: healerd incidents ID shows the failed attempts; fix the cause, then "
    "healerd incidents ID --resolve",
    Reason.BACKOFF: "nothing: healerd tries again by itself when the backoff ends",
    Reason.DRY_RUN: "let healerd act: healerd mode auto --service {service}",
    Reason.UNCONFIRMED: "check the network between the other healerd nodes and the machine: they see it up",
    Reason.DEPENDENCY_DOWN: "bring back the service it depends on (healerd status says why it is down)",
    Reason.MONITOR_SUSPECT: "check healerd's own network and checks first: every zone of {service} fails at once, "
    "which a real outage rarely does; healerd acts again once one zone is healthy",
}


def what_to_do(reason: Reason | str, service: str) -> str:
    """What an operator can do about a gate that holds, in words they can paste."""
    try:
        return WHAT_TO_DO[Reason(reason)].format(service=service)
    except ValueError:  # a hold that is not a gate (alert only, for a service healerd does not replace)
        return ""


class Confirmation(Protocol):
    """What the vantage points said (a cluster's confirmer): enough of them see the machine down, or not."""

    @property
    def confirmed(self) -> bool: ...
    @property
    def detail(self) -> str: ...


Confirm = Callable[[str, str, float], Awaitable[Confirmation]]


@dataclass(frozen=True)
class GateInput:
    now: float
    mode: Mode
    paused: bool = False
    silenced: bool = False
    flapping: bool = False
    #: the services this one depends on that are down now, with why ("db: 0 serving machine(s) …")
    dependencies_down: tuple[str, ...] = ()
    #: every zone of the service is unhealthy at once: the zones' figures ("a: 2 of 2 down, b: …")
    monitor_suspect: str = ""
    #: the machine's zone fails together and its loss is not confirmed (yet): why
    zone_unconfirmed: str = ""
    unhealthy: int = 0  # in-service machines hard down now
    max_unhealthy: int = 1
    storm_until: float = 0.0  # the short-circuit tripped recently: wait for statuses to settle
    running: int = 0  # remediations in progress for the service
    max_concurrent: int = 1
    launches_last_hour: int = 0
    max_per_hour: int = 6
    failures: int = 0  # failed remediation attempts on this machine
    last_failure: float = 0.0
    backoff: float = 60.0
    max_retries: int = 3


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: Reason | None = None
    detail: str = ""
    retry_at: float | None = None  # when the gate may open by itself

    @classmethod
    def go(cls) -> Decision:
        return cls(True)


def decide(g: GateInput) -> Decision:
    """The first gate that holds wins; `dry-run` comes last so it shows exactly what would have run."""
    if g.paused:
        return Decision(False, Reason.PAUSED, 'remediation is paused (POST /api/v1/mode {"paused": false})')
    if g.silenced:
        return Decision(False, Reason.SILENCED, "a silence (maintenance window) covers this machine")
    if g.mode is Mode.OBSERVE:
        return Decision(False, Reason.OBSERVE, "mode is observe: classify and alert only")
    if g.flapping:
        return Decision(False, Reason.FLAPPING, "the machine is flapping: reported, not replaced")
    if g.dependencies_down:
        return Decision(
            False,
            Reason.DEPENDENCY_DOWN,
            f"a service it depends on is down ({'; '.join(g.dependencies_down)}): its machines are likely fine, "
            "nothing is replaced until the dependency is back",
        )
    if g.monitor_suspect:
        return Decision(
            False,
            Reason.MONITOR_SUSPECT,
            f"every zone is unhealthy at once ({g.monitor_suspect}): the monitor or its network is more likely at "
            "fault than every datacenter; nothing is remediated",
        )
    if g.zone_unconfirmed:
        return Decision(False, Reason.UNCONFIRMED, g.zone_unconfirmed)
    if g.unhealthy > g.max_unhealthy:
        return Decision(
            False,
            Reason.MAX_UNHEALTHY,
            f"{g.unhealthy} machines unhealthy at once, more than max_unhealthy ({g.max_unhealthy}): "
            "the monitor or its network is more likely at fault; nothing is remediated",
        )
    if g.now < g.storm_until:
        return Decision(
            False,
            Reason.STORM_COOLDOWN,
            f"storm cooldown after a max_unhealthy short-circuit, {g.storm_until - g.now:.0f}s left",
            g.storm_until,
        )
    if g.running >= g.max_concurrent:
        return Decision(
            False,
            Reason.MAX_CONCURRENT,
            f"{g.running} remediation(s) already running (max_concurrent {g.max_concurrent})",
        )
    if g.launches_last_hour >= g.max_per_hour:
        return Decision(
            False,
            Reason.MAX_PER_HOUR,
            f"{g.launches_last_hour} replacements in the last hour (max_per_hour {g.max_per_hour})",
        )
    if g.failures >= g.max_retries > 0 or (g.max_retries == 0 and g.failures > 0):
        return Decision(
            False,
            Reason.RETRY_LIMIT,
            f"{g.failures} failed attempt(s) on this machine (max_retries {g.max_retries}): a human decides",
        )
    if g.failures:
        wait = g.backoff * 2 ** (g.failures - 1)
        if g.now < g.last_failure + wait:
            return Decision(
                False,
                Reason.BACKOFF,
                f"backing off {wait:.0f}s after {g.failures} failed attempt(s)",
                g.last_failure + wait,
            )
    if g.mode is Mode.DRY_RUN:
        return Decision(False, Reason.DRY_RUN, "mode is dry-run: the playbook is logged, not run")
    return Decision.go()


def is_troubled(mh: MachineHealth) -> bool:
    """Down, or failing now (even unconfirmed: machines breaking together are confirmed one check apart)."""
    return mh.condition is Condition.DOWN or any(
        c.bad_streak > 0 and c.last is not None and c.last.status is Status.CRITICAL for c in mh.checks.values()
    )


def troubled(incident_machines: Iterable[str], in_service: Iterable[MachineHealth]) -> int:
    """Machines of a service in trouble now, for the max_unhealthy short-circuit: those in service that are
    down or failing, plus the machines of its incidents still open (already out of rotation, still part of the
    same storm)."""
    ids = set(incident_machines)
    ids.update(mh.id for mh in in_service if is_troubled(mh))
    return len(ids)
