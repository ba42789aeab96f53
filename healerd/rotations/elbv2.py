"""The `elbv2` rotation: machines registered in and drained from AWS target groups through the provider's
client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from pydantic import Field, ValidationInfo, field_validator

from ..durations import parse_duration, require_above_zero
from ..machines import Machine
from ..providers.base import ProviderError
from .base import Rotation, RotationOptions


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
