"""`tls` check: a TLS handshake with a machine's port, judging the certificate it shows: trusted for the name asked
for (`verify`), and how long it stays valid (`warning`/`critical`: durations of validity left). With `starttls`, the
connection is first upgraded in the plain-text way of its protocol (SMTP, IMAP, PostgreSQL)."""

from __future__ import annotations

import asyncio
import math
import ssl
import time
from pathlib import Path
from typing import cast

from pydantic import field_validator, model_validator

from .._neterrors import describe
from ..durations import DAY, YEAR, parse_duration
from ..results import CheckResult, PerfDatum, Status
from ..targets import Target
from . import _cafile, _x509
from ._cafile import CaContexts
from ._ports import port_number, port_option
from ._starttls import Refused, Starttls, Upgrade
from ._tls import _load_trust_store
from .base import Check, CheckEnv, CheckOptions

#: OpenSSL's reasons for a first record that is not TLS at all (an HTTP or SSH server on the port, say)
_NOT_TLS = {
    "WRONG_VERSION_NUMBER",
    "RECORD_LAYER_FAILURE",
    "PACKET_LENGTH_TOO_LONG",
    "HTTP_REQUEST",
    "UNKNOWN_PROTOCOL",
}


def _days(value: object, what: str) -> float:
    return parse_duration(value, at_most=2 * YEAR, what=what)


class TlsConfig(CheckOptions):
    port: int | str = 443
    warning: float = 21 * DAY  # validity left below which the check is WARNING
    critical: float = 7 * DAY
    verify: bool = True  # the chain against the trust store (or ca_file), and the name
    server_name: str = "{host}"  # sent as SNI and verified; an IP address is matched against the IP names
    ca_file: str | None = None  # PEM bundle of the CAs to trust instead of the system's (relative: to the config)
    starttls: Starttls | None = None  # the plain-text upgrade to TLS first: smtp, imap or postgres

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, v: object) -> int | str:
        return port_option(v, "443 or 8443")

    @field_validator("warning", mode="before")
    @classmethod
    def _warning(cls, v: object) -> float:
        return _days(v, "warning")

    @field_validator("critical", mode="before")
    @classmethod
    def _critical(cls, v: object) -> float:
        return _days(v, "critical")

    @field_validator("server_name")
    @classmethod
    def _server_name(cls, v: str) -> str:
        if not v.strip() or any(c.isspace() for c in v):
            raise ValueError(f"expected a host name like web.example.com (or '{{host}}'), got {v!r}")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TlsConfig:
        if self.warning < self.critical:
            raise ValueError(
                f"warning ({_show_days(self.warning)}) is shorter than critical ({_show_days(self.critical)}): "
                f"warning must be at least critical; raise warning to {_show_days(self.critical)} or more, "
                "or lower critical"
            )
        if self.ca_file is not None and not self.verify:
            raise ValueError("ca_file is used only to verify certificates: set verify: true, or remove ca_file")
        return self


