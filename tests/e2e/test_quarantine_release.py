"""End to end: a hung machine of the demo fleet, quarantined, then released back to rotation while another
version is known-good. What an operator sees: how the quarantined machine reads (API, `healerd status`, the
page), and which machine scale-in retires once the fleet is one over `desired`."""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

from .fleet import DESIRED, DETECT, Healer, demo_command, demo_pids, fleet_config, kill_demos, set_fault
from .helpers import StartDaemon, run_cli

pytestmark = pytest.mark.e2e

StartFleet = Callable[..., Healer]


@pytest.fixture(autouse=True)
def _reap_demo_machines(tmp_path: Path) -> Iterator[None]:
    """Autouse, so it is torn down after `start_daemon`: healerd stops first, then every demo machine goes."""
    yield
    kill_demos(str(tmp_path))
    assert not demo_pids(str(tmp_path)), "demo machines survived the clean-up"


@pytest.fixture
def start_fleet(tmp_path: Path, start_daemon: StartDaemon) -> StartFleet:
    def start(**options: Any) -> Healer:
        config = fleet_config(tmp_path, free_port(), **options)
        # v2: a good build like v1, to be made known-good while v1 machines still serve
        versions = config["images"]["demo-web"]["versions"]
        versions["v2"] = {"command": demo_command(), "env": versions["v1"]["env"]}
        healer = Healer(start_daemon(config, wait="listening"), tmp_path, config)
        healer.wait_fleet_up()
        return healer

    return start


def test_a_hung_machine_reads_down_in_quarantine_and_scale_in_retires_it_not_the_known_good_one(
    start_fleet: StartFleet,
) -> None:
    healer = start_fleet()
    members = healer.wait_fleet_up()
    url = ["--url", healer.url]

    def promote(config: dict[str, Any]) -> None:
        config["images"]["demo-web"]["known_good"] = "v2"

    healer.reload(promote)
    hung = sorted(members)[0]
    set_fault(members[hung], "hang")
    healer.wait(lambda: hung in healer.quarantined(), DETECT + 5, f"{hung} to be quarantined")
    inc = healer.wait(
        lambda: (i := healer.incident_for(hung)) and i["state"] == "resolved" and i, 30, f"{hung} to be replaced"
    )
    replacement = inc["replacement"]

    # --- the quarantined machine reads what it was taken out for, not `pending` ----------------------------
    m = healer.machines()[hung]
    assert (m["lifecycle"], m["condition"], m["up"]) == ("quarantined", "down", False), m
    check = m["checks"]["health"]
    assert check["hard_state"] == "CRITICAL" and check["message"], check
    message = check["message"]

    out = run_cli("status", *url)
    assert out.returncode == 0, out
    (row,) = [ln.split() for ln in out.stdout.splitlines() if ln.split()[1:2] == [hung]]
    assert row[3:5] == ["quarantined", "down"] and "health=CRITICAL" in row, out.stdout

    status, body = healer.daemon.get("/")
    page = body.decode()
    assert status == 200
    assert f'data-machine="{hung}" data-condition="down"' in page, page
    (entry,) = re.findall(rf'data-machine="{hung}".*?</tr>', page, re.S)
    assert html.escape(message) in entry, entry

    # --- and so it still reads once healerd restarted (from its stored results) ---------------------------
    assert healer.daemon.stop() == 0
    healer.daemon.start().wait_listening()
    again = healer.wait(lambda: healer.machines().get(hung), 10, f"{hung} listed after the restart")
    assert (again["lifecycle"], again["condition"]) == ("quarantined", "down"), again
    assert again["checks"]["health"]["message"] == message, again
    healer.wait_fleet_up()

    # --- released back to rotation: one over desired, and the v1 machine goes, not the v2 replacement -------
    assert healer.machines()[replacement]["version"] == "v2"
    set_fault(members[hung], "ok")
    out = run_cli("quarantine", "release", hung, "--to-rotation", "--timeout", "20s", *url)
    assert out.returncode == 0, out
    (retired,) = healer.wait(lambda: healer.events("machine.retired"), 10, "a machine.retired event")
    healer.wait(lambda: len(healer.in_service()) == DESIRED, 10, f"{DESIRED} machines in service")
    assert retired["machine"] != replacement, retired
    assert "not the known-good v2" in retired["summary"], retired
    serving = healer.in_service()
    assert replacement in serving and replacement in healer.rotation()
    assert retired["machine"] not in healer.rotation()
    assert sorted(m["version"] for m in serving.values()) == ["v1", "v1", "v2"]
