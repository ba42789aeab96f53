"""Health classification with a fake clock: rise/fall, flapping, machine condition, service state."""

from __future__ import annotations

import pytest

from healerd.events import EventType
from healerd.health import (
    CheckHealth,
    CheckKey,
    Condition,
    HealthBook,
    ServiceState,
    Thresholds,
    flap_percent,
)
from healerd.machines import Lifecycle
from healerd.probation import ProbationOutcome, probation_outcome
from healerd.results import CheckResult, Status

OK = CheckResult(Status.OK, "fine")
CRIT = CheckResult(Status.CRITICAL, "broken")
WARN = CheckResult(Status.WARNING, "slow")
UNK = CheckResult(Status.UNKNOWN, "could not tell")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def tick(self, seconds: float = 1.0) -> float:
        self.now += seconds
        return self.now


def make_book(n: int = 3, desired: int = 3, min_healthy: int = 2, fall: int = 3, rise: int = 2) -> HealthBook:
    book = HealthBook()
    book.set_service("web", desired, min_healthy, 0.0)
    for i in range(n):
        book.set_machine("web", f"m{i}", Lifecycle.IN_SERVICE, 0.0, refresh=False)
        book.set_check(CheckKey("web", f"m{i}", "health"), Thresholds(fall=fall, rise=rise))
    book.refresh("web", 0.0)
    return book


def feed(book: HealthBook, machine: str, result: CheckResult, clock: Clock, times: int = 1) -> list[EventType]:
    types: list[EventType] = []
    for _ in range(times):
        types += [e.type for e in book.observe(CheckKey("web", machine, "health"), result, clock.tick())]
    return types


@pytest.mark.parametrize(("fall", "rise"), [(1, 1), (3, 2), (5, 4)])
def test_hard_critical_after_exactly_fall_and_back_after_exactly_rise(fall: int, rise: int) -> None:
    book, clock = make_book(fall=fall, rise=rise), Clock()
    key = CheckKey("web", "m0", "health")
    feed(book, "m0", OK, clock)
    for i in range(1, fall):
        assert feed(book, "m0", CRIT, clock) == []
        ch = book.check(key)
        assert ch is not None and ch.hard is Status.OK and ch.state_type == "soft" and ch.bad_streak == i
    events = feed(book, "m0", CRIT, clock)
    assert EventType.MACHINE_UNHEALTHY in events
    assert book.check(key).hard is Status.CRITICAL  # type: ignore[union-attr]
    assert book.machine("web", "m0").condition is Condition.DOWN  # type: ignore[union-attr]
    for _ in range(rise - 1):
        assert feed(book, "m0", OK, clock) == []
        assert book.check(key).hard is Status.CRITICAL  # type: ignore[union-attr]
    events = feed(book, "m0", OK, clock)
    assert EventType.MACHINE_RECOVERED in events
    assert book.machine("web", "m0").condition is Condition.UP  # type: ignore[union-attr]


def test_an_ok_between_failures_restarts_the_count() -> None:
    book, clock = make_book(fall=3), Clock()
    feed(book, "m0", CRIT, clock, 2)
    feed(book, "m0", OK, clock)
    feed(book, "m0", CRIT, clock, 2)
    assert book.check(CheckKey("web", "m0", "health")).hard is Status.OK  # type: ignore[union-attr]
    assert EventType.MACHINE_UNHEALTHY in feed(book, "m0", CRIT, clock)


def test_unknown_neither_confirms_nor_refutes() -> None:
    book, clock = make_book(fall=3), Clock()
    feed(book, "m0", CRIT, clock, 2)
    assert feed(book, "m0", UNK, clock, 5) == []
    ch = book.check(CheckKey("web", "m0", "health"))
    assert ch is not None and ch.hard is Status.OK and ch.bad_streak == 2
    assert EventType.MACHINE_UNHEALTHY in feed(book, "m0", CRIT, clock)


def test_hard_warning_makes_machine_impaired_and_critical_follows_immediately() -> None:
    book, clock = make_book(fall=2), Clock()
    events = feed(book, "m0", WARN, clock, 2)
    assert EventType.MACHINE_UNHEALTHY in events
    assert book.machine("web", "m0").condition is Condition.IMPAIRED  # type: ignore[union-attr]
    assert book.services["web"].state is ServiceState.DEGRADED
    feed(book, "m0", CRIT, clock)  # between problem states the change is immediate
    assert book.machine("web", "m0").condition is Condition.DOWN  # type: ignore[union-attr]


