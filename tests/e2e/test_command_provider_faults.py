"""End to end: the `command` provider when its executable misbehaves, healerd killed in the middle of its calls,
and the escalation ladder (restart before replace) on it. The executable is examples/providers/loopback-httpd,
whose `break` file (one `VERB:FAULT` a line) switches a fault on and off while healerd runs.

What an operator relies on: a call that fails (stdout that is not JSON, exit 1, no answer within its timeout)
is reported with the executable, the verb and why, healerd stays up, and the fleet is whole again once the
executable behaves; a kill -9 of healerd while the executable quarantines or terminates ends with exactly one
machine per id and none running unknown to healerd; a frozen machine is mended in place by the executable's
`restart` when that is enough, and replaced when it is not.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import require_binary

from .fleet import post_json
from .helpers import wait_until, write_config
from .test_command_provider import EXAMPLE, Daemon, Lab, in_service, rotation

pytestmark = pytest.mark.e2e

#: what healerd says when a call fails, by the fault the executable was given
REASONS = {
    "nonjson": "its stdout is not one JSON object",
    "exit1": "exited 1; stderr: loopback-httpd",
    "hang": "timed out after 3s (its process group was killed)",
}


class FaultyLab(Lab):
    """The lab with JSON logs, short provider timeouts and the example's fault switch."""

    def __init__(self, tmp_path: Path, desired: int) -> None:
        super().__init__(tmp_path, desired)
        self.config["daemon"]["log_format"] = "json"
        self.config["providers"]["lab"].update(timeout="3s", launch_timeout="3s")
        self.save()

    def save(self) -> None:
        write_config(self.config_path, self.config)

    def service(self) -> dict[str, Any]:
        svc: dict[str, Any] = self.config["services"]["web"]
        return svc

    def brake(self, verb: str, fault: str) -> None:
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "break").write_text(f"{verb}:{fault}\n")

    def mend(self) -> None:
        (self.state / "break").unlink(missing_ok=True)

    def calls(self, verb: str) -> list[int]:
        """The executable's processes running `verb` now."""
        return [pid for pid, cmd in self.processes().items() if "loopback-httpd" in cmd and cmd.endswith(f" {verb}")]


def log_lines(daemon: Daemon) -> list[dict[str, Any]]:
    out = []
    for line in daemon.output().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict):
            out.append(entry)
    return out


def logged(daemon: Daemon, event: str) -> list[dict[str, Any]]:
    return [e for e in log_lines(daemon) if e.get("event") == event]


@pytest.fixture
def make_lab(tmp_path: Path) -> Iterator[Any]:
    require_binary("busybox")
    made: list[FaultyLab] = []

    def make(desired: int = 3) -> FaultyLab:
        rig = FaultyLab(tmp_path, desired)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        rig.stop()
        assert not rig.processes(), f"processes of the test survived: {rig.processes()}"


def whole(lab: FaultyLab, daemon: Daemon, desired: int) -> dict[str, str] | None:
    """The machines in service, once there are `desired` of them, all in rotation."""
    now = in_service(daemon)
    return now if len(now) == desired and rotation(lab) == now else None


def up(lab: FaultyLab, daemon: Daemon, desired: int, timeout: float = 30) -> dict[str, str]:
    return wait_until(
        lambda: whole(lab, daemon, desired), timeout, f"{desired} in service", interval=0.1, describe=lab.describe
    )


# ---------------------------------------------------------------------------------------------------------
# 1. A call that fails


