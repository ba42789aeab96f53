"""Waiting with a deadline without losing a stop.

Python 3.11's `asyncio.wait_for` returns the awaited result and drops a cancellation that arrives in the
loop turn the awaited thing completes in (fixed in 3.12). A loop that waits that way for a wake-up (a
reconcile loop, a delivery worker, the cluster's lease rounds) then runs on after `task.cancel()`, and a
shutdown that awaits it hangs until systemd kills the daemon. `asyncio.timeout()` counts cancellations
and does not lose one; healerd waits with it (ruff bans `asyncio.wait_for` in healerd/).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any


async def wait_event(event: asyncio.Event, seconds: float | None) -> None:
    """Wait until `event` is set or `seconds` pass. A cancellation always propagates."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


def pending_tasks() -> list[str]:
    """The running loop's unfinished tasks other than the caller's, each with the coroutines it is suspended
    in, innermost last ("healerd-remediation in _loop line 179 > wait_event line 22 > wait line 54"): what a
    slow stop waits for."""
    current = asyncio.current_task()
    described = []
    for task in asyncio.all_tasks():
        if task.done() or task is current:
            continue
        coro: Any = task.get_coro()
        chain = []
        while coro is not None:
            frame = getattr(coro, "cr_frame", None) or getattr(coro, "gi_frame", None)
            if frame is not None:
                chain.append(f"{frame.f_code.co_name} line {frame.f_lineno}")
            coro = getattr(coro, "cr_await", None) or getattr(coro, "gi_yieldfrom", None)
        where = f" in {' > '.join(chain[-4:])}" if chain else ""
        described.append(f"{task.get_name()}{where}")
    return sorted(described)
