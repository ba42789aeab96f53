"""End to end: the fault matrix. Every way a machine of the field breaks, on the demo fleet, healed by a real
healerd (or, in observe mode, only reported).

Each row is its own fleet (`local` provider, three `python -m healerd.demo` processes, file rotation, the
shipped `replace-machine` playbook) with a webhook notifier pointing at a receiver on loopback. A row breaks
one machine — through the demo machine's `POST /fault` (down, hang, reset, garbage, exit, slow, leak, flap)
or from outside (its process group frozen with SIGSTOP, or killed with SIGKILL) — and asserts what an
operator sees: the rotation file, the quarantine, the replacement, the service state, the incident and its
reason, and the alert. `pytest -s` prints each row's time-to-heal.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

from .fleet import DESIRED, DETECT, TIMEOUT, Healer, fleet_config, launched_ids, set_fault
from .helpers import StartDaemon, wait_until
from .test_alerting import Loopback, Receiver, event_types, loopback, webhook  # noqa: F401 (loopback: a fixture)
from .test_healing import _demo_info, _hold, _nothing_done, _reap_demo_machines  # noqa: F401 (autouse fixture)

pytestmark = pytest.mark.e2e

#: what a network check says when its target does not answer within the fleet's 300 ms timeout (docs/checks.md)
NO_ANSWER = f"no answer within {TIMEOUT * 1000:.0f}ms"
#: from the fault to a healed service: detection, quarantine, replacement launch and probation, with room
#: for a loaded 2-core box running three fleets at once
HEAL_BOUND = DETECT + 20
#: the demo's `leak` adds 100 ms a second: it outgrows the 300 ms timeout after this long
LEAK_ONSET = TIMEOUT / 0.1
#: how long observe mode is watched holding its one incident open
OBSERVE_WINDOW = 8.0


@dataclass
class Fleet:
    healer: Healer
    hook: Receiver
    members: dict[str, str]  # machine id -> address, once up

    def alerts(self, event_type: str, machine: str) -> list[dict[str, Any]]:
        """Events of this type for this machine the webhook receiver accepted."""
        return [
            e
            for h in self.hook.accepted()
            for e in h.body.get("events", [])
            if e["type"] == event_type and e["machine"] == machine
        ]

    def wait_alert(self, event_type: str, machine: str, timeout: float = 15) -> list[dict[str, Any]]:
        return wait_until(
            lambda: self.alerts(event_type, machine),
            timeout,
            f"{event_type} for {machine} at the webhook receiver",
            interval=0.1,
            describe=lambda: f"{self.hook.describe()}\n{self.healer.describe()}",
        )


@pytest.fixture
def fleet(tmp_path: Path, start_daemon: StartDaemon, loopback: Loopback) -> Fleet:  # noqa: F811
    """A demo fleet in auto mode, up (3 in service, optimal, in rotation), alerting a loopback webhook."""
    hook = loopback.serve(Receiver())
    config = fleet_config(tmp_path, free_port())
    config["notifiers"] = {"pager": webhook(hook.url)}
    config["services"]["web"]["notify"] = ["pager"]
    healer = Healer(start_daemon(config, wait="listening"), tmp_path, config)
    return Fleet(healer, hook, healer.wait_fleet_up(timeout=30))


# ---------------------------------------------------------------------------------------------------------
# Faults


def _fault(mode: str) -> Callable[[str], None]:
    def inject(address: str) -> None:
        set_fault(address, mode)

    return inject


def _signal_group(sig: signal.Signals) -> Callable[[str], None]:
    """Signal the machine's whole process group (the local provider starts each in its own session)."""

    def inject(address: str) -> None:
        pid = int(_demo_info(address)["pid"])
        os.killpg(os.getpgid(pid), sig)  # the autouse reaper SIGCONTs and kills every group at teardown

    return inject


@dataclass(frozen=True)
class Row:
    inject: Callable[[str], None]
    #: the incident's summary/timeline names the cause: one of these, case-insensitively (None: not checked)
    reason: tuple[str, ...] | None = None
    #: how long after the fault the checks can start failing
    onset: float = 0.0


ROWS = {
    "down": Row(_fault("down"), ("503",)),
    "hang": Row(_fault("hang"), (NO_ANSWER,)),
    "reset": Row(_fault("reset"), ("reset", "disconnected")),
    "garbage": Row(_fault("garbage")),
    "exit": Row(_fault("exit"), ("refused",)),
    "slow": Row(_fault("slow:1.5"), (NO_ANSWER,)),  # five times the check timeout
    "leak": Row(_fault("leak"), (NO_ANSWER,), onset=LEAK_ONSET),
    "sigstop": Row(_signal_group(signal.SIGSTOP), (NO_ANSWER,)),
    "sigkill": Row(_signal_group(signal.SIGKILL), ("refused",)),
}


def _incident_text(healer: Healer, incident_id: str) -> str:
    inc = healer.incident(incident_id)
    return "\n".join([inc["summary"] or "", *(t["summary"] or "" for t in inc["timeline"])])


# ---------------------------------------------------------------------------------------------------------
# auto: out of rotation, quarantined, replaced, optimal again, resolved — and alerted


