"""The API over TLS (daemon.tls_cert_file / tls_key_file): served with the given certificate, and plain
HTTP is not answered."""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from pathlib import Path

import pytest
from conftest import free_port, require_binary

from .helpers import StartDaemon, http_check, make_config, wait_until

pytestmark = pytest.mark.e2e


def test_the_api_is_served_over_tls_with_the_configured_certificate(tmp_path: Path, start_daemon: StartDaemon) -> None:
    openssl = require_binary("openssl")
    cert, key = tmp_path / "api.crt", tmp_path / "api.key"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    port = free_port()
    config = make_config(tmp_path, port, [("web-1", "127.0.0.1:9")], [http_check(interval="1s")])
    config["daemon"].update(tls_cert_file=str(cert), tls_key_file=str(key))
    daemon = start_daemon(config, wait="none")
    context = ssl.create_default_context(cafile=str(cert))

    def get(path: str) -> dict:
        with urllib.request.urlopen(f"https://127.0.0.1:{port}{path}", context=context, timeout=3) as resp:
            return json.loads(resp.read())

    def up() -> bool:
        try:
            return get("/healthz")["status"] == "ok"
        except OSError:
            return False

    wait_until(up, 15, "the API over TLS", describe=daemon.describe)
    assert get("/api/v1/services")["services"][0]["name"] == "web"
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=3).read()
