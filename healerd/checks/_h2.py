"""A lean HTTP/2 client for unary gRPC calls: a kept connection per server, requests built once as bytes.

A health check sends the same request to the same server every few seconds. A general HTTP/2 stack spends
most of a check's CPU on its state machine and an event object per frame; here a request's frames are built
once (its header block encoded without the dynamic table, so any connection can send it as it is) and only the
stream id changes per call. The server's header blocks are decoded with `hpack`, one decoder per connection
(the server may use its dynamic table). Push is refused, the receive windows are large and topped up as DATA
arrives, and a connection is not reused after GOAWAY or once its stream ids run out.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
from collections import deque
from dataclasses import dataclass
from typing import cast

import hpack

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
MAX_STREAM_ID = (1 << 31) - 1
MAX_FRAME = 16384  # the default SETTINGS_MAX_FRAME_SIZE, which this client keeps
STREAM_WINDOW = 1 << 24  # receive window per stream and per connection: a small answer never waits for one
CONNECTION_WINDOW = 1 << 24
MAX_BLOCK = 64 * 1024  # a header block, CONTINUATIONs included
MAX_BODY = 64 * 1024  # DATA kept per call: a health answer is a few bytes

DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
ERRORS = (
    "NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT", "STREAM_CLOSED",
    "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR", "ENHANCE_YOUR_CALM",
    "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED",
)  # fmt: skip
PROTOCOL_ERROR, FLOW_CONTROL_ERROR, FRAME_SIZE_ERROR, REFUSED_STREAM, CANCEL, COMPRESSION_ERROR = 1, 3, 6, 7, 8, 9

_HEAD = struct.Struct(">BHBBI")  # a frame header: length (24 bits as 8 + 16), type, flags, stream id


def error_name(code: int) -> str:
    return ERRORS[code] if code < len(ERRORS) else f"error {code}"


class H2Error(Exception):
    """A call ended without an answer."""


class Disconnected(H2Error):
    """The connection closed before the call's answer was complete."""


class NotHttp2(H2Error):
    """The server's first bytes are no HTTP/2 server preface."""

    def __init__(self, first: bytes) -> None:
        super().__init__(f"not HTTP/2: the server sent {first[:60]!r}")
        self.first = first

    @property
    def http1_status_line(self) -> str | None:
        """The status line of an HTTP/1 server's answer, if that is what came."""
        if not self.first.startswith(b"HTTP/1."):
            return None
        return self.first.split(b"\r\n", 1)[0][:60].decode("latin-1")


class InvalidHttp2(H2Error):
    """The server broke the protocol: the connection is closed."""

    def __init__(self, what: str, code: int = PROTOCOL_ERROR) -> None:
        super().__init__(f"invalid HTTP/2 from the server: {what}")
        self.code = code


class NoAlpnH2(H2Error):
    """A TLS server that did not choose HTTP/2."""

    def __init__(self, chosen: str | None) -> None:
        super().__init__(f"the TLS server did not choose HTTP/2 in ALPN (it chose {chosen or 'nothing'})")


class CallFailed(H2Error):
    """The call failed; the connection carries on."""


class AnswerTooLong(CallFailed):
    """More DATA than a unary health answer can be: the call is given up."""

    def __init__(self) -> None:
        super().__init__(f"the answer is over {MAX_BODY} bytes: not a health answer")


class StreamReset(CallFailed):
    """The server ended the call with RST_STREAM."""

    def __init__(self, code: int) -> None:
        super().__init__(f"the server reset the call (RST_STREAM {error_name(code)})")
        self.code = code


class GoneAway(H2Error):
    """The server sent GOAWAY before this call; it was not processed, so it may be made again elsewhere."""

    def __init__(self, code: int, debug: bytes) -> None:
        detail = f": {debug[:80].decode('utf-8', 'replace')}" if debug else ""
        super().__init__(f"the server closed the connection before answering (GOAWAY {error_name(code)}{detail})")


