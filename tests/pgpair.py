"""A throw-away PostgreSQL primary and its streaming standby (pg_basebackup -R), on loopback, for failover tests:
kill the primary, promote the standby, switch the two over, and make a new standby of a dead primary.

Replication is synchronous (synchronous_standby_names '*') while a standby is attached: a commit the store
saw is on both servers, as a failover manager configured for no data loss keeps it. A promoted server is
made asynchronous at once (it has no standby to wait for) and synchronous again when one attaches.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from pg import PG_USER, _free_port, pg_binary


def _as_owner(*argv: str) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *argv] if os.geteuid() == 0 else list(argv)


def _own(path: Path) -> None:
    if os.geteuid() == 0:
        entry = pwd.getpwnam(PG_USER)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _tool(name: str) -> str:
    found = pg_binary(name)
    assert found, f"{name} comes with Debian's postgresql package"
    return found


@dataclass
class Member:
    """One server of the pair: its data folder and port (the port stays with the member across rebuilds)."""

    name: str
    data: Path
    port: int

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://healerd@127.0.0.1:{self.port}/{database}"

    def ctl(self, action: str, *extra: str, timeout: float = 60) -> None:
        subprocess.run(
            _as_owner(_tool("pg_ctl"), "-D", str(self.data), "-w", "-t", "30", *extra, action),
            check=True,
            capture_output=True,
            timeout=timeout,
        )

    def start(self) -> None:
        # wal_retrieve_retry_interval: a standby whose primary died waits that long (5 s by default) between
        # attempts to stream again, and a promotion asked meanwhile waits for the end of the pause
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} -k {self.data.parent} -c fsync=off "
            "-c full_page_writes=off -c max_connections=200 -c log_min_messages=warning -c wal_keep_size=256MB "
            "-c wal_retrieve_retry_interval=200ms"
        )
        self.ctl("start", "-o", options, "-l", str(self.data.parent / f"{self.name}.log"))

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self.ctl("stop", "-m", "fast")

    def postmaster(self) -> int | None:
        """The pid of this member's postmaster, checked against /proc/<pid>/cmdline; None when it does not run."""
        try:
            pid = int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return None
        if not cmdline or not cmdline[0].endswith(b"postgres") or str(self.data).encode() not in cmdline:
            return None
        return pid

    def execute(self, sql: str, database: str = "postgres") -> list[tuple[object, ...]]:
        with psycopg.connect(self.dsn(database), autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(sql)
            return cur.fetchall() if cur.description else []

    def in_recovery(self) -> bool:
        return bool(self.execute("SELECT pg_is_in_recovery()")[0][0])

    def answers(self) -> bool:
        try:
            self.execute("SELECT 1")
        except psycopg.OperationalError:
            return False
        return True


class PgPair:
    """`primary` and `standby` name the members by their role now; a failover swaps them."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.primary = Member("db1", folder / "db1" / "data", _free_port())
        self.standby = Member("db2", folder / "db2" / "data", _free_port())
        self._rebuilds = 0

    @property
    def members(self) -> tuple[Member, Member]:
        return tuple(sorted((self.primary, self.standby), key=lambda m: m.name))  # type: ignore[return-value]

    def dsn(self, database: str) -> str:
        """The multi-host connection string healerd is given: both servers, the writable one wanted."""
        hosts = ",".join(f"127.0.0.1:{m.port}" for m in self.members)
        return f"postgresql://healerd@{hosts}/{database}?target_session_attrs=read-write"

    def new_database(self) -> str:
        """A fresh, empty database on the primary, once the standby has it too; returns the multi-host DSN."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self.primary.execute(f"CREATE DATABASE {name}")
        self.wait(lambda: bool(self.standby.execute(f"SELECT 1 FROM pg_database WHERE datname = '{name}'")), 30)
        return self.dsn(name)

    # -- making it ----------------------------------------------------------------------------------------
    def create(self) -> None:
        member = self.primary
        member.data.parent.mkdir(parents=True)
        _own(member.data.parent)
        subprocess.run(
            _as_owner(
                _tool("initdb"), "-D", str(member.data), "-U", "healerd", "--auth=trust", "-E", "UTF8", "--no-sync"
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        member.start()
        self._backup(self.standby)

    def _backup(self, member: Member) -> None:
        """Make `member` a new streaming standby of the primary (a fresh base backup), started, and replication
        synchronous again."""
        if member.data.parent.exists():
            shutil.rmtree(member.data.parent)
        member.data.parent.mkdir(parents=True)
        _own(member.data.parent)
        subprocess.run(
            _as_owner(
                _tool("pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.primary.port),
                "-U",
                "healerd",
                "-D",
                str(member.data),
                "-R",
                "-X",
                "stream",
                "-c",
                "fast",
                "--no-sync",
            ),
            check=True,
            capture_output=True,
            timeout=120,
        )
        member.start()
        self.wait(lambda: self._streaming(member), 30)
        self._synchronous(True)

    def _streaming(self, member: Member) -> bool:
        rows = self.primary.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'")
        return member.answers() and int(rows[0][0]) > 0  # type: ignore[call-overload]

    def _synchronous(self, on: bool) -> None:
        setting = "SET synchronous_standby_names = '*'" if on else "RESET synchronous_standby_names"
        self.primary.execute(f"ALTER SYSTEM {setting}")
        self.primary.execute("SELECT pg_reload_conf()")

    # -- failing it ---------------------------------------------------------------------------------------
    def kill_primary(self) -> None:
        """SIGKILL the primary's postmaster (its backends end on their own, as after a crash of the host)."""
        pid = self.primary.postmaster()
        assert pid is not None, f"the primary {self.primary.name} does not run"
        os.kill(pid, signal.SIGKILL)
        self.wait(lambda: not self.primary.answers(), 10)

    def promote(self) -> None:
        """Promote the standby; it becomes the primary (asynchronous: it has no standby yet)."""
        self.standby.ctl("promote")
        self.wait(lambda: not self.standby.in_recovery(), 30)
        self.primary, self.standby = self.standby, self.primary
        self._synchronous(False)

    def switchover(self) -> None:
        """Stop the primary cleanly (its last WAL reaches the standby), promote the standby, and restart the old
        primary as a read-only standby of the new one."""
        old = self.primary
        old.stop()
        self.promote()
        (old.data / "standby.signal").touch()
        _own(old.data / "standby.signal")
        with (old.data / "postgresql.auto.conf").open("a") as conf:
            source = f"host=127.0.0.1 port={self.primary.port} user=healerd application_name={old.name}"
            conf.write(f"primary_conninfo = '{source}'\n")
        old.start()
        self.wait(lambda: self._streaming(old), 30)
        self._synchronous(True)

    def rebuild_standby(self) -> None:
        """After a failover: the dead old primary becomes a new standby of the new one (a fresh base backup)."""
        dead = self.standby
        assert dead.postmaster() is None, f"{dead.name} still runs"
        self.wait(lambda: not dead.answers(), 10)
        self._backup(dead)

    def stop(self) -> None:
        for member in self.members:
            pid = member.postmaster()
            if pid is not None:
                member.stop()

    @staticmethod
    def wait(ready: object, timeout: float) -> None:
        assert callable(ready)
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(psycopg.OperationalError):
                if ready():
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"PostgreSQL pair: {getattr(ready, '__name__', 'a condition')} not within {timeout}s"
                )
            time.sleep(0.05)


@contextlib.contextmanager
def pg_pair() -> Iterator[PgPair]:
    for name in ("initdb", "pg_ctl", "pg_basebackup"):
        _tool(name)
    folder = Path(tempfile.mkdtemp(prefix="healerd-pgpair-"))
    _own(folder)
    pair = PgPair(folder)
    try:
        pair.create()
        yield pair
    finally:
        pair.stop()
        shutil.rmtree(folder, ignore_errors=True)
