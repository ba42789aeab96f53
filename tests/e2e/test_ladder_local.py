"""End to end: the escalation ladder on the demo fleet (`local` provider), with the real daemon.

A machine frozen with SIGSTOP (its whole process group: it accepts connections and never answers) is healed by
the first rung, `restart-machine`: the same machine id back in rotation, no launch, no quarantine. A fault a
restart does not mend — the machine's own disk marked broken, which an exec check reads — escalates to
`replace-machine`: quarantined and replaced from the known-good image.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

from .fleet import Healer, demo_pids, fleet_config, kill_demos, launched_ids
from .helpers import StartDaemon, http_get

pytestmark = pytest.mark.e2e

LADDER = {
    "ladder": [{"playbook": "restart-machine", "timeout": "15s"}, {"playbook": "replace-machine"}],
    "max_per_hour": 20,
}
#: an exec check reading the machine's "disk": a file named after it, which a restart leaves in place
DISK_CHECK = """#!/bin/sh
if [ -e "{folder}/broken-$1" ]; then echo "CRITICAL: disk of $1 is broken"; exit 2; fi
echo "OK: disk of $1"; exit 0
"""


@pytest.fixture(autouse=True)
def _reap_demo_machines(tmp_path: Path) -> Iterator[None]:
    yield
    kill_demos(str(tmp_path))
    assert not demo_pids(str(tmp_path)), "demo machines survived the clean-up"


def start(tmp_path: Path, start_daemon: StartDaemon) -> Healer:
    config = fleet_config(tmp_path, free_port(), remediation=LADDER)
    script = tmp_path / "checks" / "disk"
    script.write_text(DISK_CHECK.format(folder=tmp_path))
    script.chmod(0o755)
    health = config["services"]["web"]["checks"][0]
    disk = {**health, "name": "disk", "kind": "exec", "command": ["disk", "{id}"]}
    del disk["url"]
    config["services"]["web"]["checks"].append(disk)
    healer = Healer(start_daemon(config, wait="listening"), tmp_path, config)
    healer.wait_fleet_up(timeout=30)
    return healer


def freeze(address: str) -> int:
    status, body = http_get(f"http://{address}/")
    assert status == 200
    pid = int(json.loads(body)["pid"])
    os.killpg(os.getpgid(pid), signal.SIGSTOP)  # the reaper SIGCONTs and kills every group at teardown
    return pid


def resolved(healer: Healer, machine: str) -> Callable[[], dict[str, Any] | None]:
    def found() -> dict[str, Any] | None:
        for inc in healer.incidents():
            if inc["machine"] == machine and inc["state"] == "resolved":
                return inc
        return None

    return found


def test_a_frozen_machine_is_healed_by_a_restart_and_kept(tmp_path: Path, start_daemon: StartDaemon) -> None:
    healer = start(tmp_path, start_daemon)
    before = launched_ids(tmp_path)
    (machine, address), *_ = sorted(healer.rotation().items())
    frozen_at = time.monotonic()
    old_pid = freeze(address)
    inc = healer.wait(resolved(healer, machine), 40, f"{machine}'s incident resolved")
    took = time.monotonic() - frozen_at
    print(f"\nfrozen {machine} healed by restart-machine in {took:.1f}s")

    view = healer.incident(inc["id"])
    assert "healed by restart-machine" in " ".join(t["summary"] for t in view["timeline"])
    assert view["ladder"]["healed_by"] == "restart-machine"
    healer.wait(lambda: machine in healer.rotation() or None, 10, f"{machine} back in rotation")
    assert launched_ids(tmp_path) == before  # 0 launches
    assert healer.quarantined() == {}  # 0 quarantines
    status, body = http_get(f"http://{healer.rotation()[machine]}/")
    assert status == 200 and str(old_pid) not in body.decode()  # the same machine, a new process


def test_a_fault_a_restart_does_not_mend_escalates_to_a_replacement(tmp_path: Path, start_daemon: StartDaemon) -> None:
    healer = start(tmp_path, start_daemon)
    (machine, address), *_ = sorted(healer.rotation().items())
    (tmp_path / f"broken-{machine}").touch()  # its disk: a restart does not mend it
    freeze(address)
    inc = healer.wait(resolved(healer, machine), 60, f"{machine}'s incident resolved")
    view = healer.incident(inc["id"])
    (tried,) = view["ladder"]["tried"]
    assert tried["playbook"] == "restart-machine" and tried["outcome"] in ("failed", "timed_out")
    assert "disk of" in tried["error"] or "did not" in tried["error"]
    assert machine in healer.quarantined()
    assert view["replacement"] and view["replacement"] in healer.rotation()
    assert machine not in healer.rotation()
