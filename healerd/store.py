"""The state store: SQLite in `state_dir` (WAL), on its own thread so the event loop never blocks.

Results and events are batched: the hot path appends to a list; a flush writes them in one transaction.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import structlog

from .events import Event
from .health import CheckKey
from .machines import Lifecycle, Machine
from .results import CheckResult, PerfDatum, Status

log = structlog.get_logger("healerd.store")
T = TypeVar("T")

# Each entry migrates from version i to i+1; never edit a shipped one, append a new one.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE machines (
        service TEXT NOT NULL, id TEXT NOT NULL, address TEXT NOT NULL, lifecycle TEXT NOT NULL,
        provider TEXT NOT NULL DEFAULT '', attributes TEXT NOT NULL DEFAULT '{}',
        created_at REAL NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (service, id)
    );
    CREATE TABLE results (
        service TEXT NOT NULL, machine TEXT NOT NULL, check_name TEXT NOT NULL, slot INTEGER NOT NULL,
        seq INTEGER NOT NULL, ts REAL NOT NULL, status INTEGER NOT NULL, message TEXT NOT NULL,
        duration REAL NOT NULL, metrics TEXT NOT NULL DEFAULT '[]',
        PRIMARY KEY (service, machine, check_name, slot)
    ) WITHOUT ROWID;
    CREATE TABLE events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, ts REAL NOT NULL, type TEXT NOT NULL,
        service TEXT NOT NULL, machine TEXT, check_name TEXT, incident TEXT, severity TEXT NOT NULL,
        status TEXT NOT NULL, summary TEXT NOT NULL, details TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX events_machine ON events (service, machine, seq);
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    """
    CREATE TABLE incidents (
        id TEXT PRIMARY KEY, service TEXT NOT NULL, machine TEXT NOT NULL, state TEXT NOT NULL,
        playbook TEXT NOT NULL, opened_at REAL NOT NULL, updated_at REAL NOT NULL, resolved_at REAL,
        summary TEXT NOT NULL, replacement TEXT, error TEXT, details TEXT NOT NULL DEFAULT '{}'
    );
    CREATE INDEX incidents_open ON incidents (state, service);
    CREATE TABLE steps (
        incident TEXT NOT NULL, idx INTEGER NOT NULL, action TEXT NOT NULL, state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0, started_at REAL, ended_at REAL, outputs TEXT NOT NULL DEFAULT '{}',
        error TEXT, PRIMARY KEY (incident, idx)
    );
    CREATE TABLE images (family TEXT PRIMARY KEY, known_good TEXT NOT NULL, seeded TEXT NOT NULL,
                         updated_at REAL NOT NULL);
    CREATE TABLE silences (
        id TEXT PRIMARY KEY, service TEXT, machine TEXT, starts_at REAL NOT NULL, ends_at REAL NOT NULL,
        comment TEXT NOT NULL DEFAULT '', created_by TEXT NOT NULL DEFAULT ''
    );
    CREATE TABLE remediation_log (service TEXT NOT NULL, machine TEXT NOT NULL, ts REAL NOT NULL,
                                  kind TEXT NOT NULL, incident TEXT);
    CREATE INDEX remediation_log_service ON remediation_log (service, ts);
    """,
    """
    CREATE TABLE outbox_items (
        seq INTEGER PRIMARY KEY AUTOINCREMENT, notifier TEXT NOT NULL, service TEXT NOT NULL, event TEXT NOT NULL,
        created_at REAL NOT NULL, message TEXT
    );
    CREATE INDEX outbox_items_waiting ON outbox_items (message, notifier, service);
    CREATE TABLE outbox (
        id TEXT PRIMARY KEY, notifier TEXT NOT NULL, service TEXT NOT NULL, state TEXT NOT NULL,
        attempts INTEGER NOT NULL, next_attempt_at REAL NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL,
        delivered_at REAL, payload TEXT NOT NULL, last_status INTEGER, last_error TEXT, events INTEGER NOT NULL
    );
    CREATE INDEX outbox_pending ON outbox (notifier, state, created_at);
    """,
)

ResultRow = tuple[str, str, str, int, int, float, int, str, float, str]


def rollback(conn: sqlite3.Connection) -> None:
    """End a failed transaction. SQLite may already have rolled it back by itself (a full disk): a second
    ROLLBACK would raise and hide the real error, and a transaction left open would block every later one."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")


class StoreError(Exception):
    """The state database cannot be used as it is; the message says what is wrong and how to fix it."""


#: what SQLite (or the OS under it) raises when the disk is full, read-only or gone
STORE_FAULTS = (sqlite3.OperationalError, sqlite3.DatabaseError, OSError)


