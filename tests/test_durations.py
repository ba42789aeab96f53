"""Ages as `healerd status` (FOR) and the status page (since, age, a silence's time left) show them: rounded for
a reader."""

from __future__ import annotations

import pytest

from healerd.durations import format_age


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (-3.0, "0s"),  # a clock a little ahead of the record reads as now, never negative
        (0.4, "0s"),
        (42.0, "42s"),
        (59.4, "59s"),
        (60.0, "1m"),
        (17 * 60 + 10, "17m"),
        (3600.0, "1.0h"),
        (3.1 * 3600, "3.1h"),
        (86400.0, "1.0d"),
        (2.5 * 86400, "2.5d"),
    ],
)
def test_format_age(seconds: float, shown: str) -> None:
    assert format_age(seconds) == shown
