"""Image promotion in the store, on SQLite and on PostgreSQL: the rollout record a restart resumes from, every
version's state (candidate, rejected, known_good, retired) with its evidence, and the known-good record a
promotion moves in one transaction. On PostgreSQL these writes are the leader's alone."""

from __future__ import annotations

import random
import sqlite3
from typing import Any

import psycopg
import pytest
from conftest import lead
from pg import PgServer

from healerd.rollouts.judge import Samples
from healerd.store import Fenced, KnownGood, Store
from healerd.store.base import BaseStore
from healerd.store.interface import RolloutRecord, VersionRecord
from healerd.store.postgres import PgStore

FIGURES = {
    "canary_results": 120,
    "baseline_results": 240,
    "canary_error_rate": 0.0,
    "baseline_error_rate": 0.004167,
    "latency_ratio_p50": 1.02,
    "latency_ratio_p95": 0.98,
    "canary_p50": 0.020512,
    "baseline_p50": None,
}


def rollout(rid: str, service: str = "web", started_at: float = 100.0, **changes: Any) -> RolloutRecord:
    record = RolloutRecord(
        rid, service, "demo-web", "v2", "v1", "canary", True, False, "", started_at, started_at, None, {}
    )
    return record._replace(**changes)


def version(v: str, state: str, reason: str = "", by: str = "", at: float = 1.0, **evidence: object) -> VersionRecord:
    return VersionRecord("demo-web", v, state, reason, by, at, dict(evidence))


async def reopened(store: BaseStore) -> BaseStore:
    """The same database opened by a new store, as a restarted healerd (or the next leader) opens it."""
    again: BaseStore
    if isinstance(store, PgStore):
        again = PgStore(store.pg.dsn, "test-node")
        await again.open()
        await lead(again)
    else:
        assert isinstance(store, Store)
        again = Store(store.path.parent)
        await again.open()
    return again


# ---------------------------------------------------------------------------------------------------------
# rollouts


async def test_a_rollout_is_saved_rewritten_at_each_step_and_read_back_whole(store: BaseStore) -> None:
    canary = Samples(_rng=random.Random(0))
    for i in range(30):
        canary.add(i % 10 != 0, round(0.02 + i / 1000, 3))
    started = rollout(
        "R1",
        started_at=1_700_000_000.25,
        data={
            "canary": 1,
            "bake": 30.0,
            "by": "alice",
            "canaries": ["web-canary-0"],
            "samples": {"canary": canary.as_dict(), "baseline": {"results": 0, "errors": 0, "durations": []}},
            "waiting": None,
            "note": "déploiement ✓",
        },
    )
    await store.rollouts.save(started)
    first = await store.rollouts.get("R1")
    assert first == started
    assert await store.rollouts.get("R2") is None

    paused = started._replace(
        stage="bake",
        paused=True,
        reason="paused by alice",
        updated_at=1_700_000_030.5,
        data={"canary": 1, "bake": 30.0, "canaries": ["web-canary-0"], "judge": {"outcome": "wait", **FIGURES}},
    )
    await store.rollouts.save(paused)  # the whole record is replaced: "samples" is gone
    got = await store.rollouts.get("R1")
    assert got == paused
    assert got is not None and got.active is True and got.paused is True  # booleans, not 1 and 0
    assert "samples" not in got.data and got.data["judge"]["baseline_p50"] is None

    ended = paused._replace(
        stage="rolled_back", active=False, paused=False, reason="the judge found v2 worse", ended_at=1_700_000_060.0
    )
    await store.rollouts.save(ended)
    got = await store.rollouts.get("R1")
    assert got == ended and got is not None and got.active is False and got.paused is False
    assert await store.rollouts.active() == []
    assert await store.rollouts.latest("web") == ended  # the last rollout stays readable after it ended
    # what a resumed bake reads back is what it saved
    assert first is not None and Samples.from_dict(first.data["samples"]["canary"]) == canary


