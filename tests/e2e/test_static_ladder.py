"""A static fleet healerd cannot replace: three real nginx servers (Debian nginx-light) on loopback behind
Debian's real HAProxy, driven through its runtime API by the `haproxy` rotation.

What an operator of hand-built machines relies on: a server confirmed down leaves the backend within its
checks' detection window (fall x interval + timeout), so clients fail only inside that window; a ladder rung
(a `command` step running examples/ladder/restart-nginx, then the machine's own checks) restarts it, it returns
to the backend and the incident says what healed it, with no machine launched. Without a ladder the machine
stays out, the incident says a human must act, and it returns once someone restarts it. A playbook the
provider cannot run (replace-machine needs to launch) is refused before the daemon starts.

HAProxy's own health checks are off (`server_options: ""`): every change to the backend is healerd's, and the
failures the clients see measure healerd's detection, not HAProxy's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import free_port, require_binary
from haproxy_rig import Haproxy

from healerd.rotations.haproxy_api import RuntimeApi, ServerState

from .fleet import REPO, Healer, pid_alive
from .helpers import DaemonProcess, run_cli, wait_until, write_config

pytestmark = pytest.mark.e2e

RESTART_NGINX = REPO / "examples" / "ladder" / "restart-nginx"
INTERVAL = 1.0
TIMEOUT = 0.5
FALL = 2
RISE = 2
#: the longest a dead server may keep its place in the backend: its checks' detection window, and a second
DETECTION = FALL * INTERVAL + TIMEOUT + 1.0
MACHINES = ("web-1", "web-2", "web-3")
RATE = 20.0  # client requests per second through HAProxy


# ---------------------------------------------------------------------------------------------------------
# nginx


class NginxFleet:
    """One nginx per machine, each with its own prefix ROOT/<id>/ (nginx.conf, nginx.pid, its logs), listening on
    a 127.0.0.1 port; the layout examples/ladder/restart-nginx expects. Every master ever seen is recorded and
    ended at the close, each only once /proc says it is still one of these servers."""

    def __init__(self, root: Path, ids: tuple[str, ...]) -> None:
        self.binary = require_binary("nginx")
        self.root = root
        self.addresses = {mid: f"127.0.0.1:{free_port()}" for mid in ids}
        self.masters: set[int] = set()
        for mid, address in self.addresses.items():
            prefix = self.prefix(mid)
            (prefix / "tmp").mkdir(parents=True)
            (prefix / "nginx.conf").write_text(_conf(prefix, address, mid))

    def prefix(self, mid: str) -> Path:
        return self.root / mid

    def start(self, mid: str) -> int:
        prefix = self.prefix(mid)
        subprocess.run([self.binary, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], check=True, timeout=10)
        return self.master(mid)

    def master(self, mid: str) -> int:
        """The master the pid file names now (recorded, so that the close ends it)."""
        pid = int((self.prefix(mid) / "nginx.pid").read_text())
        self.masters.add(pid)
        return pid

    def owns(self, pid: int) -> bool:
        """The process is alive and is the master of one of these servers (not a pid reused since)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        except OSError:
            return False
        return pid_alive(pid) and "nginx: master process" in cmdline and str(self.root) in cmdline

    def kill(self, mid: str) -> int:
        """SIGKILL the server: its master and workers (a master killed alone leaves its workers serving, and they
        share its process group). Returns the master's pid."""
        pid = self.master(mid)
        assert self.owns(pid), f"{pid} is not {mid}'s nginx master: {Path(f'/proc/{pid}/cmdline').read_bytes()!r}"
        os.killpg(pid, signal.SIGKILL)
        return pid

    def close(self) -> None:
        for mid in self.addresses:  # the masters started since by someone else (a restart)
            with contextlib.suppress(OSError, ValueError):
                self.master(mid)
        for pid in sorted(self.masters):
            if self.owns(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGKILL)


def _conf(prefix: Path, address: str, mid: str) -> str:
    temp = "\n".join(f"    {kind}_temp_path {prefix}/tmp/{kind};" for kind in ("client_body", "proxy", "fastcgi"))
    return f"""daemon on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
worker_processes 1;
events {{ worker_connections 128; }}
http {{
    access_log off;
{temp}
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    server {{
        listen {address};
        location = /health {{ return 200 "ok\\n"; }}
        location / {{ return 200 "{mid}\\n"; }}
    }}
}}
"""


# ---------------------------------------------------------------------------------------------------------
# clients through HAProxy


@dataclass(frozen=True)
class Request:
    started: float  # time.monotonic()
    outcome: str  # "ok", "http 503", an exception's name


class Clients(threading.Thread):
    """Requests through HAProxy at `rate` per second (new connection each) until stopped, each one recorded."""

    def __init__(self, url: str, rate: float = RATE) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.period = 1.0 / rate
        self.requests: list[Request] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        due = time.monotonic()
        while not self.stopping.is_set():
            started = time.monotonic()
            try:
                with urllib.request.urlopen(self.url, timeout=2) as resp:
                    resp.read()
                    outcome = "ok" if resp.status == 200 else f"http {resp.status}"
            except urllib.error.HTTPError as exc:
                outcome = f"http {exc.code}"
            except OSError as exc:
                outcome = type(exc).__name__
            self.requests.append(Request(started, outcome))
            due = max(due + self.period, time.monotonic())
            self.stopping.wait(due - time.monotonic())

    def ok(self) -> int:
        return sum(r.outcome == "ok" for r in self.requests)

    def stop(self) -> list[Request]:
        self.stopping.set()
        self.join(10)
        return self.requests


