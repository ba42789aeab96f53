"""`kind: prometheus` against a real Prometheus (Debian's `prometheus`): it scrapes a loopback exporter that
publishes a queue depth per demo machine; healerd's check queries it per machine. A machine whose depth
crosses the critical range turns CRITICAL, is healed, and its replacement reads OK; Prometheus away is UNKNOWN
(it never remediates on its own)."""

from __future__ import annotations

import json
import re
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

from . import prom
from .fleet import DETECT, Healer, fleet_config, kill_demos, set_fault
from .helpers import StartDaemon, wait_until
from .prom import Exporter

pytestmark = pytest.mark.e2e


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Exporter]]:
    exporter = Exporter()
    scrape = {"scrape_configs": [{"job_name": "demo", "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]}]}
    try:
        with prom.prometheus(tmp_path / "prometheus", scrape) as url:
            yield url, exporter
    finally:
        exporter.shutdown()


def queue_fleet(tmp_path: Path, start_daemon: StartDaemon, **check: Any) -> Healer:
    """healerd on the demo fleet with a `queue` prometheus check (every 1 s, fall 2, rise 1) besides its health."""
    config = fleet_config(tmp_path, free_port())
    config["services"]["web"]["checks"].append(
        {"name": "queue", "kind": "prometheus", "interval": "1s", "timeout": "800ms", "fall": 2, "rise": 1, **check}
    )
    return Healer(start_daemon(config, wait="listening"), tmp_path, config)


def test_a_prometheus_query_crossing_its_threshold_heals_the_machine(
    prometheus: tuple[str, Exporter], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    url, exporter = prometheus
    healer = queue_fleet(
        tmp_path,
        start_daemon,
        url=url,
        query='max(demo_queue_depth{{machine="{id}"}})',  # PromQL's braces doubled (a template)
        warning="~:50",
        critical="~:100",
    )
    exporter.healerd_url = healer.url
    try:
        members = healer.wait_fleet_up(40)

        def all_ok() -> bool:
            ms = healer.machines()
            return all(ms[m]["checks"]["queue"]["status"] == "OK" for m in members)

        healer.wait(all_ok, 20, "the queue check OK on every machine")
        victim = sorted(members)[0]
        exporter.depth[victim] = 500.0
        healer.wait(
            lambda: healer.machines()[victim]["checks"]["queue"]["status"] == "CRITICAL", DETECT + 5, "CRITICAL"
        )
        message = healer.machines()[victim]["checks"]["queue"]["message"]
        assert message.startswith("500 (outside ~:100)"), message
        done = healer.wait(
            lambda: (i := healer.incident_for(victim)) and i["state"] == "resolved" and i, 40, f"{victim} healed"
        )
        replacement = done["replacement"]
        assert healer.machines()[replacement]["checks"]["queue"]["status"] == "OK"
        assert healer.quarantined().get(victim)

        # a warning is a warning, and Prometheus away is UNKNOWN: neither is healed
        exporter.depth[replacement] = 70.0
        healer.wait(
            lambda: healer.machines()[replacement]["checks"]["queue"]["status"] == "WARNING", 10, "WARNING at 70"
        )
        exporter.depth[replacement] = 0.0
    finally:
        kill_demos(str(tmp_path))


def test_prometheus_away_is_unknown_with_the_reason(tmp_path: Path, start_daemon: StartDaemon) -> None:
    healer = queue_fleet(tmp_path, start_daemon, url=f"http://127.0.0.1:{free_port()}", query="up")
    try:

        def unknown() -> dict[str, Any] | None:
            ms = healer.machines()
            checks = [m["checks"].get("queue") for m in ms.values()]
            return next((c for c in checks if c and c["status"] == "UNKNOWN"), None)

        check = wait_until(unknown, 20, "the check UNKNOWN")
        assert "Prometheus at http://127.0.0.1:" in check["message"] and "refused" in check["message"], check
        time.sleep(2)
        assert healer.incidents() == []  # UNKNOWN never remediates
    finally:
        kill_demos(str(tmp_path))


def test_the_kits_rule_fires_in_a_real_prometheus_when_a_remediation_fails(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    """Prometheus scrapes healerd with monitoring/healerd-rules.yml loaded; a remediation fails (the known-good
    image is broken): increase(healerd_remediations_total[5m]) counts that first failure (the series existed at
    0 before it) and HealerdRemediationFailed fires."""
    config = fleet_config(tmp_path, free_port(), remediation={"boot_timeout": "2s"})
    healer = Healer(start_daemon(config, wait="listening"), tmp_path, config)
    rules = Path(__file__).resolve().parents[2] / "monitoring" / "healerd-rules.yml"
    scrape = {
        "rule_files": [str(rules)],
        "scrape_configs": [
            {"job_name": "healerd", "static_configs": [{"targets": [healer.url.removeprefix("http://")]}]}
        ],
    }
    with prom.prometheus(tmp_path / "prometheus", scrape) as url:
        _remediation_failure_seen_by_prometheus(healer, f"{url}/api/v1")
    kill_demos(str(tmp_path))


def _remediation_failure_seen_by_prometheus(healer: Healer, api: str) -> None:
    def query(expr: str) -> list[dict[str, Any]]:
        url = f"{api}/query?" + urllib.parse.urlencode({"query": expr})
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:
                result: list[dict[str, Any]] = json.loads(resp.read())["data"]["result"]
                return result
        except OSError:
            return []

    members = healer.wait_fleet_up(30)
    failed = 'healerd_remediations_total{service="web",outcome="failed"}'
    wait_until(lambda: query(failed), 30, "Prometheus to scrape the failed-remediations counter at 0")
    assert float(query(failed)[0]["value"][1]) == 0

    def bad_known_good(cfg: dict[str, Any]) -> None:
        cfg["images"]["demo-web"]["known_good"] = "v2-broken"

    healer.reload(bad_known_good)
    victim = sorted(members)[0]
    set_fault(members[victim], "down")
    healer.wait(lambda: any(i["state"] == "failed" for i in healer.incidents()), DETECT + 30, "a failed remediation")
    counted = wait_until(
        lambda: [r for r in query(f"increase({failed}[5m])") if float(r["value"][1]) > 0],
        20,
        "increase() to count the first failed remediation",
    )
    assert float(counted[0]["value"][1]) > 0
    firing = wait_until(
        lambda: query('ALERTS{alertname="HealerdRemediationFailed", alertstate="firing"}'),
        20,
        "HealerdRemediationFailed to fire",
    )
    assert firing[0]["metric"]["service"] == "web" and firing[0]["metric"]["severity"] == "critical"


def test_a_batched_query_serves_every_machine_with_one_query_per_window(
    prometheus: tuple[str, Exporter], tmp_path: Path, start_daemon: StartDaemon
) -> None:
    """batch_label: one query of Prometheus serves the checks of all three machines within batch_window (counted
    on Prometheus's own request counter), and a machine crossing the range is still CRITICAL on its own."""
    url, exporter = prometheus
    healer = queue_fleet(
        tmp_path,
        start_daemon,
        url=url,
        query="demo_queue_depth",
        batch_label="machine",
        batch_value="{id}",
        batch_window="2s",
        critical="~:100",
    )
    exporter.healerd_url = healer.url
    try:
        members = healer.wait_fleet_up(40)
        healer.wait(
            lambda: all(healer.machines()[m]["checks"]["queue"]["status"] == "OK" for m in members), 20, "all OK"
        )

        def queries() -> float:
            with urllib.request.urlopen(url + "/metrics", timeout=3) as resp:
                text = resp.read().decode()
            found = re.search(r'prometheus_http_requests_total\{code="200",handler="/api/v1/query"\} (\S+)', text)
            return float(found.group(1)) if found else 0.0

        before, runs_before = queries(), _runs(healer)
        time.sleep(10)
        asked, runs = queries() - before, _runs(healer) - runs_before
        print(f"\n{runs:.0f} check runs of 3 machines in 10 s answered by {asked:.0f} queries of Prometheus")
        assert runs >= 24 and asked <= runs / 2, (runs, asked)
        victim = sorted(members)[0]
        exporter.depth[victim] = 500.0
        healer.wait(
            lambda: healer.machines()[victim]["checks"]["queue"]["status"] == "CRITICAL", DETECT + 5, "CRITICAL"
        )
        others = [m for m in members if m != victim]
        assert all(healer.machines()[m]["checks"]["queue"]["status"] == "OK" for m in others)
    finally:
        kill_demos(str(tmp_path))


def _runs(healer: Healer) -> float:
    return healer.daemon.metrics().total("healerd_check_runs_total", check="queue")
