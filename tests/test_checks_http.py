"""The `http` check's own HTTP/1.1 client against real servers on loopback: aiohttp for the well-behaved
answers, raw asyncio servers for what a sick machine sends (garbage, resets, cut bodies, silence)."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

from healerd.checks import CheckEnv
from healerd.checks.http import HttpCheck, HttpConfig
from healerd.results import Status
from healerd.runner import run_check
from healerd.targets import Target

StartApp = Callable[[web.Application], Awaitable[str]]
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
RawServer = Callable[[Handler], Awaitable[str]]


@pytest.fixture
async def raw_server() -> AsyncIterator[RawServer]:
    servers: list[asyncio.Server] = []

    async def start(handler: Handler) -> str:
        server = await asyncio.start_server(handler, "127.0.0.1", 0)
        servers.append(server)
        return f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"

    yield start
    for s in servers:
        s.close()
        await s.wait_closed()


def check(env: CheckEnv, url: str, **options: object) -> HttpCheck:
    return HttpCheck(HttpConfig(url=url, **options), Target("web", "m1", "127.0.0.1:1"), env=env)  # type: ignore[arg-type]


async def answer(raw: bytes) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(raw)
        await writer.drain()
        writer.close()

    return handler


# -- well-behaved servers -----------------------------------------------------------------------------------
async def test_keep_alive_reuses_one_connection_and_sends_what_is_configured(
    env: CheckEnv, aiohttp_server_factory: StartApp
) -> None:
    seen: list[tuple[object, str, str, str, str]] = []

    async def health(request: web.Request) -> web.Response:
        assert request.transport is not None
        body = await request.text()
        seen.append((request.transport.get_extra_info("peername"), request.method, request.path_qs,
                     request.headers.get("X-Token", ""), body))  # fmt: skip
        return web.Response(text="all systems go")

    app = web.Application()
    app.router.add_route("*", "/health", health)
    base = await aiohttp_server_factory(app)
    c = check(env, f"{base}/health?deep=1", method="POST", headers={"X-Token": "t0k"}, body="ping",
              expect={"body_contains": "systems go"})  # fmt: skip
    for _ in range(3):
        result = await run_check(c, timeout=5)
        assert result.status is Status.OK, result.message
    assert [s[1:] for s in seen] == [("POST", "/health?deep=1", "t0k", "ping")] * 3
    assert len({s[0] for s in seen}) == 1  # one connection for the three checks
    assert env.http_pool().connects == 1


async def test_reuse_connections_false_asks_for_close_and_connects_each_time(
    env: CheckEnv, aiohttp_server_factory: StartApp
) -> None:
    headers: list[str] = []

    async def health(request: web.Request) -> web.Response:
        headers.append(request.headers.get("Connection", ""))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/health", health)
    base = await aiohttp_server_factory(app)
    c = check(env, f"{base}/health", reuse_connections=False)
    for _ in range(3):
        assert (await run_check(c, timeout=5)).status is Status.OK
    assert headers == ["close"] * 3
    assert env.http_pool().connects == 3
    assert env.http_pool().idle_connections() == 0


async def test_chunked_and_gzip_bodies_are_read_for_body_expectations(
    env: CheckEnv, aiohttp_server_factory: StartApp
) -> None:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for part in (b"status: ", b"green", b" and more"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def zipped(request: web.Request) -> web.Response:
        return web.Response(body=gzip.compress(b"status: green"), headers={"Content-Encoding": "gzip"})

    app = web.Application()
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/zipped", zipped)
    base = await aiohttp_server_factory(app)
    for path in ("chunked", "zipped"):
        for _ in range(2):  # and the connection stays usable after each
            result = await run_check(check(env, f"{base}/{path}", expect={"body_regex": "status: gre+n"}), timeout=5)
            assert result.status is Status.OK, (path, result.message)
    missing = await run_check(check(env, f"{base}/chunked", expect={"body_contains": "red"}), timeout=5)
    assert missing.status is Status.CRITICAL and "body lacks 'red'" in missing.message


async def test_head_and_204_have_no_body_and_keep_the_connection(
    env: CheckEnv, aiohttp_server_factory: StartApp
) -> None:
    async def empty(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def page(request: web.Request) -> web.Response:
        return web.Response(text="x" * 5000)

    app = web.Application()
    app.router.add_get("/empty", empty)
    app.router.add_route("HEAD", "/page", page)
    base = await aiohttp_server_factory(app)
    assert (await run_check(check(env, f"{base}/empty", expect={"status": [204]}), timeout=5)).status is Status.OK
    assert (await run_check(check(env, f"{base}/page", method="HEAD"), timeout=5)).status is Status.OK
    assert (await run_check(check(env, f"{base}/empty", expect={"status": [204]}), timeout=5)).status is Status.OK
    assert env.http_pool().connects == 1


async def test_a_kept_connection_the_server_closed_is_not_a_failure(env: CheckEnv, raw_server: RawServer) -> None:
    """The server answers with keep-alive, then drops the idle connection (its own keep-alive timeout): the
    next check connects again instead of reporting the machine down."""
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.close()

    base = await raw_server(handler)
    c = check(env, f"{base}/health")
    for _ in range(3):
        result = await run_check(c, timeout=5)
        assert result.status is Status.OK, result.message
        await asyncio.sleep(0.15)
    assert connections == 3


async def test_http_1_0_answer_delimited_by_close(env: CheckEnv, raw_server: RawServer) -> None:
    base = await raw_server(await answer(b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nhello, world"))
    result = await run_check(check(env, f"{base}/", expect={"body_contains": "world"}), timeout=5)
    assert result.status is Status.OK, result.message
    assert env.http_pool().idle_connections() == 0


# -- what a sick machine sends -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "words"),
    [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", "invalid HTTP response: not an HTTP status line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly ten b", "the response body was cut off: 10 of 100"),
        (b"", "connection closed without an answer"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid HTTP response: bad chunk size"),
    ],
    ids=["garbage", "cut-body", "silent-close", "bad-chunk"],
)
async def test_broken_answers_are_critical_and_say_what_was_wrong(
    env: CheckEnv,
    raw_server: RawServer,
    raw: bytes,
    words: str,
) -> None:
    base = await raw_server(await answer(raw))
    result = await run_check(check(env, f"{base}/health"), timeout=5)
    assert result.status is Status.CRITICAL
    assert words in result.message, result.message
    assert result.message.startswith(f"GET {base}/health: ")


async def test_a_reset_is_reported_as_such(env: CheckEnv, raw_server: RawServer) -> None:
    async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()  # RST, not FIN

    base = await raw_server(reset)
    result = await run_check(check(env, f"{base}/health"), timeout=5)
    assert result.status is Status.CRITICAL
    assert "reset" in result.message or "closed without an answer" in result.message, result.message


async def test_a_server_that_never_answers_times_out_and_its_connection_is_dropped(
    env: CheckEnv,
    raw_server: RawServer,
) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    base = await raw_server(silent)
    result = await run_check(check(env, f"{base}/health"), timeout=0.3)
    assert result.status is Status.CRITICAL and "no answer within 300ms" in result.message
    assert env.http_pool().idle_connections() == 0


async def test_refused_connection(env: CheckEnv) -> None:
    result = await run_check(check(env, "http://127.0.0.1:9/health"), timeout=5)
    assert result.status is Status.CRITICAL and "connection refused" in result.message


async def test_max_body_bounds_what_is_kept(env: CheckEnv, aiohttp_server_factory: StartApp) -> None:
    async def big(request: web.Request) -> web.Response:
        return web.Response(text="a" * 100_000 + "needle")

    app = web.Application()
    app.router.add_get("/big", big)
    base = await aiohttp_server_factory(app)
    cut = await run_check(check(env, f"{base}/big", max_body=1000, expect={"body_contains": "needle"}), timeout=5)
    assert cut.status is Status.CRITICAL and "body lacks 'needle'" in cut.message
    whole = await run_check(check(env, f"{base}/big", max_body=200_000, expect={"body_contains": "needle"}), timeout=5)
    assert whole.status is Status.OK, whole.message


async def test_a_name_that_does_not_resolve_is_named(env: CheckEnv) -> None:
    result = await run_check(check(env, "http://no-such-host.invalid:8080/health"), timeout=10)
    assert result.status is Status.CRITICAL
    assert "DNS lookup of no-such-host.invalid failed" in result.message, result.message
