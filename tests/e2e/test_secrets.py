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
from typing import Any

import pytest
from conftest import free_port
from pg import PgServer

from .fleet import Healer, demo_pids, fleet_config, kill_demos, set_fault
from .helpers import StartDaemon, http_check, http_get, make_config, run_cli, wait_until, write_config
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


STORE_PASSWORD = "pl4nted-pg-pa55w0rd"
SSL_PASSWORD = "pl4nted-key-passphr4se"  # libpq's sslpassword: the client key's passphrase, a secret as well
#: what of the store's secrets a message might show: a piece on either side of a bad escape, the whole
STORE_PIECES = ("pl4nted-pg", "pa55w0rd", SSL_PASSWORD)


def test_the_store_password_appears_nowhere(tmp_path: Path, pg: PgServer, start_daemon: StartDaemon) -> None:
    """A connection string with a password: refused by `validate` and `run` when libpq cannot read it, or when it
    is too long, without quoting it; used by a node on a real store, and by one whose store does not answer,
    without it in their logs (debug), their API or their page."""
    token = tmp_path / "api-token"
    token.write_text(API_TOKEN + "\n")
    good = pg.new_database().replace("healerd@", f"healerd:{STORE_PASSWORD}@") + f"?sslpassword={SSL_PASSWORD}"
    escaped = good.replace(STORE_PASSWORD, "pl4nted-pg%zz-pa55w0rd")  # a '%' the password meant, unencoded
    dsn_file = tmp_path / "store-dsn"
    dsn_file.write_text(escaped + "\n")
    dsn_file.chmod(0o600)

    def config(name: str, **cluster: str) -> dict[str, Any]:
        base = make_config(tmp_path, free_port(), [("m1", f"127.0.0.1:{free_port()}")], [http_check(interval="1s")])
        base["daemon"].update(log_level="debug", api_token_file=str(token))
        base["cluster"] = {"node": f"healerd-{name}", "lease_ttl": "3s", **cluster}
        return base

    places: dict[str, str] = {}
    for name, cluster in {
        "escape": {"store": escaped},
        "long": {"store": good + "&application_name=" + "x" * 4100},
        "file": {"store_file": str(dsn_file)},
    }.items():
        path = write_config(tmp_path / f"{name}.yaml", config(name, **cluster))
        out = run_cli("validate", "-c", str(path))
        assert out.returncode == 2 and "Traceback" not in out.stderr, out
        key = "cluster.store_file" if name == "file" else "cluster.store"
        assert f": {key}: " in out.stderr and "postgresql://healerd:***@127.0.0.1" in out.stderr, out.stderr
        places[f"validate {name}"] = out.stdout + out.stderr
    assert "percent-encode the password's special characters (% as %25" in places["validate escape"]

    refused = start_daemon(config("refused", store=escaped), wait="no", name="refused")
    wait_until(lambda: refused.returncode is not None, 20, "healerd run to refuse the config")
    assert refused.returncode == 2 and "percent-encode" in refused.output(), refused.describe()
    places["run refused"] = refused.output()

    node = start_daemon(config("a", store=good), wait="listening", name="node-a")
    wait_until(
        lambda: node.json("/api/v1/cluster")["leader"] == "healerd-a", 20, "node a to lead", describe=node.describe
    )
    for path in ("/api/v1/cluster", "/", "/metrics", "/readyz", "/api/v1/events?limit=1000"):
        status, body = http_get(node.url + path)
        assert status in (200, 503), (path, status)
        places[f"GET {path}"] = body.decode(errors="replace")
    assert "healerd-a" in places["GET /api/v1/cluster"]

    closed = good.replace(f":{pg.port}/", f":{free_port()}/")  # nothing listens there: every connection refused
    lost = start_daemon(config("b", store=closed), wait="no", name="node-b")
    wait_until(lambda: lost.output().count("refused") >= 2 or lost.returncode is not None, 30, "node b to try")
    node.stop()
    lost.stop()
    places["log a"], places["log b"] = node.output(), lost.output()

    leaks = {where: [p for p in STORE_PIECES if p in text] for where, text in places.items()}
    leaks = {k: v for k, v in leaks.items() if v}
    assert leaks == {}, json.dumps(leaks, indent=1)