@pytest.mark.parametrize("row", list(ROWS), ids=list(ROWS))
def test_fault_is_healed(row: str, fleet: Fleet, tmp_path: Path) -> None:
    healer, members = fleet.healer, fleet.members
    spec = ROWS[row]
    victim = sorted(members)[0]
    address = members[victim]

    spec.inject(address)
    broke = time.monotonic()
    left_rotation: list[float] = []

    def healed() -> dict[str, Any] | None:
        rotation = healer.rotation()
        if victim in rotation:
            return None
        if not left_rotation:
            left_rotation.append(time.monotonic() - broke)
        assert len(rotation) <= DESIRED, rotation
        inc = healer.incident_for(victim)
        if inc is None or inc["state"] != "resolved" or victim not in healer.quarantined():
            return None
        replacement = inc["replacement"]
        in_service = healer.in_service()
        if not replacement or replacement not in in_service or replacement not in rotation:
            return None
        if len(in_service) != DESIRED or healer.service_state() != "optimal":
            return None
        return inc

    bound = HEAL_BOUND + spec.onset
    inc = healer.wait(healed, bound, f"{victim} ({row}) to be quarantined and replaced, the service optimal")
    took = time.monotonic() - broke
    print(f"\n[fault matrix] {row}: out of rotation after {left_rotation[0]:.1f}s, healed after {took:.1f}s")
    assert took <= bound

    # the replacement is a fresh, healthy machine serving in the victim's place
    replacement = inc["replacement"]
    assert replacement not in members, inc
    rotation = healer.rotation()
    assert set(rotation) == (set(members) - {victim}) | {replacement}, rotation
    assert _demo_info(rotation[replacement])["machine"] == replacement
    assert launched_ids(tmp_path) == {*members, replacement}, "exactly one replacement"
    quarantined = healer.quarantined()[victim]
    assert quarantined["incident"] == inc["id"] and quarantined["address"] == address, quarantined

    # the incident says why
    text = _incident_text(healer, inc["id"])
    print(f"[fault matrix] {row}: incident summary: {inc['summary']}")
    if spec.reason is not None:
        assert any(r.lower() in text.lower() for r in spec.reason), (
            f"the incident of a {row} fault names none of {spec.reason}:\n{text}"
        )

    # and on-call was told
    fleet.wait_alert("incident.opened", victim)


# ---------------------------------------------------------------------------------------------------------
# observe: one incident, held open, nothing done, the service degraded


@pytest.mark.parametrize("row", ["down", "hang"])
def test_observe_holds_one_open_incident(row: str, fleet: Fleet, tmp_path: Path) -> None:
    healer, members = fleet.healer, fleet.members
    assert healer.mode({"mode": "observe"})["mode"] == "observe"
    victim = sorted(members)[0]
    ROWS[row].inject(members[victim])

    def held() -> dict[str, Any] | None:
        inc = healer.incident_for(victim)
        return inc if inc and inc["details"].get("suppressed") == "observe" else None

    first = healer.wait(held, DETECT + 5, f"an incident for {victim} held back by observe")
    nothing_done = _nothing_done(healer, members)
    states: list[str] = []

    def probe() -> str | None:
        incidents = [i for i in healer.incidents() if i["machine"] == victim]
        if [i["id"] for i in incidents] != [first["id"]]:
            return f"{victim} has incidents {[(i['id'], i['state']) for i in incidents]}, not just {first['id']}"
        inc = incidents[0]
        if inc["state"] != "open" or inc["details"].get("suppressed") != "observe":
            return f"the incident is {inc['state']} with details {inc['details']}\n{healer.describe()}"
        states.append(healer.service_state())
        if states[-1] != "degraded":
            return f"the service is {states[-1]} with {victim} down and in rotation\n{healer.describe()}"
        return nothing_done()

    _hold(OBSERVE_WINDOW, probe)
    print(f"\n[fault matrix] observe {row}: {len(states)} samples over {OBSERVE_WINDOW:g}s, all degraded")
    assert len(states) >= 10, states
    assert launched_ids(tmp_path) == set(members), "observe launched a machine"
    opened = [e for e in healer.events("incident.opened") if e["machine"] == victim]
    assert len(opened) == 1, opened
    assert [e for e in healer.events("incident.resolved") if e["machine"] == victim] == []
    assert healer.events("remediation.started", "machine.quarantined", "machine.replaced") == []
    if row == "hang":
        assert NO_ANSWER in _incident_text(healer, first["id"])
    assert len(fleet.wait_alert("incident.opened", victim)) == 1
    assert "incident.resolved" not in event_types(fleet.hook.accepted())


# ---------------------------------------------------------------------------------------------------------
# flap: reported, not churned


def test_flapping_machine_is_reported_not_quarantined(fleet: Fleet, tmp_path: Path) -> None:
    healer, members = fleet.healer, fleet.members
    flapper = sorted(members)[0]
    set_fault(members[flapper], "flap")
    started = time.monotonic()

    healer.wait(
        lambda: [e for e in healer.events("machine.flapping") if e["machine"] == flapper],
        10,
        f"a machine.flapping event for {flapper}",
    )
    print(f"\n[fault matrix] flap: reported flapping after {time.monotonic() - started:.1f}s")
    assert healer.machines()[flapper]["flapping"] is True

    def not_churned() -> str | None:
        if quarantined := healer.quarantined():
            return f"quarantined: {sorted(quarantined)}\n{healer.describe()}"
        if (launched := launched_ids(tmp_path)) != set(members):
            return f"launched: {sorted(launched - set(members))}\n{healer.describe()}"
        if (lifecycle := healer.machines()[flapper]["lifecycle"]) != "in_service":
            return f"{flapper} is {lifecycle}"
        return None

    _hold(max(0.0, 10 - (time.monotonic() - started)), not_churned)
    assert healer.events("remediation.started", "machine.quarantined", "machine.replaced") == []
    fleet.wait_alert("machine.flapping", flapper)
