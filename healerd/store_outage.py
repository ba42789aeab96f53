"""Paging on-call while the state store is unreachable: what to say, under ids every node derives alike, and
its delivery straight to the notifiers (in memory, bounded) until the outbox can take over again.

Every node pages, leader or not: receivers that drop a message id they already have keep one copy. An id is
made only of facts every node shared before the outage (the cluster's database and the last lease epoch
seen; alone, the store and the last event it took) and of the subject (the store, a machine and its open
incident), never of a node's clock: the same outage and the same machine give the same id on every node and
every retry.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from ._aio import wait_event
from .events import Event, EventType, Severity
from .notifiers import Delivery, Notifier
from .notifiers.alertmanager import AlertmanagerNotifier
from .store import STORE_FAULTS, BaseStore, SentElsewhere

log = structlog.get_logger("healerd.alerting")

PAGE_AFTER = 5.0  # seconds the store keeps failing before on-call is paged: one failed statement is no outage
MAX_PAGES = 256  # messages kept per outage, every notifier counted: memory stays bounded whatever the fleet
RETRY_FIRST = 1.0
RETRY_MAX = 60.0  # while the store is away this is the only way on-call hears: never wait long between tries
NAMED = 20  # machines named in the store's page


@dataclass(frozen=True)
class Basis:
    """What identifies an outage alike on every node: facts every node shared before it began."""

    store: str  # the cluster's database, or the store's file
    mark: str  # the last lease epoch every node saw; alone, the last event the store took


@dataclass(frozen=True)
class Down:
    """A machine seen down, with its open incident when one is known."""

    service: str
    machine: str
    summary: str
    incident: str | None = None


def stable_id(*parts: str) -> str:
    """The same parts give the same id on every node, every time (24 base32 characters)."""
    digest = hashlib.sha256("\x00".join(parts).encode()).digest()
    return base64.b32encode(digest[:15]).decode()


def page_id(basis: Basis, *subject: str) -> str:
    """An event's id: the outage's basis and the subject (the store, a machine)."""
    return stable_id(basis.store, basis.mark, *subject)


def unreachable_event(basis: Basis, down: Iterable[Down], reason: str, now: float) -> Event:
    machines = sorted(f"{d.service}/{d.machine}" for d in down)
    named = ", ".join(machines[:NAMED]) + (f" and {len(machines) - NAMED} more" if len(machines) > NAMED else "")
    return Event(
        EventType.STORE_DEGRADED,
        "",
        f"the state store {basis.store} is unreachable: healerd checks on but remediates nothing; "
        + (f"{len(machines)} machine(s) down: {named}" if machines else "no machine down"),
        now,
        severity=Severity.CRITICAL,
        details={"store": basis.store, "error": reason, "down": machines},
        id=page_id(basis, "store"),
    )


def machine_event(basis: Basis, d: Down, now: float) -> Event:
    return Event(
        EventType.MACHINE_UNHEALTHY,
        d.service,
        f"{d.summary} (the state store is unreachable: healerd does not remediate it until it is back)",
        now,
        machine=d.machine,
        incident=d.incident,
        severity=Severity.CRITICAL,
        details={"condition": "down", "store_unreachable": True},
        # an open incident names the machine's page by itself: the same whichever epoch a node saw last
        id=stable_id(basis.store, "incident", d.incident)
        if d.incident
        else page_id(basis, "machine", d.service, d.machine),
    )


def back_event(basis: Basis, now: float) -> Event:
    return Event(
        EventType.STORE_DEGRADED,
        "",
        f"the state store {basis.store} is reachable again: remediation resumes, and what happened meanwhile "
        "follows through the outbox",
        now,
        firing=False,
        details={"store": basis.store, "error": None},
        id=page_id(basis, "store", "back"),
    )


@dataclass
class Page:
    """One message to one notifier, and how its delivery goes."""

    notifier: str
    id: str
    service: str
    body: dict[str, Any]
    attempts: int = 0
    next_at: float = 0.0
    state: str = "pending"  # pending, delivered, dead (refused for good)
    last_status: int | None = None
    last_error: str | None = None


def recipients(event: Event, notifiers: Mapping[str, Notifier], routes: Mapping[str, tuple[str, ...]]) -> list[str]:
    """Who hears of it: the store's pages go to every notifier a service routes to, a machine's to its
    service's; each notifier's own filters (severity, event types) apply."""
    if event.service:
        names: Iterable[str] = routes.get(event.service, ())
    else:
        names = sorted({n for route in routes.values() for n in route})
    data = event.as_dict()
    return [n for n in dict.fromkeys(names) if n in notifiers and notifiers[n].wants(data)]


def compose(event: Event, notifiers: Mapping[str, Notifier], routes: Mapping[str, tuple[str, ...]]) -> list[Page]:
    """The messages that tell of `event`, one per notifier, each under the event's id and the notifier's name."""
    pages = []
    for name in recipients(event, notifiers, routes):
        n = notifiers[name]
        message_id = stable_id(event.id, name)  # one message per event and notifier
        body = n.build([event.as_dict()], message_id)
        if isinstance(n, AlertmanagerNotifier) and not body.get("alerts"):
            continue  # nothing Alertmanager models (a machine's page is in the store's alert)
        pages.append(Page(name, message_id, event.service, body))
    return pages


def retry_at(d: Delivery, attempts: int, max_attempts: int, now: float, jitter: float) -> float | None:
    """When to try a message again after answer `d` (None: never, the receiver refuses it for good)."""
    if d.permanent and attempts >= max_attempts:
        return None
    wait: float = min(RETRY_MAX, RETRY_FIRST * 2.0 ** (attempts - 1)) * jitter
    if d.retry_after is not None:
        wait = max(wait, min(d.retry_after, RETRY_MAX))
    return now + wait


class DownMachines:
    """The machines this node knows are down, kept from the events it follows (its own and the mirrored)."""

    def __init__(self) -> None:
        self.down: dict[tuple[str, str], Down] = {}

    def observe(self, e: Event) -> Down | None:
        """Follow an event; returns the machine when it is newly down (or its incident newly known)."""
        if not e.machine:
            return None
        key = (e.service, e.machine)
        old = self.down.get(key)
        if e.type is EventType.MACHINE_UNHEALTHY and e.firing and e.severity is Severity.CRITICAL:
            self.down[key] = Down(e.service, e.machine, e.summary, e.incident or (old.incident if old else None))
        elif e.type is EventType.INCIDENT_OPENED and old is not None:
            self.down[key] = Down(old.service, old.machine, old.summary, e.incident)
        elif e.type in _UP or (e.type is EventType.MACHINE_UNHEALTHY and e.severity is not Severity.CRITICAL):
            self.down.pop(key, None)
            return None
        else:
            return None
        new = self.down[key]
        return new if new != old else None


_UP = {
    EventType.MACHINE_RECOVERED,
    EventType.MACHINE_RETIRED,
    EventType.MACHINE_REPLACED,
    EventType.MACHINE_QUARANTINED,
    EventType.INCIDENT_RESOLVED,
}


@dataclass
class Outage:
    basis: Basis
    reason: str
    mark: str = ""  # the basis's mark as given: outages that paged are counted per mark
    paged: bool = False
    pages: dict[str, Page] = field(default_factory=dict)


class OutagePager:
    """Pages on-call straight to the notifiers while the store is unreachable; hands its messages over to the
    outbox when the store is back."""

    def __init__(
        self,
        notifiers: Callable[[], Mapping[str, Notifier]],
        routes: Callable[[], Mapping[str, tuple[str, ...]]],
        *,
        page_after: float = PAGE_AFTER,
    ) -> None:
        self.notifiers = notifiers
        self.routes = routes
        self.page_after = page_after
        self.machines = DownMachines()
        self.outage: Outage | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._full = False
        #: outages that paged, per basis mark: a second outage on the same basis (the lease did not move in
        #: between) gets ids of its own, alike on every node that lived through both
        self._paged: collections.Counter[str] = collections.Counter()

    def start(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def close(self) -> None:
        await self._cancel()
        self._session = None

    # -- what the store and the bus say ----------------------------------------------------------------------
    def observe(self, event: Event) -> None:
        down = self.machines.observe(event)
        if down is not None and self.outage is not None and self.outage.paged:
            self._add(machine_event(self.outage.basis, down, time.time()))
            self._wake.set()

    def failing(self, basis: Basis, reason: str) -> None:
        """The store stopped answering: page on-call if it still does not in `page_after` seconds."""
        if self.outage is not None or self._session is None:
            return
        before = self._paged[basis.mark]
        told = Basis(basis.store, f"{basis.mark}, outage {before + 1}") if before else basis
        self.outage = Outage(told, reason, basis.mark)
        self._tasks = [asyncio.create_task(self._run(self.outage), name="healerd-outage-pager")]

    async def back(self) -> list[Page]:
        """The store answers again: stop paging. Returns what the outbox takes over, each under its own id:
        the messages sent (recorded, not sent again), those not yet (sent through the outbox), and the
        store's return, once this node paged its outage."""
        outage, self.outage = self.outage, None
        await self._cancel()
        if outage is None or not outage.paged:
            return []
        self._paged[outage.mark] += 1
        log.warning(
            "the state store is back: paging through the outbox again",
            pages=len(outage.pages),
            delivered=sum(p.state == "delivered" for p in outage.pages.values()),
        )
        back = back_event(outage.basis, time.time())
        return [*outage.pages.values(), *compose(back, self.notifiers(), self.routes())]

    # -- paging -----------------------------------------------------------------------------------------------
    async def _run(self, outage: Outage) -> None:
        await asyncio.sleep(self.page_after)
        now = time.time()
        down = list(self.machines.down.values())
        log.error(
            "the state store is unreachable: paging on-call straight through the notifiers",
            store=outage.basis.store,
            machines_down=len(down),
            error=outage.reason,
        )
        outage.paged = True
        self._full = False
        self._add(unreachable_event(outage.basis, down, outage.reason, now))
        for d in sorted(down, key=lambda d: (d.service, d.machine)):
            self._add(machine_event(outage.basis, d, now))
        await self._deliver(outage)

    def _add(self, event: Event) -> None:
        assert self.outage is not None
        pages = self.outage.pages
        for page in compose(event, self.notifiers(), self.routes()):
            if page.id in pages:
                continue
            if len(pages) >= MAX_PAGES:
                if not self._full:
                    self._full = True
                    log.warning("too many pages in one outage; the store's page names the machines", kept=MAX_PAGES)
                return
            pages[page.id] = page

    async def _deliver(self, outage: Outage) -> None:
        """Send what is due, oldest first, each notifier at its own pace; sleep until the next is due."""
        last: dict[str, float] = {}
        while True:
            self._wake.clear()
            now = time.time()
            waiting = [p for p in outage.pages.values() if p.state == "pending"]
            for p in waiting:
                n = self.notifiers().get(p.notifier)
                if n is None or p.next_at > time.time():
                    continue
                gap = 1.0 / n.options.rate_limit if n.options.rate_limit > 0 else 0.0
                if time.monotonic() - last.get(p.notifier, -gap) < gap:
                    continue
                last[p.notifier] = time.monotonic()
                await self._send(n, p)
            now = time.time()
            due = [p.next_at - now for p in outage.pages.values() if p.state == "pending"]
            delay = max(0.2, min(due)) if due else None
            await wait_event(self._wake, delay)

    async def _send(self, n: Notifier, p: Page) -> None:
        assert self._session is not None
        d = await n.deliver(self._session, p.body, p.id)
        p.attempts += 1
        p.last_status, p.last_error = d.status, d.error or (None if d.ok else f"HTTP {d.status}: {d.body[:300]}")
        if d.ok:
            p.state = "delivered"
            log.info("paged on-call while the state store is unreachable", notifier=n.name, message=p.id)
            return
        at = retry_at(d, p.attempts, n.options.max_attempts, time.time(), random.uniform(0.8, 1.2))
        if at is None:
            p.state = "dead"
            log.error("the receiver refused a page", notifier=n.name, message=p.id, status=d.status)
        else:
            p.next_at = at
            log.debug("page not delivered; will retry", notifier=n.name, message=p.id, error=p.last_error)

    async def _cancel(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []


class StoreOutage:
    """An outage of the store as the alerting lives it: the pager while it lasts (its basis, what every node
    knew before it began), the hand-over of the pages to the outbox when it ends."""

    def __init__(
        self,
        store: BaseStore,
        pager: OutagePager,
        *,
        basis: Callable[[], Basis] | None,
        handed_over: Callable[[set[str]], None],
    ) -> None:
        self.store = store
        self.pager = pager
        #: what identifies an outage alike on every node (alone: the store and its last event)
        self.basis = basis or self._own_basis
        self.handed_over = handed_over
        self._last_event = ""  # the last event this node saw while the store worked
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, session: aiohttp.ClientSession) -> None:
        self._session = session
        self.pager.start(session)
        if self.store.fault is not None:  # a cluster node that starts while its database is away
            self.pager.failing(self.basis(), self.store.fault)

    async def close(self) -> None:
        await self.pager.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._session = None

    def observe(self, event: Event) -> None:
        if self.store.fault is None:
            self._last_event = event.id
        self.pager.observe(event)

    def on_fault(self, reason: str | None) -> None:
        """The store failed (`reason`) or works again (None)."""
        if reason is not None:
            self.pager.failing(self.basis(), reason)
        elif self._session is not None:
            self._tasks = [t for t in self._tasks if not t.done()]
            self._tasks.append(asyncio.create_task(self._hand_over(), name="healerd-outage-hand-over"))

    def _own_basis(self) -> Basis:
        return Basis(self.store.where, self._last_event or "no event yet")

    async def _hand_over(self) -> None:
        """The store is back: what was paged straight to the receivers enters the outbox under its own id
        (delivered: recorded, not sent again; not yet: sent from the outbox), with the store's return."""
        pages = await self.pager.back()
        if not pages:
            return
        backoff = 0.25
        while True:
            try:
                await self.store.outbox.adopt([_elsewhere(p) for p in pages], time.time())
                break
            except STORE_FAULTS:  # failing again: the store said so; these wait in memory meanwhile
                backoff = min(10.0, backoff * 2)
                await asyncio.sleep(backoff)
        self.handed_over({p.notifier for p in pages})


def _elsewhere(p: Page) -> SentElsewhere:
    return SentElsewhere(p.id, p.notifier, p.service, p.state, p.attempts, p.body, p.last_status, p.last_error)
