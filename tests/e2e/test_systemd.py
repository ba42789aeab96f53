"""healerd under systemd's notify protocol, with our own datagram socket as NOTIFY_SOCKET, and the unit file."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet, free_port, require_binary

from .helpers import http_check, http_get, make_config, wait_until, write_config

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "systemd" / "healerd.service"


class NotifySocket:
    """A datagram socket standing in for systemd: records every notification with its arrival time."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + path[1:] if path.startswith("@") else path)
        self.sock.settimeout(0.05)
        self.messages: list[tuple[float, dict[str, str]]] = []

    def pump(self, seconds: float = 0.0) -> None:
        end = time.monotonic() + seconds
        while True:
            try:
                data = self.sock.recv(65536).decode()
            except TimeoutError:
                if time.monotonic() >= end:
                    return
                continue
            fields = dict(line.split("=", 1) for line in data.splitlines() if "=" in line)
            self.messages.append((time.monotonic(), fields))

    def with_key(self, key: str) -> list[tuple[float, dict[str, str]]]:
        return [(t, m) for t, m in self.messages if key in m]

    def close(self) -> None:
        self.sock.close()


class Unit:
    def __init__(self, tmp_path: Path, config: dict[str, Any], env: dict[str, str], abstract: bool) -> None:
        self.port = int(config["daemon"]["listen"].rpartition(":")[2])
        self.config_path = write_config(tmp_path / "healerd.yaml", config)
        path = f"@healerd-test-{os.getpid()}-{self.port}" if abstract else str(tmp_path / "notify.sock")
        self.notify = NotifySocket(path)
        self.log = (tmp_path / "healerd.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "healerd", "run", "-c", str(self.config_path)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=tmp_path,
            env={**os.environ, "NOTIFY_SOCKET": path, "PYTHONUNBUFFERED": "1", **env},
        )
        self.log_path = tmp_path / "healerd.log"

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def status(self, path: str) -> int:
        try:
            return http_get(self.url(path), timeout=1)[0]
        except OSError:
            return 0

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self.notify.close()
        self.log.close()


@pytest.fixture
def unit_factory(tmp_path: Path) -> Iterator[Any]:
    units: list[Unit] = []

    def make(config: dict[str, Any], env: dict[str, str] | None = None, abstract: bool = False) -> Unit:
        u = Unit(tmp_path, config, env or {}, abstract)
        units.append(u)
        return u

    yield make
    for u in units:
        u.stop()


def _config(tmp_path: Path, fleet: Fleet, interval: str = "300ms", **daemon: Any) -> dict[str, Any]:
    cfg = make_config(
        tmp_path,
        free_port(),
        [(f"m{i}", m.address) for i, m in enumerate(fleet.machines)],
        [http_check(interval=interval)],
    )
    cfg["daemon"].update(daemon)
    return cfg


def test_ready_only_after_readyz_watchdog_reload_and_stop(
    tmp_path: Path, fleet_factory: Any, unit_factory: Any
) -> None:
    fleet: Fleet = fleet_factory(2)
    # A long first interval: /readyz stays 503 for a while, and READY=1 must wait for it.
    unit = unit_factory(_config(tmp_path, fleet, interval="3s"), {"WATCHDOG_USEC": "1000000"}, abstract=True)
    ready_seen_at_503 = False
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not unit.notify.with_key("READY"):
        unit.notify.pump(0.05)
        code = unit.status("/readyz")
        if unit.notify.with_key("READY") and code != 200:
            ready_seen_at_503 = True
    assert unit.notify.with_key("READY"), unit.output()
    assert not ready_seen_at_503
    assert unit.status("/readyz") == 200
    ready_at = unit.notify.with_key("READY")[0][0]
    assert "optimal" in unit.notify.with_key("READY")[0][1].get("STATUS", "")

    # WATCHDOG=1 at least twice per WatchdogSec (1 s here)
    unit.notify.pump(3.0)
    pings = [t for t, m in unit.notify.with_key("WATCHDOG") if t > ready_at]
    assert len(pings) >= 5, pings
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < 1.0, gaps  # systemd would restart healerd after 1 s without a ping

    # SIGHUP: RELOADING=1 then READY=1
    before = len(unit.notify.messages)
    unit.proc.send_signal(signal.SIGHUP)
    unit.notify.pump(1.5)
    after = [m for _, m in unit.notify.messages[before:] if "RELOADING" in m or "READY" in m]
    assert [("RELOADING" in m, "READY" in m) for m in after][:2] == [(True, False), (False, True)], after
    assert "MONOTONIC_USEC" in after[0]

    # an invalid config on reload: the old one keeps running and STATUS= says so
    unit.config_path.write_text(unit.config_path.read_text().replace("interval: 3s", "interval: 3 sec"))
    before = len(unit.notify.messages)
    unit.proc.send_signal(signal.SIGHUP)
    unit.notify.pump(1.5)
    statuses = [m["STATUS"] for _, m in unit.notify.messages[before:] if "STATUS" in m]
    assert any("reload refused" in s and "previous config running" in s for s in statuses), statuses
    assert unit.status("/healthz") == 200 and unit.proc.poll() is None

    # SIGTERM: STOPPING=1 and exit 0 within 5 s
    unit.proc.send_signal(signal.SIGTERM)
    started = time.monotonic()
    code = unit.proc.wait(5)
    unit.notify.pump(0.2)
    assert code == 0
    assert time.monotonic() - started < 5
    assert unit.notify.with_key("STOPPING")


