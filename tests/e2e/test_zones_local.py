"""End to end: a datacenter lost, on the demo fleet (`local` provider, zones a, b and c), with the real daemon.

Six machines spread two per zone, `max_unhealthy: 1`. Every machine of zone a frozen at once (SIGSTOP of its
process group: it accepts connections and never answers) is a lost zone, not a monitoring problem: `zone.lost`,
its machines unreachable and out of rotation, and six machines serving again in b and c — the figure printed is
the time from the freeze to full capacity. Zone a thawed: its machines answer again and are retired, never put
back in rotation, and the spread is rebalanced. Every zone frozen at once: the monitor is suspect and nothing
is launched.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port

from .fleet import FALL, INTERVAL, TIMEOUT, Healer, demo_pids, fleet_config, kill_demos, launched_ids
from .helpers import StartDaemon, http_get, run_cli

pytestmark = pytest.mark.e2e

ZONES = ["a", "b", "c"]
DESIRED = 6
#: a demo machine's start and probation (rise results) on a busy box
BOOT = 3.0


@pytest.fixture(autouse=True)
def _reap_demo_machines(tmp_path: Path) -> Iterator[None]:
    yield
    kill_demos(str(tmp_path))
    assert not demo_pids(str(tmp_path)), "demo machines survived the clean-up"


def start(tmp_path: Path, start_daemon: StartDaemon) -> Healer:
    config = fleet_config(tmp_path, free_port(), desired=DESIRED, remediation={"max_unhealthy": 1, "max_per_hour": 30})
    config["services"]["web"]["min_healthy"] = 4
    config["providers"]["demo"]["zones"] = ZONES
    healer = Healer(start_daemon(config, wait="listening"), tmp_path, config)
    healer.wait(lambda: serving_spread(healer) == {"a": 2, "b": 2, "c": 2}, 40, "six machines, two per zone")
    return healer


def serving_spread(healer: Healer) -> dict[str, int]:
    """Machines in service and up, per zone."""
    counts = Counter(
        m["zone"] for m in healer.machines().values() if m["lifecycle"] == "in_service" and m["condition"] == "up"
    )
    return dict(counts)


def pid_of(address: str) -> int:
    status, body = http_get(f"http://{address}/")
    assert status == 200
    return int(json.loads(body)["pid"])


def signal_zone(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        os.killpg(os.getpgid(pid), sig)  # the reaper SIGCONTs and kills every group at teardown


def zone_pids(healer: Healer, zone: str) -> dict[str, int]:
    return {
        mid: pid_of(m["address"])
        for mid, m in healer.machines().items()
        if m["zone"] == zone and m["lifecycle"] == "in_service"
    }


def test_a_lost_zone_is_served_again_from_the_others_and_its_machines_never_rejoin_unexamined(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    healer = start(tmp_path, start_daemon)
    lost = zone_pids(healer, "a")
    assert len(lost) == 2
    launched_before = launched_ids(tmp_path)
    frozen_at = time.time()
    signal_zone(list(lost.values()), signal.SIGSTOP)

    event = healer.wait(lambda: next(iter(healer.events("zone.lost")), None), 30, "zone a to be declared lost")
    detected = event["timestamp"] - frozen_at
    assert event["details"]["zone"] == "a" and sorted(event["details"]["machines"]) == sorted(lost)
    assert event["severity"] == "critical" and event["details"]["surviving"] == ["b", "c"]
    machines = healer.machines()
    assert {machines[mid]["lifecycle"] for mid in lost} == {"unreachable"}
    assert not set(lost) & set(healer.rotation()), "a lost machine is still in rotation"

    def full() -> bool:
        spread = serving_spread(healer)
        return sum(spread.values()) == DESIRED and "a" not in spread and len(healer.rotation()) == DESIRED

    healer.wait(full, 30, "six machines serving in zones b and c")
    restored = time.time() - frozen_at
    goal = FALL * INTERVAL + TIMEOUT + BOOT + 2.0
    print(f"\nzone a lost: detected {detected:.1f}s after the freeze, full capacity after {restored:.1f}s")
    assert restored < goal + 5.0, f"full capacity took {restored:.1f}s (goal {goal:.1f}s)"
    assert len(launched_ids(tmp_path) - launched_before) == 2, "exactly the lost share is launched again"
    assert not healer.quarantined(), "a lost zone's machines are unreachable, not quarantined"
    assert not healer.suppressed("max_unhealthy"), "max_unhealthy held back the restoration of capacity"
    metrics = healer.daemon.metrics()
    assert metrics.total("healerd_zone_lost", service="web", zone="a") == 1
    assert metrics.total("healerd_zone_lost", service="web", zone="b") == 0
    out = run_cli("status", "--url", healer.url).stdout
    assert "web zones: a: 0 serving, LOST (2 unreachable); b: 3 serving; c: 3 serving" in out, out
    status, page = healer.daemon.get("/")
    assert status == 200 and b"zone a" in page and b"unreachable" in page

    # zone a returns: its machines answer again and are retired; not one moment back in rotation
    signal_zone(list(lost.values()), signal.SIGCONT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert not set(lost) & set(healer.rotation()), "a returning machine rejoined the rotation unexamined"
        if not set(lost) & set(healer.machines()):
            break
        time.sleep(0.1)
    else:
        raise AssertionError(f"the returning machines were not retired:\n{healer.describe()}")
    returned = healer.events("zone.returned")
    assert returned and returned[0]["details"]["zone"] == "a"
    retired = [e for e in healer.events("machine.retired") if e["machine"] in lost]
    assert len(retired) == 2
    assert healer.daemon.metrics().total("healerd_zone_lost", service="web", zone="a") == 0
    # the spread comes back to two per zone, one machine at a time, never below six serving
    healer.wait(lambda: serving_spread(healer) == {"a": 2, "b": 2, "c": 2}, 60, "the spread to be rebalanced")
    assert not healer.quarantined()


def test_every_zone_failing_at_once_is_the_monitor_s_fault_and_nothing_is_launched(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    healer = start(tmp_path, start_daemon)
    everything = [pid for zone in ZONES for pid in zone_pids(healer, zone).values()]
    launched_before = launched_ids(tmp_path)
    signal_zone(everything, signal.SIGSTOP)
    held = healer.wait(lambda: healer.suppressed("monitor_suspect"), 30, "remediation held back as monitor_suspect")
    assert "every zone is unhealthy at once" in held[0]["details"]["detail"]
    time.sleep(3.0)
    assert launched_ids(tmp_path) == launched_before, "a machine was launched while every zone failed"
    assert not healer.events("zone.lost")
    assert not healer.quarantined()
    assert healer.daemon.metrics().total("healerd_incidents_held", service="web", reason="monitor_suspect") >= 4
    signal_zone(everything, signal.SIGCONT)
    healer.wait(lambda: serving_spread(healer) == {"a": 2, "b": 2, "c": 2}, 30, "the fleet to recover as it was")
    assert launched_ids(tmp_path) == launched_before
