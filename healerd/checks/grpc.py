"""`grpc` check: the standard health protocol (`grpc.health.v1.Health/Check`) against the machine's host.

SERVING is OK; anything else the server says (NOT_SERVING, a service it does not know, no health service, any
other gRPC status) is CRITICAL with what it said. One kept-alive HTTP/2 connection per (host, port, TLS
settings) serves every check of the daemon (grpclib, on the daemon's own event loop: no threads). A run that
fails without a gRPC answer drops its connection, so the next run connects afresh and reports the server as
it is then, never a failure remembered from before.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import Any

from grpclib.client import Channel
from grpclib.config import Configuration
from grpclib.const import Cardinality
from grpclib.const import Status as GrpcStatus
from grpclib.encoding.base import CodecBase
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError
from pydantic import field_validator, model_validator

from .._neterrors import describe
from ..durations import format_duration
from ..results import CheckResult, PerfDatum, Status
from ..targets import Target
from ._tls import client_context
from .base import Check, CheckEnv, CheckOptions

HEALTH_CHECK = "/grpc.health.v1.Health/Check"
#: HealthCheckResponse.ServingStatus
_SERVING_STATUS = {0: "UNKNOWN", 1: "SERVING", 2: "NOT_SERVING", 3: "SERVICE_UNKNOWN"}
_PORT_HINT = "a port between 1 and 65535 (gRPC servers often listen on 50051), or a template such as '{port}'"


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
        if isinstance(v, str) and "{" in v:
            return v  # rendered per machine, checked when the check is built
        return _port_number(v)

    @model_validator(mode="after")
    def _tls_settings(self) -> GrpcConfig:
        if not self.tls and (self.ca_file is not None or self.server_name is not None):
            set_ = "ca_file" if self.ca_file is not None else "server_name"
            raise ValueError(f"{set_} is set but tls is false: add `tls: true`, or remove {set_}")
        if self.ca_file is not None and not self.tls_verify:
            raise ValueError("ca_file is set but tls_verify is false: a CA is only used to verify; remove one of them")
        return self


def _port_number(v: object) -> int:
    if isinstance(v, bool) or not isinstance(v, int | str) or not str(v).strip().isdigit():
        raise ValueError(f"expected {_PORT_HINT}; got {v!r}")
    port = int(v)
    if not 1 <= port <= 65535:
        raise ValueError(f"expected {_PORT_HINT}; got {port}")
    return port


class _Raw(CodecBase):
    """Messages go through as bytes: the two health messages are encoded and read here, without protobuf."""

    __content_subtype__ = "proto"

    def encode(self, message: Any, message_type: Any) -> bytes:
        return message  # type: ignore[no-any-return]

    def decode(self, data: bytes, message_type: Any) -> bytes:
        return data


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


ChannelKey = tuple[str, int, bool, bool, str | None, str | None]


class GrpcChannels:
    """The daemon's kept-alive gRPC connections, one per (host, port, tls, tls_verify, server_name, ca_file),
    and the TLS contexts they use; closed with the CheckEnv."""

    def __init__(self) -> None:
        self._channels: dict[ChannelKey, Channel] = {}
        self._contexts: dict[tuple[bool, str | None], ssl.SSLContext] = {}
        self._codec = _Raw()

    def get(self, key: ChannelKey) -> Channel:
        channel = self._channels.get(key)
        if channel is None:
            host, port, tls, verify, server_name, ca_file = key
            channel = self._channels[key] = Channel(
                host,
                port,
                codec=self._codec,
                ssl=self._context(verify, ca_file) if tls else None,
                config=Configuration(ssl_target_name_override=server_name),
            )
        return channel

    def drop(self, key: ChannelKey, channel: Channel) -> None:
        """Forget a connection that failed (the next run connects afresh)."""
        channel.close()
        if self._channels.get(key) is channel:
            del self._channels[key]

    def _context(self, verify: bool, ca_file: str | None) -> ssl.SSLContext:
        ctx = self._contexts.get((verify, ca_file))
        if ctx is None:
            # sessions resumed when a connection is made again; ALPN h2 as gRPC requires
            ctx = client_context(verify and ca_file is None)
            if ca_file is not None:
                ctx.verify_mode = ssl.CERT_REQUIRED
                ctx.check_hostname = True
                ctx.load_verify_locations(cafile=ca_file)
            ctx.set_alpn_protocols(("h2",))
            self._contexts[(verify, ca_file)] = ctx
        return ctx

    def __len__(self) -> int:
        return len(self._channels)

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()


class GrpcCheck(Check[GrpcConfig]):
    kind = "grpc"
    Config = GrpcConfig
    timeout_status = Status.CRITICAL
    uses_socket = True

    def __init__(self, config: GrpcConfig, target: Target, *, env: CheckEnv) -> None:
        super().__init__(config, target, env=env)
        port = _port_number(config.port)
        ca_file = str(env.base_dir / config.ca_file) if config.ca_file is not None else None  # absolute stays
        self._key: ChannelKey = (target.host, port, config.tls, config.tls_verify, config.server_name, ca_file)
        self._request = health_request(config.service)
        self._where = f"{'[' + target.host + ']' if ':' in target.host else target.host}:{port}"
        self._label = f" ({config.service})" if config.service else ""
        channels = env.shared.get(GrpcChannels)
        if not isinstance(channels, GrpcChannels):
            channels = env.shared[GrpcChannels] = GrpcChannels()
        self._channels = channels

    async def run(self) -> CheckResult:
        channel = self._channels.get(self._key)
        started = time.perf_counter()
        try:
            async with channel.request(HEALTH_CHECK, Cardinality.UNARY_UNARY, bytes, bytes) as stream:
                await stream.send_message(self._request, end=True)
                reply = await stream.recv_message()
                await stream.recv_trailing_metadata()
        except GRPCError as exc:
            return self._refused(exc, time.perf_counter() - started)
        except (OSError, StreamTerminatedError, ProtocolError) as exc:  # ssl.SSLError is an OSError
            self._channels.drop(self._key, channel)
            return CheckResult.critical(f"gRPC {self._where}: {_describe(exc, self.config.tls)}")
        except asyncio.CancelledError:  # the run's timeout: the server may be frozen; connect afresh next time
            self._channels.drop(self._key, channel)
            raise
        elapsed = time.perf_counter() - started
        perf = (PerfDatum("time", round(elapsed, 6), "s"),)
        status = serving_status(reply or b"")
        took = f"{elapsed * 1000:.1f}ms" if elapsed < 0.01 else format_duration(elapsed)  # loopback: 0.4ms, not 0ms
        if status == 1:
            return CheckResult.ok(f"SERVING{self._label} in {took}", perf)
        if status == 3:
            return CheckResult.critical(
                f"the server does not know the service {self.config.service!r} (SERVICE_UNKNOWN)", perf
            )
        if status is None:
            return CheckResult.critical(f"the health answer is not a HealthCheckResponse (got {(reply or b'')[:40]!r})")
        name = _SERVING_STATUS.get(status, f"status {status}")
        return CheckResult.critical(f"{name}{self._label} in {took}", perf)

    def _refused(self, exc: GRPCError, elapsed: float) -> CheckResult:
        perf = (PerfDatum("time", round(elapsed, 6), "s"),)
        if exc.status is GrpcStatus.NOT_FOUND:
            return CheckResult.critical(
                f"the server does not know the service {self.config.service!r} (NOT_FOUND)", perf
            )
        if exc.status is GrpcStatus.UNIMPLEMENTED:
            return CheckResult.critical("the server does not implement grpc.health.v1.Health (UNIMPLEMENTED)", perf)
        detail = f": {exc.message}" if exc.message else ""
        return CheckResult.critical(f"gRPC status {exc.status.name}{detail}", perf)

    @classmethod
    def preflight(cls, options: Any, env: CheckEnv) -> list[tuple[tuple[str | int, ...], str]]:
        ca_file = getattr(options, "ca_file", None)
        if ca_file is None:
            return []
        path = env.base_dir / ca_file  # an absolute path stays as it is
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            return [(("ca_file",), f"cannot load CA file {str(path)!r} ({describe(exc)}); give a readable PEM file")]
        return []


def _describe(exc: BaseException, tls: bool) -> str:
    if isinstance(exc, StreamTerminatedError | ProtocolError):
        # what a server that is no gRPC server does, and a TLS one spoken to in plaintext
        return "connection closed without a gRPC answer (" + (
            "not a gRPC server)" if tls else "not a gRPC server, or one that wants TLS: `tls: true`)"
        )
    return describe(exc)
