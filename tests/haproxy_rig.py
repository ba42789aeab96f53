"""Debian's real HAProxy for the tests: `haproxy -D` on a config in a temporary folder, with an admin socket,
a frontend on a free loopback port and a backend `web` with a dynamic algorithm; and the sockets healerd may
find where HAProxy's should be (`FakeStatsSocket`)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import threading
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


#: a `show servers state` answer with HAProxy's shape and a field that is not a number (srv_op_state "2x")
CRAFTED = (
    b"1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight "
    b"srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state "
    b"srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord\n"
    b"3 web 1 web-0 127.0.0.1 2x 0 1 1 5 6 3 4 6 0 0 0 - 8080 - 0 0 - - 0\n\n"
)


class FakeStatsSocket:
    """What healerd may find where HAProxy's stats socket should be, at `path`:

    - absent: nothing there; refusing: a socket file nobody listens on (HAProxy gone, its file left);
    - silent: accepts and never answers; garbage: answers random bytes; endless: answers without end;
    - echo: answers the command back; crafted: answers HAProxy's shape with a field that is not a number.
    """

    KINDS = ("absent", "refusing", "silent", "garbage", "endless", "echo", "crafted")

    def __init__(self, path: Path, kind: str) -> None:
        assert kind in self.KINDS, kind
        self.path = path
        self.kind = kind
        self.connections = 0
        self.sent = 0  # bytes written by the endless kind
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._open: list[socket.socket] = []

    def start(self) -> FakeStatsSocket:
        if self.kind == "absent":
            return self
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(self.path))
        if self.kind != "refusing":  # bound, never listening: a connection is refused
            self._sock.listen(16)
            self._sock.settimeout(0.1)
            self._spawn(self._accept)
        return self

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            self._open.append(conn)
            self._spawn(self._serve, conn)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with contextlib.suppress(OSError), conn:
            line = conn.recv(4096)
            if self.kind == "silent":
                self._stop.wait()
            elif self.kind == "garbage":
                conn.sendall(os.urandom(700) + b"\r\n\x00\x1b[2J not haproxy\n")
            elif self.kind == "echo":
                conn.sendall(line)
            elif self.kind == "crafted":
                conn.sendall(CRAFTED)
            elif self.kind == "endless":
                block = b"3 web 1 web-0 127.0.0.1 2 0 1 1 5 6 3 4 6 0 0 0 - 8080 - 0 0 - - 0\n" * 1000
                while not self._stop.is_set():
                    conn.sendall(block)
                    self.sent += len(block)

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        for conn in self._open:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(5)
        self.path.unlink(missing_ok=True)
