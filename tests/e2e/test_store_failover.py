"""A cluster whose PostgreSQL primary fails over to its standby, in the middle of a remediation (docs/cluster.md:
failover and switchover).

Two real nodes on a multi-host connection string (both servers, target_session_attrs=read-write); a real
primary and its synchronous streaming standby. What an operator relies on: when the primary dies (SIGKILL)
and the standby is promoted, or when the two are switched over, a leader writes again within lease_ttl + 5 s,
the incident ends with exactly one replacement, no message to on-call is lost, and no node keeps a
connection to the old primary (a node pinned there would fail every write with 25006, read-only). And when
both servers stop, on-call is paged within 30 s, and once they are back the outbox delivers the outage's
messages, none twice by id.

`python -m bench.failover --runs 20 --kind kill` repeats these rounds and prints the figures.
"""

from __future__ import annotations

import collections
import contextlib
import random
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pgpair import PgPair, pg_pair

from .cluster import ClusterRig, Node
from .fleet import fleet_config, kill_demos, launched_ids, set_fault
from .test_alerting import Receiver
from .test_cluster import incidents, wait_fleet

pytestmark = pytest.mark.e2e

TTL = 3.0
#: how long after the primary's death (or the switchover's start) a leader must write again
WRITES_WITHIN = TTL + 5
#: what a node's log says when a statement reached a server that takes no writes
READ_ONLY = re.compile(r"read-only transaction|ReadOnlySqlTransaction|25006")


@dataclass(frozen=True)
class Round:
    """What one failover did, as the figures an operator would ask for."""

    kind: str
    recovery: float  # seconds from the primary's death to the lease renewed on the new primary
    promoted: float  # of which the failover itself took (the standby promoted; a switchover: all of it)
    replacements: int  # machines launched for the one broken machine
    epochs: tuple[int, int]  # the lease's epoch before and after
    old_sessions: int  # healerd's connections left on the old primary (a standby now), switchover only
    read_only_lines: int  # log lines of 25006 written after the cluster settled


def failover_cluster(tmp_path: Path, pair: PgPair, receiver: Receiver) -> ClusterRig:
    base = fleet_config(tmp_path, 0, remediation={"max_per_hour": 60})
    base["notifiers"] = {"hook": {"kind": "webhook", "url": receiver.url + "/hook", "group_wait": "0s"}}
    base["services"]["web"]["notify"] = ["hook"]
    return ClusterRig(tmp_path, pair.new_database(), base, ttl=TTL)


def lease_row(rig: ClusterRig) -> tuple[float, int] | None:
    """(when the lease was last taken or renewed, by the database's clock; its epoch), from the writable server."""
    with (
        contextlib.suppress(psycopg.OperationalError),
        psycopg.connect(rig.dsn, autocommit=True, connect_timeout=2) as conn,
    ):
        row = conn.execute(
            "SELECT extract(epoch FROM expires_at) - %s, epoch FROM cluster_lease WHERE name = 'leader'", (rig.ttl,)
        ).fetchone()
        return (float(row[0]), int(row[1])) if row else None
    return None


def healerd_sessions(member_port: int, pair: PgPair) -> int:
    member = next(m for m in pair.members if m.port == member_port)
    rows = member.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'healerd/%'")
    return int(rows[0][0])  # type: ignore[call-overload]


def read_only_lines(rig: ClusterRig) -> int:
    return sum(len(READ_ONLY.findall(node.output())) for node in rig.nodes.values())


