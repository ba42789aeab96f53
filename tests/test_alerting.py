"""The outbox's retry decision, pure: what happens to a message after each kind of answer."""

from __future__ import annotations

import pytest

from healerd.notifiers import Delivery, NotifierOptions
from healerd.receipts import next_attempt

OPTS = NotifierOptions(max_attempts=3, max_backoff=300.0)


@pytest.mark.parametrize(
    ("delivery", "attempts", "expected"),
    [
        (Delivery(200), 1, ("delivered", "delivered", 1000.0)),
        (Delivery(503), 1, ("pending", "retry", 1001.0)),  # backoff 2**0
        (Delivery(503), 4, ("pending", "retry", 1008.0)),  # 2**3
        (Delivery(503, retry_after=30.0), 1, ("pending", "retry", 1030.0)),  # the longer of the two
        (Delivery(None, error="connection refused"), 2, ("pending", "retry", 1002.0)),
        (Delivery(429, retry_after=7.0), 1, ("pending", "rate_limited", 1007.0)),  # Retry-After honoured
        (Delivery(429, retry_after=9999.0), 1, ("pending", "rate_limited", 1300.0)),  # capped by max_backoff
        (Delivery(400), 1, ("pending", "retry", 1001.0)),  # refused: tried max_attempts times
        (Delivery(400), 3, ("dead", "dead", 1000.0)),  # then the dead letter
        (Delivery(408), 9, ("pending", "retry", 1256.0)),  # a timeout answer is not permanent
    ],
)
def test_next_attempt(delivery: Delivery, attempts: int, expected: tuple[str, str, float]) -> None:
    assert next_attempt(delivery, attempts, OPTS, 1000.0, 1.0) == expected


def test_backoff_is_capped_and_jittered() -> None:
    _, _, at = next_attempt(Delivery(503), 30, OPTS, 0.0, 1.2)
    assert at == pytest.approx(360.0)  # max_backoff 300 s, then 1.2 jitter
