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
import socket
import ssl
import struct
from collections import deque
from typing import cast

from ._h2frames import (
    ACK,
    CANCEL,
    CONNECTION_WINDOW,
    DATA,
    END_STREAM,
    FLOW_CONTROL_ERROR,
    GOAWAY,
    HEADERS,
    MAX_BODY,
    MAX_STREAM_ID,
    PING,
    PREFACE,
    PROTOCOL_ERROR,
    PUSH_PROMISE,
    RST_STREAM,
    SETTINGS,
    STREAM_WINDOW,
    WINDOW_UPDATE,
    AnswerTooLong,
    Disconnected,
    FrameReader,
    GoneAway,
    H2Error,
    InvalidHttp2,
    NoAlpnH2,
    NotHttp2,
    Reply,
    Request,
    StreamReset,
    check_ping,
    frame,
    goaway,
    settings,
    word,
)  # fmt: skip


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
    + frame(SETTINGS, 0, 0, _SETTINGS)
    + frame(WINDOW_UPDATE, 0, 0, (CONNECTION_WINDOW - 65535).to_bytes(4, "big"))
)
_SETTINGS_ACK = frame(SETTINGS, ACK, 0)


class _Slots:
    """Calls waiting for a free stream, woken in the order they came."""

    def __init__(self) -> None:
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __len__(self) -> int:
        return len(self._waiters)

    async def wait(self) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if not waiter.done():
                self._waiters.remove(waiter)

    def wake(self, count: int) -> None:
        """Wake up to `count` waiters (a waiter given up meanwhile is skipped, not counted)."""
        while count > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                count -= 1


