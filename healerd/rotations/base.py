"""What every rotation is: the machines that take traffic, added and removed idempotently; `none` when traffic
is routed elsewhere."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict

from ..machines import Machine


class RotationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rotation:
    """Adds and removes machines from the traffic path. Every call is idempotent."""

    kind: ClassVar[str] = ""
    Config: ClassVar[type[RotationOptions]] = RotationOptions
    #: True for a load balancer that forgets (HAProxy on a reload): the reconcile loop compares it with the
    #: rotation every check interval (`reconcile`), and also brings it in line at start
    reconciles: ClassVar[bool] = False

    def __init__(self, service: str, options: BaseModel, *, state_dir: Path, provider: Any = None) -> None:
        self.service = service
        self.options = options
        self.state_dir = state_dir
        self.provider = provider  # the service's provider (cloud rotations call its API through it)

    async def add(self, machine: Machine) -> None:
        raise NotImplementedError

    async def remove(self, machine: Machine) -> None:
        raise NotImplementedError

    async def addresses(self) -> list[str]:
        """Addresses in rotation now."""
        raise NotImplementedError

    async def sync(self, machines: list[Machine], leaving: Sequence[Machine] = ()) -> None:
        """Make the rotation exactly these machines (at start, after a crash). The `leaving` ones (being
        remediated or retired: a step drains and removes them) are left as they are, neither put back nor cut."""
        raise NotImplementedError

    async def reconcile(self, machines: list[Machine], leaving: Sequence[Machine] = ()) -> list[str]:
        """Like `sync`, for the rotations that reconcile; returns what had to be re-applied, in words."""
        raise NotImplementedError


class NoRotation(Rotation):
    kind = "none"

    async def add(self, machine: Machine) -> None:
        return None

    async def remove(self, machine: Machine) -> None:
        return None

    async def addresses(self) -> list[str]:
        return []

    async def sync(self, machines: list[Machine], leaving: Sequence[Machine] = ()) -> None:
        return None
