"""The `tls` check's `starttls` option: a real PostgreSQL (Debian's) with `ssl = on` and certificates `openssl ca`
signs in the test, and one with TLS off; scripted SMTP and IMAP servers on loopback that speak the RFC dialogue and
then a real TLS handshake (Python's ssl, server side), or answer it wrongly."""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from conftest import require_binary
from pg import PG_USER, PgServer, pg_binary, pg_server
from test_checks_tls_kind import Pki, new_pki
from test_config_table import BASE, swap

from healerd.checks import CheckEnv
from healerd.checks.tls import TlsCheck, TlsConfig
from healerd.config import ConfigError, load_config
from healerd.results import CheckResult, Status
from healerd.runner import run_check
from healerd.targets import Target, render_model

MAIL, DB = "mail.example", "db.example"


@dataclass
class Certs:
    pki: Pki
    files: dict[str, tuple[Path, Path]]  # name: (certificate, key)


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    pki = new_pki(tmp_path_factory.mktemp("pki"), require_binary("openssl"))
    now = datetime.now(UTC)
    start = now - timedelta(days=30)
    hour = timedelta(hours=1)  # past the whole days, so the days counted hold for the length of the tests
    return Certs(
        pki,
        {
            "mail": pki.leaf("mail", start, now + timedelta(days=60) + hour, names=f"DNS:{MAIL}"),
            "db60": pki.leaf("db60", start, now + timedelta(days=60) + hour, names=f"DNS:{DB}"),
            "db5": pki.leaf("db5", start, now + timedelta(days=5) + hour, names=f"DNS:{DB}"),
        },
    )


def tls(env: CheckEnv, port: int, **options: object) -> TlsCheck:
    target = Target("mail", "mail-1", f"127.0.0.1:{port}")
    return TlsCheck(render_model(TlsConfig.model_validate({"port": port, **options}), target.fields()), target, env=env)


async def check(env: CheckEnv, certs: Certs, port: int, timeout: float = 5, **options: object) -> CheckResult:
    options = {"ca_file": str(certs.pki.ca_file), **options}
    return await run_check(tls(env, port, **options), timeout=timeout)


# -- scripted SMTP and IMAP servers -----------------------------------------------------------------------
TLS = b"<the TLS handshake>"  # a step of a script: the server upgrades the connection
READ = b"<read a line>"  # ... reads the client's next line (kept in `heard`)


@dataclass
class Scripted:
    port: int
    heard: list[bytes] = field(default_factory=list)


