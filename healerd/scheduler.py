"""Check scheduling: one APScheduler job ticks a timing wheel that fans out to the checks due.

Per tick the work is proportional to the checks due in that tick, never to the fleet: 10,000 checks at
5 s is 100 dispatches per 50 ms tick. Each check keeps a fixed phase inside its interval (first runs are
spread over the interval, no thundering herd) and may be re-run sooner while soft-failing.
"""

from __future__ import annotations

import asyncio
import math
import zlib
from collections import deque
from collections.abc import Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any

import structlog
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.interval import IntervalTrigger

from .runner import BoundCheck

log = structlog.get_logger("healerd.scheduler")

Dispatch = Callable[[BoundCheck], Coroutine[Any, Any, None]]


class SchedulerStats:
    """Counters and a window of recent lags, for the API and the benchmark."""

    def __init__(self, window: int = 20000) -> None:
        self.due = 0
        self.dispatched = 0
        self.missed = 0
        self.lags: deque[float] = deque(maxlen=window)

    def percentile(self, q: float) -> float:
        if not self.lags:
            return 0.0
        ordered = sorted(self.lags)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    def as_dict(self) -> dict[str, Any]:
        return {
            "due": self.due,
            "dispatched": self.dispatched,
            "missed": self.missed,
            "lag_p50_seconds": round(self.percentile(0.5), 6),
            "lag_p99_seconds": round(self.percentile(0.99), 6),
            "lag_max_seconds": round(max(self.lags, default=0.0), 6),
        }


class WheelScheduler:
    def __init__(
        self,
        dispatch: Dispatch,
        max_concurrent: int,
        on_lag: Callable[[float], None] | None = None,
        on_missed: Callable[[BoundCheck], None] | None = None,
        tick: float = 0.05,
    ) -> None:
        self.tick = tick
        self._dispatch = dispatch
        self._on_lag = on_lag
        self._on_missed = on_missed
        self._wheel: dict[int, list[BoundCheck]] = {}
        self._sem = asyncio.Semaphore(max_concurrent)
        self._aps: AsyncIOScheduler | None = None
        self._t0 = 0.0
        self._done_slot = -1
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = SchedulerStats()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start inside the running loop (APScheduler's AsyncIOScheduler needs it)."""
        self._loop = asyncio.get_running_loop()
        self._t0 = self._loop.time()
        self._aps = AsyncIOScheduler(event_loop=self._loop)
        self._aps.add_job(
            self._on_tick,
            IntervalTrigger(seconds=self.tick, start_date=datetime.now().astimezone() + timedelta(seconds=self.tick)),
            id="healerd-wheel",
            name="check wheel",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        self._aps.start()

    async def stop(self) -> None:
        if self._aps is not None:
            self._aps.shutdown(wait=False)
            self._aps = None
            # Shutdown takes effect on the next loop turn; a tick job it started at the last moment must finish
            # too, or the loop's teardown cancels it and APScheduler logs that as a failed job.
            await asyncio.sleep(self.tick)
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    @property
    def running(self) -> bool:
        return self._aps is not None

    # -- scheduling ---------------------------------------------------------------------------------------
    def _now_slot(self) -> int:
        assert self._loop is not None
        return int((self._loop.time() - self._t0) / self.tick)

    def slots(self, seconds: float) -> int:
        return max(1, round(seconds / self.tick))

    def add(self, bc: BoundCheck) -> None:
        """Schedule a check; its first run lands at a stable phase within its interval."""
        bc.interval_slots = self.slots(bc.spec.interval)
        bc.retry_slots = self.slots(bc.spec.retry_interval) if bc.spec.retry_interval else 0
        bc.active = True
        phase = zlib.crc32("\0".join(bc.key).encode()) % bc.interval_slots
        now = self._done_slot + 1 if self._loop is None else max(self._done_slot + 1, self._now_slot() + 1)
        first = now + (phase - now) % bc.interval_slots
        self._put(bc, first)

    def remove(self, bc: BoundCheck) -> None:
        bc.active = False  # lazily dropped from the wheel when its slot comes

    def retry_soon(self, bc: BoundCheck) -> None:
        """Bring the next run forward to `retry_interval` from now (while a failure is unconfirmed)."""
        if not bc.retry_slots or not bc.active or self._loop is None:
            return
        target = self._now_slot() + bc.retry_slots
        if target < bc.slot:
            self._put(bc, target)

    def _put(self, bc: BoundCheck, slot: int) -> None:
        bc.slot = slot
        bucket = self._wheel.get(slot)
        if bucket is None:
            self._wheel[slot] = [bc]
        else:
            bucket.append(bc)

    async def _on_tick(self) -> None:
        self.run_due()

    def run_due(self) -> None:
        """Dispatch every check whose slot has come (catching up on slots a late tick skipped)."""
        assert self._loop is not None
        now = self._loop.time()
        current = int((now - self._t0) / self.tick + 1e-6)
        lags: list[float] = []
        for slot in range(self._done_slot + 1, current + 1):
            bucket = self._wheel.pop(slot, None)
            if not bucket:
                continue
            slot_time = self._t0 + slot * self.tick
            lag = max(0.0, now - slot_time)
            for bc in bucket:
                if not bc.active or bc.slot != slot:
                    continue  # removed, or moved to an earlier retry slot
                self._put(bc, slot + bc.interval_slots)
                self.stats.due += 1
                if bc.running:
                    self.stats.missed += 1
                    if self._on_missed is not None:
                        self._on_missed(bc)
                    continue
                bc.running = True
                self.stats.dispatched += 1
                lags.append(lag)
                task = self._loop.create_task(self._run(bc))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        self._done_slot = max(self._done_slot, current)
        if lags:
            self.stats.lags.extend(lags)
            if self._on_lag is not None:
                for lag in lags:
                    self._on_lag(lag)

    async def _run(self, bc: BoundCheck) -> None:
        try:
            async with self._sem:
                if bc.active:  # it may have been removed while it waited for a slot
                    await self._dispatch(bc)
        except asyncio.CancelledError:
            raise
        except Exception:  # the dispatch pipeline must never kill the scheduler
            log.exception("check dispatch failed", service=bc.key.service, machine=bc.key.machine, check=bc.key.check)
        finally:
            bc.running = False

    def next_due_in(self, bc: BoundCheck) -> float:
        if self._loop is None:
            return math.nan
        return self._t0 + bc.slot * self.tick - self._loop.time()