@pytest.mark.parametrize("fault", sorted(REASONS))
def test_a_failing_launch_is_reported_and_the_fleet_fills_once_it_works(make_lab: Any, fault: str) -> None:
    lab = make_lab(desired=2)
    lab.brake("launch", fault)
    daemon = lab.start("healerd")

    def reported() -> list[dict[str, Any]]:
        return [e for e in logged(daemon, "launch failed") if REASONS[fault] in e.get("error", "")]

    found = wait_until(reported, 30, f"a launch failure ({fault}) in the log", describe=lab.describe)
    error = found[0]["error"]
    assert error.startswith(f"provider lab: {EXAMPLE} launch: "), error
    assert found[0]["service"] == "web"
    assert daemon.get("/healthz")[0] == 200 and daemon.alive()
    assert not in_service(daemon) and not lab.servers(), "nothing serves while every launch fails"
    launching = [m for m in daemon.machines().values() if m["lifecycle"] == "launching"]
    assert launching, daemon.machines()
    # the API says why they are still launching: the executable, the verb and the reason
    said = [m["launch_error"] or "" for m in launching]
    assert any(e.startswith(f"provider lab: {EXAMPLE} launch: ") and REASONS[fault] in e for e in said), said

    lab.mend()

    members = up(lab, daemon, 2, timeout=40)
    assert set(lab.records()) == set(members), "healerd's machines are the executable's machines"
    assert len(lab.servers()) == 2
    assert daemon.get("/healthz")[0] == 200


@pytest.mark.parametrize("fault", ["exit1", "hang"])
def test_a_failing_quarantine_is_reported_and_the_machine_replaced_once_it_works(make_lab: Any, fault: str) -> None:
    lab = make_lab()
    lab.service()["remediation"]["backoff"] = "2s"  # a failed remediation is tried again this soon
    lab.save()
    daemon = lab.start("healerd")
    members = up(lab, daemon, 3)
    victim = sorted(members)[0]
    lab.brake("quarantine", fault)

    os.kill(lab.records()[victim]["pid"], signal.SIGSTOP)

    def failed() -> list[dict[str, Any]]:
        return [i for i in daemon.json("/api/v1/incidents")["incidents"] if i["machine"] == victim and i["error"]]

    incident = wait_until(failed, 40, "the remediation to fail", interval=0.2, describe=lab.describe)[0]
    assert f"{EXAMPLE} quarantine: {REASONS[fault]}" in incident["error"], incident
    view = daemon.json(f"/api/v1/incidents/{incident['id']}")
    steps = [s for s in view["timeline"] if s["type"] == "step.machine.quarantine" and "failed" in s["summary"]]
    assert steps and f"{EXAMPLE} quarantine: {REASONS[fault]}" in steps[-1]["summary"], view["timeline"]
    lines = [e for e in logged(daemon, "step failed") if e.get("incident") == incident["id"]]
    assert lines and lines[0]["machine"] == victim and "quarantine" in lines[0]["error"], lines
    assert daemon.get("/healthz")[0] == 200 and daemon.alive()
    assert lab.records()[victim]["quarantined"] is False

    time.sleep(1)
    assert victim not in rotation(lab) and not lab.calls("quarantine"), "out of rotation, waiting for a human"

    lab.mend()  # the operator fixes the executable and resolves the incident: healerd tries again
    assert post_json(f"{daemon.url}/api/v1/incidents/{incident['id']}/resolve", {"by": "ops"})[0] == 200

    after = up(lab, daemon, 3, timeout=40)
    assert victim not in after
    assert lab.records()[victim]["quarantined"] is True, "quarantined through the executable once it works"


# ---------------------------------------------------------------------------------------------------------
# 2. healerd killed while the executable is in a call


def one_machine_per_id(lab: FaultyLab, daemon: Daemon) -> None:
    """Every machine the executable keeps runs one server, and is one healerd knows (none orphaned)."""
    records = lab.records()
    servers = lab.servers()
    assert sorted(r["pid"] for r in records.values()) == sorted(servers), (records, servers)
    known = {mid for mid, m in daemon.machines().items() if m["lifecycle"] not in ("terminated", "released")}
    assert known == set(records), (known, set(records))


