"""End to end: a fleet whose machines come from an executable, examples/providers/loopback-httpd (BusyBox httpd
servers on 127.0.0.1), driven by a real `healerd run` through the `command` provider.

What an operator relies on: `healerd provider test` passes the example; a machine that stops answering is
quarantined through the executable and replaced; and a kill -9 of healerd while the executable is still
launching leaves exactly one machine for that launch, none running unknown to healerd.

Every process of a test (healerd, the executable, its servers) carries HEALERD_TEST_RUN=<tmp_path> in its
environment; the servers outlive healerd by design, so the finalizer ends them, by pid, once it has checked
what each one is.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, require_binary

from .fleet import PLAYBOOKS, port_window, read_rotation, rotation_path
from .helpers import DaemonProcess, http_get, run_cli, wait_until, write_config

pytestmark = pytest.mark.e2e

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "providers" / "loopback-httpd"
TAG = "HEALERD_TEST_RUN"
DESIRED = 3


class Daemon(DaemonProcess):
    """`healerd run` with the test's marker (and what else the test says) in its environment, which the
    executable and its servers inherit."""

    def __init__(self, config_path: Path, port: int, log_path: Path, extra: dict[str, str]) -> None:
        super().__init__(config_path, port, log_path)
        self.extra = extra

    def environment(self) -> dict[str, str]:
        return {**super().environment(), **self.extra}


class Lab:
    """One test's config, daemons, the example's state folder and the processes it started."""

    def __init__(self, tmp_path: Path, desired: int = DESIRED) -> None:
        self.tmp_path = tmp_path
        self.state = tmp_path / "lab"
        self.port = free_port()
        self.daemons: list[Daemon] = []
        self.config_path = tmp_path / "healerd.yaml"
        lo, hi = port_window()
        command = [str(EXAMPLE), "--state", str(self.state), "--ports", f"{lo}-{hi}"]
        self.config = {
            "daemon": {
                "listen": f"127.0.0.1:{self.port}",
                "state_dir": str(tmp_path / "state"),
                "log_format": "console",
                "log_level": "info",
                "mode": "auto",
                "check_paths": [],
                "playbook_paths": [str(PLAYBOOKS)],
            },
            "providers": {"lab": {"kind": "command", "command": command, "timeout": "15s"}},
            "images": {"web": {"provider": "lab", "versions": {"v1": {"site": "default"}}, "known_good": "v1"}},
            "services": {
                "web": {
                    "provider": "lab",
                    "image": "web",
                    "desired": desired,
                    "min_healthy": 1 if desired < 3 else 2,
                    "rotation": {"kind": "file", "path": str(rotation_path(tmp_path))},
                    "checks": [
                        {
                            "name": "health",
                            "kind": "http",
                            "url": "http://{address}/health",
                            "interval": "400ms",
                            "timeout": "300ms",
                            "fall": 3,
                            "rise": 2,
                        }
                    ],
                    "remediation": {"playbook": "replace-machine", "max_concurrent": 1, "max_per_hour": 6},
                }
            },
        }
        write_config(self.config_path, self.config)

    def start(self, name: str, **env: str) -> Daemon:
        daemon = Daemon(self.config_path, self.port, self.tmp_path / f"{name}.log", {TAG: str(self.tmp_path), **env})
        self.daemons.append(daemon)
        daemon.start()
        daemon.wait_listening(15)
        return daemon

    # -- what the example recorded, and what runs -------------------------------------------------------
    def records(self) -> dict[str, dict[str, Any]]:
        return {p.stem: json.loads(p.read_text()) for p in sorted((self.state / "machines").glob("*.json"))}

    def processes(self) -> dict[int, str]:
        """Live processes of this test but healerd: pid -> command line."""
        marker = f"{TAG}={self.tmp_path}".encode()
        daemons = {d.pid for d in self.daemons if d.proc is not None}
        found: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) in daemons:
                continue
            try:
                if marker not in (entry / "environ").read_bytes().split(b"\0"):
                    continue
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            except OSError:
                continue
            if stat.rsplit(")", 1)[1].split()[0] != "Z":
                found[int(entry.name)] = cmdline
        return found

    def servers(self) -> dict[int, str]:
        return {pid: cmd for pid, cmd in self.processes().items() if " httpd " in f" {cmd} " or "http.server" in cmd}

    def describe(self) -> str:
        return (
            f"records: {json.dumps(self.records(), default=str)[:2000]}\nprocesses: {self.processes()}\n"
            + "\n".join(d.describe()[-3000:] for d in self.daemons[-2:])
        )

    def stop(self) -> None:
        """healerd first (it launches nothing more), then what the test started: checked by command line."""
        for daemon in self.daemons:
            daemon.stop()
        deadline = time.monotonic() + 5
        while (left := self.processes()) and time.monotonic() < deadline:
            for pid, cmdline in left.items():
                if "busybox" in cmdline or "loopback-httpd" in cmdline or "http.server" in cmdline:
                    with contextlib.suppress(OSError):
                        os.kill(pid, signal.SIGCONT)
                        os.kill(pid, signal.SIGKILL)
            time.sleep(0.05)


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    require_binary("busybox")
    rig = Lab(tmp_path)
    yield rig
    rig.stop()
    assert not rig.processes(), f"processes of the test survived: {rig.processes()}"


def in_service(daemon: Daemon) -> dict[str, str]:
    return {mid: m["address"] for mid, m in daemon.machines().items() if m["lifecycle"] == "in_service"}


def test_provider_test_passes_the_example_and_leaves_nothing_running(lab: Lab) -> None:
    dry = run_cli("provider", "test", "lab", "-c", str(lab.config_path))
    assert dry.returncode == 2 and "run again with --yes" in dry.stderr, dry
    assert not lab.records()

    out = run_cli("provider", "test", "lab", "-c", str(lab.config_path), "--yes", timeout=60)

    assert out.returncode == 0, out.stdout + out.stderr
    steps = ("list", "launch", "launch again", "describe", "console", "alive", "quarantine", "release", "restart")
    for step in (*steps, "reboot", "terminate", "terminate again", "alive after terminate"):
        assert any(re.split(r"\s{2,}", line)[:2] == [step, "ok"] for line in out.stdout.splitlines()), step
    assert "FAIL" not in out.stdout and "conforms to protocol 1" in out.stdout
    assert not lab.records() and not lab.servers(), "the test machine was terminated"


def test_a_frozen_machine_is_quarantined_through_the_executable_and_replaced(lab: Lab) -> None:
    daemon = lab.start("healerd")

    def up() -> dict[str, str] | None:
        now = in_service(daemon)
        return now if len(now) == DESIRED and rotation(lab) == now else None

    members = wait_until(up, 30, "3 machines in service and in rotation", interval=0.1, describe=lab.describe)
    records = lab.records()
    assert set(records) == set(members), "healerd's machines are the executable's machines"
    for mid, address in members.items():
        assert http_get(f"http://{address}/health") == (200, b"ok\n")
        assert address == f"127.0.0.1:{records[mid]['port']}"
    victim = sorted(members)[0]
    pid = records[victim]["pid"]
    assert pid in lab.servers(), lab.servers()

    os.kill(pid, signal.SIGSTOP)  # it stops answering, as a hung machine does

    def replaced() -> dict[str, str] | None:
        now = in_service(daemon)
        if victim in now or len(now) != DESIRED or rotation(lab) != now:
            return None
        return now

    after = wait_until(replaced, 40, "the frozen machine replaced", interval=0.1, describe=lab.describe)
    quarantined = {q["id"]: q for q in daemon.json("/api/v1/quarantine")["quarantined"]}
    assert victim in quarantined, quarantined
    assert lab.records()[victim]["quarantined"] is True, "quarantined through the executable"
    assert quarantined[victim]["evidence"]["pid"] == pid
    assert len(set(after) - set(members)) == 1, "exactly one replacement"
    assert set(lab.records()) == set(after) | {victim}
    assert pid in lab.servers(), "the quarantined machine is kept for forensics"
    incident = quarantined[victim]["incident"]
    bundle = lab.tmp_path / "state" / "forensics" / incident
    console = wait_until(lambda: _read(bundle / "console.log"), 10, "the evidence bundle", describe=lab.describe)
    assert "starting /usr/bin/busybox httpd" in console and "--- provider quarantine at" in console, console
    assert json.loads((bundle / "machine.json").read_text())["quarantined"] is True


def test_kill_9_while_the_executable_launches_ends_with_exactly_one_machine(lab: Lab) -> None:
    lab.config["services"]["web"]["desired"] = 1
    lab.config["services"]["web"]["min_healthy"] = 1
    write_config(lab.config_path, lab.config)
    first = lab.start("healerd-1", EXAMPLE_LAUNCH_DELAY="4")

    def launching() -> list[str]:
        return [cmd for cmd in lab.processes().values() if "loopback-httpd" in cmd and cmd.endswith(" launch")]

    def locks() -> list[Path]:
        return list((lab.state / "machines").glob(".*.lock")) if launching() else []

    found = wait_until(locks, 15, "the executable to be in launch", describe=lab.describe)
    assert len(found) == 1 and not lab.records() and not lab.servers()
    machine_id = found[0].name[1 : -len(".lock")]
    first.kill9()
    assert launching(), "the executable outlives healerd (its own session)"

    second = lab.start("healerd-2")
    wait_until(
        lambda: in_service(second) == {machine_id: f"127.0.0.1:{lab.records()[machine_id]['port']}"},
        30,
        f"{machine_id} in service",
        interval=0.1,
        describe=lab.describe,
    )
    time.sleep(2)  # nothing more comes of the interrupted launch
    assert set(lab.records()) == {machine_id}, "exactly one machine for the launch"
    assert len(lab.servers()) == 1, f"a server runs that healerd does not know: {lab.servers()}"
    assert set(second.machines()) == {machine_id}


def rotation(lab: Lab) -> dict[str, str]:
    return {g["labels"]["machine"]: g["targets"][0] for g in read_rotation(lab.tmp_path) or []}


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