def fail_over(rig: ClusterRig, pair: PgPair, kind: str, tmp_path: Path) -> Round:
    """Break a machine; once its remediation runs, fail the database over (`kind`: kill, switchover); wait for
    a leader to write on the new primary and for the incident to end; return the figures."""
    fleet = wait_fleet(rig, 60)
    leader = rig.wait_leader()
    victim = sorted(fleet)[random.randrange(len(fleet))]
    launched_before = launched_ids(tmp_path)
    set_fault(fleet[victim]["address"], "down")

    def remediating(leader: Node = leader) -> dict[str, Any] | None:
        return next((i for i in incidents(leader) if i["machine"] == victim and i["state"] == "remediating"), None)

    incident = rig.wait(remediating, 20, f"the remediation of {victim} to start")
    before = lease_row(rig)
    assert before is not None
    time.sleep(random.uniform(0.0, 0.3))  # somewhere in the playbook (about a second, most of it the new boot)
    old_port = pair.primary.port
    died = time.time()
    if kind == "kill":
        pair.kill_primary()
        pair.promote()  # as a failover manager does once it sees the primary gone
    else:
        pair.switchover()
    promoted = time.time() - died

    def renewed() -> tuple[float, int] | None:
        row = lease_row(rig)
        return row if row is not None and row[0] > died else None

    at, epoch = rig.wait(renewed, WRITES_WITHIN + 5, "a leader to renew the lease on the new primary")
    recovery = at - died

    def resolved() -> dict[str, Any] | None:
        node = rig.leader()
        if node is None:
            return None
        with contextlib.suppress(OSError):
            view: dict[str, Any] = node.json(f"/api/v1/incidents/{incident['id']}")
            return view if view["state"] == "resolved" else None
        return None

    done = rig.wait(resolved, 60, f"incident {incident['id']} to be resolved")
    assert done["resolved_at"] > died, "the remediation had ended before the primary died"
    new = launched_ids(tmp_path) - launched_before
    assert done["replacement"] in new, f"the replacement {done['replacement']} is not among {sorted(new)}"

    old_sessions = 0
    if kind == "switchover":  # the old primary, a standby now, still accepts connections: none of healerd's
        rig.wait(lambda: healerd_sessions(old_port, pair) == 0, 5, "no healerd connection left on the old primary")
    settled = read_only_lines(rig)
    time.sleep(2 * TTL / 3)  # two lease rounds, and the engine's writes meanwhile
    if kind == "switchover":
        old_sessions = healerd_sessions(old_port, pair)
    if kind == "kill":
        pair.rebuild_standby()  # the dead primary comes back as the new one's standby
    return Round(kind, recovery, promoted, len(new), (before[1], epoch), old_sessions, read_only_lines(rig) - settled)


def messages(receiver: Receiver, rig: ClusterRig) -> tuple[int, int, int]:
    """(messages in the leader's outbox, of them never received, received more than once) once all delivered."""
    leader = rig.wait_leader()

    def settled() -> dict[str, Any] | None:
        view: dict[str, Any] = leader.json("/api/v1/notifications?limit=500")
        states = {m["state"] for m in view["messages"]}
        return view if states == {"delivered"} else None

    view = rig.wait(settled, 30, "every notification delivered")
    ids = [h.id for h in receiver.snapshot() if 200 <= h.status < 300]
    outbox = {m["id"] for m in view["messages"]}
    twice = [i for i, n in collections.Counter(ids).items() if n > 1]
    return len(outbox), len(outbox - set(ids)), len(twice)


@pytest.fixture
def pair() -> Iterator[PgPair]:
    with pg_pair() as made:
        yield made


@pytest.fixture
def rig(tmp_path: Path, pair: PgPair, receiver: Receiver) -> Iterator[ClusterRig]:
    made = failover_cluster(tmp_path, pair, receiver)
    try:
        yield made
    finally:
        problems = made.stop_all()
        kill_demos(str(tmp_path))
    assert not problems, "\n".join(problems)


def test_the_primary_killed_during_a_remediation_the_standby_promoted_one_replacement_and_no_alert_lost(
    rig: ClusterRig, pair: PgPair, receiver: Receiver, tmp_path: Path
) -> None:
    for name in "ab":
        rig.start(name)
    figures = fail_over(rig, pair, "kill", tmp_path)
    assert figures.replacements == 1, f"{figures.replacements} machines launched for one incident"
    assert figures.recovery <= WRITES_WITHIN, f"a leader wrote again {figures.recovery:.1f}s after the primary died"
    assert figures.epochs[1] >= figures.epochs[0], f"the epoch went backwards: {figures.epochs}"
    sent, lost, twice = messages(receiver, rig)
    assert sent >= 2 and lost == 0, f"{lost} of {sent} messages never reached on-call\n{receiver.describe()}"
    assert twice <= 1, f"{twice} messages received twice"  # one in flight at the kill may be sent again
    opened = [e for h in receiver.accepted() for e in h.body["events"] if e["type"] == "incident.opened"]
    assert len(opened) == 1
    print(f"\nkill: {figures}; messages {sent}, lost {lost}, twice {twice}")


