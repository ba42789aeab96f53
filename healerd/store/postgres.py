"""The state store on PostgreSQL, shared by the nodes of a cluster (docs/cluster.md).

The repositories are SQLite's: the connection adapter turns their `?` placeholders into psycopg's, and each
`call` is one transaction on a connection of psycopg's pool, run on the store's threads. Leader-only writes
(`fenced`) first read the lease row FOR SHARE in the same transaction: a takeover cannot slip between the
check and the write, and a node whose epoch is not the newest is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import psycopg
import psycopg.conninfo
import psycopg_pool
import structlog
from psycopg_pool import ConnectionPool

from .base import BaseStore
from .engine import Connection, Fenced, ThreadedDatabase
from .interface import StoreError
from .pg_schema import MIGRATIONS
from .text import printable_parameters

log = structlog.get_logger("healerd.store")
T = TypeVar("T")

WORKERS = 4
CONNECT_TIMEOUT = 5.0
#: how long the pool keeps trying one connection before it gives up on it (the next caller asks anew)
RECONNECT_FOR = 4.0
#: how long a statement waits for a connection while the store is failing
FAULT_WAIT = 0.05
#: a database away at start is tried again after 1 s, 2 s, 4 s … at most 10 s apart
OPEN_RETRY = 1.0
OPEN_RETRY_MAX = 10.0
#: no statement of healerd's may hold a connection longer (a lock wait, a server in trouble)
STATEMENT_TIMEOUT_MS = 15_000
_LOCK_SCHEMA = "SELECT pg_advisory_xact_lock(hashtext('healerd schema'))"
#: what a server says when it is no longer the writable primary, or no longer there: 25006 (a read-only
#: transaction: a standby, a primary turned read-only), 57P01-57P03 (shut down, crashed, starting); with any
#: connection exception (class 08), they mean that the pool's connections, all made to that server, must go
_LEFT_PRIMARY = frozenset({"25006", "57P01", "57P02", "57P03"})


def redact(dsn: str) -> str:
    """The connection string without its password, for messages and logs."""
    try:
        parts = psycopg.conninfo.conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "(a connection string that does not parse)"
    # libpq marks its secrets (password, sslpassword, ...) and debug options; neither is shown
    hidden = {o.keyword.decode() for o in psycopg.pq.Conninfo.get_defaults() if o.dispchar}
    return " ".join(f"{k}={v}" for k, v in parts.items() if v is not None and k not in hidden)


def left_primary(exc: psycopg.Error, conn: psycopg.Connection[Any] | None = None) -> bool:
    """Whether `exc` says the server of `conn` can no longer take this store's writes."""
    state = exc.sqlstate or ""
    return state in _LEFT_PRIMARY or state.startswith("08") or (conn is not None and conn.broken)


@functools.lru_cache(maxsize=512)
def _placeholders(sql: str) -> str:
    return sql.replace("?", "%s")


class _Adapter:
    """psycopg's connection with the sqlite3 calls the repositories make; every text parameter made printable
    (PostgreSQL refuses NUL in text)."""

    def __init__(self, raw: psycopg.Connection[Any]) -> None:
        self.raw = raw

    def execute(self, sql: str, parameters: Any = (), /) -> Any:
        return self.raw.execute(_placeholders(sql), printable_parameters(parameters) or None)

    def executemany(self, sql: str, parameters: Any, /) -> Any:
        cur = self.raw.cursor()
        cur.executemany(_placeholders(sql), [printable_parameters(p) for p in parameters])
        return cur


