"""Planted secrets never leak: not in logs (debug level), API answers, the status page, metrics, the state
database, evidence bundles or the CLI's output, after a run where every receiver fails.

The Slack webhook URL (its path is the credential), the webhook HMAC secret and the API token are written to
files, as operators do; receivers refuse or echo what they were sent, so errors quote whatever they can.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port

from .fleet import Healer, demo_pids, fleet_config, kill_demos, set_fault
from .helpers import StartDaemon, http_get, run_cli
from .test_alerting import Hit, Loopback, Receiver, loopback  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e

SLACK_TOKEN = "T0PLANTED/B0PLANTED/pl4nted-slack-t0ken-9f3a"
WEBHOOK_SECRET = "pl4nted-hmac-secret-77c1"
API_TOKEN = "pl4nted-api-token-5e2d"


@pytest.fixture(autouse=True)
def _reap(tmp_path: Path) -> Iterator[None]:
    yield
    kill_demos(str(tmp_path))
    assert not demo_pids(str(tmp_path))


def echo_and_refuse(hit: Hit, before: list[Hit]) -> tuple[int, dict[str, str], str]:
    """A receiver whose error page quotes the request path (as many proxies do)."""
    return 400, {}, f"no route for {hit.path}"


def test_planted_secrets_appear_nowhere(tmp_path: Path, loopback: Loopback, start_daemon: StartDaemon) -> None:  # noqa: F811
    echo = loopback.serve(Receiver(echo_and_refuse))
    dead = free_port()  # nothing listens: connection refused, quoted with the URL by the HTTP client
    slack_url = tmp_path / "slack-url"
    slack_url.write_text(f"http://127.0.0.1:{dead}/services/{SLACK_TOKEN}\n")
    echo_url = tmp_path / "slack-echo-url"
    echo_url.write_text(f"{echo.url}/services/{SLACK_TOKEN}\n")
    secret = tmp_path / "hook-secret"
    secret.write_text(WEBHOOK_SECRET + "\n")
    token = tmp_path / "api-token"
    token.write_text(API_TOKEN + "\n")
    for f in (slack_url, echo_url, secret, token):
        f.chmod(0o600)

    config = fleet_config(tmp_path, free_port())
    config["daemon"].update(log_level="debug", api_token_file=str(token))
    config["notifiers"] = {
        "oncall": {"kind": "slack", "webhook_url_file": str(slack_url), "group_wait": "0s", "max_backoff": "1s"},
        "echo": {"kind": "slack", "webhook_url_file": str(echo_url), "group_wait": "0s", "max_attempts": 1},
        "audit": {"kind": "webhook", "url": f"{echo.url}/hook", "secret_file": str(secret), "group_wait": "0s"},
    }
    config["services"]["web"]["notify"] = ["oncall", "echo", "audit"]
    healer = Healer(start_daemon(config, wait="listening"), tmp_path, config)
    members = healer.wait_fleet_up()
    sick = sorted(members)[0]
    set_fault(members[sick], "down")
    healer.wait(lambda: (i := healer.incident_for(sick)) and i["state"] == "resolved", 30, f"{sick} healed")
    healer.wait(lambda: len(echo.snapshot()) >= 2, 10, "the echoing receiver to be tried")
    time.sleep(1.5)  # a few retries of the dead Slack URL

    places: dict[str, str] = {}
    for path in (
        "/",
        "/metrics",
        "/api/v1/services",
        "/api/v1/machines",
        "/api/v1/events?limit=1000",
        "/api/v1/incidents",
        f"/api/v1/incidents/{healer.incident_for(sick)['id']}",  # type: ignore[index]
        "/api/v1/quarantine",
        "/api/v1/notifications?limit=500",
        "/api/v1/mode",
        "/api/v1/silences",
    ):
        status, body = http_get(healer.url + path)
        assert status == 200, (path, status)
        places[f"GET {path}"] = body.decode(errors="replace")
    errors = [n.get("last_error") for n in healer.daemon.json("/api/v1/notifications?limit=500")["messages"]]
    assert any(e and "refused" in e.lower() for e in errors), errors  # the failures were recorded…
    assert any(e and "<redacted>" in e for e in errors), errors  # …with the secret masked
    for name in ("oncall", "echo"):
        out = run_cli("notify", "test", "-c", str(healer.daemon.config_path), "--notifier", name)
        assert out.returncode == 1, out
        places[f"notify test {name}"] = out.stdout + out.stderr
    healer.daemon.stop()
    places["log"] = healer.daemon.output()
    state = tmp_path / "state"
    for f in state.rglob("*"):
        if f.is_file():
            places[str(f.relative_to(tmp_path))] = f.read_bytes().decode("latin-1")
    assert any("forensics" in k for k in places), "no evidence bundle was written"

    leaks = {
        where: [s for s in (SLACK_TOKEN, "pl4nted-slack-t0ken", WEBHOOK_SECRET, API_TOKEN) if s in text]
        for where, text in places.items()
    }
    leaks = {k: v for k, v in leaks.items() if v}
    assert leaks == {}, json.dumps(leaks, indent=1)
