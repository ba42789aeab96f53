"""Runs one check on one target: the framework side of the plugin API (timeout, errors, timing)."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import structlog

from .checks import Check, CheckEnv
from .checks.base import RUN_DEADLINE, Unbuildable
from .config import CheckSpec
from .durations import format_duration
from .health import CheckKey
from .results import CheckResult, Status
from .targets import Target, render_model

log = structlog.get_logger("healerd.runner")


@dataclass(eq=False, slots=True)
class BoundCheck:
    """One check bound to one target, with its config rendered; what the scheduler schedules."""

    key: CheckKey
    spec: CheckSpec
    check: Check[Any]
    address: str = ""
    running: bool = False
    active: bool = True
    slot: int = -1  # the scheduler's wheel slot this check is due in
    interval_slots: int = 1
    retry_slots: int = 0
    runs: int = 0
    metric_children: dict[Status, Any] = field(default_factory=dict)
    duration_child: Any = None


def build_check(spec: CheckSpec, target: Target, env: CheckEnv) -> Check[Any]:
    """The check of `spec` for `target`, its options rendered for it; one that cannot be built for it (an address
    that makes no URL, a template that makes no port or name) is an UNKNOWN check saying why at each run."""
    try:
        return spec.check_class(render_model(spec.options, target.fields()), target, env=env)
    except Exception as exc:  # a kind's bug, like a bad value, is said by every run of that machine's check
        why = str(exc) if isinstance(exc, ValueError | TypeError) else f"{type(exc).__name__}: {exc}"
        return Unbuildable(target, env, reason=f"cannot run {spec.kind} on {target.address[:100]!r}: {why}"[:500])


def _consume(task: asyncio.Task[CheckResult]) -> None:
    """Collect the outcome of a check abandoned at its timeout so nothing is left unretrieved."""
    if not task.cancelled():
        task.exception()


class CheckExited(Exception):
    """A check called sys.exit() or raised KeyboardInterrupt: reported as its result, never let through."""


async def _guarded(check: Check[Any]) -> CheckResult:
    try:
        return await check.run()
    except (SystemExit, KeyboardInterrupt) as exc:
        # asyncio would re-raise these out of the event loop and stop the daemon
        raise CheckExited(f"{type(exc).__name__}: {exc}") from None


async def run_check(check: Check[Any], timeout: float, timeout_status: Status | None = None) -> CheckResult:
    """Run `check` with a hard timeout; never raises. A raise becomes UNKNOWN with the reason. A run that does
    not finish in time is `timeout_status` (default: the kind's): CRITICAL for a network check whose target
    did not answer, UNKNOWN for a check that could not decide."""
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    token = RUN_DEADLINE.set(loop.time() + timeout)
    try:
        task = loop.create_task(_guarded(check))  # the task takes a copy of the context: the deadline with it
    finally:
        RUN_DEADLINE.reset(token)
    # Wait for the task or the timeout, whichever comes first, without asyncio.wait's sets and callbacks:
    # a future and a timer (a check that swallows its cancellation cannot hold the scheduler either way).
    waiter: asyncio.Future[None] = loop.create_future()

    def wake(*_: object) -> None:
        if not waiter.done():
            waiter.set_result(None)

    task.add_done_callback(wake)
    timer = loop.call_later(timeout, wake)
    try:
        await waiter
    except asyncio.CancelledError:
        task.cancel()
        raise
    finally:
        timer.cancel()
    duration = time.perf_counter() - started
    if not task.done():
        # Cancel and move on: even a check that swallows the cancellation cannot stall the scheduler.
        task.cancel()
        task.add_done_callback(_consume)
        status = check.timeout_status if timeout_status is None else timeout_status
        if status is Status.UNKNOWN:
            return CheckResult(Status.UNKNOWN, f"check timed out after {timeout:g}s", (), duration)
        return CheckResult(status, f"no answer within {format_duration(timeout)}", (), duration)
    try:
        result = task.result()
    except asyncio.CancelledError:
        return CheckResult(Status.UNKNOWN, "check was cancelled", (), duration)
    except CheckExited as exc:
        return CheckResult(Status.UNKNOWN, f"check raised {exc}", (), duration)
    except Exception as exc:  # a plugin's bug is reported as its result, not raised
        log.debug("check raised", exc_info=True)
        return CheckResult(Status.UNKNOWN, f"check raised {type(exc).__name__}: {exc}", (), duration)
    if not isinstance(result, CheckResult):
        return CheckResult(
            Status.UNKNOWN,
            f"check returned {type(result).__name__}, not a CheckResult; return CheckResult.ok(...) and friends",
            (),
            duration,
        )
    return CheckResult(result.status, result.message, result.metrics, duration)