@dataclass(slots=True)
class Reply:
    headers: dict[str, str]  # the response's fields, :status among them
    trailers: dict[str, str]  # the trailer fields: the headers again for a trailers-only answer, {} if none
    body: bytes  # the DATA, at most MAX_BODY bytes


def _frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
    return len(payload).to_bytes(3, "big") + bytes((kind, flags)) + stream_id.to_bytes(4, "big") + payload


def _hpack_int(value: int, prefix_bits: int, first: int) -> bytes:
    """An HPACK integer (RFC 7541 5.1) whose first byte carries `first`'s high bits."""
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first | value,))
    out = bytearray((first | limit,))
    value -= limit
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _literal(name: int | str, value: str) -> bytes:
    """A literal field without indexing (RFC 7541 6.2.2): its name a static-table index or a string."""
    head = _hpack_int(name, 4, 0) if isinstance(name, int) else b"\x00" + _string(name)
    return head + _string(value)


def _string(text: str) -> bytes:
    raw = text.encode()
    return _hpack_int(len(raw), 7, 0) + raw


class Request:
    """A unary call's frames, HEADERS then DATA ending the stream, with a stream id written in per call."""

    __slots__ = ("_frames", "_offsets", "data_size", "headers_size")

    def __init__(self, *, tls: bool, authority: str, path: str, fields: tuple[tuple[str, str], ...], body: bytes):
        block = (
            b"\x83"  # :method POST (static index 3)
            + (b"\x87" if tls else b"\x86")  # :scheme https / http (7 / 6)
            + _literal(4, path)  # :path
            + _literal(1, authority)  # :authority
            + b"".join(_literal(name, value) for name, value in fields)
        )
        if len(block) > MAX_FRAME:
            raise ValueError(f"request headers of {len(block)} bytes do not fit one HTTP/2 frame")
        headers = _frame(HEADERS, END_HEADERS, 0, block)
        chunks = [body[i : i + MAX_FRAME] for i in range(0, len(body), MAX_FRAME)] or [b""]
        frames = [headers] + [
            _frame(DATA, END_STREAM if i == len(chunks) - 1 else 0, 0, chunk) for i, chunk in enumerate(chunks)
        ]
        offsets, at = [], 0
        for frame in frames:
            offsets.append(at + 5)
            at += len(frame)
        self._frames = b"".join(frames)
        self._offsets = tuple(offsets)
        self.headers_size = len(headers)
        self.data_size = len(body)

    def frames(self, stream_id: int) -> bytearray:
        out = bytearray(self._frames)
        sid = stream_id.to_bytes(4, "big")
        for at in self._offsets:
            out[at : at + 4] = sid
        return out


class _Call:
    __slots__ = ("data", "future", "headers", "stream_id", "unsent", "unsent_size", "window")

    def __init__(self, stream_id: int, future: asyncio.Future[Reply], *, window: int) -> None:
        self.stream_id = stream_id
        self.future = future
        self.window = window  # what the server lets this stream send
        self.headers: dict[str, str] | None = None
        self.data = bytearray()
        self.unsent: bytes | None = None  # DATA frames waiting for flow-control window
        self.unsent_size = 0  # their payload


_SETTINGS = struct.pack(">HIHI", 2, 0, 4, STREAM_WINDOW)  # ENABLE_PUSH 0, INITIAL_WINDOW_SIZE
_OPENING = (
    PREFACE
    + _frame(SETTINGS, 0, 0, _SETTINGS)
    + _frame(WINDOW_UPDATE, 0, 0, (CONNECTION_WINDOW - 65535).to_bytes(4, "big"))
)
_SETTINGS_ACK = _frame(SETTINGS, ACK, 0)


