"""healerd as a cluster (docs/cluster.md): real nodes sharing a real PostgreSQL database (a throw-away server made by
Debian's initdb/pg_ctl), against machines on loopback.

What an operator relies on: every machine is checked by exactly one node and the load moves when nodes come
and go; a leader killed in the middle of a remediation is replaced within lease_ttl and the incident ends
with exactly one replacement and no alert lost or sent twice; a leader frozen past its lease cannot act when
it wakes; and one node that cannot reach the fleet gets nothing replaced.
"""

from __future__ import annotations

import collections
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest
from pg import PgServer

from .cluster import ClusterRig, Node, wait_delivered
from .fleet import DESIRED, fleet_config, kill_demos, launched_ids, set_fault
from .helpers import make_config, run_cli, wait_until
from .test_alerting import Loopback, Receiver

pytestmark = pytest.mark.e2e

TTL = 3.0
#: leader kills in the takeover test (the suite runs 3; `HEALERD_CLUSTER_KILLS=20 pytest -s -k killed` for a soak)
KILLS = int(os.environ.get("HEALERD_CLUSTER_KILLS", "3"))
MACHINES = 60
INTERVAL = 0.5


class Counting(BaseHTTPRequestHandler):
    """/health?m=<machine id>: 200, counting the requests per machine (keep-alive, as a web server does)."""

    protocol_version = "HTTP/1.1"

    counts: collections.Counter[str]
    lock: threading.Lock

    def do_GET(self) -> None:
        machine = parse_qs(urlparse(self.path).query).get("m", [""])[0]
        with self.lock:
            self.counts[machine] += 1
        body = b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class Server(ThreadingHTTPServer):
    request_queue_size = 512  # three nodes connect to 60 machines at once: socketserver's 5 would drop SYNs
    daemon_threads = True


@pytest.fixture
def counting_server() -> Iterator[tuple[str, collections.Counter[str], threading.Lock]]:
    counts: collections.Counter[str] = collections.Counter()
    lock = threading.Lock()
    handler = type("Handler", (Counting,), {"counts": counts, "lock": lock})
    server = Server(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}", counts, lock
    server.shutdown()
    server.server_close()


@pytest.fixture
def rigs(tmp_path: Path) -> Iterator[list[ClusterRig]]:
    made: list[ClusterRig] = []
    yield made
    problems = [p for rig in made for p in rig.stop_all()]
    kill_demos(str(tmp_path))
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def static_fleet(tmp_path: Path, address: str) -> dict[str, Any]:
    check = {
        "name": "health",
        "kind": "http",
        "url": "http://{address}/health?m={id}",
        "interval": f"{INTERVAL * 1000:.0f}ms",
        "timeout": "400ms",
    }
    machines = [(f"m{i:03d}", address) for i in range(MACHINES)]
    return make_config(tmp_path, 0, machines, [check])


def static_cluster(pg: PgServer, tmp_path: Path, rigs: list[ClusterRig], address: str, names: str) -> ClusterRig:
    """Nodes `names` on the static fleet, once they share its 60 machines."""
    rig = ClusterRig(tmp_path, pg.new_database(), static_fleet(tmp_path, address), ttl=TTL)
    rigs.append(rig)
    for name in names:
        rig.start(name)
    rig.wait(
        lambda: sum((s := shards(rig)).values()) == MACHINES and len(s) == len(names),
        15,
        f"{len(names)} nodes sharing {MACHINES} machines",
    )
    return rig


def shards(rig: ClusterRig) -> dict[str, int]:
    """Machines per node, as each node reports its own shard in its /metrics."""
    out = {}
    for node in rig.live():
        value = node.metrics().get("healerd_cluster_shard_machines", node=f"healerd-{node.name}")
        out[node.name] = int(value or 0)
    return out


