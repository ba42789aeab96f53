"""End to end: a real `healerd run` tells real receivers on loopback what happened.

Receivers are aiohttp servers the tests run on their own event loop in a thread (so the synchronous test
body can poll the daemon while they answer): a webhook receiver that checks the HMAC signature, a fake Slack
incoming webhook, and Debian's real `prometheus-alertmanager`. Incidents come either from a `local` demo
fleet that heals itself (the demo machines outlive healerd, so they are found by HEALERD_TEST_RUN in their
environment and killed after each test) or, when only the alerting path matters, from a `static` service of
loopback machines the test breaks and mends at will (faster, and nothing is launched).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import Fleet, free_port
from test_notifiers import (
    assert_slack_limits,
    assert_webhook_body,
    event_listing,
    parse_rfc3339,
    slack_header,
    verify_signature,
)

from . import prom
from .fleet import Healer, demo_pids, fleet_config, kill_demos, set_fault
from .helpers import (
    DaemonProcess,
    StartDaemon,
    http_check,
    http_get,
    make_config,
    run_cli,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e

SECRET = "correct horse battery staple"


# ---------------------------------------------------------------------------------------------------------
# Receivers on loopback


@dataclass
class Hit:
    """One request a receiver got, and what it answered."""

    at: float  # time.monotonic() on arrival
    path: str
    headers: dict[str, str]
    raw: bytes
    status: int = 0

    @property
    def body(self) -> Any:
        return json.loads(self.raw)

    @property
    def id(self) -> str:
        body = self.body
        return str(body.get("id", "")) if isinstance(body, dict) else ""


#: (hit, earlier hits) -> (status, headers, text)
Answer = Callable[[Hit, list[Hit]], tuple[int, dict[str, str], str]]


def always_ok(hit: Hit, before: list[Hit]) -> tuple[int, dict[str, str], str]:
    return 200, {}, "ok"


@dataclass
class Receiver:
    answer: Answer = always_ok
    url: str = ""
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle(self, request: web.Request) -> web.Response:
        hit = Hit(time.monotonic(), request.path, dict(request.headers), await request.read())
        with self.lock:
            status, headers, text = self.answer(hit, list(self.hits))
            hit.status = status
            self.hits.append(hit)
        return web.Response(status=status, headers=headers, text=text)

    def snapshot(self) -> list[Hit]:
        with self.lock:
            return list(self.hits)

    def accepted(self) -> list[Hit]:
        """What the receiver keeps: the first 2xx delivery of each message id (it dedupes by id)."""
        seen: set[str] = set()
        out = []
        for h in self.snapshot():
            if 200 <= h.status < 300 and h.id not in seen:
                seen.add(h.id)
                out.append(h)
        return out

    def describe(self) -> str:
        return "receiver hits:\n" + "\n".join(
            f"  {h.at:.2f} {h.status} {h.id} {[e['type'] for e in h.body.get('events', [])]}" for h in self.snapshot()
        )


class Loopback:
    """aiohttp receivers on 127.0.0.1, served by an event loop in a background thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="receivers", daemon=True)
        self._thread.start()
        self._runners: list[web.AppRunner] = []

    def serve(self, receiver: Receiver, port: int | None = None) -> Receiver:
        port = port or free_port()

        async def start() -> web.AppRunner:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", receiver.handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            return runner

        self._runners.append(asyncio.run_coroutine_threadsafe(start(), self._loop).result(10))
        receiver.url = f"http://127.0.0.1:{port}"
        return receiver

    def close(self) -> None:
        async def stop() -> None:
            for r in self._runners:
                await r.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()


@pytest.fixture
def loopback() -> Iterator[Loopback]:
    lb = Loopback()
    yield lb
    lb.close()


@pytest.fixture(autouse=True)
def _reap_demo_machines(tmp_path: Path) -> Iterator[None]:
    """Autouse, so it is torn down after `start_daemon`: healerd is stopped first, then every demo machine
    this test launched is killed (their environment carries HEALERD_TEST_RUN=<tmp_path>)."""
    yield
    kill_demos(str(tmp_path))
    left = demo_pids(str(tmp_path))
    assert not left, f"demo machines survived the clean-up: {left}"


# ---------------------------------------------------------------------------------------------------------
# Configs