class Store:
    def __init__(self, state_dir: Path, history: int = 30, event_log_size: int = 100_000) -> None:
        self.path = state_dir / "state.db"
        self.history = history
        self.event_log_size = event_log_size
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="healerd-store")
        self._conn: sqlite3.Connection | None = None
        self._seq: dict[CheckKey, int] = {}
        self._pending_results: list[ResultRow] = []
        self._pending_events: list[Event] = []
        self._lock = threading.Lock()
        #: the last store failure while it lasts (disk full, read-only): None when writes go through
        self.fault: str | None = None
        self.fault_since: float | None = None
        self.errors = 0
        self._fault_listeners: list[Callable[[str | None], None]] = []

    # -- lifecycle --------------------------------------------------------------------------------------
    async def open(self) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
        except StoreError:
            raise
        except (sqlite3.DatabaseError, OSError) as exc:
            raise StoreError(self._explain(exc)) from None

    def _explain(self, exc: BaseException) -> str:
        text = str(exc)
        folder = self.path.parent
        if isinstance(exc, OSError) or "unable to open" in text or "readonly" in text or "read-only" in text:
            return (
                f"cannot open the state database {self.path}: {text}. The state directory {folder} must exist "
                f"and be writable by this user (check its permissions and free space: ls -ld {folder}; df -h {folder})"
            )
        return (
            f"the state database {self.path} is damaged ({text}). Nothing was changed. Restore it from a backup, "
            f"or move it aside and start with an empty state: healerd run -c … --move-aside-broken-state "
            "(machines still running are adopted again)"
        )

    @staticmethod
    def damage(state_dir: Path) -> str | None:
        """What is wrong with an existing state.db (not a database, truncated, corrupt), or None."""
        path = state_dir / "state.db"
        if not path.exists():
            return None
        try:
            conn = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
            try:
                result = str(conn.execute("PRAGMA quick_check").fetchone()[0])
            finally:
                conn.close()
        except sqlite3.DatabaseError as exc:
            return str(exc)
        return None if result == "ok" else result

    @staticmethod
    def move_aside(state_dir: Path) -> Path | None:
        """Rename a damaged state.db (and its -wal/-shm) out of the way; returns the new name."""
        path = state_dir / "state.db"
        if not path.exists():
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = path.with_name(f"state.db.broken-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{path}{suffix}")
            if src.exists():
                src.rename(f"{target}{suffix}")
        return target

    async def open_readonly(self) -> bool:
        """Open an existing store for reading only (never creates, migrates or writes; a running daemon may
        hold it). False when there is no store yet."""
        return await self.read(self._open_readonly)

    def _open_readonly(self) -> bool:
        if not self.path.is_file():
            return False
        conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, check_same_thread=False, timeout=5)
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            conn.close()
            return False
        self._conn = conn
        return True

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"{self.path} was written by a newer healerd (schema {version}, this one knows "
                f"{len(MIGRATIONS)}); upgrade healerd or restore a backup of the state directory"
            )
        # A truncated or overwritten file opens fine and fails later: look before trusting it.
        problem = conn.execute("PRAGMA quick_check").fetchone()[0]
        if problem != "ok":
            conn.close()
            raise StoreError(self._explain(sqlite3.DatabaseError(f"quick_check: {problem}")))
        for i in range(version, len(MIGRATIONS)):
            conn.execute("BEGIN IMMEDIATE")
            for statement in _statements(MIGRATIONS[i]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {i + 1}")
            conn.execute("COMMIT")
            log.info("state store migrated", schema=i + 1, path=str(self.path))
        self._conn = conn
        for service, machine, check, seq in conn.execute(
            "SELECT service, machine, check_name, MAX(seq) FROM results GROUP BY service, machine, check_name"
        ):
            self._seq[CheckKey(service, machine, check)] = seq

    async def close(self) -> None:
        await self.flush()
        await self.call(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn` (which may write) on the store's thread. A failure marks the store faulty; the next write
        that goes through marks it healthy again."""
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except STORE_FAULTS as exc:
            self._failed(exc)
            raise
        if self.fault is not None:
            self._recovered()
        return result

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a read on the store's thread: reads work on a full disk, so they say nothing about recovery."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)
        except STORE_FAULTS as exc:
            self._failed(exc)
            raise

    def on_fault(self, listener: Callable[[str | None], None]) -> None:
        """`listener(reason)` when the store starts failing, `listener(None)` when it works again."""
        self._fault_listeners.append(listener)

    def _failed(self, exc: BaseException) -> None:
        self.errors += 1
        if self.fault is None:
            self.fault, self.fault_since = f"{type(exc).__name__}: {exc}", time.time()
            log.error(
                "the state store is failing; monitoring and alerting go on, writes are retried",
                path=str(self.path),
                error=self.fault,
            )
            for listener in self._fault_listeners:
                listener(self.fault)

    def _recovered(self) -> None:
        log.warning(
            "the state store works again",
            path=str(self.path),
            failed_for=round(time.time() - (self.fault_since or 0), 1),
        )
        self.fault = self.fault_since = None
        for listener in self._fault_listeners:
            listener(None)

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None:
            raise RuntimeError("the state store is not open")
        return self._conn

    # -- hot path: buffered ---------------------------------------------------------------------------
    def add_result(self, key: CheckKey, result: CheckResult, ts: float) -> None:
        seq = self._seq.get(key, 0) + 1
        self._seq[key] = seq
        metrics = json.dumps([m.as_dict() for m in result.metrics]) if result.metrics else "[]"
        self._pending_results.append(
            (
                key.service,
                key.machine,
                key.check,
                seq % self.history,
                seq,
                ts,
                int(result.status),
                result.message,
                result.duration,
                metrics,
            )
        )

    def add_event(self, event: Event) -> None:
        self._pending_events.append(event)

    @property
    def pending(self) -> int:
        return len(self._pending_results) + len(self._pending_events)

    async def flush(self) -> None:
        if not self._pending_results and not self._pending_events:
            return
        results, self._pending_results = self._pending_results, []
        events, self._pending_events = self._pending_events, []
        try:
            await self.call(self._write_batch, results, events)
        except Exception:
            # Keep the events for the next flush (results are superseded by newer ones anyway).
            self._pending_events[:0] = events
            raise

    def _write_batch(self, results: list[ResultRow], events: list[Event]) -> None:
        conn = self.conn
        conn.execute("BEGIN")
        try:
            if results:
                conn.executemany("INSERT OR REPLACE INTO results VALUES (?,?,?,?,?,?,?,?,?,?)", results)
            if events:
                conn.executemany(
                    "INSERT OR IGNORE INTO events (id, ts, type, service, machine, check_name, incident, severity,"
                    " status, summary, details) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                    [
                        (
                            e.id,
                            e.timestamp,
                            e.type.value,
                            e.service,
                            e.machine,
                            e.check,
                            e.incident,
                            e.severity.value,
                            e.status,
                            e.summary,
                            json.dumps(e.details, default=str),
                        )
                        for e in events
                    ],
                )
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise

    # -- machines ------------------------------------------------------------------------------------------
    async def save_machines(self, machines: list[Machine], provider: str, now: float) -> None:
        await self.call(self._save_machines, machines, provider, now)

    def _save_machines(self, machines: list[Machine], provider: str, now: float) -> None:
        conn = self.conn
        conn.execute("BEGIN")
        try:
            conn.executemany(
                "INSERT INTO machines VALUES (?,?,?,?,?,?,?,?) ON CONFLICT (service, id) DO UPDATE SET"
                " address=excluded.address, lifecycle=excluded.lifecycle, provider=excluded.provider,"
                " attributes=excluded.attributes, updated_at=excluded.updated_at",
                [
                    (
                        m.service,
                        m.id,
                        m.address,
                        m.lifecycle.value,
                        provider,
                        json.dumps(m.attributes),
                        now,
                        now,
                    )
                    for m in machines
                ],
            )
            conn.execute("COMMIT")
        except BaseException:
            rollback(conn)
            raise

    async def upsert_machine(self, machine: Machine, provider: str, now: float) -> None:
        await self.save_machines([machine], provider, now)

    async def get_machine(self, service: str, machine_id: str) -> Machine | None:
        def q() -> Machine | None:
            row = self.conn.execute(
                "SELECT service, id, address, lifecycle, attributes FROM machines WHERE service=? AND id=?",
                (service, machine_id),
            ).fetchone()
            return Machine(row[0], row[1], row[2], Lifecycle(row[3]), json.loads(row[4])) if row else None

        return await self.read(q)

    async def find_machine(self, machine_id: str) -> Machine | None:
        def q() -> Machine | None:
            row = self.conn.execute(
                "SELECT service, id, address, lifecycle, attributes FROM machines WHERE id=?", (machine_id,)
            ).fetchone()
            return Machine(row[0], row[1], row[2], Lifecycle(row[3]), json.loads(row[4])) if row else None

        return await self.read(q)

    async def machines_for_incident(self, incident: str) -> list[Machine]:
        def q() -> list[Machine]:
            return [
                Machine(r[0], r[1], r[2], Lifecycle(r[3]), json.loads(r[4]))
                for r in self.conn.execute(
                    "SELECT service, id, address, lifecycle, attributes FROM machines"
                    " WHERE json_extract(attributes, '$.launched_for') = ?",
                    (incident,),
                )
            ]

        return await self.read(q)

    # -- small durable records: meta, images, silences, incidents, steps ---------------------------------
    async def execute(self, sql: str, args: tuple[Any, ...] = ()) -> None:
        await self.call(lambda: self.conn.execute(sql, args))

    async def query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        return await self.read(lambda: self.conn.execute(sql, args).fetchall())

    async def get_meta(self, key: str) -> str | None:
        rows = await self.query("SELECT value FROM meta WHERE key=?", (key,))
        return str(rows[0][0]) if rows else None

    async def set_meta(self, key: str, value: str) -> None:
        await self.execute("INSERT OR REPLACE INTO meta VALUES (?,?)", (key, value))

    async def load_machines(self, service: str | None = None) -> list[Machine]:
        def q() -> list[Machine]:
            sql = "SELECT service, id, address, lifecycle, attributes FROM machines"
            args: tuple[str, ...] = ()
            if service is not None:
                sql += " WHERE service = ?"
                args = (service,)
            return [
                Machine(s, i, a, Lifecycle(lc), json.loads(attrs))
                for s, i, a, lc, attrs in self.conn.execute(sql, args)
            ]

        return await self.read(q)

    async def forget_machines(self, service: str, keep: set[str]) -> None:
        """Drop machines (and their results) of a service that are no longer configured."""

        def q() -> None:
            conn = self.conn
            rows = conn.execute("SELECT id FROM machines WHERE service = ?", (service,)).fetchall()
            gone = [(service, r[0]) for r in rows if r[0] not in keep]
            if gone:
                conn.execute("BEGIN")
                try:
                    conn.executemany("DELETE FROM machines WHERE service = ? AND id = ?", gone)
                    conn.executemany("DELETE FROM results WHERE service = ? AND machine = ?", gone)
                    conn.execute("COMMIT")
                except BaseException:
                    rollback(conn)
                    raise

        await self.call(q)

    # -- history -------------------------------------------------------------------------------------------
    async def load_history(self) -> dict[CheckKey, list[tuple[float, CheckResult]]]:
        def q() -> dict[CheckKey, list[tuple[float, CheckResult]]]:
            out: dict[CheckKey, list[tuple[float, CheckResult]]] = {}
            for service, machine, check, ts, status, message, duration, metrics in self.conn.execute(
                "SELECT service, machine, check_name, ts, status, message, duration, metrics FROM results"
                " ORDER BY service, machine, check_name, seq"
            ):
                perf = tuple(PerfDatum(**m) for m in json.loads(metrics)) if metrics != "[]" else ()
                out.setdefault(CheckKey(service, machine, check), []).append(
                    (ts, CheckResult(Status(status), message, perf, duration))
                )
            return out

        return await self.read(q)

    async def recent_results(self, key: CheckKey, limit: int = 30) -> list[dict[str, Any]]:
        await self.flush()

        def q() -> list[dict[str, Any]]:
            rows = self.conn.execute(
                "SELECT ts, status, message, duration, metrics FROM results WHERE service=? AND machine=? AND"
                " check_name=? ORDER BY seq DESC LIMIT ?",
                (key.service, key.machine, key.check, limit),
            ).fetchall()
            return [
                {
                    "timestamp": ts,
                    "status": Status(st).name,
                    "message": msg,
                    "duration": dur,
                    "metrics": json.loads(m),
                }
                for ts, st, msg, dur, m in rows
            ]

        return await self.read(q)

    # -- events -------------------------------------------------------------------------------------------
    async def events(
        self,
        service: str | None = None,
        machine: str | None = None,
        limit: int = 100,
        types: list[str] | None = None,
    ) -> list[dict[str, Any]]:
        await self.flush()

        def q() -> list[dict[str, Any]]:
            sql = (
                "SELECT id, ts, type, service, machine, check_name, incident, severity, status, summary, details"
                " FROM events WHERE 1=1"
            )
            args: list[Any] = []
            if service:
                sql += " AND service = ?"
                args.append(service)
            if machine:
                sql += " AND machine = ?"
                args.append(machine)
            if types:
                sql += f" AND type IN ({','.join('?' * len(types))})"
                args.extend(types)
            sql += " ORDER BY seq DESC LIMIT ?"
            args.append(limit)
            return [
                {
                    "id": r[0],
                    "timestamp": r[1],
                    "type": r[2],
                    "service": r[3],
                    "machine": r[4],
                    "check": r[5],
                    "incident": r[6],
                    "severity": r[7],
                    "status": r[8],
                    "summary": r[9],
                    "details": json.loads(r[10]),
                }
                for r in self.conn.execute(sql, args)
            ]

        return await self.read(q)

    async def prune(self) -> None:
        def q() -> None:
            row = self.conn.execute("SELECT MAX(seq) FROM events").fetchone()
            if row and row[0]:
                self.conn.execute("DELETE FROM events WHERE seq <= ?", (row[0] - self.event_log_size,))

        await self.call(q)


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
