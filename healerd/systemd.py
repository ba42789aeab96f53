"""The systemd notify protocol (sd_notify) without a dependency: READY, RELOADING, STOPPING, STATUS,
WATCHDOG over the datagram socket in $NOTIFY_SOCKET (a path, or '@' for an abstract socket).

A no-op when not started by systemd.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("healerd.systemd")


class Notifier:
    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET") or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        self.watchdog_interval: float | None = None
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog_interval = int(usec) / 1_000_000 / 2  # ping at half the timeout
        self._sock: socket.socket | None = None
        self._last_status = ""

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *lines: str) -> bool:
        """Send one notification (several KEY=VALUE lines); False when not under systemd or it failed."""
        if self.address is None:
            return False
        addr = self.address
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto("\n".join(lines).encode(), addr)
            return True
        except OSError as exc:
            log.warning("cannot notify systemd", socket=self.address, error=str(exc))
            return False

    def ready(self, status: str | None = None) -> None:
        self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.send("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def stopping(self) -> None:
        self.send("STOPPING=1", "STATUS=stopping")

    def status(self, text: str) -> None:
        text = text.replace("\n", " ")[:400]
        if text != self._last_status:
            self._last_status = text
            self.send(f"STATUS={text}")

    async def watchdog(self, summary: Callable[[], str]) -> None:
        """Ping the watchdog from the event loop itself, so a blocked loop stops the pings."""
        interval = self.watchdog_interval
        while True:
            self.status(summary())
            if interval is not None:
                self.send("WATCHDOG=1")
            await asyncio.sleep(interval if interval is not None else 5.0)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
