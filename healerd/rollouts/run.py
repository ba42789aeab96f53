"""One rollout through its stages: canary → bake → promoted → refresh → completed, or rolled_back.

Every step is recorded in the rollout's row before the next one starts, and machines are found again by the
`rollout` and `rollout_slot` attributes they are recorded with before they start: after `kill -9` the run
picks up at its stage and re-finds its machines, launching none twice and leaving none behind.

A rollback before the promotion retires the candidate's machines. After it (a refresh that fails, an abort,
the service falling below min_healthy), the previous version is known-good again and the fleet is refreshed
back to it, within the same max_surge / max_unavailable.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import structlog
from structlog.contextvars import bound_contextvars

from ..events import EventType, Severity
from ..providers.base import ProviderError
from ..results import CheckResult, Status
from ..store import STORE_FAULTS, Fenced, VersionRecord
from .judge import Samples, Verdict, in_baseline, judge
from .machines import RolloutMachines
from .record import Rollout, Stage, version_record
from .refresh import FleetRefresh
from .steps import STORE_RETRY, Rollback, RolloutSteps, Unconfigured

if TYPE_CHECKING:
    from ..health import CheckKey
    from .steps import RolloutHost

log = structlog.get_logger("healerd.rollout")

#: seconds between writes of the bake's samples to the rollout record
SAMPLE_SAVE = 5.0


class RolloutRun:
    """One rollout through its stages (see the module's docstring): the stages decide, their steps
    (`RolloutSteps`), machines (`RolloutMachines`) and refresh (`FleetRefresh`) act."""

    def __init__(self, host: RolloutHost, r: Rollout) -> None:
        self.host = host
        self.r = r
        self.p = r.params
        self.monitor = host.monitor
        self.steps = RolloutSteps(host, r)
        self.machines = RolloutMachines(host, r, steps=self.steps)
        self.refresh = FleetRefresh(host, r, steps=self.steps, machines=self.machines)

    # -- the run ------------------------------------------------------------------------------------------
    async def run(self) -> None:
        with bound_contextvars(service=self.r.service, rollout=self.r.id, version=self.r.version):
            while self.r.active:
                try:
                    await self._stages()
                except Fenced as exc:  # the new leader resumes it from the record
                    log.warning("rollout left to the new leader", reason=str(exc))
                    return
                except Unconfigured:
                    return
                except STORE_FAULTS as exc:
                    log.error(
                        "the state store failed during the rollout; it goes on when the store works",
                        error=str(exc)[:300],
                    )
                    await asyncio.sleep(STORE_RETRY)
                except asyncio.CancelledError:
                    raise
                except Exception:  # a bug: said with its traceback, and the run goes on from its record (idempotent)
                    log.exception("rollout step raised; trying again")
                    await asyncio.sleep(STORE_RETRY)

    async def _stages(self) -> None:
        r = self.r
        while r.active:
            try:
                if not self.steps.configured():
                    raise Unconfigured(r.service)
                if r.stage is Stage.CANARY:
                    await self._canary()
                elif r.stage is Stage.BAKE:
                    await self._bake()
                elif r.stage is Stage.PROMOTED:
                    await self._promote()
                elif r.stage is Stage.REFRESH:
                    await self.refresh.run(r.version, reverting=False)
                    await self._complete()
                elif r.stage is Stage.ROLLED_BACK:
                    await self._revert()
                else:
                    r.active = False
                    await self.host.save(r)
            except Rollback as exc:
                await self._roll_back(str(exc), exc.figures)
            except ProviderError as exc:
                await self._roll_back(f"the provider failed: {exc}", {})

    # -- canary -------------------------------------------------------------------------------------------
    async def _canary(self) -> None:
        await self.steps.hold()
        machines = [
            await self.machines.machine_for(f"canary-{i}", self.r.version, "canary") for i in range(self.p.canary)
        ]
        self.steps.progress(canary=[m.id for m in machines])
        await self.machines.ready(machines, "canary")
        self.r.data["canaries"] = [m.id for m in machines]
        self.r.data["bake_started_at"] = time.time()
        log.info("canary in rotation; baking", canaries=[m.id for m in machines], bake=self.p.bake)
        await self.steps.enter(Stage.BAKE)

    # -- bake ---------------------------------------------------------------------------------------------
    async def _bake(self) -> None:
        r = self.r
        started = float(r.data.get("bake_started_at") or time.time())
        canaries = set(r.data.get("canaries", []))
        samples = r.data.get("samples", {})
        canary, baseline = Samples.from_dict(samples.get("canary")), Samples.from_dict(samples.get("baseline"))

        def tap(key: CheckKey, result: CheckResult, ts: float) -> None:
            if key.service != r.service or ts < started:
                return
            if key.machine in canaries:
                canary.add(result.status is Status.OK, result.duration, key.machine)
                return
            health = self.monitor.book.machine(r.service, key.machine)
            condition = health.condition if health is not None else None
            if in_baseline(self.monitor.machine(r.service, key.machine), condition, r.previous):
                baseline.add(result.status is Status.OK, result.duration, key.machine)

        self.monitor.taps.append(tap)
        try:
            while True:
                await self.steps.hold(bake=True)
                now = time.time()
                for cid in canaries:
                    self.steps.canary_fine(cid)
                self.steps.service_fine()
                verdict = judge(canary, baseline, self.p.judge)
                r.data["samples"] = {"canary": canary.as_dict(), "baseline": baseline.as_dict()}
                r.data["judge"] = {"outcome": verdict.outcome, "reason": verdict.reason, **verdict.figures}
                if now >= started + self.p.bake:
                    if verdict.failed:
                        raise Rollback(f"the judge found {r.version} worse: {verdict.reason}", verdict.figures)
                    if verdict.passed:
                        return await self._judged(verdict)
                    if now >= started + self.p.bake_limit:
                        raise Rollback(
                            f"not enough results after {self.p.bake_limit:g}s of bake: {verdict.reason}",
                            verdict.figures,
                        )
                    r.data["waiting"] = f"bake extended: {verdict.reason}"
                await self.host.save(r)
                await self.steps.sleep(min(SAMPLE_SAVE, max(0.05, started + self.p.bake - now)))
        finally:
            self.monitor.taps.remove(tap)

    async def _judged(self, verdict: Verdict) -> None:
        self.r.data.pop("samples", None)  # the figures stay in `judge`
        self.r.data.pop("waiting", None)
        log.info("canary judged", outcome=verdict.outcome, reason=verdict.reason)
        await self.steps.enter(Stage.PROMOTED, f"the judge passed {self.r.version}: {verdict.reason}")

    # -- promotion ----------------------------------------------------------------------------------------
    async def _promote(self) -> None:
        r = self.r
        if not r.promoted:
            now = time.time()
            judged = r.data.get("judge", {})
            evidence = {
                "rollout": r.id,
                "judge": judged,
                "canaries": r.data.get("canaries", []),
                "by": r.data.get("by", ""),
            }
            record = version_record(r, "known_good", judged.get("reason", "promoted"), now, evidence)
            await self.host.store.images.promote(
                r.image, record, r.previous, self.host.config.images[r.image].known_good
            )
            self.host.fleet.known_good[r.image] = r.version
            await self.steps.tell_provider(r.version)
            r.data["promoted_at"] = now
            promoted = self.host.event(
                r,
                EventType.ROLLOUT_PROMOTED,
                f"{r.image} {r.version} is known-good (was {r.previous}): {judged.get('reason', '')}; refreshing "
                f"{r.service}",
                judge=judged,
            )
            await self.host.announce(r, promoted)
            log.info("candidate promoted", previous=r.previous)
        await self.steps.enter(Stage.REFRESH)

    async def _complete(self) -> None:
        r = self.r
        took = self.steps.end() - r.started_at
        self.host.metrics.counter("rollouts").labels(r.service, "completed").inc()
        done = self.host.event(
            r,
            EventType.ROLLOUT_COMPLETED,
            f"rollout of {r.version} to {r.service} completed in {took:.0f}s",
            duration=round(took, 3),
        )
        await self.steps.enter(Stage.COMPLETED, f"{r.service} runs {r.version} on every machine", done)

    # -- rollback -----------------------------------------------------------------------------------------
    async def _roll_back(self, reason: str, figures: dict[str, Any]) -> None:
        r = self.r
        now = time.time()
        log.warning("rolling back", reason=reason, stage=r.stage.value)
        at = r.stage.value
        r.data["failed_stage"] = at
        if figures:
            r.data["judge"] = {**r.data.get("judge", {}), "outcome": "fail", **figures}
        r.data.pop("samples", None)
        image = self.host.config.images[r.image]
        if r.promoted:
            # the previous version is known-good again, and the fleet goes back to it
            back = VersionRecord(
                r.image,
                r.previous,
                "known_good",
                f"restored: rollout {r.id} of {r.version} rolled back",
                f"rollout {r.id}",
                now,
                {},
            )
            await self.host.store.images.promote(r.image, back, None, image.known_good)
            self.host.fleet.known_good[r.image] = r.previous
            await self.steps.tell_provider(r.previous)
        await self.host.store.images.mark(
            version_record(r, "rejected", reason, now, {"rollout": r.id, "stage": at, "judge": r.data.get("judge", {})})
        )
        back_event = self.host.event(
            r,
            EventType.ROLLOUT_ROLLED_BACK,
            f"rollout of {r.version} to {r.service} rolled back at {at}: {reason}; known-good stays {r.previous}",
            Severity.WARNING,
            reason=reason,
            failed_stage=at,
            judge=r.data.get("judge", {}),
        )
        await self.steps.enter(Stage.ROLLED_BACK, reason, back_event)

    async def _revert(self) -> None:
        r = self.r
        if r.promoted:
            try:
                await self.refresh.run(r.previous, reverting=True)
            except (Rollback, ProviderError) as exc:
                return await self._stuck(f"could not refresh {r.service} back to {r.previous}: {exc}")
        for m in self.machines.mine():
            await self.machines.retire(m, f"rollout of {r.version} rolled back")
        self.steps.end()
        await self.host.save(r)
        self.host.metrics.counter("rollouts").labels(r.service, "rolled_back").inc()
        log.info("rollout rolled back", machines_left=len(self.machines.mine()))

    async def _stuck(self, why: str) -> None:
        r = self.r
        self.steps.end()
        r.reason = f"{r.reason}; {why}: a human is needed"
        self.host.metrics.counter("rollouts").labels(r.service, "rolled_back").inc()
        stuck = self.host.event(
            r,
            EventType.ROLLOUT_ROLLED_BACK,
            f"the rollback of {r.version} on {r.service} is stuck: {why}; a human is needed",
            Severity.CRITICAL,
            reason=why,
        )
        await self.host.announce(r, stuck)
        log.error("the rollback is stuck; a human is needed", reason=why)
