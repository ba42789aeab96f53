"""`grpc` check: the standard health protocol (`grpc.health.v1.Health/Check`) against the machine's host.

SERVING is OK; anything else the server says (NOT_SERVING, a service it does not know, no health service, any
other gRPC status) is CRITICAL with what it said. One kept-alive HTTP/2 connection per (host, port, TLS
settings) serves every check of the daemon (the lean client of `_h2`, on the daemon's own event loop: no
threads). A run that fails touches no other run on that connection; a connection found dead, or silent through a
run's whole timeout, is replaced at the next run, which reports the server as it is then.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from pydantic import field_validator, model_validator

from .._neterrors import describe
from .._version import __version__
from ..durations import format_duration
from ..results import CheckResult, PerfDatum, Status
from ..targets import Target
from . import _h2, _h2frames
from ._cafile import CaContexts, ca_path, ca_problem, preflight
from ._http1 import IDLE_TIMEOUT
from ._ports import port_number, port_option
from ._tls import client_context
from .base import Check, CheckEnv, CheckOptions

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
USER_AGENT = f"healerd/{__version__}"
#: HealthCheckResponse.ServingStatus
_SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
#: grpc-status codes
_GRPC_STATUS = (
    "OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND", "ALREADY_EXISTS",
    "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
    "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
)  # fmt: skip
#: the gRPC status of an HTTP answer other than 200 (gRPC's http-grpc-status-mapping)
_HTTP_TO_GRPC = {400: "INTERNAL", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED", 404: "UNIMPLEMENTED",
                 429: "UNAVAILABLE", 502: "UNAVAILABLE", 503: "UNAVAILABLE", 504: "UNAVAILABLE"}  # fmt: skip
_PORT_EXAMPLE = "50051 (where gRPC servers often listen)"


class GrpcConfig(CheckOptions):
    port: int | str = 50051
    #: the service whose health is asked; "" asks about the server as a whole
    service: str = ""
    tls: bool = False
    tls_verify: bool = True
    #: the name sent in TLS (SNI) and checked against the certificate; default: the machine's host
    server_name: str | None = None
    #: a PEM file of the CAs to trust instead of the system's (a private CA)
    ca_file: str | None = None

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, v: object) -> int | str:
        return port_option(v, _PORT_EXAMPLE)

    @model_validator(mode="after")
    def _tls_settings(self) -> GrpcConfig:
        if not self.tls and (self.ca_file is not None or self.server_name is not None):
            set_ = "ca_file" if self.ca_file is not None else "server_name"
            raise ValueError(f"{set_} is set but tls is false: add `tls: true`, or remove {set_}")
        if self.ca_file is not None and not self.tls_verify:
            raise ValueError("ca_file is set but tls_verify is false: a CA is only used to verify; remove one of them")
        return self


def health_request(service: str) -> bytes:
    """HealthCheckRequest{service}: field 1, a string (absent when empty)."""
    raw = service.encode()
    return b"\x0a" + _varint(len(raw)) + raw if raw else b""


def serving_status(reply: bytes) -> int | None:
    """HealthCheckResponse's status (field 1, a varint enum; 0 when absent), None if the bytes are no message."""
    status, i, n = 0, 0, len(reply)
    try:
        while i < n:
            tag, i = _read_varint(reply, i)
            wire = tag & 7
            if wire == 0:
                value, i = _read_varint(reply, i)
                if tag >> 3 == 1:
                    status = value
            elif wire == 2:
                size, i = _read_varint(reply, i)
                i += size
            elif wire in (1, 5):
                i += 8 if wire == 1 else 4
            else:
                return None
    except IndexError:
        return None
    return status if i == n else None


