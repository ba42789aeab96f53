"""A cluster whose PostgreSQL database goes away and comes back: it heals again, and nothing is lost.

Three real nodes on the throw-away PostgreSQL server; the server is stopped, a machine breaks while it is
away, and the server comes back. What an operator relies on: the broken machine is healed within
lease_ttl + fall * interval + a boot + 5 s of the database's return, every notification queued meanwhile
reaches the receiver once, and no node ever claims a leadership it is not exercising.

The suite runs one outage of 36 s (psycopg's pool would wait another 28 s before its next attempt);
`HEALERD_OUTAGES=5,12,20,30,36,45,60,8,25,50 pytest -s -k outage` soaks it.
"""

from __future__ import annotations

import collections
import os
import time
from pathlib import Path
from typing import Any

import pytest
from pg import PgServer

from .cluster import ClusterRig, wait_delivered
from .fleet import FALL, INTERVAL, kill_demos, launched_ids, set_fault
from .helpers import wait_until
from .test_alerting import Receiver
from .test_cluster import (  # noqa: F401 (counting_server and rigs: fixtures)
    MACHINES,
    counting_server,
    demo_cluster,
    incidents,
    rigs,
    static_fleet,
    wait_fleet,
    window,
)

pytestmark = pytest.mark.e2e

OUTAGES = [float(s) for s in os.environ.get("HEALERD_OUTAGES", "36").split(",")]
LEASE_TTL = float(os.environ.get("HEALERD_OUTAGE_TTL", "6"))
BOOT = 3.0  # a demo machine's start and probation (rise results) on a busy box


def claims(rig: ClusterRig) -> list[str]:
    """The nodes that say they lead, by their own view."""
    out = []
    for node in rig.live():
        try:
            if node.cluster()["this_node_leads"]:
                out.append(node.name)
        except (OSError, ValueError, AssertionError):
            continue
    return out


def test_a_cluster_heals_a_machine_broken_while_its_database_was_away_and_delivers_what_it_queued(
    pg: PgServer, tmp_path: Path, receiver: Receiver
) -> None:
    rig = demo_cluster(tmp_path, pg, receiver)
    rig.ttl = LEASE_TTL
    try:
        for name in "abc":
            rig.start(name)
        figures = []
        for round_, outage in enumerate(OUTAGES):
            fleet = wait_fleet(rig, 60)
            victim = sorted(fleet)[round_ % len(fleet)]
            launched_before = launched_ids(tmp_path)
            pg.stop()
            stopped = time.monotonic()
            try:
                time.sleep(min(outage / 3, 5.0))
                set_fault(fleet[victim]["address"], "down")
                time.sleep(max(0.0, outage - (time.monotonic() - stopped)))
            finally:
                pg.start()
            back = time.monotonic()

            def healed(victim: str = victim) -> dict[str, Any] | None:
                leader = rig.leader()
                if leader is None:
                    return None
                try:
                    rows = incidents(leader)
                except OSError:  # a node busy reconnecting answers late: asked again
                    return None
                done = [i for i in rows if i["machine"] == victim and i["state"] == "resolved"]
                return done[0] if done else None

            bound = LEASE_TTL + FALL * INTERVAL + BOOT + 5
            incident = rig.wait(healed, bound + 60, f"round {round_}: {victim} healed after a {outage:g}s outage")
            took = time.monotonic() - back
            new = launched_ids(tmp_path) - launched_before
            assert len(new) == 1, f"round {round_}: {len(new)} machines launched for one incident: {sorted(new)}"
            assert incident["replacement"] in new
            leaders = claims(rig)
            assert len(leaders) == 1, f"round {round_}: nodes claiming the lead: {leaders}\n{rig.describe()}"
            figures.append((outage, round(took, 1)))

            def told(iid: str = incident["id"]) -> bool:
                return any(
                    e["type"] == "incident.opened" and e.get("incident") == iid
                    for h in receiver.accepted()
                    for e in h.body["events"]
                )

            def outbox() -> str:
                leader = rig.leader()
                if leader is None:
                    return rig.describe()
                opened = leader.json("/api/v1/events?type=incident.opened&limit=20")
                sent = leader.json("/api/v1/notifications?limit=50")
                return f"incident.opened events: {opened}\noutbox: {sent}\n{rig.describe()}"

            wait_until(told, 30, f"round {round_}: on-call told of incident {incident['id']}", describe=outbox)
            assert took <= bound, f"round {round_}: healed {took:.1f}s after the database's return (bound {bound:g}s)"

        leader = rig.wait_leader()

        view = wait_delivered(rig, leader, 30)
        ids = [h.id for h in receiver.snapshot() if 200 <= h.status < 300]
        assert {m["id"] for m in view["messages"]} == set(ids), "a message was lost"
        # while the database is away every node pages on-call under the same ids: a receiver keeps one of each
        paged = {
            h.id
            for h in receiver.snapshot()
            if (h.body.get("type") == "store.degraded" and h.body.get("status") == "firing")
            or h.body.get("details", {}).get("store_unreachable")
        }
        twice = [i for i, n in collections.Counter(ids).items() if n > (len(rig.nodes) if i in paged else 1)]
        assert not twice, f"messages delivered twice: {twice}"
        opened = [e for h in receiver.accepted() for e in h.body["events"] if e["type"] == "incident.opened"]
        assert len(opened) == len(OUTAGES)
        print(f"\n(outage s, healed s after the database's return): {figures}; messages: {len(ids)}, none twice")
    finally:
        problems = rig.stop_all()
        kill_demos(str(tmp_path))
    assert not problems, "\n".join(problems)


def test_a_node_started_while_its_database_is_down_checks_its_fleet_and_leads_once_it_is_back(
    pg: PgServer,
    tmp_path: Path,
    counting_server: Any,  # noqa: F811 (the fixture, imported)
    rigs: list[ClusterRig],  # noqa: F811 (the fixture, imported: it stops the nodes whatever happens)
) -> None:
    address, counts, lock = counting_server
    rig = ClusterRig(tmp_path, pg.new_database(), static_fleet(tmp_path, address), ttl=3.0)
    rigs.append(rig)
    pg.stop()
    try:
        node = rig.start("a")
        node.wait_ready(15)
        seen = window(counts, lock, 2.0)
        assert len(seen) == MACHINES and min(seen.values()) >= 2, "checks do not run without the database"
        view = node.cluster()
        assert view["database_error"] and not view["this_node_leads"], view
        assert node.metrics().get("healerd_store_writable") == 0
        assert node.get("/healthz")[0] == 200 and node.get("/")[0] == 200
    finally:
        pg.start()
    rig.wait(lambda: node.cluster()["this_node_leads"], 20, "the node to lead once its database answers")
    rig.wait(lambda: node.metrics().get("healerd_store_writable") == 1, 10, "the store to work again")
    rig.wait(lambda: node.events(type="store.degraded"), 10, "the store's outage recorded")
    log = node.output()
    assert log.count("joined alone") == 1, log
    assert log.count("the state store is failing") == 1, log
    assert log.count("the state store works again") == 1, log