class Connection(asyncio.Protocol):
    """One HTTP/2 connection to a server, carrying unary calls side by side."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: BaseException | None = None
        self._buf = bytearray()
        self._out = bytearray()  # frames to write once the bytes at hand are read
        self._decoder = hpack.Decoder()
        self._calls: dict[int, _Call] = {}
        self._next_id = 1
        self._max_streams = MAX_STREAM_ID
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._send_window = 65535
        self._peer_window = 65535
        self._unsent: list[_Call] = []
        self._received = 0  # DATA bytes not yet given back with WINDOW_UPDATE
        self._preface_seen = False
        self._block: tuple[int, int, bytearray] | None = None  # stream id, END_STREAM, fragments
        self._last_stream: int | None = None  # from GOAWAY
        self._retired = False

    @property
    def usable(self) -> bool:
        """Whether a new call may start here."""
        return not self.closed and self._last_stream is None and not self._retired and self._next_id < MAX_STREAM_ID

    @property
    def selected_alpn(self) -> str | None:
        obj = self.transport.get_extra_info("ssl_object") if self.transport is not None else None
        return obj.selected_alpn_protocol() if isinstance(obj, ssl.SSLObject | ssl.SSLSocket) else None

    # -- calls ------------------------------------------------------------------------------------------
    async def call(self, request: Request) -> Reply:
        while len(self._calls) >= self._max_streams and self.usable:  # SETTINGS_MAX_CONCURRENT_STREAMS
            waiter = asyncio.get_running_loop().create_future()
            self._slot_waiters.append(waiter)
            try:
                await waiter
            finally:
                if not waiter.done():
                    self._slot_waiters.remove(waiter)
        if not self.usable:
            if self.error is not None:
                raise self.error
            raise GoneAway(0, b"")  # went away while this call waited: unprocessed, it may go elsewhere
        assert self.transport is not None
        stream_id = self._next_id
        self._next_id += 2
        call = _Call(stream_id, asyncio.get_running_loop().create_future(), window=self._peer_window)
        self._calls[stream_id] = call
        frames = request.frames(stream_id)
        size = request.data_size
        if size <= self._send_window and size <= call.window and not self._unsent:
            self._send_window -= size
            call.window -= size
            self.transport.write(frames)
        else:
            self.transport.write(frames[: request.headers_size])
            call.unsent = bytes(frames[request.headers_size :])
            call.unsent_size = size
            self._unsent.append(call)
        try:
            return await call.future
        finally:
            if self._calls.pop(stream_id, None) is not None:  # given up (the run's timeout): tell the server
                if call.unsent is not None:
                    self._unsent.remove(call)
                if not self.closed:
                    self.transport.write(_frame(RST_STREAM, 0, stream_id, CANCEL.to_bytes(4, "big")))
                self._released()

    def _released(self) -> None:
        """A call left: another may start, and a connection that is going away may close."""
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                break
        if not self._calls and (self._last_stream is not None or self._retired):
            self.close()

    def retire(self) -> None:
        """Take no new call; close once the calls in flight have their answers."""
        self._retired = True
        if not self._calls:
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        if self.transport is not None:
            self.transport.write(_frame(GOAWAY, 0, 0, bytes(8)))  # last stream 0 (none of the server's), NO_ERROR
        self._shut(Disconnected())

    def _shut(self, error: BaseException) -> None:
        self.closed = True
        if self.error is None:
            self.error = error
        calls, self._calls = self._calls, {}
        for call in calls.values():
            if not call.future.done():
                call.future.set_exception(error)
        self._unsent.clear()
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        if self.transport is not None:
            self.transport.close()

    # -- protocol callbacks -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        if transport.get_extra_info("ssl_object") is not None and self.selected_alpn != "h2":
            self._shut(NoAlpnH2(self.selected_alpn))  # not one byte of HTTP/2 to a server that did not agree to it
            return
        self.transport.write(_OPENING)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._buf += data
        try:
            self._read_frames()
        except InvalidHttp2 as exc:
            self._flush()
            if self.transport is not None:
                self.transport.write(_frame(GOAWAY, 0, 0, bytes(4) + exc.code.to_bytes(4, "big")))
            self._shut(exc)
            return
        except NotHttp2 as exc:
            self._shut(exc)
            return
        self._flush()

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._preface_seen and self._buf:
            error: BaseException = NotHttp2(bytes(self._buf))
        else:
            error = exc if isinstance(exc, OSError) else Disconnected()
        self._shut(error)

    def _flush(self) -> None:
        if self._out and not self.closed and self.transport is not None:
            self.transport.write(bytes(self._out))
        self._out.clear()

    # -- frames -----------------------------------------------------------------------------------------
    def _read_frames(self) -> None:
        buf = self._buf
        n = len(buf)
        at = 0
        while n - at >= 9 and not self.closed:
            high, low, kind, flags, stream_id = _HEAD.unpack_from(buf, at)
            length = high << 16 | low
            stream_id &= MAX_STREAM_ID
            if not self._preface_seen:
                if kind != SETTINGS or flags & ACK or stream_id or length % 6:
                    raise NotHttp2(bytes(buf[:200]))
                self._preface_seen = True
            if length > MAX_FRAME:
                raise InvalidHttp2(f"a frame of {length} bytes (at most {MAX_FRAME})", FRAME_SIZE_ERROR)
            end = at + 9 + length
            if end > n:
                break
            payload = bytes(buf[at + 9 : end])
            at = end
            if self._block is not None and (kind != CONTINUATION or stream_id != self._block[0]):
                raise InvalidHttp2(f"frame type {kind} inside the header block of stream {self._block[0]}")
            if kind == HEADERS:
                self._headers(flags, stream_id, payload)
            elif kind == DATA:
                self._data(flags, stream_id, payload)
            elif kind == CONTINUATION:
                self._continuation(flags, stream_id, payload)
            elif kind == SETTINGS:
                self._settings(flags, stream_id, payload)
            elif kind == PING:
                if length != 8 or stream_id:
                    raise InvalidHttp2("a PING frame that is not 8 bytes on stream 0", FRAME_SIZE_ERROR)
                if not flags & ACK:
                    self._out += _frame(PING, ACK, 0, payload)
            elif kind == WINDOW_UPDATE:
                self._window_update(stream_id, payload)
            elif kind == RST_STREAM:
                self._rst_stream(stream_id, payload)
            elif kind == GOAWAY:
                self._goaway(stream_id, payload)
            elif kind == PUSH_PROMISE:
                raise InvalidHttp2("PUSH_PROMISE, though the client disabled push")
            # PRIORITY and frame types this client does not know are ignored, as RFC 9113 requires
        del buf[:at]

    def _padded(self, flags: int, payload: bytes, skip: int = 0) -> bytes:
        if not flags & PADDED:
            return payload[skip:] if skip else payload
        if not payload or 1 + skip + payload[0] > len(payload):
            raise InvalidHttp2("padding longer than its frame")
        return payload[1 + skip : len(payload) - payload[0]]

    def _stream(self, stream_id: int, kind: str) -> _Call | None:
        """The call on a stream; None for a call that has ended (frames may still be on their way)."""
        if stream_id == 0:
            raise InvalidHttp2(f"{kind} frame on stream 0")
        call = self._calls.get(stream_id)
        if call is None and (stream_id % 2 == 0 or stream_id >= self._next_id):
            raise InvalidHttp2(f"{kind} frame on stream {stream_id}, which the client never opened")
        return call

    def _headers(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id == 0:
            raise InvalidHttp2("HEADERS frame on stream 0")
        fragment = self._padded(flags, payload, 5 if flags & PRIORITY_FLAG else 0)
        if flags & END_HEADERS:
            self._header_block(stream_id, flags & END_STREAM, fragment)
        else:
            self._block = (stream_id, flags & END_STREAM, bytearray(fragment))

    def _continuation(self, flags: int, stream_id: int, payload: bytes) -> None:
        if self._block is None:
            raise InvalidHttp2("CONTINUATION frame without a header block before it")
        _, end_stream, fragments = self._block
        fragments += payload
        if len(fragments) > MAX_BLOCK:
            raise InvalidHttp2(f"a header block over {MAX_BLOCK} bytes")
        if flags & END_HEADERS:
            self._block = None
            self._header_block(stream_id, end_stream, bytes(fragments))

    def _header_block(self, stream_id: int, end_stream: int, block: bytes) -> None:
        try:  # decoded even for a call that has ended: the decoder's table must follow the server's
            # raw: a field that is not UTF-8 (obs-text) is still HTTP; latin-1 keeps every byte
            fields = {
                bytes(name).decode("latin-1"): bytes(value).decode("latin-1")
                for name, value in self._decoder.decode(block, raw=True)
            }
        except hpack.HPACKError as exc:
            raise InvalidHttp2(f"a header block HPACK cannot decode ({exc})", COMPRESSION_ERROR) from None
        call = self._stream(stream_id, "HEADERS")
        if call is None:
            return
        if call.headers is None:
            if fields.get(":status", "").startswith("1") and not end_stream:
                return  # an interim answer: the real one follows
            call.headers = fields
            if end_stream:
                self._complete(call, fields)
        elif end_stream:
            self._complete(call, fields)
        else:
            self._fail(call, InvalidHttp2("a second header block that does not end the stream"), PROTOCOL_ERROR)

    def _data(self, flags: int, stream_id: int, payload: bytes) -> None:
        # flow control counts the whole frame, padding included; given back at once since it is read at once
        self._received += len(payload)
        if self._received >= CONNECTION_WINDOW // 2:
            self._out += _frame(WINDOW_UPDATE, 0, 0, self._received.to_bytes(4, "big"))
            self._received = 0
        body = self._padded(flags, payload)
        call = self._stream(stream_id, "DATA")
        if call is None:
            return
        if call.headers is None:
            self._fail(call, InvalidHttp2("DATA before the response headers"), PROTOCOL_ERROR)
            return
        if len(call.data) + len(body) > MAX_BODY:
            self._fail(call, AnswerTooLong(), CANCEL)
            return
        call.data += body
        if flags & END_STREAM:
            self._complete(call, {})

    def _complete(self, call: _Call, trailers: dict[str, str]) -> None:
        del self._calls[call.stream_id]
        if call.unsent is not None:  # the server answered before reading it all: end our side
            self._unsent.remove(call)
            self._out += _frame(RST_STREAM, 0, call.stream_id, bytes(4))
        assert call.headers is not None
        if not call.future.done():
            call.future.set_result(Reply(call.headers, trailers, bytes(call.data)))
        self._released()

    def _fail(self, call: _Call, error: H2Error, code: int | None) -> None:
        del self._calls[call.stream_id]
        if call.unsent is not None:
            self._unsent.remove(call)
        if code is not None:
            self._out += _frame(RST_STREAM, 0, call.stream_id, code.to_bytes(4, "big"))
        if not call.future.done():
            call.future.set_exception(error)
        self._released()

    def _rst_stream(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise InvalidHttp2("an RST_STREAM frame that is not 4 bytes", FRAME_SIZE_ERROR)
        call = self._stream(stream_id, "RST_STREAM")
        if call is not None:
            self._fail(call, StreamReset(int.from_bytes(payload, "big")), None)

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise InvalidHttp2("SETTINGS frame on a stream")
        if flags & ACK:
            if payload:
                raise InvalidHttp2("a SETTINGS acknowledgement with a payload", FRAME_SIZE_ERROR)
            return
        if len(payload) % 6:
            raise InvalidHttp2("a SETTINGS frame whose length is not a multiple of 6", FRAME_SIZE_ERROR)
        for i in range(0, len(payload), 6):
            key, value = struct.unpack_from(">HI", payload, i)
            if key == 3:  # MAX_CONCURRENT_STREAMS
                self._max_streams = value
            elif key == 4:  # INITIAL_WINDOW_SIZE: applies to the streams open now too
                if value > MAX_STREAM_ID:
                    raise InvalidHttp2(f"INITIAL_WINDOW_SIZE {value}", FLOW_CONTROL_ERROR)
                for call in self._calls.values():
                    call.window += value - self._peer_window
                self._peer_window = value
        self._out += _SETTINGS_ACK
        self._send_unsent()
        if len(self._calls) < self._max_streams:
            for _ in range(min(len(self._slot_waiters), self._max_streams - len(self._calls))):
                waiter = self._slot_waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        if len(payload) != 4:
            raise InvalidHttp2("a WINDOW_UPDATE frame that is not 4 bytes", FRAME_SIZE_ERROR)
        increment = int.from_bytes(payload, "big") & MAX_STREAM_ID
        if increment == 0:
            raise InvalidHttp2("a WINDOW_UPDATE of 0")
        if stream_id == 0:
            self._send_window += increment
        else:
            call = self._stream(stream_id, "WINDOW_UPDATE")
            if call is None:
                return
            call.window += increment
        if self._unsent:
            self._send_unsent()

    def _send_unsent(self) -> None:
        """DATA that waited for window, in the order of its calls, as far as the windows allow."""
        while self._unsent:
            call = self._unsent[0]
            assert call.unsent is not None
            size = call.unsent_size
            if size > self._send_window or size > call.window:
                return
            self._send_window -= size
            call.window -= size
            self._out += call.unsent
            call.unsent = None
            self._unsent.pop(0)

    def _goaway(self, stream_id: int, payload: bytes) -> None:
        if stream_id:
            raise InvalidHttp2("GOAWAY frame on a stream")
        if len(payload) < 8:
            raise InvalidHttp2("a GOAWAY frame under 8 bytes", FRAME_SIZE_ERROR)
        last = int.from_bytes(payload[:4], "big") & MAX_STREAM_ID
        code = int.from_bytes(payload[4:8], "big")
        self._last_stream = last if self._last_stream is None else min(last, self._last_stream)
        error = GoneAway(code, payload[8:])
        for call in [c for sid, c in self._calls.items() if sid > last]:
            if call.stream_id in self._calls:
                self._fail(call, error, None)  # never processed: made again on another connection
        if not self._calls:
            self._flush()
            self.close()


class Channel:
    """Unary calls to one server over one kept connection, made afresh once that one is closed or going away."""

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None, server_name: str | None) -> None:
        self.host, self.port = host, port
        self._ssl = ssl_context
        self._server_name = (server_name or host) if ssl_context is not None else None
        self._conn: Connection | None = None
        self._connecting: asyncio.Task[Connection] | None = None
        self._closed = False

    async def call(self, request: Request) -> Reply:
        conn = self._conn
        reused = conn is not None and conn.usable
        if conn is None or not reused:
            conn = await self._connected()
        try:
            return await conn.call(request)
        except GoneAway:
            pass  # the server never processed the call: once more, on a fresh connection
        except (Disconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            # a kept connection the server closed meanwhile: once more, on a fresh one
        return await (await self._connected()).call(request)

    async def _connected(self) -> Connection:
        """A usable connection; the calls that find none at once share one connecting."""
        if self._closed:
            raise Disconnected()
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        if self._connecting is None:
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
            self._connecting.add_done_callback(_retrieve)
        return await asyncio.shield(self._connecting)

    async def _connect(self) -> Connection:
        try:
            _, conn = await asyncio.get_running_loop().create_connection(
                Connection, self.host, self.port, ssl=self._ssl, server_hostname=self._server_name
            )
            if conn.closed:
                raise conn.error or Disconnected()
            old, self._conn = self._conn, conn
            if old is not None:
                old.retire()
            return conn
        finally:
            self._connecting = None

    def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.cancel()
            self._connecting = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _retrieve(task: asyncio.Task[Connection]) -> None:
    """A failed connect whose callers have all given up is not an unretrieved error."""
    if not task.cancelled():
        task.exception()
