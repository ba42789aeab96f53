"""The plain-text exchanges that upgrade a connection to TLS before the `tls` check's handshake (SMTP's and IMAP's
STARTTLS, PostgreSQL's SSLRequest), as `openssl s_client -starttls` has them: one small state machine per protocol,
and the asyncio protocol that runs one and then hands the connection to the handshake."""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import struct
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import cast

#: what a dialogue yields: the bytes to send next (b"": nothing, wait for the server's next unit); what it is sent:
#: the server's next line (or, for a protocol that answers in bytes, what arrived); it returns when TLS may start
Dialogue = Generator[bytes, bytes, None]

#: the most a server may send before TLS starts: a greeting and an EHLO answer are a few hundred bytes
LIMIT = 8192
_SHOWN = 80  # bytes of a wrong answer quoted in the message


class Starttls(enum.StrEnum):
    SMTP = "smtp"
    IMAP = "imap"
    POSTGRES = "postgres"


class Refused(Exception):
    """The server answered the upgrade in a way that leaves no TLS to judge; the message says what it sent."""


def show(data: bytes) -> str:
    """The first bytes of what the server sent, quoted; control characters and non-text bytes escaped."""
    data = data.rstrip(b"\r\n")
    text = data[:_SHOWN].decode("utf-8", "backslashreplace")
    return repr(text + "…" if len(data) > _SHOWN else text)


# -- the dialogues --------------------------------------------------------------------------------------------
def _code(line: bytes) -> bytes | None:
    """An SMTP reply line's code, or None when the line is not one."""
    return line[:3] if line[:3].isdigit() and line[3:4] in (b" ", b"-", b"\r", b"\n", b"") else None


def _smtp_reply(command: bytes) -> Generator[bytes, bytes, tuple[bytes | None, bytes]]:
    """Sends `command`, reads the reply up to its last line: its code (None: not an SMTP reply) and its text."""
    line = yield command
    text = line
    while _code(line) is not None and line[3:4] == b"-":  # "250-": more lines follow
        line = yield b""
        text += line
    return _code(line), text


def _smtp(local: str) -> Dialogue:
    """RFC 3207: the greeting, EHLO listing STARTTLS, STARTTLS answered 220."""
    code, text = yield from _smtp_reply(b"")
    if code != b"220":
        raise Refused(f"SMTP server greeted with {show(text)} instead of 220")
    code, text = yield from _smtp_reply(b"EHLO %s\r\n" % local.encode())
    if code != b"250":
        raise Refused(f"SMTP server refused EHLO: {show(text)}")
    if not any(line[4:].strip().upper() == b"STARTTLS" for line in text.splitlines()):
        raise Refused(f"the server does not offer STARTTLS (EHLO answered: {show(text)})")
    code, text = yield from _smtp_reply(b"STARTTLS\r\n")
    if code != b"220":
        raise Refused(f"SMTP server refused STARTTLS: {show(text)}")


def _imap(local: str) -> Dialogue:
    """RFC 3501/9051: the greeting `* OK`, then `a1 STARTTLS` answered `a1 OK` (untagged lines may come first)."""
    line = yield b""
    if not line.upper().startswith(b"* OK"):
        raise Refused(f"IMAP server greeted with {show(line)} instead of '* OK'")
    line = yield b"a1 STARTTLS\r\n"
    while line.startswith(b"* "):  # untagged data (a CAPABILITY, say) before the answer
        line = yield b""
    if not line.upper().startswith(b"A1 OK"):
        raise Refused(f"IMAP server refused STARTTLS: {show(line)}")


#: PostgreSQL's SSLRequest: a length of 8 and the code 1234 5679
_SSL_REQUEST = struct.pack("!ii", 8, 80877103)


