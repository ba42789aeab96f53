"""End to end: the API under faults a user or the world causes. A full disk under the state store answers no
5xx: reads serve what is stored and what waits to be written, a mode change or a silence applies now and says it
is not saved yet (the silence is written once the disk has room), never a traceback; a client that
aborts its body or trickles its headers is the client's problem (cut off, nothing logged as a failure); every
answer carries the security headers; the evidence bundle listing never follows a symbolic link planted in the
forensics folder."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest

from .helpers import StartDaemon, wait_until
from .test_api_security import call, no_handler_failures, post_json, small_config
from .test_state_faults import _fill, small_disk  # noqa: F401 (fixture)

pytestmark = pytest.mark.e2e

JSON = "application/json"


# ---------------------------------------------------------------------------------------------------------
# The state store failing under a request


def test_a_full_disk_answers_no_5xx_what_can_apply_applies_and_is_saved_once_the_disk_has_room(
    tmp_path: Path,
    small_disk: Path,  # noqa: F811
    fleet_factory: Any,
    start_daemon: StartDaemon,
) -> None:
    cfg = small_config(tmp_path, fleet_factory(1))
    cfg["services"]["web"]["checks"][0].update(interval="300ms", timeout="300ms")
    cfg["daemon"]["state_dir"] = str(small_disk / "state")
    daemon = start_daemon(cfg)
    filler = _fill(small_disk)
    try:
        wait_until(lambda: daemon.metrics().get("healerd_store_writable") == 0, 15, "the store to notice the full disk")

        # a silence applies now, kept in memory: 202, and said so
        answer = post_json(daemon.port, "/api/v1/silences", {"service": "web", "duration": "1h", "comment": "disk"})
        silence = answer.json()
        assert answer.status == 202 and silence["saved"] is False, (answer.status, silence)
        assert "applies now" in silence["warning"] and "database or disk is full" in silence["warning"], silence
        listed = daemon.json("/api/v1/silences")["silences"]
        assert [s["id"] for s in listed] == [silence["id"]]

        # the events: what is stored, and what waits to be written (the store's own degraded event among them)
        answer = call(daemon.port, "GET", "/api/v1/events?limit=50")
        assert answer.status == 200, answer.body[:300]
        assert "store.degraded" in [e["type"] for e in answer.json()["events"]]

        # a mode change applies, and says it is not saved
        answer = post_json(daemon.port, "/api/v1/mode", {"mode": "dry-run"})
        body = answer.json()
        assert answer.status == 200 and body["saved"] is False, (answer.status, body)
        assert "applies now (mode dry-run)" in body["warning"] and "not saved" in body["warning"], body
        assert daemon.json("/api/v1/mode")["mode"] == "dry-run"  # applied in memory

        assert daemon.get("/healthz")[0] == 200 and daemon.get("/")[0] == 200
    finally:
        filler.unlink()
    wait_until(lambda: daemon.metrics().get("healerd_store_writable") == 1, 15, "the store to recover")
    answer = post_json(daemon.port, "/api/v1/mode", {"mode": "dry-run"})
    assert answer.status == 200 and answer.json()["saved"] is True  # saved now
    assert post_json(daemon.port, "/api/v1/silences", {"service": "web", "duration": "1h"}).status == 201
    # the silence kept in memory was written once the disk had room: a restart keeps it
    daemon.stop()
    daemon = start_daemon(cfg)
    assert silence["id"] in [s["id"] for s in daemon.json("/api/v1/silences")["silences"]]
    no_handler_failures(daemon)


# ---------------------------------------------------------------------------------------------------------
# Clients that go away or dawdle


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def test_an_aborted_body_is_the_clients_problem_not_a_handler_failure(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(small_config(tmp_path, fleet_factory(1)))
    for path in ("/api/v1/mode", "/api/v1/silences", "/api/v1/alerts"):
        for _ in range(5):
            with _connect(daemon.port) as s:
                s.sendall(
                    f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{daemon.port}\r\nContent-Type: {JSON}\r\n"
                    'Content-Length: 1000\r\n\r\n{"mode": '.encode()
                )
                time.sleep(0.05)  # the handler is reading the body when the client goes
        with _connect(daemon.port) as s:  # a broken chunked body
            s.sendall(
                f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{daemon.port}\r\nContent-Type: {JSON}\r\n"
                'Transfer-Encoding: chunked\r\n\r\n5\r\n{"a":\r\nzz\r\n'.encode()
            )
            s.recv(4096)
    time.sleep(0.5)
    assert daemon.get("/healthz")[0] == 200
    no_handler_failures(daemon)


def test_a_client_trickling_its_headers_is_cut_off(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    from healerd.api import HEADER_TIMEOUT

    daemon = start_daemon(small_config(tmp_path, fleet_factory(1)))
    request = f"GET /api/v1/services HTTP/1.1\r\nHost: 127.0.0.1:{daemon.port}\r\nX-Slow: {'a' * 100}\r\n\r\n"
    with _connect(daemon.port) as s:
        started = time.monotonic()
        closed_after = None
        for byte in request.encode():  # one byte a second, as a slowloris client sends them
            try:
                s.sendall(bytes([byte]))
            except OSError:
                closed_after = time.monotonic() - started
                break
            s.settimeout(1.0)
            try:
                if s.recv(1024) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                pass
            if time.monotonic() - started > HEADER_TIMEOUT + 10:
                break
    assert closed_after is not None, "the connection was still open after the header timeout"
    assert closed_after <= HEADER_TIMEOUT + 2, f"cut off after {closed_after:.1f}s"
    # a normal client is not affected
    assert daemon.get("/api/v1/services")[0] == 200
    no_handler_failures(daemon)


# ---------------------------------------------------------------------------------------------------------
# Headers


SECURITY = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


def test_every_answer_carries_the_security_headers_and_the_page_runs_no_inline_script_but_its_own(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    daemon = start_daemon(small_config(tmp_path, fleet_factory(1)))
    answers = {
        "page": call(daemon.port, "GET", "/"),
        "page part": call(daemon.port, "GET", "/?part=main"),
        "json": call(daemon.port, "GET", "/api/v1/services"),
        "metrics": call(daemon.port, "GET", "/metrics"),
        "404": call(daemon.port, "GET", "/nope"),
        "refusal": call(daemon.port, "POST", "/api/v1/mode", b"{}", [("Content-Type", "text/plain")]),
        "foreign host": call(daemon.port, "GET", "/api/v1/services", host="evil.example"),
    }
    for what, answer in answers.items():
        for name, value in SECURITY.items():
            assert answer.headers.get(name) == value, (what, name, dict(answer.headers))
        csp = answer.headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp, (what, csp)
    page = answers["page"]
    csp = page.headers["Content-Security-Policy"]
    nonce = csp.split("script-src 'nonce-", 1)[1].split("'", 1)[0]
    html = page.body.decode()
    assert html.count(f'<script nonce="{nonce}">') == 1 and html.count("<script") == 1, html[:300]
    assert f'<style nonce="{nonce}">' in html
    again = call(daemon.port, "GET", "/").headers["Content-Security-Policy"]
    assert again != csp, "a nonce is used once"


# ---------------------------------------------------------------------------------------------------------
# The evidence bundle listing


def _bundle(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir(parents=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    manifest = {"incident": folder.name, "files": {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_the_bundle_listing_follows_no_symbolic_link_planted_in_the_forensics_folder(
    tmp_path: Path, fleet_factory: Any, start_daemon: StartDaemon
) -> None:
    cfg = small_config(tmp_path, fleet_factory(1))
    forensics = Path(cfg["daemon"]["state_dir"]) / "forensics"
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_bytes(b"s" * 12345)  # a size the answer must never show
    _bundle(forensics / "01INCIDENTGOOD", {"console.log": b"boot\n"})
    os.symlink(secret, forensics / "01INCIDENTGOOD" / "describe.json")  # a planted file
    manifest = json.loads((forensics / "01INCIDENTGOOD" / "manifest.json").read_text())
    manifest["files"]["describe.json"] = "0" * 64
    manifest["files"]["../outside/secret.txt"] = "0" * 64
    (forensics / "01INCIDENTGOOD" / "manifest.json").write_text(json.dumps(manifest))
    _bundle(outside / "bundle", {"console.log": b"x" * 777})
    os.symlink(outside / "bundle", forensics / "01INCIDENTLINK")  # a planted bundle
    os.symlink(secret, forensics / "01INCIDENTMANI")
    daemon = start_daemon(cfg)

    body = daemon.json("/api/v1/incidents/01INCIDENTGOOD/bundle")
    sizes = {f["name"]: f["bytes"] for f in body["files"]}
    assert sizes == {"console.log": 5, "describe.json": None, "../outside/secret.txt": None}, body
    for incident in ("01INCIDENTLINK", "01INCIDENTMANI"):
        status, raw = daemon.get(f"/api/v1/incidents/{incident}/bundle")
        assert status == 404 and json.loads(raw)["error"] == "no bundle", (incident, status, raw[:300])
    assert "12345" not in json.dumps(body) and "777" not in json.dumps(body)
    no_handler_failures(daemon)
