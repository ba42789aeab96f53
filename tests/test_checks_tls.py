"""HTTPS checks: one client TLS context per verification mode, TLS sessions resumed on fresh connections, the
system trust store (or SSL_CERT_FILE) for `tls_verify: true`. Against a real aiohttp HTTPS server on
loopback that closes every connection after its answer."""

from __future__ import annotations

import ssl
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from conftest import free_port, require_binary

from healerd.checks import CheckEnv
from healerd.checks.http import HttpCheck, HttpConfig
from healerd.results import Status
from healerd.runner import run_check
from healerd.targets import Target


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = require_binary("openssl")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "server.crt", folder / "server.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


Serve = Callable[[], Awaitable[tuple[str, list[bool]]]]


@pytest.fixture
async def https_server(certificate: tuple[Path, Path]) -> AsyncIterator[Serve]:
    """Start an HTTPS server; yields `serve() -> (base_url, resumed)`: one entry per request, whether its TLS
    session was resumed. Every answer closes the connection (a fresh handshake per check)."""
    runners: list[web.AppRunner] = []

    async def serve() -> tuple[str, list[bool]]:
        resumed: list[bool] = []

        async def health(request: web.Request) -> web.Response:
            assert request.transport is not None
            resumed.append(bool(request.transport.get_extra_info("ssl_object").session_reused))
            return web.Response(text="ok", headers={"Connection": "close"})

        app = web.Application()
        app.router.add_get("/health", health)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(*map(str, certificate))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ctx).start()
        runners.append(runner)
        return f"https://127.0.0.1:{port}", resumed

    yield serve
    for r in runners:
        await r.cleanup()


def https_check(env: CheckEnv, url: str, machine: str = "m1", verify: bool = False) -> HttpCheck:
    return HttpCheck(HttpConfig(url=url, tls_verify=verify), Target("web", machine, "127.0.0.1:1"), env=env)


async def test_fresh_connections_resume_the_tls_session(env: CheckEnv, https_server: Serve) -> None:
    base, resumed = await https_server()
    check = https_check(env, f"{base}/health")
    for _ in range(6):
        result = await run_check(check, timeout=5)
        assert result.status is Status.OK, result.message
    assert resumed == [False, True, True, True, True, True]  # one full handshake, then abbreviated ones


async def test_machines_on_one_server_share_the_context_and_its_sessions(env: CheckEnv, https_server: Serve) -> None:
    base, resumed = await https_server()
    first, second = https_check(env, f"{base}/health", "m1"), https_check(env, f"{base}/health", "m2")
    assert (await run_check(first, timeout=5)).status is Status.OK
    assert (await run_check(second, timeout=5)).status is Status.OK
    assert resumed == [False, True]


async def test_tls_verify_refuses_a_certificate_the_trust_store_does_not_vouch_for(
    env: CheckEnv, https_server: Serve, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "no-such-bundle.pem"))  # nothing trusted
    base, resumed = await https_server()
    result = await run_check(https_check(env, f"{base}/health", verify=True), timeout=5)
    assert result.status is Status.CRITICAL
    assert "certificate" in result.message.lower(), result.message
    assert resumed == []  # the handshake failed: no request was made


async def test_tls_verify_trusts_ssl_cert_file_and_resumes_too(
    https_server: Serve, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    env = CheckEnv(base_dir=tmp_path)
    try:
        base, resumed = await https_server()
        check = https_check(env, f"{base}/health", verify=True)
        for _ in range(3):
            result = await run_check(check, timeout=5)
            assert result.status is Status.OK, result.message
        assert resumed == [False, True, True]
        assert env.tls_context(True).cert_store_stats()["x509_ca"] == 1  # the bundle file, not a folder
    finally:
        await env.close()


def test_the_unverified_context_loads_no_trust_store(env: CheckEnv) -> None:
    """With the default verify paths OpenSSL would still build a chain on every handshake, listing the
    certificate folder to do it: `tls_verify: false` needs none of that."""
    ctx = env.tls_context(False)
    assert ctx.verify_mode is ssl.CERT_NONE and not ctx.check_hostname
    assert ctx.cert_store_stats() == {"x509": 0, "crl": 0, "x509_ca": 0}
    assert env.tls_context(False) is ctx  # one per daemon, not one per check
