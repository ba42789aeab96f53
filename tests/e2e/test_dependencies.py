"""`depends_on` end to end (docs/remediation.md): web depends on db. With db down, a failing web machine is held back
(reason dependency_down, the dependency named) and nothing is launched; once db is back, web is healed."""

from __future__ import annotations

import copy
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

from .fleet import DETECT, Healer, fleet_config, kill_demos, launched_ids, set_fault
from .helpers import StartDaemon

pytestmark = pytest.mark.e2e


@pytest.fixture
def healer(tmp_path: Path, start_daemon: StartDaemon) -> Iterator[Healer]:
    config = fleet_config(tmp_path, free_port(), remediation={"max_per_hour": 20})
    db = copy.deepcopy(config["services"]["web"])
    db.update(
        {"desired": 2, "min_healthy": 1, "rotation": {"kind": "file", "path": str(tmp_path / "rotation-db.json")}}
    )
    config["services"]["db"] = db
    config["services"]["web"]["depends_on"] = ["db"]
    h = Healer(start_daemon(config, wait="listening"), tmp_path, config)
    yield h
    h.daemon.stop()
    kill_demos(str(tmp_path))


def serving(h: Healer, service: str) -> dict[str, dict[str, Any]]:
    return {k: m for k, m in h.daemon.machines().items() if m["service"] == service and m["lifecycle"] == "in_service"}


def test_web_is_not_healed_while_db_is_down_and_is_healed_once_db_is_back(healer: Healer, tmp_path: Path) -> None:
    h = healer
    h.wait(
        lambda: h.daemon.service("db")["state"] == "optimal" and h.daemon.service("web")["state"] == "optimal",
        30,
        "db and web optimal",
    )
    db = serving(h, "db")
    web = serving(h, "web")
    for m in db.values():  # the database goes down (db's own remediation is held back by max_unhealthy)
        set_fault(m["address"], "down")
    h.wait(lambda: h.daemon.service("db")["state"] == "down", DETECT + 5, "db down")
    before = launched_ids(tmp_path)
    victim = sorted(web)[0]
    set_fault(web[victim]["address"], "down")

    def held() -> dict[str, Any] | None:
        return next(
            (
                i
                for i in h.incidents()
                if i["machine"] == victim and i["details"].get("suppressed") == "dependency_down"
            ),
            None,
        )

    inc = h.wait(held, DETECT + 5, f"{victim}'s remediation held back by dependency_down")
    assert "db: " in inc["details"]["suppressed_detail"], inc["details"]
    suppressed = [e for e in h.events("remediation.suppressed") if e["machine"] == victim]
    assert suppressed and "a service it depends on is down (db: " in suppressed[-1]["summary"], suppressed
    metrics = h.daemon.metrics()
    assert (metrics.get("healerd_remediation_suppressed_total", service="web", reason="dependency_down") or 0) >= 1
    # counters exist at 0 before their first event (a rule's increase() counts the first remediation)
    for outcome in ("succeeded", "failed"):
        assert (
            metrics.get("healerd_remediations_total", service="web", playbook="replace-machine", outcome=outcome) == 0
        )
    assert metrics.get("healerd_remediation_suppressed_total", service="db", reason="retry_limit") == 0
    page = " ".join(re.sub(r"<[^>]+>", " ", h.daemon.get("/")[1].decode()).split())
    assert "held back: a service it depends on is down (dependency_down)" in page and "(db: " in page
    time.sleep(4)  # held, and still nothing launched
    assert launched_ids(tmp_path) == before
    assert h.incident_for(victim)["state"] == "open"

    for m in db.values():  # the database is back: web's machine is healed now
        set_fault(m["address"], "ok")
    h.wait(lambda: h.daemon.service("db")["state"] == "optimal", DETECT + 10, "db optimal again")
    done = h.wait(
        lambda: (i := h.incident_for(victim)) and i["state"] == "resolved" and i, 40, f"{victim} healed once db is back"
    )
    new = launched_ids(tmp_path) - before
    assert len(new) == 1 and done["replacement"] in new, (new, done)
    metrics = h.daemon.metrics()
    succeeded = metrics.get(
        "healerd_remediations_total", service="web", playbook="replace-machine", outcome="succeeded"
    )
    assert succeeded == 1
    # the quarantined machine is no outage: it has no healerd_machine_up series (its replacement has one, at 1)
    assert metrics.get("healerd_machine_up", service="web", machine=victim) is None
    assert metrics.get("healerd_machine_up", service="web", machine=done["replacement"]) == 1
