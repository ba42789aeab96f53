"""End to end: the real daemon (`python -m healerd run`) against loopback fake machines, through its API.

Each test starts healerd as a subprocess on a free loopback port with its state in tmp_path, drives the
fake machines' /health answers, and asserts what an operator would see: /api/v1/*, /metrics, the log.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Fleet, free_port
from prometheus_client.parser import text_string_to_metric_families

from healerd import __version__

from .helpers import DaemonProcess, StartDaemon, http_check, make_config, wait_until, write_config

pytestmark = pytest.mark.e2e


def _check(daemon: DaemonProcess, machine: str, check: str = "health") -> dict[str, Any]:
    return daemon.machines()[machine]["checks"][check]


def _machine_up(daemon: DaemonProcess, machine: str) -> float | None:
    return daemon.metrics().get("healerd_machine_up", service="web", machine=machine)


def _watch(
    daemon: DaemonProcess, machine: str, until: Any, timeout: float, check: str = "health"
) -> list[dict[str, Any]]:
    """Poll the machine's view until `until(view)`; returns every distinct snapshot seen (the last one matches)."""
    seen: list[dict[str, Any]] = []

    def step() -> bool:
        view = daemon.machines()[machine]
        snap = {**view["checks"][check], "condition": view["condition"], "up": view["up"], "at": time.time()}
        if not seen or {k: v for k, v in snap.items() if k != "at"} != {k: v for k, v in seen[-1].items() if k != "at"}:
            seen.append(snap)
        return bool(until(snap))

    wait_until(step, timeout, f"{machine} to reach the expected state", describe=lambda: f"{seen[-5:]}")
    return seen


# ---------------------------------------------------------------------------------------------------------
# 1. rise / fall


