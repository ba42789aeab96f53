"""End to end: reminders and acknowledging an incident.

A real `healerd run` observes three loopback machines and tells a real loopback webhook receiver. An open
incident is told again every `renotify_interval` until `healerd incidents ack` takes it: then no reminder over
three intervals, the acknowledgement is on the status page, in `healerd incidents ID` and the API, and the
message that resolves the incident says who was on it.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Fleet

from .helpers import StartDaemon, run_cli, wait_until
from .test_alerting import Loopback, Receiver, static_config

pytestmark = pytest.mark.e2e

RENOTIFY = 1.0


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    lb = Loopback()
    yield lb
    lb.close()


def _reminders(receiver: Receiver, incident: str) -> int:
    return sum(
        1
        for hit in receiver.accepted()
        for e in hit.body.get("events", [])
        if e["type"] == "incident.reminder" and e["incident"] == incident
    )


def test_an_acknowledged_incident_is_not_told_again_and_shows_who_is_on_it(
    tmp_path: Path, fleet3: Fleet, start_daemon: StartDaemon, loopback: Loopback
) -> None:
    receiver = loopback.serve(Receiver())
    webhook = {"kind": "webhook", "url": receiver.url, "group_wait": "0s", "renotify_interval": f"{RENOTIFY:g}s"}
    config, ids = static_config(tmp_path, fleet3, {"oncall": webhook})
    daemon = start_daemon(config)

    fleet3[0].mode = "fail"

    def opened() -> str | None:
        rows = [i for i in daemon.json("/api/v1/incidents")["incidents"] if i["machine"] == ids[0]]
        return str(rows[0]["id"]) if rows else None

    incident = wait_until(opened, 10, "the incident to open", interval=0.1)
    # not acknowledged: told again every interval
    wait_until(lambda: _reminders(receiver, incident) >= 2, 4 * RENOTIFY + 3, "two reminders")
    first = next(e for h in receiver.accepted() for e in h.body["events"] if e["type"] == "incident.reminder")
    assert "not acknowledged" in first["summary"] and f"healerd incidents ack {incident}" in first["summary"], first

    out = run_cli("incidents", "ack", incident, "--comment", "on it, disk full", "--by", "alice", "--url", daemon.url)
    assert out.returncode == 0, out.stderr
    assert f"{incident} acknowledged by alice" in out.stdout and "no more reminders" in out.stdout, out.stdout
    time.sleep(0.5)  # a reminder already on its way when the ack came may still arrive
    before = _reminders(receiver, incident)
    time.sleep(3 * RENOTIFY + 0.5)
    assert _reminders(receiver, incident) == before, "reminded after the acknowledgement\n" + receiver.describe()

    acked = [e for h in receiver.accepted() for e in h.body["events"] if e["type"] == "incident.acknowledged"]
    assert len(acked) == 1 and "acknowledged by alice: on it, disk full" in acked[0]["summary"], acked

    view = daemon.json(f"/api/v1/incidents/{incident}")
    assert view["acknowledged"]["by"] == "alice" and view["acknowledged"]["comment"] == "on it, disk full", view
    (row,) = [i for i in daemon.json("/api/v1/incidents")["incidents"] if i["id"] == incident]
    assert row["acknowledged"]["by"] == "alice", row
    shown = run_cli("incidents", incident, "--url", daemon.url)
    assert "acknowledged by alice at" in shown.stdout and "on it, disk full" in shown.stdout, shown.stdout
    status, page = daemon.get("/")
    assert status == 200 and "acknowledged by alice" in page.decode() and "on it, disk full" in page.decode()

    fleet3[0].mode = "ok"

    def resolved_body() -> dict[str, object] | None:
        for hit in receiver.accepted():
            if hit.body.get("type") == "incident.resolved" and hit.body.get("incident") == incident:
                return dict(hit.body)
        return None

    body = wait_until(resolved_body, 10, "the message that resolves it", interval=0.1)
    assert body["details"]["acknowledged"]["by"] == "alice", body  # type: ignore[index]

    unknown = run_cli("incidents", "ack", "NOSUCH", "--url", daemon.url)
    assert unknown.returncode != 0 and "NOSUCH is not an open incident" in unknown.stderr, unknown
    missing = run_cli("incidents", "ack", "--url", daemon.url)
    assert missing.returncode == 2 and "needs the incident's id" in missing.stderr, missing
