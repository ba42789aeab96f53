"""End to end: why healerd is not acting, said everywhere, and `healerd storm clear`.

A real `healerd run` on a demo fleet of `python -m healerd.demo` processes (tests/e2e/fleet.py). Two of three
machines frozen with SIGSTOP (the shape of a network blip: they stop answering) trip the max_unhealthy
short-circuit; what an operator sees is asserted: `healerd status` and `--json`, the gauge
healerd_incidents_held for the whole hold and after it, and the webhook body a real loopback receiver got.
Then a failure during the storm cooldown is held back with the time left, and `healerd storm clear web`
lets healerd heal it at once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

from .fleet import DETECT, Healer, demo_pids, fleet_config, kill_demos, set_fault
from .helpers import StartDaemon, http_get, run_cli
from .test_alerting import Loopback, Receiver

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def _reap_demo_machines(tmp_path: Path) -> Iterator[None]:
    """Torn down after `start_daemon` (healerd stops first), then every demo machine of the test is killed
    (SIGCONT first: kill_demos wakes a frozen one)."""
    yield
    kill_demos(str(tmp_path))
    assert not demo_pids(str(tmp_path)), "demo machines survived the clean-up"


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    lb = Loopback()
    yield lb
    lb.close()


def _start(tmp_path: Path, start_daemon: StartDaemon, notifiers: dict[str, Any] | None = None) -> Healer:
    config = fleet_config(tmp_path, free_port())
    if notifiers:
        config["notifiers"] = notifiers
        config["services"]["web"]["notify"] = list(notifiers)
    healer = Healer(start_daemon(config, wait="listening"), tmp_path, config)
    healer.wait_fleet_up()
    return healer


def _pid(address: str) -> int:
    status, body = http_get(f"http://{address}/")
    assert status == 200
    return int(json.loads(body)["pid"])


def _held_total(healer: Healer) -> float:
    return healer.daemon.metrics().total("healerd_incidents_held", service="web")


def test_two_of_three_frozen_say_max_unhealthy_in_status_gauge_and_webhook(
    tmp_path: Path, start_daemon: StartDaemon, loopback: Loopback
) -> None:
    receiver = loopback.serve(Receiver())
    healer = _start(tmp_path, start_daemon, {"oncall": {"kind": "webhook", "url": receiver.url}})
    members = healer.wait_fleet_up()
    metrics = healer.daemon.metrics()
    for reason in ("max_unhealthy", "storm_cooldown", "retry_limit"):  # the kit's rule has its series at once
        assert metrics.get("healerd_incidents_held", service="web", reason=reason) == 0.0

    frozen = sorted(members)[:2]
    pids = [_pid(members[mid]) for mid in frozen]
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        healer.wait(
            lambda: (
                {i["machine"] for i in healer.incidents() if (i.get("held") or {}).get("reason") == "max_unhealthy"}
                == set(frozen)
            ),
            DETECT + 5,
            "both frozen machines held back by max_unhealthy",
        )
        held_at = time.monotonic()

        out = run_cli("status", "--json", "--url", healer.url)
        assert out.returncode == 0, out.stderr
        (web,) = [s for s in json.loads(out.stdout)["services"] if s["name"] == "web"]
        assert {h["machine"] for h in web["held"]} == set(frozen), web
        for h in web["held"]:
            assert h["reason"] == "max_unhealthy", h
            assert "more than max_unhealthy (1)" in h["detail"], h  # the gate's figures
            assert "check the monitoring path" in h["what_to_do"], h
            assert h["since"] is not None
        assert web["storm_cooldown"]["seconds_left"] > 250, web  # remediation.storm_cooldown 5m

        human = run_cli("status", "--url", healer.url)
        assert human.returncode == 0, human.stderr
        assert human.stdout.count("held back (max_unhealthy)") == 2, human.stdout
        assert "what to do: check the monitoring path" in human.stdout
        assert "storm cooldown" in human.stdout and "healerd storm clear web" in human.stdout

        # the gauge reads the hold for as long as it lasts (sampled for 3 s), by its reason
        while time.monotonic() < held_at + 3:
            m = healer.daemon.metrics()
            assert m.get("healerd_incidents_held", service="web", reason="max_unhealthy") == 2.0, healer.describe()
            time.sleep(0.25)

        def held_body() -> dict[str, Any] | None:
            for hit in receiver.accepted():
                held = hit.body.get("details", {}).get("held")
                if held and held["reason"] == "max_unhealthy":
                    return dict(hit.body)
            return None

        body = healer.wait(held_body, 10, "a webhook message naming max_unhealthy")
        assert body["details"]["held"]["what_to_do"].startswith("check the monitoring path"), body
        assert "more than max_unhealthy" in body["details"]["held"]["detail"], body

        # the incident's timeline says it once, however many passes held it back
        inc = healer.incident_for(frozen[0])
        assert inc is not None
        timeline = healer.incident(inc["id"])["timeline"]
        said = [t for t in timeline if t["type"] == "remediation.suppressed"]
        assert len(said) == 1 and "What to do: check the monitoring path" in said[0]["summary"], timeline
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)

    healer.wait(lambda: healer.incidents() and all(i["state"] == "resolved" for i in healer.incidents()), 15, "ok")
    healer.wait(lambda: _held_total(healer) == 0, 3, "the gauge back at 0 once the hold ended")
    (web,) = [s for s in healer.daemon.json("/api/v1/services")["services"] if s["name"] == "web"]
    assert web["held"] == [], web


def test_a_failure_in_a_storm_cooldown_is_held_with_the_time_left_until_storm_clear(
    tmp_path: Path, start_daemon: StartDaemon
) -> None:
    healer = _start(tmp_path, start_daemon)
    members = healer.wait_fleet_up()
    a, b = sorted(members)[:2]
    healer.mode({"paused": True})
    for mid in (a, b):
        set_fault(members[mid], "down")
    healer.wait(lambda: all(healer.machines()[m]["condition"] == "down" for m in (a, b)), DETECT, "both down")
    healer.mode({"paused": False})
    healer.wait(lambda: healer.suppressed("max_unhealthy"), 5, "the max_unhealthy short-circuit")
    for mid in (a, b):
        set_fault(members[mid], "ok")
    healer.wait(lambda: all(i["state"] == "resolved" for i in healer.incidents()), 10, "both recovered")

    set_fault(members[a], "down")
    inc = healer.wait(
        lambda: (
            (i := healer.incident_for(a))
            and i["state"] == "open"
            and (i.get("held") or {}).get("reason") == "storm_cooldown"
            and i
        ),
        DETECT + 2,
        "the new failure held back by the storm cooldown",
    )
    assert "s left" in inc["held"]["detail"] and "healerd storm clear web" in inc["held"]["what_to_do"], inc
    out = run_cli("status", "--url", healer.url)
    assert "storm cooldown" in out.stdout and "left" in out.stdout, out.stdout
    time.sleep(1.5)
    assert healer.events("remediation.started") == [], "remediated during the cooldown"

    cleared = run_cli("storm", "clear", "web", "--by", "alice", "--url", healer.url)
    cleared_at = time.time()
    assert cleared.returncode == 0, cleared.stderr
    assert "storm cooldown of web cleared by alice" in cleared.stdout, cleared.stdout

    started = healer.wait(lambda: healer.events("remediation.started"), 3, "the remediation to start")
    assert started[0]["machine"] == a
    assert started[0]["timestamp"] - cleared_at < 2.0, "not within one reconcile of the clear"
    healer.wait(lambda: healer.incident(inc["id"])["state"] == "resolved", DETECT + 25, f"{a} healed")
    timeline = healer.incident(inc["id"])["timeline"]
    assert any(t["type"] == "remediation.storm_cleared" and "by alice" in t["summary"] for t in timeline), timeline

    again = run_cli("storm", "clear", "web", "--url", healer.url)
    assert again.returncode == 0 and "no storm cooldown running" in again.stdout, again.stdout
    unknown = run_cli("storm", "clear", "nosuch", "--url", healer.url)
    assert unknown.returncode != 0 and "no service named 'nosuch'" in unknown.stderr, unknown
