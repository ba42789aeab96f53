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
