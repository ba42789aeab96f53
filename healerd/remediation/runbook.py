"""Running a playbook for an incident, step by step, with a journal in the store.

Every step's start, outcome and outputs are committed before the next step starts; every action checks
the world first, so re-running a step after `kill -9` neither loses nor duplicates anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import structlog
from structlog.contextvars import bound_contextvars

from ..config import Config, ServiceConfig
from ..events import EventType, Severity
from ..plugins import ACTIONS
from ..providers.base import ProviderError
from ..store import STORE_FAULTS, Fenced
from .actions import FleetHands, QuarantineHands, RepairHands, StepContext, StepFailed
from .incidents import Incident, IncidentBook, IncidentState
from .ladder import RUNG_STEPS, Ladder, RungOutcome, RungResult, next_rung, rung_outcome
from .playbooks import OnFailure, Playbook, Step

if TYPE_CHECKING:
    from ..metrics import Metrics
    from ..store import BaseStore

log = structlog.get_logger("healerd.remediation")


class StepState(enum.StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # this attempt failed (another may follow)
    CONTINUED = "continued"  # failed for good, and the playbook goes on (on_failure: continue)
    INTERRUPTED = "interrupted"  # healerd stopped while it ran: it runs again on resume


def retry_delay(attempts: int) -> float:
    """How long a failed step waits before its next attempt: doubling, at most 30 s."""
    return min(30.0, 2.0 ** min(attempts, 5))


class StepJournal:
    """The `steps` table: one row per (incident, step index), rewritten by each attempt."""

    def __init__(self, store: BaseStore) -> None:
        self.store = store

    async def steps(self, incident: str) -> dict[int, dict[str, Any]]:
        return {s["index"]: s for s in await self.store.incidents.steps(incident)}

    async def record(
        self,
        incident: str,
        idx: int,
        action: str,
        state: StepState,
        attempts: int,
        outputs: dict[str, Any] | None = None,
        error: str | None = None,
        start: bool = False,
    ) -> None:
        now = time.time()
        if start:
            await self.store.incidents.start_step(incident, idx, action, state.value, attempts, now)
        else:
            await self.store.incidents.end_step(incident, idx, state.value, now, outputs or {}, error)

    async def interrupt(self, incident: str) -> None:
        """The steps of this incident still running end as interrupted (healerd stops, or starts after a crash)."""
        await self.store.incidents.mark_running_steps_interrupted(incident, time.time())


#: what a step keeps of its provider's stderr (the tail)
SAID_KEPT = 2000
#: seconds between attempts to go on with a remediation the store failed under
STORE_RETRY = 5.0


class Runbook:
    """Starts, runs and resumes remediations: one task per incident, its steps journaled."""

    def __init__(
        self,
        config: Callable[[], Config],
        incidents: IncidentBook,
        *,
        journal: StepJournal,
        store: BaseStore,
        metrics: Metrics,
        fleet: FleetHands[ServiceConfig],
        quarantine: QuarantineHands[ServiceConfig],
        repair: RepairHands[ServiceConfig],
        ladder: Ladder,
        may_act: Callable[[], bool] = lambda: True,
        crash_at: str | None = None,
        wake: Callable[[], None] = lambda: None,
        on_change: Callable[[], None] = lambda: None,
    ) -> None:
        self._config = config
        self.incidents = incidents
        self.journal = journal
        self.store = store
        self.metrics = metrics
        self.fleet = fleet  # what the actions act through (StepContext.fleet, .quarantine, .repair)
        self.quarantine = quarantine
        self.repair = repair
        self.ladder = ladder  # where a remediation starts, and what each rung's end leads to
        #: Fault injection for the crash-safety tests, armed only by `healerd run --crash-at ACTION[:after]`
        #: (never by the environment): SIGKILL when that step has been journaled as started (or, with
        #: `:after`, when its action has run but its success is not yet journaled).
        self.crash_at = crash_at
        #: in a cluster: True while this node holds the leader lease (checked before every step's action)
        self.may_act = may_act
        self.wake = wake  # a remediation ended: the engine looks again now
        self.on_change = on_change  # a remediation started or ended (gauges follow)
        self.playbooks: dict[str, Playbook] = {}
        self.retry_delay: Callable[[int], float] = retry_delay
        self._tasks: dict[str, asyncio.Task[None]] = {}

    @property
    def config(self) -> Config:
        return self._config()

    def use(self, playbooks: dict[str, Playbook]) -> None:
        """The playbooks loaded (at start, at each reload that passes): remediations started from now use them."""
        self.playbooks = playbooks

    # -- starting and stopping -----------------------------------------------------------------------------
    async def begin(self, svc: ServiceConfig, inc: Incident) -> None:
        if not svc.rungs:  # a machine healerd can neither repair nor replace: out of rotation, a human acts
            await self.ladder.nothing_to_try(svc, inc)
            return
        await self.ladder.start(svc, inc)
        inc.state = IncidentState.REMEDIATING
        inc.details.pop("suppressed", None)
        inc.details["started_at"] = time.time()
        await self.incidents.save(inc)
        self.incidents.emit(
            EventType.REMEDIATION_STARTED,
            inc,
            f"remediating {inc.machine} with playbook {inc.playbook}",
            Severity.WARNING,
            playbook=inc.playbook,
        )
        log.info("remediation started", playbook=inc.playbook)
        self.spawn(inc)

    async def resume(self) -> None:
        """Remediations a stop or a crash interrupted go on from their journal."""
        for inc in list(self.incidents.active.values()):
            if inc.state is IncidentState.REMEDIATING:
                await self.journal.interrupt(inc.id)
                log.info("resuming remediation", incident=inc.id, service=inc.service, machine=inc.machine)
                self.spawn(inc)

    def spawn(self, inc: Incident) -> None:
        self.on_change()
        task = asyncio.create_task(self._run(inc), name=f"healerd-incident-{inc.id}")
        self._tasks[inc.id] = task
        task.add_done_callback(lambda t, i=inc.id: self._tasks.pop(i, None))  # type: ignore[misc]

    @property
    def running(self) -> list[asyncio.Task[None]]:
        """The remediations running now, one task each."""
        return list(self._tasks.values())

    async def stop(self) -> None:
        """Cancel the running remediations, leaving them resumable."""
        tasks = self.running
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for inc in self.incidents.active.values():
            if inc.state is IncidentState.REMEDIATING:
                try:
                    await self.journal.interrupt(inc.id)
                except Fenced:  # no longer the leader: the new one marks them when it resumes
                    return

    def log_dry_run(self, inc: Incident) -> None:
        playbook = self.playbooks.get(inc.playbook)
        for step in playbook.steps if playbook else ():
            log.info(
                "dry-run: would run step",
                step=step.index + 1,
                action=step.action,
                params=step.params.model_dump(),
                timeout=step.timeout,
            )

    # -- running -------------------------------------------------------------------------------------------
    def _crash_point(self, action: str, when: str) -> None:
        target = self.crash_at
        if target and target == (action if when == "before" else f"{action}:after"):
            log.warning("fault injection: killing healerd", at=target)
            os.kill(os.getpid(), signal.SIGKILL)

    async def _run(self, inc: Incident) -> None:
        with bound_contextvars(service=inc.service, machine=inc.machine, incident=inc.id):
            in_progress = self.metrics.gauge("remediations_in_progress").labels(inc.service)
            in_progress.inc()
            try:
                await self._run_resuming(inc)
            except Fenced as exc:  # the new leader resumes it from the journal
                log.warning("remediation left to the new leader", reason=str(exc))
            except Exception as exc:  # a bug: the incident fails, saying so, rather than stay remediating forever
                log.exception("remediation failed unexpectedly")
                with contextlib.suppress(*STORE_FAULTS, Fenced):
                    await self.ladder.failed(inc, f"{type(exc).__name__}: {exc}"[:500])
            finally:
                in_progress.dec()
                self.on_change()

    async def _run_resuming(self, inc: Incident) -> None:
        """Run the playbook; when the store fails under it (a full disk, the database away), go on from the
        journal once it works again: the steps already done are not run twice."""
        while True:
            try:
                await self._run_playbook(inc)
                return
            except STORE_FAULTS as exc:
                log.error(
                    "the state store failed during the remediation; it goes on from the journal when the store works",
                    error=f"{type(exc).__name__}: {exc}"[:300],
                )
            await asyncio.sleep(STORE_RETRY)
            if not self.may_act():
                raise Fenced("this node no longer leads")

    async def _run_playbook(self, inc: Incident) -> None:
        """The incident's rung of the ladder, then what its end leads to: healed, replaced, the next rung, or a
        human."""
        svc = self.config.services.get(inc.service)
        rung = int(inc.details.get("rung", 0))
        rungs = svc.rungs if svc is not None else ()
        playbook = self.playbooks.get(inc.playbook)
        started = float(inc.details.get("started_at", time.time()))
        if svc is None or playbook is None or rung >= len(rungs):
            await self.ladder.failed(inc, f"service or playbook {inc.playbook!r} no longer configured")
            return
        limit = rungs[rung].timeout
        if limit is not None and "rung_started_at" not in inc.details:
            inc.details["rung_started_at"] = time.time()
            await self.incidents.save(inc)
        left = None if limit is None else float(inc.details["rung_started_at"]) + limit - time.time()
        try:
            async with asyncio.timeout(left):
                result = await self._out_then_steps(inc, svc, playbook, rung * RUNG_STEPS)
        except TimeoutError:
            result = RungResult(False, error=f"{playbook.name} did not finish within {limit:g}s", timed_out=True)
        outcome = rung_outcome(result, self.ladder.machine_up(svc, inc.machine), last=rung + 1 == len(rungs))
        if result.ok and outcome is RungOutcome.FAILED:
            result = RungResult(
                False, result.outputs, f"{playbook.name} ran to its end but {inc.machine} is still down"
            )
        self.ladder.count(svc, playbook.name, outcome)
        following = next_rung(rung, len(rungs), outcome)
        if outcome is RungOutcome.HEALED:
            await self.ladder.healed(svc, inc, started)
            self.wake()
        elif outcome in (RungOutcome.REPLACED, RungOutcome.DONE):
            if outcome is RungOutcome.REPLACED:  # quarantined or replaced: it does not come back by itself
                inc.details.pop("out_of_rotation", None)
            await self.ladder.remediated(inc, started)
            self.wake()
        elif following is not None:
            await self.ladder.escalate(svc, inc, following, outcome, result.error)
            self.wake()
        else:
            what = result.error if len(rungs) == 1 else f"no rung mended it (the last: {result.error})"
            if not svc.managed:
                what += f"; {inc.machine} stays out of rotation until its checks pass: a human must act"
            await self.ladder.failed(inc, what)

    async def _out_then_steps(self, inc: Incident, svc: ServiceConfig, playbook: Playbook, base: int) -> RungResult:
        """Out of rotation first (whatever the playbook: a machine confirmed down takes no traffic), then the
        rung's steps."""
        try:
            await self.ladder.out_of_rotation(svc, inc)
        except (ProviderError, RuntimeError) as exc:  # HAProxy away past its retries, a rotation file unwritable
            return RungResult(False, error=f"taking {inc.machine} out of rotation (rotation.remove) failed: {exc}")
        return await self._run_steps(inc, svc, playbook, base)

    async def _run_steps(self, inc: Incident, svc: ServiceConfig, playbook: Playbook, base: int) -> RungResult:
        """One playbook's steps, journaled at `base` + the step's index (each rung keeps its own journal)."""
        journal = await self.journal.steps(inc.id)
        outputs: dict[str, Any] = {}
        for idx, done in journal.items():
            if base <= idx < base + RUNG_STEPS and done["state"] == StepState.SUCCEEDED:
                outputs.update(done["outputs"])
        for step in playbook.steps:
            row = journal.get(base + step.index)
            if row and row["state"] in (StepState.SUCCEEDED, StepState.CONTINUED):
                continue
            with bound_contextvars(step=step.index + 1, action=step.action):
                failure = await self._step(inc, svc, step, row["attempts"] if row else 0, outputs, base)
            if failure is not None:
                error, terminal = failure
                return RungResult(False, outputs, f"step {step.index + 1} ({step.action}) failed: {error}", terminal)
        return RungResult(True, outputs)

    def _with_provider_said(
        self, svc: ServiceConfig, inc: Incident, out: dict[str, Any], since: float
    ) -> dict[str, Any]:
        """The step's outputs, with what the provider said (a command provider's stderr) about the machines it
        acted on: it shows in the incident's timeline."""
        said = "".join(self.fleet.provider_said(svc, m, since) for m in {inc.machine, out.get("replacement")} if m)
        return {**out, "provider_said": said[-SAID_KEPT:]} if said else out

    async def _step(
        self, inc: Incident, svc: ServiceConfig, step: Step, attempts: int, outputs: dict[str, Any], base: int
    ) -> tuple[str, bool] | None:
        """Run one step with its retries. None when the playbook goes on (it succeeded, or failed with
        `on_failure: continue`); else the error and whether it is terminal."""
        action = ACTIONS.get(step.action)
        assert action is not None
        error = ""
        terminal = False
        for _ in range(step.retries + 1):
            attempts += 1
            await self.journal.record(inc.id, base + step.index, step.action, StepState.RUNNING, attempts, start=True)
            if not self.may_act():  # a leader that lost its lease while the journal write was on its way
                raise Fenced(f"step {step.index + 1} ({step.action}) not run: this node no longer leads")
            self._crash_point(step.action, "before")
            ctx = StepContext(self.fleet, self.quarantine, self.repair, inc, svc, step, dict(outputs))
            log.info("step started", attempt=attempts)
            began = time.time()
            try:
                async with asyncio.timeout(step.timeout):
                    out = await action().run(ctx)
            except StepFailed as exc:
                error, terminal = str(exc), exc.terminal
            except TimeoutError:
                error = f"{step.action} timed out after {step.timeout:g}s"
                terminal = action.timeout_ends_playbook
            except ProviderError as exc:
                error = str(exc)
            except asyncio.CancelledError:
                raise
            except STORE_FAULTS as exc:  # the store said so once; the step is tried again (idempotent)
                error = f"{step.action}: the state store failed ({type(exc).__name__}: {exc})"
            except Exception as exc:  # a bug in an action fails the step with its message
                log.exception("step raised")
                error = f"{step.action} raised {type(exc).__name__}: {exc}"
            else:
                self._crash_point(step.action, "after")
                out = self._with_provider_said(svc, inc, out, began)
                outputs.update(out)
                await self.journal.record(inc.id, base + step.index, step.action, StepState.SUCCEEDED, attempts, out)
                log.info("step succeeded", outputs=out)
                if "replacement" in out and inc.replacement != out["replacement"]:
                    inc.replacement = out["replacement"]
                    await self.incidents.save(inc)
                return None
            await self.journal.record(inc.id, base + step.index, step.action, StepState.FAILED, attempts, error=error)
            log.warning("step failed", error=error)
            if terminal:
                break
            await asyncio.sleep(self.retry_delay(attempts))
        if step.on_failure is OnFailure.CONTINUE:
            await self.journal.record(
                inc.id, base + step.index, step.action, StepState.CONTINUED, attempts, error=error
            )
            return None
        return error, terminal
