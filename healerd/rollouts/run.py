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
import contextlib
import os
import signal
import time
from typing import TYPE_CHECKING, Any

import structlog
from structlog.contextvars import bound_contextvars

from ..config import Mode, ServiceConfig
from ..events import Event, EventType, Severity
from ..health import Condition, ProbationOutcome, ServiceState
from ..judge import Samples, Verdict, judge
from ..machines import Lifecycle, Machine, Origin
from ..providers.base import ProviderError
from ..results import CheckResult, Status
from ..store import STORE_FAULTS, Fenced, VersionRecord
from .record import Rollout, Stage, version_record

if TYPE_CHECKING:
    from ..health import CheckKey
    from .manager import Rollouts

log = structlog.get_logger("healerd.rollout")

#: seconds between looks at the world while waiting (a hold, a bake), besides the wake-ups
TICK = 1.0
#: seconds between writes of the bake's samples to the rollout record
SAMPLE_SAVE = 5.0
#: seconds before a run the store failed under goes on
STORE_RETRY = 5.0
LIVE = (Lifecycle.LAUNCHING, Lifecycle.PROBATION, Lifecycle.IN_SERVICE)
GONE = (Lifecycle.TERMINATED, Lifecycle.RELEASED)


class Rollback(Exception):
    """The rollout fails: roll back with this reason (and the judge's figures, when it is the judge's call)."""

    def __init__(self, reason: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(reason)
        self.figures = figures or {}


class Unconfigured(Exception):
    """The service or its image left the config: the run stops, its record kept for a start that has them."""


class RolloutRun:
    def __init__(self, host: Rollouts, r: Rollout) -> None:
        self.host = host
        self.r = r
        self.p = r.params
        self.fleet = host.fleet
        self.monitor = host.monitor
        self.wake = host.wakes[r.service]

    @property
    def svc(self) -> ServiceConfig:
        return self.host.config.services[self.r.service]

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

    def _configured(self) -> bool:
        """False when the service or its image left the config (the rollout waits, recorded, for a restart with
        them); a Rollback when the candidate version did (nothing may be launched from it any more)."""
        r, config = self.r, self.host.config
        svc, image = config.services.get(r.service), config.images.get(r.image)
        if svc is None or image is None or svc.image != r.image:
            log.warning("the service or its image is no longer configured; the rollout stops where it is")
            return False
        if r.version not in image.versions and r.stage is not Stage.ROLLED_BACK:
            raise Rollback(f"version {r.version} was removed from the config of image {r.image}")
        return True

    async def _stages(self) -> None:
        r = self.r
        while r.active:
            try:
                if not self._configured():
                    raise Unconfigured(r.service)
                if r.stage is Stage.CANARY:
                    await self._canary()
                elif r.stage is Stage.BAKE:
                    await self._bake()
                elif r.stage is Stage.PROMOTED:
                    await self._promote()
                elif r.stage is Stage.REFRESH:
                    await self._refresh(r.version, reverting=False)
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

    async def _enter(self, stage: Stage, reason: str = "", announce: Event | None = None) -> None:
        """The rollout is at `stage` (recorded with the event announcing it, then the event is published)."""
        self.r.stage = stage
        if reason:
            self.r.reason = reason
        if announce is not None:
            await self.host.announce(self.r, announce)
        else:
            await self.host.save(self.r)
        log.info("rollout stage", stage=stage.value, reason=reason or None)
        self._crash_point(f"rollout.{stage.value}")

    def _crash_point(self, where: str) -> None:
        if self.host.crash_at and self.host.crash_at == where:
            log.warning("fault injection: killing healerd", at=where)
            os.kill(os.getpid(), signal.SIGKILL)

    # -- canary -------------------------------------------------------------------------------------------
    async def _canary(self) -> None:
        await self._hold()
        machines = [await self._machine_for(f"canary-{i}", self.r.version, "canary") for i in range(self.p.canary)]
        self._progress(canary=[m.id for m in machines])
        await self._ready(machines, "canary")
        self.r.data["canaries"] = [m.id for m in machines]
        self.r.data["bake_started_at"] = time.time()
        log.info("canary in rotation; baking", canaries=[m.id for m in machines], bake=self.p.bake)
        await self._enter(Stage.BAKE)

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
                canary.add(result.status is Status.OK, result.duration)
                return
            m = self.monitor.machine(r.service, key.machine)
            if m is not None and m.lifecycle is Lifecycle.IN_SERVICE and "retiring" not in m.attributes:
                baseline.add(result.status is Status.OK, result.duration)

        self.monitor.taps.append(tap)
        try:
            while True:
                await self._hold(bake=True)
                now = time.time()
                for cid in canaries:
                    self._canary_fine(cid)
                self._service_fine()
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
                await self._sleep(min(SAMPLE_SAVE, max(0.05, started + self.p.bake - now)))
        finally:
            self.monitor.taps.remove(tap)

    async def _judged(self, verdict: Verdict) -> None:
        self.r.data.pop("samples", None)  # the figures stay in `judge`
        self.r.data.pop("waiting", None)
        log.info("canary judged", outcome=verdict.outcome, reason=verdict.reason)
        await self._enter(Stage.PROMOTED, f"the judge passed {self.r.version}: {verdict.reason}")

    def _canary_fine(self, machine_id: str) -> None:
        m = self.monitor.machine(self.r.service, machine_id)
        if m is None or m.lifecycle is not Lifecycle.IN_SERVICE:
            raise Rollback(f"canary {machine_id} left service ({m.lifecycle.value if m else 'gone'})")
        health = self.monitor.book.machine(self.r.service, machine_id)
        if health is not None and health.condition is Condition.DOWN:
            raise Rollback(f"canary {machine_id} is down: {health.problem()}")

    def _service_fine(self) -> None:
        health = self.monitor.book.services.get(self.r.service)
        if health is not None and health.settled and health.state is ServiceState.DOWN:
            raise Rollback(f"{self.r.service} fell below min_healthy ({self.svc.min_healthy} machines)")

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
            self.fleet.known_good[r.image] = r.version
            await self._tell_provider(r.version)
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
        await self._enter(Stage.REFRESH)

    async def _tell_provider(self, version: str) -> None:
        spec = self.host.config.images[self.r.image].versions.get(version)
        if spec is None:
            return
        try:
            await self.fleet.provider(self.svc).on_promoted(self.svc, spec)
        except ProviderError as exc:  # the rollout goes on: healerd launches from the version it names itself
            log.error("the provider could not be told the known-good version", version=version, error=str(exc))

    async def _complete(self) -> None:
        r = self.r
        took = self._end() - r.started_at
        self.host.metrics.counter("rollouts").labels(r.service, "completed").inc()
        done = self.host.event(
            r,
            EventType.ROLLOUT_COMPLETED,
            f"rollout of {r.version} to {r.service} completed in {took:.0f}s",
            duration=round(took, 3),
        )
        await self._enter(Stage.COMPLETED, f"{r.service} runs {r.version} on every machine", done)

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
            self.fleet.known_good[r.image] = r.previous
            await self._tell_provider(r.previous)
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
        await self._enter(Stage.ROLLED_BACK, reason, back_event)

    async def _revert(self) -> None:
        r = self.r
        if r.promoted:
            try:
                await self._refresh(r.previous, reverting=True)
            except (Rollback, ProviderError) as exc:
                return await self._stuck(f"could not refresh {r.service} back to {r.previous}: {exc}")
        for m in self._mine():
            await self._retire(m, f"rollout of {r.version} rolled back")
        self._end()
        await self.host.save(r)
        self.host.metrics.counter("rollouts").labels(r.service, "rolled_back").inc()
        log.info("rollout rolled back", machines_left=len(self._mine()))

    async def _stuck(self, why: str) -> None:
        r = self.r
        self._end()
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

    # -- refresh ------------------------------------------------------------------------------------------
    async def _refresh(self, target: str, *, reverting: bool) -> None:
        """Replace the machines not of `target`, max_surge + max_unavailable at a time, until `desired` of
        `target` serve. Each wave is recorded before it acts: victims, replacements, who is out already."""
        r, svc = self.r, self.svc
        role = "revert" if reverting else "refresh"
        while True:
            await self._hold(abortable=not reverting)
            if not reverting:
                self._service_fine()
            wave = r.data.get("wave")
            if wave and wave.get("target") == target:
                await self._wave(wave, target, role)
                r.data.pop("wave", None)
                await self.host.save(r)
                continue
            serving = [m for m in self._serving()]
            new = [m for m in serving if m.attributes.get("image_version") == target]
            old = sorted(
                (m for m in serving if m.attributes.get("image_version") != target),
                key=lambda m: (float(m.attributes.get("launched_at") or 0.0), m.id),
            )
            self._progress(target=target, new=len(new), old=len(old), desired=svc.desired)
            if not old:
                if len(new) >= svc.desired:
                    return
                if self._healing():  # an incident is replacing a machine: it fills the gap, not the rollout
                    await self._sleep(TICK)
                    continue
                wave = {"target": target, "victims": [], "extra": svc.desired - len(new), "out": []}
            elif len(new) + len(old) > svc.desired:
                # above desired (the canary was extra): the oldest old machine goes without a replacement
                await self._retire(old[0], f"refreshed to {target} (above desired)")
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
                await self._retire_id(vid, f"replaced by {target} (taken out first: max_unavailable)")
                out.append(vid)
                await self.host.save(r)
        slots = [f"for-{vid}" for vid in victims] + [
            f"extra-{r.data.get('waves', 0)}-{i}" for i in range(wave.get("extra", 0))
        ]
        machines = [await self._machine_for(slot, target, role) for slot in slots]
        self._crash_point("rollout.launched")
        await self._ready(machines, role)
        for vid in victims:
            if vid not in out:
                await self._retire_id(vid, f"replaced by {target}")
                out.append(vid)
                await self.host.save(r)
                self._crash_point("rollout.retired")
        r.data["waves"] = int(r.data.get("waves", 0)) + 1

    async def _room_for_one_out(self, reverting: bool) -> None:
        """Wait until taking one more machine out leaves at least max(min_healthy, desired - max_unavailable)."""
        svc = self.svc
        floor = max(svc.min_healthy, svc.desired - self.p.max_unavailable)
        while True:
            up = [m for m in self._serving() if self._condition(m.id) is Condition.UP]
            if len(up) - 1 >= floor:
                self._wait_reason("")
                return
            self._wait_reason(f"{len(up)} healthy in rotation: taking one out would leave fewer than {floor}")
            await self._hold(abortable=not reverting)
            await self._sleep(TICK)

    # -- machines -----------------------------------------------------------------------------------------
    async def _machine_for(self, slot: str, version: str, role: str) -> Machine:
        """The machine of this rollout's `slot`: found again if it was recorded, else launched from `version`."""
        svc = self.svc
        provider = self.fleet.provider(svc)
        for m in await self.host.store.machines.load(svc.name):
            if (
                m.attributes.get("rollout") != self.r.id
                or m.attributes.get("rollout_slot") != slot
                or m.attributes.get("became")
            ):
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
        self._crash_point(f"rollout.launched:{role}")
        return machine

    async def _ready(self, machines: list[Machine], role: str) -> None:
        """Each machine passes probation and enters rotation; one that fails is retired and the rollout fails."""
        outcomes = await asyncio.gather(*(self._probation(m.id) for m in machines))
        if self.r.stage is not Stage.ROLLED_BACK and self.r.data.get("abort"):
            raise Rollback(str(self.r.data["abort"]))
        failed = [(m, why) for m, why in zip(machines, outcomes, strict=True) if why]
        for m, _ in failed:
            await self._retire_id(m.id, f"failed probation as a {role} machine")
        if failed:
            m, why = failed[0]
            raise Rollback(f"{role} machine {m.id} of {m.attributes.get('image_version')} failed probation: {why}")
        for m in machines:
            await self.fleet.put_in_service(self.svc, m.id)

    async def _probation(self, machine_id: str) -> str | None:
        svc = self.svc
        m = self.monitor.machine(svc.name, machine_id)
        if m is not None and m.lifecycle is Lifecycle.IN_SERVICE:
            return None
        deadline = float((m.attributes.get("launched_at") if m else None) or time.time()) + self.p.probation_timeout
        with self.monitor.watch(svc.name, machine_id) as result:
            while True:
                result.clear()
                if self.r.stage is not Stage.ROLLED_BACK and self.r.data.get("abort"):
                    return str(self.r.data["abort"])
                outcome = self.fleet.probation(svc, machine_id, time.time())
                if outcome is ProbationOutcome.PASSED:
                    return None
                if outcome is ProbationOutcome.FAILED:
                    health = self.monitor.book.machine(svc.name, machine_id)
                    return f"its checks failed ({health.problem() if health else 'no result'})"
                if time.time() > deadline:
                    return f"its checks did not pass within {self.p.probation_timeout:g}s"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(result.wait(), 0.5)

    async def _retire_id(self, machine_id: str, why: str) -> None:
        m = self.monitor.machine(self.r.service, machine_id) or await self.host.store.machines.get(
            self.r.service, machine_id
        )
        if m is not None:
            await self._retire(m, why)

    async def _retire(self, m: Machine, why: str) -> None:
        """Out of rotation, drained, released or terminated; never a quarantined machine (an incident keeps it)."""
        m = self.monitor.machine(m.service, m.id) or m
        if m.lifecycle in GONE or m.lifecycle is Lifecycle.QUARANTINED:
            return
        await self.fleet.retire(self.svc, m, why, drain=self.p.drain if m.lifecycle is Lifecycle.IN_SERVICE else 0.0)

    def _serving(self) -> list[Machine]:
        return [
            m
            for m in self.monitor.machines.get(self.r.service, {}).values()
            if m.lifecycle is Lifecycle.IN_SERVICE and "retiring" not in m.attributes
        ]

    def _mine(self) -> list[Machine]:
        """This rollout's machines of the candidate still running (launching, on probation or serving)."""
        return [
            m
            for m in self.monitor.machines.get(self.r.service, {}).values()
            if m.attributes.get("rollout") == self.r.id
            and m.attributes.get("image_version") == self.r.version
            and m.lifecycle in LIVE
        ]

    def _condition(self, machine_id: str) -> Condition | None:
        health = self.monitor.book.machine(self.r.service, machine_id)
        return health.condition if health else None

    def _healing(self) -> bool:
        return bool(self.host.incidents.machines(self.r.service))

    # -- holds --------------------------------------------------------------------------------------------
    async def _hold(self, *, abortable: bool = True, bake: bool = False) -> None:
        """Wait while the rollout or healerd is paused, the service is not in auto, or one of its incidents is
        being remediated (the bake goes on meanwhile: only its verdict waits). An abort fails the rollout."""
        host, r = self.host, self.r
        while True:
            if not self._configured():
                raise Unconfigured(r.service)
            if abortable and r.data.get("abort"):
                raise Rollback(str(r.data["abort"]))
            why = ""
            if r.paused:
                why = "the rollout is paused (healerd rollout resume)"
            elif host.controls.paused:
                why = "healerd is paused"
            elif (mode := host.controls.mode_for(r.service)) is not Mode.AUTO:
                why = f"{r.service} is in mode {mode.value}"
            elif host.incidents.remediating(r.service) and not bake:
                why = f"an incident of {r.service} is being remediated"
            if not why:
                if r.data.get("waiting", "").startswith("held:"):
                    self._wait_reason("")
                    await host.save(r)
                return
            if self._wait_reason(f"held: {why}"):
                await host.save(r)
                log.info("rollout held", reason=why)
            await self._sleep(TICK)

    def _wait_reason(self, why: str) -> bool:
        """Set what the rollout waits for; True when it changed."""
        if self.r.data.get("waiting", "") == why:
            return False
        if why:
            self.r.data["waiting"] = why
        else:
            self.r.data.pop("waiting", None)
        return True

    def _end(self) -> float:
        """The rollout ends now (returned): not active, not paused, waiting for nothing."""
        r = self.r
        r.active = r.paused = False
        r.ended_at = time.time()
        for key in ("wave", "waiting", "samples"):
            r.data.pop(key, None)
        return r.ended_at

    def _progress(self, **figures: Any) -> None:
        self.r.data["progress"] = figures

    async def _sleep(self, seconds: float) -> None:
        self.wake.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)
