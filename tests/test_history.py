"""The status page's history: results and service state counted in buckets (pure), then added up in the store
(SQLite and PostgreSQL): the uptime it gives agrees with the raw results, a restart or a second node adds to a
bucket instead of overwriting it, old rows are pruned."""

from __future__ import annotations

import random

import pytest

from healerd.history import MACHINE_KEEP, MACHINE_WIDTH, SERVICE_KEEP, SERVICE_WIDTH, HistoryBook, bucket_of
from healerd.results import Status
from healerd.status_page import result_uptime, uptime
from healerd.store import BaseStore
from healerd.store.history import History

T0 = 1_800_000_000.0  # a multiple of 300: buckets start on it


def test_a_result_counts_in_its_machine_bucket_and_its_service_bucket() -> None:
    book = HistoryBook()
    book.result("web", "m1", "health", Status.OK, 0.010, T0 + 61)
    book.result("web", "m2", "health", Status.CRITICAL, 0.800, T0 + 62)
    book.result("web", "", "lb", Status.WARNING, 0.020, T0 + 63)  # a service-level check
    rows = {(r[0], r[1], r[2], r[3]): r for r in book.take(T0 + 64, force=True)}
    assert set(rows) == {
        ("web", "m1", "health", T0),
        ("web", "m2", "health", T0),
        ("web", "", "health", T0 + 60),
        ("web", "", "service:lb", T0 + 60),
    }
    service = rows[("web", "", "health", T0 + 60)]
    assert service[4:11] == (SERVICE_WIDTH, 2, 1, 0, 1, 0, pytest.approx(0.81))
    assert rows[("web", "m1", "health", T0)][4] == MACHINE_WIDTH
    assert book.take(T0 + 70, force=True) == []  # handed over once


def test_service_state_seconds_are_split_at_bucket_boundaries() -> None:
    book = HistoryBook()
    book.service_state("web", False, T0 + 30)
    book.service_state("web", True, T0 + 90)  # up 30 s in the first minute, 30 s in the second
    rows = book.take(T0 + 150, states={"web": True}, force=True)  # down from 90 to 150
    by_bucket = {r[3]: (r[11], r[12]) for r in rows if r[2] == ""}
    assert by_bucket == {T0: (30.0, 0.0), T0 + 60: (30.0, 30.0), T0 + 120: (0.0, 30.0)}


def test_take_waits_between_writes_and_a_failed_write_is_put_back() -> None:
    book = HistoryBook()
    book.result("web", "m1", "health", Status.OK, 0.01, T0)
    first = book.take(T0 + 1)
    assert first  # the first write goes at once
    book.result("web", "m1", "health", Status.OK, 0.01, T0 + 2)
    assert book.take(T0 + 5) == []  # within 15 s of the last write
    book.put_back(first)
    again = book.take(T0 + 20)
    runs = sum(r[5] for r in again if r[1] == "m1")
    assert runs == 2  # the failed write's result and the new one


async def test_uptime_agrees_with_the_raw_results_of_a_scripted_ten_minutes(store: BaseStore) -> None:
    """600 results of 3 machines (one a second each), failures in bursts: the history's uptime of each machine
    and of the service equals the raw share of OK results (±0.1 %), and so does the service's time up."""
    rng = random.Random(7)
    raw: dict[str, list[bool]] = {"m1": [], "m2": [], "m3": []}
    book = store.history.book
    down = [False]
    store.history.states = lambda: {"web": down[0]}  # what the monitor says at each flush
    for second in range(600):
        ts = T0 + second
        if second in (0, 200, 290):  # the service down from 200 to 290 s
            down[0] = second == 200
            book.service_state("web", down[0], ts)
        for machine in raw:
            broken = (machine == "m2" and 120 <= second < 300) or rng.random() < 0.03
            raw[machine].append(not broken)
            book.result("web", machine, "health", Status.CRITICAL if broken else Status.OK, 0.01, ts)
        if second % 37 == 0:  # written now and then, as the flush loop does
            await _flush_at(store, ts)
    book.service_state("web", False, T0 + 600)
    await _flush_at(store, T0 + 600)
    since = T0 - 1
    for machine, oks in raw.items():
        rows = await store.history.buckets("web", machine, "health", since)
        assert sum(r["runs"] for r in rows) == 600
        assert result_uptime(rows, since) == pytest.approx(sum(oks) / 600, abs=0.001)
    service = await store.history.buckets("web", "", "health", since)
    every = [ok for oks in raw.values() for ok in oks]
    assert result_uptime(service, since) == pytest.approx(sum(every) / len(every), abs=0.001)
    state = await store.history.buckets("web", "", "", since)
    assert uptime(state, since) == pytest.approx(1 - 90 / 600, abs=0.001)


async def test_two_writers_add_to_the_same_bucket(store: BaseStore) -> None:
    """A restart (a fresh book) or a second cluster node counting the same service: the bucket holds the sum."""
    for _ in range(2):
        other = HistoryBook()
        for i in range(10):
            other.result("web", "", "lb", Status.OK if i % 5 else Status.CRITICAL, 0.1, T0 + i)
        store.history.book.pending.update(other.pending)
        store.history.book._written_at = 0.0
        await store.flush()
    (row,) = await store.history.buckets("web", "", "service:lb", T0 - 1)
    assert (row["runs"], row["ok"], row["critical"]) == (20, 16, 4)


async def test_old_rows_are_pruned_machine_rows_after_a_day_service_rows_after_a_week(store: BaseStore) -> None:
    now = T0 + 8 * 86400
    book = store.history.book
    book.result("web", "m1", "health", Status.OK, 0.01, now - MACHINE_KEEP - 600)  # 1 day and 10 min old
    book.result("web", "m1", "health", Status.OK, 0.01, now - 600)
    book.result("web", "m1", "health", Status.OK, 0.01, now - SERVICE_KEEP - 600)
    rows = book.take(now, force=True)

    def write() -> None:
        with store.db.transaction() as conn:
            History.write(conn, rows, prune_at=now)

    await store.db.call(write)
    machine = await store.history.buckets("web", "m1", "health", 0)
    assert [r["bucket"] for r in machine] == [bucket_of(now - 600, MACHINE_WIDTH)]
    service = await store.history.buckets("web", "", "health", 0)
    assert [r["bucket"] for r in service] == [
        bucket_of(now - MACHINE_KEEP - 600, SERVICE_WIDTH),
        bucket_of(now - 600, SERVICE_WIDTH),
    ]


async def _flush_at(store: BaseStore, now: float) -> None:
    """The store's flush of the history, at a scripted time."""
    rows = store.history.book.take(now, store.history.states(), force=True)

    def write() -> None:
        with store.db.transaction() as conn:
            History.write(conn, rows)

    await store.db.call(write)
