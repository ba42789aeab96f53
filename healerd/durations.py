"""Parsing of the human units used in config: durations (`500ms`, `5s`, `2m`, `1h`) and percentages."""

from __future__ import annotations

import math
import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}

DAY = 86400.0
#: the longest duration any setting accepts unless it asks for less: longer is a typo, never a plan
YEAR = 365 * DAY
_EXAMPLE = "like 500ms, 5s, 2m or 1h"


def parse_duration(value: object, *, at_most: float = YEAR, what: str = "duration") -> float:
    """Seconds from `500ms`, `5s`, `2m`, `1h`, `1d` (a bare number is seconds), at most `at_most`.

    `what` names the setting in the message when the value is too long ("interval 2d is more than a day")."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration {_EXAMPLE}, got {value!r}")
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"expected a duration {_EXAMPLE}, got {_show(value)}; write a finite number of seconds")
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value}")
        # compared before float(): an int like 10**400 has no float
        seconds = float(value) if value <= at_most else math.inf
    elif isinstance(value, str) and (m := _DURATION.match(value)):
        seconds = float(m.group(1)) * _FACTORS[m.group(2)]
    else:
        raise ValueError(f"expected a duration {_EXAMPLE}, got {value!r}")
    if seconds > at_most:
        if isinstance(value, str):
            shown = value.strip() if len(value) <= 24 else f"{value.strip()[:20]}..."
        else:  # str() of a huge int is slow, and refused past 4300 digits
            shown = f"{value}s" if value < 10**20 else "(a number of more than 20 digits)"
        raise ValueError(f"{what} {shown} is more than {_span(at_most)}; use {_short(at_most)} or less")
    return seconds


def require_above_zero(seconds: float, *, what: str, example: str) -> float:
    """A duration that means nothing at 0 (a timeout, a bake), refused there with an example of a good one."""
    if seconds <= 0:
        raise ValueError(f"{what} must be above 0 (got {seconds:g}s); use a duration like {example}")
    return seconds


def _show(value: float) -> str:
    """How YAML spells a non-finite number, which is how the user wrote it."""
    if math.isnan(value):
        return ".nan"
    return ".inf" if value > 0 else "-.inf"


def _span(seconds: float) -> str:
    days = seconds / DAY
    if days == 1:
        return "a day"
    return f"{days:g} days" if days.is_integer() else format_duration(seconds)


def _short(seconds: float) -> str:
    days = seconds / DAY
    if days == 1:
        return "24h"
    return f"{days:g}d" if days.is_integer() else format_duration(seconds)


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:g}s"
    if seconds < 7200:
        return f"{seconds / 60:g}m"
    return f"{seconds / 3600:g}h"


def format_age(seconds: float) -> str:
    """How long ago, or how long left, rounded for a reader: 42s, 17m, 3.1h, 2.5d."""
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def parse_count_or_percent(value: object) -> tuple[int, bool]:
    """`2` -> (2, False); `50%` -> (50, True). Percentages are 0-100."""
    if isinstance(value, bool):
        raise ValueError(f"expected a whole number or a percentage like 50%, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"expected a non-negative number, got {value}")
        return value, False
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%") and text[:-1].strip().isascii() and text[:-1].strip().isdigit():
            pct = int(text[:-1])
            if pct > 100:
                raise ValueError(f"a percentage cannot exceed 100%, got {value!r}")
            return pct, True
        if text.isascii() and text.isdigit():
            return int(text), False
    raise ValueError(f"expected a whole number or a percentage like 50%, got {value!r}")
