"""A stop that arrives in the loop turn a wake-up does never hangs the daemon's shutdown.

Python 3.11's `asyncio.wait_for` drops a cancellation when the awaited thing completes in the same turn; a
loop waiting for its wake-up that way ran on after `cancel()`, and `healerd` stopping (or a cluster node
stepping down) waited for it until systemd killed it with SIGKILL (seen as a node that did not exit on
SIGTERM right after losing its lease). These tests put the wake-up and the stop in one turn.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from healerd._aio import pending_tasks
from healerd.alerting import Alerting
from healerd.events import Event, EventType

STOP_WITHIN = 3.0  # seconds; the reconcile loop's own wait is longer, so a lost stop shows


async def test_the_remediation_loop_stops_when_woken_as_it_is_stopped(rig_factory: Any) -> None:
    rig = await rig_factory()
    await rig.engine.start()
    await asyncio.sleep(0.2)  # the loop has reconciled and waits for the next wake-up
    for _ in range(3):
        # an event that wakes the loop, and the stop, in one turn
        rig.bus.publish(Event(EventType.SERVICE_STATE_CHANGED, "web", "degraded", time.time()))
        started = time.monotonic()
        await asyncio.wait_for(rig.engine.stop(), STOP_WITHIN)
        assert not rig.engine.running
        assert time.monotonic() - started < 1.0
        await rig.engine.start()
        await asyncio.sleep(0.1)
    await rig.engine.stop()


async def test_alerting_steps_down_when_regrouping_as_it_is_told_to(rig_factory: Any) -> None:
    rig = await rig_factory()
    alerting = Alerting(rig.store, rig.metrics, base_url="http://127.0.0.1:1")
    alerting.configure(rig.config)
    await alerting.start(lead=False)
    await alerting.lead(poll=1.0)  # as a cluster's leader: the grouper also polls for other nodes' items
    try:
        await asyncio.sleep(0.2)
        alerting.configure(rig.config)  # wakes the grouper
        await asyncio.wait_for(alerting.follow(), STOP_WITHIN)  # and the step-down in the same turn
        assert all(t.done() for t in asyncio.all_tasks() if t.get_name() == "healerd-outbox-grouper")
    finally:
        await alerting.stop(flush_for=0.5)


async def test_a_slow_stop_names_the_task_and_the_coroutine_it_waits_in() -> None:
    async def flushing_notifications() -> None:
        await asyncio.sleep(30)

    async def worker() -> None:
        await flushing_notifications()

    task = asyncio.create_task(worker(), name="healerd-notify-oncall")
    await asyncio.sleep(0)
    try:
        described = [d for d in pending_tasks() if d.startswith("healerd-notify-oncall")]
        assert len(described) == 1
        assert "flushing_notifications line" in described[0], described
    finally:
        task.cancel()