async def test_active_latest_and_recent_list_newest_first_per_service(store: BaseStore) -> None:
    done = {"stage": "completed", "active": False, "ended_at": 45.0}
    for record in [  # saved out of order: the order comes from started_at
        rollout("R4", "web", 40.0, **done),
        rollout("R1", "web", 10.0, stage="rolled_back", active=False, ended_at=15.0),
        rollout("R3", "web", 30.0, stage="refresh"),
        rollout("R2", "api", 20.0, stage="bake", paused=True),
    ]:
        await store.rollouts.save(record)
    assert [r.id for r in await store.rollouts.active()] == ["R2", "R3"]
    latest = await store.rollouts.latest("web")
    assert latest is not None and latest.id == "R4" and latest.stage == "completed"
    api = await store.rollouts.latest("api")
    assert api is not None and (api.id, api.paused) == ("R2", True)
    assert await store.rollouts.latest("db") is None
    assert [r.id for r in await store.rollouts.recent("web")] == ["R4", "R3", "R1"]
    assert [r.id for r in await store.rollouts.recent("web", limit=2)] == ["R4", "R3"]
    assert [r.id for r in await store.rollouts.recent()] == ["R4", "R3", "R2", "R1"]
    assert await store.rollouts.recent("db") == []


# ---------------------------------------------------------------------------------------------------------
# versions and the known-good record


async def test_a_candidate_is_marked_then_rejected_with_its_reason_and_evidence(store: BaseStore) -> None:
    seeded = version("v1", "known_good", "set in the config", "config", 1.0)
    await store.images.promote("demo-web", seeded, None, "v1")  # how the config's known_good seeds the store
    await store.images.mark(version("v2", "candidate", "rollout R1 started", "R1", 2.0))
    assert await store.images.versions("demo-web") == [
        seeded,
        version("v2", "candidate", "rollout R1 started", "R1", 2.0),
    ]
    reason = "the judge found v2 worse: latency p50 60.0 ms against the baseline's 20.0 ms: 3x (at most 1.5x allowed)"
    rejected = version("v2", "rejected", reason, "R1", 3.0, judge=FIGURES, canaries=["web-canary-0"])
    await store.images.mark(rejected)
    assert await store.images.versions("demo-web") == [seeded, rejected]  # one record per version, replaced
    assert await store.images.get("demo-web") == KnownGood("v1", "v1")  # a rejection leaves known_good alone


async def test_versions_are_listed_per_family_in_order(store: BaseStore) -> None:
    await store.images.mark(VersionRecord("demo-web", "v3", "candidate", "", "R2", 5.0, {}))
    await store.images.mark(VersionRecord("demo-db", "v9", "rejected", "probation timed out", "R9", 4.0, {}))
    await store.images.mark(VersionRecord("demo-web", "v10", "rejected", "", "R1", 3.0, {}))
    assert [(v.family, v.version) for v in await store.images.versions()] == [
        ("demo-db", "v9"),
        ("demo-web", "v10"),
        ("demo-web", "v3"),
    ]
    assert [v.version for v in await store.images.versions("demo-db")] == ["v9"]
    assert await store.images.versions("nothing") == []


async def test_promoting_v2_over_v1_retires_v1_and_records_v2s_evidence(store: BaseStore) -> None:
    v1 = version("v1", "known_good", "set in the config", "config", 1.0)
    await store.images.promote("demo-web", v1, None, "v1")
    assert await store.images.get("demo-web") == KnownGood("v1", "v1")
    await store.images.mark(version("v2", "candidate", "rollout R1 started", "R1", 2.0))

    evidence = {"rollout": "R1", "judge": {"outcome": "pass", **FIGURES}, "canaries": ["web-canary-0"], "by": "alice"}
    v2 = VersionRecord("demo-web", "v2", "known_good", "error rate 0.00% (baseline 0.42%)", "R1", 9.0, evidence)
    await store.images.promote("demo-web", v2, "v1", "v1")

    assert await store.images.get("demo-web") == KnownGood("v2", "v1")  # seeded: still what the config says
    assert await store.images.versions("demo-web") == [
        VersionRecord("demo-web", "v1", "retired", "superseded by v2", "R1", 9.0, {}),
        v2,
    ]

    # a promotion of the version that is already known-good (previous == record) does not retire it
    again = v2._replace(reason="promoted again", updated_at=10.0)
    await store.images.promote("demo-web", again, "v2", "v1")
    assert [(v.version, v.state) for v in await store.images.versions("demo-web")] == [
        ("v1", "retired"),
        ("v2", "known_good"),
    ]

    # the operator changes known_good in the config back to v1: an operator's promotion, v2 is retired
    back = version("v1", "known_good", "known_good changed in the config (was v1)", "config", 11.0)
    await store.images.promote("demo-web", back, "v2", "v1")
    assert await store.images.get("demo-web") == KnownGood("v1", "v1")
    states = {v.version: (v.state, v.reason) for v in await store.images.versions("demo-web")}
    assert states == {"v1": ("known_good", back.reason), "v2": ("retired", "superseded by v1")}