def window(counts: collections.Counter[str], lock: threading.Lock, seconds: float) -> collections.Counter[str]:
    with lock:
        before = collections.Counter(counts)
    time.sleep(seconds)
    with lock:
        return collections.Counter({k: v - before.get(k, 0) for k, v in counts.items()})


def test_nodes_split_a_fleet_each_machine_checked_once_and_rebalance_when_one_joins_or_leaves(
    pg: PgServer, tmp_path: Path, rigs: list[ClusterRig], counting_server: Any
) -> None:
    address, counts, lock = counting_server
    rig = static_cluster(pg, tmp_path, rigs, address, "abc")
    split = shards(rig)
    assert all(8 <= n <= 32 for n in split.values()), f"a lopsided split of 60 over 3: {split}"

    # every machine is checked, and by one node only: over 5 s at 0.5 s, ~10 requests each (20 if twice)
    seen = window(counts, lock, 5.0)
    per_machine = [seen.get(f"m{i:03d}", 0) for i in range(MACHINES)]
    print(f"\n3 nodes: shards {split}; requests per machine in 5 s: min {min(per_machine)}, max {max(per_machine)}")
    assert min(per_machine) >= 6, f"a machine was not checked: {sorted(per_machine)[:5]}"
    assert max(per_machine) <= 13, f"a machine was checked twice: {sorted(per_machine)[-5:]}"

    # any node answers for the whole cluster: one leader, the same everywhere; the CLI shows it
    views = [n.cluster() for n in rig.live()]
    assert len({v["leader"] for v in views}) == 1 and views[0]["leader"] is not None
    assert sum(1 for v in views if v["this_node_leads"]) == 1
    assert all({n["node"] for n in v["nodes"] if n["live"]} == {"healerd-a", "healerd-b", "healerd-c"} for v in views)
    leader = rig.wait_leader()
    follower = next(n for n in rig.live() if n.name != leader.name)
    out = run_cli("cluster", "status", "--url", follower.url)
    assert out.returncode == 0, out.stderr
    assert f"leader {views[0]['leader']}" in out.stdout and "healerd-c" in out.stdout
    machines = follower.json("/api/v1/machines")["machines"]
    assert len(machines) == MACHINES and all(m["checks"]["health"]["status"] == "OK" for m in machines)
    metrics = follower.metrics()
    assert metrics.get("healerd_cluster_nodes") == 3
    assert metrics.get("healerd_cluster_leader", node=views[0]["leader"]) == 1

    # a change sent to a follower is refused with the leader's address
    status, body = follower.post("/api/v1/mode", {"paused": True})
    assert status == 409 and leader.name in body["detail"] and str(leader.port) in body["detail"]

    # a fourth node joins: within one interval (plus a heartbeat) it holds about a quarter
    joined_at = time.monotonic()
    rig.start("d")
    rig.wait(
        lambda: len(s := shards(rig)) == 4 and s["d"] > 0 and sum(s.values()) == MACHINES,
        2 * TTL,
        "node d to take a share",
    )
    took = time.monotonic() - joined_at
    split = shards(rig)
    assert sum(split.values()) == MACHINES, split
    assert 5 <= split["d"] <= 25, f"node d's share of 60 over 4: {split}"
    print(f"\nafter node d joined ({took:.2f}s): shards {split} (ideal {MACHINES / 4:g} each)")
    seen = window(counts, lock, 3.0)
    assert max(seen.values()) <= 8, f"checked twice after the join ({took:.1f}s): {seen.most_common(3)}"

    # a node leaves (SIGTERM): the others take its machines at once
    gone = split["b"]
    rig.stop("b")
    rig.wait(lambda: sum(shards(rig).values()) == MACHINES and "b" not in shards(rig), 2 * TTL, "b's share to move")
    seen = window(counts, lock, 3.0)
    assert min(seen.get(f"m{i:03d}", 0) for i in range(MACHINES)) >= 3, f"machines of b ({gone}) went unchecked"