def test_kill_9_while_the_executable_quarantines(make_lab: Any) -> None:
    lab = make_lab()
    first = lab.start("healerd-1", EXAMPLE_QUARANTINE_DELAY="4")
    members = up(lab, first, 3)
    victim = sorted(members)[0]
    os.kill(lab.records()[victim]["pid"], signal.SIGSTOP)
    wait_until(lambda: lab.calls("quarantine"), 30, "the executable in quarantine", describe=lab.describe)

    first.kill9()

    assert lab.calls("quarantine"), "the executable outlives healerd (its own session)"
    second = lab.start("healerd-2")
    after = wait_until(
        lambda: (now := whole(lab, second, 3)) and victim not in now and now,
        40,
        "the frozen machine replaced",
        interval=0.1,
        describe=lab.describe,
    )
    time.sleep(2)  # nothing more comes of the interrupted call
    assert len(set(after) - set(members)) == 1, "exactly one replacement"
    assert set(lab.records()) == set(after) | {victim}
    assert lab.records()[victim]["quarantined"] is True
    assert victim in {q["id"] for q in second.json("/api/v1/quarantine")["quarantined"]}
    one_machine_per_id(lab, second)
    incident = next(i for i in second.json("/api/v1/incidents")["incidents"] if i["machine"] == victim)
    timeline = [t["summary"] for t in second.json(f"/api/v1/incidents/{incident['id']}")["timeline"]]
    # the interrupted step ran again (its attempt 2), the one before it did not
    assert [t for t in timeline if t.startswith("step 2 machine.quarantine")] == [
        "step 2 machine.quarantine started (attempt 2)",
        "step 2 machine.quarantine succeeded",
    ], timeline
    assert "step 1 rotation.remove started (attempt 1)" in timeline, timeline


def test_kill_9_while_the_executable_terminates(make_lab: Any) -> None:
    """Quarantine retention (keep_for) reaches `terminate`; healerd dies in it and does it again at its restart."""
    lab = make_lab()
    lab.service()["remediation"].update(keep_for="3s", keep_warning="1s")
    lab.save()
    first = lab.start("healerd-1", EXAMPLE_TERMINATE_DELAY="4")
    members = up(lab, first, 3)
    victim = sorted(members)[0]
    os.kill(lab.records()[victim]["pid"], signal.SIGSTOP)
    wait_until(lambda: lab.calls("terminate"), 40, "the executable in terminate", describe=lab.describe)
    after = in_service(first)

    first.kill9()

    assert lab.calls("terminate"), "the executable outlives healerd (its own session)"
    second = lab.start("healerd-2")
    ended = wait_until(
        lambda: [e for e in logged(second, "quarantine retention ended; machine terminated") if e["machine"] == victim],
        30,
        f"{victim} terminated by the restarted healerd",
        interval=0.1,
        describe=lab.describe,
    )
    assert len(ended) == 1
    assert victim not in second.machines() and not second.json("/api/v1/quarantine")["quarantined"]
    assert whole(lab, second, 3) == after, "the fleet goes on as it was"
    # the first healerd's call (its executable outlived it, sleeping 4 s) ends too, and finds the machine gone
    wait_until(
        lambda: not lab.calls("terminate") and victim not in lab.records(),
        15,
        "every terminate call ended, the machine gone",
        describe=lab.describe,
    )
    assert set(lab.records()) == set(after)
    one_machine_per_id(lab, second)


# ---------------------------------------------------------------------------------------------------------
# 3. The ladder: restart before replace


def latest_incident(daemon: Daemon, machine: str) -> dict[str, Any]:
    found = [i for i in daemon.json("/api/v1/incidents")["incidents"] if i["machine"] == machine]
    return max(found, key=lambda i: float(i["opened_at"]))


def ladder_lab(make_lab: Any, **remediation: Any) -> FaultyLab:
    lab: FaultyLab = make_lab()
    rem = lab.service()["remediation"]
    rem.pop("playbook")
    rem["ladder"] = [{"playbook": "restart-machine", "timeout": "30s"}, {"playbook": "replace-machine"}]
    rem.update(remediation)
    lab.save()
    return lab