async def test_a_promotion_that_fails_half_way_changes_nothing(store: BaseStore) -> None:
    await store.images.promote("demo-web", version("v1", "known_good", "", "config", 1.0), None, "v1")
    broken = VersionRecord("demo-web", "v2", None, "", "R1", 2.0, {})  # type: ignore[arg-type]  # NOT NULL
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.IntegrityError)):
        await store.images.promote("demo-web", broken, "v1", "v1")
    assert await store.images.get("demo-web") == KnownGood("v1", "v1")  # the first statement was rolled back
    assert [(v.version, v.state) for v in await store.images.versions("demo-web")] == [("v1", "known_good")]


async def test_rollouts_and_promotions_are_still_there_after_a_restart(store: BaseStore) -> None:
    await store.images.promote("demo-web", version("v1", "known_good", "set in the config", "config", 1.0), None, "v1")
    v2 = version("v2", "known_good", "judge passed", "R1", 9.0, rollout="R1", judge=FIGURES)
    await store.images.promote("demo-web", v2, "v1", "v1")
    await store.images.mark(version("v3", "rejected", "canary web-canary-0 is down", "R2", 12.0))
    finished = rollout("R1", started_at=5.0, stage="completed", active=False, ended_at=20.0, data={"promoted_at": 9.0})
    running = rollout("R2", started_at=21.0, version="v3", previous="v2", stage="bake", data={"canaries": ["c0"]})
    await store.rollouts.save(finished)
    await store.rollouts.save(running)
    before = await store.images.versions()

    again = await reopened(store)
    try:
        assert await again.images.get("demo-web") == KnownGood("v2", "v1")
        assert await again.images.versions() == before
        assert [(v.version, v.state) for v in before] == [("v1", "retired"), ("v2", "known_good"), ("v3", "rejected")]
        assert await again.rollouts.active() == [running]  # what the restarted daemon resumes
        assert await again.rollouts.get("R1") == finished
        assert [r.id for r in await again.rollouts.recent("web")] == ["R2", "R1"]
    finally:
        await again.close()


# ---------------------------------------------------------------------------------------------------------
# fencing (PostgreSQL: one leader writes)


async def test_a_node_that_lost_the_lease_cannot_save_a_rollout_or_promote(pg: PgServer) -> None:
    dsn = pg.new_database()
    old, new = PgStore(dsn, "a"), PgStore(dsn, "b")
    await old.open()
    await new.open()
    try:
        await lead(old, epoch=1)
        await old.images.promote("demo-web", version("v1", "known_good", "", "config", 1.0), None, "v1")
        await old.rollouts.save(rollout("R1"))
        await lead(new, epoch=2)  # b took over; a still believes it holds epoch 1

        with pytest.raises(Fenced, match="epoch 1 is older than the cluster's 2"):
            await old.rollouts.save(rollout("R1", stage="bake"))
        with pytest.raises(Fenced):
            await old.images.promote("demo-web", version("v2", "known_good", "", "R1", 2.0), "v1", "v1")
        with pytest.raises(Fenced):
            await old.images.mark(version("v2", "rejected", "", "R1", 2.0))

        stored = await new.rollouts.get("R1")
        assert stored is not None and stored.stage == "canary"  # nothing of the refused writes is there
        assert await new.images.get("demo-web") == KnownGood("v1", "v1")
        assert [(v.version, v.state) for v in await new.images.versions()] == [("v1", "known_good")]
        await new.rollouts.save(rollout("R1", stage="bake"))  # the new leader resumes it
        resumed = await old.rollouts.get("R1")  # and any node reads it
        assert resumed is not None and resumed.stage == "bake"
    finally:
        await old.close()
        await new.close()
