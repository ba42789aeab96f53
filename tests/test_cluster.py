"""The cluster's parts on a real PostgreSQL: the lease (one holder, epochs, expiry by the database's clock),
fencing of leader-only writes, rendezvous sharding, following other nodes' changes, confirmation verdicts."""

from __future__ import annotations

import asyncio
import collections
import time
from pathlib import Path

import pytest
import yaml
from conftest import lead
from pg import PgServer
from psycopg_pool import PoolTimeout
from structlog.testing import capture_logs

from healerd.cluster import views as cluster_views
from healerd.cluster.confirm import Vantage, Verdict
from healerd.cluster.shard import owner, ranked
from healerd.config import load_config
from healerd.daemon import Daemon
from healerd.health import CheckKey
from healerd.machines import Lifecycle, Machine
from healerd.results import CheckResult, Status
from healerd.store import Fenced, IncidentRecord, RolloutRecord, VersionRecord
from healerd.store.changes import Changes
from healerd.store.lease import Lease
from healerd.store.postgres import PgStore


def incident(iid: str = "I1") -> IncidentRecord:
    return IncidentRecord(iid, "web", "m1", "open", "replace-machine", 1.0, 1.0, None, "m1 is down", None, None, {})


async def test_one_node_holds_the_lease_and_the_epoch_grows_at_each_new_holder(pg: PgServer) -> None:
    dsn = pg.new_database()
    store = PgStore(dsn, "a")
    await store.open()  # creates the tables
    a, b = Lease(dsn, "a", advertise="127.0.0.1:1", ttl=3.0), Lease(dsn, "b", advertise="127.0.0.1:2", ttl=3.0)
    try:
        first = await a.round(0, 0)
        assert (first.leader, first.epoch) == ("a", 1)
        taken = await b.round(0, 0)  # b tries while a's lease runs: a keeps it
        assert (taken.leader, taken.epoch) == ("a", 1)
        assert {m.node for m in taken.live(3.0)} == {"a", "b"}
        renewed = await a.round(0, 0)
        assert (renewed.leader, renewed.epoch) == ("a", 1) and renewed.expires_in > 2.5
        await a.release(1)  # a stops cleanly: b takes over at its next round, with a new epoch
        after = await b.round(0, 0)
        assert (after.leader, after.epoch) == ("b", 2)
        back = await a.round(0, 0)
        assert (back.leader, back.epoch) == ("b", 2)
    finally:
        await a.close()
        await b.close()
        await store.close()


async def test_an_expired_lease_goes_to_the_next_node_by_the_databases_clock(pg: PgServer) -> None:
    dsn = pg.new_database()
    store = PgStore(dsn, "a")
    await store.open()
    a, b = Lease(dsn, "a", advertise="x:1", ttl=3.0), Lease(dsn, "b", advertise="x:2", ttl=3.0)
    try:
        await a.round(0, 0)
        await asyncio.sleep(1.0)
        assert (await b.round(0, 0)).leader == "a"
        started = time.monotonic()
        while (found := await b.round(0, 0)).leader != "b":  # noqa: ASYNC110 (polls the database)
            await asyncio.sleep(0.1)
        assert found.epoch == 2
        assert 1.5 < time.monotonic() - started < 2.8  # the 3 s lease, of which 1 s had passed
    finally:
        await a.close()
        await b.close()
        await store.close()


