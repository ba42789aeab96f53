"""Parsing of the human units used in config: durations (`500ms`, `5s`, `2m`, `1h`) and percentages."""

from __future__ import annotations

import re

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_FACTORS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from `500ms`, `5s`, `2m`, `1h`, `1d` (a bare number is seconds)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration like 500ms, 5s, 2m or 1h, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"a duration cannot be negative, got {value}")
        return float(value)
    if isinstance(value, str):
        m = _DURATION.match(value)
        if m:
            return float(m.group(1)) * _FACTORS[m.group(2)]
    raise ValueError(f"expected a duration like 500ms, 5s, 2m or 1h, got {value!r}")


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:g}s"
    if seconds < 7200:
        return f"{seconds / 60:g}m"
    return f"{seconds / 3600:g}h"


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
        if text.endswith("%") and text[:-1].strip().isdigit():
            pct = int(text[:-1])
            if pct > 100:
                raise ValueError(f"a percentage cannot exceed 100%, got {value!r}")
            return pct, True
        if text.isdigit():
            return int(text), False
    raise ValueError(f"expected a whole number or a percentage like 50%, got {value!r}")
