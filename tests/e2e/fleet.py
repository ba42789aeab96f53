"""Helpers for the self-healing end-to-end tests: a demo fleet of `python -m healerd.demo` processes launched
by a real healerd through the `local` provider, and the bookkeeping to find (and always kill) them.

The demo machines outlive healerd by design, so every image version carries HEALERD_TEST_RUN=<tmp_path> in
its environment: `demo_pids(tag)` finds every process a test launched, whatever healerd did with it.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from healerd.remediation.playbooks import load_playbooks

from .helpers import DaemonProcess, wait_until, write_config

REPO = Path(__file__).resolve().parents[2]
PLAYBOOKS = REPO / "playbooks"
TAG_VAR = "HEALERD_TEST_RUN"

INTERVAL = 0.4  # seconds between checks of one machine
TIMEOUT = 0.3
FALL = 3
RISE = 2
DESIRED = 3
MIN_HEALTHY = 2
#: how long a broken machine may take to be noticed: `fall` results plus scheduling slack on a busy box
DETECT = FALL * INTERVAL + 5
#: HEALERD_E2E_LOG_LEVEL=debug logs every check result into the daemon's output (for a failure's post-mortem)
LOG_LEVEL = os.environ.get("HEALERD_E2E_LOG_LEVEL", "info")

#: the actions of the shipped default playbook, in order (the tests follow what it says)
STEPS = [step.action for step in load_playbooks([PLAYBOOKS])[0]["replace-machine"].steps]


def port_window() -> list[int]:
    """A random 500-port window for one test's machines, below the kernel's ephemeral range: the ports the
    tests' daemons listen on come from there (free_port), and a demo machine must never take one of them
    between a daemon's kill and its restart."""
    low, _ = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    lo = random.randrange(10000, max(10001, low - 500))
    return [lo, lo + 499]


def demo_command(*extra: str) -> list[str]:
    return ["{python}", "-m", "healerd.demo", "--port", "{port}", *extra]


def fleet_config(
    tmp_path: Path,
    port: int,
    *,
    mode: str = "auto",
    known_good: str = "v1",
    remediation: dict[str, Any] | None = None,
    desired: int = DESIRED,
) -> dict[str, Any]:
    """A `local` demo fleet: image `demo-web` with a good `v1` and a `v2-broken` that starts down."""
    env = {TAG_VAR: str(tmp_path)}
    (tmp_path / "checks").mkdir(exist_ok=True)
    return {
        "daemon": {
            "listen": f"127.0.0.1:{port}",
            "state_dir": str(tmp_path / "state"),
            "log_format": "console",
            "log_level": LOG_LEVEL,
            "mode": mode,
            "check_paths": [str(tmp_path / "checks")],
            "playbook_paths": [str(PLAYBOOKS)],
        },
        "providers": {"demo": {"kind": "local", "port_range": port_window()}},
        "images": {
            "demo-web": {
                "provider": "demo",
                "versions": {
                    "v1": {"command": demo_command(), "env": env},
                    "v2-broken": {"command": demo_command("--mode", "down"), "env": env},
                },
                "known_good": known_good,
            }
        },
        "services": {
            "web": {
                "provider": "demo",
                "image": "demo-web",
                "desired": desired,
                "min_healthy": MIN_HEALTHY,
                "rotation": {"kind": "file", "path": str(rotation_path(tmp_path))},
                "checks": [
                    {
                        "name": "health",
                        "kind": "http",
                        "url": "http://{address}/health",
                        "interval": f"{INTERVAL * 1000:.0f}ms",
                        "timeout": f"{TIMEOUT * 1000:.0f}ms",
                        "fall": FALL,
                        "rise": RISE,
                    }
                ],
                "remediation": {
                    "playbook": "replace-machine",
                    "max_concurrent": 1,
                    "max_unhealthy": "50%",
                    "max_per_hour": 6,
                    **(remediation or {}),
                },
            }
        },
    }


def rotation_path(tmp_path: Path) -> Path:
    return tmp_path / "rotation-web.json"


def read_rotation(tmp_path: Path) -> list[dict[str, Any]] | None:
    """The rotation file's target groups (None while it does not exist)."""
    try:
        groups: list[dict[str, Any]] = json.loads(rotation_path(tmp_path).read_text())
    except FileNotFoundError:
        return None
    return groups


def rotation_members(tmp_path: Path) -> dict[str, str]:
    """machine id -> address, from the rotation file."""
    return {g["labels"]["machine"]: g["targets"][0] for g in read_rotation(tmp_path) or []}


def launched_ids(tmp_path: Path) -> set[str]:
    """Every machine the local provider ever started (it keeps one console log per machine)."""
    return {p.stem for p in (tmp_path / "state" / "machines").glob("*.log")}


# ---------------------------------------------------------------------------------------------------------
# Demo machines


