"""The `tls` check against real TLS servers on loopback: Debian's nginx serving certificates that `openssl ca` signs
in the test (valid 60, 15, 5 days; expired; for another name; self-signed), a plain HTTP port, a frozen
`openssl s_server`, and a port where nothing listens."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import free_port, require_binary, stop_process
from test_config_table import BASE, swap

from healerd.checks import CheckEnv
from healerd.checks.tls import TlsCheck, TlsConfig
from healerd.config import ConfigError, load_config
from healerd.results import CheckResult, Status
from healerd.runner import run_check
from healerd.targets import Target, render_model

NAME = "web.example"

CA_CONFIG = """\
[ca]
default_ca = test
[test]
dir = {dir}
database = $dir/index.txt
new_certs_dir = $dir
serial = $dir/serial
default_md = sha256
policy = any
copy_extensions = copy
unique_subject = no
[any]
commonName = supplied
"""


@dataclass
class Pki:
    folder: Path
    openssl: str

    @property
    def ca_file(self) -> Path:
        return self.folder / "ca.crt"

    def run(self, *args: str) -> None:
        subprocess.run([self.openssl, *args], check=True, capture_output=True, cwd=self.folder)

    def leaf(self, name: str, start: datetime, end: datetime, names: str = f"DNS:{NAME}") -> tuple[Path, Path]:
        """A certificate signed by the test CA, valid from `start` to `end`."""
        key, csr, cert = (self.folder / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        self.run("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout",
                 str(key), "-out", str(csr), "-subj", f"/CN={names.split(',')[0].split(':')[1]}",
                 "-addext", f"subjectAltName={names}")  # fmt: skip
        self.run("ca", "-config", "ca.cnf", "-batch", "-notext", "-cert", "ca.crt", "-keyfile", "ca.key",
                 "-startdate", _asn1(start), "-enddate", _asn1(end), "-in", str(csr), "-out", str(cert))  # fmt: skip
        return cert, key

    def self_signed(self, name: str) -> tuple[Path, Path]:
        key, cert = self.folder / f"{name}.key", self.folder / f"{name}.crt"
        self.run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "60",
                 "-subj", f"/CN={NAME}", "-addext", f"subjectAltName=DNS:{NAME}", "-keyout", str(key),
                 "-out", str(cert))  # fmt: skip
        return cert, key


def new_pki(folder: Path, openssl: str) -> Pki:
    """A test CA in `folder`, valid 400 days, ready to sign."""
    pki = Pki(folder, openssl)
    (folder / "ca.cnf").write_text(CA_CONFIG.format(dir=folder))
    (folder / "index.txt").write_text("")
    (folder / "serial").write_text("01\n")
    pki.run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "400",
            "-subj", "/CN=healerd test CA", "-keyout", "ca.key", "-out", "ca.crt")  # fmt: skip
    return pki


def _asn1(when: datetime) -> str:
    return when.strftime("%Y%m%d%H%M%SZ")


def _day(when: datetime) -> str:
    return when.strftime("%Y-%m-%d")


@dataclass
class Servers:
    pki: Pki
    ports: dict[str, int]
    ends: dict[str, datetime]


def _wait_listening(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited {process.returncode}: {process.stderr.read() if process.stderr else ''}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} is not listening on {port}")


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Servers]:
    """One nginx, one TLS server block per certificate on its own port, and a plain HTTP one."""
    openssl = require_binary("openssl")
    nginx = require_binary("/usr/sbin/nginx")
    folder = tmp_path_factory.mktemp("pki")
    pki = new_pki(folder, openssl)
    now = datetime.now(UTC)
    # an hour past the whole days, so the days counted are stable for the length of the test
    ends = {name: now + timedelta(days=days, hours=1) for name, days in (("d60", 60), ("d15", 15), ("d5", 5))}
    ends["expired"] = now - timedelta(days=3, hours=1)
    certs = {name: pki.leaf(name, now - timedelta(days=30), end) for name, end in ends.items()}
    certs["self_signed"] = pki.self_signed("self_signed")
    ends["wildcard"] = now + timedelta(days=60, hours=1)
    certs["wildcard"] = pki.leaf("wildcard", now - timedelta(days=1), ends["wildcard"], names="DNS:*.web.example")
    ends["future"] = now + timedelta(days=60)
    certs["future"] = pki.leaf("future", now + timedelta(days=2), ends["future"])
    ports = {name: free_port() for name in (*certs, "plain", "tls11")}
    blocks = [
        f"server {{ listen 127.0.0.1:{ports[name]} ssl; ssl_certificate {cert}; ssl_certificate_key {key}; "
        f"return 200 ok; }}"
        for name, (cert, key) in certs.items()
    ]
    blocks.append(f"server {{ listen 127.0.0.1:{ports['plain']}; return 200 ok; }}")
    cert, key = certs["d60"]
    blocks.append(  # a server stuck on TLS 1.1, which healerd (as OpenSSL 3) refuses to speak
        f"server {{ listen 127.0.0.1:{ports['tls11']} ssl; ssl_certificate {cert}; ssl_certificate_key {key}; "
        "ssl_protocols TLSv1.1; return 200 ok; }"
    )
    temp = " ".join(
        f"{kind}_temp_path {folder}/{kind};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    tls_versions = "ssl_protocols TLSv1.2 TLSv1.3;"  # nginx 1.22 offers TLS 1.0 and 1.1 but not 1.3 by default
    (folder / "nginx.conf").write_text(
        f"daemon off; master_process off; pid {folder}/nginx.pid; error_log {folder}/error.log;\n"
        f"events {{ worker_connections 64; }}\nhttp {{ access_log off; {tls_versions} {temp}\n"
        + "\n".join(blocks)
        + "\n}\n"
    )
    process = subprocess.Popen(
        [nginx, "-p", str(folder), "-c", str(folder / "nginx.conf"), "-e", str(folder / "error.log")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for port in ports.values():
            _wait_listening(port, process, "nginx")
        yield Servers(pki, ports, ends)
    finally:
        stop_process(process)


def tls(env: CheckEnv, port: int | str, address: str = "127.0.0.1:8080", **options: object) -> TlsCheck:
    """The check as the daemon builds it for a machine at `address`: its templates filled in."""
    target = Target("web", "web-1", address)
    return TlsCheck(render_model(TlsConfig.model_validate({"port": port, **options}), target.fields()), target, env=env)


async def check(env: CheckEnv, servers: Servers, name: str, **options: object) -> CheckResult:
    options = {"server_name": NAME, "ca_file": str(servers.pki.ca_file), **options}
    return await run_check(tls(env, servers.ports[name], **options), timeout=5)


# -- validity left ----------------------------------------------------------------------------------------
async def test_a_certificate_valid_60_days_is_ok_naming_days_date_and_cipher(env: CheckEnv, servers: Servers) -> None:
    result = await check(env, servers, "d60")
    assert result.status is Status.OK, result.message
    assert result.message.startswith(
        f"certificate for {NAME} valid 60 days (until {_day(servers.ends['d60'])}), TLSv1.3 TLS_"
    )
    days_left, took = result.metrics
    assert (days_left.label, days_left.warn, days_left.crit) == ("days_left", "21:", "7:")
    assert days_left.value is not None and 60 < days_left.value < 60.1
    assert took.label == "time" and took.uom == "s" and took.value is not None and 0 < took.value < 5


async def test_15_days_left_is_warning(env: CheckEnv, servers: Servers) -> None:
    result = await check(env, servers, "d15")
    assert result.status is Status.WARNING, result.message
    assert result.message.startswith(
        f"certificate for {NAME} valid 15 days (until {_day(servers.ends['d15'])}), less than warning 21d; TLSv1.3"
    )


async def test_5_days_left_is_critical(env: CheckEnv, servers: Servers) -> None:
    result = await check(env, servers, "d5")
    assert result.status is Status.CRITICAL, result.message
    assert result.message.startswith(
        f"certificate for {NAME} valid 5 days (until {_day(servers.ends['d5'])}), less than critical 7d; TLSv1.3"
    )


async def test_thresholds_are_the_configured_ones(env: CheckEnv, servers: Servers) -> None:
    result = await check(env, servers, "d15", warning="10d", critical="3d")
    assert result.status is Status.OK, result.message
    assert (result.metrics[0].warn, result.metrics[0].crit) == ("10:", "3:")


@pytest.mark.parametrize("verify", [True, False])
async def test_an_expired_certificate_is_critical_saying_how_long_ago(
    env: CheckEnv, servers: Servers, verify: bool
) -> None:
    options: dict[str, object] = {"verify": verify} if verify else {"verify": False, "ca_file": None}
    result = await check(env, servers, "expired", **options)
    assert result.status is Status.CRITICAL
    assert result.message == f"certificate for {NAME} expired 3 days ago ({_day(servers.ends['expired'])})"
    assert result.metrics[0].value is not None and -3.1 < result.metrics[0].value < -3


@pytest.mark.parametrize("verify", [True, False])
async def test_a_certificate_not_valid_yet_is_critical(env: CheckEnv, servers: Servers, verify: bool) -> None:
    options: dict[str, object] = {} if verify else {"verify": False, "ca_file": None}
    result = await check(env, servers, "future", **options)
    assert result.status is Status.CRITICAL
    assert result.message.startswith(f"certificate for {NAME} is not valid yet: its validity starts ")


# -- verification -----------------------------------------------------------------------------------------
async def test_a_certificate_for_another_name_is_critical_naming_what_it_covers(
    env: CheckEnv, servers: Servers
) -> None:
    result = await check(env, servers, "d60", server_name="api.example")
    assert result.status is Status.CRITICAL
    assert result.message == f"certificate for api.example rejected: host name mismatch: the certificate is for {NAME}"


@pytest.mark.parametrize(
    ("name", "status"), [("a.web.example", Status.OK), (NAME, Status.CRITICAL), ("a.b.web.example", Status.CRITICAL)]
)
async def test_a_wildcard_covers_one_label(env: CheckEnv, servers: Servers, name: str, status: Status) -> None:
    result = await check(env, servers, "wildcard", server_name=name)
    assert result.status is status, result.message
    if status is Status.CRITICAL:
        assert result.message.endswith("host name mismatch: the certificate is for *.web.example")


async def test_a_handshake_the_server_refuses_is_critical_with_its_alert(env: CheckEnv, servers: Servers) -> None:
    result = await check(env, servers, "tls11")
    assert result.status is Status.CRITICAL
    where = f"TLS 127.0.0.1:{servers.ports['tls11']}"
    assert result.message == f"{where}: TLS handshake failed: tlsv1 alert protocol version"


async def test_without_verify_only_the_expiry_is_judged(env: CheckEnv, servers: Servers) -> None:
    result = await check(env, servers, "d60", server_name="api.example", verify=False, ca_file=None)
    assert result.status is Status.OK, result.message
    assert result.message.startswith("certificate for api.example valid 60 days")


async def test_a_self_signed_certificate_is_critical(env: CheckEnv, servers: Servers) -> None:
    result = await check(env, servers, "self_signed")
    assert result.status is Status.CRITICAL
    assert result.message == f"certificate for {NAME} rejected: self-signed certificate"


async def test_an_issuer_outside_the_trust_store_is_critical_naming_it(env: CheckEnv, servers: Servers) -> None:
    result = await check(env, servers, "d60", ca_file=None)  # the system's CAs do not know the test CA
    assert result.status is Status.CRITICAL
    assert result.message == (
        f"certificate for {NAME} rejected: unable to get local issuer certificate (issued by 'healerd test CA')"
    )


async def test_a_ca_file_rotated_in_place_is_used_by_the_next_run(
    env: CheckEnv, servers: Servers, tmp_path: Path
) -> None:
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes((servers.pki.folder / "self_signed.crt").read_bytes())  # another CA than the server's
    check = tls(env, servers.ports["d60"], server_name=NAME, ca_file=str(ca_file))
    before = await run_check(check, timeout=2)
    assert before.status is Status.CRITICAL and "unable to get local issuer certificate" in before.message
    ca_file.write_bytes(servers.pki.ca_file.read_bytes() + b"\n")  # the operator installs the right CA
    after = await run_check(check, timeout=2)
    assert after.status is Status.OK, after.message
    ca_file.unlink()  # and then removes it by mistake
    gone = await run_check(check, timeout=2)
    assert gone.status is Status.UNKNOWN
    assert gone.message == f"ca_file {ca_file} does not exist; give the path of a PEM file of CA certificates"


def test_a_server_name_made_of_a_machine_id_that_is_no_host_name_is_refused_for_that_machine(
    env: CheckEnv,
) -> None:
    target = Target("web", "m" * 40, "127.0.0.1:443")
    config = TlsConfig.model_validate({"server_name": "{id}{id}.example", "verify": False})
    with pytest.raises(ValueError, match=r"server_name 'm{80}\.example' is not a host name"):
        TlsCheck(render_model(config, target.fields()), target, env=env)


# -- servers that are not there, not TLS, or frozen -------------------------------------------------------
async def test_a_plain_http_port_is_critical_showing_what_it_answered(env: CheckEnv, servers: Servers) -> None:
    result = await check(env, servers, "plain")
    assert result.status is Status.CRITICAL
    assert result.message.startswith(
        f"TLS 127.0.0.1:{servers.ports['plain']}: the server does not speak TLS on this port (it sent b'HTTP/1.1 400"
    )


async def test_nothing_listening_is_critical_connection_refused(env: CheckEnv) -> None:
    port = free_port()
    result = await run_check(tls(env, port), timeout=5)
    assert (result.status, result.message) == (Status.CRITICAL, f"TLS 127.0.0.1:{port}: connection refused")


@pytest.mark.parametrize(
    ("linger", "reason"),
    [(False, "the server closed the connection during the TLS handshake"), (True, "connection reset by peer")],
)
async def test_a_server_that_hangs_up_is_critical_saying_how(env: CheckEnv, linger: bool, reason: str) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1)  # the ClientHello has come
        if linger:  # close with a reset, as a crashing process or a firewall does
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await run_check(tls(env, port), timeout=5)
    finally:
        server.close()
        await server.wait_closed()
    assert (result.status, result.message) == (Status.CRITICAL, f"TLS 127.0.0.1:{port}: {reason}")


@pytest.fixture
def s_server(servers: Servers) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A TLS server of its own (`openssl s_server`), to freeze."""
    folder = servers.pki.folder
    port = free_port()
    server = subprocess.Popen(
        [servers.pki.openssl, "s_server", "-quiet", "-accept", f"127.0.0.1:{port}", "-cert", str(folder / "d60.crt"),
         "-key", str(folder / "d60.key")],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        _wait_listening(port, server, "openssl s_server")
        yield server, port
    finally:
        stop_process(server)


async def test_a_frozen_server_is_critical_at_the_timeout(
    env: CheckEnv, servers: Servers, s_server: tuple[subprocess.Popen[bytes], int]
) -> None:
    server, port = s_server
    options = {"server_name": NAME, "ca_file": str(servers.pki.ca_file)}
    assert (await run_check(tls(env, port, **options), timeout=5)).status is Status.OK
    os.kill(server.pid, signal.SIGSTOP)
    started = time.monotonic()
    result = await run_check(tls(env, port, **options), timeout=0.5)
    assert (result.status, result.message) == (Status.CRITICAL, "no answer within 500ms")
    assert time.monotonic() - started < 1.5


# -- refused at validation --------------------------------------------------------------------------------
def _config(tmp_path: Path, options: str) -> str:
    text = swap('kind: http\n        url: "http://{address}/health"', f"kind: tls\n        {options}", BASE)
    (tmp_path / "healerd.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "healerd.yaml")
    return info.value.render()


@pytest.mark.parametrize(
    ("options", "hint"),
    [
        ("warning: 3 weeks", "checks[0].warning: expected a duration like 500ms, 5s, 2m or 1h, got '3 weeks'"),
        (
            "warning: 5d",
            "checks[0]: warning (5d) is shorter than critical (7d): warning must be at least critical",
        ),
        ("port: 70000", "checks[0].port: expected a port between 1 and 65535, like 443"),
        ("verify: false\n        ca_file: ca.pem", "set verify: true, or remove ca_file"),
    ],
)
def test_bad_options_are_refused_naming_the_fix(tmp_path: Path, options: str, hint: str) -> None:
    assert hint in _config(tmp_path, options)


def test_a_missing_ca_file_is_refused_naming_the_path(tmp_path: Path) -> None:
    problems = _config(tmp_path, "ca_file: private/ca.pem")
    assert f"services.web.checks[0].ca_file: ca_file {tmp_path}/private/ca.pem does not exist" in problems


async def test_port_and_name_templates_are_filled_in_per_machine(env: CheckEnv, servers: Servers) -> None:
    port = servers.ports["d60"]
    result = await run_check(tls(env, "{port}", address=f"127.0.0.1:{port}", ca_file=str(servers.pki.ca_file)), 5)
    # the name verified is the machine's host: an address the certificate does not cover
    assert (
        result.message == "certificate for 127.0.0.1 rejected: host name mismatch: the certificate is for web.example"
    )


def test_it_runs_on_uvloop_the_daemons_fast_event_loop(servers: Servers) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def run() -> CheckResult:
        return await run_check(
            tls(CheckEnv(), servers.ports["d60"], server_name=NAME, ca_file=str(servers.pki.ca_file)), 5
        )

    result = uvloop.run(run())
    assert (result.status, result.message[:41]) == (Status.OK, f"certificate for {NAME} valid 60 days")