class PgDatabase(ThreadedDatabase):
    def __init__(self, dsn: str, node: str, *, pgbouncer: bool = False, idle_timeout: float = 5.0) -> None:
        super().__init__(WORKERS, "healerd-pg")
        self.dsn = dsn
        self.node = node
        self.where = {"store": redact(dsn)}
        #: the leader epoch this node holds (the cluster's lease says, through lead_at), None when it does not lead
        self.epoch: int | None = None
        self._fenced_listeners: list[Callable[[str], None]] = []
        self._local = threading.local()
        self._pool = ConnectionPool(
            dsn,
            min_size=1,
            max_size=WORKERS,
            open=False,
            timeout=CONNECT_TIMEOUT * 2,
            # psycopg's pool doubles its wait between reconnection attempts for reconnect_timeout (5 min by
            # default): after a 30 s outage its next attempt could be 30 s away, and every caller waits for
            # a connection in vain. Short attempts end soon; the next caller starts a fresh one at once.
            reconnect_timeout=RECONNECT_FOR,
            # a server restarted meanwhile left dead connections in the pool: one is not handed out
            check=ConnectionPool.check_connection,
            name=f"healerd-{node}",
            kwargs={
                "application_name": f"healerd/{node}",
                "connect_timeout": int(CONNECT_TIMEOUT),
                # a node frozen (SIGSTOP, a VM paused) inside a transaction must not keep its locks: the lease
                # row it holds FOR SHARE would block every takeover; the server ends such a session
                "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS} "
                f"-c idle_in_transaction_session_timeout={int(idle_timeout * 1000)}",
                # PgBouncer's transaction pooling (before 1.21) cannot keep server-side prepared statements
                **({"prepare_threshold": None} if pgbouncer else {}),
            },
        )

    # -- lifecycle ------------------------------------------------------------------------------------------
    async def open(self, then: Callable[[], None]) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open, then)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StoreError(self.explain(exc)) from None

    def lead_at(self, epoch: int | None) -> None:
        """Leader-only writes carry this epoch from now on (None: every one of them is refused)."""
        self.epoch = epoch

    def explain(self, exc: BaseException) -> str:
        text = str(exc).strip().replace("\n", " ") or type(exc).__name__
        return (
            f"cannot use the PostgreSQL store {redact(self.dsn)}: {text}. Check cluster.store (host, port, "
            "database, user; the password in ~/.pgpass or the DSN), that the server accepts this host "
            "(pg_hba.conf), and that the role may create tables in the database (docs/cluster.md)"
        )

    def _open(self, then: Callable[[], None]) -> None:
        # not open(wait=True): a pool whose first wait times out is closed for good, and a node whose
        # database is away at start opens it again later (PgStore.open_or_keep_trying)
        self._pool.open()
        with self._pool.connection() as conn:
            conn.execute(_LOCK_SCHEMA)
            conn.execute("CREATE TABLE IF NOT EXISTS healerd_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT max(version) FROM healerd_schema").fetchone()
            version = int(row[0]) if row and row[0] is not None else 0
            if version > len(MIGRATIONS):
                raise StoreError(
                    f"the PostgreSQL store {redact(self.dsn)} was written by a newer healerd (schema {version}, this "
                    f"one knows {len(MIGRATIONS)}); upgrade this node (docs/cluster.md: upgrading node by node)"
                )
            for i in range(version, len(MIGRATIONS)):
                conn.execute(MIGRATIONS[i])
                conn.execute("INSERT INTO healerd_schema VALUES (%s)", (i + 1,))
                log.info("state store migrated", schema=i + 1, store=redact(self.dsn))
        self._run(then)

    async def open_readonly(self) -> bool:
        """Connect without creating or migrating anything; False when no healerd schema is there yet."""

        def look() -> bool:
            row = self.conn.execute("SELECT to_regclass('healerd_schema') IS NOT NULL").fetchone()
            return bool(row and row[0])

        try:
            return await asyncio.get_running_loop().run_in_executor(self._executor, self._run_connected, look)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            raise StoreError(self.explain(exc)) from None

    def _run_connected(self, fn: Callable[[], T]) -> T:
        self._pool.open()
        return self._run(fn)

    async def close(self) -> None:
        # not on the store's threads: while the server is away they may all be waiting for a connection, which
        # closing the pool ends at once (PoolClosed)
        await asyncio.to_thread(self._pool.close)
        self.shutdown()

    # -- running statements -----------------------------------------------------------------------------
    def _run(self, fn: Callable[..., T], *args: Any) -> T:
        # while the server is known to be away, a caller (the status page, the API) learns it at once instead
        # of waiting the pool's whole timeout; the first statement that goes through ends the fault
        wait = FAULT_WAIT if self.fault is not None else None
        raw = self._pool.getconn(timeout=wait)
        try:
            with raw:  # commits when fn returns, rolls back when it raises
                self._local.conn = _Adapter(raw)
                try:
                    return fn(*args)
                finally:
                    self._local.conn = None
        except psycopg.Error as exc:
            if left_primary(exc, raw):
                self._leave_server(raw, exc)
            raise
        finally:
            self._pool.putconn(raw)

    def _leave_server(self, raw: psycopg.Connection[Any], exc: psycopg.Error) -> None:
        """Drop `raw` and every other connection of the pool: they were all made to a server that no longer takes
        writes (a primary killed, stopped for a switchover, turned read-only). Their replacements are made anew
        from the connection string: with a list of servers and target_session_attrs=read-write, to the one that
        is the primary now. Kept, a connection to a standby would fail every write (25006) for good."""
        if self.fault is None:  # once per outage: the store's fault is logged on the event loop as well
            log.warning(
                "the store's server no longer takes writes; reconnecting every connection",
                **self.where,
                sqlstate=exc.sqlstate,
                error=str(exc).strip().replace("\n", " "),
            )
        raw.close()  # a closed connection is not put back in the pool; the pool makes another
        self._pool.drain()  # the idle ones are closed now; those in use, when they are given back

    @property
    def conn(self) -> Connection:
        conn: _Adapter | None = getattr(self._local, "conn", None)
        if conn is None:
            raise RuntimeError("the PostgreSQL store is used outside of call/read")
        return conn

    @contextlib.contextmanager
    def transaction(self, immediate: bool = False) -> Iterator[Connection]:
        adapter = self.conn
        assert isinstance(adapter, _Adapter)
        with adapter.raw.transaction():  # a savepoint: `call` already runs in a transaction
            yield adapter

    def json_text(self, column: str, key: str) -> str:
        return f"({column}::jsonb ->> '{key}')"

    # -- fencing --------------------------------------------------------------------------------------------
    def on_fenced(self, listener: Callable[[str], None]) -> None:
        """`listener(reason)` (on the event loop) when a leader-only write of this node was refused."""
        self._fenced_listeners.append(listener)

    def _fence(self) -> None:
        row = self.conn.execute("SELECT holder, epoch FROM cluster_lease WHERE name = 'leader' FOR SHARE").fetchone()
        mine = self.epoch
        if mine is not None and row is not None and row[0] == self.node and int(row[1]) == mine:
            return
        if mine is None:
            reason = "this node does not hold the leader lease"
        elif row is None:
            reason = f"no leader lease exists (this node had epoch {mine})"
        elif int(row[1]) < mine:
            reason = (
                f"the lease is at epoch {int(row[1])} (held by {row[0]}), behind this node's {mine}: the database "
                "lost writes (a standby promoted with lag?); the next lease round moves the epoch past both"
            )
        else:
            reason = f"epoch {mine} is older than the cluster's {int(row[1])} (held by {row[0]})"
        raise Fenced(f"leader-only write refused: {reason}")

    async def fenced(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            return await super().fenced(fn, *args)
        except Fenced as exc:
            log.error(str(exc), node=self.node, hint="another node leads now; this one steps down")
            for listener in self._fenced_listeners:
                listener(str(exc))
            raise


class PgStore(BaseStore):
    """`PgStore(dsn, node)`, then `await open()`: the cluster's shared store."""

    def __init__(
        self,
        dsn: str,
        node: str,
        *,
        history: int = 30,
        event_log_size: int = 100_000,
        pgbouncer: bool = False,
        idle_timeout: float = 5.0,
        states: Callable[[], dict[str, bool]] = dict,
    ) -> None:
        self.pg = PgDatabase(dsn, node, pgbouncer=pgbouncer, idle_timeout=idle_timeout)
        self._opener: asyncio.Task[None] | None = None
        super().__init__(self.pg, history, event_log_size=event_log_size, states=states)

    @property
    def where(self) -> str:
        return redact(self.pg.dsn)

    @property
    def remedy(self) -> str:
        return f"Check the PostgreSQL server ({self.where}): is it up, reachable, with free space?"

    async def open(self) -> None:
        await self.pg.open(then=self.results.load_sequences)

    async def open_or_keep_trying(self) -> bool:
        """Open now; or, the server away, say so (the store's fault, once) and keep trying in the background
        with backoff, returning False: a cluster node whose database is down at start still checks its fleet.
        Until it opens, every use of the store fails as in an outage, and is retried as then."""
        try:
            await self.open()
            return True
        except StoreError as exc:
            self.pg.report(exc)
        self._opener = asyncio.create_task(self._keep_opening(), name="healerd-store-open")
        return False

    async def _keep_opening(self) -> None:
        delay = OPEN_RETRY
        while True:
            await asyncio.sleep(delay)
            try:
                await self.open()
            except StoreError:
                delay = min(delay * 2, OPEN_RETRY_MAX)
                continue
            self.pg.report(None)
            return

    async def open_readonly(self) -> bool:
        return await self.pg.open_readonly()

    async def close(self) -> None:
        if self._opener is not None:
            self._opener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._opener
        if self.pg.fault is None:  # a failing server would hold the stop for the pool's timeout
            with contextlib.suppress(Exception):
                await self.flush()
        await self.pg.close()
