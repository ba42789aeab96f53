"""Playbook execution and its step journal (healerd.remediation.runbook): every step journaled before the next starts,
retries, timeouts, `on_failure`, stop and resume, and the `--crash-at` fault-injection point."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

import pytest
from remediation_rig import Rig

import healerd.remediation.playbooks
import healerd.remediation.runbook
from healerd.events import EventType
from healerd.plugins import ACTIONS
from healerd.remediation.actions import Action, StepContext
from healerd.remediation.incidents import Incident, IncidentState
from healerd.remediation.reconcilers import IncidentReconciler
from healerd.remediation.runbook import StepState, retry_delay


async def sick(rig: Rig) -> Incident:
    """A fleet of three with web-0 down and its incident open."""
    for m in ("web-0", "web-1", "web-2"):
        await rig.add(m)
    rig.up("web-1", "web-2")
    rig.down("web-0")
    return await rig.engine.book.open("web", "web-0", "replace-machine", "web-0 is down", rig.t0)


def playbook(*steps: str) -> str:
    return "name: replace-machine\nsteps:\n" + "".join(f"  - {s}\n" for s in steps)


async def journal(rig: Rig, inc: Incident) -> list[tuple[str, str, int]]:
    return [(s["action"], s["state"], s["attempts"]) for s in (await rig.engine.journal.steps(inc.id)).values()]


async def test_every_step_is_journaled_in_order_and_the_view_shows_it(rig_factory: Any) -> None:
    rig = await rig_factory()
    inc = await sick(rig)
    await rig.engine.runbook.begin(rig.service, inc)
    await rig.settle()

    assert inc.state is IncidentState.REMEDIATED
    actions = rig.engine.runbook.playbooks["replace-machine"].actions
    assert await journal(rig, inc) == [(a, "succeeded", 1) for a in actions]
    await rig.store.flush()
    view = await rig.engine.views.incident_view(inc.id)
    assert view is not None and view["replacement"] == rig.provider.launched[0]
    summaries = [t["summary"] for t in view["timeline"] if t["kind"] == "step"]
    assert summaries[:2] == ["step 1 rotation.remove started (attempt 1)", "step 1 rotation.remove succeeded"]
    assert "incident.opened" in [t["type"] for t in view["timeline"] if t["kind"] == "event"]


async def test_a_failing_step_is_retried_then_the_incident_escalates_once(rig_factory: Any) -> None:
    rig = await rig_factory(
        playbook=playbook("action: rotation.remove", "{action: machine.launch_replacement, retries: 2}")
    )
    rig.provider.launch_error = "demo: out of capacity"
    inc = await sick(rig)
    await rig.engine.runbook.begin(rig.service, inc)
    await rig.settle()

    assert await journal(rig, inc) == [("rotation.remove", "succeeded", 1), ("machine.launch_replacement", "failed", 3)]
    assert inc.state is IncidentState.FAILED
    assert inc.error == "step 2 (machine.launch_replacement) failed: demo: out of capacity"
    (failed,) = rig.of(EventType.REMEDIATION_FAILED)
    assert failed.severity.value == "critical" and "a human is needed" in failed.summary
    outcome = {"service": "web", "playbook": "replace-machine", "outcome": "failed"}
    assert rig.sample("healerd_remediations_total", **outcome) == 1.0

    # resolved by hand, the machine still down: the next attempt on it backs off
    await rig.engine.resolve_by_hand(inc.id, "on-call")
    await rig.reconciler(IncidentReconciler).reconcile(rig.service, rig.t0 + 10)
    (again,) = rig.engine.book.active.values()
    assert (again.machine, again.details["suppressed"]) == ("web-0", "backoff")


async def test_on_failure_continue_goes_on_and_a_timeout_is_a_failure(rig_factory: Any) -> None:
    rig = await rig_factory(
        playbook=playbook("{action: machine.launch_replacement, timeout: 50ms, on_failure: continue}", "action: notify")
    )
    rig.provider.launch_hangs = True
    inc = await sick(rig)
    await rig.engine.runbook.begin(rig.service, inc)
    await rig.settle()

    assert await journal(rig, inc) == [("machine.launch_replacement", "continued", 1), ("notify", "succeeded", 1)]
    (row, _) = (await rig.engine.journal.steps(inc.id)).values()
    assert row["error"] == "machine.launch_replacement timed out after 0.05s"
    assert inc.state is IncidentState.REMEDIATED


@pytest.mark.parametrize(("ends", "attempts"), [(True, 1), (False, 3)])
async def test_an_action_whose_timeout_ends_the_playbook_is_not_retried(
    rig_factory: Any, monkeypatch: pytest.MonkeyPatch, ends: bool, attempts: int
) -> None:
    class Hang(Action):
        kind = "test.hang"
        timeout_ends_playbook = ends

        async def run(self, ctx: StepContext[Any]) -> dict[str, Any]:
            await asyncio.Event().wait()
            return {}

    actions = ACTIONS.copy()
    actions.register(Hang, "tests")
    monkeypatch.setattr(healerd.remediation.playbooks, "ACTIONS", actions)
    monkeypatch.setattr(healerd.remediation.runbook, "ACTIONS", actions)
    rig = await rig_factory(playbook=playbook("{action: test.hang, timeout: 50ms, retries: 2}", "action: notify"))
    inc = await sick(rig)
    await rig.engine.runbook.begin(rig.service, inc)
    await rig.settle()

    assert await journal(rig, inc) == [("test.hang", "failed", attempts)]
    assert inc.state is IncidentState.FAILED
    assert inc.error == "step 1 (test.hang) failed: test.hang timed out after 0.05s"


async def test_stop_interrupts_and_resume_finishes_with_one_replacement(rig_factory: Any) -> None:
    rig = await rig_factory()
    rig.provider.launch_hangs = True
    inc = await sick(rig)
    runbook = rig.engine.runbook
    await runbook.begin(rig.service, inc)
    await asyncio.wait_for(rig.provider.launch_reached.wait(), 10)
    await runbook.stop()

    steps = await journal(rig, inc)
    assert steps[-1] == ("machine.launch_replacement", StepState.INTERRUPTED, 1)
    assert inc.state is IncidentState.REMEDIATING  # left resumable

    rig.provider.launch_hangs = False
    await runbook.resume()
    await rig.settle()
    assert inc.state is IncidentState.REMEDIATED
    assert ("machine.launch_replacement", "succeeded", 2) in await journal(rig, inc)
    assert len(rig.provider.launched) == 1
    assert [m.id for m in await rig.store.machines.for_incident(inc.id)] == rig.provider.launched


class Killed(BaseException):
    """What SIGKILL would do to the run: it stops right there (nothing catches it)."""


@pytest.mark.parametrize(
    ("crash_at", "quarantined"), [("machine.quarantine", []), ("machine.quarantine:after", ["web-0"])]
)
async def test_crash_at_kills_when_the_step_is_journaled_as_started(
    rig_factory: Any, monkeypatch: pytest.MonkeyPatch, crash_at: str, quarantined: list[str]
) -> None:
    rig = await rig_factory()
    inc = await sick(rig)
    signals: list[tuple[int, int]] = []

    def kill(pid: int, sig: int) -> None:
        signals.append((pid, sig))
        raise Killed

    monkeypatch.setattr(os, "kill", kill)
    rig.engine.runbook.crash_at = crash_at
    await rig.engine.runbook.begin(rig.service, inc)
    (outcome,) = await asyncio.gather(*rig.engine.runbook.running, return_exceptions=True)

    assert isinstance(outcome, Killed) and signals == [(os.getpid(), signal.SIGKILL)]
    # before: started, its action not run; after: its action ran, its success not journaled
    assert await journal(rig, inc) == [("rotation.remove", "succeeded", 1), ("machine.quarantine", "running", 1)]
    assert rig.provider.quarantined == quarantined


async def test_fault_injection_is_armed_only_by_the_constructor(
    rig_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HEALERD_CRASH_AT", "machine.quarantine")
    rig = await rig_factory()
    assert rig.engine.runbook.crash_at is None
    kills: list[int] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: kills.append(sig))
    inc = await sick(rig)
    await rig.engine.runbook.begin(rig.service, inc)
    await rig.settle()
    assert kills == [] and inc.state is IncidentState.REMEDIATED


def test_retries_back_off_doubling_up_to_30s() -> None:
    assert [retry_delay(a) for a in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
