"""Every node follows what the others write: the machine records the leader changes (a replacement to
check, a machine quarantined) and the results of the machines other nodes check. So any node's book holds the
whole fleet's health (its API answers for the cluster), and a new leader, or a new owner of a machine,
starts from the history the previous one built.

Changes are read by (txid, rid) after a cursor, among transactions that have all ended (txid below the
snapshot's xmin): a row committed late is read late, never skipped. Results are applied once each, by their
per-check sequence number.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import structlog

from ..health import CheckKey
from ..machines import Lifecycle, Machine
from ..monitor import Monitor
from ..results import CheckResult, PerfDatum, Status
from ..store import STORE_FAULTS
from ..store.changes import Changes, Cursor
from ..store.postgres import PgStore

log = structlog.get_logger("healerd.cluster")

FOLLOW_INTERVAL = 0.5
BATCH = 20_000


class Mirror:
    def __init__(self, store: PgStore, monitor: Monitor, *, node: str) -> None:
        self.store = store
        self.monitor = monitor
        self.node = node
        self._machines: Cursor = ("0", 0)
        self._results: Cursor = ("0", 0)
        self._changes = Changes(store.pg)
        self._task: asyncio.Task[None] | None = None
        self._marked = False  # not yet when the database was away at start
        self.applied = 0  # results taken from other nodes since start
        self.lag = 0.0  # seconds between the newest result applied and its being applied

    async def mark(self) -> None:
        """Before the monitor reads the store: follow from here (what ended before, it reads itself; what it
        reads twice is applied once, by sequence number)."""
        horizon = await self._changes.horizon()
        start = str(max(0, int(horizon) - 1))
        self._machines = self._results = (start, 0)
        self._marked = True

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop(), name="healerd-cluster-mirror")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                if not self._marked:
                    await self.mark()
                await self.follow_once()
            except asyncio.CancelledError:
                raise
            except STORE_FAULTS:  # the store said so once; followed again when it works
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("following the cluster's changes failed; retried")
                await asyncio.sleep(1.0)
            await asyncio.sleep(FOLLOW_INTERVAL)

    async def follow_once(self) -> int:
        """Apply what the other nodes wrote since the last call; returns how many rows."""
        machines, results = await self._changes.since(self._machines, self._results, self.node, BATCH)
        now = time.time()
        for service, mid, address, lifecycle, attributes, txid, rid in machines:
            self._machines = (txid, rid)
            try:
                machine = Machine(service, mid, address, Lifecycle(lifecycle), json.loads(attributes))
            except ValueError:
                continue
            self.monitor.follow_machine(machine, now)
        seen = self.store.results
        newest = 0.0
        for service, machine, check, seq, ts, status, message, duration, metrics, txid, rid in results:
            self._results = (txid, rid)
            key = CheckKey(service, machine, check)
            if not seen.seen(key, int(seq)):
                continue  # this result was restored at start, or applied already
            perf = tuple(PerfDatum(**m) for m in json.loads(metrics)) if metrics != "[]" else ()
            self.monitor.observe_remote(key, CheckResult(Status(status), message, perf, duration), ts)
            self.applied += 1
            newest = max(newest, ts)
        if newest:
            self.lag = max(0.0, time.time() - newest)
        return len(machines) + len(results)