def webhook(url: str, secret_file: Path | None = None, **options: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "webhook", "url": url + "/hook", "group_wait": "0s", **options}
    if secret_file is not None:
        out["secret_file"] = str(secret_file)
    return out


def static_config(
    tmp_path: Path, fleet: Fleet, notifiers: dict[str, Any], **service: Any
) -> tuple[dict[str, Any], list[str]]:
    """An observed static service `web` of the fleet's loopback machines, notifying every notifier."""
    ids = [f"web-{i + 1}" for i in range(len(fleet.machines))]
    config = make_config(
        tmp_path,
        free_port(),
        [(mid, m.address) for mid, m in zip(ids, fleet.machines, strict=True)],
        [http_check(interval="300ms", fall=3, rise=2)],
        desired=len(ids),
        min_healthy=1,
    )
    config["notifiers"] = notifiers
    config["services"]["web"]["notify"] = list(notifiers)
    config["services"]["web"].update(service)
    return config, ids


def write_secret(tmp_path: Path) -> Path:
    path = tmp_path / "webhook-secret"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return path


def notifications(daemon: DaemonProcess) -> dict[str, Any]:
    view: dict[str, Any] = daemon.json("/api/v1/notifications?limit=500")
    return view


def outbox_rows(tmp_path: Path) -> list[dict[str, Any]]:
    """The outbox table of the state store, read directly (read-only)."""
    db = sqlite3.connect(f"file:{tmp_path / 'state' / 'state.db'}?mode=ro", uri=True, timeout=5)
    try:
        db.row_factory = sqlite3.Row
        return [dict(r) for r in db.execute("SELECT * FROM outbox ORDER BY created_at, id")]
    finally:
        db.close()


def event_types(hits: list[Hit]) -> list[str]:
    return [e["type"] for h in hits for e in h.body["events"]]


# ---------------------------------------------------------------------------------------------------------
# 1. a machine fails and is healed: the whole story reaches the webhook, in order, signed


def test_webhook_gets_the_healing_story_in_order_signed_and_valid(
    tmp_path: Path, loopback: Loopback, start_daemon: StartDaemon
) -> None:
    hook = loopback.serve(Receiver())
    config = fleet_config(tmp_path, free_port())
    config["notifiers"] = {"audit": webhook(hook.url, write_secret(tmp_path))}
    config["services"]["web"]["notify"] = ["audit"]
    healer = Healer(start_daemon(config, wait="listening"), tmp_path, config)
    addresses = healer.wait_fleet_up()
    sick = sorted(addresses)[0]
    set_fault(addresses[sick], "down")

    def resolved() -> list[Hit]:
        hits = hook.accepted()
        return hits if "incident.resolved" in event_types(hits) else []

    wait_until(resolved, 30, "incident.resolved at the receiver", interval=0.1, describe=healer.describe)
    hits = hook.accepted()

    for h in hits:
        assert h.path == "/hook"
        assert h.headers["Content-Type"] == "application/json"
        assert verify_signature(SECRET, h.raw, h.headers.get("X-Healerd-Signature")), h.headers
        assert h.headers["Idempotency-Key"] == h.id
        assert_webhook_body(h.body)
        assert h.body["service"] == "web"

    # in order: messages in the order they were made (ids sort by time), events in time order across them
    ids = [h.id for h in hits]
    assert ids == sorted(ids), ids
    stamps = [parse_rfc3339(e["timestamp"]) for h in hits for e in h.body["events"]]
    assert stamps == sorted(stamps), list(zip(event_types(hits), stamps, strict=True))
    # no event twice
    event_ids = [e["id"] for h in hits for e in h.body["events"]]
    assert len(event_ids) == len(set(event_ids))

    incident = healer.incident_for(sick)
    assert incident is not None, healer.describe()
    story = [
        (e["type"], e["status"])
        for h in hits
        for e in h.body["events"]
        if e["incident"] == incident["id"] or (e["machine"] == sick and e["type"] == "machine.unhealthy")
    ]
    types = [t for t, _ in story]
    expected = ["machine.unhealthy", "incident.opened", "remediation.started", "machine.quarantined"]
    expected += ["machine.replaced", "remediation.succeeded", "incident.resolved"]
    assert [t for t in types if t in expected] == expected, story
    assert story[-1] == ("incident.resolved", "resolved")

    opened = next(h.body for h in hits if "incident.opened" in event_types([h]))
    assert opened["status"] == "firing" and opened["severity"] == "critical"
    assert opened["type"] == "incident.opened" and opened["incident"] == incident["id"]
    # the link in the message opens the incident in healerd's API
    assert opened["url"] == f"{healer.url}/api/v1/incidents/{incident['id']}"
    status, _ = http_get(opened["url"])
    assert status == 200

    # the story ends with the resolution; the service's own return to optimal is a resolved event too
    last = hits[-1].body["events"]
    assert last[-1]["type"] == "incident.resolved" and last[-1]["status"] == "resolved", last
    # (in the same message or the one before: messages are cut every grouping tick)
    back = [e for h in hits for e in h.body["events"] if e["type"] == "service.state_changed"]
    assert back and back[-1]["status"] == "resolved", back

    # every message is in the outbox, delivered once
    view = notifications(healer.daemon)
    delivered = {m["id"] for m in view["messages"] if m["state"] == "delivered"}
    assert set(ids) <= delivered
    assert all(m["attempts"] == 1 for m in view["messages"] if m["id"] in ids)
    assert len(hook.snapshot()) == len(hits), "a message was delivered twice although the receiver said 200"


