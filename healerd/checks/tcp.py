"""`tcp` check: connect, optionally send a payload and expect a substring in the reply."""

from __future__ import annotations

import asyncio
import time

from .._neterrors import describe
from ..durations import format_duration
from ..results import CheckResult, PerfDatum, Status
from .base import Check, CheckOptions


class TcpConfig(CheckOptions):
    address: str = "{address}"
    send: str | None = None
    expect: str | None = None
    max_read: int = 4096


class TcpCheck(Check[TcpConfig]):
    kind = "tcp"
    Config = TcpConfig
    timeout_status = Status.CRITICAL
    uses_socket = True

    async def run(self) -> CheckResult:
        cfg = self.config
        host, _, port = cfg.address.rpartition(":")
        if not port.isdigit():
            return CheckResult.unknown(f"address {cfg.address!r} is not host:port")
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
        except OSError as exc:
            return CheckResult.critical(f"connect {cfg.address}: {describe(exc)}")
        try:
            if cfg.send is not None:
                writer.write(cfg.send.encode())
                await writer.drain()
            if cfg.expect is not None:
                data = b""
                want = cfg.expect.encode()
                while want not in data and len(data) < cfg.max_read:
                    chunk = await reader.read(cfg.max_read - len(data))
                    if not chunk:
                        break
                    data += chunk
                if want not in data:
                    return CheckResult.critical(f"{cfg.address}: reply lacks {cfg.expect!r} (got {data[:80]!r})")
        except OSError as exc:
            return CheckResult.critical(f"{cfg.address}: {describe(exc)}")
        finally:
            writer.close()
        elapsed = time.perf_counter() - started
        return CheckResult.ok(
            f"TCP {cfg.address} answered in {format_duration(elapsed)}",
            (PerfDatum("time", round(elapsed, 6), "s"),),
        )