def test_the_database_going_away_stops_no_check_and_a_leader_leads_again_when_it_is_back(
    pg: PgServer, tmp_path: Path, rigs: list[ClusterRig], counting_server: Any
) -> None:
    address, counts, lock = counting_server
    rig = static_cluster(pg, tmp_path, rigs, address, "ab")
    leader = rig.wait_leader()
    pg.stop()
    try:
        # the leader cannot renew: it stops acting before its lease could expire
        rig.wait(lambda: rig.leader() is None, TTL, "the leader to step down without its database")
        seen = window(counts, lock, 3.0)
        assert min(seen.get(f"m{i:03d}", 0) for i in range(MACHINES)) >= 3, "checks stopped with the database"
        for node in rig.live():
            assert node.get("/healthz")[0] == 200
            view = node.cluster()
            assert view["database_error"], view
        out = run_cli("cluster", "status", "--url", leader.url)
        assert "DATABASE UNREACHABLE" in out.stdout, out.stdout
    finally:
        pg.start()
    rig.wait_leader(4 * TTL)
    rig.wait(lambda: all(n.cluster()["database_error"] is None for n in rig.live()), 2 * TTL, "the nodes to reconnect")
    assert all(n.alive() for n in rig.nodes.values())


# ---------------------------------------------------------------------------------------------------------
# Remediation across a takeover


def demo_cluster(tmp_path: Path, pg: PgServer, receiver: Receiver | None = None, **rem: Any) -> ClusterRig:
    base = fleet_config(tmp_path, 0, remediation={"max_per_hour": 60, **rem})
    if receiver is not None:
        base["notifiers"] = {"hook": {"kind": "webhook", "url": receiver.url + "/hook", "group_wait": "0s"}}
        base["services"]["web"]["notify"] = ["hook"]
    return ClusterRig(tmp_path, pg.new_database(), base, ttl=TTL)


def in_service(node: Node) -> dict[str, dict[str, Any]]:
    return {k: m for k, m in node.machines().items() if m["lifecycle"] == "in_service" and m["condition"] == "up"}


def wait_fleet(rig: ClusterRig, timeout: float = 30.0) -> dict[str, dict[str, Any]]:
    def up() -> dict[str, dict[str, Any]] | None:
        leader = rig.leader()
        if leader is None:
            return None
        serving = in_service(leader)
        return serving if len(serving) == DESIRED and leader.service()["state"] == "optimal" else None

    fleet: dict[str, dict[str, Any]] = rig.wait(up, timeout, "3 machines in service, optimal")
    return fleet


def incidents(node: Node) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = node.json("/api/v1/incidents")["incidents"]
    return rows


