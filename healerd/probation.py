"""Probation, pure: whether a new or released machine's checks let it enter service, failed it, or ran out of
time. Callers pass `now` and each check's health (health.py)."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import TYPE_CHECKING

from .results import Status

if TYPE_CHECKING:
    from .health import CheckHealth


class ProbationOutcome(enum.StrEnum):
    """Where a machine on probation stands."""

    PASSED = "passed"  # every check has `rise` OK results in a row: it may enter service
    FAILED = "failed"  # a check fails `fall` times in a row after the machine has booted
    PENDING = "pending"  # not decided yet
    TIMED_OUT = "timed_out"  # still not decided when its time ran out


def probation_deadline(started: float, timeout: float) -> float:
    """When a probation that started at `started` runs out of time: it times out once `now` is past it."""
    return started + timeout


def probation_outcome(
    checks: Iterable[tuple[CheckHealth | None, int, int]],
    launched_at: float,
    boot_timeout: float,
    now: float,
    booted: bool = False,
    *,
    timeout: float,
    started: float | None = None,
) -> ProbationOutcome:
    """Decide a probation from each check's (health, rise, fall), in the service's check order. A failure
    counts once the machine has booted: it passed a check once, `boot_timeout` elapsed since `launched_at`,
    or it is known to have `booted` long ago (released from quarantine). Still pending past `timeout` after
    `started` (the launch unless given: a playbook counts from when it began to wait), it timed out."""
    outcome = _checks_outcome(checks, booting=not booted and now - launched_at < boot_timeout)
    deadline = probation_deadline(launched_at if started is None else started, timeout)
    if outcome is ProbationOutcome.PENDING and now > deadline:
        return ProbationOutcome.TIMED_OUT
    return outcome


def _checks_outcome(checks: Iterable[tuple[CheckHealth | None, int, int]], booting: bool) -> ProbationOutcome:
    passed = True
    for ch, rise, fall in checks:
        if ch is None:  # no result yet: not passed, but a later check may have failed already
            passed = False
            continue
        if ch.ok_streak < rise or ch.hard is not Status.OK:
            passed = False
        # `fall` failures in a row now (a hard state left over from booting is recovering, not failing)
        if ch.bad_streak >= fall and not (booting and not ch.ever_ok):
            return ProbationOutcome.FAILED
    return ProbationOutcome.PASSED if passed else ProbationOutcome.PENDING
