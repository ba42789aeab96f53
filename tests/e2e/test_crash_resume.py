"""Crash safety of remediation: `kill -9` at every step of the playbook, then a restart, finishes the job.

For each action of playbooks/replace-machine.yaml and each fault-injection point (`--crash-at <action>`:
SIGKILL right after the step is journaled as started; <action>:after: after the action ran, before its
success is journaled), a real daemon with a demo fleet (local provider: `python -m healerd.demo` processes)
is crashed in the middle of replacing a broken machine and restarted. What must hold afterwards is what an
operator checks: the incident is resolved, exactly one replacement was launched for it, no process is
running that healerd does not know about, the rotation file lists exactly the machines in service, the sick
machine is quarantined and still alive, and its evidence bundle verifies.

Demo machines outlive healerd by design; every process launched for a test carries HEALERD_TEST_RUN=<its
tmp_path> in its environment, so the test's finalizer finds and kills all of them whatever happened.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

from healerd.remediation.forensics import verify

from .fleet import STEPS, port_window
from .helpers import DaemonProcess, wait_until, write_config

pytestmark = pytest.mark.e2e

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"
SERVICE = "web"
DESIRED = 3
#: `python -m healerd.demo` takes 0.4-0.9 s to listen on 2 busy cores; new machines get boot_timeout anyway
INTERVAL = "400ms"
ACTIONS = tuple(STEPS)
#: from the fleet breaking to the daemon killing itself at the step (fall 3 x 300 ms, then the steps before)
CRASH_BOUND = 20.0
#: from the restart to the incident resolved (a launch, `rise` checks, the service optimal again)
RESOLVE_BOUND = 25.0


# ---------------------------------------------------------------------------------------------------------
# The demo fleet of one test: its config, its daemons, its store and its processes


class CrashableDaemon(DaemonProcess):
    """`healerd run --crash-at ACTION[:after]`: the fault-injection hook, armed only by that flag."""

    def __init__(self, config_path: Path, port: int, log_path: Path, crash_at: str | None) -> None:
        super().__init__(config_path, port, log_path, ("--crash-at", crash_at) if crash_at else ())


@dataclass
class Proc:
    pid: int
    machine: str


DEMO_COMMAND = ["{python}", "-m", "healerd.demo", "--port", "{port}"]


@dataclass
class DemoFleet:
    tmp_path: Path
    command: list[str] = field(default_factory=lambda: list(DEMO_COMMAND))
    port: int = field(default_factory=free_port)
    daemons: list[CrashableDaemon] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.state_dir = self.tmp_path / "state"
        self.rotation_path = self.tmp_path / "rotation-web.json"
        self.config_path = self.tmp_path / "healerd.yaml"
        self.marker = f"HEALERD_TEST_RUN={self.tmp_path}".encode()
        self.port_range = port_window()

    def write_config(self) -> None:
        config = {
            "daemon": {
                "listen": f"127.0.0.1:{self.port}",
                "state_dir": str(self.state_dir),
                "log_format": "console",
                "log_level": "info",
                "mode": "auto",
                "check_paths": [],
                "playbook_paths": [str(PLAYBOOKS)],
            },
            "providers": {"demo": {"kind": "local", "port_range": self.port_range}},
            "images": {
                "demo-web": {
                    "provider": "demo",
                    "versions": {
                        "v1": {
                            "command": self.command,
                            "env": {"HEALERD_TEST_RUN": str(self.tmp_path)},
                        }
                    },
                    "known_good": "v1",
                }
            },
            "services": {
                SERVICE: {
                    "provider": "demo",
                    "image": "demo-web",
                    "desired": DESIRED,
                    "min_healthy": 2,
                    "rotation": {"kind": "file", "path": str(self.rotation_path)},
                    "checks": [
                        {
                            "name": "health",
                            "kind": "http",
                            "url": "http://{address}/health",
                            "interval": INTERVAL,
                            "timeout": "250ms",
                            "fall": 3,
                            "rise": 2,
                        }
                    ],
                    # max_per_hour above the default: a fill machine that loses the boot race (see
                    # test_a_machine_slower_to_boot_than_fall_checks_still_enters_service) is replaced,
                    # not a reason for the fleet to stay short
                    "remediation": {"playbook": "replace-machine", "max_concurrent": 1, "max_per_hour": 20},
                }
            },
        }
        write_config(self.config_path, config)

    # -- daemons --------------------------------------------------------------------------------------
    def start(self, name: str, crash_at: str | None = None) -> CrashableDaemon:
        if not self.config_path.exists():
            self.write_config()
        daemon = CrashableDaemon(self.config_path, self.port, self.tmp_path / f"{name}.log", crash_at)
        self.daemons.append(daemon)
        daemon.start()
        daemon.wait_listening(15)
        return daemon

    def describe(self) -> str:
        live = self.processes()
        return (
            f"store machines: {json.dumps(self.machines(), indent=1, default=str)[:3000]}\n"
            f"incidents: {self.incidents()}\nsteps: {self.steps()}\n"
            f"live demo processes: {live}\nrotation: {self.rotation()}\n"
            + "\n".join(d.describe()[-3000:] for d in self.daemons[-2:])
        )

    # -- the store, read-only ---------------------------------------------------------------------------
    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        db = self.state_dir / "state.db"
        if not db.exists():
            return []
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            return conn.execute(sql, args).fetchall()
        except sqlite3.OperationalError as exc:  # the schema is not there yet
            if "no such table" in str(exc):
                return []
            raise
        finally:
            conn.close()

    def machines(self) -> dict[str, dict[str, Any]]:
        return {
            mid: {"address": addr, "lifecycle": lc, "attributes": json.loads(attrs)}
            for mid, addr, lc, attrs in self._query(
                "SELECT id, address, lifecycle, attributes FROM machines WHERE service=?", (SERVICE,)
            )
        }

    def in_service(self) -> dict[str, str]:
        return {mid: m["address"] for mid, m in self.machines().items() if m["lifecycle"] == "in_service"}

    def incidents(self) -> dict[str, dict[str, Any]]:
        return {
            r[0]: {"machine": r[1], "state": r[2], "replacement": r[3], "error": r[4]}
            for r in self._query("SELECT id, machine, state, replacement, error FROM incidents ORDER BY opened_at")
        }

    def steps(self, incident: str | None = None) -> list[tuple[Any, ...]]:
        sql = "SELECT incident, idx, action, state, attempts FROM steps"
        if incident is None:
            return self._query(sql + " ORDER BY incident, idx")
        return self._query(sql + " WHERE incident=? ORDER BY idx", (incident,))

    def rotation(self) -> dict[str, str] | None:
        try:
            groups = json.loads(self.rotation_path.read_text())
        except FileNotFoundError:
            return None
        return {g["labels"]["machine"]: g["targets"][0] for g in groups}

    # -- the processes of this test --------------------------------------------------------------------
    def processes(self) -> list[Proc]:
        """Live (not zombie) processes launched for this test, with their HEALERD_MACHINE_ID."""
        out = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if self.marker not in env or state == "Z":
                continue
            mid = next((v.split(b"=", 1)[1].decode() for v in env if v.startswith(b"HEALERD_MACHINE_ID=")), "")
            out.append(Proc(int(entry.name), mid))
        return out

    def kill_processes(self) -> None:
        for _ in range(3):
            procs = self.processes()
            if not procs:
                return
            for p in procs:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(p.pid, signal.SIGKILL)
            time.sleep(0.2)


def tear_down(fleet: DemoFleet) -> None:
    """healerd first (it would relaunch what we kill), then every demo process of the test; a daemon that did
    not stop cleanly on SIGTERM, or a process that survives, fails the test."""
    unclean = []
    for d in fleet.daemons:
        was_running = d.alive()
        status = d.stop()
        if was_running and (status != 0 or "Traceback" in d.output()):
            unclean.append(f"{d.log_path.name}: exit status {status} on SIGTERM\n{d.describe()}")
    fleet.kill_processes()
    leftover = fleet.processes()
    if leftover:
        unclean.append(f"demo processes survive the cleanup: {leftover}")
    if unclean:
        pytest.fail("\n".join(unclean), pytrace=False)


@pytest.fixture
def demo_fleet(tmp_path: Path) -> Iterator[DemoFleet]:
    fleet = DemoFleet(tmp_path)
    try:
        yield fleet
    finally:
        tear_down(fleet)


# ---------------------------------------------------------------------------------------------------------
# The scenario


def wait_optimal(fleet: DemoFleet, daemon: DaemonProcess, timeout: float) -> dict[str, str]:
    """Until the service is optimal with `desired` machines in service and in rotation; returns them."""

    def settled() -> dict[str, str]:
        if not daemon.alive():
            raise AssertionError(f"healerd exited with {daemon.returncode}\n{fleet.describe()}")
        try:
            state = daemon.service(SERVICE)["state"]
        except (OSError, AssertionError):
            return {}
        members = fleet.in_service()
        if state == "optimal" and len(members) == DESIRED and fleet.rotation() == members:
            return members
        return {}

    return wait_until(settled, timeout, "the service to be optimal", interval=0.1, describe=fleet.describe)


def break_machine(address: str) -> None:
    req = urllib.request.Request(f"http://{address}/fault", data=b"down", method="POST")
    with urllib.request.urlopen(req, timeout=3) as resp:
        assert json.loads(resp.read()) == {"mode": "down"}


def assert_crashed_at(fleet: DemoFleet, incident: str, action: str, point: str) -> None:
    """The journal and the world show the daemon died exactly where it was told to."""
    steps = fleet.steps(incident)
    idx = ACTIONS.index(action)
    assert [s[2] for s in steps] == list(ACTIONS[: idx + 1]), steps
    assert [s[3] for s in steps] == ["succeeded"] * idx + ["running"], f"journal at the crash: {steps}"
    inc = fleet.incidents()[incident]
    assert inc["state"] == "remediating", inc
    machines = fleet.machines()
    victim = inc["machine"]
    replacements = [mid for mid, m in machines.items() if m["attributes"].get("launched_for") == incident]
    done = point == "after"
    bundle = fleet.state_dir / "forensics" / incident
    rotation = fleet.rotation() or {}
    if action == "rotation.remove":
        # a machine confirmed down leaves rotation before any step of any rung: out at either point
        assert victim not in rotation, rotation
    elif action == "machine.quarantine":
        assert (machines[victim]["lifecycle"] == "quarantined") is done, machines[victim]
    elif action == "forensics.collect":
        assert bundle.is_dir() is done, list(bundle.parent.iterdir()) if bundle.parent.exists() else None
    elif action == "machine.launch_replacement":
        assert len(replacements) == (1 if done else 0), replacements
    elif action == "rotation.add":
        (rep,) = replacements
        assert (machines[rep]["lifecycle"] == "in_service") is done, machines[rep]


def crash_and_resume(fleet: DemoFleet, action: str, point: str, tag: str) -> str:
    """With a daemon running healthy, restart it with the fault injected, break one machine, let it die,
    restart it clean and wait for the incident to be resolved. Returns the incident id."""
    crash_at = action if point == "before" else f"{action}:after"
    before = set(fleet.incidents())
    members = fleet.in_service()
    fleet.daemons[-1].stop()
    assert fleet.daemons[-1].returncode == 0, fleet.daemons[-1].describe()

    crashing = fleet.start(f"crash-{tag}", crash_at=crash_at)
    # the fleet is re-adopted: same machines, nothing launched, still in rotation
    assert wait_optimal(fleet, crashing, 10) == members
    victim = sorted(members)[0]
    break_machine(members[victim])
    wait_until(
        lambda: crashing.returncode is not None,
        CRASH_BOUND,
        f"healerd to kill itself at {crash_at}",
        interval=0.05,
        describe=fleet.describe,
    )
    assert crashing.returncode == -signal.SIGKILL, crashing.describe()
    assert "fault injection: killing healerd" in crashing.output()

    new = [i for i in fleet.incidents() if i not in before]
    assert len(new) == 1, fleet.describe()
    incident = new[0]
    assert fleet.incidents()[incident]["machine"] == victim
    assert_crashed_at(fleet, incident, action, point)

    resumed = fleet.start(f"resumed-{tag}")
    wait_until(
        lambda: fleet.incidents()[incident]["state"] in ("resolved", "failed"),
        RESOLVE_BOUND,
        f"incident {incident} to be resolved after the restart",
        interval=0.1,
        describe=fleet.describe,
    )
    assert fleet.incidents()[incident]["state"] == "resolved", fleet.describe()
    wait_optimal(fleet, resumed, 5)
    assert "Traceback" not in resumed.output(), resumed.describe()
    return incident


def assert_healed(fleet: DemoFleet, incident: str) -> None:
    machines = fleet.machines()
    inc = fleet.incidents()[incident]
    victim = inc["machine"]
    procs = fleet.processes()
    by_machine: dict[str, list[int]] = {}
    for p in procs:
        by_machine.setdefault(p.machine, []).append(p.pid)
    why = fleet.describe()

    # exactly one replacement for the incident: in the store, and as one live process
    replacements = [mid for mid, m in machines.items() if m["attributes"].get("launched_for") == incident]
    assert len(replacements) == 1, f"replacements for {incident}: {replacements}\n{why}"
    (rep,) = replacements
    assert inc["replacement"] == rep, why
    assert machines[rep]["lifecycle"] == "in_service", why
    assert len(by_machine.get(rep, [])) == 1, why

    # no untracked machine: every live demo process is a machine of the store, and no machine runs twice
    untracked = {mid: pids for mid, pids in by_machine.items() if mid not in machines}
    assert not untracked, f"processes healerd does not know about: {untracked}\n{why}"
    doubles = {mid: pids for mid, pids in by_machine.items() if len(pids) > 1}
    assert not doubles, f"machines running more than once: {doubles}\n{why}"
    for mid, m in machines.items():
        if m["lifecycle"] in ("in_service", "probation", "quarantined"):
            assert mid in by_machine, f"{mid} ({m['lifecycle']}) has no live process\n{why}"

    # the rotation is exactly the machines in service, `desired` of them, the victim not among them
    in_service = {mid: m["address"] for mid, m in machines.items() if m["lifecycle"] == "in_service"}
    assert len(in_service) == DESIRED, why
    assert fleet.rotation() == in_service, why
    assert victim not in in_service

    # the sick machine is quarantined, its process still alive (kept for forensics)
    assert machines[victim]["lifecycle"] == "quarantined", why
    assert machines[victim]["attributes"].get("incident") == incident, why
    assert by_machine.get(victim) == [int(machines[victim]["attributes"]["pid"])], why

    # the evidence bundle is complete and verifies
    bundle = fleet.state_dir / "forensics" / incident
    assert bundle.is_dir(), why
    assert verify(bundle) == []
    for name in ("incident.json", "checks.json", "machine.json", "console.log", "manifest.json"):
        assert (bundle / name).is_file(), f"{name} missing from {sorted(p.name for p in bundle.iterdir())}"
    assert json.loads((bundle / "machine.json").read_text())["id"] == victim
    assert not [p for p in bundle.parent.iterdir() if p.name.endswith(".tmp")], "a half-written bundle was left"


@pytest.mark.parametrize("point", ["before", "after"])
@pytest.mark.parametrize("action", ACTIONS)
def test_kill9_at_a_step_then_restart_finishes_the_remediation(demo_fleet: DemoFleet, action: str, point: str) -> None:
    first = demo_fleet.start("first")
    wait_optimal(demo_fleet, first, 20)
    incident = crash_and_resume(demo_fleet, action, point, "1")
    assert_healed(demo_fleet, incident)


def test_a_machine_slower_to_boot_than_fall_checks_still_enters_service(demo_fleet: DemoFleet) -> None:
    # the demo image, listening 2 s after its start: a slow boot, well within start_timeout (10 s)
    demo_fleet.command = ["sh", "-c", 'sleep 2 && exec "$0" -m healerd.demo --port {port}', "{python}"]
    daemon = demo_fleet.start("slow-boot")

    def settled() -> str | None:
        machines = demo_fleet.machines()
        if any(m["lifecycle"] == "quarantined" for m in machines.values()):
            return "quarantined"
        if len(demo_fleet.in_service()) == DESIRED and daemon.service(SERVICE)["state"] == "optimal":
            return "optimal"
        return None

    outcome = wait_until(settled, 20, "the fleet to come up", interval=0.1, describe=demo_fleet.describe)
    quarantined = [mid for mid, m in demo_fleet.machines().items() if m["lifecycle"] == "quarantined"]
    assert outcome == "optimal", f"machines quarantined while they were booting: {quarantined}"
    # a machine is recorded in service before it is written into the rotation (a kill -9 between the two is
    # mended by the rotation's sync at start): the file follows within moments
    wait_until(lambda: demo_fleet.rotation() == demo_fleet.in_service(), 5, "the rotation to list the machines")


def test_sigterm_during_a_step_is_journaled_and_the_remediation_completes_after_restart(
    demo_fleet: DemoFleet,
) -> None:
    # a replacement that takes ~2 s to boot keeps checks.await_healthy running long enough to stop healerd in it
    demo_fleet.command = ["sh", "-c", 'sleep 2 && exec "$0" -m healerd.demo --port {port}', "{python}"]
    first = demo_fleet.start("first")
    members = wait_optimal(demo_fleet, first, 25)
    victim = sorted(members)[0]
    break_machine(members[victim])

    def awaiting() -> str | None:
        for incident, _idx, action, state, _ in demo_fleet.steps():
            if action == "checks.await_healthy" and state == "running":
                return str(incident)
        return None

    incident = wait_until(
        awaiting, 15, "checks.await_healthy to be running", interval=0.05, describe=demo_fleet.describe
    )
    started = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.proc is not None and first.proc.wait(5) == 0, first.describe()
    assert time.monotonic() - started < 5
    states = {action: state for _, _, action, state, _ in demo_fleet.steps(incident)}
    assert states["checks.await_healthy"] == "interrupted", states
    assert demo_fleet.incidents()[incident]["state"] == "remediating"

    second = demo_fleet.start("second")
    wait_until(
        lambda: demo_fleet.incidents()[incident]["state"] == "resolved",
        RESOLVE_BOUND,
        f"incident {incident} to be resolved after the restart",
        interval=0.1,
        describe=demo_fleet.describe,
    )
    wait_optimal(demo_fleet, second, 10)
    assert_healed(demo_fleet, incident)
