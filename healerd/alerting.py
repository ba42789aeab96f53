"""Alerting on-call through a durable outbox: route events to notifiers, group them, deliver at least
once with backoff, honour Retry-After, pace per notifier, and dead-letter what a receiver refuses.

An event is committed to the outbox (store) before any delivery attempt; pending messages survive a crash.
While the store is unreachable, every node pages on-call straight through the notifiers instead
(`store_outage`), and hands those messages over to the outbox when the store is back.
Per notifier, messages go out in order: a message being retried holds the ones after it, except that a
message the receiver refuses for good (a 4xx) ends in the dead letter after `max_attempts` and no longer
blocks.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
import structlog

from ._aio import wait_event
from .events import Event, new_id
from .notifiers import Notifier
from .notifiers.alertmanager import AlertmanagerNotifier, reposts_due
from .plugins import NOTIFIER_KINDS
from .receipts import Receipts
from .reminders import Reminders
from .store import STORE_FAULTS, Composed, OutboxItem
from .store_outage import Basis, OutagePager, StoreOutage

if TYPE_CHECKING:
    from .config import Config
    from .metrics import Metrics
    from .store import BaseStore

log = structlog.get_logger("healerd.alerting")
GROUP_TICK = 0.25  # the finest granularity of group_wait
FINISH_SENDING = 3.0  # a node that stops leading lets a delivery on its way finish for this long


class Alerting:
    def __init__(
        self,
        store: BaseStore,
        metrics: Metrics,
        *,
        base_url: str,
        may_deliver: Callable[[], bool] = lambda: True,
        outage_basis: Callable[[], Basis] | None = None,
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.base_url = base_url
        self.receipts = Receipts(store, metrics)  # what the receivers answered; which fail now
        self.notifiers: dict[str, Notifier] = {}
        self.routes: dict[str, tuple[str, ...]] = {}
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._session: aiohttp.ClientSession | None = None
        self._last_sent: dict[str, float] = {}
        self._unwritten: list[Event] = []  # routed, not yet committed to the outbox (kept across store failures)
        self._write_backoff = 0.25
        self._regroup = asyncio.Event()  # items entered the outbox, or group_wait may have changed
        self._leading: list[asyncio.Task[None]] = []  # grouping and re-posting, while this node delivers
        self._poll: float | None = None
        self._sending: set[str] = set()  # notifiers with a delivery on its way
        self.reminders = Reminders()  # open incidents not acknowledged, told again every renotify_interval
        #: in a cluster: True while this node leads (checked right before a message goes out)
        self.may_deliver = may_deliver
        pager = OutagePager(lambda: self.notifiers, lambda: self.routes)
        #: paging straight to the receivers while the store is unreachable, then handing over to the outbox
        self.outage = StoreOutage(store, pager, basis=outage_basis, handed_over=self._handed_over)
        store.on_fault(self.outage.on_fault)

    # -- configuration ----------------------------------------------------------------------------------
    def configure(self, config: Config) -> None:
        self.notifiers = build_notifiers(config, self.notifiers, self.base_url)
        self.routes = {s.name: s.notify for s in config.services.values()}
        self._regroup.set()
        if self._session is not None:
            self._start_workers()

    # -- lifecycle --------------------------------------------------------------------------------------
    async def start(self, lead: bool = True) -> None:
        """Route events into the outbox; with `lead` (alone, or the cluster's leader) also deliver it."""
        self._session = aiohttp.ClientSession(headers={"User-Agent": "healerd"})
        self._tasks = [asyncio.create_task(self._writer(), name="healerd-outbox-writer")]
        self.outage.start(self._session)
        if lead:
            await self.lead()

    async def lead(self, poll: float | None = None) -> None:
        """Group, re-post and deliver the outbox (the cluster's leader does; `poll`: look for items other
        nodes enqueued every so many seconds)."""
        self._poll = poll
        for n in self.notifiers.values():
            if isinstance(n, AlertmanagerNotifier):
                n.load_state(await self.store.meta.get(f"alertmanager:{n.name}"))
        self.reminders.seed(await self.store.incidents.unresolved(), time.time())
        self._leading = [
            asyncio.create_task(self._grouper(), name="healerd-outbox-grouper"),
            asyncio.create_task(self._every_second(), name="healerd-reposts-and-reminders"),
        ]
        self._start_workers()
        await self.update_depth()

    async def follow(self) -> None:
        """Stop delivering (another node leads): messages stay in the outbox for the new leader. A delivery
        on its way is let finish and be recorded (cut short, the new leader would send it again)."""
        for t in self._leading:
            t.cancel()
        sending = [t for name, t in self._workers.items() if name in self._sending]
        for t in self._workers.values():
            if t not in sending:
                t.cancel()
        if sending:
            await asyncio.wait(sending, timeout=FINISH_SENDING)
        for t in sending:
            t.cancel()
        await asyncio.gather(*self._leading, *self._workers.values(), return_exceptions=True)
        self._leading, self._workers = [], {}

    def _start_workers(self) -> None:
        if not self._leading:
            return
        for name in self.notifiers:
            if name not in self._workers or self._workers[name].done():
                self._wake[name] = asyncio.Event()
                self._workers[name] = asyncio.create_task(self._deliver_loop(name), name=f"healerd-notify-{name}")
        for name in list(self._workers):
            if name not in self.notifiers:
                self._workers.pop(name).cancel()

    async def stop(self, flush_for: float = 5.0) -> None:
        """Write what is queued, give pending deliveries `flush_for` seconds, then stop."""
        deadline = time.monotonic() + flush_for
        await self._drain_queue()
        if self._leading:  # a follower leaves the outbox to the leader
            with contextlib.suppress(Exception):
                await self._group_once(time.time(), force=True)
        while self._leading and time.monotonic() < deadline and await self._pending_due():  # noqa: ASYNC110 (polls the store)
            await asyncio.sleep(0.1)
        await self.outage.close()
        for t in [*self._tasks, *self._leading, *self._workers.values()]:
            t.cancel()
        await asyncio.gather(*self._tasks, *self._leading, *self._workers.values(), return_exceptions=True)
        self._tasks, self._leading, self._workers = [], [], {}
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _drain_queue(self) -> None:
        """Write the events still queued in memory to the outbox."""
        batch, self._unwritten = self._unwritten, []
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        if batch:
            await self._write(batch)

    async def _pending_due(self) -> int:
        return await self.store.outbox.pending_due(time.time() + 1)

    # -- routing: bus subscriber --------------------------------------------------------------------------
    def on_event(self, event: Event) -> None:
        if self.routes.get(event.service):
            self.reminders.observe(event.as_dict())
            self._queue.put_nowait(event)

    def observe(self, event: Event) -> None:
        """Bus subscriber for every event this node follows (its own and the mirrored): the machines down,
        paged while the store is unreachable."""
        self.outage.observe(event)

    def _handed_over(self, notifiers: set[str]) -> None:
        """The pages of an outage entered the outbox: deliver what no node delivered."""
        for name in notifiers:
            if name in self._wake:
                self._wake[name].set()
        self._regroup.set()

    async def _writer(self) -> None:
        """Commit routed events to the outbox. A store failure (disk full) keeps them in memory and retries
        with backoff: nothing is dropped, and this task never dies of it."""
        while True:
            if not self._unwritten:
                self._unwritten.append(await self._queue.get())
            while not self._queue.empty():
                self._unwritten.append(self._queue.get_nowait())
            try:
                await self._write(self._unwritten)
            except asyncio.CancelledError:
                raise
            except STORE_FAULTS:  # the store logged it once; try again, a little later each time
                self._write_backoff = min(10.0, self._write_backoff * 2)
                await asyncio.sleep(self._write_backoff)
                continue
            except Exception:
                log.exception("writing notifications to the outbox failed; will retry", events=len(self._unwritten))
                await asyncio.sleep(1.0)
                continue
            self._unwritten = []
            self._write_backoff = 0.25

    async def _write(self, batch: list[Event]) -> None:
        items = []
        for e in batch:
            data = e.as_dict()
            for name in self.routes.get(e.service, ()):
                n = self.notifiers.get(name)
                if n is not None and n.wants(data):
                    items.append(OutboxItem(name, e.service, data, e.timestamp))
        if items:
            await self.store.outbox.enqueue(items)
            self._regroup.set()

    # -- grouping -----------------------------------------------------------------------------------------
    async def _grouper(self) -> None:
        """Group waiting items into messages when their group_wait is over. It sleeps until then, or until
        items arrive: an idle daemon does not poll the store (the first pass takes what a previous run left)."""
        delay: float | None = 0.0
        while True:
            await wait_event(self._regroup, delay)
            self._regroup.clear()
            try:
                delay = await self._group_once(time.time())
                if self._poll is not None:
                    delay = self._poll if delay is None else min(delay, self._poll)
            except asyncio.CancelledError:
                raise
            except STORE_FAULTS:  # the store said so once; the items stay in the outbox, grouped next time
                delay = 1.0
            except Exception:  # keep going; the items stay in the outbox and are grouped next time
                log.exception("grouping notifications failed")
                delay = 1.0

    async def _group_once(self, now: float, force: bool = False) -> float | None:
        """Make the messages that are due; returns the seconds until the next group is due (None: none waits)."""
        made = set()
        next_due: float | None = None
        for notifier_name, service, first in await self.store.outbox.waiting():
            n = self.notifiers.get(notifier_name)
            if n is None:
                continue
            if not force and first > now - n.options.group_wait:
                due_in = max(GROUP_TICK, first + n.options.group_wait - now)
                next_due = due_in if next_due is None else min(next_due, due_in)
                continue
            await self._make_message(n, service, now)
            made.add(notifier_name)
        for name in made:
            self._wake[name].set()
        if made:
            await self.update_depth()
        return next_due

    async def _make_message(self, n: Notifier, service: str, now: float) -> None:
        """Turn the waiting items of (notifier, service) into one message, in one transaction (with the
        Alertmanager notifier's firing alerts, which building the message changed)."""
        message_id = new_id(now)

        def compose(events: list[dict[str, Any]]) -> Composed:
            body = n.build(events, message_id)
            if isinstance(n, AlertmanagerNotifier):
                return Composed(body, {f"alertmanager:{n.name}": n.state()})
            return Composed(body)

        await self.store.outbox.make_message(n.name, service, message_id, now, compose)

    async def _every_second(self) -> None:
        """Every second: Alertmanager's firing alerts reposted when due (so it does not resolve them by
        timeout), and the reminders due (an incident still open, not acknowledged) enter the outbox. A store
        failure said so once; each is tried again at its next turn."""
        last: dict[str, float] = {}
        while True:
            await asyncio.sleep(1.0)
            now = time.time()
            for name, body in reposts_due(self.notifiers.values(), last, now):
                with contextlib.suppress(*STORE_FAULTS):
                    await self.store.outbox.add_message(new_id(now), name, "", now, body)
                    self._wake[name].set()
            items = self.reminders.due(now, self.routes, self.notifiers)
            if items:
                with contextlib.suppress(*STORE_FAULTS):
                    await self.store.outbox.enqueue(items)
                    self._regroup.set()

    # -- delivery -----------------------------------------------------------------------------------------
    async def _deliver_loop(self, name: str) -> None:
        wake = self._wake[name]
        while True:
            try:
                wait = await self._deliver_next(name)
            except asyncio.CancelledError:
                raise
            except STORE_FAULTS:  # the store is failing (it said so once): delivery resumes when it works
                wait = 1.0
            except Exception:
                log.exception("notification delivery failed", notifier=name)
                wait = 1.0
            if wait > 0:
                wake.clear()
                await wait_event(wake, wait)

    async def _deliver_next(self, name: str) -> float:
        """Try the oldest pending message of the notifier; returns how long to wait before the next try."""
        n = self.notifiers.get(name)
        if n is None or self._session is None:
            return 1.0
        message = await self.store.outbox.next_pending(name)
        if message is None:
            return 5.0
        message_id, attempts, next_at, payload = message
        now = time.time()
        if next_at > now:
            return float(min(next_at - now, 5.0))
        if n.options.rate_limit > 0:
            gap = 1.0 / n.options.rate_limit - (time.monotonic() - self._last_sent.get(name, 0.0))
            if gap > 0:
                return float(gap)
        if not self.may_deliver():
            return 1.0  # a cluster node whose lease just went: the leader delivers it
        self._last_sent[name] = time.monotonic()
        self._sending.add(name)
        try:
            delivery = await n.deliver(self._session, payload, message_id)
            await self.receipts.record(n, message_id, attempts + 1, delivery)
            await self.update_depth()
        finally:
            self._sending.discard(name)
        return 0.0

    async def update_depth(self) -> None:
        depth = await self.store.outbox.depth()
        gauge = self.metrics.gauge("notification_queue_depth")
        for name in self.notifiers:
            gauge.labels(name).set(depth.get(name, 0))


def build_notifiers(config: Config, old: dict[str, Notifier], base_url: str) -> dict[str, Notifier]:
    """The configured notifiers; one whose kind and options did not change is kept as it is (`old`)."""
    notifiers: dict[str, Notifier] = {}
    for name, nc in config.notifiers.items():
        current = old.get(name)
        if current is not None and current.kind == nc.kind and current.options == nc.options:
            notifiers[name] = current
        else:
            cls = NOTIFIER_KINDS.get(nc.kind)
            assert cls is not None
            fresh = cls(name, nc.options, base_url=base_url)
            if isinstance(fresh, AlertmanagerNotifier) and isinstance(current, AlertmanagerNotifier):
                fresh.firing = current.firing  # alerts still firing must still end, whatever changed
            notifiers[name] = fresh
    return notifiers
