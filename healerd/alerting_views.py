"""What the API and the CLI ask of alerting: the outbox's state, a test message."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import aiohttp

from .events import new_id
from .notifiers import Delivery, Notifier
from .notifiers.alertmanager import AlertmanagerNotifier

if TYPE_CHECKING:
    from .receipts import Receipts
    from .store import BaseStore


async def outbox_view(
    store: BaseStore, notifiers: dict[str, Notifier], receipts: Receipts, limit: int = 50
) -> dict[str, Any]:
    """The outbox per notifier (pending, delivered, dead; whether its receiver fails), its latest messages and
    the dead letters among them."""
    messages = await store.outbox.messages(limit)
    per: dict[str, dict[str, int]] = {name: {"pending": 0, "delivered": 0, "dead": 0} for name in notifiers}
    for name, states in (await store.outbox.counts()).items():
        per.setdefault(name, {"pending": 0, "delivered": 0, "dead": 0}).update(states)
    dead = [m for m in messages if m["state"] == "dead"]
    return {
        "notifiers": {
            name: {"kind": n.kind, **per.get(name, {}), **receipts.failing_of(name)} for name, n in notifiers.items()
        },
        "messages": messages,
        "dead_letters": dead,
    }


async def send_test(n: Notifier) -> Delivery:
    """Send one test message right now (not through the outbox) and return the receiver's answer."""
    now = time.time()
    test_id = new_id(now)
    event = test_event(test_id, now)
    async with aiohttp.ClientSession(headers={"User-Agent": "healerd"}) as session:
        if isinstance(n, AlertmanagerNotifier):
            body = {"alerts": [n.test_alert(event, now + 300)]}
        else:
            body = n.build([event], test_id)
        return await n.deliver(session, body, test_id)


def test_event(test_id: str, now: float) -> dict[str, Any]:
    """The event `healerd notify test` sends."""
    return {
        "id": test_id,
        "type": "service.state_changed",
        "status": "firing",
        "severity": "info",
        "service": "healerd-test",
        "machine": None,
        "incident": None,
        "check": None,
        "summary": "test notification from healerd: if you read this, delivery works",
        "details": {"test": True},
        "timestamp": now,
    }