def test_service_state_optimal_degraded_down_optimal() -> None:
    book, clock = make_book(fall=1, rise=1), Clock()
    for m in ("m0", "m1", "m2"):
        feed(book, m, OK, clock)
    assert book.services["web"].state is ServiceState.OPTIMAL
    feed(book, "m0", CRIT, clock)
    assert book.services["web"].state is ServiceState.DEGRADED
    events = feed(book, "m1", CRIT, clock)
    assert book.services["web"].state is ServiceState.DOWN
    assert EventType.SERVICE_STATE_CHANGED in events
    feed(book, "m0", OK, clock)
    assert book.services["web"].state is ServiceState.DEGRADED
    feed(book, "m1", OK, clock)
    assert book.services["web"].state is ServiceState.OPTIMAL


def test_service_state_counts_only_machines_in_service() -> None:
    book, clock = make_book(fall=1), Clock()
    for m in ("m0", "m1", "m2"):
        feed(book, m, OK, clock)
    book.set_machine("web", "m2", Lifecycle.PROBATION, clock.tick())
    assert book.services["web"].state is ServiceState.DEGRADED
    assert book.services["web"].counts() == {"healthy": 2, "impaired": 0, "down": 0}


def test_service_check_critical_means_down_and_warning_degraded() -> None:
    book, clock = make_book(fall=1, rise=1), Clock()
    skey = CheckKey("web", "", "through-lb")
    book.set_check(skey, Thresholds(fall=1, rise=1))
    book.observe(skey, WARN, clock.tick())
    assert book.services["web"].state is ServiceState.DEGRADED
    book.observe(skey, CRIT, clock.tick())
    assert book.services["web"].state is ServiceState.DOWN
    assert "through-lb" in book.services["web"].reason
    book.observe(skey, OK, clock.tick())
    assert book.services["web"].state is ServiceState.OPTIMAL


def test_flap_percent_matches_nagios_weights() -> None:
    alternating = [Status.OK if i % 2 else Status.CRITICAL for i in range(21)]
    assert flap_percent(alternating) == pytest.approx(100.0)
    steady = [Status.OK] * 21
    assert flap_percent(steady) == 0.0
    one_old_change = [Status.CRITICAL] + [Status.OK] * 20  # the oldest transition weighs 0.75
    assert flap_percent(one_old_change) == pytest.approx(0.75 / 20 * 100)
    one_new_change = [Status.OK] * 20 + [Status.CRITICAL]  # the newest weighs 1.25
    assert flap_percent(one_new_change) == pytest.approx(1.25 / 20 * 100)


def test_alternating_machine_is_flapping_not_bouncing() -> None:
    book, clock = make_book(fall=3, rise=2), Clock()
    seen: list[EventType] = []
    for _ in range(15):
        seen += feed(book, "m0", CRIT, clock)
        seen += feed(book, "m0", OK, clock)
    assert seen.count(EventType.MACHINE_FLAPPING) == 1
    assert EventType.MACHINE_UNHEALTHY not in seen and EventType.MACHINE_RECOVERED not in seen
    m = book.machine("web", "m0")
    assert m is not None and m.condition is Condition.FLAPPING
    assert book.services["web"].state is ServiceState.DEGRADED  # reported as impaired, not down


def test_slow_bouncing_stops_being_announced_once_flapping() -> None:
    book, clock = make_book(fall=2, rise=2), Clock()
    seen: list[EventType] = []
    # Two failures, two successes: hard down and up every 4 runs until flap detection catches it.
    for _ in range(10):
        seen += feed(book, "m0", CRIT, clock, 2)
        seen += feed(book, "m0", OK, clock, 2)
    assert EventType.MACHINE_FLAPPING in seen
    after = seen[seen.index(EventType.MACHINE_FLAPPING) :]
    assert EventType.MACHINE_UNHEALTHY not in after and EventType.MACHINE_RECOVERED not in after
    before = seen[: seen.index(EventType.MACHINE_FLAPPING)]
    bounces = [t for t in before if t in (EventType.MACHINE_UNHEALTHY, EventType.MACHINE_RECOVERED)]
    assert len(bounces) <= 6  # caught within three cycles (5 weighted transitions), then quiet