# ---------------------------------------------------------------------------------------------------------
# the rig


def servers(h: Haproxy) -> dict[str, ServerState]:
    return asyncio.run(RuntimeApi(h.socket).servers("web"))


def playbook(path: Path, root: Path) -> None:
    """restart-nginx: the site's own restart (a `command` step), then the machine's own checks."""
    path.mkdir(exist_ok=True)
    book = {
        "name": "restart-nginx",
        "description": "restart the sick machine's nginx and keep it once its own checks pass",
        "steps": [
            {"action": "command", "with": {"run": [str(RESTART_NGINX), str(root)]}, "timeout": "20s"},
            {"action": "checks.await_healthy", "with": {"target": "machine"}, "timeout": "30s"},
        ],
    }
    (path / "restart-nginx.yaml").write_text(yaml.safe_dump(book, sort_keys=False))


def static_config(tmp_path: Path, nginx: NginxFleet, h: Haproxy, remediation: dict[str, Any]) -> dict[str, Any]:
    (tmp_path / "checks").mkdir(exist_ok=True)
    return {
        "daemon": {
            "listen": f"127.0.0.1:{free_port()}",
            "state_dir": str(tmp_path / "state"),
            "log_format": "console",
            "log_level": "info",
            "mode": "auto",
            "check_paths": [str(tmp_path / "checks")],
            "playbook_paths": [str(tmp_path / "playbooks")],
        },
        "providers": {"hosts": {"kind": "static"}},
        "services": {
            "web": {
                "provider": "hosts",
                "machines": [{"id": mid, "address": address} for mid, address in nginx.addresses.items()],
                "min_healthy": 1,
                "checks": [
                    {
                        "name": "health",
                        "kind": "http",
                        "url": "http://{address}/health",
                        "interval": f"{INTERVAL:g}s",
                        "timeout": f"{TIMEOUT * 1000:.0f}ms",
                        "fall": FALL,
                        "rise": RISE,
                    }
                ],
                "rotation": {
                    "kind": "haproxy",
                    "socket": h.socket,
                    "backend": "web",
                    "drain_timeout": "5s",
                    "server_options": "",
                },
                "remediation": remediation,
            }
        },
    }


@dataclass
class Rig:
    nginx: NginxFleet
    haproxy: Haproxy
    daemon: DaemonProcess
    healer: Healer

    def in_backend(self) -> dict[str, str]:
        """The servers HAProxy sends traffic to: name -> address."""
        return {name: s.address for name, s in servers(self.haproxy).items() if s.up}

    def left_backend(self, mid: str) -> bool:
        s = servers(self.haproxy).get(mid)
        return s is not None and (s.draining or s.maint)

    def kill_and_time_out(self, victim: str) -> tuple[float, float]:
        """SIGKILL the victim's nginx; returns when (monotonic) and how long it took to leave the backend."""
        self.nginx.kill(victim)
        killed = time.monotonic()
        wait_until(lambda: self.left_backend(victim), 20, f"{victim} out of the backend", interval=0.05)
        return killed, time.monotonic() - killed

    def incident(self, victim: str, state: str, timeout: float) -> dict[str, Any]:
        found: dict[str, Any] = self.healer.wait(
            lambda: (i := self.healer.incident_for(victim)) and i["state"] == state and i,
            timeout,
            f"{victim}'s incident {state}",
        )
        return found


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Any]:
    made: list[Rig] = []

    def make(remediation: dict[str, Any]) -> Rig:
        nginx = NginxFleet(tmp_path / "nginx", MACHINES)
        h = Haproxy(tmp_path, [])
        daemon: DaemonProcess | None = None
        try:
            for mid in MACHINES:
                nginx.start(mid)
            playbook(tmp_path / "playbooks", nginx.root)
            config = static_config(tmp_path, nginx, h, remediation)
            path = write_config(tmp_path / "healerd.yaml", config)
            port = int(config["daemon"]["listen"].rpartition(":")[2])
            daemon = DaemonProcess(path, port, tmp_path / "healerd.log")
            made.append(r := Rig(nginx, h, daemon, Healer(daemon, tmp_path, config)))
            daemon.start()
            daemon.wait_listening(20)
            r.healer.wait(lambda: r.in_backend() == nginx.addresses, 30, "the three nginx servers up in HAProxy")
            return r
        except BaseException:
            if daemon is None:
                nginx.close()
                h.stop()
            raise

    yield make
    for r in made:
        r.daemon.stop()
        r.haproxy.stop()
        r.nginx.close()


# ---------------------------------------------------------------------------------------------------------
# scenarios