def _varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _read_varint(data: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[i]
        i += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, i
        shift += 7


ChannelKey = tuple[str, int, bool, bool, str | None, Path | None]


class GrpcChannels:
    """The daemon's kept-alive gRPC connections, one per (host, port, tls, tls_verify, server_name, ca_file),
    and the TLS contexts they use; closed with the CheckEnv.

    At most `max_channels` are kept, the least recently used closed first, and one unused for `idle_timeout`
    is closed (a machine replaced, a check moved to another node or removed: a destroyed VM sends no RST). A
    connection still carrying a call is left to finish it.
    """

    def __init__(self, max_channels: int, *, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.max_channels = max(1, max_channels)
        self.idle_timeout = idle_timeout
        #: channel, its last use (monotonic), its TLS context; in the order of last use, the oldest first
        self._channels: dict[ChannelKey, tuple[_h2.Channel, float, ssl.SSLContext | None]] = {}
        self._draining: list[_h2.Channel] = []  # given up while a call was in flight: closed once it is done
        self._contexts = CaContexts(_make_context, limit=self.max_channels)
        self._sweeping: asyncio.TimerHandle | None = None

    def get(self, key: ChannelKey) -> _h2.Channel:
        """The channel for `key`; OSError (ssl.SSLError included) when its CA file cannot be read."""
        now = time.monotonic()
        host, port, tls, verify, server_name, ca_file = key
        context = self._contexts.get(verify, ca_file) if tls else None  # raises before anything is changed
        kept = self._channels.pop(key, None)
        if kept is not None and kept[2] is context:
            channel = kept[0]
        else:
            if kept is not None:  # the CA file was replaced: connect again, verifying with what it holds now
                self._give_up(kept[0])
            while len(self._channels) >= self.max_channels:
                self._give_up(self._channels.pop(next(iter(self._channels)))[0])
            channel = _h2.Channel(host, port, ssl_context=context, server_name=server_name)
        self._channels[key] = (channel, now, context)
        if self._sweeping is None:
            self._sweeping = asyncio.get_running_loop().call_later(self.idle_timeout, self._sweep)
        return channel

    def _give_up(self, channel: _h2.Channel) -> None:
        if channel.busy:
            self._draining.append(channel)
        else:
            channel.close()

    def _sweep(self) -> None:
        """Close the channels unused for idle_timeout, walking from the least recently used to the first recent."""
        self._sweeping = None
        now = time.monotonic()
        cutoff = now - self.idle_timeout
        stale: list[ChannelKey] = []
        for key, (channel, used, _) in self._channels.items():
            if used >= cutoff:
                break
            if not channel.busy:
                stale.append(key)
        for key in stale:
            self._channels.pop(key)[0].close()
        draining, self._draining = self._draining, []
        for channel in draining:
            if channel.busy:
                self._draining.append(channel)
            else:
                channel.close()
        if self._channels or self._draining:
            oldest = next(iter(self._channels.values()))[1] if self._channels else now
            wait = max(oldest + self.idle_timeout - now, self.idle_timeout / 10)
            self._sweeping = asyncio.get_running_loop().call_later(wait, self._sweep)

    def __len__(self) -> int:
        return len(self._channels)

    def close(self) -> None:
        if self._sweeping is not None:
            self._sweeping.cancel()
            self._sweeping = None
        for channel, _, _ in self._channels.values():
            channel.close()
        for channel in self._draining:
            channel.close()
        self._channels.clear()
        self._draining.clear()
        self._contexts.clear()


def _make_context(verify: bool, ca_file: Path | None) -> ssl.SSLContext:
    # sessions resumed when a connection is made again; ALPN h2 as gRPC requires
    ctx = client_context(verify and ca_file is None)
    if ca_file is not None:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.check_hostname = True
        ctx.load_verify_locations(cafile=str(ca_file))
    ctx.set_alpn_protocols(("h2",))
    return ctx


class GrpcCheck(Check[GrpcConfig]):
    kind = "grpc"
    Config = GrpcConfig
    timeout_status = Status.CRITICAL
    uses_socket = True

    def __init__(self, config: GrpcConfig, target: Target, *, env: CheckEnv) -> None:
        super().__init__(config, target, env=env)
        port = port_number(config.port, _PORT_EXAMPLE)
        ca_file = ca_path(config.ca_file, env.base_dir) if config.ca_file is not None else None
        self._key: ChannelKey = (target.host, port, config.tls, config.tls_verify, config.server_name, ca_file)
        self._where = f"{'[' + target.host + ']' if ':' in target.host else target.host}:{port}"
        message = health_request(config.service)
        self._request = _h2frames.Request(
            tls=config.tls,
            # the name the server is known by, as grpc-go sends with its TLS name override: a proxy routes by it
            authority=f"{config.server_name}:{port}" if config.server_name else self._where,
            path=HEALTH_CHECK,
            fields=(("content-type", "application/grpc"), ("te", "trailers"), ("user-agent", USER_AGENT)),
            body=b"\0" + len(message).to_bytes(4, "big") + message,  # not compressed, its length, the message
        )
        self._label = f" ({config.service})" if config.service else ""
        channels = env.shared.get(GrpcChannels)
        if not isinstance(channels, GrpcChannels):
            channels = env.shared[GrpcChannels] = GrpcChannels(env.max_idle_hosts)
        self._channels = channels

    async def run(self) -> CheckResult:
        try:
            channel = self._channels.get(self._key)
        except OSError as exc:  # the CA file, gone or no PEM since validation (ssl.SSLError is an OSError)
            assert self._key[5] is not None
            return CheckResult.unknown(ca_problem(self._key[5], exc) or describe(exc))
        started = time.perf_counter()
        try:
            reply = await channel.call(self._request)
        except _h2frames.CallFailed as exc:  # the call failed, not the connection
            return CheckResult.critical(f"gRPC {self._where}: {exc}")
        except (OSError, _h2frames.H2Error) as exc:  # ssl.SSLError is an OSError; the connection is closed already
            return CheckResult.critical(f"gRPC {self._where}: {_describe(exc, self.config.tls)}")
        elapsed = time.perf_counter() - started
        perf = (PerfDatum("time", round(elapsed, 6), "s"),)
        refused = _refusal(reply)
        if refused is not None:
            return self._refused(*refused, perf)
        framed = reply.body
        if framed and framed[0]:
            return CheckResult.critical("the health answer is compressed, though the check accepts no compression")
        message = framed[5 : 5 + int.from_bytes(framed[1:5], "big")]
        status = serving_status(message)
        took = f"{elapsed * 1000:.1f}ms" if elapsed < 0.01 else format_duration(elapsed)  # loopback: 0.4ms, not 0ms
        if status == 1:
            return CheckResult.ok(f"SERVING{self._label} in {took}", perf)
        if status == 3:
            return CheckResult.critical(
                f"the server does not know the service {self.config.service!r} (SERVICE_UNKNOWN)", perf
            )
        if status is None:
            return CheckResult.critical(f"the health answer is not a HealthCheckResponse (got {message[:40]!r})")
        name = _SERVING_STATUS.get(status, f"status {status}")
        return CheckResult.critical(f"{name}{self._label} in {took}", perf)

    def _refused(self, status: str, detail: str, perf: tuple[PerfDatum, ...]) -> CheckResult:
        if status == "NOT_FOUND":
            return CheckResult.critical(
                f"the server does not know the service {self.config.service!r} (NOT_FOUND)", perf
            )
        if status == "UNIMPLEMENTED":
            return CheckResult.critical("the server does not implement grpc.health.v1.Health (UNIMPLEMENTED)", perf)
        return CheckResult.critical(f"gRPC status {status}{': ' + detail if detail else ''}", perf)

    @classmethod
    def preflight(cls, options: Any, env: CheckEnv) -> list[tuple[tuple[str | int, ...], str]]:
        return preflight(getattr(options, "ca_file", None), env.base_dir)


def _refusal(reply: _h2frames.Reply) -> tuple[str, str] | None:
    """The gRPC status (its name) and message of an answer that is no OK, None for OK."""
    http_status = reply.headers.get(":status", "")
    if http_status != "200":
        return _HTTP_TO_GRPC.get(
            int(http_status) if http_status.isdigit() else 0, "UNKNOWN"
        ), f"HTTP status {http_status}"
    content_type = reply.headers.get("content-type")
    if content_type is None:
        return "UNKNOWN", "Missing content-type header"
    if content_type.partition(";")[0].strip() not in ("application/grpc", "application/grpc+proto"):
        return "UNKNOWN", f"Invalid content-type: {content_type!r}"
    code = reply.trailers.get("grpc-status")
    if code is None:
        return "UNKNOWN", "Missing grpc-status header"
    if not code.isdigit() or int(code) >= len(_GRPC_STATUS):
        return "UNKNOWN", f"Invalid grpc-status: {code!r}"
    if code == "0":
        return None
    return _GRPC_STATUS[int(code)], unquote(reply.trailers.get("grpc-message", ""), errors="replace")


def _describe(exc: BaseException, tls: bool) -> str:
    if isinstance(exc, _h2frames.NotHttp2) and exc.http1_status_line is not None:
        return f"the server answered in HTTP/1 ({exc.http1_status_line!r}), not HTTP/2: not a gRPC server"
    if isinstance(exc, _h2frames.NotHttp2 | _h2frames.Disconnected):
        # what a server that is no gRPC server does, and a TLS one spoken to in plaintext
        return "connection closed without a gRPC answer (" + (
            "not a gRPC server)" if tls else "not a gRPC server, or one that wants TLS: `tls: true`)"
        )
    if isinstance(exc, _h2frames.H2Error):
        return str(exc)
    return describe(exc)
