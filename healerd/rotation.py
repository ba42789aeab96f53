"""Rotations: which machines take traffic. `file` writes the in-service set for a load balancer or a
file-based service discovery; `none` when traffic is routed elsewhere."""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from .durations import parse_duration, require_above_zero
from .machines import Machine
from .paths import resolve_path
from .providers.base import ProviderError


class RotationOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Rotation:
    """Adds and removes machines from the traffic path. Every call is idempotent."""

    kind: ClassVar[str] = ""
    Config: ClassVar[type[RotationOptions]] = RotationOptions
    #: True for a load balancer that forgets (HAProxy on a reload): the reconcile loop compares it with the
    #: rotation every check interval (`reconcile`), and also brings it in line at start
    reconciles: ClassVar[bool] = False

    def __init__(self, service: str, options: BaseModel, state_dir: Path, provider: Any = None) -> None:
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


class FileRotationOptions(RotationOptions):
    path: Path | None = None  # default: <state_dir>/rotation-<service>.json

    @field_validator("path")
    @classmethod
    def _path(cls, v: Path | None) -> Path | None:
        return None if v is None else resolve_path(v)


class FileRotation(Rotation):
    """A JSON file in Prometheus file_sd format, one target group per machine, replaced atomically:

    [{"targets": ["127.0.0.1:20001"], "labels": {"service": "web", "machine": "web-1a2b"}}, ...]
    """

    kind = "file"
    Config = FileRotationOptions

    def __init__(self, service: str, options: BaseModel, state_dir: Path, provider: Any = None) -> None:
        super().__init__(service, options, state_dir, provider)
        assert isinstance(options, FileRotationOptions)
        self.path = options.path or state_dir / f"rotation-{service}.json"
        self._lock = asyncio.Lock()

    def _read(self) -> dict[str, str]:
        try:
            groups = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise RuntimeError(f"rotation file {self.path} is unreadable ({exc}); fix or delete it") from None
        return {g["labels"]["machine"]: g["targets"][0] for g in groups if g.get("targets")}

    def _write(self, members: dict[str, str]) -> None:
        groups = [
            {"targets": [address], "labels": {"service": self.service, "machine": mid}}
            for mid, address in sorted(members.items())
        ]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(groups, f, indent=2)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)  # readers see the old file or the new one, never half of one
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    async def _update(self, change: dict[str, str | None]) -> None:
        async with self._lock:
            members = await asyncio.to_thread(self._read)
            new = dict(members)
            for mid, address in change.items():
                if address is None:
                    new.pop(mid, None)
                else:
                    new[mid] = address
            if new != members or not self.path.exists():
                await asyncio.to_thread(self._write, new)

    async def add(self, machine: Machine) -> None:
        await self._update({machine.id: machine.address})

    async def remove(self, machine: Machine) -> None:
        await self._update({machine.id: None})

    async def addresses(self) -> list[str]:
        return sorted((await asyncio.to_thread(self._read)).values())

    async def members(self) -> dict[str, str]:
        return await asyncio.to_thread(self._read)

    async def sync(self, machines: list[Machine], leaving: Sequence[Machine] = ()) -> None:
        async with self._lock:
            members = await asyncio.to_thread(self._read)
            want = {m.id: m.address for m in machines}
            want.update({m.id: members[m.id] for m in leaving if m.id in members})
            if want != members or not self.path.exists():
                await asyncio.to_thread(self._write, want)


class Elbv2Options(RotationOptions):
    target_group_arns: list[str] = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)  # default: the target group's port
    drain_timeout: float = 300.0  # wait for deregistration (connection draining) at most this long
    healthy_timeout: float = 300.0  # wait for the target group to report a new target healthy

    @field_validator("drain_timeout", "healthy_timeout", mode="before")
    @classmethod
    def _durations(cls, v: object, info: ValidationInfo) -> float:
        # a wait of 0 gives up before the target group could drain a target or see it healthy
        what = info.field_name or "duration"
        return require_above_zero(parse_duration(v, what=what), what=what, example="5m")


class Elbv2Rotation(Rotation):
    """AWS load balancer target groups: remove = deregister and wait for draining (bounded); add = register
    and wait until the target group reports the target healthy."""

    kind = "elbv2"
    Config = Elbv2Options

    @property
    def opts(self) -> Elbv2Options:
        assert isinstance(self.options, Elbv2Options)
        return self.options

    def _target(self, machine: Machine) -> dict[str, Any]:
        target: dict[str, Any] = {"Id": machine.attributes.get("instance_id", machine.id)}
        if self.opts.port:
            target["Port"] = self.opts.port
        return target

    async def _health(self, arn: str, target: dict[str, Any]) -> str:
        out = await self.provider.call("elbv2", "describe_target_health", arn, TargetGroupArn=arn, Targets=[target])
        descs = out.get("TargetHealthDescriptions", [])
        return str(descs[0].get("TargetHealth", {}).get("State", "unused")) if descs else "unused"

    async def _wait(self, arn: str, target: dict[str, Any], done: set[str], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while True:
            state = await self._health(arn, target)
            if state in done:
                return
            if time.monotonic() > deadline:
                raise ProviderError(
                    f"elbv2:DescribeTargetHealth: {target['Id']} in {arn} still {state} after "
                    f"{timeout:g}s waiting to be {what}"
                )
            await asyncio.sleep(2.0)

    async def add(self, machine: Machine) -> None:
        target = self._target(machine)
        for arn in self.opts.target_group_arns:
            await self.provider.call(
                "elbv2", "register_targets", f"{target['Id']} in {arn}", TargetGroupArn=arn, Targets=[target]
            )
            await self._wait(arn, target, {"healthy"}, self.opts.healthy_timeout, "healthy")

    async def remove(self, machine: Machine) -> None:
        target = self._target(machine)
        for arn in self.opts.target_group_arns:
            if await self._health(arn, target) in ("unused",):
                continue  # not registered: nothing to do (moto does not drop detached instances by itself)
            await self.provider.call(
                "elbv2", "deregister_targets", f"{target['Id']} in {arn}", TargetGroupArn=arn, Targets=[target]
            )
            await self._wait(arn, target, {"unused"}, self.opts.drain_timeout, "deregistered")

    async def members(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for arn in self.opts.target_group_arns:
            health = await self.provider.call("elbv2", "describe_target_health", arn, TargetGroupArn=arn)
            for d in health.get("TargetHealthDescriptions", []):
                if d.get("TargetHealth", {}).get("State") != "draining":
                    out[d["Target"]["Id"]] = d["Target"]["Id"]
        return out

    async def addresses(self) -> list[str]:
        return sorted(await self.members())

    async def sync(self, machines: list[Machine], leaving: Sequence[Machine] = ()) -> None:
        """Register the in-service machines that are missing. Other targets (and the `leaving` machines) are
        left alone: they may not be healerd's, and the machines healerd quarantines were deregistered by the
        quarantine step itself."""
        current = await self.members()
        for m in machines:
            if m.attributes.get("instance_id", m.id) not in current:
                await self.add(m)
