"""How a service survives the loss of a zone (a datacenter, an availability zone): when a zone counts as
lost, how much capacity healerd restores elsewhere at once, and what becomes of its machines when it returns."""

from __future__ import annotations

import enum
import math

from pydantic import BaseModel, ConfigDict, field_validator

from ..durations import parse_count_or_percent


class OnReturn(enum.StrEnum):
    RETIRE = "retire"  # the returning machines are terminated: their replacements already serve
    QUARANTINE = "quarantine"  # kept, isolated, with their evidence, for forensics


class ZoneLoss(BaseModel):
    """`remediation.zone_loss`: a zone is lost when `threshold` of its machines are down together while the
    service's other zones are healthy; its share is launched again in the surviving zones, at most
    `max_surge` machines (default: the whole lost share)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threshold: str = "55%"
    max_surge: int | str | None = None
    on_return: OnReturn = OnReturn.RETIRE

    @field_validator("threshold")
    @classmethod
    def _threshold(cls, v: str) -> str:
        pct, is_pct = parse_count_or_percent(v)
        if not is_pct or not 1 <= pct <= 100:
            raise ValueError(f"threshold must be a percentage between 1% and 100% (the default is 55%), got {v!r}")
        return v

    @field_validator("max_surge")
    @classmethod
    def _surge(cls, v: int | str | None) -> int | str | None:
        if v is not None:
            parse_count_or_percent(v)
        return v

    @property
    def fraction(self) -> float:
        return parse_count_or_percent(self.threshold)[0] / 100

    def surge(self, lost: int, desired: int) -> int:
        """How many of `lost` machines are launched again elsewhere (a percentage is of `desired`)."""
        if self.max_surge is None:
            return lost
        count, is_pct = parse_count_or_percent(self.max_surge)
        return min(lost, math.floor(desired * count / 100) if is_pct else count)