def test_leader_killed_during_a_remediation_another_node_finishes_it_with_one_replacement(
    pg: PgServer, tmp_path: Path, rigs: list[ClusterRig]
) -> None:
    loopback = Loopback()
    receiver = loopback.serve(Receiver())
    try:
        rig = demo_cluster(tmp_path, pg, receiver)
        rigs.append(rig)
        for name in "abc":
            rig.start(name)
        kills = KILLS
        takeovers: list[float] = []
        points: list[float] = []
        for round_ in range(kills):
            fleet = wait_fleet(rig)
            leader = rig.wait_leader()
            victim = random.choice(sorted(fleet))
            launched_before = launched_ids(tmp_path)
            set_fault(fleet[victim]["address"], "down")

            def remediating(leader: Node = leader, victim: str = victim) -> dict[str, Any] | None:
                return next(
                    (i for i in incidents(leader) if i["machine"] == victim and i["state"] == "remediating"), None
                )

            incident = rig.wait(remediating, 20, f"round {round_}: the remediation of {victim} to start")
            point = random.uniform(0.0, 2.0)  # somewhere in the playbook
            points.append(point)
            time.sleep(point)
            killed_at = time.monotonic()
            leader.kill9()
            successor = rig.wait_leader(TTL + 5, other_than=leader.name)
            takeovers.append(time.monotonic() - killed_at)
            rig.start(leader.name)  # the killed node comes back as a follower

            def resolved(node: Node = successor, iid: str = incident["id"]) -> dict[str, Any] | None:
                view: dict[str, Any] = node.json(f"/api/v1/incidents/{iid}")
                return view if view["state"] == "resolved" else None

            done = rig.wait(resolved, 40, f"round {round_}: incident {incident['id']} to be resolved")
            new = launched_ids(tmp_path) - launched_before
            assert len(new) == 1, f"round {round_}: {len(new)} machines launched for one incident: {sorted(new)}"
            assert done["replacement"] in new
        print(f"\ntakeovers after kill -9 (s): {[round(t, 2) for t in takeovers]}; lease_ttl {TTL:g}s")
        print(f"kill points (s after the remediation started): {[round(p, 2) for p in points]}")
        assert max(takeovers) <= TTL + 2, f"takeovers took {[round(t, 2) for t in takeovers]} s"

        # every message reached the receiver once: the new leaders delivered what the old ones left
        leader = rig.wait_leader()

        view = wait_delivered(rig, leader, 20)
        hits = [h for h in receiver.snapshot() if 200 <= h.status < 300]
        ids = [h.id for h in hits]
        assert {m["id"] for m in view["messages"]} == set(ids), "a message was lost"
        # a leader killed while a message was on its way cannot have recorded it: the next one sends it again,
        # with the same id as Idempotency-Key, so the receiver keeps it once; every other message went once
        again = [i for i, n in collections.Counter(ids).items() if n > 1]
        for message_id in again:
            sent = [h for h in hits if h.id == message_id]
            assert {h.headers["Idempotency-Key"] for h in sent} == {message_id}
            assert len({h.raw for h in sent}) == 1, "a message sent again must be the same message"
        assert len(again) <= kills, f"{len(again)} messages sent again for {kills} kills"
        print(f"messages: {len(set(ids))} delivered; sent again (same id, a kill during the send): {len(again)}")
        opened = [e for h in receiver.accepted() for e in h.body["events"] if e["type"] == "incident.opened"]
        assert len(opened) == kills, f"{len(opened)} incident.opened alerts for {kills} incidents"
    finally:
        loopback.close()


def test_a_leader_frozen_past_its_lease_is_fenced_when_it_wakes_and_nothing_is_done_twice(
    pg: PgServer, tmp_path: Path, rigs: list[ClusterRig]
) -> None:
    rig = demo_cluster(tmp_path, pg)
    rigs.append(rig)
    for name in "ab":
        rig.start(name)
    fleet = wait_fleet(rig)
    leader = rig.wait_leader()
    victim = sorted(fleet)[0]
    launched_before = launched_ids(tmp_path)
    set_fault(fleet[victim]["address"], "down")
    rig.wait(
        lambda: any(i["machine"] == victim and i["state"] == "remediating" for i in incidents(leader)),
        20,
        "the remediation to start",
    )
    time.sleep(random.uniform(0.0, 1.5))  # somewhere in the playbook
    rig.freeze(leader.name)
    frozen_at = time.monotonic()
    successor = rig.wait_leader(TTL + 5, other_than=leader.name)
    took = time.monotonic() - frozen_at
    epoch = successor.cluster()["epoch"]
    time.sleep(1.0)
    rig.thaw(leader.name)
    frozen_for = time.monotonic() - frozen_at
    rig.wait(lambda: "this node stops leading" in leader.output(), 5, "the old leader to step down")
    assert not leader.cluster()["this_node_leads"]
    incident = next(i for i in incidents(successor) if i["machine"] == victim)
    rig.wait(
        lambda: successor.json(f"/api/v1/incidents/{incident['id']}")["state"] == "resolved",
        40,
        "the new leader to finish the remediation",
    )
    new = launched_ids(tmp_path) - launched_before
    assert len(new) == 1, f"{len(new)} replacements: {sorted(new)}"
    assert successor.cluster()["epoch"] == epoch, "leadership moved again"
    log = leader.output()
    refused = [line for line in log.splitlines() if "leader-only write refused" in line]
    stepped = log.index("this node stops leading")
    after = log[stepped:]
    assert "step started" not in after, "the old leader ran a step after waking"
    for line in refused:
        assert f"older than the cluster's {epoch}" in line or "does not hold" in line, line
    print(
        f"\nfrozen {frozen_for:.2f}s (lease_ttl {TTL:g}s); {successor.name} led after {took:.2f}s at epoch {epoch}; "
        f"the old leader's refused writes: {len(refused)}; replacements: {len(new)}"
    )