class TlsCheck(Check[TlsConfig]):
    kind = "tls"
    Config = TlsConfig
    timeout_status = Status.CRITICAL
    uses_socket = True

    @classmethod
    def preflight(cls, options: CheckOptions, env: CheckEnv) -> list[tuple[tuple[str | int, ...], str]]:
        assert isinstance(options, TlsConfig)
        return _cafile.preflight(options.ca_file, env.base_dir)

    def __init__(self, config: TlsConfig, target: Target, *, env: CheckEnv) -> None:
        super().__init__(config, target, env=env)
        # What every run needs is worked out once per (check, machine).
        self._port = port_number(config.port, "443 or 8443")
        self._host = target.host
        if not self._host:
            raise ValueError("the machine has no address to connect to")
        self._name = config.server_name
        try:
            self._name.encode("idna")  # what the handshake sends as SNI
        except UnicodeError as exc:
            raise ValueError(f"server_name {self._name!r} is not a host name ({exc})") from None
        self._ca_file = _cafile.ca_path(config.ca_file, env.base_dir) if config.ca_file else None
        self._context = self._current_context()
        self._unverified = _contexts(env).get(False, None)
        self._perf_thresholds = (f"{config.warning / DAY:g}:", f"{config.critical / DAY:g}:")
        self._starttls = config.starttls
        self._via = f" (STARTTLS {config.starttls})" if config.starttls else ""
        self._last: tuple[bytes, _x509.Certificate] | None = None

    async def run(self) -> CheckResult:
        started = time.perf_counter()
        if self._ca_file is not None:
            try:
                self._context = self._current_context()  # a CA file replaced since: its new CAs
            except ValueError as exc:  # gone or broken since: the check's own config fails, not the machine
                return CheckResult.unknown(str(exc))
        try:
            obj = await _handshake(self._host, self._port, self._context, self._name, self._starttls)
        except ssl.SSLCertVerificationError as exc:
            return await self._rejected(exc, time.perf_counter() - started)
        except (OSError, _NotTls, Refused) as exc:  # ssl.SSLError is an OSError
            return CheckResult.critical(f"{self._where()}: {_reason(exc)}")
        elapsed = time.perf_counter() - started
        der = obj.getpeercert(binary_form=True)
        if der is None:
            return CheckResult.critical(f"{self._where()}: the server showed no certificate")
        cert = self._read(der)
        if cert is None:
            return CheckResult.unknown(f"{self._where()}: the server's certificate could not be read")
        return self._judge(cert, f"{obj.version()} {(obj.cipher() or ('?',))[0]}{self._via}", elapsed)

    def _current_context(self) -> ssl.SSLContext:
        try:
            return _contexts(self.env).get(self.config.verify, self._ca_file)
        except OSError as exc:  # a ca_file gone or broken since validation: said by every run
            raise ValueError(_cafile.ca_problem(self._ca_file, exc) if self._ca_file else describe(exc)) from None

    def _where(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"TLS {host}:{self._port}"

    def _read(self, der: bytes) -> _x509.Certificate | None:
        if self._last is not None and self._last[0] == der:
            return self._last[1]  # the same certificate as last time: already read
        try:
            cert = _x509.parse(der)
        except _x509.BadCertificate:
            return None
        self._last = (der, cert)
        return cert

    def _judge(self, cert: _x509.Certificate, session: str, elapsed: float) -> CheckResult:
        cfg = self.config
        left = cert.not_after - time.time()
        until = time.strftime("%Y-%m-%d", time.gmtime(cert.not_after))
        perf = (
            PerfDatum("days_left", round(left / DAY, 2), "", *self._perf_thresholds),
            PerfDatum("time", round(elapsed, 6), "s"),
        )
        what = f"certificate for {self._name}"
        if cert.not_before > time.time():  # seen without verification: a clock or a deployment gone wrong
            since = time.strftime("%Y-%m-%d %H:%M", time.gmtime(cert.not_before))
            return CheckResult.critical(f"{what} is not valid yet: its validity starts {since} UTC", perf)
        if left <= 0:
            return CheckResult.critical(f"{what} expired {_span(-left)} ago ({until})", perf)
        text = f"{what} valid {_span(left)} (until {until})"
        if left < cfg.critical:
            return CheckResult.critical(f"{text}, less than critical {_show_days(cfg.critical)}; {session}", perf)
        if left < cfg.warning:
            return CheckResult.warning(f"{text}, less than warning {_show_days(cfg.warning)}; {session}", perf)
        return CheckResult.ok(f"{text}, {session}", perf)

    async def _rejected(self, exc: ssl.SSLCertVerificationError, elapsed: float) -> CheckResult:
        """Why verification failed, in the words of the certificate. OpenSSL's reason alone does not say what the
        certificate is for or how long ago it expired, and a failed handshake keeps no certificate: a second,
        unverified handshake reads it, only in this failure case."""
        reason = str(exc.verify_message or exc.reason)
        what = f"certificate for {self._name}"
        cert = None
        left = self.time_left() - 0.05  # the verdict is said within the timeout, with or without the details
        if left > 2 * elapsed:
            try:
                async with asyncio.timeout(left if math.isfinite(left) else None):
                    obj = await _handshake(self._host, self._port, self._unverified, self._name, self._starttls)
                der = obj.getpeercert(binary_form=True)
                cert = self._read(der) if der else None
            except (OSError, _NotTls, Refused, TimeoutError):
                cert = None
        if cert is None:
            return CheckResult.critical(f"{what} rejected: {reason}")
        now = time.time()
        if cert.not_after <= now or cert.not_before > now:
            return self._judge(cert, "", elapsed)  # its dates are the reason: say how long ago, or until when
        if reason.lower().startswith(("hostname mismatch", "ip address mismatch")):
            covers = ", ".join(cert.names) or (f"CN={cert.subject} (and no subject alternative names)")
            return CheckResult.critical(f"{what} rejected: host name mismatch: the certificate is for {covers}")
        issuer = f" (issued by {cert.issuer!r})" if cert.issuer and cert.issuer != cert.subject else ""
        return CheckResult.critical(f"{what} rejected: {reason}{issuer}")


# -- the handshake --------------------------------------------------------------------------------------------
class _NotTls(Exception):
    """The server answered with something that is not TLS."""


class _Handshake(asyncio.Protocol):
    """Drives a client handshake over a memory BIO: no buffering, flow control or shutdown, which the check
    does not need (it closes the connection as soon as the handshake is done)."""

    def __init__(self, obj: ssl.SSLObject, incoming: ssl.MemoryBIO, *, outgoing: ssl.MemoryBIO) -> None:
        self.obj, self.incoming, self.outgoing = obj, incoming, outgoing
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.first = b""  # what the server sent first, shown when it is not TLS

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's are not asyncio.Transport subclasses
        self._step()

    def data_received(self, data: bytes) -> None:
        if not self.first:
            self.first = data[:40]
        self.incoming.write(data)
        self._step()

    def eof_received(self) -> bool:
        self.incoming.write_eof()
        self._step()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionResetError(0, "connection closed during the TLS handshake"))

    def _step(self) -> None:
        if self.done.done():
            return
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
        except ssl.SSLError as exc:
            if exc.reason in _NOT_TLS and self.first[:1] not in (b"\x15", b"\x16"):
                self.done.set_exception(_NotTls(self.first))
            else:
                self._flush()  # the alert that tells the server why
                self.done.set_exception(exc)
        else:
            self._flush()
            self.done.set_result(None)

    def _flush(self) -> None:
        pending = self.outgoing.read()
        if pending and self.transport is not None:
            self.transport.write(pending)


