"""What a failed network call found, in the words an on-call engineer reads: refused, reset, DNS, TLS."""

from __future__ import annotations

import errno
import socket
import ssl

import aiohttp

from .checks._http1 import BodyCut, Disconnected, InvalidResponse, LookupFailed

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
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate rejected: {exc.certificate_error}"
    if isinstance(exc, aiohttp.ClientConnectorSSLError | aiohttp.ClientSSLError):
        return f"TLS handshake failed: {exc.os_error}" if hasattr(exc, "os_error") else f"TLS failed: {exc}"
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return f"DNS lookup of {exc.host} failed: {_os_reason(exc.os_error)}"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return _os_reason(exc.os_error)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "connection closed without an answer (server disconnected)"
    if isinstance(exc, aiohttp.ClientConnectionResetError):
        return "connection reset by peer"
    if isinstance(exc, aiohttp.ClientResponseError):
        return f"invalid HTTP response: {exc.message}"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return f"the response body was cut off: {exc}"
    if isinstance(exc, aiohttp.ClientOSError):
        return _os_reason(exc)
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, socket.gaierror):
        return f"DNS lookup failed: {exc.strerror or exc}"
    if isinstance(exc, OSError):
        if isinstance(exc, ConnectionResetError):
            return "connection reset by peer"
        return _os_reason(exc)
    return f"{type(exc).__name__}: {exc}"
