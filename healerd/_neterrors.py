"""What a failed network call found, in the words an on-call engineer reads: refused, reset, DNS, TLS."""

from __future__ import annotations

import errno
import socket
import ssl


class InvalidResponse(Exception):
    """The peer answered, but not with HTTP."""


class Disconnected(Exception):
    """The connection closed before any byte of an answer."""


class BodyCut(Exception):
    """The connection closed in the middle of the body."""


class LookupFailed(OSError):
    """The host name did not resolve."""

    def __init__(self, host: str, reason: str) -> None:
        super().__init__(f"DNS lookup of {host} failed: {reason}")
        self.host, self.reason = host, reason


_ERRNO = {
    errno.ECONNREFUSED: "connection refused",
    errno.ECONNRESET: "connection reset by peer",
    errno.EPIPE: "connection closed by peer",
    errno.EHOSTUNREACH: "host unreachable",
    errno.ENETUNREACH: "network unreachable",
    errno.ETIMEDOUT: "connection timed out",
    errno.ECONNABORTED: "connection aborted",
}


def _os_reason(exc: OSError) -> str:
    if exc.errno in _ERRNO:
        return _ERRNO[exc.errno]
    return exc.strerror or str(exc) or type(exc).__name__


def describe(exc: BaseException) -> str:
    """A short reason for a network failure (the check's message says what was tried)."""
    if isinstance(exc, LookupFailed):
        return str(exc)
    if isinstance(exc, InvalidResponse):
        return f"invalid HTTP response: {exc}"
    if isinstance(exc, Disconnected):
        return "connection closed without an answer (server disconnected)"
    if isinstance(exc, BodyCut):
        return f"the response body was cut off: {exc}"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate rejected: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed: {exc.strerror or exc}"
    if isinstance(exc, OSError):
        if isinstance(exc, ConnectionResetError):
            return "connection reset by peer"
        return _os_reason(exc)
    return f"{type(exc).__name__}: {exc}"