def test_flapping_stops_below_low_threshold_and_settled_state_is_reported() -> None:
    book, clock = make_book(fall=2, rise=2), Clock()
    for _ in range(6):
        feed(book, "m0", CRIT, clock, 2)
        feed(book, "m0", OK, clock, 2)
    assert book.check(CheckKey("web", "m0", "health")).flapping  # type: ignore[union-attr]
    seen: list[EventType] = []
    for _ in range(25):
        seen += feed(book, "m0", OK, clock)
    assert EventType.MACHINE_FLAPPING in seen
    m = book.machine("web", "m0")
    assert m is not None and m.condition is Condition.UP


def test_steady_failure_is_not_flapping() -> None:
    book, clock = make_book(fall=3), Clock()
    feed(book, "m0", OK, clock, 10)
    seen = feed(book, "m0", CRIT, clock, 30)
    assert EventType.MACHINE_FLAPPING not in seen
    assert seen.count(EventType.MACHINE_UNHEALTHY) == 1


def test_state_changes_are_reported_once() -> None:
    book, clock = make_book(fall=1), Clock()
    feed(book, "m1", OK, clock)
    feed(book, "m2", OK, clock)
    seen = feed(book, "m0", CRIT, clock, 20)
    assert seen.count(EventType.MACHINE_UNHEALTHY) == 1
    assert seen.count(EventType.SERVICE_STATE_CHANGED) == 1


def test_removing_a_machine_updates_the_service() -> None:
    book, clock = make_book(n=3, desired=3, min_healthy=3, fall=1), Clock()
    for m in ("m0", "m1", "m2"):
        feed(book, m, OK, clock)
    events = book.remove_machine("web", "m2", clock.tick())
    assert [e.type for e in events] == [EventType.SERVICE_STATE_CHANGED]
    assert book.services["web"].state is ServiceState.DOWN
    assert book.check(CheckKey("web", "m2", "health")) is None


def test_no_service_alarm_before_the_first_full_round() -> None:
    """At start-up the service is only known once every check ran: a state seen half-way is no news."""
    book, clock = make_book(n=3, desired=3, min_healthy=2, fall=1), Clock()
    assert feed(book, "m0", OK, clock) == []
    assert feed(book, "m1", CRIT, clock) == [EventType.MACHINE_UNHEALTHY]  # no service alarm yet
    events = feed(book, "m2", OK, clock)  # the round is complete: now the degraded service is news
    assert events == [EventType.SERVICE_STATE_CHANGED]
    assert book.services["web"].state is ServiceState.DEGRADED


def test_a_healthy_fleet_completing_its_first_round_sends_nothing() -> None:
    book, clock = make_book(n=3), Clock()
    seen = [t for m in ("m0", "m1", "m2") for t in feed(book, m, OK, clock)]
    assert seen == []
    assert book.services["web"].settled and book.services["web"].state is ServiceState.OPTIMAL


def test_replayed_history_does_not_count_as_the_first_round() -> None:
    book, clock = make_book(n=2, desired=2, min_healthy=1, fall=1), Clock()
    for m in ("m0", "m1"):
        book.observe(CheckKey("web", m, "health"), OK, clock.tick(), replay=True)
    book.resync("web", clock.now)
    assert not book.services["web"].settled
    assert feed(book, "m0", CRIT, clock) == [EventType.MACHINE_UNHEALTHY]
    assert feed(book, "m1", OK, clock) == [EventType.SERVICE_STATE_CHANGED]


def test_machines_booting_at_start_keep_alarms_quiet_until_the_grace_ends() -> None:
    book, clock = HealthBook(), Clock()
    book.set_service("web", 2, 1, clock.now, settle_grace=30.0)
    for m in ("m0", "m1"):
        book.set_machine("web", m, Lifecycle.PROBATION, clock.now)
        book.set_check(CheckKey("web", m, "health"), Thresholds(fall=1, rise=1))
    assert feed(book, "m0", OK, clock) == []  # on probation: the service has nothing in rotation, still quiet
    assert feed(book, "m1", CRIT, clock) == []  # m1 is still booting
    assert book.set_machine("web", "m0", Lifecycle.IN_SERVICE, clock.tick()) == []
    assert book.services["web"].state is ServiceState.DEGRADED
    clock.tick(40)  # the grace is over and the fleet never filled: that is news
    assert book.refresh("web", clock.now - 20) == []  # inside the grace: quiet
    events = [e.type for e in book.refresh("web", clock.now)]
    assert events == [EventType.SERVICE_STATE_CHANGED]


