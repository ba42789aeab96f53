"""What healerd needs from its state store: one small repository per concern, async, plain values in and out.

SQLite implements it (`healerd.store.sqlite`, the embedded default); PostgreSQL is to implement the same
interface (docs/cluster.md). Nothing here names a database type: rows come back as the values below, as
`Machine`/`CheckResult`, or as JSON-ready dicts, and JSON columns are decoded by the store.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from ..events import Event
from ..health import CheckKey
from ..machines import Machine
from ..results import CheckResult


class StoreError(Exception):
    """The state database cannot be used as it is; the message says what is wrong and how to fix it."""


# -- values ------------------------------------------------------------------------------------------------
class IncidentRecord(NamedTuple):
    """An incident as stored (the remediation engine's `Incident` without behaviour); `state` is its value."""

    id: str
    service: str
    machine: str
    state: str
    playbook: str
    opened_at: float
    updated_at: float
    resolved_at: float | None
    summary: str
    replacement: str | None
    error: str | None
    details: dict[str, Any]
    #: a human acknowledged it (on it: no more reminders): when, who, and what they said
    acked_at: float | None = None
    acked_by: str = ""
    ack_comment: str = ""


@dataclass(frozen=True)
class Failures:
    """Failed remediations of one machine: how many, and when the last one was (None if never)."""

    count: int
    last: float | None


class KnownGood(NamedTuple):
    """The known-good version of an image family, and the config's known_good it was seeded from."""

    known_good: str
    seeded: str


class VersionRecord(NamedTuple):
    """One version of an image family as promotion left it: its state (known_good, candidate, rejected,
    retired), why, who or which rollout put it there, when, and the evidence (the judge's figures)."""

    family: str
    version: str
    state: str
    reason: str
    promoted_by: str
    updated_at: float
    evidence: dict[str, Any]


class RolloutRecord(NamedTuple):
    """A rollout of an image version over a service: its stage, and in `data` its parameters, its machines,
    the judge's samples and verdict (everything a resume needs)."""

    id: str
    service: str
    image: str
    version: str
    previous: str  # the known-good version when it started
    stage: str
    active: bool
    paused: bool
    reason: str
    started_at: float
    updated_at: float
    ended_at: float | None
    data: dict[str, Any]


class OutboxItem(NamedTuple):
    """One event routed to one notifier, waiting to be grouped into a message."""

    notifier: str
    service: str
    event: dict[str, Any]
    created_at: float


class SentElsewhere(NamedTuple):
    """A message made outside the outbox under its own id (paged straight to a receiver while the store was
    unreachable): `state` is what became of it, `delivered` or `pending` (still to send) or `dead`."""

    id: str
    notifier: str
    service: str
    state: str
    attempts: int
    payload: Any
    last_status: int | None = None
    last_error: str | None = None


class PendingMessage(NamedTuple):
    """The oldest undelivered message of a notifier, with its decoded payload."""

    id: str
    attempts: int
    next_attempt_at: float
    payload: Any


@dataclass(frozen=True)
class Composed:
    """What a notifier made of a group of events: the message payload, and meta entries to save with it
    in the same transaction (Alertmanager's firing alerts)."""

    payload: Any
    meta: Mapping[str, str] = field(default_factory=dict)


#: builds a message from the waiting events of one (notifier, service), oldest first; runs inside the
#: transaction that claims them, so it must be quick and must not touch the store
Compose = Callable[[list[dict[str, Any]]], Composed]


# -- repositories ------------------------------------------------------------------------------------------
class MachineRepository(Protocol):
    async def save(self, machines: Sequence[Machine], provider: str, now: float) -> None: ...
    async def upsert(self, machine: Machine, provider: str, now: float) -> None: ...
    async def get(self, service: str, machine_id: str) -> Machine | None: ...
    async def find(self, machine_id: str) -> Machine | None: ...
    async def for_incident(self, incident: str) -> list[Machine]: ...
    async def load(self, service: str | None = None) -> list[Machine]: ...
    async def forget(self, service: str, keep: set[str]) -> None: ...


class ResultRepository(Protocol):
    def add(self, key: CheckKey, result: CheckResult, ts: float) -> None:
        """Buffer a result (the hot path); `StateStore.flush` writes it."""

    async def history(self) -> dict[CheckKey, list[tuple[float, CheckResult]]]: ...
    async def recent(self, key: CheckKey, limit: int = 30) -> list[dict[str, Any]]: ...


class EventRepository(Protocol):
    def add(self, event: Event) -> None:
        """Buffer an event (a bus subscriber); `StateStore.flush` writes it."""

    async def recent(
        self,
        service: str | None = None,
        machine: str | None = None,
        limit: int = 100,
        types: list[str] | None = None,
    ) -> list[dict[str, Any]]: ...

    async def prune(self) -> None: ...


class IncidentRepository(Protocol):
    async def unresolved(self) -> list[IncidentRecord]: ...
    async def save(self, incident: IncidentRecord) -> None: ...
    async def get(self, incident_id: str) -> IncidentRecord | None: ...
    async def recent(self, limit: int = 100, state: str | None = None) -> list[IncidentRecord]: ...
    # the step journal
    async def steps(self, incident: str) -> list[dict[str, Any]]: ...
    async def start_step(self, incident: str, idx: int, action: str, state: str, attempts: int, now: float) -> None: ...
    async def end_step(
        self, incident: str, idx: int, state: str, now: float, outputs: dict[str, Any], error: str | None
    ) -> None: ...
    async def mark_running_steps_interrupted(self, incident: str, now: float) -> None: ...
    # the remediation log (rate limits and retry back-off)
    async def log_launch(self, service: str, machine: str, now: float, incident: str | None) -> None: ...
    async def log_failure(self, service: str, machine: str, now: float, incident: str) -> None: ...
    async def log_repair(self, service: str, machine: str, now: float, incident: str) -> None: ...
    async def repairs_since(self, service: str, machine: str, since: float) -> int: ...
    async def launches_since(self, service: str, since: float, *, by_incidents: bool = False) -> int: ...
    async def failures(self, service: str, machine: str) -> Failures: ...


class ImageRepository(Protocol):
    async def get(self, family: str) -> KnownGood | None: ...
    async def save(self, family: str, known_good: str, seeded: str, now: float) -> None: ...
    async def versions(self, family: str | None = None) -> list[VersionRecord]: ...
    async def mark(self, record: VersionRecord) -> None: ...
    async def promote(self, family: str, record: VersionRecord, previous: str | None, seeded: str) -> None: ...


class RolloutRepository(Protocol):
    async def save(self, rollout: RolloutRecord) -> None: ...
    async def get(self, rollout_id: str) -> RolloutRecord | None: ...
    async def active(self) -> list[RolloutRecord]: ...
    async def latest(self, service: str) -> RolloutRecord | None: ...
    async def recent(self, service: str | None = None, limit: int = 20) -> list[RolloutRecord]: ...


class SilenceRepository(Protocol):
    async def add(
        self,
        sid: str,
        service: str | None,
        machine: str | None,
        starts_at: float,
        ends_at: float,
        comment: str,
        created_by: str,
    ) -> None: ...
    async def delete(self, sid: str) -> bool: ...
    async def active(self, now: float) -> list[dict[str, Any]]: ...


class MetaRepository(Protocol):
    async def get(self, key: str) -> str | None: ...
    async def set(self, key: str, value: str) -> None: ...


class OutboxRepository(Protocol):
    async def enqueue(self, items: Sequence[OutboxItem]) -> None: ...
    async def waiting(self) -> list[tuple[str, str, float]]:
        """(notifier, service, oldest created_at) of every group of items not yet in a message."""

    async def make_message(self, notifier: str, service: str, message_id: str, now: float, compose: Compose) -> int:
        """Claim the waiting items of (notifier, service) into one message, atomically; returns how many."""

    async def add_message(self, message_id: str, notifier: str, service: str, now: float, payload: Any) -> None: ...
    async def adopt(self, messages: Sequence[SentElsewhere], now: float) -> None:
        """Take messages made outside the outbox; one already there under the same id stays, unless it is
        pending and the new one says it was delivered."""

    async def next_pending(self, notifier: str) -> PendingMessage | None: ...
    async def record_attempt(
        self,
        message_id: str,
        state: str,
        attempts: int,
        next_attempt_at: float,
        now: float,
        status: int | None,
        error: str | None,
        delivered_at: float | None,
    ) -> None: ...
    async def pending_due(self, before: float) -> int: ...
    async def depth(self) -> dict[str, int]:
        """Per notifier: pending messages plus items waiting to be grouped."""

    async def messages(self, limit: int = 50) -> list[dict[str, Any]]: ...
    async def counts(self) -> dict[str, dict[str, int]]:
        """Per notifier, messages per state."""


class StateStore(Protocol):
    """The whole store: its lifecycle, its health, and the repositories."""

    @property
    def machines(self) -> MachineRepository: ...
    @property
    def results(self) -> ResultRepository: ...
    @property
    def events(self) -> EventRepository: ...
    @property
    def incidents(self) -> IncidentRepository: ...
    @property
    def images(self) -> ImageRepository: ...
    @property
    def rollouts(self) -> RolloutRepository: ...
    @property
    def silences(self) -> SilenceRepository: ...
    @property
    def meta(self) -> MetaRepository: ...
    @property
    def outbox(self) -> OutboxRepository: ...
    @property
    def fault(self) -> str | None:
        """The last failure while it lasts (disk full, read-only), None when writes go through."""

    @property
    def fault_since(self) -> float | None: ...

    async def open(self) -> None: ...
    async def open_readonly(self) -> bool: ...
    async def close(self) -> None: ...
    async def flush(self) -> None:
        """Write the buffered results and events in one transaction (kept for the next flush on failure)."""

    def on_fault(self, listener: Callable[[str | None], None]) -> None: ...
