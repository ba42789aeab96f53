"""End to end: named, scoped credentials against a real `healerd run` whose reads are not public.

One daemon for most of the module (`daemon.access_file`, `public_reads: false`, a trusted proxy on 127.0.0.1). Every
(method, route) of the API is sent with no token, a bogus one, an expired one, a revoked one and one of each
scope, and answers 401, 403 or passes exactly as the scope rules say; a revocation made with the CLI is refused
within 2 s without a restart; no token is ever written down or answered in clear; a change says which
credential made it; the proxy's user header counts only on the proxy's connections.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port

from healerd import access
from healerd.access import Scope
from healerd.api_scopes import SCOPES
from healerd.config import load_config
from healerd.daemon import Daemon

from .helpers import (
    DaemonProcess,
    Metrics,
    StartDaemon,
    http_check,
    make_config,
    run_cli,
    wait_until,
    write_config,
)

pytestmark = pytest.mark.e2e

JSON = "application/json"
PARAM = re.compile(r"\{(\w+)(?::[^}]*)?\}")
#: what each scope may do, as the operator's documentation says it (not read from healerd, so that a wrong
#: grant in the code fails here): read < operate < admin, admin anything, alerts and cluster only their own
MAY: dict[str, set[str | None]] = {
    "read": {"read"},
    "operate": {"read", "operate"},
    "admin": {"read", "operate", "admin", "alerts", "cluster"},
    "alerts": {"alerts"},
    "cluster": {"cluster"},
}
SCOPED = ("read", "operate", "admin", "alerts", "cluster")
CALLERS = ("none", "bogus", "expired", "revoked", *SCOPED)


@dataclass
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    port: int,
    method: str,
    path: str,
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    source: str | None = None,
) -> Answer:
    """One request from `source` (a local address to bind, default 127.0.0.1); a change always says JSON."""
    conn = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=20, source_address=(source, 0) if source is not None else None
    )
    sent = dict(headers or {})
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    data = None
    if method not in ("GET", "HEAD"):
        sent["Content-Type"] = JSON
        data = json.dumps({} if body is None else body).encode()
    try:
        conn.request(method, path, body=data, headers=sent)
        resp = conn.getresponse()
        return Answer(resp.status, resp.read())
    finally:
        conn.close()


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, format: str, *args: Any) -> None:
        pass


@dataclass
class Lab:
    daemon: DaemonProcess
    folder: Path
    access_file: Path
    state_dir: Path
    #: credential name -> its token, for every token issued here (the sweep looks for all of them)
    tokens: dict[str, str] = field(default_factory=dict)
    #: tokens nobody issued, sent anyway
    bogus: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.daemon.port

    @property
    def admin(self) -> str:
        return self.tokens["admin"]

    def cli(self, *args: str) -> str:
        result = run_cli(*args)
        assert result.returncode == 0, f"healerd {' '.join(args)}: {result.stdout}{result.stderr}"
        return result.stdout

    def issue(self, name: str, scope: str) -> str:
        """`healerd access add NAME --scope SCOPE -c CONFIG --json`: the token, shown once."""
        out = json.loads(
            self.cli("access", "add", name, "--scope", scope, "-c", str(self.daemon.config_path), "--json")
        )
        assert out["name"] == name and out["scope"] == scope, out
        self.tokens[name] = out["token"]
        return str(out["token"])

    def revoke(self, name: str) -> None:
        self.cli("access", "revoke", name, "-c", str(self.daemon.config_path))

    def token_file(self, name: str) -> Path:
        path = self.folder / "tokens" / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(self.tokens[name] + "\n")
        path.chmod(0o600)
        return path

    def events(self, kind: str) -> list[dict[str, Any]]:
        answer = call(self.port, "GET", f"/api/v1/events?type={kind}&limit=1000", self.admin)
        assert answer.status == 200, answer.body
        return list(reversed(answer.json()["events"]))

    def accepted(self, token: str) -> bool:
        """Whether the daemon has read the access file that holds `token` (a read passes)."""
        return call(self.port, "GET", "/api/v1/mode", token).status == 200


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    folder = tmp_path_factory.mktemp("access")
    machine = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    threading.Thread(target=machine.serve_forever, daemon=True).start()
    port = free_port()
    cfg = make_config(folder, port, [("web-1", f"127.0.0.1:{machine.server_address[1]}")], [http_check(interval="5s")])
    cfg["daemon"].update(
        access_file="access.yaml",  # beside the config, as the docs suggest
        public_reads=False,
        trusted_proxy={
            "from": ["127.0.0.1"],
            "user_header": "X-Forwarded-User",
            "scopes": {"alice": "operate"},
            "default": "read",
        },
    )
    config_path = write_config(folder / "healerd.yaml", cfg)
    daemon = DaemonProcess(config_path, port, folder / "healerd.log")
    lab = Lab(daemon, folder, folder / "access.yaml", Path(cfg["daemon"]["state_dir"]))
    for scope in SCOPED:
        lab.issue(scope, scope)
    lab.issue("oncall-primary", "operate")
    # an admin credential that expired a second ago (added an hour ago), and one revoked before the start
    expired = access.add(lab.access_file, "expired", Scope.ADMIN, expires=time.time() - 1, now=time.time() - 3600)
    lab.tokens["expired"] = expired
    lab.issue("revoked", "admin")
    lab.revoke("revoked")
    try:
        daemon.start()
        daemon.wait_listening()
        wait_until(
            lambda: call(port, "GET", "/readyz").status == 200, 10, "/readyz to answer 200", describe=daemon.describe
        )
        yield lab
    finally:
        status = daemon.stop()
        machine.shutdown()
        machine.server_close()
    assert status == 0 and "Traceback" not in daemon.output(), daemon.describe()


def fill(template: str, method: str) -> str:
    """A path of the route: reads name what exists; changes name what does not, so that nothing changes."""
    sample = {"name": "web", "service": "web", "machine": "web-1", "id": "01NOSUCHINCIDENT00", "verb": "pause"}
    if method != "GET":
        sample |= {"name": "nosuch", "service": "nosuch", "machine": "nosuch"}
    return PARAM.sub(lambda m: sample[m.group(1)], template)


#: a body each change refuses (a field no endpoint takes), so that passing the gate changes nothing
HARMLESS = {"not-a-field": 1}


def expected(caller: str, method: str, template: str) -> str:
    if template in ("/healthz", "/readyz", "/"):  # the probes; the page while status_page is public
        return "pass"
    scope = SCOPES[(method, template)]  # None on any other route is in no MAY: an open route fails here
    if caller in ("none", "bogus", "expired", "revoked"):
        return "401"
    return "pass" if str(scope) in MAY[caller] else "403"


def outcome(status: int) -> str:
    return str(status) if status in (401, 403) else "pass"


# ---------------------------------------------------------------------------------------------------------
# 1. The scope matrix


def test_every_route_answers_each_caller_as_its_scope_allows(lab: Lab) -> None:
    bogus = f"hk_admin_{secrets.token_urlsafe(32)}"  # shaped like the admin's token, with a secret nobody issued
    lab.bogus.append(bogus)
    tokens = {name: lab.tokens.get(name) for name in CALLERS if name not in ("none", "bogus")}
    tokens |= {"none": None, "bogus": bogus}
    before = call(lab.port, "GET", "/api/v1/mode", lab.admin).json()
    wrong: list[str] = []
    server_errors: list[str] = []
    cases = 0
    for method, template in sorted(SCOPES):
        path = fill(template, method)
        for caller in CALLERS:
            answer = call(lab.port, method, path, tokens[caller], HARMLESS if method != "GET" else None)
            cases += 1
            want, got = expected(caller, method, template), outcome(answer.status)
            if got != want:
                wrong.append(f"{method} {path} as {caller}: {answer.status} (expected {want}) {answer.body[:200]!r}")
            if answer.status >= 500:
                server_errors.append(f"{method} {path} as {caller}: {answer.status} {answer.body[:200]!r}")
            if answer.status in (401, 403):
                refusal = answer.json()
                assert set(refusal) == {"error", "detail"} and refusal["detail"], refusal
    print(f"scope matrix: {cases} cases ({len(SCOPES)} routes x {len(CALLERS)} callers), {len(wrong)} wrong")
    assert not wrong, "\n".join(wrong)
    assert not server_errors, "\n".join(server_errors)
    assert cases == len(SCOPES) * len(CALLERS) >= 250
    after = call(lab.port, "GET", "/api/v1/mode", lab.admin).json()
    assert after == before, "a request of the matrix changed the mode"
    assert call(lab.port, "GET", "/api/v1/silences", lab.admin).json()["silences"] == []


def test_every_route_the_daemon_serves_has_a_scope(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, free_port(), [("web-1", "127.0.0.1:9")], [http_check(interval="5s")])
    app = Daemon(load_config(write_config(tmp_path / "healerd.yaml", cfg))).build_app()
    served = {
        ("GET" if r.method == "HEAD" else r.method, r.resource.canonical)
        for r in app.router.routes()
        if r.resource is not None
    }
    assert len(served) >= 30
    assert sorted(served - set(SCOPES)) == [], "routes served with no scope in healerd.api_scopes.SCOPES"
    assert sorted(set(SCOPES) - served) == [], "scopes of routes nobody serves (a typo never matches a request)"


def test_a_protected_page_needs_read_and_the_probes_stay_open(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    cfg = make_config(tmp_path, free_port(), [("web-1", fleet_factory(1)[0].address)], [http_check(interval="5s")])
    cfg["daemon"].update(access_file="access.yaml", public_reads=False, status_page="protected")
    reader = access.add(tmp_path / "access.yaml", "reader", Scope.READ)
    daemon = start_daemon(cfg)
    anonymous = {path: call(daemon.port, "GET", path).status for path in ("/healthz", "/readyz", "/", "/metrics")}
    assert anonymous == {"/healthz": 200, "/readyz": 200, "/": 401, "/metrics": 401}
    page = call(daemon.port, "GET", "/", reader)
    assert page.status == 200 and b"web-1" in page.body


def test_a_refusal_says_what_scope_is_needed_and_how_to_get_it(lab: Lab) -> None:
    anonymous = call(lab.port, "POST", "/api/v1/mode", None, {"paused": True})
    assert anonymous.status == 401
    assert "healerd access add" in anonymous.json()["detail"] and "operate" in anonymous.json()["detail"]
    reader = call(lab.port, "POST", "/api/v1/mode", lab.tokens["read"], {"paused": True})
    assert reader.status == 403
    assert "'read'" in reader.json()["detail"] and "operate" in reader.json()["detail"]
    assert call(lab.port, "GET", "/api/v1/mode", lab.admin).json()["paused"] is False


# ---------------------------------------------------------------------------------------------------------
# 2. Revocation


def test_a_revoked_credential_is_refused_within_two_seconds_without_a_restart(lab: Lab) -> None:
    token = lab.issue("leaving", "operate")
    wait_until(lambda: lab.accepted(token), 5, "the new credential to be accepted", describe=lab.daemon.describe)
    pid = lab.daemon.pid
    started = time.monotonic()
    lab.revoke("leaving")
    revoked = time.monotonic()
    wait_until(
        lambda: call(lab.port, "GET", "/api/v1/mode", token).status == 401,
        2.0,
        "the revoked credential to be refused",
        interval=0.01,
    )
    refused = time.monotonic()
    print(
        f"revocation: refused {refused - revoked:.2f} s after healerd access revoke returned "
        f"({refused - started:.2f} s after it started)"
    )
    assert lab.daemon.alive() and lab.daemon.pid == pid
    assert call(lab.port, "POST", "/api/v1/mode", token, {"paused": True}).status == 401
    assert call(lab.port, "GET", "/api/v1/mode", lab.admin).json()["paused"] is False


# ---------------------------------------------------------------------------------------------------------
# 4. Who made a change


def test_a_change_says_which_credential_made_it(lab: Lab) -> None:
    token = lab.tokens["oncall-primary"]
    seen = {e["id"] for e in lab.events("mode.changed")}
    for paused in (True, False):
        answer = call(lab.port, "POST", "/api/v1/mode", token, {"paused": paused})
        assert answer.status == 200 and answer.json()["paused"] is paused, answer.body
    new = [e for e in lab.events("mode.changed") if e["id"] not in seen]
    assert [(e["details"]["what"], e["details"]["by"]) for e in new] == [
        ("remediation paused", "oncall-primary"),
        ("remediation resumed", "oncall-primary"),
    ], new

    answer = call(
        lab.port, "POST", "/api/v1/silences", token, {"service": "web", "duration": "1m", "created_by": "eve"}
    )
    assert answer.status == 201, answer.body
    silence = answer.json()
    try:
        assert silence["created_by"] == "oncall-primary"
        listed = call(lab.port, "GET", "/api/v1/silences", lab.admin).json()["silences"]
        assert [s["created_by"] for s in listed] == ["oncall-primary"]
    finally:
        assert call(lab.port, "DELETE", f"/api/v1/silences/{silence['id']}", token).status == 200


def test_the_page_and_healerd_status_show_who_changed_the_mode(lab: Lab) -> None:
    token = lab.tokens["oncall-primary"]
    for paused in (True, False):
        assert call(lab.port, "POST", "/api/v1/mode", token, {"paused": paused}).status == 200
    page = call(lab.port, "GET", "/")
    assert page.status == 200
    assert "by oncall-primary" in page.body.decode(), "the page does not say who resumed remediation"
    status = lab.cli("status", "--url", lab.daemon.url, "--token-file", str(lab.token_file("read")))
    assert "by oncall-primary" in status, status


# ---------------------------------------------------------------------------------------------------------
# 5. The trusted proxy


def test_the_proxy_user_counts_only_on_connections_from_the_proxy(lab: Lab) -> None:
    alice = {"X-Forwarded-User": "alice"}
    answer = call(lab.port, "POST", "/api/v1/mode", None, {"paused": True}, alice)
    assert answer.status == 200 and answer.json()["paused"] is True, answer.body
    assert call(lab.port, "POST", "/api/v1/mode", None, {"paused": False}, alice).status == 200
    assert [e["details"]["by"] for e in lab.events("mode.changed")[-2:]] == ["alice", "alice"]
    # any other user the proxy names gets the default, read
    bob = {"X-Forwarded-User": "bob"}
    assert call(lab.port, "GET", "/api/v1/mode", None, headers=bob).status == 200
    assert call(lab.port, "POST", "/api/v1/mode", None, {"paused": True}, bob).status == 403

    # the same header from another address of this host is anybody's to send: ignored
    for headers in (alice, {"X-Forwarded-User": "admin"}):
        answer = call(lab.port, "POST", "/api/v1/mode", None, {"paused": True}, headers, source="127.0.0.2")
        assert answer.status == 401, answer.body
        assert call(lab.port, "GET", "/api/v1/mode", None, headers=headers, source="127.0.0.2").status == 401
    # a bearer token still works from there
    assert call(lab.port, "GET", "/api/v1/mode", lab.tokens["read"], source="127.0.0.2").status == 200
    assert call(lab.port, "GET", "/api/v1/mode", lab.admin).json()["paused"] is False


# ---------------------------------------------------------------------------------------------------------
# 6. The requests counted by credential


def test_requests_are_counted_by_credential_and_outcome(lab: Lab) -> None:
    assert call(lab.port, "GET", "/api/v1/mode", lab.tokens["oncall-primary"]).status == 200
    assert call(lab.port, "GET", "/api/v1/mode").status == 401
    assert call(lab.port, "GET", "/api/v1/mode", f"hk_nobody_{secrets.token_urlsafe(32)}").status == 401
    answer = call(lab.port, "GET", "/metrics", lab.admin)
    assert answer.status == 200
    metrics = Metrics.parse(answer.body.decode())
    name = "healerd_api_requests_total"
    allowed = metrics.get(name, credential="oncall-primary", outcome="allowed")
    invalid = metrics.get(name, credential="invalid", outcome="unauthenticated")
    print(f"{name}: oncall-primary/allowed {allowed}, invalid/unauthenticated {invalid}")
    assert allowed is not None and allowed >= 1
    assert invalid is not None and invalid >= 1
    anonymous = metrics.get(name, credential="anonymous", outcome="unauthenticated")
    assert anonymous is not None and anonymous >= 1


# ---------------------------------------------------------------------------------------------------------
# 3. No token in clear (last: it sweeps for every token the module issued and used)


def test_no_token_is_kept_or_answered_in_clear(lab: Lab) -> None:
    # use each token once more (the expired and revoked ones refused), and fail once with a bogus one whose
    # name is real
    for token in lab.tokens.values():
        call(lab.port, "GET", "/api/v1/mode", token)
    bogus = f"hk_oncall-primary_{secrets.token_urlsafe(32)}"
    lab.bogus.append(bogus)
    assert call(lab.port, "POST", "/api/v1/mode", bogus, {"paused": True}).status == 401
    usage = lab.state_dir / "access-usage.json"
    wait_until(
        lambda: usage.exists() and "oncall-primary" in usage.read_text(),
        15,
        "the usage file to record oncall-primary",
        interval=0.2,
    )
    wanted: dict[str, bytes] = {}
    for name, token in [*lab.tokens.items(), *((f"bogus {i}", t) for i, t in enumerate(lab.bogus))]:
        wanted[f"{name} token"] = token.encode()
        wanted[f"{name} secret"] = token[-43:].encode()
    assert len(wanted) >= 18  # the 8 tokens issued before the start and a bogus one, at least

    places: dict[str, bytes] = {
        "the access file": lab.access_file.read_bytes(),
        "the daemon's log": lab.daemon.log_path.read_bytes(),
    }
    assert b"oncall-primary" in places["the access file"]
    for path in sorted(p for p in lab.state_dir.rglob("*") if p.is_file()):
        places[str(path.relative_to(lab.folder))] = path.read_bytes()
    assert any(p.endswith("access-usage.json") for p in places), sorted(places)
    for method, template in sorted(SCOPES):
        if method == "GET":
            path = fill(template, method) + ("?limit=1000" if template in ("/api/v1/events",) else "")
            answer = call(lab.port, method, path, lab.admin)
            assert answer.status < 500, (path, answer.status)
            places[f"GET {path}"] = answer.body
    listing = run_cli("access", "list", "-c", str(lab.daemon.config_path))
    places["healerd access list"] = (listing.stdout + listing.stderr).encode()
    assert b"oncall-primary" in places["GET /metrics"]

    found = [
        f"{what} in {where}" for where, text in places.items() for what, secret in wanted.items() if secret in text
    ]
    print(f"no token in clear: {len(wanted)} tokens and secrets swept over {len(places)} places, {len(found)} found")
    assert not found, "\n".join(found)
