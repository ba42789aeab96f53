"""On-call is paged while the cluster's database is unreachable, and nothing is lost or sent twice once it is back.

Three real nodes on the throw-away PostgreSQL server, the webhook receiver on loopback (each node tags its
requests with its name, so what each one sent can be told apart). The server is stopped and a machine breaks:
every node pages that the store is unreachable, the node that checks the machine pages it down, each message
under an id every node derives alike; checks go on, nothing is remediated. The server comes back: every event
of the outage goes out through the outbox, what was paged is not sent again, and one "store is back" follows.
"""

from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Any

import pytest
from pg import PgServer

from .cluster import wait_delivered
from .fleet import kill_demos, launched_ids, set_fault
from .helpers import wait_until
from .test_alerting import Hit, Receiver
from .test_cluster import demo_cluster, incidents, wait_fleet

pytestmark = pytest.mark.e2e

NODES = "abc"
FIRST_PAGE_WITHIN = 30.0  # seconds from the database's stop to the first page at the receiver
OUTAGE = 25.0


def sender(hit: Hit) -> str:
    return hit.headers.get("X-Healerd-Node", "?")


def tag(name: str) -> Any:
    def change(cfg: dict[str, Any]) -> None:
        cfg["notifiers"]["hook"]["headers"] = {"X-Healerd-Node": name}

    return change


def paged_directly(hit: Hit) -> bool:
    """A page a node sent straight to the receiver while it could not reach the store (not from the outbox)."""
    body = hit.body
    return (body.get("type") == "store.degraded" and body.get("status") == "firing") or bool(
        body.get("details", {}).get("store_unreachable")
    )


def store_pages(hits: list[Hit], status: str) -> list[Hit]:
    return [h for h in hits if h.body.get("type") == "store.degraded" and h.body.get("status") == status]


def test_every_node_pages_on_call_while_the_database_is_away_and_the_outbox_takes_over_once_it_is_back(
    pg: PgServer, tmp_path: Path, receiver: Receiver
) -> None:
    rig = demo_cluster(tmp_path, pg, receiver)
    try:
        for name in NODES:
            rig.start(name, change=tag(name))
        fleet = wait_fleet(rig, 60)
        victim = sorted(fleet)[0]
        rig.wait(  # a node pages a machine it sees in service (a machine on probation is not news)
            lambda: all(n.machines()[victim]["lifecycle"] == "in_service" for n in rig.live()),
            30,
            f"every node seeing {victim} in service",
        )
        launched_before = launched_ids(tmp_path)
        before = len(receiver.snapshot())

        pg.stop()
        stopped = time.monotonic()
        try:
            set_fault(fleet[victim]["address"], "down")

            def first_page() -> Hit | None:
                pages = store_pages(receiver.accepted()[before:], "firing")
                return pages[0] if pages else None

            page = rig.wait(first_page, FIRST_PAGE_WITHIN, "on-call paged that the store is unreachable")
            took = page.at - stopped
            assert "is unreachable" in page.body["summary"], page.body

            def victim_paged() -> list[Hit]:
                return [
                    h
                    for h in receiver.snapshot()[before:]
                    if h.body.get("machine") == victim and h.body["details"].get("store_unreachable")
                ]

            def views() -> str:
                return "\n".join(f"{n.name}: {n.machines().get(victim)}" for n in rig.live()) + receiver.describe()

            wait_until(victim_paged, FIRST_PAGE_WITHIN, f"on-call paged that {victim} is down", describe=views)
            rig.wait(
                lambda: {sender(h) for h in store_pages(receiver.snapshot()[before:], "firing")} == set(NODES),
                FIRST_PAGE_WITHIN,
                "every node paging that the store is unreachable",
            )
            # the checks go on and show the machine down; nothing is remediated without the store
            shown = [n.name for n in rig.live() if n.machines().get(victim, {}).get("condition") == "down"]
            assert shown, f"no node shows {victim} down while the database is away\n{rig.describe()}"
            time.sleep(max(0.0, OUTAGE - (time.monotonic() - stopped)))
            assert launched_ids(tmp_path) == launched_before, "a machine was launched while the database was away"
        finally:
            pg.start()
        back = time.monotonic()
        during = receiver.snapshot()[before:]
        paged = {h.id for h in during}
        # one id per outage and per machine on every node: receivers that dedupe keep one of each
        assert len({h.id for h in store_pages(during, "firing")}) == 1, receiver.describe()
        assert len({h.id for h in victim_paged()}) == 1, receiver.describe()
        per_sender = collections.Counter((sender(h), h.id) for h in during if 200 <= h.status < 300)
        assert max(per_sender.values()) == 1, f"a node paged the same message twice: {per_sender}"

        leader = rig.wait_leader(30)
        rig.wait(lambda: store_pages(receiver.snapshot(), "resolved"), 30, "on-call told that the store is back")

        def healed() -> bool:
            node = rig.leader()
            return node is not None and any(
                i["machine"] == victim and i["state"] == "resolved" for i in incidents(node)
            )

        rig.wait(healed, 60, f"{victim} healed once the database is back")

        def through_outbox(kind: str) -> list[dict[str, Any]]:
            return [
                e
                for h in receiver.snapshot()
                if h.at >= back and h.id not in paged
                for e in h.body.get("events", [])
                if e["type"] == kind and e.get("machine") == victim
            ]

        # every event of the outage goes out through the outbox: the machine found down while it was away
        told = receiver.describe
        wait_until(lambda: through_outbox("machine.unhealthy"), 30, f"{victim} down, via the outbox", describe=told)
        wait_until(lambda: through_outbox("incident.opened"), 30, f"{victim}'s incident told", describe=told)
        view = wait_delivered(rig, rig.leader() or leader, 30)
        after = [h for h in receiver.snapshot() if h.at >= back and 200 <= h.status < 300]
        # a node that had not reconnected yet may still page straight, under the outage's ids (receivers keep
        # one); what the outbox sends once the store is back must not repeat any of them
        late = {h.id for h in after if paged_directly(h)}
        assert late <= paged, f"a node paged under a new id after the database came back: {late - paged}"
        after = [h for h in after if not paged_directly(h)]
        resent = sorted({h.id for h in after} & paged)
        assert not resent, f"paged during the outage and sent again by the outbox: {resent}\n{receiver.describe()}"
        twice = [i for i, n in collections.Counter(h.id for h in after).items() if n > 1]
        assert not twice, f"delivered twice after the database came back: {twice}\n{receiver.describe()}"
        assert len(store_pages(after, "resolved")) == 1, receiver.describe()
        ids = {h.id for h in receiver.snapshot() if 200 <= h.status < 300}
        assert {m["id"] for m in view["messages"]} == ids, "the outbox and the receiver disagree on what was sent"
        print(f"\nfirst page {took:.1f}s after the database stopped; {len(paged)} messages paged during the outage")
    finally:
        problems = rig.stop_all()
        kill_demos(str(tmp_path))
    assert not problems, "\n".join(problems)
