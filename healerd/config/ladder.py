"""The escalation ladder of a service: the playbooks tried in order while a machine stays sick (repair
before replace), and how often a machine may be repaired before it goes straight to the last rung."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..durations import DAY, parse_duration, require_above_zero


class Rung(BaseModel):
    """One rung: a playbook, and how long it may take before the ladder moves on (None: its steps' own)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    playbook: str
    timeout: float | None = None

    @field_validator("timeout", mode="before")
    @classmethod
    def _timeout(cls, v: object) -> float | None:
        if v is None:
            return None
        return require_above_zero(parse_duration(v, at_most=DAY, what="timeout"), what="timeout", example="2m")


class MaxRepairs(BaseModel):
    """A machine repaired `count` times within `per` seconds goes straight to the ladder's last rung."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    count: int = Field(ge=1, le=1000)
    per: float = 3600.0

    @field_validator("per", mode="before")
    @classmethod
    def _per(cls, v: object) -> float:
        return require_above_zero(parse_duration(v, what="per"), what="per", example="1h")


def rungs(ladder: list[Rung] | None, playbook: str, *, named: bool, managed: bool) -> tuple[Rung, ...]:
    """A service's rungs: its `ladder`; else its one `playbook` when healerd launches its machines (`managed`)
    or the playbook was `named`; else none (machines healerd cannot replace: out of rotation, a human acts)."""
    if ladder:
        return tuple(ladder)
    if managed or named:
        return (Rung(playbook=playbook),)
    return ()