async def test_a_write_of_an_older_epoch_is_refused_and_says_why(pg: PgServer) -> None:
    dsn = pg.new_database()
    old, new = PgStore(dsn, "a"), PgStore(dsn, "b")
    await old.open()
    await new.open()
    told: list[str] = []
    old.pg.on_fenced(told.append)
    try:
        await lead(old, epoch=1)
        await old.incidents.save(incident())  # the leader writes
        await lead(new, epoch=2)  # another node took over (old.pg.epoch is still 1)
        with pytest.raises(Fenced, match="epoch 1 is older than the cluster's 2"):
            await old.incidents.start_step("I1", 0, "rotation.remove", "running", 1, 2.0)
        assert told and "held by b" in told[0]
        assert await new.incidents.steps("I1") == []  # nothing of the refused write is there
        await new.incidents.start_step("I1", 0, "rotation.remove", "running", 1, 2.0)
        assert [s["state"] for s in await new.incidents.steps("I1")] == ["running"]
        old.pg.lead_at(None)  # a node that does not lead at all is refused too
        with pytest.raises(Fenced, match="does not hold the leader lease"):
            await old.machines.upsert(Machine("web", "m2", "127.0.0.1:1"), "lab", 3.0)
        assert await new.machines.get("web", "m2") is None
    finally:
        await old.close()
        await new.close()


async def test_a_rollout_and_a_promotion_of_an_older_epoch_are_refused(pg: PgServer) -> None:
    """A paused old leader cannot move a rollout on, nor make a version known-good, after a takeover."""
    dsn = pg.new_database()
    old, new = PgStore(dsn, "a"), PgStore(dsn, "b")
    await old.open()
    await new.open()
    rollout = RolloutRecord("R1", "web", "img", "v2", "v1", "bake", True, False, "", 1.0, 1.0, None, {"x": 1})
    try:
        await lead(old, epoch=1)
        await old.rollouts.save(rollout)
        await lead(new, epoch=2)
        with pytest.raises(Fenced, match="epoch 1 is older than the cluster's 2"):
            await old.rollouts.save(rollout._replace(stage="promoted"))
        promoted = VersionRecord("img", "v2", "known_good", "judged", "rollout R1", 2.0, {})
        with pytest.raises(Fenced):
            await old.images.promote("img", promoted, "v1", "v1")
        assert (await new.rollouts.get("R1")).stage == "bake"  # type: ignore[union-attr]
        assert await new.images.get("img") is None
        assert await new.images.versions("img") == []
    finally:
        await old.close()
        await new.close()


async def test_a_node_follows_what_the_others_wrote_and_never_misses_a_row(pg: PgServer) -> None:
    dsn = pg.new_database()
    a, b = PgStore(dsn, "a"), PgStore(dsn, "b")
    await a.open()
    await b.open()
    try:
        changes = Changes(b.pg)
        start = await changes.horizon()
        cursor = (str(max(0, int(start) - 1)), 0)
        await lead(a)
        await a.machines.upsert(Machine("web", "m1", "127.0.0.1:1", Lifecycle.PROBATION), "demo", 1.0)
        key = CheckKey("web", "m1", "health")
        for i in range(5):
            a.results.add(key, CheckResult(Status.OK, f"run {i}"), 10.0 + i)
        await a.flush()
        b.results.add(CheckKey("web", "m9", "health"), CheckResult(Status.OK, "b's own"), 1.0)
        await b.flush()
        machines, results = await changes.since(cursor, cursor, "b", 100)
        assert [(r[1], r[3]) for r in machines] == [("m1", "probation")]
        assert [r[6] for r in results] == [f"run {i}" for i in range(5)]  # in order, and not b's own
        last = (results[-1][9], results[-1][10])
        assert (await changes.since((machines[-1][5], machines[-1][6]), last, "b", 100)) == ([], [])
        # numbering goes on from the other node's when this one takes the check over
        assert b.results.seen(key, 5) and not b.results.seen(key, 5)
    finally:
        await a.close()
        await b.close()


def test_rendezvous_hashing_spreads_evenly_and_moves_only_the_leavers_share() -> None:
    keys = [f"web\x00m{i}" for i in range(3000)]
    three = ["a", "b", "c"]
    before = {k: owner(k, three) for k in keys}
    spread = collections.Counter(before.values())
    assert all(900 <= n <= 1100 for n in spread.values()), spread
    after = {k: owner(k, ["a", "c"]) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == "b" for k in moved) and len(moved) == spread["b"]
    joined = {k: owner(k, ["a", "b", "c", "d"]) for k in keys}
    assert all(joined[k] in (before[k], "d") for k in keys)  # a newcomer only takes, nobody else moves
    assert ranked(keys[0], three)[0] == before[keys[0]] and sorted(ranked(keys[0], three)) == three