def test_fall_and_rise_are_exact_and_visible_in_api_and_metrics(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    fall, rise, interval = 3, 2, 0.4
    fleet: Fleet = fleet_factory(1)
    m = fleet[0]
    cfg = make_config(
        tmp_path,
        free_port(),
        [("web-1", m.address)],
        [http_check(interval=f"{interval * 1000:.0f}ms", fall=fall, rise=rise)],
    )
    daemon = start_daemon(cfg)
    wait_until(lambda: _check(daemon, "web-1")["ok_streak"] >= 1, 5, "a first OK result")
    assert _machine_up(daemon, "web-1") == 1

    # --- down: hard CRITICAL after exactly `fall` failing results --------------------------------------
    m.mode = "fail"
    seen = _watch(daemon, "web-1", lambda s: s["hard_state"] == "CRITICAL", timeout=fall * interval + 5)
    failing = [s for s in seen if s["fail_streak"] > 0]
    for s in failing:
        if s["fail_streak"] < fall:
            assert s["hard_state"] == "OK", f"hard CRITICAL before {fall} failures: {s}"
            assert s["state_type"] == "soft", f"an unconfirmed failure must be soft: {s}"
            assert s["status"] == "CRITICAL"
            assert s["condition"] == "up"
        else:
            assert s["hard_state"] == "CRITICAL", f"still hard OK after {s['fail_streak']} failures: {s}"
    assert {s["fail_streak"] for s in failing if s["fail_streak"] < fall} == set(range(1, fall)), seen
    hard = seen[-1]
    assert hard["fail_streak"] == fall, f"went hard CRITICAL after {hard['fail_streak']} failures, not {fall}"
    assert hard["state_type"] == "hard"
    assert hard["since"] == pytest.approx(hard["last_run"], abs=1e-3), "the hard change is the fall-th result"
    assert hard["condition"] == "down"
    assert hard["up"] is False

    wait_until(lambda: _machine_up(daemon, "web-1") == 0, interval, "healerd_machine_up to drop to 0")
    assert time.time() - hard["since"] <= interval + 0.2, "healerd_machine_up lagged the hard change"

    # --- up: hard OK after exactly `rise` OK results ----------------------------------------------------
    m.mode = "ok"
    seen = _watch(daemon, "web-1", lambda s: s["hard_state"] == "OK", timeout=rise * interval + 5)
    recovering = [s for s in seen if s["ok_streak"] > 0]
    for s in recovering:
        if s["ok_streak"] < rise:
            assert s["hard_state"] == "CRITICAL", f"hard OK before {rise} OK results: {s}"
            assert s["state_type"] == "soft"
            assert s["status"] == "OK"
            assert s["condition"] == "down"
    assert {s["ok_streak"] for s in recovering if s["ok_streak"] < rise} == set(range(1, rise)), seen
    hard = seen[-1]
    assert hard["ok_streak"] == rise, f"went hard OK after {hard['ok_streak']} OK results, not {rise}"
    assert hard["fail_streak"] == 0
    assert hard["state_type"] == "hard"
    assert hard["since"] == pytest.approx(hard["last_run"], abs=1e-3)
    assert hard["condition"] == "up"
    assert hard["up"] is True
    wait_until(lambda: _machine_up(daemon, "web-1") == 1, interval, "healerd_machine_up to return to 1")
    assert time.time() - hard["since"] <= interval + 0.2

    types = [e["type"] for e in daemon.events(machine="web-1")]
    assert types.count("machine.unhealthy") == 1
    assert types.count("machine.recovered") == 1


# ---------------------------------------------------------------------------------------------------------
# 2. service state


def _service_state_gauges(daemon: DaemonProcess) -> dict[str, float | None]:
    metrics = daemon.metrics()
    return {st: metrics.get("healerd_service_state", service="web", state=st) for st in ("optimal", "degraded", "down")}


def _wait_service(daemon: DaemonProcess, state: str, timeout: float) -> dict[str, Any]:
    svc: dict[str, Any] = wait_until(
        lambda: (s := daemon.service("web"))["state"] == state and s,
        timeout,
        f"service web to be {state}",
        describe=lambda: str(daemon.service("web")),
    )
    gauges = _service_state_gauges(daemon)
    assert gauges == {st: (1.0 if st == state else 0.0) for st in gauges}, gauges
    return svc


def test_service_goes_optimal_degraded_down_and_back(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    fleet: Fleet = fleet_factory(3)
    machines = [(f"web-{i + 1}", fleet[i].address) for i in range(3)]
    cfg = make_config(
        tmp_path,
        free_port(),
        machines,
        [http_check(interval="250ms", fall=2, rise=2)],
        desired=3,
        min_healthy=2,
    )
    daemon = start_daemon(cfg)
    svc = _wait_service(daemon, "optimal", 5)
    assert svc["desired"] == 3 and svc["min_healthy"] == 2
    assert svc["machines"] == {"healthy": 3, "impaired": 0, "down": 0, "total": 3}
    assert daemon.metrics().get("healerd_service_machines", service="web", lifecycle="in_service") == 3

    fleet[0].mode = "fail"
    svc = _wait_service(daemon, "degraded", 5)
    assert svc["machines"]["healthy"] == 2 and svc["machines"]["down"] == 1

    fleet[1].mode = "fail"
    svc = _wait_service(daemon, "down", 5)
    assert svc["machines"]["healthy"] == 1 and svc["machines"]["down"] == 2
    assert "min_healthy" in svc["reason"]

    fleet[0].mode = fleet[1].mode = "ok"
    svc = _wait_service(daemon, "optimal", 5)
    assert svc["machines"] == {"healthy": 3, "impaired": 0, "down": 0, "total": 3}

    changes = daemon.events(type="service.state_changed", service="web")
    assert [(e["details"]["from"], e["details"]["to"]) for e in changes] == [
        ("optimal", "degraded"),
        ("degraded", "down"),
        ("down", "degraded"),
        ("degraded", "optimal"),
    ]
    assert [e["status"] for e in changes] == ["firing", "firing", "firing", "resolved"]
    assert changes[1]["severity"] == "critical"


# ---------------------------------------------------------------------------------------------------------
# 3. flapping


def test_flapping_machine_is_reported_not_bounced(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    fleet: Fleet = fleet_factory(1)
    m = fleet[0]
    # fall = rise = 1: without flap detection every alternation would be a hard change and an event.
    cfg = make_config(tmp_path, free_port(), [("web-1", m.address)], [http_check(interval="200ms", fall=1, rise=1)])
    daemon = start_daemon(cfg)

    flapping_views: list[dict[str, Any]] = []
    after_flap = 0
    for _ in range(40):  # bounded: flapping needs ~7 alternations, then 8 more results while it flaps
        hits = m.hits
        wait_until(lambda h=hits: m.hits > h, 3, "the next health request")
        m.mode = "fail" if m.mode == "ok" else "ok"
        time.sleep(0.05)  # let the result land
        view = daemon.machines()["web-1"]
        if view["condition"] == "flapping":
            flapping_views.append(view)
            after_flap += 1
            if after_flap >= 8:
                break
    assert flapping_views, f"never reported flapping: {daemon.machines()['web-1']}"
    assert after_flap >= 8

    for view in flapping_views:
        assert view["flapping"] is True
        assert view["up"] is True
        assert view["checks"]["health"]["flapping"] is True
        assert view["checks"]["health"]["flap_percent"] >= 30.0
    hard_states = {v["checks"]["health"]["hard_state"] for v in flapping_views}
    assert hard_states == {"OK", "CRITICAL"}, "the hard state should keep changing while it flaps"

    events = daemon.events(machine="web-1")
    flaps = [e for e in events if e["type"] == "machine.flapping"]
    assert flaps and flaps[0]["status"] == "firing", events
    assert flaps[0]["check"] == "health"
    started = flaps[0]["timestamp"]
    before = [e for e in events if e["type"] in ("machine.unhealthy", "machine.recovered") and e["timestamp"] < started]
    assert before, "with fall = rise = 1 the first alternations are announced (the test would prove nothing)"
    bounces = [
        e for e in events if e["type"] in ("machine.unhealthy", "machine.recovered") and e["timestamp"] > started
    ]
    assert bounces == [], f"machine.unhealthy/recovered events while flapping: {bounces}"
    assert daemon.service("web")["state"] != "down"


# ---------------------------------------------------------------------------------------------------------
# 4. metrics contract


def test_metrics_parse_and_carry_the_contract_names(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    fleet: Fleet = fleet_factory(1)
    cfg = make_config(tmp_path, free_port(), [("web-1", fleet[0].address)], [http_check(interval="200ms")])
    daemon = start_daemon(cfg)
    daemon.signal(signal.SIGHUP)  # same config: a successful reload
    wait_until(
        lambda: daemon.metrics().get("healerd_config_reloads_total", outcome="success") == 1,
        5,
        "a successful reload to be counted",
        describe=daemon.describe,
    )

    status, body = daemon.get("/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}  # must parse
    names = {s.name for f in families.values() for s in f.samples}
    for sample in (
        "healerd_check_runs_total",
        "healerd_check_duration_seconds_bucket",
        "healerd_check_duration_seconds_count",
        "healerd_check_duration_seconds_sum",
        "healerd_machine_up",
        "healerd_service_state",
        "healerd_service_machines",
        "healerd_scheduler_lag_seconds_bucket",
        "healerd_scheduler_lag_seconds_count",
        "healerd_build_info",
        "healerd_config_reloads_total",
    ):
        assert sample in names, f"{sample} missing from /metrics"
    assert families["healerd_check_duration_seconds"].type == "histogram"
    assert families["healerd_scheduler_lag_seconds"].type == "histogram"
    assert families["healerd_machine_up"].type == "gauge"

    metrics = daemon.metrics()
    assert metrics.get("healerd_check_runs_total", service="web", check="health", status="OK") >= 1  # type: ignore[operator]
    assert metrics.get("healerd_check_duration_seconds_count", service="web", check="health") >= 1  # type: ignore[operator]
    assert metrics.get("healerd_machine_up", service="web", machine="web-1") == 1
    assert metrics.get("healerd_service_state", service="web", state="optimal") == 1
    assert metrics.get("healerd_service_machines", service="web", lifecycle="in_service") == 1
    assert metrics.get("healerd_scheduler_lag_seconds_count") >= 1  # type: ignore[operator]
    assert metrics.get("healerd_build_info", version=__version__) == 1
    for name, _labels, _value in metrics.samples:
        assert name.startswith("healerd_"), f"{name}: every metric carries the healerd_ prefix"


# ---------------------------------------------------------------------------------------------------------
# 5. reload


def test_sighup_applies_a_valid_config_and_refuses_an_invalid_one(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    fleet: Fleet = fleet_factory(1)
    cfg = make_config(tmp_path, free_port(), [("web-1", fleet[0].address)], [http_check(interval="250ms")])
    daemon = start_daemon(cfg)
    pid = daemon.pid
    before = wait_until(
        lambda: (c := _check(daemon, "web-1"))["ok_streak"] >= 3 and c, 5, "a few OK results before the reload"
    )
    runs_before = daemon.metrics().get("healerd_check_runs_total", service="web", check="health", status="OK")

    # --- a valid change: one more check --------------------------------------------------------------
    cfg["services"]["web"]["checks"].append({"name": "port", "kind": "tcp", "interval": "250ms", "timeout": "250ms"})
    write_config(daemon.config_path, cfg)
    daemon.signal(signal.SIGHUP)
    streaks: list[int] = []

    def reloaded() -> dict[str, Any] | None:
        checks = daemon.machines()["web-1"]["checks"]
        streaks.append(checks["health"]["ok_streak"])
        port = checks.get("port")
        if port and port["last_run"] and streaks[-1] >= before["ok_streak"] + 2:
            return checks
        return None

    checks = wait_until(reloaded, 5, "the new check to run and the old one to go on", describe=daemon.describe)
    assert checks["port"]["status"] == "OK", checks
    assert checks["port"]["hard_state"] == "OK"
    assert daemon.alive() and daemon.pid == pid, "a reload must not restart the daemon"
    assert min(streaks) >= before["ok_streak"], f"the existing check lost its state over the reload: {streaks}"
    assert checks["health"]["hard_state"] == "OK"
    metrics = daemon.metrics()
    assert metrics.get("healerd_check_runs_total", service="web", check="health", status="OK") > runs_before  # type: ignore[operator]
    assert metrics.get("healerd_check_runs_total", service="web", check="port", status="OK") >= 1  # type: ignore[operator]
    assert metrics.get("healerd_config_reloads_total", outcome="success") == 1
    assert "config reloaded" in daemon.output()

    # --- an invalid change: refused, the running config stays ----------------------------------------
    good_text = daemon.config_path.read_text()
    bad_text = good_text.replace("interval: 250ms", "interval: 5 sec", 1)
    assert bad_text != good_text
    daemon.config_path.write_text(bad_text)
    daemon.signal(signal.SIGHUP)
    wait_until(
        lambda: daemon.metrics().get("healerd_config_reloads_total", outcome="failure") == 1,
        5,
        "the failed reload to be counted",
        describe=daemon.describe,
    )
    assert daemon.metrics().get("healerd_config_reloads_total", outcome="success") == 1
    out = daemon.output()
    assert "config reload refused" in out, out
    assert "services.web.checks[0].interval" in out, "the log must name the problem's YAML path"
    assert "5 sec" in out
    line = 1 + bad_text.splitlines().index(next(x for x in bad_text.splitlines() if "5 sec" in x))
    assert f"{daemon.config_path.name}:{line}:" in out, f"the log must name the line {line}"

    # the old config keeps running: both checks, the old interval, fresh results
    checks = daemon.machines()["web-1"]["checks"]
    assert set(checks) == {"health", "port"}
    assert checks["health"]["interval"] == pytest.approx(0.25)
    marks = {name: c["last_run"] for name, c in checks.items()}
    wait_until(
        lambda: all(c["last_run"] > marks[n] for n, c in daemon.machines()["web-1"]["checks"].items()),
        3,
        "both checks to keep running after the refused reload",
    )
    assert daemon.alive() and daemon.pid == pid


# ---------------------------------------------------------------------------------------------------------
# 6. SIGTERM


def test_sigterm_exits_zero_within_five_seconds(tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon) -> None:
    fleet: Fleet = fleet_factory(2)
    cfg = make_config(
        tmp_path,
        free_port(),
        [("web-1", fleet[0].address), ("web-2", fleet[1].address)],
        [http_check(interval="200ms")],
    )
    # a check in flight (answer due in 1 s, timeout 200 ms) must not hold the shutdown. Not "hang": the
    # fleet's teardown would then wait for its 3600 s handler.
    fleet[1].mode, fleet[1].slow_seconds = "slow", 1.0
    daemon = start_daemon(cfg, wait="listening")
    wait_until(lambda: fleet[1].hits > 0 and fleet[0].hits > 0, 5, "checks to be running")
    started = time.monotonic()
    daemon.signal(signal.SIGTERM)
    assert daemon.proc is not None
    status = daemon.proc.wait(5)
    took = time.monotonic() - started
    assert status == 0, daemon.describe()
    assert took < 5
    assert "Traceback" not in daemon.output(), daemon.describe()


# ---------------------------------------------------------------------------------------------------------
# 7. restart


def test_kill9_and_restart_keeps_hard_state_without_duplicate_events(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    fall, interval = 3, 0.5
    fleet: Fleet = fleet_factory(2)
    cfg = make_config(
        tmp_path,
        free_port(),
        [("web-1", fleet[0].address), ("web-2", fleet[1].address)],
        [http_check(interval="500ms", fall=fall, rise=2)],
        desired=2,
        min_healthy=1,
    )
    daemon = start_daemon(cfg)
    fleet[0].mode = "fail"
    wait_until(
        lambda: _check(daemon, "web-1")["hard_state"] == "CRITICAL", fall * interval + 5, "web-1 to be hard CRITICAL"
    )
    assert daemon.service("web")["state"] == "degraded"
    # No API call that flushes the store on the way: what survives is what the daemon persisted by itself
    # (its periodic flush is 1 s).
    time.sleep(1.5)
    killed_at = time.time()
    daemon.kill9()

    again = start_daemon(cfg, wait="listening", name="restarted")
    view = again.machines()["web-1"]
    runs = again.metrics().total("healerd_check_runs_total", service="web", check="health")
    assert view["checks"]["health"]["hard_state"] == "CRITICAL", f"hard state lost over the restart: {view}"
    assert view["condition"] == "down"
    assert view["up"] is False
    # fewer than `fall` new results for the whole service could not have made it hard CRITICAL again
    assert runs < fall, f"{runs} results already; too late to tell restored state from re-detected"
    assert again.metrics().get("healerd_machine_up", service="web", machine="web-1") == 0
    assert again.service("web")["state"] == "degraded"
    assert again.machines()["web-2"]["condition"] == "up"

    # new (still failing) results confirm it without announcing it again
    streak = view["checks"]["health"]["fail_streak"]
    wait_until(
        lambda: _check(again, "web-1")["fail_streak"] >= streak + fall, (fall + 2) * interval + 3, "more failures"
    )
    events = again.events(machine="web-1")
    unhealthy = [e for e in events if e["type"] == "machine.unhealthy"]
    assert len(unhealthy) == 1, f"expected the one machine.unhealthy from before the kill: {events}"
    assert unhealthy[0]["timestamp"] < killed_at
    assert not [e for e in events if e["type"] == "machine.recovered"]
    changes = again.events(type="service.state_changed")
    assert [(e["details"]["from"], e["details"]["to"]) for e in changes] == [("optimal", "degraded")], changes

    # and its recovery is announced once, as for a machine that never left
    fleet[0].mode = "ok"
    wait_until(lambda: _check(again, "web-1")["hard_state"] == "OK", 2 * interval + 3, "web-1 to recover")
    wait_until(lambda: again.service("web")["state"] == "optimal", 2, "the service to be optimal again")
    events = again.events(machine="web-1")
    assert [e["type"] for e in events if e["type"].startswith("machine.")] == [
        "machine.unhealthy",
        "machine.recovered",
    ], events
    changes = again.events(type="service.state_changed")
    assert [(e["details"]["from"], e["details"]["to"]) for e in changes] == [
        ("optimal", "degraded"),
        ("degraded", "optimal"),
    ], changes
    assert again.metrics().get("healerd_machine_up", service="web", machine="web-1") == 1
