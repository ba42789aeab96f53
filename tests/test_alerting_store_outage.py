"""Paging while the state store is unreachable (healerd.store_outage): the ids every node derives alike, who
is paged about what, and the delivery straight to a receiver on loopback, retried, then handed to the outbox."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web

from healerd.events import Event, EventType, Severity
from healerd.notifiers import Delivery
from healerd.notifiers.alertmanager import AlertmanagerNotifier
from healerd.plugins import NOTIFIER_KINDS
from healerd.store import BaseStore, SentElsewhere
from healerd.store_outage import (
    RETRY_MAX,
    Basis,
    Down,
    DownMachines,
    OutagePager,
    back_event,
    compose,
    machine_event,
    retry_at,
    unreachable_event,
)

T0 = 1_760_000_000.0
BASIS = Basis("healerd_prod", "epoch 7")


def notifier(kind: str, name: str, **options: Any) -> Any:
    cls = NOTIFIER_KINDS.get(kind)
    assert cls is not None
    return cls(name, cls.Config.model_validate({"url": "http://127.0.0.1:1/", **options}), base_url="")


def unhealthy(machine: str, service: str = "web", severity: Severity = Severity.CRITICAL, **kw: Any) -> Event:
    return Event(
        EventType.MACHINE_UNHEALTHY, service, f"{machine} is down: health CRITICAL", T0, machine=machine,
        severity=severity, **kw,
    )  # fmt: skip


def test_every_node_derives_the_same_ids_whatever_its_clock() -> None:
    """Two nodes paging the same outage at different times, as on a retry: the same ids, the same messages."""
    down = [Down("web", "web-1", "web-1 is down")]
    notifiers = {"hook": notifier("webhook", "hook")}
    routes = {"web": ("hook",)}
    node_a = compose(unreachable_event(BASIS, down, "connection refused", T0), notifiers, routes)
    node_b = compose(unreachable_event(BASIS, down, "server closed the connection", T0 + 93.4), notifiers, routes)
    assert [p.id for p in node_a] == [p.id for p in node_b]
    assert node_a[0].body["id"] == node_a[0].id  # the receiver dedupes by the body's id
    assert machine_event(BASIS, down[0], T0).id == machine_event(BASIS, down[0], T0 + 60).id


def test_ids_tell_outages_machines_and_incidents_apart() -> None:
    web1 = Down("web", "web-1", "web-1 is down")
    later = Basis("healerd_prod", "epoch 8")  # another outage: the lease moved on in between
    assert unreachable_event(BASIS, [], "x", T0).id != unreachable_event(later, [], "x", T0).id
    assert machine_event(BASIS, web1, T0).id != machine_event(later, web1, T0).id
    assert machine_event(BASIS, web1, T0).id != machine_event(BASIS, Down("web", "web-2", "…"), T0).id
    assert machine_event(BASIS, web1, T0).id != machine_event(BASIS, Down("api", "web-1", "…"), T0).id
    # an open incident names the page: the same whichever epoch a node saw last
    with_incident = Down("web", "web-1", "web-1 is down", incident="01INCIDENT")
    assert machine_event(BASIS, with_incident, T0).id == machine_event(later, with_incident, T0).id
    assert back_event(BASIS, T0).id not in {unreachable_event(BASIS, [], "x", T0).id}


def test_the_store_page_goes_to_every_routed_notifier_and_names_the_machines_down() -> None:
    notifiers = {
        "web-hook": notifier("webhook", "web-hook"),
        "db-hook": notifier("webhook", "db-hook"),
        "audit": notifier("webhook", "audit", events=["incident.opened"]),  # its own filter still applies
        "unused": notifier("webhook", "unused"),  # no service routes to it
    }
    routes = {"web": ("web-hook", "audit"), "db": ("db-hook",)}
    down = [Down("web", "web-1", "web-1 is down"), Down("db", "db-3", "db-3 is down")]
    pages = compose(unreachable_event(BASIS, down, "connection refused", T0), notifiers, routes)
    assert sorted(p.notifier for p in pages) == ["db-hook", "web-hook"]
    body = pages[0].body
    assert body["type"] == "store.degraded" and body["status"] == "firing" and body["severity"] == "critical"
    assert "healerd_prod is unreachable" in body["summary"]
    assert "db/db-3" in body["summary"] and "web/web-1" in body["summary"]
    assert len({p.id for p in pages}) == 2  # one message per receiver
    machine = compose(machine_event(BASIS, down[0], T0), notifiers, routes)
    assert [p.notifier for p in machine] == ["web-hook"]
    assert machine[0].body["machine"] == "web-1" and machine[0].body["details"]["store_unreachable"] is True


def test_alertmanager_gets_one_alert_for_the_store_and_its_end() -> None:
    am = notifier("alertmanager", "am")
    assert isinstance(am, AlertmanagerNotifier)
    notifiers, routes = {"am": am}, {"web": ("am",)}
    down = [Down("web", "web-1", "web-1 is down")]
    [page] = compose(unreachable_event(BASIS, down, "x", T0), notifiers, routes)
    [alert] = page.body["alerts"]
    assert alert["labels"]["alertname"] == "HealerdStoreUnreachable" and "endsAt" not in alert
    assert "web/web-1" in alert["annotations"]["summary"]
    assert compose(machine_event(BASIS, down[0], T0), notifiers, routes) == []  # told in the store's alert
    [end] = compose(back_event(BASIS, T0 + 60), notifiers, routes)
    assert [a["labels"]["alertname"] for a in end.body["alerts"]] == ["HealerdStoreUnreachable"]
    assert "endsAt" in end.body["alerts"][0]


def test_the_machines_down_follow_the_events() -> None:
    book = DownMachines()
    assert book.observe(unhealthy("web-1")) == Down("web", "web-1", "web-1 is down: health CRITICAL")
    assert book.observe(unhealthy("web-1")) is None  # already known: not paged twice
    assert book.observe(unhealthy("web-2", severity=Severity.WARNING)) is None  # impaired is not down
    opened = Event(EventType.INCIDENT_OPENED, "web", "incident I1 opened", T0, machine="web-1", incident="I1")
    assert book.observe(opened) == Down("web", "web-1", "web-1 is down: health CRITICAL", incident="I1")
    book.observe(Event(EventType.MACHINE_RECOVERED, "web", "web-1 recovered", T0, machine="web-1", firing=False))
    assert book.down == {}


def test_retries_back_off_and_a_refusal_ends_after_max_attempts() -> None:
    assert retry_at(Delivery(503), 1, 3, T0, 1.0) == T0 + 1
    assert retry_at(Delivery(None, error="refused"), 3, 3, T0, 1.0) == T0 + 4  # a network error is never final
    assert retry_at(Delivery(503), 30, 3, T0, 1.0) == T0 + RETRY_MAX
    assert retry_at(Delivery(429, retry_after=20.0), 1, 3, T0, 1.0) == T0 + 20
    assert retry_at(Delivery(400), 2, 3, T0, 1.0) == T0 + 2
    assert retry_at(Delivery(400), 3, 3, T0, 1.0) is None


async def test_a_page_refused_at_first_is_retried_until_delivered_then_handed_to_the_outbox(
    aiohttp_server_factory: Any,
) -> None:
    hits: list[tuple[int, dict[str, Any]]] = []

    async def handle(request: web.Request) -> web.Response:
        status = 503 if len(hits) < 2 else 200  # the receiver is down for the first two tries
        hits.append((status, json.loads(await request.read())))
        return web.Response(status=status)

    app = web.Application()
    app.router.add_post("/", handle)
    url = await aiohttp_server_factory(app)
    notifiers, routes = {"hook": notifier("webhook", "hook", url=url + "/")}, {"web": ("hook",)}
    pager = OutagePager(lambda: notifiers, lambda: routes, page_after=1.0)
    async with aiohttp.ClientSession() as session:
        pager.start(session)
        pager.observe(unhealthy("web-1"))  # down before the store went away
        pager.failing(BASIS, "connection refused")
        await asyncio.sleep(0.5)
        assert hits == [], "paged before the store had been failing for page_after"
        for _ in range(100):
            if sum(s == 200 for s, _ in hits) >= 2:
                break
            await asyncio.sleep(0.1)
        pager.observe(unhealthy("web-2"))  # down during the outage: paged at once
        for _ in range(50):
            if any(b.get("machine") == "web-2" for _, b in hits):
                break
            await asyncio.sleep(0.1)
        handed = await pager.back()
        await pager.close()
    delivered = {b["id"] for s, b in hits if s == 200}
    assert {b["type"] for s, b in hits if s == 200} == {"store.degraded", "machine.unhealthy"}
    assert {b.get("machine") for s, b in hits if s == 200} == {None, "web-1", "web-2"}
    assert len(delivered) == 3 and sum(s == 200 for s, _ in hits) == 3, "a page was delivered twice"
    states = {p.id: p.state for p in handed}
    assert {i for i, s in states.items() if s == "delivered"} == delivered  # recorded, not sent again
    [back] = [p for p in handed if p.state == "pending"]  # the store's return, sent through the outbox
    assert back.body["status"] == "resolved" and back.body["type"] == "store.degraded"


async def test_the_outbox_keeps_each_page_once_and_sends_only_what_no_node_delivered(store: BaseStore) -> None:
    def page(message_id: str, state: str) -> SentElsewhere:
        return SentElsewhere(message_id, "hook", "web", state, 1 if state == "delivered" else 0, {"id": message_id})

    # node a delivered P1 and not P2; node b delivered P2 and not P1; both hand over the store's return R
    await store.outbox.adopt([page("P1", "delivered"), page("P2", "pending"), page("R", "pending")], T0)
    await store.outbox.adopt([page("P1", "pending"), page("P2", "delivered"), page("R", "pending")], T0 + 1)
    states = {m["id"]: m["state"] for m in await store.outbox.messages()}
    assert states == {"P1": "delivered", "P2": "delivered", "R": "pending"}
    pending = await store.outbox.next_pending("hook")
    assert pending is not None and pending.id == "R" and pending.payload == {"id": "R"}


async def test_a_second_outage_on_the_same_basis_is_paged_under_ids_of_its_own(aiohttp_server_factory: Any) -> None:
    seen: list[dict[str, Any]] = []

    async def handle(request: web.Request) -> web.Response:
        seen.append(json.loads(await request.read()))
        return web.Response(status=200)

    app = web.Application()
    app.router.add_post("/", handle)
    url = await aiohttp_server_factory(app)
    notifiers, routes = {"hook": notifier("webhook", "hook", url=url + "/")}, {"web": ("hook",)}
    pagers = [OutagePager(lambda: notifiers, lambda: routes, page_after=0.2) for _ in range(2)]  # two nodes
    ids: list[set[str]] = []
    async with aiohttp.ClientSession() as session:
        for pager in pagers:
            pager.start(session)
        for _ in range(2):  # two outages, the lease's epoch the same in both
            before = len(seen)
            for pager in pagers:
                pager.failing(BASIS, "connection refused")
            for _ in range(100):
                if len(seen) - before >= 2:
                    break
                await asyncio.sleep(0.05)
            ids.append({b["id"] for b in seen[before:]})
            handed = [await pager.back() for pager in pagers]
            assert handed[0] and {p.id for p in handed[0]} == {p.id for p in handed[1]}, "nodes disagree"
        for pager in pagers:
            await pager.close()
    assert all(len(i) == 1 for i in ids), f"the nodes paged one outage under different ids: {ids}"
    assert ids[0] != ids[1], "the second outage reused the first one's id: a receiver that dedupes drops it"
