"""What the notifiers' receivers answered: each delivery attempt recorded in the outbox with when to try
again, and which receivers fail now (said once when one starts failing and once when it takes messages again).
"""

from __future__ import annotations

import random
import time
from typing import TYPE_CHECKING, Any

import structlog

from .notifiers import Delivery, Notifier, NotifierOptions

if TYPE_CHECKING:
    from .metrics import Metrics
    from .store import BaseStore

log = structlog.get_logger("healerd.alerting")


class Receipts:
    def __init__(self, store: BaseStore, metrics: Metrics) -> None:
        self.store = store
        self.metrics = metrics
        #: notifiers whose receiver fails now: since when, and its last error
        self.failing: dict[str, tuple[float, str]] = {}

    async def record(self, n: Notifier, message_id: str, attempts: int, d: Delivery) -> None:
        """Record an attempt's answer in the outbox: delivered, retried later, or dead-lettered."""
        now = time.time()
        state, outcome, next_at = next_attempt(d, attempts, n.options, now, random.uniform(0.8, 1.2))
        error = d.error or (None if d.ok else f"HTTP {d.status}: {d.body[:300]}")
        await self.store.outbox.record_attempt(
            message_id, state, attempts, next_at, now, d.status, error, now if state == "delivered" else None
        )
        self.metrics.counter("notifications").labels(n.name, outcome).inc()
        self._answered(n.name, state != "pending", error, now)
        if state == "dead":
            log.error(
                "notification dead-lettered: the receiver refused it",
                notifier=n.name,
                message=message_id,
                status=d.status,
                attempts=attempts,
                answer=d.body[:200],
            )
        elif state == "pending":  # said once per outage of the receiver (above); each retry at debug
            log.debug(
                "notification not delivered; will retry",
                notifier=n.name,
                message=message_id,
                status=d.status,
                error=error,
                retry_in=round(next_at - now, 2),
                attempts=attempts,
            )

    def _answered(self, name: str, reached: bool, error: str | None, now: float) -> None:
        """Say once when a notifier's receiver starts failing (messages stay in the outbox and are retried with
        backoff) and once when it takes them again; the page, /readyz and healerd_notifier_up show it meanwhile."""
        self.metrics.gauge("notifier_up").labels(name).set(1 if reached else 0)
        if reached:
            since = self.failing.pop(name, None)
            if since is not None:
                log.info("the notifier delivers again", notifier=name, failed_for=round(now - since[0], 1))
        elif name not in self.failing:
            self.failing[name] = (now, error or "not delivered")
            log.warning(
                "the notifier cannot deliver; its messages stay in the outbox and are retried with backoff",
                notifier=name,
                error=error,
            )
        else:
            self.failing[name] = (self.failing[name][0], error or "not delivered")

    def failing_of(self, name: str) -> dict[str, Any]:
        """Since when the notifier's receiver fails and its last error (empty: it does not fail)."""
        found = self.failing.get(name)
        return {"failing_since": found[0], "error": found[1]} if found else {}

    def failing_now(self) -> dict[str, dict[str, Any]]:
        """The notifiers whose receiver fails now, for /readyz and the page."""
        return {name: {"status": "failing", **self.failing_of(name)} for name in sorted(self.failing)}


def next_attempt(
    d: Delivery, attempts: int, options: NotifierOptions, now: float, jitter: float
) -> tuple[str, str, float]:
    """After an attempt: the message's state, the attempt's outcome (metric label) and when to try again.
    `jitter` (about 0.8-1.2) spreads retries so receivers coming back are not hit all at once."""

    def backoff() -> float:
        return min(options.max_backoff, 2.0 ** (attempts - 1)) * jitter

    if d.ok:
        return "delivered", "delivered", now
    if d.status == 429:
        # honour Retry-After, but never let one receiver hold the ordered queue beyond max_backoff
        wait = d.retry_after if d.retry_after is not None else backoff()
        return "pending", "rate_limited", now + min(wait, options.max_backoff)
    if d.permanent:
        if attempts >= options.max_attempts:
            return "dead", "dead", now
        return "pending", "retry", now + backoff()
    return "pending", "retry", now + max(backoff(), d.retry_after or 0.0)
