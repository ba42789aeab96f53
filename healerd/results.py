"""Check outcomes: the status enum (Nagios semantics) and the result a check run produces."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Status(enum.IntEnum):
    """Nagios plugin semantics; the integer is the plugin exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def severity(self) -> int:
        """Order used to pick the worst of several statuses: OK < UNKNOWN < WARNING < CRITICAL."""
        return _SEVERITY[self]

    @classmethod
    def worst(cls, statuses: list[Status]) -> Status:
        return max(statuses, key=lambda s: s.severity, default=cls.OK)


_SEVERITY = {Status.OK: 0, Status.UNKNOWN: 1, Status.WARNING: 2, Status.CRITICAL: 3}


@dataclass(frozen=True, slots=True)
class PerfDatum:
    """One performance-data item: `'label'=value[UOM];[warn];[crit];[min];[max]`."""

    label: str
    value: float | None  # None for the Nagios 'U' (undetermined) value
    uom: str = ""
    warn: str | None = None
    crit: str | None = None
    min: float | None = None
    max: float | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "label": self.label,
            "value": self.value,
            "uom": self.uom,
            "warn": self.warn,
            "crit": self.crit,
            "min": self.min,
            "max": self.max,
        }


@dataclass(frozen=True, slots=True)
class CheckResult:
    """What one run of one check found. `duration` is filled by the runner (seconds)."""

    status: Status
    message: str = ""
    metrics: tuple[PerfDatum, ...] = field(default=())
    duration: float = 0.0

    @classmethod
    def ok(cls, message: str = "", metrics: tuple[PerfDatum, ...] = ()) -> CheckResult:
        return cls(Status.OK, message, metrics)

    @classmethod
    def warning(cls, message: str, metrics: tuple[PerfDatum, ...] = ()) -> CheckResult:
        return cls(Status.WARNING, message, metrics)

    @classmethod
    def critical(cls, message: str, metrics: tuple[PerfDatum, ...] = ()) -> CheckResult:
        return cls(Status.CRITICAL, message, metrics)

    @classmethod
    def unknown(cls, message: str) -> CheckResult:
        return cls(Status.UNKNOWN, message)