def test_a_blocked_event_loop_stops_the_watchdog_pings(tmp_path: Path, fleet_factory: Any, unit_factory: Any) -> None:
    fleet: Fleet = fleet_factory(1)
    checks = tmp_path / "checks"
    checks.mkdir()
    (checks / "blocker.py").write_text(
        "import time\n"
        "from healerd import Check, CheckOptions, CheckResult\n\n"
        "class Opts(CheckOptions):\n    seconds: float = 2.5\n\n"
        "class Blocker(Check[Opts]):\n"
        "    kind = 'blocker'\n    Config = Opts\n\n"
        "    async def run(self) -> CheckResult:\n"
        "        if (self.env.base_dir / 'block-now').exists():\n"
        "            time.sleep(self.config.seconds)  # a badly written plugin blocking the event loop\n"
        "        return CheckResult.ok('fine')\n"
    )
    cfg = _config(tmp_path, fleet)
    cfg["services"]["web"]["checks"].append(
        {"name": "blocker", "kind": "blocker", "interval": "500ms", "timeout": "400ms"}
    )
    unit = unit_factory(cfg, {"WATCHDOG_USEC": "1000000"})
    wait_until(lambda: unit.notify.pump(0.05) or unit.notify.with_key("READY"), 10, "READY=1")
    unit.notify.pump(1.5)
    (tmp_path / "block-now").touch()
    marked = time.monotonic()
    unit.notify.pump(4.0)
    pings = [t for t, _ in unit.notify.with_key("WATCHDOG") if t > marked]
    # the silences between pings over the window, its ends included (no ping at all is the longest silence)
    gaps = [b - a for a, b in itertools.pairwise([marked, *pings, marked + 4.0])]
    # the loop is blocked 2.5 s at a time: longer than WatchdogSec (1 s), so systemd would restart healerd
    assert max(gaps) > 1.0, gaps


def test_not_under_systemd_nothing_is_sent_and_it_runs(tmp_path: Path, fleet_factory: Any) -> None:
    from healerd.systemd import Notifier

    n = Notifier({})
    assert not n.enabled and n.watchdog_interval is None
    assert n.send("READY=1") is False
    n2 = Notifier({"NOTIFY_SOCKET": "/nonexistent/sock", "WATCHDOG_USEC": "4000000", "WATCHDOG_PID": "1"})
    assert n2.watchdog_interval is None  # the watchdog is for another process


def test_json_logs_are_one_object_per_line(tmp_path: Path, fleet_factory: Any, unit_factory: Any) -> None:
    fleet: Fleet = fleet_factory(2)
    fleet.machines[1].mode = "fail"
    unit = unit_factory(_config(tmp_path, fleet, log_format="json", log_level="debug"))
    wait_until(lambda: unit.notify.pump(0.05) or unit.notify.with_key("READY"), 10, "READY=1")
    time.sleep(1.5)
    unit.proc.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    unit.proc.send_signal(signal.SIGTERM)
    assert unit.proc.wait(5) == 0
    lines = [line for line in unit.output().splitlines() if line.strip()]
    assert len(lines) > 10
    for line in lines:
        obj = json.loads(line)
        assert {"timestamp", "level", "event"} <= obj.keys(), line
    events = [json.loads(line)["event"] for line in lines]
    assert "config reloaded" in events and "stopped" in events
    down = [json.loads(line) for line in lines if "is down" in json.loads(line)["event"]]
    assert down and down[0]["machine"] == "m1" and down[0]["service"] == "web"


def test_unit_verifies_and_is_hardened(tmp_path: Path) -> None:
    analyze = require_binary("systemd-analyze")
    text = UNIT.read_text()
    # The unit runs the package's /usr/bin/healerd (make install rewrites the path); verify checks that the
    # command exists, so here it names the healerd of this checkout instead.
    assert "ExecStart=/usr/bin/healerd run -c /etc/healerd/healerd.yaml" in text and "/usr/bin/env" not in text
    here = tmp_path / "healerd.service"
    here.write_text(text.replace("/usr/bin/healerd", str(Path(sys.executable).with_name("healerd"))))
    verify = subprocess.run([analyze, "verify", str(here)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stdout.strip() == "" and verify.stderr.strip() == "", verify
    sec = subprocess.run([analyze, "security", "--offline=true", str(UNIT)], capture_output=True, text=True, timeout=60)
    line = [x for x in sec.stdout.splitlines() if "Overall exposure level" in x]
    assert line, sec.stdout + sec.stderr
    exposure = float(line[0].split(":")[1].split()[0])
    assert exposure <= 2.0, line[0]
    for needed in (
        "Type=notify",
        "NotifyAccess=main",
        "WatchdogSec=",
        "Restart=on-failure",
        "ExecReload=",
        "StateDirectory=healerd",
        "ConfigurationDirectory=healerd",
        "User=healerd",
    ):
        assert needed in text, needed
