"""End to end: what the API takes from outside is bounded. Alert inputs (`POST /api/v1/alerts`) create at most
`alert_inputs.max_per_machine` virtual checks per machine and `max_total` in all; the excess is refused with a
4xx naming the bound (the rest of the batch applies), counted in `healerd_alert_inputs_refused_total`, and a
flood of distinct alert names leaves the daemon answering, checking on time and small.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import Fleet, free_port

from .helpers import DaemonProcess, StartDaemon, http_check, http_get, make_config
from .test_api_security import Answer, no_handler_failures, post_json

pytestmark = pytest.mark.e2e


def alert(name: str, machine: str, status: str = "firing", **extra: Any) -> dict[str, Any]:
    return {"status": status, "labels": {"alertname": name, "service": "web", "machine": machine}, **extra}


def post_alerts(daemon: DaemonProcess, alerts: list[dict[str, Any]]) -> Answer:
    return post_json(daemon.port, "/api/v1/alerts", {"version": "4", "alerts": alerts})


def alert_checks(daemon: DaemonProcess) -> dict[str, list[str]]:
    return {mid: sorted(c for c in m["checks"] if c.startswith("alert:")) for mid, m in daemon.machines().items()}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def config(tmp_path: Path, fleet: Fleet, **alert_inputs: Any) -> dict[str, Any]:
    machines = [(f"web-{i + 1}", m.address) for i, m in enumerate(fleet.machines)]
    cfg = make_config(tmp_path, free_port(), machines, [http_check(interval="1s")])
    if alert_inputs:
        cfg["alert_inputs"] = alert_inputs
    return cfg


def test_alert_names_are_bounded_per_machine_and_in_all_and_resolved_ones_make_room(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(config(tmp_path, fleet_factory(3), max_per_machine=5, max_total=12))

    # 20 names for one machine: the first 5 are taken, the other 15 refused naming the bound
    answer = post_alerts(daemon, [alert(f"A{i}", "web-1") for i in range(20)])
    body = answer.json()
    assert answer.status == 422, (answer.status, body)
    assert body["error"] == "alerts refused" and "alert_inputs.max_per_machine: 5" in body["detail"], body
    assert body["accepted"] == 5 and [r["check"] for r in body["results"]] == [f"alert:A{i}" for i in range(5)]
    assert [(r["alertname"], r["reason"]) for r in body["refused"]] == [(f"A{i}", "per_machine") for i in range(5, 20)]
    assert alert_checks(daemon)["web-1"] == sorted(f"alert:A{i}" for i in range(5))
    assert daemon.machines()["web-1"]["condition"] == "down"  # the part taken applies

    # an alert already taken is renewed, never refused
    assert post_alerts(daemon, [alert("A0", "web-1")]).status == 200

    # the fleet's bound: 5 + 5 + 2 = 12
    assert post_alerts(daemon, [alert(f"B{i}", "web-2") for i in range(5)]).status == 200
    answer = post_alerts(daemon, [alert(f"C{i}", "web-3") for i in range(5)])
    body = answer.json()
    assert answer.status == 422 and body["accepted"] == 2, body
    assert {r["reason"] for r in body["refused"]} == {"total"} and "alert_inputs.max_total: 12" in body["detail"]

    metrics = daemon.metrics()
    assert metrics.get("healerd_alert_inputs_refused_total", reason="per_machine") == 15
    assert metrics.get("healerd_alert_inputs_refused_total", reason="total") == 3
    assert metrics.get("healerd_alert_inputs_checks") == 12

    # a resolved alert frees its place: a new name of the same machine takes it at once
    assert post_alerts(daemon, [alert("A1", "web-1", status="resolved")]).status == 200
    assert "alert:A1" in alert_checks(daemon)["web-1"]  # still shown (OK) until a new one needs the place
    answer = post_alerts(daemon, [alert("A-new", "web-1")])
    assert answer.status == 200, answer.json()
    checks = alert_checks(daemon)["web-1"]
    assert "alert:A1" not in checks and "alert:A-new" in checks and len(checks) == 5, checks

    # a resolved notice for an alert healerd never took creates nothing
    assert post_alerts(daemon, [alert("Never", "web-2", status="resolved")]).status == 200
    assert "alert:Never" not in alert_checks(daemon)["web-2"]

    # each bound reached is said once (the machine's, the fleet's), not once per refused alert
    log = daemon.output()
    assert log.count("as many alerts as it may") == 2, log[-3000:]
    no_handler_failures(daemon)


def test_bad_alerts_are_refused_naming_the_field(tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon) -> None:
    daemon = start_daemon(config(tmp_path, fleet_factory(1)))
    for bad, field in [
        ({"annotations": ["summary", "x"]}, "alerts[0].annotations"),
        ({"annotations": "disk full"}, "alerts[0].annotations"),
        ({"status": "burning"}, "alerts[0].status"),
        ({"endsAt": 12}, "alerts[0].endsAt"),
    ]:
        answer = post_alerts(daemon, [alert("Disk", "web-1", **bad)])
        body = answer.json()
        assert answer.status == 400 and set(body) == {"error", "detail"}, (bad, answer.status, body)
        assert field in body["detail"], body
    answer = post_alerts(daemon, [alert("Disk", "web-1"), {"labels": []}])
    assert answer.status == 400 and "alerts[1].labels" in answer.json()["detail"]
    long_name = "N" * 300
    answer = post_alerts(daemon, [alert(long_name, "web-1")])
    assert answer.status == 422 and answer.json()["refused"][0]["reason"] == "name_too_long"
    assert alert_checks(daemon)["web-1"] == []  # nothing of the refused requests was taken
    # a message of many small alerts for machines that do not exist: the answer lists a few and counts them all
    answer = post_alerts(daemon, [alert(f"X{i}", f"nosuch-{i}") for i in range(600)])
    body = answer.json()
    assert answer.status == 200 and body["unmatched_total"] == 600 and len(body["unmatched"]) == 50, str(body)[:500]
    assert len(answer.body) < 40_000, f"an answer of {len(answer.body)} bytes"
    no_handler_failures(daemon)


def test_without_a_token_file_the_receiver_takes_alerts_from_anyone_who_reaches_it(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    """What docs/checks.md says: without daemon.api_token_file the receiver, like every change, is open to
    whoever reaches the listener; with it, a POST without the token is refused (tests/e2e/test_alert_inputs.py)."""
    daemon = start_daemon(config(tmp_path, fleet_factory(1)))
    answer = post_alerts(daemon, [alert("Open", "web-1")])
    assert answer.status == 200 and answer.json()["accepted"] == 1


# ---------------------------------------------------------------------------------------------------------
# A flood of distinct alert names

FLOOD_POSTS = 500
FLOOD_BATCH = 200
FLOOD_MACHINES = 120


class LoopbackHosts:
    """One /health endpoint answering on 127.0.0.1 … 127.0.0.N, all on one port: N machines for one free port."""

    def __init__(self, n: int) -> None:
        self.port = free_port()
        self.addresses = [f"127.0.0.{i + 1}:{self.port}" for i in range(n)]
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner: web.AppRunner | None = None

    async def _start(self) -> None:
        async def health(request: web.Request) -> web.Response:
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_get("/health", health)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        for address in self.addresses:
            host, _, port = address.rpartition(":")
            await web.TCPSite(self._runner, host, int(port)).start()

    def __enter__(self) -> LoopbackHosts:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class HealthProbe(threading.Thread):
    """GET /healthz every 20 ms while the flood lasts; keeps each answer's latency."""

    def __init__(self, daemon: DaemonProcess) -> None:
        super().__init__(daemon=True)
        self.daemon_url = daemon.url
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            started = time.perf_counter()
            try:
                status, _ = http_get(self.daemon_url + "/healthz", timeout=5)
            except OSError as exc:
                self.failures.append(repr(exc))
            else:
                self.latencies.append(time.perf_counter() - started)
                if status != 200:
                    self.failures.append(f"status {status}")
            time.sleep(0.02)


