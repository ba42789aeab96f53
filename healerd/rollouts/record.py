"""The rollout record (docs/rollouts.md): its stages, the mutable form a run keeps, and what the API shows of it."""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..config.models import RolloutConfig
from ..machines import Lifecycle
from ..store import RolloutRecord, VersionRecord

if TYPE_CHECKING:
    from ..monitor import Monitor


class Stage(enum.StrEnum):
    CANARY = "canary"
    BAKE = "bake"
    PROMOTED = "promoted"
    REFRESH = "refresh"
    COMPLETED = "completed"
    ROLLED_BACK = "rolled_back"


#: stages before the candidate is known-good: its machines are the rollout's to judge, not the healer's to heal
JUDGING = (Stage.CANARY, Stage.BAKE)


class RolloutRefused(Exception):
    """A rollout request that cannot be honoured; `status` is the HTTP status the API answers with."""

    def __init__(self, status: int, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


@dataclass
class Rollout:
    """A rollout as it runs: the store's record, mutable."""

    id: str
    service: str
    image: str
    version: str
    previous: str
    stage: Stage
    active: bool = True
    paused: bool = False
    reason: str = ""
    started_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    ended_at: float | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_record(cls, r: RolloutRecord) -> Rollout:
        return cls(
            r.id,
            r.service,
            r.image,
            r.version,
            r.previous,
            Stage(r.stage),
            r.active,
            r.paused,
            r.reason,
            r.started_at,
            r.updated_at,
            r.ended_at,
            dict(r.data),
        )

    def record(self) -> RolloutRecord:
        return RolloutRecord(
            self.id,
            self.service,
            self.image,
            self.version,
            self.previous,
            self.stage.value,
            self.active,
            self.paused,
            self.reason,
            self.started_at,
            self.updated_at,
            self.ended_at,
            self.data,
        )

    @property
    def params(self) -> RolloutConfig:
        return RolloutConfig.model_validate(self.data.get("params", {}))

    @property
    def promoted(self) -> bool:
        return self.data.get("promoted_at") is not None


def rollout_view(r: RolloutRecord, monitor: Monitor | None = None) -> dict[str, Any]:
    """What the API and the CLI show of a rollout (docs/rollouts.md), with its machines as this node sees them."""
    data = r.data
    params = data.get("params", {})
    machines = []
    if monitor is not None:
        for m in monitor.machines.get(r.service, {}).values():
            if m.attributes.get("rollout") == r.id and m.lifecycle not in (Lifecycle.TERMINATED, Lifecycle.RELEASED):
                health = monitor.book.machine(r.service, m.id)
                machines.append(
                    {
                        "machine": m.id,
                        "address": m.address,
                        "version": m.image_version or "",
                        "role": m.attributes.get("rollout_role", ""),
                        "lifecycle": m.lifecycle.value,
                        "condition": health.condition.value if health else None,
                    }
                )
    return {
        "id": r.id,
        "service": r.service,
        "image": r.image,
        "version": r.version,
        "previous": r.previous,
        "stage": r.stage,
        "active": r.active,
        "paused": r.paused,
        "reason": r.reason,
        "started_at": r.started_at,
        "updated_at": r.updated_at,
        "ended_at": r.ended_at,
        "started_by": data.get("by", ""),
        "canary": params.get("canary"),
        "bake": params.get("bake"),
        "bake_started_at": data.get("bake_started_at"),
        "promoted_at": data.get("promoted_at"),
        "judge": data.get("judge", {}),
        "progress": data.get("progress", {}),
        "waiting": data.get("waiting", ""),
        "machines": sorted(machines, key=lambda m: m["machine"]),
        "params": params,
    }


def version_record(
    r: Rollout, state: str, reason: str, now: float, evidence: dict[str, Any] | None = None
) -> VersionRecord:
    """The candidate's version record as this rollout leaves it."""
    return VersionRecord(r.image, r.version, state, reason, f"rollout {r.id}", now, evidence or {})