def test_a_switchover_leaves_no_connection_on_the_old_primary_and_a_leader_writes_within_the_lease(
    rig: ClusterRig, pair: PgPair, receiver: Receiver, tmp_path: Path
) -> None:
    for name in "ab":
        rig.start(name)
    figures = fail_over(rig, pair, "switchover", tmp_path)
    assert figures.recovery <= WRITES_WITHIN, f"a leader wrote again {figures.recovery:.1f}s after the switchover"
    assert figures.old_sessions == 0, f"{figures.old_sessions} healerd connections stayed on the old primary"
    assert figures.read_only_lines == 0, "a node kept failing with 25006 (read-only)\n" + rig.describe()
    assert figures.replacements == 1
    assert pair.members[0].answers() and pair.members[1].answers()  # the old primary serves, as a standby
    sent, lost, twice = messages(receiver, rig)
    assert lost == 0 and twice == 0, f"of {sent} messages, {lost} lost and {twice} received twice"
    print(f"\nswitchover: {figures}; messages {sent}, lost {lost}, twice {twice}")


def test_both_servers_stopped_every_node_pages_within_30s_and_the_outbox_delivers_the_outage_once(
    rig: ClusterRig, pair: PgPair, receiver: Receiver, tmp_path: Path
) -> None:
    for name in "ab":
        rig.start(name)
    fleet = wait_fleet(rig, 60)
    victim = sorted(fleet)[0]
    rig.wait(  # a node pages a machine it sees in service (one it still sees on probation is not news)
        lambda: all(n.machines()[victim]["lifecycle"] == "in_service" for n in rig.live()),
        30,
        f"every node seeing {victim} in service",
    )
    rig.wait(  # what the start said is sent: the outage's messages are counted alone
        lambda: (
            {m["state"] for m in rig.wait_leader().json("/api/v1/notifications?limit=500")["messages"]} <= {"delivered"}
        ),
        30,
        "the start's notifications delivered",
    )
    before = len(receiver.snapshot())
    launched_before = launched_ids(tmp_path)

    pair.stop()  # the primary and its standby: no database at all
    stopped = time.monotonic()
    try:
        set_fault(fleet[victim]["address"], "down")

        def store_page() -> Any:
            return next(
                (h for h in receiver.accepted()[before:] if direct(h) and h.body.get("type") == "store.degraded"), None
            )

        page = rig.wait(store_page, 30, "on-call paged that the store is unreachable")
        took = page.at - stopped
        assert took <= 30, f"the first page came {took:.1f}s after the database went away"
        rig.wait(
            lambda: any(h.body.get("machine") == victim for h in receiver.accepted()[before:] if direct(h)),
            20,
            f"on-call paged that {victim} is down",
        )
        assert launched_ids(tmp_path) == launched_before, "a machine was launched while no database answered"
    finally:
        pair.primary.start()
        pair.standby.start()
    back = time.monotonic()
    paged = {h.id for h in receiver.snapshot()[before:] if direct(h)}
    rig.wait(
        lambda: any(i["machine"] == victim and i["state"] == "resolved" for i in incidents(rig.wait_leader())),
        60,
        f"{victim} healed once the database is back",
    )
    sent, lost, _ = messages(receiver, rig)
    assert lost == 0, f"{lost} of {sent} messages in the outbox never reached on-call\n{receiver.describe()}"
    from_outbox = [h.id for h in receiver.snapshot() if h.at >= back and 200 <= h.status < 300 and not direct(h)]
    twice = [i for i, n in collections.Counter(from_outbox).items() if n > 1 or i in paged]
    assert not twice, f"sent twice by id once the database was back: {twice}\n{receiver.describe()}"
    told = [e["type"] for h in receiver.snapshot() if h.at >= back for e in h.body.get("events", [])]
    assert "incident.opened" in told, "the outage's incident never reached on-call through the outbox"
    print(f"\nboth servers stopped: first page after {took:.1f}s; {len(paged)} paged directly, {sent} in the outbox")


def direct(hit: Any) -> bool:
    """A page a node sent straight to the receiver while no database answered (not from the outbox)."""
    body = hit.body
    return (body.get("type") == "store.degraded" and body.get("status") == "firing") or bool(
        body.get("details", {}).get("store_unreachable")
    )
