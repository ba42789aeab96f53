"""A throw-away PostgreSQL server for the tests: Debian's `initdb` and `pg_ctl` in a temporary folder, on a free
loopback port, run as an unprivileged user when the tests run as root (PostgreSQL refuses to run as root). Given a
network namespace and an address in it (a host of tests/netlab.py), the server runs there instead."""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

PG_BIN_DIRS = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True)
PG_USER = "nobody"  # who runs the server when the tests run as root


def pg_binary(name: str) -> str | None:
    for folder in PG_BIN_DIRS:
        if (folder / name).exists():
            return str(folder / name)
    return shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class PgServer:
    folder: Path
    port: int
    pg_ctl: str
    address: str = "127.0.0.1"
    netns: str | None = None  # a network namespace to run the server in (`ip netns exec`)

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://healerd@{self.address}:{self.port}/postgres"

    def dsn(self, database: str) -> str:
        return f"postgresql://healerd@{self.address}:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its DSN."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def _as_owner(self, *argv: str) -> list[str]:
        return ["runuser", "-u", PG_USER, "--", *argv] if os.geteuid() == 0 else list(argv)

    def ctl(self, action: str, *extra: str) -> None:
        argv = self._as_owner(self.pg_ctl, "-D", str(self.folder / "data"), "-w", "-t", "30", *extra, action)
        if self.netns and action in ("start", "restart"):
            # The server inherits the namespace; stopping it is a signal, which works from anywhere.
            argv = ["ip", "netns", "exec", self.netns, *argv]
        subprocess.run(
            argv,
            check=True,
            capture_output=True,
            timeout=60,
        )

    def start(self) -> None:
        options = (
            f"-c listen_addresses={self.address} -c port={self.port} -k {self.folder} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200 -c log_min_messages=warning"
        )
        self.ctl("start", "-o", options, "-l", str(self.folder / "server.log"))

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.ctl("stop", "-m", "fast")


@contextlib.contextmanager
def pg_server(*, address: str = "127.0.0.1", netns: str | None = None) -> Iterator[PgServer]:
    """A server listening on `address` (loopback unless told), inside network namespace `netns` when given;
    stopped and its files removed at the end."""
    initdb, pg_ctl = pg_binary("initdb"), pg_binary("pg_ctl")
    assert initdb and pg_ctl, "initdb and pg_ctl come with Debian's postgresql package"
    folder = Path(tempfile.mkdtemp(prefix="healerd-pg-"))
    if os.geteuid() == 0:
        entry = pwd.getpwnam(PG_USER)
        os.chown(folder, entry.pw_uid, entry.pw_gid)
    port = _free_port()  # in a namespace of its own, any port is free
    server = PgServer(folder, port, pg_ctl, address, netns)
    data = folder / "data"
    subprocess.run(
        server._as_owner(initdb, "-D", str(data), "-U", "healerd", "--auth=trust", "-E", "UTF8", "--no-sync"),
        check=True,
        capture_output=True,
        timeout=120,
    )
    if address != "127.0.0.1":
        # Clients come from other addresses of the lab; the server listens only on an address of a namespace
        # the test made, so trusting them lets nothing else in.
        with open(data / "pg_hba.conf", "a") as hba:
            hba.write("host all all 0.0.0.0/0 trust\n")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
