"""healerd without HAProxy: a `haproxy` rotation whose stats socket is missing, refuses, never answers, answers
garbage, answers without end, echoes the command or answers HAProxy's shape with a bad field. healerd starts
all the same and monitors (in observe mode too), says once that the load balancer fails and shows it
(/readyz, healerd_rotation_up); its memory stays flat and another service's incidents are not held up. Once
Debian's real HAProxy comes up on that socket, the backend matches the rotation within one check interval."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet, free_port
from haproxy_rig import FakeStatsSocket, Haproxy

from healerd.rotations.haproxy_api import RuntimeApi

from .helpers import DaemonProcess, StartDaemon, http_check, make_config, wait_until

pytestmark = pytest.mark.e2e

INTERVAL = 0.5  # web's check interval: the rotation is compared with HAProxy this often
#: what each kind of socket makes healerd say (the error shown by /readyz)
SAYS = {
    "absent": "No such file or directory",
    "refusing": "Connection refused",
    "silent": "did not answer `show servers state web` within 3s",
    "garbage": "not HAProxy's server state",
    "endless": "with more than 1,048,576 bytes",
    "echo": "with 'show servers state web', not HAProxy's server state",
    "crafted": "a line that is not HAProxy's (line 3:",
}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def readyz(daemon: DaemonProcess) -> dict[str, Any]:
    status, body = daemon.get("/readyz")
    assert status == 200, f"/readyz answered {status}: {body[:300]!r}"
    answer: dict[str, Any] = json.loads(body)
    return answer


def backend(socket: str) -> dict[str, str]:
    """The servers taking traffic in HAProxy's backend `web` (ready): name -> address."""
    servers = asyncio.run(RuntimeApi(socket).servers("web"))
    return {s.name: s.address for s in servers.values() if s.ready}


@pytest.mark.parametrize("kind", FakeStatsSocket.KINDS)
def test_healerd_starts_and_monitors_without_haproxy_and_fills_the_backend_once_haproxy_is_up(
    kind: str, tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    fleet: Fleet = fleet_factory(3)
    socket = tmp_path / "admin.sock"  # where the HAProxy rig puts its socket
    fake = FakeStatsSocket(socket, kind).start()
    try:
        web = [("web-0", fleet[0].address), ("web-1", fleet[1].address)]
        config = make_config(tmp_path, free_port(), web, [http_check(interval=f"{INTERVAL * 1000:.0f}ms")])
        config["services"]["web"]["rotation"] = {
            "kind": "haproxy",
            "socket": str(socket),
            "backend": "web",
            "timeout": "3s",
            "server_options": "",
        }
        # another service, whose incidents must not wait on web's load balancer
        config["services"]["api"] = {
            "provider": "lab",
            "machines": [{"id": "api-0", "address": fleet[2].address}],
            "checks": [http_check(interval="200ms", fall=2)],
        }
        daemon = start_daemon(config)  # observe mode; ready: every check has a result
        started_rss = rss_kib(daemon.pid)

        failing = wait_until(lambda: readyz(daemon).get("rotations"), 10, "/readyz to show the rotation failing")
        assert failing["web"]["status"] == "failing" and SAYS[kind] in failing["web"]["error"], failing
        assert daemon.metrics().get("healerd_rotation_up", service="web") == 0.0
        status, page = daemon.get("/")
        assert status == 200 and b"The load balancer of web does not answer" in page, page[:2000]
        machines = daemon.machines()
        assert {m: machines[m]["checks"]["health"]["status"] for m in ("web-0", "web-1")} == {
            "web-0": "OK",
            "web-1": "OK",
        }

        fleet[2].mode = "fail"
        broke = time.monotonic()
        wait_until(
            lambda: any(i["machine"] == "api-0" for i in daemon.json("/api/v1/incidents")["incidents"]),
            10,
            "api-0's incident",
        )
        opened = time.monotonic() - broke
        passes = 3 / INTERVAL + opened / INTERVAL  # a rotation pass at least every interval meanwhile
        time.sleep(max(0.0, 3.0 - opened))
        grown = rss_kib(daemon.pid) - started_rss
        # detection takes fall (2) x 200 ms plus a check's timeout; a remediation loop held up by the
        # socket (waiting on it, up to its 3 s timeout, every pass) took seconds more
        assert opened < 2.0, f"api-0's incident opened {opened:.2f}s after it broke"
        assert grown < 8 * 1024, f"healerd's RSS grew {grown} KiB in ~{passes:.0f} passes against a {kind} socket"
        assert daemon.output().count("the load balancer fails") == 1, daemon.output()
        assert fake.connections >= 2 or kind in ("absent", "refusing")  # tried again, not given up on
    finally:
        fake.stop()

    h = Haproxy(tmp_path, [])
    try:
        up = time.monotonic()
        wanted = dict(web)
        wait_until(lambda: backend(h.socket) == wanted, 5, "HAProxy's backend to match the rotation")
        took = time.monotonic() - up
        wait_until(lambda: "rotations" not in readyz(daemon), 5, "/readyz to stop showing the rotation failing")
        assert daemon.metrics().get("healerd_rotation_up", service="web") == 1.0
        assert b"does not answer" not in daemon.get("/")[1]
        assert daemon.output().count("the load balancer answers again") == 1
        assert daemon.alive() and "Traceback" not in daemon.output()
        print(
            f"\n{kind}: api-0's incident {opened:.2f}s after it broke; RSS {grown:+d} KiB; "
            f"backend matched {took:.2f}s after HAProxy started (interval {INTERVAL:g}s)"
        )
        assert took < INTERVAL + 1.0, f"the backend matched {took:.2f}s after HAProxy started"
    finally:
        h.stop()