def test_a_node_that_cannot_reach_the_fleet_gets_nothing_replaced_but_a_machine_down_for_all_is(
    pg: PgServer, tmp_path: Path, rigs: list[ClusterRig]
) -> None:
    # max_unhealthy 3: the cut-off node may check two of the three, and that gate must not hide this one
    rig = demo_cluster(tmp_path, pg, max_unhealthy=3)
    rigs.append(rig)
    for name in "abc":
        rig.start(name)
    wait_fleet(rig)
    leader = rig.wait_leader()
    view = leader.cluster()

    def settled() -> bool:  # every node's heartbeat counts its share among the three (not an older one)
        nodes = [n for n in leader.cluster()["nodes"] if n["live"]]
        return len(nodes) == 3 and sum(n["machines"] for n in nodes) == DESIRED

    rig.wait(settled, 15, "three nodes sharing the fleet")
    time.sleep(TTL / 3 + 0.5)  # one more heartbeat of each, after the last rebalance
    # the partitioned node: a follower that checks at least one machine

    def follower_with_a_share() -> dict[str, Any] | None:
        return next((n for n in leader.cluster()["nodes"] if n["live"] and not n["leader"] and n["machines"] > 0), None)

    if all(n["machines"] == 0 for n in leader.cluster()["nodes"] if not n["leader"]):
        # rendezvous hashing gave the leader every machine (1 time in 27): another node leads once it restarts,
        # and the machines stay where their hash puts them, on a follower now
        rig.stop(leader.name)
        rig.start(leader.name)
        leader = rig.wait_leader(3 * TTL)
        rig.wait(settled, 15, "three nodes sharing the fleet again")
    owner = rig.wait(follower_with_a_share, 10, "a follower with a share")
    cut = rig.nodes[owner["node"].removeprefix("healerd-")]
    # a port held bound but never listening: every check of this node is refused, and no one else can take it
    blackhole_socket = socket.socket()
    blackhole_socket.bind(("127.0.0.1", 0))
    blackhole = blackhole_socket.getsockname()[1]

    def cut_off(cfg: dict[str, Any]) -> None:
        cfg["services"]["web"]["checks"][0]["url"] = f"http://127.0.0.1:{blackhole}/health"

    launched_before = launched_ids(tmp_path)
    cut.stop()
    rig.start(cut.name, change=cut_off)
    held = wait_until(
        lambda: [i for i in incidents(rig.wait_leader()) if i["details"].get("suppressed") == "unconfirmed"],
        25,
        "the leader to hold a remediation back as unconfirmed",
        interval=0.1,
        describe=lambda: f"{cut.name} sees: {cut.json('/api/v1/scheduler')} {cut.machines()}\n{rig.describe()}",
    )
    assert "vantage point" in held[0]["details"]["suppressed_detail"]
    time.sleep(4.0)
    assert launched_ids(tmp_path) == launched_before, "a machine was replaced on one node's word"
    leader = rig.wait_leader()
    assert (leader.metrics().total("healerd_remediation_suppressed_total", reason="unconfirmed") or 0) >= 1
    # the cut-off node itself learns that it is the odd one out, and says so
    rig.wait(lambda: "this node is the odd one out" in cut.output(), 3 * TTL, "the cut-off node to see it")
    mine = next(n for n in cut.cluster()["nodes"] if n["node"] == f"healerd-{cut.name}")
    assert mine["disputed"] >= 1
    assert b"THIS NODE IS THE ODD ONE OUT" in cut.get("/")[1]
    out = run_cli("cluster", "status", "--url", cut.url)
    assert "odd one out" in out.stdout, out.stdout
    # a follower shows the leader's incidents too (its status page, its API)
    follower = next(n for n in rig.live() if n.name != leader.name)
    rig.wait(lambda: follower.json("/api/v1/mode")["incidents_open"] >= 1, 2 * TTL, "a follower to show the incident")
    status, page = follower.get("/")
    assert status == 200 and held[0]["id"].encode() in page and b"cluster: 3 live node(s)" in page
    assert view["confirm_from"]["effective"] == 2

    # a machine down for every node is remediated
    fleet = {k: m for k, m in leader.machines().items() if m["lifecycle"] == "in_service"}
    victim = next(k for k in sorted(fleet) if k != held[0]["machine"])
    set_fault(fleet[victim]["address"], "down")
    rig.wait(
        lambda: len(launched_ids(tmp_path) - launched_before) >= 1,
        30,
        f"{victim}, down for every node, to be replaced",
    )