def resolved(daemon: Daemon, machine: str) -> list[str]:
    return [e["summary"] for e in daemon.events() if e["type"] == "incident.resolved" and e.get("machine") == machine]


def test_a_frozen_machine_is_healed_by_restart_then_replaced_when_repaired_too_often(make_lab: Any) -> None:
    lab = ladder_lab(make_lab, max_repairs={"count": 1, "per": "1h"})
    daemon = lab.start("healerd")
    members = up(lab, daemon, 3)
    victim = sorted(members)[0]
    launched = {mid: r["launched_at"] for mid, r in lab.records().items()}
    frozen = lab.records()[victim]["pid"]

    started = time.monotonic()
    os.kill(frozen, signal.SIGSTOP)
    wait_until(lambda: victim not in rotation(lab), 20, "the frozen machine out of rotation", describe=lab.describe)
    wait_until(lambda: whole(lab, daemon, 3) == members, 40, "the same machines back", describe=lab.describe)
    print(f"\nhealed in place by the executable's restart in {time.monotonic() - started:.1f}s")

    assert {mid: r["launched_at"] for mid, r in lab.records().items()} == launched, "no launch"
    assert lab.records()[victim]["pid"] != frozen and frozen not in lab.servers(), "a new server, same machine"
    assert not any(r["quarantined"] for r in lab.records().values()), "no quarantine"
    assert not daemon.json("/api/v1/quarantine")["quarantined"]
    said = wait_until(lambda: resolved(daemon, victim), 10, "the incident resolved", describe=lab.describe)
    assert said[0].endswith("resolved: healed by restart-machine"), said

    # the same machine fails again within max_repairs.per
    after, took = freeze_until_replaced(lab, daemon, victim, 40)
    print(f"repaired too often: replaced in {took:.1f}s")
    assert len(set(after) - set(members)) == 1 and lab.records()[victim]["quarantined"] is True
    second = latest_incident(daemon, victim)
    assert second["playbook"] == "replace-machine"
    assert "max_repairs" in second["details"]["rungs_skipped"], second
    steps = {t["type"] for t in daemon.json(f"/api/v1/incidents/{second['id']}")["timeline"]}
    assert "step.machine.restart" not in steps, steps


def freeze_until_replaced(lab: Any, daemon: Any, victim: str, timeout: float) -> tuple[dict[str, str], float]:
    """Freeze the machine's server (SIGSTOP) and wait until the fleet is whole without it: the machines in
    service then, and the seconds it took."""
    started = time.monotonic()
    os.kill(lab.records()[victim]["pid"], signal.SIGSTOP)
    after = wait_until(
        lambda: (now := whole(lab, daemon, 3)) and victim not in now and now,
        timeout,
        "the machine replaced",
        interval=0.1,
        describe=lab.describe,
    )
    return after, time.monotonic() - started


def test_a_restart_that_does_not_mend_escalates_to_quarantine_and_replacement(make_lab: Any) -> None:
    lab = ladder_lab(make_lab)
    lab.brake("restart", "noop")  # the executable says it restarted the machine, and the machine stays frozen
    daemon = lab.start("healerd")
    members = up(lab, daemon, 3)
    victim = sorted(members)[0]

    after, took = freeze_until_replaced(lab, daemon, victim, 70)
    print(f"\nrestart did not mend it: replaced in {took:.1f}s")

    assert len(set(after) - set(members)) == 1 and lab.records()[victim]["quarantined"] is True
    incident = latest_incident(daemon, victim)
    assert incident["playbook"] == "replace-machine"
    assert [r["playbook"] for r in incident["details"]["rungs"]] == ["restart-machine"], incident
    assert incident["details"]["rungs"][0]["outcome"] in ("timed_out", "failed"), incident
    escalated = [e for e in daemon.events() if e["type"] == "remediation.escalated" and e.get("machine") == victim]
    assert len(escalated) == 1 and "next: replace-machine" in escalated[0]["summary"], escalated
