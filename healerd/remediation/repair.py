"""Repairing a sick machine that healerd keeps (the escalation ladder's lower rungs): restart or reboot it
through its provider, wait for its own checks to pass again, and put it back in rotation."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import structlog

from .._aio import wait_event
from ..health import Condition
from ..providers.base import ProviderUnsupported
from .actions import StepFailed

if TYPE_CHECKING:
    from ..config import ServiceConfig
    from ..monitor import Monitor
    from .fleet import Fleet

log = structlog.get_logger("healerd.remediation")


class Repair:
    def __init__(self, fleet: Fleet, monitor: Monitor) -> None:
        self.fleet = fleet
        self.monitor = monitor

    async def restart(self, svc: ServiceConfig, machine_id: str, verb: str) -> None:
        """`restart` or `reboot` through the service's provider; the machine keeps its id and address."""
        m = await self.fleet.machine(svc.name, machine_id)
        provider = self.fleet.provider(svc)
        call = provider.restart if verb == "restart" else provider.reboot
        try:
            after = await call(m)
        except ProviderUnsupported as exc:
            raise StepFailed(f"{exc}: this rung cannot mend {machine_id}", terminal=True) from None
        if after != m:
            await self.monitor.put_machine(after)
        log.warning("machine repaired through its provider; waiting for its checks", verb=verb)

    async def await_recovered(self, svc: ServiceConfig, machine_id: str, timeout: float) -> None:
        """Until the machine's own checks pass `rise` times in a row (its condition is up again), or `timeout`
        less a second (so the step fails before its own timeout cancels it)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, timeout - 1.0)
        with self.monitor.watch(svc.name, machine_id) as result:
            while True:
                result.clear()
                mh = self.monitor.book.machine(svc.name, machine_id)
                if mh is not None and mh.condition is Condition.UP:
                    return
                left = deadline - loop.time()
                if left <= 0:
                    why = mh.problem() if mh is not None else "no check result"
                    raise StepFailed(f"{machine_id} did not pass its checks within {timeout:g}s ({why})", terminal=True)
                await wait_event(result, min(0.5, left))

    async def return_to_rotation(self, svc: ServiceConfig, machine_id: str) -> None:
        """The repaired machine takes traffic again."""
        m = await self.fleet.machine(svc.name, machine_id)
        await self.fleet.rotations[svc.name].add(m)
