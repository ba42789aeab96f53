"""Debian's real HAProxy for the tests: `haproxy -D` on a config in a temporary folder, with an admin socket,
a frontend on a free loopback port and a backend `web` with a dynamic algorithm."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from conftest import free_port, require_binary


class Haproxy:
    """`haproxy -D` on a config in a temporary folder; `reload()` starts a new process with -sf, as
    `systemctl reload` does, which forgets every runtime change."""

    def __init__(
        self,
        folder: Path,
        servers: list[tuple[str, str]],
        level: str = "admin",
        extra: str = "",
        timeout_server: str = "5s",
    ) -> None:
        self.binary = require_binary("haproxy")
        self.folder = folder
        self.socket = str(folder / "admin.sock")
        self.port = free_port()
        self.pidfile = folder / "haproxy.pid"
        lines = "\n".join(f"    server {name} {addr} check inter 300ms rise 1 fall 1" for name, addr in servers)
        self.config = folder / "haproxy.cfg"
        self.config.write_text(
            f"""global
    stats socket {self.socket} mode 600 level {level}
defaults
    mode http
    timeout connect 1s
    timeout client 5s
    timeout server {timeout_server}
    retries 0
frontend fe
    bind 127.0.0.1:{self.port}
    default_backend web
backend web
    balance roundrobin
{lines}
{extra}
"""
        )
        self._run()

    def _run(self, *extra: str) -> None:
        subprocess.run([self.binary, "-f", str(self.config), "-D", "-p", str(self.pidfile), *extra], check=True)
        deadline = time.monotonic() + 5
        while not Path(self.socket).exists() and time.monotonic() < deadline:
            time.sleep(0.02)

    def pids(self) -> list[int]:
        return [int(p) for p in self.pidfile.read_text().split()] if self.pidfile.exists() else []

    def reload(self) -> None:
        old = self.pids()
        Path(self.socket).unlink(missing_ok=True)
        self._run("-sf", *map(str, old))

    def stop(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
