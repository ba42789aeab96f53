"""A notifier whose receiver is down: healerd starts and checks all the same, says it once (and once when the
receiver takes messages again), shows it on the page, in /readyz and in healerd_notifier_up meanwhile, and
delivers every waiting message once it is back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .helpers import StartDaemon, wait_until
from .test_alerting import Hit, Loopback, Receiver
from .test_api_security import no_handler_failures, small_config

pytestmark = pytest.mark.e2e


def test_a_receiver_down_at_start_is_said_once_shown_meanwhile_and_caught_up_when_back(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    down = {"on": True}

    def answer(hit: Hit, before: list[Hit]) -> tuple[int, dict[str, str], str]:
        return (503, {}, "maintenance") if down["on"] else (200, {}, "ok")

    loopback = Loopback()
    try:
        receiver = loopback.serve(Receiver(answer=answer))
        fleet = fleet_factory(1)
        cfg = small_config(tmp_path, fleet)
        cfg["services"]["web"]["checks"][0].update(interval="300ms", timeout="300ms")
        cfg["notifiers"] = {
            "hook": {"kind": "webhook", "url": receiver.url + "/hook", "group_wait": "0s", "max_backoff": "1s"}
        }
        cfg["services"]["web"]["notify"] = ["hook"]
        cfg["daemon"]["mode"] = "observe"
        daemon = start_daemon(cfg)
        fleet[0].mode = "fail"  # a machine goes down: on-call must be told

        def failing() -> dict[str, Any] | None:
            status, body = daemon.get("/readyz")
            assert status == 200, body
            found: dict[str, Any] | None = json.loads(body).get("notifiers")
            return found

        shown = wait_until(failing, 15, "/readyz to show the notifier failing")
        assert shown["hook"]["status"] == "failing" and "503" in shown["hook"]["error"], shown
        assert daemon.metrics().get("healerd_notifier_up", notifier="hook") == 0
        status, page = daemon.get("/")
        assert status == 200 and b"Notifier hook cannot deliver" in page
        wait_until(lambda: len(receiver.snapshot()) >= 3, 15, "healerd to retry a few times")
        assert daemon.machines()["web-1"]["checks"]["health"]["status"] == "CRITICAL"  # checks go on

        down["on"] = False
        wait_until(lambda: receiver.accepted(), 15, "the waiting messages delivered")
        wait_until(lambda: "notifiers" not in daemon.json("/readyz"), 10, "/readyz to stop showing it")
        assert daemon.metrics().get("healerd_notifier_up", notifier="hook") == 1
        assert b"Notifier hook cannot deliver" not in daemon.get("/")[1]
        opened = [e for h in receiver.accepted() for e in h.body["events"] if e["type"] == "incident.opened"]
        assert len(opened) == 1, "the incident that opened while the receiver was down reached it once"
        log = daemon.output()
        assert log.count("the notifier cannot deliver") == 1, log
        assert log.count("the notifier delivers again") == 1, log
        no_handler_failures(daemon)
    finally:
        loopback.close()
