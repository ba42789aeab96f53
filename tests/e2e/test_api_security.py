"""End to end: the HTTP API refuses what a hostile web page or a careless client can send.

A real `healerd run` on loopback. Cross-site requests (text/plain, form bodies, no body, a foreign Origin)
and DNS rebinding (a foreign Host) are refused and change nothing; malformed input of every kind, over every
route, answers a 4xx in JSON, never a 5xx; answers are strict JSON (no NaN or Infinity). Requests are sent
with http.client so that Host, Origin, Content-Type and the body are exactly what the test says.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from conftest import Fleet, free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from healerd import api, api_alerts, api_cluster, api_rollout, api_status
from healerd.api_models import ModeChange, Release, Resolve, RolloutStart, SilenceCreate

from .fleet import DETECT, Healer, demo_pids, fleet_config, kill_demos, pid_alive, set_fault
from .helpers import DaemonProcess, StartDaemon, http_check, http_get, make_config, run_cli, wait_until

pytestmark = pytest.mark.e2e

JSON = "application/json"
EVIL = "http://evil.example"
MUTATING = ("POST", "PUT", "PATCH", "DELETE")


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body, parse_constant=_not_json)


def _not_json(name: str) -> Any:
    raise AssertionError(f"{name} in an answer: not valid JSON")


_DEFAULT_HOST = object()


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: Iterable[tuple[str, str | bytes]] = (),
    host: object = _DEFAULT_HOST,
    chunked: bool = False,
) -> Answer:
    """One request, exactly as given: Host defaults to the daemon's address; `host=None` sends none."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        if host is _DEFAULT_HOST:
            conn.putheader("Host", f"127.0.0.1:{port}")
        elif host is not None:
            conn.putheader("Host", str(host))
        for key, value in headers:
            conn.putheader(key, value)
        if chunked:
            conn.putheader("Transfer-Encoding", "chunked")
            data = body or b""
            conn.endheaders((data[i : i + 8192] for i in range(0, len(data), 8192)), encode_chunked=True)
        elif body is not None:
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body)
        else:
            conn.endheaders()
        resp = conn.getresponse()
        return Answer(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def post_json(port: int, path: str, body: Any = None, headers: Iterable[tuple[str, str]] = (), **kw: Any) -> Answer:
    data = b"" if body is None else json.dumps(body).encode()
    return call(port, "POST", path, data, [("Content-Type", JSON), *headers], **kw)


def assert_sane(answer: Answer, what: str, method: str = "GET") -> None:
    """No 5xx, no CORS grant, strict JSON with error and detail when refused."""
    assert answer.status < 500, f"{what} answered {answer.status}: {answer.body[:500]!r}"
    cors = [k for k in answer.headers if k.lower().startswith("access-control-")]
    assert not cors, f"{what} answered CORS headers {cors}"
    if answer.headers.get("Content-Type", "").startswith(JSON) and method != "HEAD":
        value = answer.json()
        if answer.status >= 400:
            assert isinstance(value, dict) and set(value) == {"error", "detail"}, f"{what}: {value}"


def small_config(tmp_path: Path, fleet: Fleet, **daemon: Any) -> dict[str, Any]:
    cfg = make_config(tmp_path, free_port(), [("web-1", fleet[0].address)], [http_check(interval="5s")])
    cfg["daemon"].update(daemon)
    return cfg


def no_handler_failures(daemon: DaemonProcess) -> None:
    log = daemon.output()
    assert "API handler failed" not in log and "Traceback" not in log, daemon.describe()


# ---------------------------------------------------------------------------------------------------------
# Every route, from add_routes itself: a new route is fuzzed without editing this file


def _routes() -> list[tuple[str, str]]:
    """Every route the daemon serves (the page and its history, rollouts, the cluster's, the alert receiver)."""
    app = web.Application()
    for module in (api, api_alerts, api_cluster, api_rollout, api_status):
        module.add_routes(app)
    return sorted({(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None})


ROUTES = _routes()
PATHS = sorted({path for _, path in ROUTES})
PARAM = re.compile(r"\{(\w+)\}")
#: every key any body takes, to send each with wrong types
BODY_KEYS = sorted(
    {key for model in (ModeChange, SilenceCreate, Release, Resolve, RolloutStart) for key in model.model_fields}
    | {"alerts", "version"}
)
WRONG_VALUES: list[Any] = [None, True, -1, 10**400, 1e308, "", "x" * 5000, [1, [2]], {"a": {"b": 1}}, "../../etc"]


def fill(path: str, value: str, quote: bool = True) -> str:
    return PARAM.sub(lambda _: urllib.parse.quote(value, safe="") if quote else value, path)


def _table(port: int) -> Iterator[tuple[str, str, bytes | None, list[tuple[str, str | bytes]], bool]]:
    """(method, path, body, headers, chunked) of every malformed request the table sends."""
    js: list[tuple[str, str | bytes]] = [("Content-Type", JSON)]
    deep = b"[" * 5000 + b"]" * 5000
    huge = b'{"comment": "' + b"x" * 70_000 + b'"}'
    for method, template in ROUTES:
        path = fill(template, "web-1")
        for body, headers in [
            (None, []),
            (b'{"mode": "auto"}', [("Content-Type", "text/plain")]),
            (b"paused=true", [("Content-Type", "application/x-www-form-urlencoded")]),
            (b"--x\r\n\r\n--x--", [("Content-Type", "multipart/form-data; boundary=x")]),
            (b"", js),
            (None, js),
            (b"[]", js),
            (b"null", js),
            (b'"observe"', js),
            (b"{", js),
            (b'{"x": 1}', js),
            (b'{"duration": NaN, "timeout": Infinity}', js),
            (b"\xff\xfe\x00", js),
            (deep, js),
            (huge, js),
            (b'{"a": "\\ud800"}', js),
            (b'{"mode": "auto"}', [("Content-Type", "application/json; charset=latin-1")]),
        ]:
            yield method, path, body, headers, False
        yield method, path, huge, js, True
        if PARAM.search(template):
            for value in ("../../etc", "..", "a\x00b", "é", "x" * 300, "%2e%2e", "a b", ";rm -rf /"):
                yield method, fill(template, value), b"{}", js, False
            yield method, fill(template, "../../etc", quote=False), b"{}", js, False
        for query in ("limit=-1", "limit=abc", "limit=1e999", "limit=99999999999", "limit=1&limit=2", "nope=1"):
            yield method, f"{path}?{query}", b"{}", js, False
        for query in ("state=%00", "type=..%2Fx", "service=" + "s" * 300, "condition=%ff", "to_rotation=1"):
            yield method, f"{path}?{query}", b"{}", js, False
    for path in PATHS:
        for method in ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "FOO"):
            yield method, fill(path, "web-1"), b"{}", js, False
    for method, template in ROUTES:
        if method in MUTATING:
            for key in BODY_KEYS:
                for value in WRONG_VALUES:
                    yield method, fill(template, "web-1"), json.dumps({key: value}).encode(), js, False


def test_every_route_answers_malformed_requests_with_json_4xx(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(small_config(tmp_path, fleet_factory(1)))
    sent = 0
    for method, path, body, headers, chunked in _table(daemon.port):
        answer = call(daemon.port, method, path, body, headers, chunked=chunked)
        assert_sane(answer, f"{method} {path[:120]} body {(body or b'')[:60]!r} {headers}", method)
        sent += 1
    assert sent >= 500, f"only {sent} requests"
    print(f"table fuzz: {sent} malformed requests over {len(ROUTES)} routes, none answered >= 500")
    assert daemon.get("/healthz")[0] == 200
    no_handler_failures(daemon)


# ---------------------------------------------------------------------------------------------------------
# Random requests (hypothesis)

_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
_field_values = st.one_of(
    _json_values,
    st.sampled_from(["observe", "dry-run", "auto", "config", "web", "web-1", "1h", "90s", "0s", "31d", "1e999"]),
    st.floats(min_value=-1e6, max_value=1e7),
)
_bodies = st.one_of(
    st.fixed_dictionaries({}, optional={k: _field_values for k in BODY_KEYS}).map(lambda d: json.dumps(d).encode()),
    _json_values.map(lambda v: json.dumps(v).encode()),  # allow_nan: NaN and Infinity literals too
    st.binary(max_size=200),
    st.integers(min_value=1, max_value=3000).map(lambda n: b'{"a":' * n),
    st.just(b""),
    st.none(),
)
_ids = st.one_of(
    st.sampled_from(["web", "web-1", "01M80B20D7QARGB4R0", "..", "../../etc", "x" * 250]),
    st.text(max_size=40),
)
_query_values = st.one_of(
    st.sampled_from(["-1", "0", "1", "1000", "1001", "NaN", "1e999", "", "a,b"]), st.text(max_size=20)
)
_queries = st.dictionaries(
    st.sampled_from(["limit", "state", "type", "service", "machine", "condition", "to_rotation", "zzz"]),
    _query_values,
    max_size=3,
)
_content_types = st.sampled_from(
    [None, JSON, JSON, JSON, "application/json; charset=utf-8", "APPLICATION/JSON", "text/plain", "application/jsonx"]
)
_content_types |= st.sampled_from(
    ["application/x-www-form-urlencoded", "multipart/form-data", "", "application/json; charset=utf-16"]
)
_methods = st.sampled_from(["GET", "HEAD", "POST", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"])


@st.composite
def requests(draw: st.DrawFn, port: int) -> tuple[str, str, bytes | None, list[tuple[str, str | bytes]], Any]:
    method, template = draw(st.sampled_from(ROUTES))
    method = draw(st.one_of(st.just(method), _methods))
    path = PARAM.sub(lambda _: urllib.parse.quote(draw(_ids), safe=""), template)
    query = urllib.parse.urlencode(draw(_queries))
    headers: list[tuple[str, str | bytes]] = []
    if (ctype := draw(_content_types)) is not None:
        headers.append(("Content-Type", ctype))
    origin = draw(st.sampled_from([None, None, None, f"http://127.0.0.1:{port}", EVIL, "null", "http://[::1"]))
    if origin is not None:
        headers.append(("Origin", origin))
    if draw(st.booleans()):
        headers.append(("Authorization", draw(st.sampled_from([b"Bearer \xc3\xa9\xff", b"Bearer x", b"Basic a"]))))
    host = draw(
        st.sampled_from(
            [_DEFAULT_HOST] * 6 + [f"localhost:{port}", f"[::1]:{port}", "evil.example", "", "[", "a:b:c", "x:99999"]
        )
    )
    return method, path + (f"?{query}" if query else ""), draw(_bodies), headers, host


def test_random_requests_never_get_a_5xx(tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon) -> None:
    daemon = start_daemon(small_config(tmp_path, fleet_factory(1)))
    sent = []

    @settings(
        max_examples=500,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(requests(daemon.port))
    def one(req: tuple[str, str, bytes | None, list[tuple[str, str | bytes]], Any]) -> None:
        method, path, body, headers, host = req
        answer = call(daemon.port, method, path, body, headers, host=host)
        sent.append(answer.status)
        assert_sane(answer, f"{method} {path} body {(body or b'')[:80]!r} headers {headers} host {host!r}", method)

    one()
    assert len(sent) >= 500
    print(f"random fuzz: {len(sent)} requests, statuses {sorted(set(sent))}")
    assert daemon.get("/healthz")[0] == 200
    no_handler_failures(daemon)


# ---------------------------------------------------------------------------------------------------------
# Cross-site requests and DNS rebinding


def test_cross_site_requests_are_refused_and_change_nothing(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(small_config(tmp_path, fleet_factory(1)))
    port = daemon.port
    before = daemon.json("/api/v1/mode")
    assert (before["mode"], before["paused"]) == ("observe", False)
    evil = [("Origin", EVIL)]
    attempts: list[tuple[str, int, Answer]] = [
        # what a form or fetch() on any web page may send without asking (no CORS preflight)
        ("text/plain from evil", 403, call(port, "POST", "/api/v1/mode", b'{"mode":"auto"}',
                                           [("Content-Type", "text/plain"), *evil])),
        ("text/plain", 415, call(port, "POST", "/api/v1/mode", b'{"mode":"auto"}', [("Content-Type", "text/plain")])),
        ("form from evil", 403, call(port, "POST", "/api/v1/mode", b'{"paused":true}',
                                     [("Content-Type", "application/x-www-form-urlencoded"), *evil])),
        ("form", 415, call(port, "POST", "/api/v1/mode", b'{"paused":true}',
                           [("Content-Type", "application/x-www-form-urlencoded")])),
        ("multipart", 415, call(port, "POST", "/api/v1/mode", b'{"paused":true}',
                                [("Content-Type", "multipart/form-data; boundary=x")])),
        ("silence as text", 415, call(port, "POST", "/api/v1/silences", b'{"service":"web"}',
                                      [("Content-Type", "text/plain")])),
        ("terminate without a body", 415, call(port, "POST", "/api/v1/quarantine/web-1/terminate")),
        ("terminate from evil", 403, call(port, "POST", "/api/v1/quarantine/web-1/terminate", None, evil)),
        # JSON needs a preflight, which healerd never grants; and a foreign Origin is refused anyway
        ("JSON from evil", 403, post_json(port, "/api/v1/mode", {"mode": "auto"}, evil)),
        ("JSON from a sandboxed page", 403, post_json(port, "/api/v1/mode", {"paused": True}, [("Origin", "null")])),
        ("JSON from another port", 403, post_json(port, "/api/v1/mode", {"mode": "auto"},
                                                  [("Origin", "http://127.0.0.1:1")])),
        # DNS rebinding: evil.example now resolves to 127.0.0.1, so the page is "same-origin" with itself
        ("rebound JSON", 403, post_json(port, "/api/v1/mode", {"mode": "auto"},
                                        [("Origin", f"http://evil.example:{port}")], host=f"evil.example:{port}")),
        ("rebound read", 403, call(port, "GET", "/api/v1/services", host=f"evil.example:{port}")),
        ("rebound status page", 403, call(port, "GET", "/", host="evil.example")),
        ("preflight", 403, call(port, "OPTIONS", "/api/v1/mode", None,
                                [*evil, ("Access-Control-Request-Method", "POST"),
                                 ("Access-Control-Request-Headers", "content-type")])),
    ]  # fmt: skip
    for what, status, answer in attempts:
        assert answer.status == status, f"{what}: {answer.status} {answer.body!r}"
        assert_sane(answer, what)
        assert answer.json()["detail"], what
    refusals = {what: answer.json() for what, _, answer in attempts}
    assert "Content-Type: application/json" in refusals["text/plain"]["detail"]
    assert "daemon.allowed_hosts" in refusals["rebound read"]["detail"]
    assert "evil.example" in refusals["rebound read"]["detail"]

    after = daemon.json("/api/v1/mode")
    assert after == before, "a refused request changed the mode"
    assert daemon.json("/api/v1/silences")["silences"] == []


def test_same_origin_json_and_the_cli_still_work(tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon) -> None:
    daemon = start_daemon(small_config(tmp_path, fleet_factory(1)))
    port = daemon.port
    # the status page's own origin, under each loopback name
    for origin, host in [
        (f"http://127.0.0.1:{port}", f"127.0.0.1:{port}"),
        (f"http://localhost:{port}", f"localhost:{port}"),
        (f"http://[::1]:{port}", f"[::1]:{port}"),
    ]:
        answer = post_json(port, "/api/v1/mode", {"mode": "dry-run"}, [("Origin", origin)], host=host)
        assert answer.status == 200, f"{origin}: {answer.body!r}"
        assert answer.json()["mode"] == "dry-run"
        assert call(port, "GET", "/api/v1/mode", host=host).status == 200
    # no Origin (curl, scripts), an empty JSON body and none at all on a body-less call
    assert post_json(port, "/api/v1/mode", {"paused": True}).json()["paused"] is True
    assert post_json(port, "/api/v1/quarantine/web-1/terminate").status == 404  # reached the handler
    assert call(port, "POST", "/api/v1/quarantine/web-1/terminate", None, [("Content-Type", JSON)]).status == 404
    utf8 = [("Content-Type", "application/json; charset=UTF-8")]
    assert call(port, "POST", "/api/v1/mode", b'{"mode": "auto"}', utf8).json()["mode"] == "auto"

    result = run_cli("mode", "observe", "--url", daemon.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mode observe" in result.stdout
    result = run_cli("mode", "resume", "--url", daemon.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (daemon.json("/api/v1/mode")["mode"], daemon.json("/api/v1/mode")["paused"]) == ("observe", False)
    result = run_cli("quarantine", "terminate", "web-1", "--url", daemon.url)
    assert result.returncode == 2 and "not quarantined" in result.stderr, "terminate reaches the daemon with JSON"
    no_handler_failures(daemon)


def test_allowed_hosts_extend_the_names_clients_may_use(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(small_config(tmp_path, fleet_factory(1), allowed_hosts=["healerd.example", "10.9.8.7:9464"]))
    port = daemon.port
    for host in ["healerd.example", f"healerd.example:{port}", "HEALERD.example.:8443", "10.9.8.7:9464"]:
        assert call(port, "GET", "/api/v1/mode", host=host).status == 200, host
    for host in ["10.9.8.7", "10.9.8.7:1", f"localhost:{port + 1}", "sub.healerd.example", f"127.0.0.2:{port}"]:
        answer = call(port, "GET", "/api/v1/mode", host=host)
        assert answer.status == 403, host
        assert "healerd.example, 10.9.8.7:9464" in answer.json()["detail"]
    origin = [("Origin", "https://healerd.example")]
    answer = post_json(port, "/api/v1/mode", {"paused": True}, origin, host="healerd.example")
    assert answer.status == 200, answer.body
    assert post_json(port, "/api/v1/mode", {"paused": False}, [("Origin", EVIL)], host="healerd.example").status == 403
    assert daemon.json("/api/v1/mode")["paused"] is True


# ---------------------------------------------------------------------------------------------------------
# Limits and typed input


def test_limits_are_enforced_and_each_refusal_names_the_field(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(small_config(tmp_path, fleet_factory(1)))
    port = daemon.port

    def refused(answer: Answer, status: int, field: str) -> None:
        assert answer.status == status, answer.body
        err = answer.json()
        assert field in err["error"] + err["detail"], err

    for path in ("/api/v1/events", "/api/v1/notifications"):
        for limit in ("-1", "0", "abc", "1e3", "100000"):
            refused(call(port, "GET", f"{path}?limit={limit}"), 400, "limit")
    assert call(port, "GET", "/api/v1/events?limit=1000").status == 200
    assert call(port, "GET", "/api/v1/notifications?limit=500").status == 200
    refused(call(port, "GET", "/api/v1/incidents?stat=open"), 400, "stat")

    refused(post_json(port, "/api/v1/mode", {"service": ["web"], "mode": "auto"}), 400, "service")
    refused(post_json(port, "/api/v1/mode", {"mode": "auto", "sudo": True}), 400, "sudo")
    refused(post_json(port, "/api/v1/quarantine/web-1/release", {"timeout": "abc"}), 400, "timeout")
    refused(post_json(port, "/api/v1/incidents/x/resolve", {"by": "b" * 201}), 400, "by")
    js = [("Content-Type", JSON)]
    refused(call(port, "POST", "/api/v1/silences", b'{"service": "web", "duration": 1e999}', js), 400, "duration")
    refused(call(port, "POST", "/api/v1/silences", b'{"service": "web", "duration": NaN}', js), 400, "NaN")
    refused(call(port, "POST", "/api/v1/mode", b"[" * 100 + b"]" * 100, js), 400, "nest")
    refused(call(port, "POST", "/api/v1/mode", b'{"a":' * 10_000, js), 400, "nest")
    big = json.dumps({"comment": "x" * 70_000, "service": "web"}).encode()
    refused(call(port, "POST", "/api/v1/silences", big, js), 413, "65536")
    refused(call(port, "POST", "/api/v1/silences", big, js, chunked=True), 413, "65536")
    refused(call(port, "POST", "/api/v1/quarantine/..%2F..%2Fetc/terminate", b"", js), 400, "machine")
    refused(call(port, "DELETE", "/api/v1/silences/a%00b", b"", js), 400, "id")
    assert daemon.json("/api/v1/silences")["silences"] == [], "a refused silence was stored"

    answer = post_json(port, "/api/v1/silences", {"service": "web", "duration": "30d", "comment": "c" * 1000})
    assert answer.status == 201, answer.body
    silence = answer.json()
    assert silence["ends_at"] - silence["starts_at"] == pytest.approx(30 * 86400)
    refused(call(port, "DELETE", f"/api/v1/silences/{silence['id']}"), 415, "Content-Type")
    assert call(port, "DELETE", f"/api/v1/silences/{silence['id']}", b"", js).status == 200
    no_handler_failures(daemon)


def test_answers_are_strict_json_when_a_plugin_reports_infinity(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    cfg = small_config(tmp_path, fleet_factory(1))
    plugin = tmp_path / "checks" / "check_inf"
    plugin.write_text("#!/bin/sh\necho 'OK: huge | big=1e999;;;nan;inf'\n")
    plugin.chmod(0o755)
    cfg["services"]["web"]["checks"].append(
        {"name": "inf", "kind": "exec", "command": ["check_inf"], "interval": "5s", "timeout": "3s"}
    )
    daemon = start_daemon(cfg)
    status, body = daemon.get("/api/v1/machines")
    assert status == 200
    view = json.loads(body, parse_constant=_not_json)
    [big] = view["machines"][0]["checks"]["inf"]["metrics"]
    assert big["label"] == "big" and big["value"] is None, big
    status, body = daemon.get("/api/v1/machines/web/web-1")
    json.loads(body, parse_constant=_not_json)
    assert status == 200


# ---------------------------------------------------------------------------------------------------------
# The bearer token


def test_token_is_required_compared_safely_and_read_by_the_cli(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    token_file = tmp_path / "api-token"
    token_file.write_text("s3cret-token\n")
    daemon = start_daemon(small_config(tmp_path, fleet_factory(1), api_token_file=str(token_file)))
    port = daemon.port
    for auth in [None, b"Bearer wrong", b"Bearer \xc3\xa9\xff", b"Basic czNjcmV0LXRva2Vu", b"Bearer "]:
        headers = [("Authorization", auth)] if auth is not None else []
        answer = post_json(port, "/api/v1/mode", {"paused": True}, headers)
        assert answer.status == 401, (auth, answer.body)
        assert "--token-file" in answer.json()["detail"]
    assert daemon.json("/api/v1/mode")["paused"] is False
    ok = post_json(port, "/api/v1/mode", {"paused": True}, [("Authorization", "Bearer s3cret-token")])
    assert ok.status == 200 and ok.json()["paused"] is True

    result = run_cli("mode", "resume", "--url", daemon.url)
    assert result.returncode == 1 and "401" in result.stderr, result.stderr
    result = run_cli("mode", "resume", "--url", daemon.url, "--token-file", str(token_file))
    assert result.returncode == 0, result.stderr
    result = run_cli("mode", "pause", "--url", daemon.url, "-c", str(daemon.config_path))
    assert result.returncode == 0, result.stderr
    assert daemon.json("/api/v1/mode")["paused"] is True
    result = run_cli("mode", "--url", daemon.url, "--token-file", str(tmp_path / "missing"))
    assert result.returncode == 2 and "cannot read the API token file" in result.stderr, result
    no_handler_failures(daemon)


# ---------------------------------------------------------------------------------------------------------
# A quarantined machine: the one thing a cross-site terminate could destroy


@pytest.fixture
def _reap_demo_machines(tmp_path: Path) -> Iterator[None]:
    """Set up before start_daemon (listed first), so healerd is stopped before its demo machines are killed."""
    yield
    kill_demos(str(tmp_path))
    assert not demo_pids(str(tmp_path)), "demo machines survived the clean-up"


def test_a_quarantined_machine_survives_cross_site_terminate(
    _reap_demo_machines: None, tmp_path: Path, start_daemon: StartDaemon
) -> None:
    config = fleet_config(tmp_path, free_port())
    healer = Healer(start_daemon(config, wait="listening"), tmp_path, config)
    members = healer.wait_fleet_up()
    victim = sorted(members)[0]
    set_fault(members[victim], "down")
    quarantined = healer.wait(lambda: healer.quarantined().get(victim), DETECT + 10, f"{victim} quarantined")
    status, about = http_get(f"http://{members[victim]}/")
    assert status == 200
    pid = json.loads(about)["pid"]
    port = healer.daemon.port
    path = f"/api/v1/quarantine/{victim}/terminate"
    for headers, host, status in [
        ([], _DEFAULT_HOST, 415),  # a form with no fields
        ([("Content-Type", "text/plain")], _DEFAULT_HOST, 415),
        ([("Content-Type", "application/x-www-form-urlencoded"), ("Origin", EVIL)], _DEFAULT_HOST, 403),
        ([("Content-Type", JSON), ("Origin", EVIL)], _DEFAULT_HOST, 403),
        ([("Content-Type", JSON), ("Origin", f"http://evil.example:{port}")], f"evil.example:{port}", 403),
    ]:
        answer = call(port, "POST", path, b"", headers, host=host)
        assert answer.status == status, (headers, answer.body)
    stable = ("id", "address", "incident", "quarantined_at")  # the evidence bundle may still be being written
    now = healer.quarantined().get(victim)
    assert now is not None, "a refused terminate ended the quarantine"
    assert {k: now[k] for k in stable} == {k: quarantined[k] for k in stable}
    assert pid_alive(pid)

    result = run_cli("quarantine", "terminate", victim, "--url", healer.url)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "terminated" in result.stdout
    wait_until(lambda: victim not in healer.quarantined(), 5, f"{victim} to leave the quarantine")
    no_handler_failures(healer.daemon)