# ---------------------------------------------------------------------------------------------------------
# 2. 503 three times, then 200: retried with growing delays, same id, one message


def test_receiver_503_three_times_then_200_is_retried_with_growing_delays(
    tmp_path: Path, loopback: Loopback, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    def answer(hit: Hit, before: list[Hit]) -> tuple[int, dict[str, str], str]:
        return (503, {}, "busy") if len(before) < 3 else (200, {}, "ok")

    hook = loopback.serve(Receiver(answer))
    fleet: Fleet = fleet_factory(3)
    config, _ = static_config(tmp_path, fleet, {"audit": webhook(hook.url, write_secret(tmp_path))})
    daemon = start_daemon(config)
    fleet[0].mode = "fail"
    wait_until(lambda: hook.snapshot(), 10, "the first try", interval=0.05)
    fleet[1].mode = "fail"  # more news while the first message is being retried
    wait_until(lambda: hook.accepted(), 20, "a delivery that is accepted", interval=0.05, describe=hook.describe)

    tries = hook.snapshot()[:4]
    assert [h.status for h in tries] == [503, 503, 503, 200]
    assert len({h.id for h in tries}) == 1, [h.id for h in tries]
    assert len({h.raw for h in tries}) == 1, "a retry must send the very same body"
    assert {h.headers["Idempotency-Key"] for h in tries} == {tries[0].id}
    assert all(verify_signature(SECRET, h.raw, h.headers["X-Healerd-Signature"]) for h in tries)
    assert_webhook_body(tries[0].body)
    gaps = [b.at - a.at for a, b in itertools.pairwise(tries)]
    assert gaps[0] < gaps[1] < gaps[2], f"delays between tries do not grow: {gaps}"
    assert gaps[0] >= 0.5, f"retried too soon: {gaps}"

    # the receiver dedupes by id: the four tries are one message to it
    first = tries[0].id
    assert [h.id for h in hook.accepted()].count(first) == 1

    # what was made meanwhile waited behind it, and then went out in order
    # (the news may come in more than one message: the first machine's held-back remediation, then the
    # second machine's failure)
    def second_news() -> list[Hit] | None:
        later = [h for h in hook.snapshot() if h.id != first]
        return later if "machine.unhealthy" in event_types(later) else None

    later = wait_until(second_news, 10, "the second machine's news, held behind the first", describe=hook.describe)
    order = [h.id for h in hook.accepted()]
    assert order[0] == first and order == sorted(order), order
    assert all(h.at >= tries[3].at for h in later), hook.describe()
    wait_until(
        lambda: next(m for m in notifications(daemon)["messages"] if m["id"] == first)["state"] == "delivered",
        5,
        "the outbox to record the delivery",
    )
    message = next(m for m in notifications(daemon)["messages"] if m["id"] == first)
    assert (message["attempts"], message["last_status"]) == (4, 200)
    metrics = daemon.metrics()
    assert metrics.get("healerd_notifications_total", notifier="audit", outcome="retry") == 3
    assert (metrics.get("healerd_notifications_total", notifier="audit", outcome="delivered") or 0) >= 1


# ---------------------------------------------------------------------------------------------------------
# 3. 429 with Retry-After: 2 -> the next try comes no sooner than 2 s later


def test_429_retry_after_is_honoured(
    tmp_path: Path, loopback: Loopback, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    def answer(hit: Hit, before: list[Hit]) -> tuple[int, dict[str, str], str]:
        return (429, {"Retry-After": "2"}, "slow down") if not before else (200, {}, "ok")

    hook = loopback.serve(Receiver(answer))
    fleet: Fleet = fleet_factory(3)
    config, _ = static_config(tmp_path, fleet, {"audit": webhook(hook.url)})
    daemon = start_daemon(config)
    fleet[0].mode = "fail"
    wait_until(lambda: len(hook.snapshot()) >= 2, 15, "a second try", interval=0.02, describe=hook.describe)

    first, second = hook.snapshot()[:2]
    assert (first.status, second.status) == (429, 200)
    assert first.id == second.id
    assert second.at - first.at >= 2.0, f"retried {second.at - first.at:.3f}s after a 429 with Retry-After: 2"
    assert second.at - first.at < 4.0, f"waited {second.at - first.at:.3f}s, far beyond Retry-After: 2"
    assert daemon.metrics().get("healerd_notifications_total", notifier="audit", outcome="rate_limited") == 1


# ---------------------------------------------------------------------------------------------------------
# 4. receiver down, kill -9 with messages pending, restart, receiver up: nothing is lost


def test_pending_messages_survive_kill9_and_reach_the_receiver_later(
    tmp_path: Path, loopback: Loopback, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    port = free_port()  # nothing listens here until the end
    fleet: Fleet = fleet_factory(3)
    config, _ = static_config(tmp_path, fleet, {"audit": webhook(f"http://127.0.0.1:{port}")})
    daemon = start_daemon(config)
    fleet[0].mode = "fail"

    def pending() -> int:
        return int(notifications(daemon)["notifiers"]["audit"]["pending"])

    wait_until(lambda: pending() > 0 and daemon.json("/api/v1/incidents")["incidents"], 10, "pending messages")
    before = {m["id"] for m in notifications(daemon)["messages"] if m["state"] == "pending"}
    assert before
    failed = [m for m in notifications(daemon)["messages"] if m["attempts"] > 0]
    assert all(m["last_error"] for m in failed), failed
    daemon.kill9()

    at_death = outbox_rows(tmp_path)
    assert at_death, "the outbox is empty after kill -9"
    assert all(r["state"] == "pending" for r in at_death), at_death
    assert before <= {r["id"] for r in at_death}

    restarted = start_daemon(config, name="healerd-restarted")
    hook = loopback.serve(Receiver(), port=port)

    def all_delivered() -> bool:
        rows = outbox_rows(tmp_path)
        return bool(rows) and all(r["state"] == "delivered" for r in rows)

    wait_until(all_delivered, 20, "every outbox message delivered", interval=0.1, describe=hook.describe)
    received = {h.id for h in hook.accepted()}
    rows = outbox_rows(tmp_path)
    assert {r["id"] for r in at_death} <= received, "messages pending at kill -9 were lost"
    assert {r["id"] for r in rows} == received
    for h in hook.accepted():
        assert_webhook_body(h.body)
    view = notifications(restarted)
    assert view["notifiers"]["audit"]["pending"] == 0
    assert {m["id"] for m in view["messages"]} == received
    # and the events themselves are all there: opened before the crash, delivered after
    assert "incident.opened" in event_types(hook.accepted())


# ---------------------------------------------------------------------------------------------------------
# 5. ten machines failing within group_wait: one Slack message


def test_ten_machines_failing_together_are_one_slack_message(
    tmp_path: Path, loopback: Loopback, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    slack = loopback.serve(Receiver())
    (tmp_path / "slack-url").write_text(slack.url + "/services/T000/B000/XXXX\n")
    fleet: Fleet = fleet_factory(10)
    oncall = {
        "kind": "slack",
        "webhook_url_file": str(tmp_path / "slack-url"),
        "group_wait": "3s",
    }
    config, ids = static_config(tmp_path, fleet, {"oncall": oncall}, remediation={"max_unhealthy": "100%"})
    daemon = start_daemon(config)
    for m in fleet.machines:
        m.mode = "fail"
    wait_until(lambda: all(m["condition"] == "down" for m in daemon.machines().values()), 10, "all ten machines down")
    wait_until(lambda: slack.snapshot(), 8, "the Slack message", interval=0.05)
    time.sleep(1.5)  # a second message would come now: the storm is over, nothing changes any more
    hits = slack.snapshot()
    assert len(hits) == 1, slack.describe()
    (hit,) = hits
    assert hit.path == "/services/T000/B000/XXXX"
    body = hit.body
    assert_slack_limits(body)
    assert slack_header(body).startswith("CRITICAL")
    fields = {f["text"].split("\n", 1)[0]: f["text"].split("\n")[1:] for f in body["blocks"][1]["fields"]}
    assert sorted(fields["*Machine*"]) == sorted(ids), fields
    (message,) = notifications(daemon)["messages"]
    assert message["state"] == "delivered"
    # the whole storm: ten machine.unhealthy, ten incident.opened, and what the service did
    assert message["events"] >= 20
    shown, left_out = event_listing(body)
    assert len(shown) + left_out == message["events"]
    assert {line.split("`")[1] for line in shown} >= {"machine.unhealthy", "incident.opened"}


# ---------------------------------------------------------------------------------------------------------
# 6. the real Alertmanager: the incident alert fires there, then ends


@pytest.fixture
def alertmanager(tmp_path: Path) -> Iterator[str]:
    route = {"route": {"receiver": "blackhole", "group_wait": "1s"}, "receivers": [{"name": "blackhole"}]}
    with prom.alertmanager(tmp_path / "alertmanager", route) as url:
        yield url


def am_alerts(url: str, **query: str) -> list[dict[str, Any]]:
    qs = "&".join(f"{k}={v}" for k, v in query.items())
    status, body = http_get(f"{url}/api/v2/alerts{'?' + qs if qs else ''}")
    assert status == 200, body
    alerts: list[dict[str, Any]] = json.loads(body)
    return alerts


def test_incident_alert_fires_in_alertmanager_and_ends_when_resolved(
    tmp_path: Path, fleet_factory: Any, alertmanager: str, start_daemon: StartDaemon
) -> None:
    fleet: Fleet = fleet_factory(3)
    config, ids = static_config(tmp_path, fleet, {"am": {"kind": "alertmanager", "url": alertmanager}})
    daemon = start_daemon(config)
    fleet[1].mode = "fail"

    def incident_alert() -> dict[str, Any] | None:
        found = [a for a in am_alerts(alertmanager) if a["labels"].get("alertname") == "HealerdIncident"]
        return found[0] if found else None

    alert = wait_until(incident_alert, 15, "HealerdIncident in Alertmanager", interval=0.1, describe=daemon.describe)
    assert alert is not None
    (incident,) = daemon.json("/api/v1/incidents")["incidents"]
    labels = alert["labels"]
    assert {k: labels.get(k) for k in ("alertname", "service", "machine", "severity", "incident")} == {
        "alertname": "HealerdIncident",
        "service": "web",
        "machine": ids[1],
        "severity": "critical",
        "incident": incident["id"],
    }
    assert alert["status"]["state"] == "active"
    assert alert["generatorURL"] == f"{daemon.url}/api/v1/incidents/{incident['id']}"
    assert parse_rfc3339(alert["startsAt"]) == pytest.approx(incident["opened_at"], abs=1.0)
    assert parse_rfc3339(alert["endsAt"]) > time.time()  # open-ended: healerd re-posts it while it fires
    assert alert["annotations"]["summary"]

    fleet[1].mode = "ok"

    def ended() -> bool:
        return not am_incident_alerts(alertmanager, incident["id"])

    wait_until(ended, 15, "the incident alert to end in Alertmanager", interval=0.1, describe=daemon.describe)
    assert daemon.json(f"/api/v1/incidents/{incident['id']}")["state"] == "resolved"
    # nothing healerd raised is still active there: the service-degraded alert ended too
    still = [a for a in am_alerts(alertmanager, active="true") if a["labels"].get("service") == "web"]
    assert all(parse_rfc3339(a["endsAt"]) <= time.time() for a in still), still
    view = notifications(daemon)
    assert view["notifiers"]["am"]["dead"] == 0 and view["notifiers"]["am"]["pending"] == 0


def am_incident_alerts(url: str, incident: str) -> list[dict[str, Any]]:
    """Alerts of this incident that Alertmanager still holds active (not ended)."""
    now = time.time()
    return [
        a
        for a in am_alerts(url, active="true")
        if a["labels"].get("incident") == incident
        and a["status"]["state"] == "active"
        and parse_rfc3339(a["endsAt"]) > now
    ]


def test_alertmanager_alert_still_ends_after_a_reload_changes_the_notifier(
    tmp_path: Path, fleet_factory: Any, alertmanager: str, start_daemon: StartDaemon
) -> None:
    fleet: Fleet = fleet_factory(3)
    config, _ = static_config(tmp_path, fleet, {"am": {"kind": "alertmanager", "url": alertmanager}})
    daemon = start_daemon(config)
    healer = Healer(daemon, tmp_path, config)
    fleet[0].mode = "fail"
    (incident,) = wait_until(lambda: daemon.json("/api/v1/incidents")["incidents"], 10, "an incident")
    wait_until(lambda: am_incident_alerts(alertmanager, incident["id"]), 10, "the alert in Alertmanager")

    healer.reload(lambda c: c["notifiers"]["am"].update(repost_interval="30s"))
    fleet[0].mode = "ok"
    wait_until(lambda: daemon.json(f"/api/v1/incidents/{incident['id']}")["state"] == "resolved", 10, "the resolution")
    wait_until(
        lambda: (
            notifications(daemon)["notifiers"]["am"]["pending"] == 0
            and not daemon.metrics().get("healerd_notification_queue_depth", notifier="am")
        ),
        5,
        "the outbox to drain",
    )
    time.sleep(0.5)
    assert not am_incident_alerts(alertmanager, incident["id"]), "the incident alert is still active"


# ---------------------------------------------------------------------------------------------------------
# 7. a 400 ends in the dead letter after max_attempts and does not block what comes after


def test_refused_message_is_dead_lettered_and_the_next_one_is_delivered(
    tmp_path: Path, loopback: Loopback, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    def answer(hit: Hit, before: list[Hit]) -> tuple[int, dict[str, str], str]:
        refused = before[0].id if before else hit.id
        return (400, {}, '{"error":"bad payload"}') if hit.id == refused else (200, {}, "ok")

    hook = loopback.serve(Receiver(answer))
    fleet: Fleet = fleet_factory(3)
    config, _ = static_config(tmp_path, fleet, {"audit": webhook(hook.url, max_attempts=2)})
    daemon = start_daemon(config)
    fleet[0].mode = "fail"

    def dead() -> list[dict[str, Any]]:
        letters: list[dict[str, Any]] = notifications(daemon)["dead_letters"]
        return letters

    (letter,) = wait_until(dead, 15, "a dead letter", interval=0.1, describe=hook.describe)
    refused = hook.snapshot()[0].id
    assert letter["id"] == refused
    assert (letter["state"], letter["attempts"], letter["last_status"]) == ("dead", 2, 400)
    assert "bad payload" in letter["last_error"]
    assert [h.status for h in hook.snapshot() if h.id == refused] == [400, 400]
    assert notifications(daemon)["notifiers"]["audit"]["dead"] == 1
    metrics = daemon.metrics()
    assert metrics.get("healerd_notifications_total", notifier="audit", outcome="dead") == 1
    assert metrics.get("healerd_notifications_total", notifier="audit", outcome="retry") == 1

    # what waited behind it goes out, and so does what happens next
    dead_at = time.monotonic()
    fleet[0].mode = "ok"

    def recovered() -> bool:
        return "machine.recovered" in event_types([h for h in hook.accepted() if h.at > dead_at])

    wait_until(recovered, 15, "a later message to be delivered", interval=0.1, describe=hook.describe)
    assert refused not in {h.id for h in hook.accepted()}
    for h in hook.snapshot():
        assert_webhook_body(h.body)
    order = [h.id for h in hook.accepted()]
    assert order == sorted(order) and all(i > refused for i in order), order  # made after it, sent after it
    view = notifications(daemon)
    assert {m["state"] for m in view["messages"] if m["id"] != refused} == {"delivered"}
    assert daemon.metrics().get("healerd_notifications_total", notifier="audit", outcome="dead") == 1


# ---------------------------------------------------------------------------------------------------------
# 8. `healerd notify test`


def test_notify_test_prints_the_answer_or_a_clear_error(tmp_path: Path, loopback: Loopback, fleet_factory: Any) -> None:
    def answer(hit: Hit, before: list[Hit]) -> tuple[int, dict[str, str], str]:
        return 202, {}, "accepted by the test receiver"

    hook = loopback.serve(Receiver(answer))
    slack = loopback.serve(Receiver())
    broken = loopback.serve(Receiver(lambda hit, before: (500, {}, "boom: database on fire")))
    (tmp_path / "slack-url").write_text(slack.url + "/services/T/B/X")
    dead_port = free_port()
    fleet: Fleet = fleet_factory(1)
    config, _ = static_config(
        tmp_path,
        fleet,
        {
            "audit": webhook(hook.url, write_secret(tmp_path)),
            "oncall": {"kind": "slack", "webhook_url_file": str(tmp_path / "slack-url")},
            "gone": webhook(f"http://127.0.0.1:{dead_port}"),
            "broken": webhook(broken.url),
        },
    )
    cfg = write_config(tmp_path / "healerd.yaml", config)

    ok = run_cli("notify", "test", "-c", str(cfg), "--notifier", "audit")
    assert ok.returncode == 0, ok
    assert "audit" in ok.stdout and "202" in ok.stdout and "accepted by the test receiver" in ok.stdout, ok.stdout
    (hit,) = hook.snapshot()
    assert_webhook_body(hit.body)
    assert verify_signature(SECRET, hit.raw, hit.headers.get("X-Healerd-Signature"))
    assert "test" in hit.body["summary"]

    ok = run_cli("notify", "test", "-c", str(cfg), "--notifier", "oncall")
    assert ok.returncode == 0, ok
    assert "ok" in ok.stdout
    (hit,) = slack.snapshot()
    assert_slack_limits(hit.body)

    bad = run_cli("notify", "test", "-c", str(cfg), "--notifier", "gone")
    assert bad.returncode == 1, bad
    assert "gone" in bad.stderr and "NOT delivered" in bad.stderr, bad.stderr
    assert f"127.0.0.1:{dead_port}" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr

    bad = run_cli("notify", "test", "-c", str(cfg), "--notifier", "broken")
    assert bad.returncode == 1, bad
    assert "broken" in bad.stderr and "HTTP 500" in bad.stderr and "boom: database on fire" in bad.stderr, bad.stderr
    assert len(broken.snapshot()) == 1  # a test message is tried once, not retried

    unknown = run_cli("notify", "test", "-c", str(cfg), "--notifier", "nope")
    assert unknown.returncode == 2, unknown
    assert "nope" in unknown.stderr and "audit" in unknown.stderr
    # the test message does not go through (or stay in) the daemon's outbox
    assert not (tmp_path / "state" / "state.db").exists() or not outbox_rows(tmp_path)


def test_a_fresh_start_of_the_shipped_demo_fleet_sends_no_alarm(
    tmp_path: Path, loopback: Loopback, start_daemon: StartDaemon
) -> None:
    """`make run` on config.example.yaml, with a webhook receiver: while the fleet boots (no machine, then
    machines on probation, then entering service one by one) nothing is announced; it is healthy at the end."""
    import yaml

    from .fleet import REPO, TAG_VAR, port_window

    hook = loopback.serve(Receiver())
    config = yaml.safe_load((REPO / "config.example.yaml").read_text())
    config["daemon"].update(
        listen=f"127.0.0.1:{free_port()}",
        state_dir=str(tmp_path / "state"),
        check_paths=[str(REPO / "checks")],
        playbook_paths=[str(REPO / "playbooks")],
    )
    config["providers"]["demo"]["port_range"] = port_window()
    for version in config["images"]["demo-web"]["versions"].values():
        version["env"] = {TAG_VAR: str(tmp_path)}  # so the test can always reap the machines it launched
    config["services"]["web"]["rotation"]["path"] = str(tmp_path / "state" / "rotation-web.json")
    config["notifiers"] = {"audit": webhook(hook.url)}
    config["services"]["web"]["notify"] = ["audit"]
    started = time.monotonic()
    healer = Healer(start_daemon(config, wait="listening"), tmp_path, config)
    healer.wait(lambda: healer.service_state() == "optimal" and len(healer.in_service()) == 3, 10, "optimal 3/3")
    time.sleep(max(0.0, 10 - (time.monotonic() - started)))  # the first 10 s, fleet up and settled
    assert hook.snapshot() == [], [h.raw[:300] for h in hook.snapshot()]
    changes = healer.events("service.state_changed")
    assert changes == [], changes