async def _handshake(
    host: str, port: int, context: ssl.SSLContext, name: str, starttls: Starttls | None = None
) -> ssl.SSLObject:
    """The SSLObject of a completed handshake with host:port, after the `starttls` upgrade when there is one (the
    connection is closed by then)."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = context.wrap_bio(incoming, outgoing, server_hostname=name)
    protocol = _Handshake(obj, incoming, outgoing=outgoing)
    first: asyncio.Protocol = protocol if starttls is None else Upgrade(starttls, protocol, done=protocol.done)
    transport, _ = await asyncio.get_running_loop().create_connection(lambda: first, host, port)
    try:
        await protocol.done
    finally:
        transport.abort()  # nothing to say after the handshake; no lingering FIN exchange either
    return obj


def _reason(exc: BaseException) -> str:
    if isinstance(exc, Refused):
        return str(exc)
    if isinstance(exc, _NotTls):
        got = exc.args[0]
        return f"the server does not speak TLS on this port (it sent {got!r})" if got else "no TLS on this port"
    if isinstance(exc, ssl.SSLEOFError):
        return "the server closed the connection during the TLS handshake"
    if isinstance(exc, ssl.SSLError):
        return f"TLS handshake failed: {str(exc.reason or exc).replace('_', ' ').lower()}"
    return describe(exc)


# -- contexts ------------------------------------------------------------------------------------------------
def _contexts(env: CheckEnv) -> CaContexts:
    """The daemon's contexts for tls checks, one per (verify, ca_file)."""
    held = env.shared.get(CaContexts)
    if not isinstance(held, CaContexts):
        held = env.shared[CaContexts] = CaContexts(_make_context, limit=env.max_idle_hosts)
    return held


def _make_context(verify: bool, ca_file: Path | None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_TICKET
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif ca_file is not None:
        ctx.load_verify_locations(cafile=str(ca_file))
    else:
        _load_trust_store(ctx)
    return ctx


def _span(seconds: float) -> str:
    """Whole days (a day and more), else hours, minutes: how a reader counts a certificate's life."""
    if seconds >= DAY:
        days = math.floor(seconds / DAY)
        return f"{days} day" if days == 1 else f"{days} days"
    if seconds >= 3600:
        hours = math.floor(seconds / 3600)
        return f"{hours} hour" if hours == 1 else f"{hours} hours"
    return f"{max(1, math.floor(seconds / 60))} min"


def _show_days(seconds: float) -> str:
    days = seconds / DAY
    return f"{days:g}d" if days >= 1 or seconds == 0 else f"{seconds / 3600:g}h"