def post(url: str, body: bytes, timeout: float = 3.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def post_json(
    url: str, body: dict[str, Any], timeout: float = 10.0, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    req = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def set_fault(address: str, mode: str) -> None:
    status, body = post(f"http://{address}/fault", mode.encode())
    assert status == 200, f"POST http://{address}/fault {mode} answered {status}: {body!r}"
    assert json.loads(body) == {"mode": mode}


def pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def demo_pids(tag: str) -> list[int]:
    """Live processes whose environment carries HEALERD_TEST_RUN=<tag>."""
    marker = f"{TAG_VAR}={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in env and pid_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def kill_demos(tag: str, timeout: float = 5.0) -> list[int]:
    """Kill every demo machine of a test (their process groups), SIGCONT first in case one is frozen."""
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while (pids := demo_pids(tag)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(OSError):
                pgid = os.getpgid(pid)
                os.killpg(pgid, signal.SIGCONT)
                os.killpg(pgid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            killed.append(pid)
        time.sleep(0.05)
    return killed


# ---------------------------------------------------------------------------------------------------------
# Views of the running daemon


class Healer:
    """The daemon under test plus its fleet's files, with the views the scenarios assert on."""

    def __init__(self, daemon: DaemonProcess, tmp_path: Path, config: dict[str, Any]) -> None:
        self.daemon = daemon
        self.tmp_path = tmp_path
        self.config = config
        self.state_dir = tmp_path / "state"

    @property
    def url(self) -> str:
        return self.daemon.url

    def machines(self) -> dict[str, dict[str, Any]]:
        return self.daemon.machines()

    def in_service(self) -> dict[str, dict[str, Any]]:
        return {k: m for k, m in self.machines().items() if m["lifecycle"] == "in_service"}

    def rotation(self) -> dict[str, str]:
        return rotation_members(self.tmp_path)

    def quarantined(self) -> dict[str, dict[str, Any]]:
        return {q["id"]: q for q in self.daemon.json("/api/v1/quarantine")["quarantined"]}

    def incidents(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = self.daemon.json("/api/v1/incidents")["incidents"]
        return rows

    def incident(self, incident_id: str) -> dict[str, Any]:
        view: dict[str, Any] = self.daemon.json(f"/api/v1/incidents/{incident_id}")
        return view

    def events(self, *types: str) -> list[dict[str, Any]]:
        """Events of service web, oldest first (only `types` when given)."""
        return self.daemon.events(service="web", **({"type": ",".join(types)} if types else {}))

    def service_state(self) -> str:
        return str(self.daemon.service("web")["state"])

    def describe(self) -> str:
        """What a failed wait prints: the fleet as healerd sees it, the rotation file, the log tail."""
        try:
            machines = {k: (m["lifecycle"], m["condition"], m["address"]) for k, m in self.machines().items()}
            svc = self.daemon.service("web")
            quarantined = list(self.quarantined())
            incidents = [(i["id"], i["state"], i["machine"], i["details"]) for i in self.incidents()]
        except (OSError, AssertionError) as exc:
            machines, svc, quarantined, incidents = {}, {"error": str(exc)}, [], []
        return (
            f"service: {svc}\nmachines: {machines}\nquarantined: {quarantined}\nincidents: {incidents}\n"
            f"rotation: {self.rotation()}\nlaunched: {sorted(launched_ids(self.tmp_path))}\n{self.daemon.describe()}"
        )

    def wait(self, predicate: Any, timeout: float, what: str) -> Any:
        return wait_until(predicate, timeout, what, interval=0.1, describe=self.describe)

    def wait_fleet_up(self, timeout: float = 15.0) -> dict[str, str]:
        """3 machines in service, the service optimal and the rotation file listing exactly them."""

        def up() -> dict[str, str] | None:
            members = self.in_service()
            if len(members) != DESIRED or self.service_state() != "optimal":
                return None
            addresses = {mid: m["address"] for mid, m in members.items()}
            return addresses if self.rotation() == addresses else None

        result: dict[str, str] = self.wait(up, timeout, "the fleet to come up: 3 in service, optimal, in rotation")
        return result

    def reload(self, change: Any) -> None:
        """Apply `change(config)` to the config, rewrite the file and SIGHUP; waits for a successful reload."""
        before = self.daemon.metrics().total("healerd_config_reloads_total", outcome="success")
        change(self.config)
        write_config(self.daemon.config_path, self.config)
        self.daemon.signal(signal.SIGHUP)
        self.wait(
            lambda: self.daemon.metrics().total("healerd_config_reloads_total", outcome="success") > before,
            5,
            "the reload to succeed",
        )

    def mode(self, body: dict[str, Any]) -> dict[str, Any]:
        status, out = post_json(self.url + "/api/v1/mode", body)
        assert status == 200, f"POST /api/v1/mode {body} answered {status}: {out}"
        result: dict[str, Any] = out
        return result

    def incident_for(self, machine: str) -> dict[str, Any] | None:
        found = [i for i in self.incidents() if i["machine"] == machine]
        return found[0] if found else None

    def suppressed(self, reason: str, machine: str | None = None) -> list[dict[str, Any]]:
        """remediation.suppressed events with this reason (for this machine)."""
        return [
            e
            for e in self.events("remediation.suppressed")
            if e["details"].get("reason") == reason and machine in (None, e["machine"])
        ]
