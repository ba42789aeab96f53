"""Check scheduling: a timing wheel of 50 ms slots that fans out to the checks due.

The wheel wakes only for a slot that has checks in it (a loop timer armed for the next non-empty slot), so
an idle or small fleet costs next to nothing between checks; one APScheduler job is its heartbeat, once a
second, catching up whatever a lost wake-up would have skipped. Per wake-up the work is proportional to the
checks due, never to the fleet: 10,000 checks at 5 s is 100 dispatches per slot. Each check keeps a fixed
phase inside its interval (first runs are spread over the interval, no thundering herd) and may be re-run
sooner while soft-failing.
"""

from __future__ import annotations

import asyncio
import heapq
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

#: Checks with an interval of COARSE_FROM slots (5 s) or more start on every COARSE-th slot (200 ms apart)
#: while that slot holds fewer than COARSE_UP_TO checks: a small fleet wakes the daemon 5 times a second
#: instead of 20 (on a small fleet each wake-up costs as much as the work of a check), and a large fleet keeps
#: its checks spread over every slot (no bursts). Lag is unchanged: a check is dispatched in the slot it is
#: due in.
COARSE, COARSE_FROM, COARSE_UP_TO = 4, 100, 32


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
        *,
        on_lag: Callable[[float], None] | None = None,
        on_missed: Callable[[BoundCheck], None] | None = None,
        tick: float = 0.05,
        heartbeat: float = 1.0,
    ) -> None:
        self.tick = tick
        self.heartbeat = heartbeat
        self._dispatch = dispatch
        self._on_lag = on_lag
        self._on_missed = on_missed
        self._wheel: dict[int, list[BoundCheck]] = {}
        self._slots: list[int] = []  # heap of the wheel's slots (stale entries are skipped)
        self._timer: asyncio.TimerHandle | None = None
        self._timer_slot = -1
        self._in_run = False  # run_due re-arms once at its end
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
            IntervalTrigger(
                seconds=self.heartbeat, start_date=datetime.now().astimezone() + timedelta(seconds=self.heartbeat)
            ),
            id="healerd-wheel",
            name="check wheel heartbeat",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=None,
        )
        self._aps.start()
        self._arm()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._aps is not None:
            self._aps.shutdown(wait=False)
            self._aps = None
            # Shutdown takes effect on the next loop turn; a tick job it started at the last moment must finish
            # too, or the loop's teardown cancels it and APScheduler logs that as a failed job.
            await asyncio.sleep(self.tick)
            if self._timer is not None:  # re-armed by that last run
                self._timer.cancel()
                self._timer = None
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
        if bc.interval_slots >= COARSE_FROM:
            # share a wake-up with the checks of the grid slot at or before the phase, while it is not busy
            shared = now + (phase - phase % COARSE - now) % bc.interval_slots
            if len(self._wheel.get(shared, ())) < COARSE_UP_TO:
                first = shared
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
            heapq.heappush(self._slots, slot)
            if not self._in_run and self._loop is not None and (self._timer is None or slot < self._timer_slot):
                self._arm()
        else:
            bucket.append(bc)

    def _arm(self) -> None:
        """Arm the loop timer for the earliest slot that has checks in it."""
        heap = self._slots
        while heap and (heap[0] <= self._done_slot or heap[0] not in self._wheel):
            heapq.heappop(heap)
        if not heap or self._loop is None:
            return
        slot = heap[0]
        if self._timer is not None:
            if self._timer_slot == slot:
                return
            self._timer.cancel()
        self._timer_slot = slot
        self._timer = self._loop.call_at(self._t0 + slot * self.tick, self._wake, slot)

    def _wake(self, slot: int) -> None:
        self._timer = None
        self.run_due(upto=slot)

    async def _on_tick(self) -> None:
        self.run_due()

    def run_due(self, upto: int = -1) -> None:
        """Dispatch every check whose slot has come (catching up on slots a late wake-up skipped); `upto`: a
        slot known to have come (a timer may fire a hair before its time by the loop's clock)."""
        assert self._loop is not None
        now = self._loop.time()
        current = max(upto, int((now - self._t0) / self.tick + 1e-6))
        lags: list[float] = []
        self._in_run = True
        try:
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
        finally:
            self._in_run = False
            self._arm()
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