def test_a_rollout_runs_on_the_leader_and_a_takeover_finishes_it_once(
    pg: PgServer, tmp_path: Path, rigs: list[ClusterRig]
) -> None:
    """Only the leader runs a rollout (a follower refuses to start one, naming the leader, and shows it); the
    leader killed in the middle of the refresh: the next one finishes it from its record, once."""
    rig = demo_cluster(tmp_path, pg)
    image = rig.base["images"]["demo-web"]
    image["versions"]["v2"] = dict(image["versions"]["v1"])
    # the canary and the baseline are checked from different nodes: judge errors, not loopback latency
    image["rollout"] = {
        "canary": 1,
        "bake": "2s",
        "drain": "300ms",
        "judge": {"min_results": 3, "max_latency_ratio": 100},
    }
    rigs.append(rig)
    for name in "ab":
        rig.start(name)
    before = wait_fleet(rig)
    leader = rig.wait_leader()
    follower = next(n for n in rig.live() if n.name != leader.name)
    status, body = follower.post("/api/v1/services/web/rollout", {"version": "v2"})
    assert status == 409 and leader.name in body["detail"], body
    status, body = leader.post("/api/v1/services/web/rollout", {"version": "v2"})
    assert status == 202, body

    def refreshing() -> bool:
        view = follower.json("/api/v1/services/web/rollout")  # any node shows it, from the store
        return view["stage"] == "refresh" and view["progress"].get("new", 0) >= 1

    rig.wait(refreshing, 40, "the refresh to start")
    leader.kill9()
    successor = rig.wait_leader(TTL + 5, other_than=leader.name)

    def ended() -> dict[str, Any] | None:
        view: dict[str, Any] = successor.json("/api/v1/services/web/rollout")
        return None if view["active"] else view

    view = rig.wait(ended, 60, "the new leader to finish the rollout")
    assert view["stage"] == "completed", view
    fleet = wait_fleet(rig)
    assert {m["version"] for m in fleet.values()} == {"v2"}, fleet
    assert not set(fleet) & set(before)
    rollout_machines = [m for m in successor.machines().values() if m["version"] == "v2"]
    assert len(rollout_machines) == DESIRED, rollout_machines  # the canary and two replacements, none twice
    (image_view,) = successor.json("/api/v1/images")["images"]
    assert image_view["known_good"] == "v2"
    ends = [e["type"] for e in successor.events(type="rollout.completed,rollout.rolled_back")]
    assert ends == ["rollout.completed"], ends
