"""Alerts as check inputs end to end (docs/checks.md): a real Alertmanager (Debian's prometheus-alertmanager) routes
an alert about a demo machine to healerd's `POST /api/v1/alerts`; the machine's virtual check
`alert:<alertname>` turns CRITICAL, goes through the safety gates (observe: held, one incident), the resolved
notification clears it (the incident ends), and in auto the same alert gets the machine healed."""

from __future__ import annotations

import datetime as dt
import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Fleet, free_port
from pg import PgServer

from . import prom
from .cluster import TOKEN, ClusterRig
from .fleet import DETECT, Healer, fleet_config, kill_demos, post_json
from .helpers import DaemonProcess, StartDaemon, http_check, make_config, wait_until
from .prom import Exporter

pytestmark = pytest.mark.e2e


def rfc3339(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture
def setup(tmp_path: Path, start_daemon: StartDaemon) -> Iterator[tuple[Healer, str]]:
    token = tmp_path / "api-token"
    token.write_text("alerts-token\n")
    config = fleet_config(tmp_path, free_port())
    config["daemon"]["api_token_file"] = str(token)
    healer = Healer(start_daemon(config, wait="listening"), tmp_path, config)
    home = tmp_path / "alertmanager"
    am = {
        "route": {
            "receiver": "healerd",
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1m",
            "group_by": ["alertname", "machine"],
        },
        "receivers": [
            {
                "name": "healerd",
                "webhook_configs": [
                    {
                        "url": healer.url + "/api/v1/alerts",
                        "send_resolved": True,
                        "http_config": {"authorization": {"type": "Bearer", "credentials_file": str(token)}},
                    }
                ],
            }
        ],
    }
    try:
        with prom.alertmanager(home, am) as url:
            yield healer, url
    finally:
        kill_demos(str(tmp_path))


def send(am: str, machine: str, ends_in: float) -> None:
    """What Prometheus's rule evaluation posts to Alertmanager (an alert, or its end with endsAt now)."""

    now = time.time()
    alert = {
        "labels": {"alertname": "DiskFull", "service": "web", "machine": machine, "severity": "critical"},
        "annotations": {"summary": f"{machine}: / is 97% full"},
        "startsAt": rfc3339(now - 5),
        "endsAt": rfc3339(now + ends_in),
    }
    req = urllib.request.Request(
        am + "/api/v2/alerts", data=json.dumps([alert]).encode(), headers={"Content-Type": "application/json"}
    )
    urllib.request.urlopen(req, timeout=5).close()


def check_of(h: Healer, machine: str) -> dict[str, Any] | None:
    m = h.machines().get(machine)
    return m["checks"].get("alert:DiskFull") if m else None


def test_an_alertmanager_alert_goes_through_the_gates_clears_when_resolved_and_heals_in_auto(
    setup: tuple[Healer, str], tmp_path: Path
) -> None:
    h, am = setup
    members = h.wait_fleet_up(30)
    token = {"Authorization": "Bearer alerts-token"}
    assert post_json(h.url + "/api/v1/mode", {"mode": "observe"}, headers=token)[0] == 200
    victim = sorted(members)[0]
    send(am, victim, 120)
    h.wait(lambda: (c := check_of(h, victim)) and c["hard_state"] == "CRITICAL", 15, "the virtual check CRITICAL")
    assert check_of(h, victim)["message"] == f"alert DiskFull firing: {victim}: / is 97% full"  # type: ignore[index]
    assert h.machines()[victim]["condition"] == "down"
    inc = h.wait(lambda: h.incident_for(victim), 10, "an incident")
    h.wait(lambda: h.incident_for(victim)["details"].get("suppressed") == "observe", 10, "held back: observe")

    send(am, victim, 0)  # the alert ends: Alertmanager sends the resolved notification
    h.wait(lambda: check_of(h, victim)["hard_state"] == "OK", 15, "the resolved notification to clear it")  # type: ignore[index]
    h.wait(lambda: h.incident_for(victim)["state"] == "resolved", 10, "the incident to end")
    assert h.incident_for(victim)["id"] == inc["id"]

    # in auto the same alert gets the machine healed
    assert post_json(h.url + "/api/v1/mode", {"mode": "auto"}, headers=token)[0] == 200
    send(am, victim, 120)
    done = h.wait(
        lambda: (
            (
                i := [
                    x for x in h.incidents() if x["machine"] == victim and x["state"] == "resolved" and x["replacement"]
                ]
            )
            and i[0]
        ),
        DETECT + 40,
        f"{victim} healed",
    )
    assert done["replacement"] in h.machines() and victim in h.quarantined()

    # without the token the receiver refuses, and an alert naming no machine is said so, not dropped silently
    status, _ = post_json(h.url + "/api/v1/alerts", {"version": "4", "alerts": []})
    assert status == 401
    status, body = post_json(
        h.url + "/api/v1/alerts",
        {
            "version": "4",
            "alerts": [{"status": "firing", "labels": {"alertname": "X", "service": "web", "machine": "nope"}}],
        },
        headers=token,
    )
    assert status == 200 and body["accepted"] == 0 and "no machine 'nope'" in body["unmatched"][0]["why"], body


def test_a_prometheus_rule_alert_routed_by_alertmanager_heals_the_machine(
    setup: tuple[Healer, str], tmp_path: Path
) -> None:
    """The whole chain: a real Prometheus evaluates a rule over a loopback exporter's per-machine series and
    sends the alert to the real Alertmanager, which routes it to healerd; when the value drops, the resolved
    notification clears the virtual check."""
    h, am = setup
    members = h.wait_fleet_up(30)
    token = {"Authorization": "Bearer alerts-token"}
    assert post_json(h.url + "/api/v1/mode", {"mode": "observe"}, headers=token)[0] == 200
    exporter = Exporter()
    exporter.healerd_url = h.url
    rules = {
        "groups": [
            {
                "name": "demo",
                "rules": [
                    {
                        "alert": "QueueFull",
                        "expr": "demo_queue_depth > 100",
                        "labels": {"service": "web", "severity": "critical"},
                        "annotations": {"summary": "queue depth {{ $value }}"},
                    }
                ],
            }
        ]
    }
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules))
    config = {
        "rule_files": [str(tmp_path / "rules.yml")],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [am.removeprefix("http://")]}]}]},
        "scrape_configs": [{"job_name": "demo", "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]}],
    }
    try:
        with prom.prometheus(tmp_path / "prometheus", config):
            _the_chain(h, exporter, sorted(members)[0])
    finally:
        exporter.shutdown()


def _the_chain(h: Healer, exporter: Exporter, victim: str) -> None:
    exporter.depth[victim] = 500.0
    h.wait(
        lambda: (c := h.machines()[victim]["checks"].get("alert:QueueFull")) and c["hard_state"] == "CRITICAL",
        40,
        "the rule's alert to reach healerd through Alertmanager",
    )
    assert h.machines()[victim]["checks"]["alert:QueueFull"]["message"].startswith("alert QueueFull firing")
    h.wait(lambda: h.incident_for(victim), 10, "an incident (held: observe)")
    exporter.depth[victim] = 0.0  # the rule stops firing: Prometheus ends it, Alertmanager sends resolved
    h.wait(lambda: h.machines()[victim]["checks"]["alert:QueueFull"]["hard_state"] == "OK", 60, "the resolved notice")
    h.wait(lambda: h.incident_for(victim)["state"] == "resolved", 10, "the incident to end")


def test_an_alert_not_renewed_by_its_end_expires_to_ok(setup: tuple[Healer, str]) -> None:
    """An alert posted straight to healerd (as Alertmanager does) that nobody renews past its endsAt is over."""

    h, _ = setup
    members = h.wait_fleet_up(30)
    token = {"Authorization": "Bearer alerts-token"}
    assert post_json(h.url + "/api/v1/mode", {"mode": "observe"}, headers=token)[0] == 200
    victim = sorted(members)[0]
    alert = {
        "status": "firing",
        "labels": {"alertname": "Stale", "service": "web", "machine": members[victim], "severity": "warning"},
        "annotations": {"description": "by address"},
        "startsAt": rfc3339(time.time()),
        "endsAt": rfc3339(time.time() + 2),
    }
    status, body = post_json(h.url + "/api/v1/alerts", {"version": "4", "alerts": [alert]}, headers=token)
    assert status == 200 and body["results"] == [
        {"service": "web", "machine": victim, "check": "alert:Stale", "status": "WARNING"}
    ], body  # matched by its address, WARNING by its severity
    h.wait(lambda: (c := check_of_named(h, victim, "alert:Stale")) and c["status"] == "WARNING", 5, "WARNING")
    h.wait(lambda: check_of_named(h, victim, "alert:Stale")["status"] == "OK", 10, "the alert to expire")  # type: ignore[index]
    assert "expired: not renewed by its endsAt" in check_of_named(h, victim, "alert:Stale")["message"]  # type: ignore[index]


def check_of_named(h: Healer, machine: str, check: str) -> dict[str, Any] | None:
    m = h.machines().get(machine)
    return m["checks"].get(check) if m else None


# ---------------------------------------------------------------------------------------------------------
# Text from outside: an alert name with NUL and control characters


def nul_config(tmp_path: Path, fleet: Fleet) -> dict[str, Any]:
    cfg = make_config(tmp_path, free_port(), [("web-1", fleet[0].address)], [http_check(interval="1s")])
    cfg["daemon"]["mode"] = "observe"
    return cfg


def _nul_alert_is_taken_stored_and_shown_escaped(daemon: DaemonProcess, token: dict[str, str]) -> None:
    raw = "Disk\x00Full\x1b[2J"
    shown = "alert:Disk\\x00Full\\x1b[2J"
    alert = {
        "status": "firing",
        "labels": {"alertname": raw, "service": "web", "machine": "web-1"},
        "annotations": {"summary": "sda\x00 is full"},
    }
    status, body = post_json(daemon.url + "/api/v1/alerts", {"version": "4", "alerts": [alert]}, headers=token)
    assert status == 200 and body["results"][0]["check"] == shown, body
    check = wait_until(lambda: daemon.machines()["web-1"]["checks"].get(shown), 10, "the virtual check")
    assert check["message"] == f"alert {shown.removeprefix('alert:')} firing: sda\\x00 is full", check
    # stored: the machine's fall and its incident are in the store's event log, escaped
    events = wait_until(
        lambda: [e for e in daemon.events() if e["type"] == "machine.unhealthy" and e["machine"] == "web-1"],
        10,
        "the machine.unhealthy event, read back from the store",
    )
    assert "\\x00" in json.dumps(events) and "\\u0000" not in json.dumps(events), events
    incident = wait_until(lambda: daemon.json("/api/v1/incidents")["incidents"], 10, "the incident, stored")
    assert incident[0]["machine"] == "web-1"
    status, page = daemon.get("/")
    assert status == 200 and b"Disk\\x00Full" in page and b"\x00" not in page and b"\x1b" not in page
    time.sleep(2)  # a few flushes of the store
    assert [e for e in daemon.events() if e["type"] == "store.degraded"] == []
    assert daemon.metrics().get("healerd_store_writable") == 1
    assert "store is failing" not in daemon.output(), daemon.describe()


def test_an_alert_named_with_a_nul_is_stored_and_shown_escaped_on_sqlite(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(nul_config(tmp_path, fleet_factory(1)))
    _nul_alert_is_taken_stored_and_shown_escaped(daemon, {})


def test_an_alert_named_with_a_nul_is_stored_and_shown_escaped_on_postgresql(
    tmp_path: Path, fleet_factory: Any, pg: PgServer
) -> None:
    rig = ClusterRig(tmp_path, pg.new_database(), nul_config(tmp_path, fleet_factory(1)), ttl=3.0, confirm_from=1)
    try:
        node = rig.start("a")
        rig.wait_leader()
        wait_until(lambda: node.get("/readyz")[0] == 200, 15, "the leader ready", describe=node.describe)
        _nul_alert_is_taken_stored_and_shown_escaped(node, {"Authorization": f"Bearer {TOKEN}"})
    finally:
        problems = rig.stop_all()
    assert not problems, problems
