"""TLS for HTTP checks: one client context per verification mode for the whole daemon, and TLS session
resumption, so a check that opens a fresh connection does an abbreviated handshake instead of a full one.

- The unverified context (`tls_verify: false`) loads no trust store at all: with the default verify paths
  OpenSSL still builds a chain on every handshake and lists the certificate folder to do it.
- The verified one loads the distribution's CA bundle file once (the folder of hashed links only when
  SSL_CERT_DIR points at one), so a handshake never goes to the disk.
- Sessions (TLS 1.3 tickets, TLS 1.2 tickets or ids) are kept per server name (the host of the URL, an
  address for most fleets), the newest one each, at most `max_sessions` of them. A server that does not
  accept a session just does a full handshake.
"""

from __future__ import annotations

import os
import ssl
from collections import OrderedDict
from typing import Any

DEFAULT_MAX_SESSIONS = 65536


class _ResumingObject(ssl.SSLObject):
    """An SSLObject that hands the session of its connection back to its context once it has one."""

    _healerd_sessions: _Sessions | None = None
    _healerd_key: str | None = None

    def read(self, len: int = 1024, buffer: Any = None) -> Any:
        data = super().read(len, buffer)
        # TLS 1.3 sends its tickets after the handshake, with the first data: look once, then stop looking
        sessions = self._healerd_sessions
        if sessions is not None and self._healerd_key is not None:
            session = self.session
            if session is not None and (session.has_ticket or (session.id and self.version() != "TLSv1.3")):
                sessions.put(self._healerd_key, session)
                self._healerd_sessions = None
        return data


class _Sessions:
    def __init__(self, limit: int) -> None:
        self.limit = max(1, limit)
        self._by_key: OrderedDict[str, ssl.SSLSession] = OrderedDict()
        self.resumed = 0

    def get(self, key: str) -> ssl.SSLSession | None:
        return self._by_key.get(key)

    def put(self, key: str, session: ssl.SSLSession) -> None:
        self._by_key[key] = session
        self._by_key.move_to_end(key)
        while len(self._by_key) > self.limit:
            self._by_key.popitem(last=False)

    def __len__(self) -> int:
        return len(self._by_key)


class ResumingContext(ssl.SSLContext):
    """A client SSLContext that offers the last session of a server when connecting to it again."""

    sessions: _Sessions

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        key = server_hostname.decode() if isinstance(server_hostname, bytes) else server_hostname
        if session is None and key is not None:
            session = self.sessions.get(key)
        try:
            obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, session)
        except ValueError:  # a session this context cannot use: connect without it
            obj = super().wrap_bio(incoming, outgoing, server_side, server_hostname, None)
        if isinstance(obj, _ResumingObject) and key is not None:
            obj._healerd_sessions = self.sessions
            obj._healerd_key = key
        return obj


def client_context(verify: bool, max_sessions: int = DEFAULT_MAX_SESSIONS) -> ResumingContext:
    """A client context for HTTP checks (ALPN http/1.1), verifying certificates and host names or not."""
    ctx = ResumingContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.sslobject_class = _ResumingObject
    ctx.sessions = _Sessions(max_sessions)
    ctx.options |= ssl.OP_NO_COMPRESSION
    if verify:
        _load_trust_store(ctx)
    else:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(("http/1.1",))
    return ctx


def _load_trust_store(ctx: ssl.SSLContext) -> None:
    paths = ssl.get_default_verify_paths()
    if os.environ.get(paths.openssl_capath_env) or not (paths.cafile and os.path.isfile(paths.cafile)):
        ctx.load_default_certs()  # a certificate folder was asked for, or there is no bundle file
    else:
        ctx.load_verify_locations(cafile=paths.cafile)