def test_a_killed_nginx_leaves_haproxy_is_restarted_by_the_ladder_rung_and_comes_back(rig: Any) -> None:
    r: Rig = rig({"ladder": [{"playbook": "restart-nginx"}]})
    victim = MACHINES[0]
    clients = Clients(f"http://127.0.0.1:{r.haproxy.port}/")
    clients.start()
    try:
        wait_until(lambda: clients.ok() >= 20, 10, "traffic through HAProxy")
        old = r.nginx.master(victim)
        killed, took = r.kill_and_time_out(victim)
        left = killed + took
        assert took <= DETECTION, f"{victim} left the backend {took:.2f}s after its nginx died (at most {DETECTION:g}s)"

        incident = r.incident(victim, "resolved", 40)
        back = time.monotonic()
        new = r.nginx.master(victim)
        assert new != old and r.nginx.owns(new), f"{victim}'s nginx was not restarted (master {old} -> {new})"
        r.healer.wait(lambda: r.in_backend() == r.nginx.addresses, 10, f"{victim} back in the backend")
        time.sleep(2)  # traffic over the whole fleet again
    finally:
        requests = clients.stop()

    resolved = r.healer.events("incident.resolved")
    assert [e["summary"] for e in resolved] == [f"incident {incident['id']} resolved: healed by restart-nginx"]
    assert incident["details"]["healed_by"] == "restart-nginx"
    steps = r.healer.incident(incident["id"])["steps"]
    assert [(s["action"], s["state"]) for s in steps] == [
        ("command", "succeeded"),
        ("checks.await_healthy", "succeeded"),
    ]
    assert f"nginx of {victim} restarted on {r.nginx.addresses[victim]} (master {new})" in steps[0]["outputs"]["output"]
    assert sorted(r.healer.machines()) == list(MACHINES), "a machine was launched"
    assert not r.healer.events("machine.replaced", "machine.quarantined")

    failed = [q for q in requests if q.outcome != "ok"]
    late = [q for q in failed if not killed - 0.1 <= q.started <= left]
    assert not late, f"requests failed outside the detection window: {[(q.started - killed, q.outcome) for q in late]}"
    assert len(requests) >= RATE * (back - killed) * 0.5, f"only {len(requests)} requests went through"
    print(
        f"\n{victim} out of HAProxy {took:.2f}s after its nginx died (bound {DETECTION:g}s), healed and back "
        f"{back - killed:.1f}s after; {len(requests)} requests, {len(failed)} failed "
        f"({', '.join(sorted({q.outcome for q in failed})) or 'none'}), all within {took:.2f}s of the kill"
    )


def test_without_a_ladder_a_dead_nginx_stays_out_until_a_human_restarts_it(rig: Any) -> None:
    r: Rig = rig({})
    victim = MACHINES[1]
    _, took = r.kill_and_time_out(victim)
    assert took <= DETECTION, f"{victim} left the backend {took:.2f}s after its nginx died (at most {DETECTION:g}s)"

    incident = r.incident(victim, "failed", 20)
    assert "a human must act" in incident["error"], incident["error"]
    assert victim in incident["error"]
    time.sleep(FALL * INTERVAL + 2)  # a few more rounds of checks: nobody puts it back
    state = servers(r.haproxy)[victim]
    assert state.maint, f"{victim} is back in the backend while its nginx is down: {state}"
    assert r.healer.incident_for(victim)["state"] == "failed"  # type: ignore[index]

    restarted = time.monotonic()
    r.nginx.start(victim)
    incident = r.incident(victim, "resolved", 20)
    r.healer.wait(lambda: r.in_backend() == r.nginx.addresses, 10, f"{victim} back in the backend")
    back = time.monotonic() - restarted
    resolved = [e["summary"] for e in r.healer.events("incident.resolved")]
    assert resolved == [f"incident {incident['id']} resolved: {victim} recovered; back in rotation"]
    assert sorted(r.healer.machines()) == list(MACHINES)
    assert not r.healer.events("remediation.started")
    print(
        f"\n{victim} out of HAProxy {took:.2f}s after its nginx died; incident failed ({incident['error'][:60]}...); "
        f"back in the backend {back:.1f}s after a restart by hand"
    )


def test_a_static_service_naming_a_playbook_that_launches_is_refused(tmp_path: Path) -> None:
    config = {
        "daemon": {"listen": f"127.0.0.1:{free_port()}", "state_dir": str(tmp_path / "state")},
        "providers": {"hosts": {"kind": "static"}},
        "services": {
            "web": {
                "provider": "hosts",
                "machines": [{"id": "web-1", "address": "127.0.0.1:8080"}],
                "checks": [{"name": "health", "kind": "http", "url": "http://{address}/health"}],
                "remediation": {"playbook": "replace-machine"},
            }
        },
    }
    path = write_config(tmp_path / "healerd.yaml", config)
    done = run_cli("validate", "-c", str(path))
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "needs its provider to quarantine and launch machines" in done.stderr, done.stderr
    assert "(a `command` step)" in done.stderr, done.stderr  # static restarts nothing itself
    assert "services.web.remediation.playbook" in done.stderr, done.stderr
