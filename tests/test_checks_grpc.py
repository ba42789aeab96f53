"""The `grpc` check against real gRPC servers (grpcio's, with the standard health service) run as processes of
their own on loopback: statuses set while they run, frozen with SIGSTOP, killed and started again, over TLS."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, require_binary
from test_config_table import problem_lines, swap, write

from healerd.checks import CheckEnv
from healerd.checks.grpc import GrpcChannels, GrpcCheck, GrpcConfig
from healerd.config import ConfigError, load_config
from healerd.results import Status
from healerd.runner import run_check
from healerd.targets import Target, render_model

SERVER = Path(__file__).with_name("grpc_health_server.py")


class HealthServer:
    """A grpcio server process on 127.0.0.1:port; `set()` changes what its health service answers."""

    def __init__(self, port: int, *args: str) -> None:
        self.port = port
        self.proc = subprocess.Popen(
            [sys.executable, str(SERVER), str(port), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline() == "ready\n"

    def set(self, service: str, status: str) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{service} {status}\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline() == "ok\n"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a frozen server would never end
            self.proc.kill()
            self.proc.wait(5)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture(scope="module")
def server() -> Iterator[HealthServer]:
    s = HealthServer(free_port())
    yield s
    s.stop()


@pytest.fixture
def own_server() -> Iterator[list[HealthServer]]:
    """Servers a test may freeze or kill; every one of them is ended afterwards."""
    started: list[HealthServer] = []
    yield started
    for s in started:
        s.stop()


def check(env: CheckEnv, port: int | str, host: str = "127.0.0.1", **options: object) -> GrpcCheck:
    config = render_model(GrpcConfig(port=port, **options), Target("web", "m1", f"{host}:8080").fields())  # type: ignore[arg-type]
    return GrpcCheck(config, Target("web", "m1", f"{host}:8080"), env=env)


# -- what the health service says ----------------------------------------------------------------------------
async def test_serving_is_ok_with_the_time_in_seconds(env: CheckEnv, server: HealthServer) -> None:
    server.set("web", "SERVING")
    result = await run_check(check(env, server.port, service="web"), timeout=5)
    assert result.status is Status.OK, result.message
    assert re.fullmatch(r"SERVING \(web\) in \d+(\.\d)?ms", result.message), result.message
    (time,) = result.metrics
    assert time.label == "time" and time.uom == "s" and 0 < time.value < 1  # type: ignore[operator]
    whole = await run_check(check(env, server.port), timeout=5)  # service "": the server as a whole
    assert whole.status is Status.OK and whole.message.startswith("SERVING in ")


async def test_a_status_change_is_seen_at_the_next_run_over_one_kept_connection(
    env: CheckEnv, server: HealthServer
) -> None:
    web, api = check(env, server.port, service="web"), check(env, server.port, service="api")
    server.set("web", "SERVING")
    server.set("api", "SERVING")
    assert (await run_check(web, timeout=5)).status is Status.OK
    server.set("web", "NOT_SERVING")
    result = await run_check(web, timeout=5)
    assert result.status is Status.CRITICAL
    assert result.message.startswith("NOT_SERVING (web) in ")
    assert (await run_check(api, timeout=5)).status is Status.OK
    server.set("web", "SERVING")
    assert (await run_check(web, timeout=5)).status is Status.OK
    assert len(env.shared[GrpcChannels]) == 1  # type: ignore[arg-type]  # both services, one connection


@pytest.mark.parametrize(
    ("status", "words"),
    [
        ("UNKNOWN", "UNKNOWN (web) in "),
        ("SERVICE_UNKNOWN", "the server does not know the service 'web' (SERVICE_UNKNOWN)"),
    ],
)
async def test_a_status_other_than_serving_is_critical_and_named(
    env: CheckEnv, server: HealthServer, status: str, words: str
) -> None:
    server.set("web", status)
    result = await run_check(check(env, server.port, service="web"), timeout=5)
    assert result.status is Status.CRITICAL
    assert words in result.message


async def test_a_service_the_server_does_not_know_is_critical_naming_it(env: CheckEnv, server: HealthServer) -> None:
    result = await run_check(check(env, server.port, service="billing"), timeout=5)
    assert result.status is Status.CRITICAL
    assert result.message == "the server does not know the service 'billing' (NOT_FOUND)"


async def test_a_server_without_the_health_service_is_critical(env: CheckEnv, own_server: list[HealthServer]) -> None:
    own_server.append(bare := HealthServer(free_port(), "--no-health"))
    result = await run_check(check(env, bare.port), timeout=5)
    assert result.status is Status.CRITICAL
    assert result.message == "the server does not implement grpc.health.v1.Health (UNIMPLEMENTED)"


# -- servers that are gone, frozen, restarted, or no gRPC at all ---------------------------------------------
async def test_no_server_is_critical_connection_refused(env: CheckEnv) -> None:
    port = free_port()
    result = await run_check(check(env, port), timeout=5)
    assert result.status is Status.CRITICAL
    assert result.message == f"gRPC 127.0.0.1:{port}: connection refused"


async def test_a_frozen_server_is_critical_at_the_timeout_and_ok_at_the_next_run_once_resumed(
    env: CheckEnv, own_server: list[HealthServer]
) -> None:
    own_server.append(s := HealthServer(free_port()))
    c = check(env, s.port)
    assert (await run_check(c, timeout=5)).status is Status.OK
    os.kill(s.proc.pid, signal.SIGSTOP)
    started = asyncio.get_running_loop().time()
    frozen = await run_check(c, timeout=0.5)
    assert frozen.status is Status.CRITICAL
    assert frozen.message == "no answer within 500ms"
    assert asyncio.get_running_loop().time() - started < 1.5
    os.kill(s.proc.pid, signal.SIGCONT)
    resumed = await run_check(c, timeout=5)
    assert resumed.status is Status.OK, resumed.message


async def test_a_server_restarted_on_the_same_port_is_ok_at_the_next_run(
    env: CheckEnv, own_server: list[HealthServer]
) -> None:
    port = free_port()
    own_server.append(first := HealthServer(port))
    c = check(env, port)
    assert (await run_check(c, timeout=5)).status is Status.OK
    first.stop()
    await asyncio.sleep(0.1)  # the kept connection's end reaches the loop
    down = await run_check(c, timeout=5)
    assert down.status is Status.CRITICAL and down.message == f"gRPC 127.0.0.1:{port}: connection refused"
    own_server.append(HealthServer(port))
    back = await run_check(c, timeout=5)
    assert back.status is Status.OK, back.message


async def test_a_run_that_times_out_leaves_the_other_checks_on_its_connection_alone(
    env: CheckEnv, own_server: list[HealthServer]
) -> None:
    own_server.append(s := HealthServer(free_port()))
    slow, medium = check(env, s.port), check(env, s.port)
    assert (await run_check(medium, timeout=5)).status is Status.OK  # the connection both share
    os.kill(s.proc.pid, signal.SIGSTOP)  # the server answers in 1s: after slow's timeout, within medium's
    asyncio.get_running_loop().call_later(1, os.kill, s.proc.pid, signal.SIGCONT)
    timed_out, answered = await asyncio.gather(run_check(slow, timeout=0.5), run_check(medium, timeout=3))
    assert timed_out.message == "no answer within 500ms"
    assert answered.status is Status.OK, answered.message
    assert (await run_check(slow, timeout=5)).status is Status.OK


async def test_a_server_that_is_not_grpc_is_critical(env: CheckEnv) -> None:
    async def banner(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(banner, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        result = await run_check(check(env, port), timeout=2)
    assert result.status is Status.CRITICAL
    assert (
        result.message == f"gRPC 127.0.0.1:{port}: connection closed without a gRPC answer (not a gRPC server, "
        "or one that wants TLS: `tls: true`)"
    )


# -- TLS ------------------------------------------------------------------------------------------------------
def self_signed(folder: Path, name: str) -> Path:
    """A self-signed certificate for `name` (its key beside it, NAME.key), its path."""
    openssl = require_binary("openssl")
    cert, key = folder / f"{name}.pem", folder / f"{name}.key"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HealthServer, Path]]:
    folder = tmp_path_factory.mktemp("tls")
    cert = self_signed(folder, "grpc.test")
    s = HealthServer(free_port(), "--tls", str(cert), str(folder / "grpc.test.key"))
    yield s, cert
    s.stop()


async def test_tls_with_a_self_signed_certificate_and_tls_verify_false_is_ok(
    env: CheckEnv, tls_server: tuple[HealthServer, Path]
) -> None:
    s, _ = tls_server
    result = await run_check(check(env, s.port, tls=True, tls_verify=False), timeout=5)
    assert result.status is Status.OK, result.message


async def test_tls_verified_against_its_ca_is_ok_under_its_name_and_critical_under_another(
    env: CheckEnv, tls_server: tuple[HealthServer, Path]
) -> None:
    s, cert = tls_server
    good = await run_check(check(env, s.port, tls=True, ca_file=str(cert), server_name="grpc.test"), timeout=5)
    assert good.status is Status.OK, good.message
    wrong = await run_check(check(env, s.port, tls=True, ca_file=str(cert), server_name="other.test"), timeout=5)
    assert wrong.status is Status.CRITICAL
    assert wrong.message.startswith(f"gRPC 127.0.0.1:{s.port}: TLS certificate rejected: Hostname mismatch")


async def test_a_rotated_ca_file_is_read_again_by_the_next_run(
    env: CheckEnv, tls_server: tuple[HealthServer, Path], tmp_path: Path
) -> None:
    s, cert = tls_server
    ca = tmp_path / "ca.pem"
    ca.write_bytes(self_signed(tmp_path, "other.test").read_bytes())  # a CA that did not sign the server's
    c = check(env, s.port, tls=True, ca_file=str(ca), server_name="grpc.test")
    before = await run_check(c, timeout=5)
    assert before.status is Status.CRITICAL and "TLS certificate rejected" in before.message, before.message
    ca.write_bytes(cert.read_bytes())
    stat = ca.stat()
    os.utime(ca, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a rotation comes later than the first
    after = await run_check(c, timeout=5)
    assert after.status is Status.OK, after.message


async def test_a_ca_file_under_home_is_used(
    env: CheckEnv, tls_server: tuple[HealthServer, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s, cert = tls_server
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "ca.pem").write_bytes(cert.read_bytes())
    result = await run_check(check(env, s.port, tls=True, ca_file="~/ca.pem", server_name="grpc.test"), timeout=5)
    assert result.status is Status.OK, result.message


@pytest.mark.parametrize(
    ("content", "words"),
    [
        (None, "does not exist; give the path of a PEM file of CA certificates"),
        (b"not a certificate\n", "holds no readable CA certificate"),
    ],
    ids=["gone", "not-pem"],
)
async def test_a_bad_ca_file_is_unknown_naming_the_file_and_the_fix(
    env: CheckEnv, tls_server: tuple[HealthServer, Path], tmp_path: Path, content: bytes | None, words: str
) -> None:
    s, _ = tls_server
    ca = tmp_path / "ca.pem"
    if content is not None:
        ca.write_bytes(content)
    result = await run_check(check(env, s.port, tls=True, ca_file=str(ca)), timeout=5)
    assert result.status is Status.UNKNOWN
    assert result.message.startswith(f"ca_file {ca} ") and words in result.message, result.message


async def test_tls_verified_against_the_system_cas_rejects_a_self_signed_certificate(
    env: CheckEnv, tls_server: tuple[HealthServer, Path]
) -> None:
    s, _ = tls_server
    result = await run_check(check(env, s.port, tls=True, server_name="grpc.test"), timeout=5)
    assert result.status is Status.CRITICAL
    assert "TLS certificate rejected: self-signed certificate" in result.message


async def test_plaintext_to_a_tls_server_is_critical(env: CheckEnv, tls_server: tuple[HealthServer, Path]) -> None:
    s, _ = tls_server
    result = await run_check(check(env, s.port), timeout=5)
    assert result.status is Status.CRITICAL
    assert result.message.endswith("or one that wants TLS: `tls: true`)")


# -- options -----------------------------------------------------------------------------------------------------
async def test_the_port_template_is_the_machines_port(env: CheckEnv, server: HealthServer) -> None:
    target = Target("web", "m1", f"127.0.0.1:{server.port}")
    c = GrpcCheck(render_model(GrpcConfig(port="{port}"), target.fields()), target, env=env)
    assert (await run_check(c, timeout=5)).status is Status.OK
    portless = Target("web", "m2", "10.0.0.7")
    with pytest.raises(ValueError, match="expected a port between 1 and 65535"):
        GrpcCheck(render_model(GrpcConfig(port="{port}"), portless.fields()), portless, env=env)


async def test_closing_the_env_closes_the_kept_connections(server: HealthServer, tmp_path: Path) -> None:
    env = CheckEnv(base_dir=tmp_path)
    assert (await run_check(check(env, server.port), timeout=5)).status is Status.OK
    channels = env.shared[GrpcChannels]
    await env.close()
    assert len(channels) == 0  # type: ignore[arg-type]


def grpc_config(options: str) -> str:
    return swap('        kind: http\n        url: "http://{address}/health"\n', f"        kind: grpc\n{options}")


@pytest.mark.parametrize(
    ("options", "path", "words"),
    [
        ("        port: 70000\n", "port", "expected a port between 1 and 65535"),
        ("        port: grpc\n", "port", "got 'grpc'"),
        ("        port: true\n", "port", "got True"),
        ("        ca_file: ca.pem\n", "", "ca_file is set but tls is false: add `tls: true`"),
        ("        tls: true\n        tls_verify: false\n        ca_file: ca.pem\n", "", "remove one of them"),
        ("        tls: true\n        ca_file: missing.pem\n", "ca_file", "missing.pem does not exist; give the path"),
    ],
    ids=["port-range", "port-word", "port-bool", "ca-without-tls", "ca-without-verify", "ca-missing"],
)
def test_validate_refuses_bad_options_naming_the_fix(tmp_path: Path, options: str, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, grpc_config(options)))
    rendered = info.value.render()
    assert words in rendered, rendered
    assert problem_lines(rendered, f"services.web.checks[0].{path}".rstrip(".")) or path == "", rendered


def test_a_valid_grpc_check_loads(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, grpc_config('        port: "{port}"\n        service: web\n')))
    assert config.services["web"].checks[0].kind == "grpc"