def test_a_down_machine_in_rotation_is_never_optimal() -> None:
    """Four in rotation for desired 3, one down: three healthy is not optimal while a down one takes traffic."""
    book, clock = make_book(n=4, desired=3, min_healthy=2, fall=1), Clock()
    for m in ("m0", "m1", "m2", "m3"):
        feed(book, m, OK, clock)
    assert book.services["web"].state is ServiceState.OPTIMAL
    feed(book, "m3", CRIT, clock)
    svc = book.services["web"]
    assert svc.state is ServiceState.DEGRADED
    assert "1 down in rotation" in svc.reason
    book.set_machine("web", "m3", Lifecycle.QUARANTINED, clock.tick())  # out of rotation: optimal again
    assert book.services["web"].state is ServiceState.OPTIMAL


def test_a_check_unknown_for_unknown_alert_after_is_announced_once_and_cleared() -> None:
    book, clock = HealthBook(), Clock()
    book.set_service("web", 1, 1, clock.now)
    book.set_machine("web", "m0", Lifecycle.IN_SERVICE, clock.now)
    key = CheckKey("web", "m0", "health")
    book.set_check(key, Thresholds(fall=1, rise=1, unknown_alert_after=60.0))
    feed(book, "m0", OK, clock)
    seen: list = []
    for _ in range(12):  # 120 s of UNKNOWN, one result every 10 s
        seen += book.observe(key, UNK, clock.tick(10))
    unknown = [e for e in seen if e.type is EventType.CHECK_UNKNOWN]
    assert len(unknown) == 1 and unknown[0].firing and unknown[0].check == "health"
    assert "UNKNOWN for 60s" in unknown[0].summary and "could not tell" in unknown[0].summary
    assert book.machine("web", "m0").condition is Condition.UP  # type: ignore[union-attr]  # never remediated
    cleared = [e for e in book.observe(key, OK, clock.tick()) if e.type is EventType.CHECK_UNKNOWN]
    assert len(cleared) == 1 and not cleared[0].firing


# -- probation (pure: the check states, the thresholds and `now`) ----------------------------------------------
def probation_check(results: list[CheckResult], fall: int = 2, rise: int = 2) -> CheckHealth:
    ch = CheckHealth(CheckKey("web", "new", "health"), Thresholds(fall=fall, rise=rise))
    for i, r in enumerate(results):
        ch.observe(r, 1000.0 + i)
    return ch


def outcome(
    *checks: CheckHealth | None,
    now: float = 1010.0,
    booted: bool = False,
    timeout: float = 300.0,
    started: float | None = None,
) -> ProbationOutcome:
    return probation_outcome(
        [(c, 2, 2) for c in checks],
        launched_at=1000.0,
        boot_timeout=30.0,
        now=now,
        booted=booted,
        timeout=timeout,
        started=started,
    )


def test_probation_passes_after_rise_oks_on_every_check() -> None:
    assert outcome(probation_check([OK, OK]), probation_check([CRIT, OK, OK])) is ProbationOutcome.PASSED
    assert outcome(probation_check([OK, OK]), probation_check([OK])) is ProbationOutcome.PENDING
    assert outcome(probation_check([OK, OK]), None) is ProbationOutcome.PENDING  # a check without a result


def test_probation_failures_count_only_once_the_machine_has_booted() -> None:
    failing = probation_check([CRIT, CRIT])
    assert outcome(failing, now=1010.0) is ProbationOutcome.PENDING  # still within boot_timeout
    assert outcome(failing, now=1030.0) is ProbationOutcome.FAILED  # boot_timeout elapsed
    assert outcome(failing, now=1010.0, booted=True) is ProbationOutcome.FAILED  # released: booted long ago
    assert outcome(probation_check([OK, CRIT, CRIT]), now=1010.0) is ProbationOutcome.FAILED  # it passed once


def test_probation_fails_on_fall_failures_in_a_row_not_on_a_leftover_hard_state() -> None:
    assert outcome(probation_check([OK, CRIT]), now=1030.0) is ProbationOutcome.PENDING  # one failure, fall 2
    recovering = probation_check([CRIT, CRIT, OK])  # hard CRITICAL left from booting, OK again
    assert outcome(recovering, now=1030.0) is ProbationOutcome.PENDING


