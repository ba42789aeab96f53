"""A rollout's machines: found again by the slot they are recorded with or launched, taken through probation
into rotation, and retired (drained, never quarantined)."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from .._aio import wait_event
from ..health import Condition
from ..machines import Lifecycle, Machine, Origin, launched_at
from ..probation import ProbationOutcome
from ..providers.base import ProviderError
from .record import Rollout, Stage
from .steps import Rollback

if TYPE_CHECKING:
    from .steps import RolloutHost, RolloutSteps

LIVE = (Lifecycle.LAUNCHING, Lifecycle.PROBATION, Lifecycle.IN_SERVICE)
GONE = (Lifecycle.TERMINATED, Lifecycle.RELEASED)


class RolloutMachines:
    """The machines of one rollout: its slots' machines, their probation, their retirement, and the service's
    machines it counts."""

    def __init__(self, host: RolloutHost, r: Rollout, *, steps: RolloutSteps) -> None:
        self.host = host
        self.r = r
        self.p = r.params
        self.fleet = host.fleet
        self.monitor = host.monitor
        self.steps = steps

    async def machine_for(self, slot: str, version: str, role: str) -> Machine:
        """The machine of this rollout's `slot`: found again if it was recorded, else launched from `version`."""
        svc = self.steps.svc
        provider = self.fleet.provider(svc)
        for m in await self.host.store.machines.load(svc.name):
            if m.attributes.get("rollout") != self.r.id or m.attributes.get("rollout_slot") != slot or m.became:
                continue
            m = self.monitor.machine(svc.name, m.id) or m
            if m.lifecycle is Lifecycle.LAUNCHING:
                return await self.fleet.start(svc, m, None)
            if m.lifecycle in (Lifecycle.PROBATION, Lifecycle.IN_SERVICE):
                if not await provider.alive(m):
                    return await self.fleet.start(svc, m, None)
                return m
            raise Rollback(f"{m.id} ({role} machine of {version}) is {m.lifecycle.value}: it failed earlier")
        attributes = {
            "launched_for": Origin.ROLLOUT.value,
            "rollout": self.r.id,
            "rollout_slot": slot,
            "rollout_role": role,
        }
        try:
            machine = await self.fleet.launch(svc, version, attributes)
        except ProviderError as exc:
            raise Rollback(f"launching a {role} machine of {version} failed: {exc}") from None
        self.steps.crash_point(f"rollout.launched:{role}")
        return machine

    async def ready(self, machines: list[Machine], role: str) -> None:
        """Each machine passes probation and enters rotation; one that fails is retired and the rollout fails."""
        outcomes = await asyncio.gather(*(self._probation(m.id) for m in machines))
        if self.r.stage is not Stage.ROLLED_BACK and self.r.data.get("abort"):
            raise Rollback(str(self.r.data["abort"]))
        failed = [(m, why) for m, why in zip(machines, outcomes, strict=True) if why]
        for m, _ in failed:
            await self.retire_id(m.id, f"failed probation as a {role} machine")
        if failed:
            m, why = failed[0]
            raise Rollback(f"{role} machine {m.id} of {m.attributes.get('image_version')} failed probation: {why}")
        for m in machines:
            await self.fleet.put_in_service(self.steps.svc, m.id)

    async def _probation(self, machine_id: str) -> str | None:
        svc = self.steps.svc
        m = self.monitor.machine(svc.name, machine_id)
        if m is not None and m.lifecycle is Lifecycle.IN_SERVICE:
            return None
        started = launched_at(m, time.time())
        with self.monitor.watch(svc.name, machine_id) as result:
            while True:
                result.clear()
                if self.r.stage is not Stage.ROLLED_BACK and self.r.data.get("abort"):
                    return str(self.r.data["abort"])
                outcome = self.fleet.probation(
                    svc, machine_id, time.time(), timeout=self.p.probation_timeout, started=started
                )
                if outcome is ProbationOutcome.PASSED:
                    return None
                if outcome is ProbationOutcome.FAILED:
                    health = self.monitor.book.machine(svc.name, machine_id)
                    return f"its checks failed ({health.problem() if health else 'no result'})"
                if outcome is ProbationOutcome.TIMED_OUT:
                    return f"its checks did not pass within {self.p.probation_timeout:g}s"
                await wait_event(result, 0.5)

    async def retire_id(self, machine_id: str, why: str) -> None:
        m = self.monitor.machine(self.r.service, machine_id) or await self.host.store.machines.get(
            self.r.service, machine_id
        )
        if m is not None:
            await self.retire(m, why)

    async def retire(self, m: Machine, why: str) -> None:
        """Out of rotation, drained, released or terminated; never a quarantined machine (an incident keeps it)."""
        m = self.monitor.machine(m.service, m.id) or m
        if m.lifecycle in GONE or m.lifecycle is Lifecycle.QUARANTINED:
            return
        await self.fleet.retire(
            self.steps.svc, m, why, drain=self.p.drain if m.lifecycle is Lifecycle.IN_SERVICE else 0.0
        )

    def serving(self) -> list[Machine]:
        return [
            m
            for m in self.monitor.machines.get(self.r.service, {}).values()
            if m.lifecycle is Lifecycle.IN_SERVICE and "retiring" not in m.attributes
        ]

    def mine(self) -> list[Machine]:
        """This rollout's machines of the candidate still running (launching, on probation or serving)."""
        return [
            m
            for m in self.monitor.machines.get(self.r.service, {}).values()
            if m.attributes.get("rollout") == self.r.id and m.image_version == self.r.version and m.lifecycle in LIVE
        ]

    def condition(self, machine_id: str) -> Condition | None:
        health = self.monitor.book.machine(self.r.service, machine_id)
        return health.condition if health else None
