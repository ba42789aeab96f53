"""End to end: `healerd demo stop` ends the demo machines a real daemon launched (they outlive it by design),
and the next start launches a new fleet instead of finding every machine down."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port

from .fleet import Healer, demo_pids, fleet_config, kill_demos
from .helpers import StartDaemon, run_cli

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _reap_demo_machines(tmp_path: Path) -> Iterator[None]:
    yield
    kill_demos(str(tmp_path))


def test_demo_stop_ends_the_demo_machines_of_a_stopped_daemon(tmp_path: Path, start_daemon: StartDaemon) -> None:
    config = fleet_config(tmp_path, free_port())
    healer = Healer(start_daemon(config), tmp_path, config)
    first = healer.wait_fleet_up()
    assert len(demo_pids(str(tmp_path))) == 3
    path = str(healer.daemon.config_path)

    # while its daemon runs, it would only launch new ones: refused
    out = run_cli("demo", "stop", "-c", path)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "healerd is still running" in out.stderr and "stop it first" in out.stderr, out.stderr
    assert len(demo_pids(str(tmp_path))) == 3

    assert healer.daemon.stop() == 0
    assert len(demo_pids(str(tmp_path))) == 3, "the demo machines outlive the daemon"
    out = run_cli("demo", "stop", "-c", path)
    assert out.returncode == 0, out.stdout + out.stderr
    stopped = sorted(line.split()[1] for line in out.stdout.splitlines() if line.startswith("stopped "))
    assert stopped == sorted(first), out.stdout
    assert demo_pids(str(tmp_path)) == [], "no demo machine is left"
    out = run_cli("demo", "stop", "-c", path)
    assert out.returncode == 0 and out.stdout.strip() == f"no demo machines running for {path}", out.stdout

    # the next start launches a new fleet: the stopped machines are not waited on as down ones
    again = Healer(start_daemon(config, name="again"), tmp_path, config)
    fleet = again.wait_fleet_up(timeout=20)
    assert not set(fleet) & set(first), (fleet, first)
    assert again.incidents() == [], again.describe()
