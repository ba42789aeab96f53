"""Zones, pure: how a service's zones stand (the rule Kubernetes' node lifecycle controller uses, on what
healerd sees), and where its next machine goes.

A zone is *down* when at least `threshold` of its machines in service are down together (and at least two:
one machine alone failing is a machine's failure, not its zone's). When some zones are down and at least one
is healthy, the down zones are lost: their share is launched again elsewhere. When every zone is unhealthy at
once, the monitor itself is the likely fault, and nothing is remediated.
"""

from __future__ import annotations

import enum
import math
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass

#: the fewest machines down together that can make a zone down
MIN_DOWN = 2


class ZoneState(enum.StrEnum):
    HEALTHY = "healthy"
    FAILING = "failing"  # enough of it fails to be down, not all of it confirmed down yet (one check apart)
    DOWN = "down"


@dataclass(frozen=True, slots=True)
class ZoneCount:
    """A zone's machines in service: how many, how many are down, how many fail (down, or failing now)."""

    machines: int
    down: int = 0
    troubled: int = 0


def needed(machines: int, threshold: float) -> int:
    """How many of a zone's `machines` must be down for the zone to be down."""
    return max(MIN_DOWN, math.ceil(threshold * machines - 1e-9))


def zone_state(count: ZoneCount, threshold: float) -> ZoneState:
    bound = needed(count.machines, threshold)
    if count.machines < MIN_DOWN:
        return ZoneState.HEALTHY
    if count.down >= bound:
        return ZoneState.DOWN
    if max(count.troubled, count.down) >= bound:
        return ZoneState.FAILING
    return ZoneState.HEALTHY


@dataclass(frozen=True)
class ZoneVerdict:
    """A service's zones now. `suspect`: every zone is unhealthy at once (the monitor is at fault, nothing is
    remediated); `lost`: zones down while another is healthy; `failing`: zones to wait for before deciding."""

    states: Mapping[str, ZoneState]
    suspect: bool = False
    lost: tuple[str, ...] = ()
    failing: tuple[str, ...] = ()

    @property
    def unhealthy(self) -> frozenset[str]:
        return frozenset(z for z, s in self.states.items() if s is not ZoneState.HEALTHY)

    def detail(self, counts: Mapping[str, ZoneCount]) -> str:
        parts = [f"{z}: {counts[z].down} of {counts[z].machines} down" for z in sorted(self.states) if z in counts]
        return ", ".join(parts)


NO_ZONES = ZoneVerdict({})


def judge(counts: Mapping[str, ZoneCount], threshold: float) -> ZoneVerdict:
    """The verdict on a service's zones (zone -> its machines in service). Fewer than two zones: no verdict
    (the service's own max_unhealthy guards it)."""
    if len(counts) < 2:
        return NO_ZONES
    states = {z: zone_state(c, threshold) for z, c in counts.items()}
    healthy = [z for z, s in states.items() if s is ZoneState.HEALTHY]
    if not healthy:
        return ZoneVerdict(states, suspect=True)
    lost = tuple(sorted(z for z, s in states.items() if s is ZoneState.DOWN))
    failing = tuple(sorted(z for z, s in states.items() if s is ZoneState.FAILING))
    return ZoneVerdict(states, lost=lost, failing=failing)


def spread(zones: Sequence[str], placed: Iterable[str]) -> dict[str, int]:
    """Machines per zone, for the provider's `zones` (in their order; a zone with none counts 0)."""
    counts = Counter(z for z in placed if z in zones)
    return {z: counts.get(z, 0) for z in zones}


def next_zone(zones: Sequence[str], placed: Iterable[str], avoid: Collection[str] = ()) -> str:
    """Where the next machine goes: the zone with the fewest machines (the first in order among equals),
    never one in `avoid` (lost, down); "" when the provider has no zones or every zone is to be avoided."""
    counts = spread(zones, placed)
    open_zones = [z for z in zones if z not in avoid]
    if not open_zones:
        return ""
    return min(open_zones, key=lambda z: (counts[z], zones.index(z)))


def uneven(zones: Sequence[str], placed: Iterable[str], avoid: Collection[str] = ()) -> bool:
    """True when the machines are spread unevenly enough that moving one would help (two or more apart)."""
    counts = [n for z, n in spread(zones, placed).items() if z not in avoid]
    return len(counts) >= 2 and max(counts) - min(counts) >= 2
