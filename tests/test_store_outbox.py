"""The alert outbox on a real SQLite store: items grouped into one message per notifier and service, in one
transaction with what the notifier keeps; ordered delivery, retries and dead letters; the views."""

from __future__ import annotations

from typing import Any

import pytest

from healerd.store import STORE_FAULTS, Composed, OutboxItem, PendingMessage, Store


def item(notifier: str, service: str, summary: str, at: float) -> OutboxItem:
    return OutboxItem(notifier, service, {"summary": summary, "service": service}, at)


def summaries(events: list[dict[str, Any]]) -> Composed:
    return Composed({"text": [e["summary"] for e in events]})


async def test_waiting_items_become_one_message_per_notifier_and_service(store: Store) -> None:
    await store.outbox.enqueue(
        [
            item("pager", "web", "m1 down", 1.0),
            item("pager", "db", "d1 down", 2.0),
            item("chat", "web", "m1 down", 1.0),
            item("pager", "web", "m2 down", 3.0),
        ]
    )
    assert sorted(await store.outbox.waiting()) == [("chat", "web", 1.0), ("pager", "db", 2.0), ("pager", "web", 1.0)]
    assert await store.outbox.depth() == {"pager": 3, "chat": 1}  # waiting items count before they are grouped

    assert await store.outbox.make_message("pager", "web", "M1", 10.0, summaries) == 2
    assert await store.outbox.make_message("pager", "web", "M2", 11.0, summaries) == 0  # nothing left to claim
    assert sorted(await store.outbox.waiting()) == [("chat", "web", 1.0), ("pager", "db", 2.0)]
    assert await store.outbox.next_pending("pager") == PendingMessage("M1", 0, 10.0, {"text": ["m1 down", "m2 down"]})
    assert await store.outbox.depth() == {"pager": 2, "chat": 1}  # one message plus the db item
    (message,) = await store.outbox.messages()
    assert message == {
        "id": "M1",
        "notifier": "pager",
        "service": "web",
        "state": "pending",
        "attempts": 0,
        "created_at": 10.0,
        "updated_at": 10.0,
        "delivered_at": None,
        "last_status": None,
        "last_error": None,
        "events": 2,
    }


async def test_a_message_and_what_the_notifier_keeps_are_written_together(store: Store) -> None:
    await store.outbox.enqueue([item("am", "web", "m1 down", 1.0)])

    def compose(events: list[dict[str, Any]]) -> Composed:
        return Composed({"alerts": len(events)}, {"alertmanager:am": '{"firing": ["m1"]}'})

    await store.outbox.make_message("am", "web", "M1", 2.0, compose)
    assert await store.meta.get("alertmanager:am") == '{"firing": ["m1"]}'


async def test_a_message_that_fails_to_build_rolls_back_and_the_items_wait_for_the_next_try(store: Store) -> None:
    await store.outbox.enqueue([item("pager", "web", "m1 down", 1.0), item("pager", "web", "m2 down", 2.0)])

    def broken(events: list[dict[str, Any]]) -> Composed:
        raise ValueError("the notifier cannot build this")

    with pytest.raises(ValueError, match="cannot build"):
        await store.outbox.make_message("pager", "web", "M1", 5.0, broken)
    assert await store.outbox.messages() == []
    assert await store.outbox.waiting() == [("pager", "web", 1.0)]
    # no transaction was left open: the store takes the next write, and the same items make the message
    await store.outbox.enqueue([item("pager", "web", "m3 down", 3.0)])
    assert await store.outbox.make_message("pager", "web", "M2", 6.0, summaries) == 3
    pending = await store.outbox.next_pending("pager")
    assert pending is not None and pending.payload == {"text": ["m1 down", "m2 down", "m3 down"]}


async def test_an_enqueue_is_all_or_nothing(store: Store) -> None:
    await store.outbox.enqueue([item("pager", "web", "first", 1.0)])
    bad = OutboxItem("pager", "web", {"summary": "y"}, None)  # type: ignore[arg-type]  # created_at is NOT NULL
    with pytest.raises(STORE_FAULTS, match=r"(?i)not.null"):
        await store.outbox.enqueue([item("pager", "web", "lost with it", 2.0), bad])
    assert await store.outbox.depth() == {"pager": 1}
    await store.outbox.enqueue([item("pager", "web", "next", 3.0)])  # the store goes on
    assert await store.outbox.depth() == {"pager": 2}


async def test_messages_go_out_in_order_and_a_refused_one_ends_in_the_dead_letter(store: Store) -> None:
    await store.outbox.add_message("M1", "pager", "web", 1.0, {"n": 1})
    await store.outbox.add_message("M2", "pager", "web", 2.0, {"n": 2})
    await store.outbox.add_message("M3", "chat", "", 3.0, {"n": 3})  # a re-post: no item behind it
    assert await store.outbox.pending_due(2.0) == 2

    # a retry keeps the oldest message first (it holds the ones after it), due later
    await store.outbox.record_attempt("M1", "pending", 1, 60.0, 4.0, 503, "HTTP 503: busy", None)
    assert await store.outbox.next_pending("pager") == PendingMessage("M1", 1, 60.0, {"n": 1})
    assert await store.outbox.pending_due(10.0) == 2  # M2 and M3; M1 waits until 60
    await store.outbox.record_attempt("M1", "dead", 5, 70.0, 70.0, 400, "HTTP 400: bad payload", None)
    assert (await store.outbox.next_pending("pager")) == PendingMessage("M2", 0, 2.0, {"n": 2})
    await store.outbox.record_attempt("M2", "delivered", 1, 71.0, 71.0, 200, None, 71.0)
    assert await store.outbox.next_pending("pager") is None

    views = {m["id"]: m for m in await store.outbox.messages()}
    assert [m["id"] for m in await store.outbox.messages()] == ["M3", "M2", "M1"]  # newest first
    assert await store.outbox.messages(limit=1) == [views["M3"]]
    assert views["M1"]["state"] == "dead" and views["M1"]["attempts"] == 5 and views["M1"]["last_status"] == 400
    assert views["M1"]["last_error"] == "HTTP 400: bad payload" and views["M1"]["delivered_at"] is None
    assert views["M2"]["state"] == "delivered" and views["M2"]["delivered_at"] == 71.0
    assert views["M3"]["service"] == "" and views["M3"]["events"] == 0
    assert await store.outbox.counts() == {"pager": {"dead": 1, "delivered": 1}, "chat": {"pending": 1}}
    assert await store.outbox.depth() == {"chat": 1}