def _postgres(local: str) -> Dialogue:
    """The SSLRequest, answered by one byte: S (TLS next) or N (no TLS on this server)."""
    answer = yield _SSL_REQUEST
    if answer[:1] == b"N":
        raise Refused(
            "the server does not offer TLS (PostgreSQL answered N to the SSLRequest): set `ssl = on` in "
            "postgresql.conf, with ssl_cert_file and ssl_key_file"
        )
    if answer[:1] == b"E":
        raise Refused(f"PostgreSQL server answered the SSLRequest with an error: {show(answer)}")
    if answer[:1] != b"S":
        raise Refused(f"the server's answer to the PostgreSQL SSLRequest is not S or N: {show(answer)}")
    if answer[1:]:
        raise Refused(f"the server sent data out of turn, after its S and before TLS: {show(answer[1:])}")


@dataclass(frozen=True)
class _Spec:
    name: str
    start: Callable[[str], Dialogue]  # given the client's address literal (the name SMTP's EHLO gives)
    by_line: bool  # the server answers in CRLF lines; else in bytes, handed over as they arrive


DIALOGUES = {
    Starttls.SMTP: _Spec("SMTP", _smtp, by_line=True),
    Starttls.IMAP: _Spec("IMAP", _imap, by_line=True),
    Starttls.POSTGRES: _Spec("PostgreSQL", _postgres, by_line=False),
}


def _address_literal(sockname: object) -> str:
    """How a client without a name of its own introduces itself (RFC 5321 4.1.3): [192.0.2.1], [IPv6:2001:db8::1]."""
    host = sockname[0] if isinstance(sockname, tuple) and sockname else ""
    try:
        address = ipaddress.ip_address(str(host).split("%")[0])
    except ValueError:
        return "[127.0.0.1]"
    return f"[IPv6:{address}]" if address.version == 6 else f"[{address}]"


# -- running one ----------------------------------------------------------------------------------------------
class Upgrade(asyncio.Protocol):
    """Runs a dialogue on a new connection, then gives the connection to `then` (the TLS handshake), which sees
    its connection_made as if it had just connected. A failure is set on `done`, `then`'s outcome."""

    def __init__(self, kind: Starttls, then: asyncio.Protocol, *, done: asyncio.Future[None]) -> None:
        self.spec, self.then, self.done = DIALOGUES[kind], then, done
        self.transport: asyncio.Transport | None = None
        self.dialogue: Dialogue | None = None
        self.buffer = b""
        self.received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.dialogue = self.spec.start(_address_literal(transport.get_extra_info("sockname")))
        self._act(None)

    def data_received(self, data: bytes) -> None:
        if self.done.done():
            return
        self.received += len(data)
        if self.received > LIMIT:
            sent = show(self.buffer + data)
            self._fail(Refused(f"the server sent more than {LIMIT} bytes before TLS without finishing: {sent}"))
        elif not self.spec.by_line:
            self._act(data)
        else:
            self.buffer += data
            while (end := self.buffer.find(b"\n")) >= 0 and self.transport is not None and not self.done.done():
                line, self.buffer = self.buffer[: end + 1], self.buffer[end + 1 :]
                self._act(line)

    def eof_received(self) -> bool:
        if not self.done.done():
            sent = f" (after sending {show(self.buffer)})" if self.buffer.strip() else ""
            self._fail(Refused(f"the server closed the connection before the {self.spec.name} upgrade to TLS{sent}"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self._fail(exc or ConnectionResetError(0, f"connection closed before the {self.spec.name} upgrade to TLS"))

    def _act(self, answer: bytes | None) -> None:
        """One step of the dialogue, given the server's answer (None: at the start): send what it says next, or
        hand the connection over to the handshake once it is finished."""
        assert self.dialogue is not None and self.transport is not None
        try:
            out: bytes | None = next(self.dialogue) if answer is None else self.dialogue.send(answer)
        except StopIteration:
            out = None
        except Refused as exc:
            self._fail(exc)
            return
        if out == b"":
            return  # the next line of the same answer
        if self.buffer:  # the server spoke before its turn: what it sent answers nothing of ours
            self._fail(Refused(f"the server sent data out of turn, before our next step: {show(self.buffer)}"))
        elif out is not None:
            self.transport.write(out)
        else:
            transport, self.transport = self.transport, None
            transport.set_protocol(self.then)
            self.then.connection_made(transport)

    def _fail(self, exc: BaseException) -> None:
        if not self.done.done():
            self.done.set_exception(exc)