@pytest.fixture
def hosts() -> Iterator[LoopbackHosts]:
    with LoopbackHosts(FLOOD_MACHINES) as h:
        yield h


def test_a_flood_of_distinct_alert_names_stays_bounded_and_the_daemon_keeps_checking(
    tmp_path: Path, hosts: LoopbackHosts, start_daemon: StartDaemon
) -> None:
    machines = [(f"web-{i + 1}", address) for i, address in enumerate(hosts.addresses)]
    cfg = make_config(tmp_path, free_port(), machines, [http_check(interval="1s")])
    daemon = start_daemon(cfg)  # the default bounds: 50 virtual checks per machine, 5,000 in all
    time.sleep(2)  # a round of checks behind it, then the baseline
    before = daemon.metrics()
    rss_before = rss_kib(daemon.pid)
    probe = HealthProbe(daemon)
    probe.start()
    statuses: dict[int, int] = {}
    accepted = 0
    started = time.monotonic()
    try:
        for n in range(FLOOD_POSTS):
            batch = [
                alert(f"Flood{n}_{i}", f"web-{(n * FLOOD_BATCH + i) % FLOOD_MACHINES + 1}") for i in range(FLOOD_BATCH)
            ]
            answer = post_alerts(daemon, batch)
            statuses[answer.status] = statuses.get(answer.status, 0) + 1
            accepted += answer.json()["accepted"]
    finally:
        probe.done.set()
        probe.join(10)
    flood_seconds = time.monotonic() - started
    time.sleep(1.5)  # one more round of checks after the flood
    after = daemon.metrics()
    rss_after = rss_kib(daemon.pid)

    counts = alert_checks(daemon)
    total = sum(len(v) for v in counts.values())
    latencies = sorted(probe.latencies)
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    runs = after.total("healerd_check_runs_total") - before.total("healerd_check_runs_total")
    missed = after.total("healerd_scheduler_missed_runs_total") - before.total("healerd_scheduler_missed_runs_total")
    lag = daemon.json("/api/v1/scheduler")
    page = len(http_get(daemon.url + "/", timeout=10)[1])
    machines = len(http_get(daemon.url + "/api/v1/machines", timeout=10)[1])
    figures = {
        "posted": FLOOD_POSTS * FLOOD_BATCH,
        "accepted": accepted,
        "virtual_checks": total,
        "max_per_machine": max(len(v) for v in counts.values()),
        "statuses": statuses,
        "flood_s": round(flood_seconds, 1),
        "healthz_n": len(latencies),
        "healthz_p50_ms": round(statistics.median(latencies) * 1000, 1),
        "healthz_p99_ms": round(p99 * 1000, 1),
        "check_runs": runs,
        "missed_runs": missed,
        "scheduler_lag_p99_ms": round(lag["lag_p99_seconds"] * 1000, 1),
        "rss_growth_mb": round((rss_after - rss_before) / 1024, 1),
        "page_kb": page // 1024,
        "machines_kb": machines // 1024,
    }
    print("alert flood:", json.dumps(figures))
    assert total == accepted == 5000 and figures["max_per_machine"] <= 50, figures
    assert set(statuses) == {200, 422}, figures
    assert not probe.failures and p99 < 0.1, (probe.failures[:5], figures)
    assert missed == 0 and runs >= FLOOD_MACHINES * flood_seconds * 0.8, figures  # every check ran on time
    assert rss_after - rss_before < 20 * 1024, figures
    refused = after.total("healerd_alert_inputs_refused_total")
    assert refused == FLOOD_POSTS * FLOOD_BATCH - 5000, figures
    assert daemon.output().count("as many alerts as it may") == 1, "the fleet's bound, said once"
    no_handler_failures(daemon)
