"""A lean HTTP/1.1 client for health checks: one request, one response, over a pooled connection.

A health check asks the same thing of the same URL every few seconds, so the request is built once (bytes),
written in one call, and the response is parsed only as far as a check needs: the status, the headers that
frame the body, and the body up to `max_body`. A general client (aiohttp) spends most of a check's CPU on
what a check never uses: request objects, header multidicts, cookie jars, tracing, happy-eyeballs
connection racing; and at fleet scale its queue of connection waiters costs O(waiters) per release.

Connections are kept alive per (scheme, host, port) and bounded (`max_idle_hosts`); once the pool is full, a
connection to one host more is closed after its answer rather than evicting another host's: checks come
round in a fixed cycle, so the least recently used connection is the one needed next. A kept connection that
the server closed meanwhile is noticed (its protocol sees the close) or, in a race, retried once on a fresh
connection. Redirects are not followed and no proxy is used: a check looks at the machine itself.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import zlib
from dataclasses import dataclass
from typing import cast

from yarl import URL

from .._neterrors import BodyCut, Disconnected, InvalidResponse, LookupFailed

HEAD_LIMIT = 64 * 1024  # status line and headers
DRAIN_LIMIT = 1 << 20  # body bytes read past max_body to keep a connection; beyond, it is closed instead
IDLE_TIMEOUT = 30.0  # an idle kept connection older than this is closed (below common server timeouts: 60 s+)
DNS_TTL = 60.0
RETRYABLE = frozenset({"GET", "HEAD", "OPTIONS", "PUT"})


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; a repeated header keeps its last value
    body: bytes


Key = tuple[str, str, int]  # scheme, host, port


class _Connection(asyncio.Protocol):
    __slots__ = ("_waiter", "buf", "closed", "eof", "error", "idle_since", "key", "pool", "transport")

    def __init__(self, key: Key, pool: Pool) -> None:
        self.key = key
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.eof = False
        self.closed = False
        self.error: BaseException | None = None
        self.idle_since = 0.0
        self._waiter: asyncio.Future[None] | None = None

    # -- protocol callbacks -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        self.buf += data
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.eof = True
        self.error = exc
        self.pool.forget(self)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _more(self) -> bool:
        """Wait for more bytes; False when the peer closed."""
        if self.eof:
            return False
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None
        return not (self.eof and not self.buf)

    # -- one exchange -----------------------------------------------------------------------------------
    async def exchange(self, request: bytes, head: bool, keep: int) -> tuple[Response, bool]:
        """Send `request`, read the answer keeping at most `keep` body bytes; also whether the connection can
        serve another request."""
        assert self.transport is not None
        self.transport.write(request)
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end >= 0:
                break
            if len(self.buf) > HEAD_LIMIT:
                raise InvalidResponse(f"no end of the headers within {HEAD_LIMIT} bytes")
            if not await self._more():
                if not self.buf:
                    if isinstance(self.error, OSError):
                        raise self.error
                    raise Disconnected()
                raise InvalidResponse(f"connection closed inside the headers: {bytes(self.buf[:60])!r}")
        status, version, headers = _parse_head(bytes(self.buf[:end]))
        del self.buf[: end + 4]
        if 100 <= status < 200 and status != 101:  # an interim answer (100 Continue): the real one follows
            return await self.exchange(b"", head, keep)
        persistent = _persistent(version, headers) and status != 101  # switched protocols: not HTTP any more
        if head or status in (204, 304) or 100 <= status < 200:
            return Response(status, headers, b""), persistent
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body, complete = await self._chunked(keep)
        elif "content-length" in headers:
            try:
                length = int(headers["content-length"])
            except ValueError:
                raise InvalidResponse(f"bad Content-Length {headers['content-length']!r}") from None
            if length < 0:
                raise InvalidResponse(f"bad Content-Length {length}")
            body, complete = await self._sized(length, keep)
        else:
            body, complete = await self._until_close(keep)
            persistent = False
        return Response(status, headers, _decoded(body, headers, keep)), persistent and complete

    async def _sized(self, length: int, keep: int) -> tuple[bytes, bool]:
        """`length` body bytes (the first `keep` kept); complete=False when it was left unread (too long)."""
        if length > keep + DRAIN_LIMIT:
            while len(self.buf) < keep and await self._more():
                pass
            return bytes(self.buf[:keep]), False
        while len(self.buf) < length:
            if not await self._more():
                raise BodyCut(f"{len(self.buf)} of {length} bytes")
        body = bytes(self.buf[: min(length, keep)])
        del self.buf[:length]
        return body, True

    async def _until_close(self, keep: int) -> tuple[bytes, bool]:
        while len(self.buf) < keep + DRAIN_LIMIT and await self._more():
            pass
        return bytes(self.buf[:keep]), False

    async def _chunked(self, keep: int) -> tuple[bytes, bool]:
        out = bytearray()
        total = 0
        while True:
            line = await self._line()
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise InvalidResponse(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                while await self._line():  # trailers, up to the empty line
                    pass
                return bytes(out), True
            total += size
            if total > keep + DRAIN_LIMIT:
                return bytes(out[:keep]), False
            while len(self.buf) < size + 2:
                if not await self._more():
                    raise BodyCut(f"inside a chunk of {size} bytes")
            if len(out) < keep:
                out += self.buf[: min(size, keep - len(out))]
            del self.buf[: size + 2]

    async def _line(self) -> bytes:
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i])
                del self.buf[: i + 2]
                return line
            if len(self.buf) > HEAD_LIMIT:
                raise InvalidResponse("chunk header too long")
            if not await self._more():
                raise BodyCut("inside the chunk framing")

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


def _parse_head(head: bytes) -> tuple[int, str, dict[str, str]]:
    lines = head.split(b"\r\n")
    first = lines[0]
    parts = first.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit() or len(parts[1]) != 3:
        raise InvalidResponse(f"not an HTTP status line: {first[:60]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep or not name or name != name.strip():
            raise InvalidResponse(f"bad header line {line[:60]!r}")
        headers[name.decode("latin-1").lower()] = value.strip().decode("latin-1")
    return int(parts[1]), parts[0].decode("ascii", "replace"), headers


def _persistent(version: str, headers: dict[str, str]) -> bool:
    connection = headers.get("connection", "").lower()
    if version == "HTTP/1.0":
        return "keep-alive" in connection
    return "close" not in connection


def _decoded(body: bytes, headers: dict[str, str], keep: int) -> bytes:
    """The body as sent before a Content-Encoding (servers may compress unasked); at most `keep` bytes."""
    encoding = headers.get("content-encoding", "").lower()
    if not body or encoding not in ("gzip", "deflate", "x-gzip"):
        return body
    wbits = 47 if encoding != "deflate" else 15
    try:
        return zlib.decompressobj(wbits).decompress(body, keep)
    except zlib.error:
        if encoding == "deflate":  # raw deflate, as some servers send it
            try:
                return zlib.decompressobj(-15).decompress(body, keep)
            except zlib.error:
                pass
        raise InvalidResponse(f"body not valid {encoding}") from None


class Pool:
    """Kept-alive connections, per (scheme, host, port), for every HTTP check of the daemon."""

    def __init__(self, max_idle_hosts: int) -> None:
        self.max_idle_hosts = max(1, max_idle_hosts)
        self._idle: dict[Key, list[_Connection]] = {}
        self._dns: dict[str, tuple[float, list[tuple[int, str]]]] = {}
        self._sweeping: asyncio.TimerHandle | None = None
        self.overflow_closed = 0  # connections closed after their answer because the pool was full
        self.connects = 0

    def forget(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.key)
        if idle and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.key]

    def idle_connections(self) -> int:
        return sum(len(v) for v in self._idle.values())

    async def request(
        self,
        key: Key,
        request: bytes,
        *,
        head: bool,
        keep: int,
        reuse: bool,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
        retry: bool,
    ) -> Response:
        conn = self._take(key) if reuse else None
        reused = conn is not None
        if conn is None:
            conn = await self._connect(key, ssl_context, server_hostname)
        try:
            response, persistent = await conn.exchange(request, head, keep)
        except (Disconnected, ConnectionResetError, BrokenPipeError):
            conn.abort()
            if not (reused and retry):
                raise
            # a kept connection the server had closed meanwhile: once more, on a fresh one
            conn = await self._connect(key, ssl_context, server_hostname)
            try:
                response, persistent = await conn.exchange(request, head, keep)
            except BaseException:
                conn.abort()
                raise
        except BaseException:
            conn.abort()  # mid-exchange (an error, the check's timeout): never reused
            raise
        if reuse and persistent and not conn.closed and not conn.buf:
            self._give_back(conn)
        else:
            conn.close()
        return response

    def _take(self, key: Key) -> _Connection | None:
        idle = self._idle.get(key)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if not idle:
                del self._idle[key]
            if not conn.closed and not conn.buf and now - conn.idle_since < IDLE_TIMEOUT:
                return conn
            conn.close()
            idle = self._idle.get(key)
        return None

    def _give_back(self, conn: _Connection) -> None:
        idle = self._idle.get(conn.key)
        if idle is None:
            if len(self._idle) >= self.max_idle_hosts:
                self.overflow_closed += 1
                conn.close()
                return
            idle = self._idle[conn.key] = []
        conn.idle_since = time.monotonic()
        idle.append(conn)
        if self._sweeping is None:
            self._sweeping = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._sweep)

    def _sweep(self) -> None:
        """Close kept connections idle for IDLE_TIMEOUT (hosts no longer checked: a replaced machine)."""
        self._sweeping = None
        cutoff = time.monotonic() - IDLE_TIMEOUT
        for key in [k for k, conns in self._idle.items() if conns[0].idle_since < cutoff]:
            for conn in [c for c in self._idle.get(key, ()) if c.idle_since < cutoff]:
                conn.close()  # connection_lost forgets it
        if self._idle:
            self._sweeping = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self._sweep)

    async def _connect(self, key: Key, ssl_context: ssl.SSLContext | None, server_hostname: str | None) -> _Connection:
        loop = asyncio.get_running_loop()
        _, host, port = key
        conn: _Connection | None = None

        def factory() -> _Connection:
            nonlocal conn
            conn = _Connection(key, self)
            return conn

        addresses = await self._resolve(host, port)
        error: OSError | None = None
        for family, address in addresses:
            try:
                await loop.create_connection(
                    factory,
                    address,
                    port,
                    family=family,
                    ssl=ssl_context,
                    server_hostname=server_hostname if ssl_context is not None else None,
                )
            except OSError as exc:
                error = exc
                continue
            self.connects += 1
            assert conn is not None
            return conn
        assert error is not None
        raise error

    async def _resolve(self, host: str, port: int) -> list[tuple[int, str]]:
        if _is_ip(host):
            return [(socket.AF_INET6 if ":" in host else socket.AF_INET, host)]
        cached = self._dns.get(host)
        now = time.monotonic()
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise LookupFailed(host, exc.strerror or str(exc)) from None
        addresses = list(dict.fromkeys((int(family), str(sockaddr[0])) for family, _, _, _, sockaddr in infos))
        if len(self._dns) > 10000:
            self._dns.clear()
        self._dns[host] = (now + DNS_TTL, addresses)
        return addresses

    def close(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
            self._sweeping = None
        for conns in list(self._idle.values()):
            for conn in list(conns):
                conn.close()
        self._idle.clear()


def _is_ip(host: str) -> bool:
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return True
    return False


def build_request(
    method: str, target: str, host_header: str, headers: dict[str, str], body: bytes | None, close: bool
) -> bytes:
    """The request's bytes, built once per check."""
    fields = {"host": ("Host", host_header), "user-agent": ("User-Agent", "healerd"), "accept": ("Accept", "*/*")}
    for name, value in headers.items():
        fields[name.lower()] = (name, value)
    if body is not None:
        fields["content-length"] = ("Content-Length", str(len(body)))
    if close:
        fields["connection"] = ("Connection", "close")
    head = f"{method} {target} HTTP/1.1\r\n" + "".join(f"{n}: {v}\r\n" for n, v in fields.values()) + "\r\n"
    return head.encode("utf-8") + (body or b"")


def endpoint(url: URL) -> tuple[Key, str]:
    """Where a URL's requests go (the pool's key: scheme, host, port) and their Host header."""
    host = url.raw_host or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    default_port = url.port is None or url.is_default_port()
    return (url.scheme, host, port), (f"[{host}]" if ":" in host else host) + ("" if default_port else f":{port}")
