"""The `grpc` check against hand-written HTTP/2 servers on loopback, for what a grpcio server never sends:
CONTINUATION and padding, GOAWAY, RST_STREAM, PING, flow-control windows, a concurrency limit, broken frames,
and an HTTP/1 server."""

from __future__ import annotations

import asyncio
import socket
import ssl
import struct
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import hpack
import pytest
from aiohttp import web
from conftest import require_binary

from healerd.checks import CheckEnv
from healerd.checks.grpc import GrpcChannels, GrpcCheck, GrpcConfig
from healerd.results import Status
from healerd.runner import run_check
from healerd.targets import Target

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 6, 7, 8, 9
SERVING = b"\x00\x00\x00\x00\x02\x08\x01"  # an uncompressed HealthCheckResponse{status: SERVING}
OK_HEADERS = [(":status", "200"), ("content-type", "application/grpc")]


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big") + payload


class Peer:
    """One client connection as the server sees it: frames in, frames out, header blocks through HPACK."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder, self.decoder = hpack.Encoder(), hpack.Decoder()
        self.received: list[tuple[int, int, int, bytes]] = []  # every frame the client sent

    async def frame(self) -> tuple[int, int, int, bytes]:
        head = await self.reader.readexactly(9)
        length, kind, flags, stream_id = int.from_bytes(head[:3], "big"), head[3], head[4], head[5:]
        got = (kind, flags, int.from_bytes(stream_id, "big"), await self.reader.readexactly(length))
        self.received.append(got)
        return got

    async def request(self) -> tuple[int, dict[str, str], bytes]:
        """The next call: its stream, its headers, its DATA (once the client ended the stream)."""
        headers: dict[str, str] = {}
        body = b""
        while True:
            kind, flags, stream_id, payload = await self.frame()
            if kind == HEADERS:
                headers = dict(self.decoder.decode(payload))
            elif kind == DATA:
                body += payload
            if kind in (HEADERS, DATA) and flags & 1:
                return stream_id, headers, body

    def send(self, *frames: bytes) -> None:
        self.writer.write(b"".join(frames))

    def headers(self, stream_id: int, fields: list[tuple[str, str]], end: bool = False) -> bytes:
        return frame(HEADERS, 0x4 | end, stream_id, self.encoder.encode(fields))

    def answer(self, stream_id: int, message: bytes = SERVING) -> None:
        self.send(
            self.headers(stream_id, OK_HEADERS),
            frame(DATA, 0, stream_id, message),
            self.headers(stream_id, [("grpc-status", "0")], end=True),
        )


Script = Callable[[Peer], Awaitable[None]]


class RawServer:
    """A server on 127.0.0.1 that reads the client's preface, sends its SETTINGS (`settings`) and hands each
    connection to `script`."""

    def __init__(
        self, script: Script, settings: bytes = b"", tls: ssl.SSLContext | None = None, handshake_after: float = 0
    ) -> None:
        self.script, self.settings, self.tls = script, settings, tls
        self.handshake_after = handshake_after  # seconds before connections are accepted (TLS: handshaken)
        self.peers: list[Peer] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._listening: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RawServer:
        listening = socket.create_server(("127.0.0.1", 0))
        self.port = listening.getsockname()[1]
        self._listening = asyncio.get_running_loop().create_task(self._listen(listening))
        if not self.handshake_after:
            await self._listening
        return self

    async def _listen(self, listening: socket.socket) -> None:
        await asyncio.sleep(self.handshake_after)  # the kernel completes TCP connects meanwhile, nothing more
        self._server = await asyncio.start_server(self._serve, sock=listening, ssl=self.tls)

    async def __aexit__(self, *exc: object) -> None:
        assert self._listening is not None
        await self._listening
        assert self._server is not None
        self._server.close()
        for peer in self.peers:
            peer.writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = Peer(reader, writer)
        self.peers.append(peer)
        try:
            assert await reader.readexactly(len(PREFACE)) == PREFACE
            peer.send(frame(SETTINGS, 0, 0, self.settings))
            await self.script(peer)
            while True:  # every frame until the client closes
                await peer.frame()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def answer_every_call(peer: Peer) -> None:
    while True:
        stream_id, _, _ = await peer.request()
        peer.answer(stream_id)


def check(env: CheckEnv, port: int, **options: object) -> GrpcCheck:
    return GrpcCheck(GrpcConfig(port=port, **options), Target("web", "m1", "127.0.0.1"), env=env)  # type: ignore[arg-type]


# -- what is sent -----------------------------------------------------------------------------------------------
async def test_the_call_is_a_grpc_request_any_server_understands(env: CheckEnv) -> None:
    seen: list[tuple[int, dict[str, str], bytes]] = []

    async def script(peer: Peer) -> None:
        for _ in range(2):
            seen.append(call := await peer.request())
            peer.answer(call[0])

    async with RawServer(script) as server:
        c = check(env, server.port, service="web")
        for _ in range(2):
            result = await run_check(c, timeout=2)
            assert result.status is Status.OK, result.message
    (first, headers, body), (second, _, again) = seen
    assert {k: v for k, v in headers.items() if k != "user-agent"} == {
        ":method": "POST",
        ":scheme": "http",
        ":path": "/grpc.health.v1.Health/Check",
        ":authority": f"127.0.0.1:{server.port}",
        "content-type": "application/grpc",
        "te": "trailers",
    }
    assert headers["user-agent"].startswith("healerd/")
    assert body == again == b"\x00\x00\x00\x00\x05\x0a\x03web"  # HealthCheckRequest{service: "web"}
    assert (first, second) == (1, 3)  # odd, increasing, on one connection
    (peer,) = server.peers
    assert (SETTINGS, 1, 0, b"") in peer.received  # the server's SETTINGS acknowledged


async def test_the_authority_is_the_server_name_when_one_is_set(env: CheckEnv, h2_tls: ssl.SSLContext) -> None:
    seen: list[dict[str, str]] = []

    async def script(peer: Peer) -> None:
        stream_id, headers, _ = await peer.request()
        seen.append(headers)
        peer.answer(stream_id)

    async with RawServer(script, tls=h2_tls) as server:
        c = check(env, server.port, tls=True, tls_verify=False, server_name="grpc.test")
        result = await run_check(c, timeout=2)
    assert result.status is Status.OK, result.message
    assert seen[0][":authority"] == f"grpc.test:{server.port}"
    assert seen[0][":scheme"] == "https"


# -- how the answer may come -----------------------------------------------------------------------------------
async def test_headers_split_over_continuation_frames_and_padded_data_are_read(env: CheckEnv) -> None:
    async def script(peer: Peer) -> None:
        stream_id, _, _ = await peer.request()
        block = peer.encoder.encode([*OK_HEADERS, ("grpc-accept-encoding", "identity")])
        trailers = peer.encoder.encode([("grpc-status", "0"), ("x-note", "padded and continued")])
        peer.send(
            frame(HEADERS, 0x8, stream_id, b"\x03" + block[:3] + b"\0\0\0"),  # padded, no END_HEADERS
            frame(CONTINUATION, 0, stream_id, block[3:5]),
            frame(CONTINUATION, 0x4, stream_id, block[5:]),
            frame(PING, 0, 0, b"12345678"),  # between two DATA frames of one message
            frame(DATA, 0x8, stream_id, b"\x02" + SERVING[:4] + b"\0\0"),
            frame(DATA, 0x8, stream_id, b"\x00" + SERVING[4:]),
            frame(HEADERS, 0x1, stream_id, trailers[:2]),  # trailers: END_STREAM, continued
            frame(CONTINUATION, 0x4, stream_id, trailers[2:]),
        )

    async with RawServer(script) as server:
        result = await run_check(check(env, server.port), timeout=2)
        await asyncio.sleep(0.05)
    assert result.status is Status.OK, result.message
    assert (PING, 1, 0, b"12345678") in server.peers[0].received  # the PING answered


async def test_a_trailers_only_refusal_is_critical_with_the_servers_decoded_message(env: CheckEnv) -> None:
    async def script(peer: Peer) -> None:
        stream_id, _, _ = await peer.request()
        refusal = [*OK_HEADERS, ("grpc-status", "7"), ("grpc-message", "no%20access%20for%20caf%C3%A9")]
        peer.send(peer.headers(stream_id, refusal, end=True))

    async with RawServer(script) as server:
        result = await run_check(check(env, server.port), timeout=2)
    assert result.status is Status.CRITICAL
    assert result.message == "gRPC status PERMISSION_DENIED: no access for café"


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ([(":status", "503"), ("content-type", "text/plain")], "gRPC status UNAVAILABLE: HTTP status 503"),
        ([(":status", "200"), ("content-type", "text/html")], "gRPC status UNKNOWN: Invalid content-type: 'text/html'"),
    ],
    ids=["http-503", "content-type"],
)
async def test_an_answer_that_is_no_grpc_answer_is_critical_naming_what_came(
    env: CheckEnv, fields: list[tuple[str, str]], words: str
) -> None:
    async def script(peer: Peer) -> None:
        stream_id, _, _ = await peer.request()
        peer.send(peer.headers(stream_id, fields, end=True))

    async with RawServer(script) as server:
        result = await run_check(check(env, server.port), timeout=2)
    assert result.status is Status.CRITICAL
    assert result.message == words


# -- the connection: limits, windows, going away ---------------------------------------------------------------
async def test_calls_wait_for_the_servers_limit_of_concurrent_streams(env: CheckEnv) -> None:
    most = 0

    async def script(peer: Peer) -> None:
        nonlocal most
        waiting: list[int] = []  # calls whose request came, not yet answered
        while True:
            try:  # what comes while the server sits on what it has
                kind, _, stream_id, payload = await asyncio.wait_for(peer.frame(), 0.03)
            except TimeoutError:
                if waiting:
                    peer.answer(waiting.pop(0))
                continue
            if kind == HEADERS:
                peer.decoder.decode(payload)
                waiting.append(stream_id)
                most = max(most, len(waiting))

    async with RawServer(script, settings=struct.pack(">HI", 3, 1)) as server:
        first = await run_check(check(env, server.port), timeout=2)  # the connection and its SETTINGS
        checks = [check(env, server.port, service=name) for name in ("a", "b", "c")]
        results = await asyncio.gather(*(run_check(c, timeout=2) for c in checks))
    assert [r.status for r in (first, *results)] == [Status.OK] * 4, [r.message for r in results]
    assert most == 1 and len(server.peers) == 1


async def test_the_request_waits_for_flow_control_window(env: CheckEnv) -> None:
    early: list[int] = []

    async def script(peer: Peer) -> None:
        peer.answer((await peer.request())[0])  # sent before the client knew the server's settings
        while (got := await peer.frame())[0] != HEADERS:
            pass
        stream_id = got[2]
        try:
            while True:  # all that comes before the window opens
                early.append((await asyncio.wait_for(peer.frame(), 0.1))[0])
        except TimeoutError:
            pass
        peer.send(frame(WINDOW_UPDATE, 0, stream_id, (100).to_bytes(4, "big")))
        while (await peer.frame())[0] != DATA:
            pass
        peer.answer(stream_id)

    async with RawServer(script, settings=struct.pack(">HI", 4, 0)) as server:  # INITIAL_WINDOW_SIZE 0
        c = check(env, server.port)
        assert (await run_check(c, timeout=2)).status is Status.OK
        result = await run_check(c, timeout=2)
    assert result.status is Status.OK, result.message
    assert DATA not in early  # no DATA before the server opened the window


async def test_the_receive_window_is_given_back_as_data_is_read(env: CheckEnv) -> None:
    given: list[int] = []

    async def script(peer: Peer) -> None:
        stream_id, _, _ = await peer.request()
        chunk = frame(DATA, 0, stream_id, bytes(16384))
        peer.send(peer.headers(stream_id, OK_HEADERS), *[chunk] * 600)  # 9.8 MB: more than half the window
        await peer.writer.drain()
        while True:
            kind, _, on, payload = await peer.frame()
            if kind == WINDOW_UPDATE and on == 0:
                given.append(int.from_bytes(payload, "big"))

    async with RawServer(script) as server:
        result = await run_check(check(env, server.port), timeout=5)
        for _ in range(100):
            if given:
                break
            await asyncio.sleep(0.02)
    assert result.status is Status.CRITICAL
    assert result.message.endswith("the answer is over 65536 bytes: not a health answer")
    assert sum(given) >= 8 << 20


async def test_goaway_lets_the_calls_it_covers_finish_and_the_next_run_connects_afresh(env: CheckEnv) -> None:
    async def script(peer: Peer) -> None:
        stream_id, _, _ = await peer.request()
        peer.send(frame(GOAWAY, 0, 0, stream_id.to_bytes(4, "big") + bytes(4)))
        peer.answer(stream_id)

    async with RawServer(script) as server:
        c = check(env, server.port)
        assert (await run_check(c, timeout=2)).status is Status.OK
        again = await run_check(c, timeout=2)
    assert again.status is Status.OK, again.message
    assert len(server.peers) == 2


async def test_a_call_beyond_goaways_last_stream_is_made_again_on_a_fresh_connection(env: CheckEnv) -> None:
    async def script(peer: Peer) -> None:
        stream_id, _, _ = await peer.request()
        if len(server.peers) == 1:
            peer.send(frame(GOAWAY, 0, 0, bytes(8) + b"draining"))  # last stream 0: this call never processed
        else:
            peer.answer(stream_id)

    async with RawServer(script) as server:
        result = await run_check(check(env, server.port), timeout=2)
    assert result.status is Status.OK, result.message
    assert len(server.peers) == 2


async def test_a_kept_connection_the_server_drops_under_a_call_is_replaced_at_once(env: CheckEnv) -> None:
    async def script(peer: Peer) -> None:
        peer.answer((await peer.request())[0])
        if len(server.peers) == 1:
            await peer.request()
            peer.writer.transport.abort()  # the connection dies under the second call
        else:
            await answer_every_call(peer)

    async with RawServer(script) as server:
        c = check(env, server.port)
        assert (await run_check(c, timeout=2)).status is Status.OK
        again = await run_check(c, timeout=2)
    assert again.status is Status.OK, again.message
    assert len(server.peers) == 2


async def test_a_run_that_times_out_while_connecting_leaves_the_others_waiting_for_that_connect(
    env: CheckEnv, h2_tls: ssl.SSLContext
) -> None:
    async with RawServer(answer_every_call, tls=h2_tls, handshake_after=1) as server:
        slow, medium = (check(env, server.port, tls=True, tls_verify=False, service=s) for s in ("a", "b"))
        timed_out, answered = await asyncio.gather(run_check(slow, timeout=0.5), run_check(medium, timeout=3))
        assert timed_out.message == "no answer within 500ms"
        assert answered.status is Status.OK, answered.message
        assert (await run_check(slow, timeout=3)).status is Status.OK
    assert len(server.peers) == 1  # one connect, shared


async def wait_closed(peer: Peer) -> bool:
    """Whether the client closed the connection within a second."""
    for _ in range(50):
        if peer.reader.at_eof():
            return True
        await asyncio.sleep(0.02)
    return False


async def test_a_connection_unused_for_the_idle_time_is_closed(env: CheckEnv) -> None:
    env.shared[GrpcChannels] = GrpcChannels(max_channels=10, idle_timeout=0.3)
    async with RawServer(answer_every_call) as server:
        c = check(env, server.port)
        for _ in range(3):  # used more often than the idle time: kept
            assert (await run_check(c, timeout=2)).status is Status.OK
            await asyncio.sleep(0.1)
        assert len(server.peers) == 1 and not server.peers[0].reader.at_eof()
        assert await wait_closed(server.peers[0])
        assert (await run_check(c, timeout=2)).status is Status.OK  # a later run connects afresh
        assert len(server.peers) == 2


async def test_the_least_recently_used_connection_is_closed_beyond_the_limit(env: CheckEnv) -> None:
    env.shared[GrpcChannels] = GrpcChannels(max_channels=2)
    first, second, third = (RawServer(answer_every_call) for _ in range(3))
    async with first, second, third:
        for server in (first, second, first, third):
            assert (await run_check(check(env, server.port), timeout=2)).status is Status.OK
        assert await wait_closed(second.peers[0])  # the least recently used when a third was needed
        assert not first.peers[0].reader.at_eof() and not third.peers[0].reader.at_eof()


async def test_a_reset_call_is_critical_naming_the_code_and_the_connection_is_kept(env: CheckEnv) -> None:
    async def script(peer: Peer) -> None:
        stream_id, _, _ = await peer.request()
        peer.send(frame(RST_STREAM, 0, stream_id, (11).to_bytes(4, "big")))
        await answer_every_call(peer)

    async with RawServer(script) as server:
        c = check(env, server.port)
        reset = await run_check(c, timeout=2)
        after = await run_check(c, timeout=2)
    assert reset.status is Status.CRITICAL
    assert reset.message == f"gRPC 127.0.0.1:{server.port}: the server reset the call (RST_STREAM ENHANCE_YOUR_CALM)"
    assert after.status is Status.OK and len(server.peers) == 1


# -- servers that break the protocol, or speak another ----------------------------------------------------------
async def test_a_broken_frame_closes_the_connection_with_the_reason_and_the_next_run_connects_afresh(
    env: CheckEnv,
) -> None:
    async def script(peer: Peer) -> None:
        stream_id, _, _ = await peer.request()
        if len(server.peers) == 1:
            peer.send(peer.headers(stream_id, OK_HEADERS), frame(DATA, 0x8, stream_id, b"\x09abc"))
        else:
            peer.answer(stream_id)

    async with RawServer(script) as server:
        c = check(env, server.port)
        broken = await run_check(c, timeout=2)
        await asyncio.sleep(0.05)
        after = await run_check(c, timeout=2)
    assert broken.status is Status.CRITICAL
    assert (
        broken.message == f"gRPC 127.0.0.1:{server.port}: invalid HTTP/2 from the server: padding longer than its frame"
    )
    kind, _, _, payload = server.peers[0].received[-1]
    assert kind == GOAWAY and payload[4:8] == (1).to_bytes(4, "big")  # PROTOCOL_ERROR told to the server
    assert after.status is Status.OK, after.message


async def test_an_http1_server_is_critical_saying_it_is_not_http2(env: CheckEnv) -> None:
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        result = await run_check(check(env, port), timeout=2)
    finally:
        await runner.cleanup()
    assert result.status is Status.CRITICAL
    assert result.message.startswith(f"gRPC 127.0.0.1:{port}: the server answered in HTTP/1 ('HTTP/1.")
    assert result.message.endswith(" 400 Bad Request'), not HTTP/2: not a gRPC server")


def server_tls(folder: Path, alpn: str) -> ssl.SSLContext:
    """A server TLS context with a self-signed certificate for grpc.test that offers only `alpn`."""
    openssl = require_binary("openssl")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "2", "-subj", "/CN=grpc.test", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.set_alpn_protocols([alpn])
    return context


@pytest.fixture
def http1_tls(tmp_path: Path) -> ssl.SSLContext:
    return server_tls(tmp_path, "http/1.1")


@pytest.fixture
def h2_tls(tmp_path: Path) -> ssl.SSLContext:
    return server_tls(tmp_path, "h2")


async def test_a_tls_server_that_does_not_choose_http2_is_critical_saying_so(
    env: CheckEnv, http1_tls: ssl.SSLContext
) -> None:
    async with RawServer(answer_every_call, tls=http1_tls) as server:
        result = await run_check(check(env, server.port, tls=True, tls_verify=False), timeout=2)
    assert result.status is Status.CRITICAL
    assert result.message == (
        f"gRPC 127.0.0.1:{server.port}: the TLS server did not choose HTTP/2 in ALPN (it chose nothing)"
    )
