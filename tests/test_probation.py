"""Where a machine on probation stands (healerd.health.probation_outcome, probation_deadline): pure, with
explicit times. A machine launched at 1000 s, boot_timeout 30 s and probation_timeout 300 s unless a test says
otherwise; every edge of the boot grace and of the deadline is looked at one tick before, at and after it."""

from __future__ import annotations

import pytest

from healerd.health import CheckHealth, CheckKey, Thresholds
from healerd.probation import ProbationOutcome, probation_deadline, probation_outcome
from healerd.results import CheckResult, Status

LAUNCHED = 1000.0
BOOT = 30.0
TIMEOUT = 300.0
TICK = 0.001

OK = Status.OK
CRIT = Status.CRITICAL
UNKNOWN = Status.UNKNOWN

PASSED = ProbationOutcome.PASSED
FAILED = ProbationOutcome.FAILED
PENDING = ProbationOutcome.PENDING
TIMED_OUT = ProbationOutcome.TIMED_OUT


def check(*statuses: Status, name: str = "health", rise: int = 2, fall: int = 2) -> CheckHealth:
    """A check of the new machine that saw these results, one a second from the launch."""
    ch = CheckHealth(CheckKey("web", "new", name), Thresholds(fall=fall, rise=rise))
    for i, status in enumerate(statuses):
        ch.observe(CheckResult(status, f"{status.name} #{i}"), LAUNCHED + i)
    return ch


def decide(
    *checks: CheckHealth | None,
    now: float,
    boot_timeout: float = BOOT,
    timeout: float = TIMEOUT,
    booted: bool = False,
    started: float | None = None,
    rise: int = 2,
    fall: int = 2,
) -> ProbationOutcome:
    return probation_outcome(
        [(c, rise, fall) for c in checks],
        launched_at=LAUNCHED,
        boot_timeout=boot_timeout,
        now=now,
        booted=booted,
        timeout=timeout,
        started=started,
    )


# -- the deadline ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (1300.0 - TICK, PENDING),
        (1300.0, PENDING),  # at the deadline: still inside it
        (1300.0 + TICK, TIMED_OUT),  # the first instant past it
        (1_000_000.0, TIMED_OUT),
    ],
)
def test_an_undecided_probation_times_out_only_once_past_its_deadline(now: float, expected: ProbationOutcome) -> None:
    assert probation_deadline(LAUNCHED, TIMEOUT) == 1300.0
    assert decide(check(OK), now=now) is expected


@pytest.mark.parametrize(
    ("now", "expected"),
    [(LAUNCHED - TICK, PENDING), (LAUNCHED, PENDING), (LAUNCHED + TICK, TIMED_OUT)],
)
def test_a_timeout_of_zero_ends_the_probation_the_instant_after_the_launch(
    now: float, expected: ProbationOutcome
) -> None:
    assert probation_deadline(LAUNCHED, 0.0) == LAUNCHED
    assert decide(None, now=now, timeout=0.0) is expected


def test_a_small_timeout_counts_from_when_the_wait_began_not_from_the_launch() -> None:
    pending = check(OK)
    assert decide(pending, now=1500.5, timeout=0.5, started=1500.0) is PENDING
    assert decide(pending, now=1500.5 + TICK, timeout=0.5, started=1500.0) is TIMED_OUT


def test_checks_that_pass_at_the_last_instant_pass_and_a_decision_outlives_the_deadline() -> None:
    late = check(CRIT, OK, OK)  # its rise-th OK arrives at the deadline
    assert decide(late, now=1300.0) is PASSED
    assert decide(late, now=1300.0 + TICK) is PASSED  # decided: the deadline no longer matters
    failed = check(OK, CRIT, CRIT)
    assert decide(failed, now=1300.0 + TICK) is FAILED  # says it failed, not that it ran out of time
    assert decide(check(OK), check(OK, OK), now=1300.0 + TICK) is TIMED_OUT  # one check short of rise


# -- the boot grace -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("now", "expected"),
    [
        (LAUNCHED + BOOT - TICK, PENDING),  # booting: a machine that never answered is not failing yet
        (LAUNCHED + BOOT, FAILED),  # boot_timeout elapsed: its failures count
        (LAUNCHED + BOOT + TICK, FAILED),
    ],
)
def test_failures_of_a_machine_that_never_answered_count_once_boot_timeout_elapsed(
    now: float, expected: ProbationOutcome
) -> None:
    assert decide(check(CRIT, CRIT, CRIT), now=now) is expected


def test_a_machine_that_answered_once_is_booted_even_inside_the_grace() -> None:
    assert decide(check(OK, CRIT, CRIT), now=LAUNCHED + 3) is FAILED
    assert decide(check(OK, CRIT), now=LAUNCHED + 3) is PENDING  # one failure of fall 2
    # released from quarantine: booted long ago, no grace at all
    assert decide(check(CRIT, CRIT), now=LAUNCHED + 2, booted=True) is FAILED
    assert decide(check(CRIT, CRIT), now=LAUNCHED + 2, boot_timeout=0.0) is FAILED  # no grace configured


def test_a_boot_grace_longer_than_the_probation_times_out_instead_of_failing() -> None:
    failing = check(CRIT, CRIT, CRIT)
    assert decide(failing, now=1300.0 + TICK, boot_timeout=600.0) is TIMED_OUT
    assert decide(failing, now=1600.0, boot_timeout=600.0) is FAILED  # were it still asked after the grace


# -- what the checks say --------------------------------------------------------------------------------------
def test_unknown_results_neither_pass_nor_fail_a_probation() -> None:
    unsure = check(UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN)
    assert decide(unsure, now=LAUNCHED + BOOT + 10) is PENDING
    assert decide(unsure, now=1300.0 + TICK) is TIMED_OUT
    assert decide(check(OK, UNKNOWN, OK), now=LAUNCHED + 5) is PASSED  # an UNKNOWN breaks no streak


def test_rise_and_fall_are_each_checks_own() -> None:
    after_boot = LAUNCHED + BOOT + 10
    assert decide(check(CRIT, CRIT, OK), now=after_boot) is PENDING  # a hard CRITICAL from booting, recovering
    assert decide(check(CRIT, CRIT, OK, OK), now=after_boot) is PASSED
    assert decide(check(OK, OK, rise=3), now=LAUNCHED + 5, rise=3) is PENDING
    assert decide(check(OK, OK, OK, rise=3), now=LAUNCHED + 5, rise=3) is PASSED
    assert decide(check(OK, CRIT, CRIT, fall=3), now=LAUNCHED + 5, fall=3) is PENDING
    assert decide(check(OK, CRIT, CRIT, CRIT, fall=3), now=LAUNCHED + 5, fall=3) is FAILED


def test_a_machine_failing_one_check_fails_whatever_the_order_of_the_checks() -> None:
    """A booted machine failing one check `fall` times has failed, even while another check has not answered
    yet: which check the service lists first cannot decide whether it is quarantined now or only at the
    deadline (and then for 'not passing in time' rather than for failing)."""
    failing = check(OK, CRIT, CRIT, name="health")
    now = LAUNCHED + 10
    assert decide(failing, None, now=now) is FAILED
    assert decide(None, failing, now=now) is FAILED
    assert decide(check(OK, name="ready"), failing, now=now) is FAILED
