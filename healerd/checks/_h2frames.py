"""HTTP/2 on the wire for the grpc check's client (`_h2`): frame types and errors, a request's frames built once,
and the reader that splits a server's bytes into frames, joins header blocks and decodes them."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

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


def frame(kind: int, flags: int, stream_id: int, payload: bytes = b"") -> bytes:
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
        headers = frame(HEADERS, END_HEADERS, 0, block)
        chunks = [body[i : i + MAX_FRAME] for i in range(0, len(body), MAX_FRAME)] or [b""]
        frames = [headers] + [
            frame(DATA, END_STREAM if i == len(chunks) - 1 else 0, 0, chunk) for i, chunk in enumerate(chunks)
        ]
        offsets, at = [], 0
        for built in frames:
            offsets.append(at + 5)
            at += len(built)
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


class FrameReader:
    """The server's side of one connection, read: complete frames out of the bytes received, each header block
    (HEADERS and its CONTINUATIONs) joined and decoded as one, DATA without its padding."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.preface_seen = False
        self._block: tuple[int, int, bytearray] | None = None  # stream id, END_STREAM, fragments
        self._decoder = hpack.Decoder()
        #: the length of the last frame read, padding included (what flow control counts)
        self.last_length = 0

    def frames(self) -> Iterator[tuple[int, int, int, bytes, dict[str, str] | None]]:
        """(type, flags, stream id, payload, header fields) of each complete frame, consumed as it is yielded;
        a header block comes once, as HEADERS with its fields (END_STREAM in its flags). The payload of DATA
        is its data without padding (flow control counts the whole frame: `last_length`)."""
        buf = self.buf
        while len(buf) >= 9:
            high, low, kind, flags, stream_id = _HEAD.unpack_from(buf, 0)
            length = high << 16 | low
            stream_id &= MAX_STREAM_ID
            if not self.preface_seen:
                if kind != SETTINGS or flags & ACK or stream_id or length % 6:
                    raise NotHttp2(bytes(buf[:200]))
                self.preface_seen = True
            if length > MAX_FRAME:
                raise InvalidHttp2(f"a frame of {length} bytes (at most {MAX_FRAME})", FRAME_SIZE_ERROR)
            if len(buf) < 9 + length:
                return
            payload = bytes(buf[9 : 9 + length])
            del buf[: 9 + length]
            self.last_length = length
            if self._block is not None and (kind != CONTINUATION or stream_id != self._block[0]):
                raise InvalidHttp2(f"frame type {kind} inside the header block of stream {self._block[0]}")
            if kind == HEADERS:
                if stream_id == 0:
                    raise InvalidHttp2("HEADERS frame on stream 0")
                fragment = unpadded(flags, payload, 5 if flags & PRIORITY_FLAG else 0)
                if not flags & END_HEADERS:
                    self._block = (stream_id, flags & END_STREAM, bytearray(fragment))
                    continue
                yield HEADERS, flags & END_STREAM, stream_id, b"", self._decode(fragment)
            elif kind == CONTINUATION:
                if self._block is None:
                    raise InvalidHttp2("CONTINUATION frame without a header block before it")
                _, end_stream, fragments = self._block
                fragments += payload
                if len(fragments) > MAX_BLOCK:
                    raise InvalidHttp2(f"a header block over {MAX_BLOCK} bytes")
                if flags & END_HEADERS:
                    self._block = None
                    yield HEADERS, end_stream, stream_id, b"", self._decode(bytes(fragments))
            elif kind == DATA:
                yield DATA, flags, stream_id, unpadded(flags, payload), None
            else:
                yield kind, flags, stream_id, payload, None

    def _decode(self, block: bytes) -> dict[str, str]:
        try:  # raw: a field that is not UTF-8 (obs-text) is still HTTP; latin-1 keeps every byte
            return {
                bytes(name).decode("latin-1"): bytes(value).decode("latin-1")
                for name, value in self._decoder.decode(block, raw=True)
            }
        except hpack.HPACKError as exc:
            raise InvalidHttp2(f"a header block HPACK cannot decode ({exc})", COMPRESSION_ERROR) from None


def unpadded(flags: int, payload: bytes, skip: int = 0) -> bytes:
    """A frame's payload without its padding (and the `skip` bytes of priority after the pad length)."""
    if not flags & PADDED:
        return payload[skip:] if skip else payload
    if not payload or 1 + skip + payload[0] > len(payload):
        raise InvalidHttp2("padding longer than its frame")
    return payload[1 + skip : len(payload) - payload[0]]


# -- the payloads of the connection's own frames, checked as RFC 9113 has them -------------------------------
def settings(flags: int, stream_id: int, payload: bytes) -> list[tuple[int, int]] | None:
    """The (identifier, value) pairs of a SETTINGS frame; None for an acknowledgement."""
    if stream_id:
        raise InvalidHttp2("SETTINGS frame on a stream")
    if flags & ACK:
        if payload:
            raise InvalidHttp2("a SETTINGS acknowledgement with a payload", FRAME_SIZE_ERROR)
        return None
    if len(payload) % 6:
        raise InvalidHttp2("a SETTINGS frame whose length is not a multiple of 6", FRAME_SIZE_ERROR)
    return [struct.unpack_from(">HI", payload, i) for i in range(0, len(payload), 6)]


def word(payload: bytes, kind: str) -> int:
    """The 32-bit payload of RST_STREAM (an error code) or WINDOW_UPDATE (an increment)."""
    if len(payload) != 4:
        raise InvalidHttp2(f"a {kind} frame that is not 4 bytes", FRAME_SIZE_ERROR)
    return int.from_bytes(payload, "big")


def goaway(stream_id: int, payload: bytes) -> tuple[int, int]:
    """The last stream the server processes, and its error code."""
    if stream_id:
        raise InvalidHttp2("GOAWAY frame on a stream")
    if len(payload) < 8:
        raise InvalidHttp2("a GOAWAY frame under 8 bytes", FRAME_SIZE_ERROR)
    return int.from_bytes(payload[:4], "big") & MAX_STREAM_ID, int.from_bytes(payload[4:8], "big")


def check_ping(stream_id: int, payload: bytes) -> None:
    if len(payload) != 8 or stream_id:
        raise InvalidHttp2("a PING frame that is not 8 bytes on stream 0", FRAME_SIZE_ERROR)
