"""The wheel scheduler on a real event loop: cadence, spread, no overlap, retry while soft-failing."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from healerd.checks import CheckEnv
from healerd.checks.tcp import TcpCheck, TcpConfig
from healerd.config import CheckSpec
from healerd.health import CheckKey
from healerd.results import Status
from healerd.runner import BoundCheck
from healerd.scheduler import WheelScheduler
from healerd.targets import Target


def spec(name: str = "c", interval: float = 0.2, retry: float | None = None) -> CheckSpec:
    return CheckSpec(
        name, "tcp", interval, interval, retry, 3, 2, 20.0, 30.0, TcpConfig(), TcpCheck, Status.CRITICAL, 300.0, "x"
    )


def bound(i: int, s: CheckSpec) -> BoundCheck:
    target = Target("svc", f"m{i}", "127.0.0.1:9")
    return BoundCheck(CheckKey("svc", f"m{i}", s.name), s, TcpCheck(TcpConfig(), target, env=CheckEnv()))


async def test_each_check_runs_once_per_interval_spread_over_it() -> None:
    starts: dict[str, list[float]] = {}

    async def dispatch(bc: BoundCheck) -> None:
        starts.setdefault(bc.key.machine, []).append(time.monotonic())

    sched = WheelScheduler(dispatch, max_concurrent=100, tick=0.02)
    s = spec(interval=0.4)
    for i in range(50):
        sched.add(bound(i, s))
    sched.start()
    await asyncio.sleep(1.3)
    await sched.stop()
    counts = [len(v) for v in starts.values()]
    assert len(starts) == 50
    assert min(counts) >= 3 and max(counts) <= 4  # 1.3 s / 0.4 s
    for times in starts.values():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert all(0.2 < g < 0.6 for g in gaps), gaps  # one late tick makes one gap long, the next short
    first = sorted(v[0] for v in starts.values())
    # first runs are spread over the interval, not all in one burst
    assert first[-1] - first[0] > 0.25
    assert sched.stats.as_dict()["lag_p99_seconds"] < 0.25


async def test_a_slow_check_is_not_started_twice_and_the_miss_is_counted() -> None:
    running = 0
    peak = 0
    missed: list[str] = []

    async def dispatch(bc: BoundCheck) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.45)
        running -= 1

    sched = WheelScheduler(dispatch, max_concurrent=10, on_missed=lambda bc: missed.append(bc.key.machine), tick=0.02)
    sched.add(bound(0, spec(interval=0.1)))
    sched.start()
    await asyncio.sleep(1.0)
    await sched.stop()
    assert peak == 1
    assert len(missed) >= 4
    assert sched.stats.missed == len(missed)


async def test_retry_interval_brings_the_next_run_forward() -> None:
    times: list[float] = []
    sched: WheelScheduler

    async def dispatch(bc: BoundCheck) -> None:
        times.append(time.monotonic())
        sched.retry_soon(bc)  # as the monitor does while a failure is unconfirmed

    sched = WheelScheduler(dispatch, max_concurrent=10, tick=0.02)
    sched.add(bound(0, spec(interval=1.0, retry=0.1)))
    sched.start()
    await asyncio.sleep(1.6)
    await sched.stop()
    assert len(times) >= 5  # about one run per 0.1 s once the first one happened
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) < 0.3


async def test_removed_checks_stop_and_the_global_bound_holds() -> None:
    running = 0
    peak = 0
    ran: list[str] = []

    async def dispatch(bc: BoundCheck) -> None:
        nonlocal running, peak
        ran.append(bc.key.machine)
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.15)
        running -= 1

    sched = WheelScheduler(dispatch, max_concurrent=5, tick=0.02)
    checks = [bound(i, spec(interval=0.2)) for i in range(30)]
    for bc in checks:
        sched.add(bc)
    sched.start()
    await asyncio.sleep(0.5)
    for bc in checks[:10]:
        sched.remove(bc)
    ran.clear()
    await asyncio.sleep(0.5)
    await sched.stop()
    assert peak <= 5
    assert not {f"m{i}" for i in range(10)} & set(ran)


async def test_stop_cancels_running_checks_promptly() -> None:
    cancelled: list[Any] = []

    async def dispatch(bc: BoundCheck) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.append(bc)
            raise

    sched = WheelScheduler(dispatch, max_concurrent=10, tick=0.02)
    sched.add(bound(0, spec(interval=0.1)))
    sched.start()
    await asyncio.sleep(0.3)
    started = time.monotonic()
    await sched.stop()
    assert time.monotonic() - started < 0.5
    assert cancelled