def test_probation_times_out_only_while_undecided_and_only_past_its_deadline() -> None:
    clock = Clock()  # launched at 1000, probation_timeout 300 s: the deadline is 1300
    healthy, failed, pending = probation_check([OK, OK]), probation_check([CRIT, CRIT]), probation_check([OK])
    assert outcome(healthy, now=clock.tick(100)) is ProbationOutcome.PASSED
    assert outcome(failed, now=clock.now) is ProbationOutcome.FAILED
    assert outcome(pending, now=clock.now) is ProbationOutcome.PENDING

    clock.now = 1300.0  # exactly the deadline: still inside it
    assert outcome(pending, now=clock.now) is ProbationOutcome.PENDING
    assert outcome(pending, now=clock.tick(0.001)) is ProbationOutcome.TIMED_OUT
    assert outcome(None, now=clock.now) is ProbationOutcome.TIMED_OUT  # a check that never answered
    # a decision wins over the deadline: a late pass still passes, a late failure says it failed
    assert outcome(healthy, now=clock.now) is ProbationOutcome.PASSED
    assert outcome(failed, now=clock.now) is ProbationOutcome.FAILED


def test_a_probation_counted_from_when_a_wait_began_times_out_from_there() -> None:
    pending = probation_check([OK])
    assert outcome(pending, now=1059.5, timeout=60.0) is ProbationOutcome.PENDING
    assert outcome(pending, now=1060.5, timeout=60.0) is ProbationOutcome.TIMED_OUT  # counted from the launch
    assert outcome(pending, now=1260.0, timeout=60.0, started=1200.0) is ProbationOutcome.PENDING
    assert outcome(pending, now=1260.5, timeout=60.0, started=1200.0) is ProbationOutcome.TIMED_OUT


# -- a quarantined machine ---------------------------------------------------------------------------------
def test_a_quarantined_machine_reads_its_last_condition_and_why_not_pending() -> None:
    book, clock = make_book(), Clock()
    key = CheckKey("web", "m0", "health")
    feed(book, "m0", OK, clock, 2)
    hung = CheckResult(Status.CRITICAL, "no answer within 300ms (timed out)")
    feed(book, "m0", hung, clock, 3)
    assert book.machine("web", "m0").condition is Condition.DOWN  # type: ignore[union-attr]

    # quarantined, as the monitor does it: the lifecycle first, then its checks stop
    book.set_machine("web", "m0", Lifecycle.QUARANTINED, clock.tick())
    assert book.remove_check(key, clock.tick()) == []
    m = book.machine("web", "m0")
    assert m is not None and m.condition is Condition.DOWN
    assert m.problem() == "health CRITICAL: no answer within 300ms (timed out)"
    assert book.check(key) is None  # no result of it is taken any more
    assert book.observe(key, OK, clock.tick()) == [] and m.condition is Condition.DOWN
    assert book.services["web"].counts() == {"healthy": 2, "impaired": 0, "down": 0}  # not in service

    # released back on probation: its checks start from scratch
    book.set_machine("web", "m0", Lifecycle.PROBATION, clock.tick())
    assert m.condition is Condition.PENDING and m.checks == {}
    book.set_check(key, Thresholds())
    feed(book, "m0", OK, clock)
    assert m.condition is Condition.UP and m.checks["health"].last == OK


def test_a_quarantined_machine_leaves_the_book_when_it_is_terminated() -> None:
    book, clock = make_book(), Clock()
    feed(book, "m0", CRIT, clock, 3)
    book.set_machine("web", "m0", Lifecycle.QUARANTINED, clock.tick())
    book.remove_check(CheckKey("web", "m0", "health"), clock.tick())
    book.remove_machine("web", "m0", clock.tick())
    assert book.machine("web", "m0") is None
    assert book.services["web"].pending == 2  # the other two machines' checks, never run here


def test_after_a_restart_a_quarantined_machine_reads_what_its_stored_results_say() -> None:
    book = make_book(n=2)
    book.set_machine("web", "m9", Lifecycle.QUARANTINED, 5.0)  # loaded from the store: no check runs for it
    key = CheckKey("web", "m9", "health")
    hung = CheckResult(Status.CRITICAL, "no answer within 300ms (timed out)")
    stored = [(1.0, OK), (2.0, hung), (3.0, hung), (4.0, hung)]
    assert book.recall(key, Thresholds(fall=3), stored)
    m = book.machine("web", "m9")
    assert m is not None and (m.condition, m.since) == (Condition.DOWN, 4.0)
    assert m.problem() == "health CRITICAL: no answer within 300ms (timed out)"
    assert book.check(key) is None and book.services["web"].pending == 2  # shown, not run nor awaited
    assert not book.recall(CheckKey("web", "m0", "health"), Thresholds(), stored)  # in service: it runs
