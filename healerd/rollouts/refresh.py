"""A rolling refresh: the service's machines replaced by ones of a target version, max_surge + max_unavailable at a
time, each wave recorded before it acts (forward to the candidate, or back to the previous version)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..health import Condition
from .record import Rollout
from .steps import TICK

if TYPE_CHECKING:
    from .machines import RolloutMachines
    from .steps import RolloutHost, RolloutSteps


class FleetRefresh:
    """Replaces one rollout's service's machines with ones of a target version, wave by wave."""

    def __init__(self, host: RolloutHost, r: Rollout, *, steps: RolloutSteps, machines: RolloutMachines) -> None:
        self.host = host
        self.r = r
        self.p = r.params
        self.steps = steps
        self.machines = machines

    async def run(self, target: str, *, reverting: bool) -> None:
        """Replace the machines not of `target`, max_surge + max_unavailable at a time, until `desired` of
        `target` serve. Each wave is recorded before it acts: victims, replacements, who is out already."""
        r, svc = self.r, self.steps.svc
        role = "revert" if reverting else "refresh"
        while True:
            await self.steps.hold(abortable=not reverting)
            if not reverting:
                self.steps.service_fine()
            wave = r.data.get("wave")
            if wave and wave.get("target") == target:
                await self._wave(wave, target, role)
                r.data.pop("wave", None)
                await self.host.save(r)
                continue
            serving = [m for m in self.machines.serving()]
            new = [m for m in serving if m.image_version == target]
            old = sorted(
                (m for m in serving if m.image_version != target),
                key=lambda m: (m.launch_time or 0.0, m.id),
            )
            self.steps.progress(target=target, new=len(new), old=len(old), desired=svc.desired)
            if not old:
                if len(new) >= svc.desired:
                    return
                if self._healing():  # an incident is replacing a machine: it fills the gap, not the rollout
                    await self.steps.sleep(TICK)
                    continue
                wave = {"target": target, "victims": [], "extra": svc.desired - len(new), "out": []}
            elif len(new) + len(old) > svc.desired:
                # above desired (the canary was extra): the oldest old machine goes without a replacement
                await self.machines.retire(old[0], f"refreshed to {target} (above desired)")
                continue
            else:
                k = min(len(old), self.p.max_surge + self.p.max_unavailable)
                wave = {
                    "target": target,
                    "victims": [m.id for m in old[:k]],
                    "out_first": min(self.p.max_unavailable, k),
                    "out": [],
                }
            r.data["wave"] = wave
            await self.host.save(r)

    async def _wave(self, wave: dict[str, Any], target: str, role: str) -> None:
        r = self.r
        victims: list[str] = wave.get("victims", [])
        out: list[str] = wave.setdefault("out", [])
        for vid in victims[: wave.get("out_first", 0)]:
            if vid not in out:
                await self._room_for_one_out(reverting=role == "revert")
                await self.machines.retire_id(vid, f"replaced by {target} (taken out first: max_unavailable)")
                out.append(vid)
                await self.host.save(r)
        slots = [f"for-{vid}" for vid in victims] + [
            f"extra-{r.data.get('waves', 0)}-{i}" for i in range(wave.get("extra", 0))
        ]
        machines = [await self.machines.machine_for(slot, target, role) for slot in slots]
        self.steps.crash_point("rollout.launched")
        await self.machines.ready(machines, role)
        for vid in victims:
            if vid not in out:
                await self.machines.retire_id(vid, f"replaced by {target}")
                out.append(vid)
                await self.host.save(r)
                self.steps.crash_point("rollout.retired")
        r.data["waves"] = int(r.data.get("waves", 0)) + 1

    async def _room_for_one_out(self, reverting: bool) -> None:
        """Wait until taking one more machine out leaves at least max(min_healthy, desired - max_unavailable)."""
        svc = self.steps.svc
        floor = max(svc.min_healthy, svc.desired - self.p.max_unavailable)
        while True:
            up = [m for m in self.machines.serving() if self.machines.condition(m.id) is Condition.UP]
            if len(up) - 1 >= floor:
                self.steps.wait_reason("")
                return
            self.steps.wait_reason(f"{len(up)} healthy in rotation: taking one out would leave fewer than {floor}")
            await self.steps.hold(abortable=not reverting)
            await self.steps.sleep(TICK)

    def _healing(self) -> bool:
        return bool(self.host.incidents.machines(self.r.service))