class Connection(asyncio.Protocol):
    """One HTTP/2 connection to a server, carrying unary calls side by side."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: BaseException | None = None
        self._reader = FrameReader()
        self._out = bytearray()  # frames to write once the bytes at hand are read
        self._calls: dict[int, _Call] = {}
        self._next_id = 1
        self._max_streams = MAX_STREAM_ID
        self._slots = _Slots()  # calls waiting for the server's limit of concurrent streams
        self._send_window = 65535
        self._peer_window = 65535
        self._unsent: list[_Call] = []
        self._received = 0  # DATA bytes not yet given back with WINDOW_UPDATE
        self._last_stream: int | None = None  # from GOAWAY
        self._retired = False
        self.reads = 0  # how many times bytes came: a call that saw none was met by silence

    @property
    def busy(self) -> bool:
        """Whether calls are in flight or waiting for a stream."""
        return bool(self._calls or self._slots)

    @property
    def usable(self) -> bool:
        """Whether a new call may start here."""
        return not self.closed and self._last_stream is None and not self._retired and self._next_id < MAX_STREAM_ID

    # -- calls ------------------------------------------------------------------------------------------
    async def call(self, request: Request) -> Reply:
        while len(self._calls) >= self._max_streams and self.usable:  # SETTINGS_MAX_CONCURRENT_STREAMS
            await self._slots.wait()
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
                    self.transport.write(frame(RST_STREAM, 0, stream_id, CANCEL.to_bytes(4, "big")))
                self._released()

    def _released(self) -> None:
        """A call left: another may start, and a connection that is going away may close."""
        self._slots.wake(1)
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
            self.transport.write(frame(GOAWAY, 0, 0, bytes(8)))  # last stream 0 (none of the server's), NO_ERROR
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
        self._slots.wake(len(self._slots))
        if self.transport is not None:
            self.transport.close()

    # -- protocol callbacks -----------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        obj = transport.get_extra_info("ssl_object")
        if isinstance(obj, ssl.SSLObject | ssl.SSLSocket) and (alpn := obj.selected_alpn_protocol()) != "h2":
            self._shut(NoAlpnH2(alpn))  # not one byte of HTTP/2 to a server that did not agree to it
            return
        self.transport.write(_OPENING)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.reads += 1
        self._reader.buf += data
        try:
            self._read_frames()
        except InvalidHttp2 as exc:
            self._flush()
            if self.transport is not None:
                self.transport.write(frame(GOAWAY, 0, 0, bytes(4) + exc.code.to_bytes(4, "big")))
            self._shut(exc)
            return
        except NotHttp2 as exc:
            self._shut(exc)
            return
        self._flush()

    def eof_received(self) -> bool:
        return False  # close the transport: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._reader.preface_seen and self._reader.buf:
            error: BaseException = NotHttp2(bytes(self._reader.buf))
        else:
            error = exc if isinstance(exc, OSError) else Disconnected()
        self._shut(error)

    def _flush(self) -> None:
        if self._out and not self.closed and self.transport is not None:
            self.transport.write(bytes(self._out))
        self._out.clear()

    # -- frames -----------------------------------------------------------------------------------------
    def _read_frames(self) -> None:
        for kind, flags, stream_id, payload, fields in self._reader.frames():
            if kind == HEADERS:
                assert fields is not None
                self._header_block(stream_id, flags, fields)
            elif kind == DATA:
                self._data(flags, stream_id, payload)
            elif kind == SETTINGS:
                self._settings(flags, stream_id, payload)
            elif kind == PING:
                check_ping(stream_id, payload)
                if not flags & ACK:
                    self._out += frame(PING, ACK, 0, payload)
            elif kind == WINDOW_UPDATE:
                self._window_update(stream_id, payload)
            elif kind == RST_STREAM:
                self._rst_stream(stream_id, payload)
            elif kind == GOAWAY:
                self._goaway(stream_id, payload)
            elif kind == PUSH_PROMISE:
                raise InvalidHttp2("PUSH_PROMISE, though the client disabled push")
            # PRIORITY and frame types this client does not know are ignored, as RFC 9113 requires
            if self.closed:
                return

    def _stream(self, stream_id: int, kind: str) -> _Call | None:
        """The call on a stream; None for a call that has ended (frames may still be on their way)."""
        if stream_id == 0:
            raise InvalidHttp2(f"{kind} frame on stream 0")
        call = self._calls.get(stream_id)
        if call is None and (stream_id % 2 == 0 or stream_id >= self._next_id):
            raise InvalidHttp2(f"{kind} frame on stream {stream_id}, which the client never opened")
        return call

    def _header_block(self, stream_id: int, end_stream: int, fields: dict[str, str]) -> None:
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
        self._received += self._reader.last_length
        if self._received >= CONNECTION_WINDOW // 2:
            self._out += frame(WINDOW_UPDATE, 0, 0, self._received.to_bytes(4, "big"))
            self._received = 0
        body = payload
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
            self._out += frame(RST_STREAM, 0, call.stream_id, bytes(4))
        assert call.headers is not None
        if not call.future.done():
            call.future.set_result(Reply(call.headers, trailers, bytes(call.data)))
        self._released()

    def _fail(self, call: _Call, error: H2Error, code: int | None) -> None:
        del self._calls[call.stream_id]
        if call.unsent is not None:
            self._unsent.remove(call)
        if code is not None:
            self._out += frame(RST_STREAM, 0, call.stream_id, code.to_bytes(4, "big"))
        if not call.future.done():
            call.future.set_exception(error)
        self._released()

    def _rst_stream(self, stream_id: int, payload: bytes) -> None:
        code = word(payload, "RST_STREAM")
        call = self._stream(stream_id, "RST_STREAM")
        if call is not None:
            self._fail(call, StreamReset(code), None)

    def _settings(self, flags: int, stream_id: int, payload: bytes) -> None:
        values = settings(flags, stream_id, payload)
        if values is None:
            return  # an acknowledgement
        for key, value in values:
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
        self._slots.wake(self._max_streams - len(self._calls))

    def _window_update(self, stream_id: int, payload: bytes) -> None:
        increment = word(payload, "WINDOW_UPDATE") & MAX_STREAM_ID
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
        last, code = goaway(stream_id, payload)
        self._last_stream = last if self._last_stream is None else min(last, self._last_stream)
        error = GoneAway(code, payload[8:])
        for call in [c for sid, c in self._calls.items() if sid > last]:
            if call.stream_id in self._calls:
                self._fail(call, error, None)  # never processed: made again on another connection
        if not self._calls:
            self._flush()
            self.close()


class _Connecting:
    """A connect in progress and how many calls wait for it: abandoned only once none does."""

    __slots__ = ("task", "waiting")

    def __init__(self, task: asyncio.Task[Connection]) -> None:
        self.task = task
        self.waiting = 0


class Channel:
    """Unary calls to one server over one kept connection, made afresh once that one is closed or going away.

    A call given up (its run's timeout) resets only its own stream; when nothing at all came from the server since
    it started, the connection is retired (the calls in flight finish there, new ones go to a fresh connection),
    so a frozen server that resumes is seen as it is. A connect is shared by the calls that wait for it and
    abandoned only when none waits any more.
    """

    def __init__(self, host: str, port: int, *, ssl_context: ssl.SSLContext | None, server_name: str | None) -> None:
        self.host, self.port = host, port
        self._ssl = ssl_context
        self._server_name = (server_name or host) if ssl_context is not None else None
        self._conn: Connection | None = None
        self._connecting: _Connecting | None = None
        self._closed = False

    @property
    def busy(self) -> bool:
        """Whether a call is in flight or a connect under way (closing now would fail someone's run)."""
        return self._connecting is not None or (self._conn is not None and self._conn.busy)

    async def call(self, request: Request) -> Reply:
        conn = self._conn
        reused = conn is not None and conn.usable
        if conn is None or not reused:
            conn = await self._connected()
        try:
            return await self._call(conn, request)
        except GoneAway:
            pass  # the server never processed the call: once more, on a fresh connection
        except (Disconnected, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            # a kept connection the server closed meanwhile: once more, on a fresh one
        return await self._call(await self._connected(), request)

    @staticmethod
    async def _call(conn: Connection, request: Request) -> Reply:
        reads = conn.reads
        try:
            return await conn.call(request)
        except asyncio.CancelledError:
            if conn.reads == reads:  # not a byte since the call started: maybe frozen, or gone without a word
                conn.retire()
            raise

    async def _connected(self) -> Connection:
        """A usable connection; the calls that find none at once share one connecting."""
        if self._closed:
            raise Disconnected()
        conn = self._conn
        if conn is not None and conn.usable:
            return conn
        connecting = self._connecting
        if connecting is None:
            task = asyncio.get_running_loop().create_task(self._connect())
            task.add_done_callback(_retrieve)
            connecting = self._connecting = _Connecting(task)
        connecting.waiting += 1
        try:
            return await asyncio.shield(connecting.task)
        finally:
            connecting.waiting -= 1
            if not connecting.waiting and not connecting.task.done():  # every caller gave up
                connecting.task.cancel()
                if self._connecting is connecting:
                    self._connecting = None

    async def _connect(self) -> Connection:
        try:
            transport, conn = await asyncio.get_running_loop().create_connection(
                Connection, self.host, self.port, ssl=self._ssl, server_hostname=self._server_name
            )
            if conn.closed:
                raise conn.error or Disconnected()
            sock = transport.get_extra_info("socket")
            if sock is not None:  # a peer gone without a word (a destroyed machine) is found out by the kernel
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            old, self._conn = self._conn, conn
            if old is not None:
                old.retire()
            return conn
        finally:
            if self._connecting is not None and self._connecting.task is asyncio.current_task():
                self._connecting = None

    def close(self) -> None:
        self._closed = True
        if self._connecting is not None:
            self._connecting.task.cancel()
            self._connecting = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _retrieve(task: asyncio.Task[Connection]) -> None:
    """A failed connect whose callers have all given up is not an unretrieved error."""
    if not task.cancelled():
        task.exception()