def test_a_verdict_names_each_vantage_point_and_the_odd_one_out() -> None:
    verdict = Verdict(
        False,
        2,
        (Vantage("hd-b", True, "health CRITICAL"), Vantage("hd-a", False, "all checks OK")),
    )
    assert verdict.detail.startswith("1 of 2 vantage point(s) see it down, 2 needed")
    assert "hd-b: health CRITICAL; hd-a: all checks OK" in verdict.detail
    assert "hd-b is the odd one out" in verdict.detail
    silent = Verdict(False, 2, (Vantage("hd-b", True, "down"), Vantage("hd-c", None, "did not answer")))
    assert "odd one out" not in silent.detail  # silence is not disagreement


async def test_a_takeover_that_fails_on_the_store_is_retried_and_the_node_says_it_does_not_lead_meanwhile(
    pg: PgServer, tmp_path: Path
) -> None:
    """After an outage the store may still be reconnecting when this node wins the lease: its takeover is
    tried again until it succeeds, and until then neither the API nor the metric calls the node the leader."""
    config_path = tmp_path / "healerd.yaml"
    (tmp_path / "token").write_text("t0ken\n")
    config_path.write_text(
        yaml.safe_dump(
            {
                "daemon": {"listen": "127.0.0.1:1", "state_dir": "state", "api_token_file": "token"},
                "providers": {"lab": {"kind": "static"}},
                "services": {
                    "web": {
                        "provider": "lab",
                        "desired": 1,
                        "machines": [{"id": "m1", "address": "127.0.0.1:9"}],
                        "checks": [{"name": "up", "kind": "tcp", "interval": "1s", "timeout": "500ms"}],
                    }
                },
                "cluster": {"store": pg.new_database(), "node": "a", "advertise": "127.0.0.1:1", "lease_ttl": "3s"},
            }
        )
    )
    daemon = Daemon(load_config(config_path))
    cluster = daemon.cluster
    assert cluster is not None
    attempts: list[int] = []
    followed: list[float] = []

    async def on_lead(epoch: int) -> None:
        attempts.append(epoch)
        if len(attempts) <= 2:
            raise PoolTimeout("couldn't get a connection after 10.00 sec")

    async def on_follow() -> None:
        followed.append(time.monotonic())

    def claims() -> tuple[bool, float | None]:
        return cluster_views.view(cluster)["this_node_leads"], daemon.metrics.registry.get_sample_value(
            "healerd_cluster_leader", {"node": "a"}
        )

    await daemon.store.open()
    try:
        with capture_logs() as logs:
            await cluster.join()
            cluster.run(on_lead, on_follow)
            while not attempts:  # noqa: ASYNC110 (waits for the lease round)
                await asyncio.sleep(0.02)
            await asyncio.sleep(0.1)
            assert cluster.acting() and claims() == (False, 0.0)  # it holds the lease, it does not lead
            view = cluster_views.view(cluster)
            assert view["taking_over"] and "couldn't get a connection" in view["takeover_error"]
            assert "is taking over (retrying: the store fails" in cluster_views.line(cluster)
            deadline = time.monotonic() + 5
            while not cluster.leads() and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
            await cluster._round(take=True)  # the gauges as the next lease round sets them
            assert claims() == (True, 1.0)
            assert attempts == [1, 1, 1] and len(followed) == 2  # each failed attempt undone before the next
            assert cluster_views.view(cluster)["takeover_error"] is None
        said = [e["event"] for e in logs]
        assert said.count("taking over failed; retrying until it succeeds or the lease goes") == 1
        assert said.count("took over after retrying") == 1
        assert daemon.metrics.registry.get_sample_value("healerd_cluster_takeover_retries_total") == 2
    finally:
        await cluster.stop()
        await daemon.store.close()
