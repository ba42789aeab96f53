"""History for the status page and `GET /api/v1/history`: check results and service state counted in time
buckets, cheap on the hot path (a few increments per result) and bounded in the store.

- per machine and check: 5-minute buckets, kept 24 hours;
- per service and check (every machine's results together): 1-minute buckets, kept 7 days;
- per service (machine and check ''): seconds up and down (its state `down` or not), 1-minute buckets, 7 days.

The book keeps what was counted since it last handed rows to the store; the store adds them to what it holds
(so a restart, or several cluster nodes counting the same service, lose nothing and count nothing twice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .results import Status

MACHINE_WIDTH = 300
SERVICE_WIDTH = 60
MACHINE_KEEP = 24 * 3600.0
SERVICE_KEEP = 7 * 24 * 3600.0
#: seconds between writes of the open buckets (a crash loses at most this much history)
WRITE_EVERY = 15.0

HistoryKey = tuple[str, str, str, float]  # service, machine ('' for the service), check ('' for its state), start


@dataclass
class Counts:
    width: int
    runs: int = 0
    ok: int = 0
    warning: int = 0
    critical: int = 0
    unknown: int = 0
    dur_sum: float = 0.0
    up_s: float = 0.0
    down_s: float = 0.0

    def add(self, status: Status, duration: float) -> None:
        self.runs += 1
        self.dur_sum += duration
        if status is Status.OK:
            self.ok += 1
        elif status is Status.WARNING:
            self.warning += 1
        elif status is Status.CRITICAL:
            self.critical += 1
        else:
            self.unknown += 1


HistoryRow = tuple[str, str, str, float, int, int, int, int, int, int, float, float, float]


def bucket_of(ts: float, width: int) -> float:
    return math.floor(ts / width) * width


@dataclass
class HistoryBook:
    """What was counted since the last write, by bucket."""

    pending: dict[HistoryKey, Counts] = field(default_factory=dict)
    #: per service: its state (down or not) and since when it was counted
    _state: dict[str, tuple[bool, float]] = field(default_factory=dict)
    _written_at: float = 0.0

    def result(self, service: str, machine: str, check: str, status: Status, duration: float, ts: float) -> None:
        """One result of a machine's check (a service-level check has machine '': it counts as `service:<check>`)."""
        series = (
            ((machine, check, MACHINE_WIDTH), ("", check, SERVICE_WIDTH))
            if machine
            else (("", f"service:{check}", SERVICE_WIDTH),)
        )
        for mid, check, width in series:
            key = (service, mid, check, bucket_of(ts, width))
            counts = self.pending.get(key)
            if counts is None:
                counts = self.pending[key] = Counts(width)
            counts.add(status, duration)

    def service_state(self, service: str, down: bool, now: float) -> None:
        """The service is (still, or now) down or not: the time since the last call is counted to the old state."""
        before = self._state.get(service)
        if before is not None:
            self._count(service, before[0], before[1], now)
        self._state[service] = (down, now)

    def _count(self, service: str, down: bool, start: float, end: float) -> None:
        t = start
        while t < end:
            b = bucket_of(t, SERVICE_WIDTH)
            upto = min(end, b + SERVICE_WIDTH)
            key = (service, "", "", b)
            counts = self.pending.get(key)
            if counts is None:
                counts = self.pending[key] = Counts(SERVICE_WIDTH)
            if down:
                counts.down_s += upto - t
            else:
                counts.up_s += upto - t
            t = upto

    def take(self, now: float, states: dict[str, bool] | None = None, force: bool = False) -> list[HistoryRow]:
        """Rows to add to the store: every WRITE_EVERY seconds (or when forced), then the book starts afresh.
        `states`: the services whose state this node counts (down or not); the others are no longer counted."""
        if not force and now - self._written_at < WRITE_EVERY:
            return []
        self._written_at = now
        states = states or {}
        for service in list(self._state):
            if service not in states:
                del self._state[service]
        for service, down in states.items():
            if service in self._state:
                self.service_state(service, self._state[service][0], now)
            self._state[service] = (down, now)
        rows = [
            (*key, c.width, c.runs, c.ok, c.warning, c.critical, c.unknown, c.dur_sum, c.up_s, c.down_s)
            for key, c in self.pending.items()
        ]
        self.pending = {}
        return rows

    def put_back(self, rows: list[HistoryRow]) -> None:
        """A write failed: these go with the next one."""
        for row in rows:
            key: HistoryKey = (row[0], row[1], row[2], row[3])
            c = self.pending.get(key)
            if c is None:
                c = self.pending[key] = Counts(row[4])
            c.runs += row[5]
            c.ok += row[6]
            c.warning += row[7]
            c.critical += row[8]
            c.unknown += row[9]
            c.dur_sum += row[10]
            c.up_s += row[11]
            c.down_s += row[12]