@pytest.fixture
async def scripted(certs: Certs) -> AsyncIterator[object]:
    """`await scripted(*steps)`: a server on loopback that, on each connection, sends the steps that are bytes,
    reads a line at READ and upgrades to TLS (the `mail` certificate) at TLS, then waits for the client to go."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certs.files["mail"])
    servers: list[asyncio.Server] = []

    async def start(*steps: bytes) -> Scripted:
        async def play(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                for step in steps:
                    if step is READ:
                        made.heard.append(await reader.readline())
                    elif step is TLS:
                        await writer.start_tls(context)
                    else:
                        writer.write(step)
                        await writer.drain()
                await reader.read()
            except OSError:  # the check hangs up as soon as it has its answer (ssl.SSLError is one)
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(play, "127.0.0.1", 0)
        servers.append(server)
        made = Scripted(server.sockets[0].getsockname()[1])
        return made

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


GREETING = b"220-mail.example ESMTP\r\n220 ready for you\r\n"
EHLO_ANSWER = b"250-mail.example Hello\r\n250-SIZE 10240000\r\n250-STARTTLS\r\n250 8BITMIME\r\n"


async def test_smtp_starttls_then_the_certificate_is_judged(env: CheckEnv, certs: Certs, scripted: object) -> None:
    server: Scripted = await scripted(GREETING, READ, EHLO_ANSWER, READ, b"220 2.0.0 Ready to start TLS\r\n", TLS)  # type: ignore[operator]
    result = await check(env, certs, server.port, starttls="smtp", server_name=MAIL)
    assert result.status is Status.OK, result.message
    assert result.message.startswith(f"certificate for {MAIL} valid 60 days (until ")
    assert result.message.endswith(" (STARTTLS smtp)") and ", TLSv1.3 TLS_" in result.message
    assert server.heard == [b"EHLO [127.0.0.1]\r\n", b"STARTTLS\r\n"]


async def test_smtp_a_certificate_for_another_name_is_named_after_the_upgrade(
    env: CheckEnv, certs: Certs, scripted: object
) -> None:
    server: Scripted = await scripted(GREETING, READ, EHLO_ANSWER, READ, b"220 go ahead\r\n", TLS)  # type: ignore[operator]
    result = await check(env, certs, server.port, starttls="smtp", server_name="smtp.example")
    assert (result.status, result.message) == (
        Status.CRITICAL,
        f"certificate for smtp.example rejected: host name mismatch: the certificate is for {MAIL}",
    )


@pytest.mark.parametrize(
    ("steps", "reason"),
    [
        (
            (GREETING, READ, EHLO_ANSWER, READ, b"454 4.7.0 TLS not available\r\n"),
            "SMTP server refused STARTTLS: '454 4.7.0 TLS not available'",
        ),
        (
            (GREETING, READ, b"250-mail.example Hello\r\n250 8BITMIME\r\n"),
            r"the server does not offer STARTTLS (EHLO answered: '250-mail.example Hello\r\n250 8BITMIME')",
        ),
        (
            (b"\x16\x03\x01garbage from another protocol\r\n",),
            r"SMTP server greeted with '\x16\x03\x01garbage from another protocol' instead of 220",
        ),
        (
            (b"554 5.3.2 too busy, try later\r\n",),
            "SMTP server greeted with '554 5.3.2 too busy, try later' instead of 220",
        ),
        (
            (GREETING, READ, EHLO_ANSWER, READ, b"220 go ahead\r\nFAKE TLS"),
            "the server sent data out of turn, before our next step: 'FAKE TLS'",
        ),
        ((b"x" * 20000,), "the server sent more than 8192 bytes before TLS without finishing: '" + "x" * 80 + "…'"),
    ],
    ids=["454-to-starttls", "ehlo-without-starttls", "garbage", "554-greeting", "data-out-of-turn", "endless-line"],
)
async def test_smtp_a_wrong_answer_is_critical_quoting_it(
    env: CheckEnv, certs: Certs, scripted: object, steps: tuple[bytes, ...], reason: str
) -> None:
    server: Scripted = await scripted(*steps)  # type: ignore[operator]
    result = await check(env, certs, server.port, starttls="smtp", server_name=MAIL)
    assert (result.status, result.message) == (Status.CRITICAL, f"TLS 127.0.0.1:{server.port}: {reason}")


async def test_smtp_a_server_that_never_greets_is_critical_at_the_timeout(
    env: CheckEnv, certs: Certs, scripted: object
) -> None:
    server: Scripted = await scripted()  # type: ignore[operator]
    started = time.monotonic()
    result = await check(env, certs, server.port, timeout=0.5, starttls="smtp", server_name=MAIL)
    assert (result.status, result.message) == (Status.CRITICAL, "no answer within 500ms")
    assert time.monotonic() - started < 1.5


async def test_a_server_that_hangs_up_before_the_upgrade_is_critical_saying_what_it_sent(
    env: CheckEnv, certs: Certs
) -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 half a gree")
        writer.close()

    server = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        result = await check(env, certs, port, starttls="smtp", server_name=MAIL)
    finally:
        server.close()
        await server.wait_closed()
    assert (result.status, result.message) == (
        Status.CRITICAL,
        f"TLS 127.0.0.1:{port}: the server closed the connection before the SMTP upgrade to TLS "
        "(after sending '220 half a gree')",
    )


IMAP_GREETING = b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] ready\r\n"


async def test_imap_starttls_then_the_certificate_is_judged(env: CheckEnv, certs: Certs, scripted: object) -> None:
    server: Scripted = await scripted(  # type: ignore[operator]
        IMAP_GREETING, READ, b"* CAPABILITY IMAP4rev1 STARTTLS\r\na1 OK Begin TLS negotiation now\r\n", TLS
    )
    result = await check(env, certs, server.port, starttls="imap", server_name=MAIL, warning="70d", critical="7d")
    assert result.status is Status.WARNING, result.message
    assert result.message.startswith(f"certificate for {MAIL} valid 60 days (until ")
    assert ", less than warning 70d; TLSv1.3 " in result.message and result.message.endswith(" (STARTTLS imap)")
    assert server.heard == [b"a1 STARTTLS\r\n"]


@pytest.mark.parametrize(
    ("steps", "reason"),
    [
        (
            (IMAP_GREETING, READ, b"a1 BAD STARTTLS not supported\r\n"),
            "IMAP server refused STARTTLS: 'a1 BAD STARTTLS not supported'",
        ),
        (
            (b"* BYE too many connections\r\n",),
            "IMAP server greeted with '* BYE too many connections' instead of '* OK'",
        ),
        (
            (b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n",),
            "IMAP server greeted with 'SSH-2.0-OpenSSH_9.2p1 Debian-2' instead of '* OK'",
        ),
    ],
    ids=["bad-to-starttls", "bye", "ssh"],
)
async def test_imap_a_wrong_answer_is_critical_quoting_it(
    env: CheckEnv, certs: Certs, scripted: object, steps: tuple[bytes, ...], reason: str
) -> None:
    server: Scripted = await scripted(*steps)  # type: ignore[operator]
    result = await check(env, certs, server.port, starttls="imap", server_name=MAIL)
    assert (result.status, result.message) == (Status.CRITICAL, f"TLS 127.0.0.1:{server.port}: {reason}")


def test_it_runs_on_uvloop_the_daemons_fast_event_loop(certs: Certs) -> None:
    uvloop = pytest.importorskip("uvloop")

    async def run() -> CheckResult:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*certs.files["mail"])

        async def smtp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(GREETING)
            await reader.readline()
            writer.write(EHLO_ANSWER)
            await reader.readline()
            writer.write(b"220 go ahead\r\n")
            try:
                await writer.start_tls(context)
                await reader.read()
            except OSError:
                pass
            writer.close()

        server = await asyncio.start_server(smtp, "127.0.0.1", 0)
        try:
            return await check(CheckEnv(), certs, server.sockets[0].getsockname()[1], starttls="smtp", server_name=MAIL)
        finally:
            server.close()

    result = uvloop.run(run())
    assert (result.status, result.message[:42]) == (Status.OK, f"certificate for {MAIL} valid 60 days")


# -- a real PostgreSQL -----------------------------------------------------------------------------------
def _serve_tls(server: PgServer, cert: Path, key: Path) -> None:
    """Turns TLS on (a reload is enough) with this certificate, and waits until the server speaks it."""
    for source in (cert, key):
        target = server.folder / source.name
        shutil.copy(source, target)
        target.chmod(0o600)  # PostgreSQL refuses a key others can read
        if os.geteuid() == 0:
            entry = pwd.getpwnam(PG_USER)
            os.chown(target, entry.pw_uid, entry.pw_gid)
    with open(server.folder / "data" / "postgresql.conf", "a") as conf:
        conf.write(
            f"ssl = on\nssl_cert_file = '{server.folder / cert.name}'\nssl_key_file = '{server.folder / key.name}'\n"
        )
    with psycopg.connect(server.admin_dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 20
    while True:
        try:
            psycopg.connect(f"{server.admin_dsn}?sslmode=require", connect_timeout=2).close()
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="module")
def pg_tls(certs: Certs) -> Iterator[dict[str, PgServer]]:
    """Two throw-away servers with `ssl = on`: one showing a certificate valid 60 days, one 5 days."""
    for name in ("initdb", "pg_ctl"):
        if pg_binary(name) is None:
            require_binary(name)
    with pg_server() as d60, pg_server() as d5:
        _serve_tls(d60, *certs.files["db60"])
        _serve_tls(d5, *certs.files["db5"])
        yield {"db60": d60, "db5": d5}


async def test_postgres_a_certificate_valid_60_days_is_ok(
    env: CheckEnv, certs: Certs, pg_tls: dict[str, PgServer]
) -> None:
    result = await check(env, certs, pg_tls["db60"].port, starttls="postgres", server_name=DB)
    assert result.status is Status.OK, result.message
    assert result.message.startswith(f"certificate for {DB} valid 60 days (until ")
    assert result.message.endswith(" (STARTTLS postgres)")
    days_left = result.metrics[0]
    assert days_left.label == "days_left" and days_left.value is not None and 60 < days_left.value < 60.1


async def test_postgres_a_certificate_valid_5_days_is_critical(
    env: CheckEnv, certs: Certs, pg_tls: dict[str, PgServer]
) -> None:
    result = await check(env, certs, pg_tls["db5"].port, starttls="postgres", server_name=DB)
    assert result.status is Status.CRITICAL
    assert result.message.startswith(f"certificate for {DB} valid 5 days (until ")
    assert ", less than critical 7d; TLSv1.3 " in result.message


async def test_postgres_without_tls_is_critical_saying_how_to_turn_it_on(
    env: CheckEnv, certs: Certs, pg: PgServer
) -> None:
    result = await check(env, certs, pg.port, starttls="postgres", server_name=DB)
    assert (result.status, result.message) == (
        Status.CRITICAL,
        f"TLS 127.0.0.1:{pg.port}: the server does not offer TLS (PostgreSQL answered N to the SSLRequest): "
        "set `ssl = on` in postgresql.conf, with ssl_cert_file and ssl_key_file",
    )


async def test_postgres_a_server_of_another_protocol_is_critical_quoting_it(
    env: CheckEnv, certs: Certs, scripted: object
) -> None:
    server: Scripted = await scripted(b"HTTP/1.1 400 Bad Request\r\n\r\n")  # type: ignore[operator]
    result = await check(env, certs, server.port, starttls="postgres", server_name=DB)
    assert (result.status, result.message) == (
        Status.CRITICAL,
        f"TLS 127.0.0.1:{server.port}: the server's answer to the PostgreSQL SSLRequest is not S or N: "
        "'HTTP/1.1 400 Bad Request'",
    )


# -- refused at validation --------------------------------------------------------------------------------
def test_an_unknown_protocol_is_refused_naming_the_three(tmp_path: Path) -> None:
    text = swap('kind: http\n        url: "http://{address}/health"', "kind: tls\n        starttls: pop3", BASE)
    (tmp_path / "healerd.yaml").write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "healerd.yaml")
    assert "checks[0].starttls: must be one of 'smtp', 'imap' or 'postgres', got 'pop3'" in info.value.render()
