"""The remediation safety decision (healerd.remediation.safety.decide): pure, tested with an explicit clock.

Each gate must hold a remediation back on its own and name itself (the reason is what the operator sees in
the event, the log, `healerd_remediation_suppressed_total{reason}` and the API); the first gate that holds
wins, and dry-run is decided last so it shows exactly what would otherwise have run.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from healerd.config import Mode
from healerd.health import CheckHealth, CheckKey, MachineHealth, Thresholds
from healerd.machines import Lifecycle
from healerd.remediation.safety import Decision, GateInput, Reason, decide, troubled
from healerd.results import CheckResult, Status

NOW = 1_700_000_000.0


def gate(**overrides: Any) -> GateInput:
    """A situation where every gate is open (auto mode, nothing running, nothing failed)."""
    return dataclasses.replace(GateInput(now=NOW, mode=Mode.AUTO), **overrides)


#: for each gate, the smallest change that closes it (everything else open)
CLOSING: dict[Reason, dict[str, Any]] = {
    Reason.PAUSED: {"paused": True},
    Reason.SILENCED: {"silenced": True},
    Reason.OBSERVE: {"mode": Mode.OBSERVE},
    Reason.FLAPPING: {"flapping": True},
    Reason.DEPENDENCY_DOWN: {"dependencies_down": ("db: 0 serving machine(s), fewer than min_healthy 1",)},
    Reason.MONITOR_SUSPECT: {"monitor_suspect": "a: 2 of 2 down, b: 2 of 2 down"},
    Reason.UNCONFIRMED: {"zone_unconfirmed": "zone a looks lost from here, not from the nodes outside it"},
    Reason.MAX_UNHEALTHY: {"unhealthy": 3, "max_unhealthy": 2},
    Reason.STORM_COOLDOWN: {"storm_until": NOW + 120},
    Reason.MAX_CONCURRENT: {"running": 1, "max_concurrent": 1},
    Reason.MAX_PER_HOUR: {"launches_last_hour": 6, "max_per_hour": 6},
    Reason.RETRY_LIMIT: {"failures": 3, "max_retries": 3, "last_failure": NOW - 86_400},
    Reason.BACKOFF: {"failures": 1, "last_failure": NOW - 10, "backoff": 60},
    Reason.DRY_RUN: {"mode": Mode.DRY_RUN},
}
#: the order the gates are decided in (docs/remediation.md: never make an outage worse; dry-run last)
PRECEDENCE = list(CLOSING)


def test_allowed_when_no_gate_holds() -> None:
    d = decide(gate())
    assert d == Decision.go()
    assert d.allowed is True
    assert d.reason is None
    assert d.retry_at is None


def test_allowed_right_at_the_limits() -> None:
    """Each limit is a maximum, not a strict bound: at the limit minus one (or exactly at max_unhealthy)
    the remediation goes ahead."""
    d = decide(
        gate(
            unhealthy=2,
            max_unhealthy=2,
            storm_until=NOW,  # the cooldown ends now
            running=1,
            max_concurrent=2,
            launches_last_hour=5,
            max_per_hour=6,
            failures=2,
            max_retries=3,
            last_failure=NOW - 120,  # second failure: backoff 60 s doubled = 120 s, just over
            backoff=60,
        )
    )
    assert d.allowed, d


@pytest.mark.parametrize("reason", list(CLOSING), ids=str)
def test_each_gate_holds_on_its_own_and_names_itself(reason: Reason) -> None:
    d = decide(gate(**CLOSING[reason]))
    assert d.allowed is False
    assert d.reason is reason
    assert d.detail, "a held-back remediation must say why"


def test_paused_tells_how_to_resume() -> None:
    d = decide(gate(paused=True))
    assert "paused" in d.detail
    assert "/api/v1/mode" in d.detail


def test_max_unhealthy_counts_and_names_the_limit() -> None:
    d = decide(gate(unhealthy=3, max_unhealthy=1))
    assert d.reason is Reason.MAX_UNHEALTHY
    assert "3 machines unhealthy" in d.detail
    assert "max_unhealthy (1)" in d.detail
    assert d.retry_at is None  # it opens when machines recover, not at a time
    assert decide(gate(unhealthy=1, max_unhealthy=1)).allowed


def test_storm_cooldown_says_when_it_ends() -> None:
    d = decide(gate(storm_until=NOW + 90))
    assert d.reason is Reason.STORM_COOLDOWN
    assert d.retry_at == NOW + 90
    assert "90s left" in d.detail
    # over by itself once the clock passes the end of the cooldown
    assert decide(gate(storm_until=NOW + 90, now=NOW + 90)).allowed
    assert decide(gate(storm_until=NOW + 90, now=NOW + 89.9)).reason is Reason.STORM_COOLDOWN


def test_max_concurrent() -> None:
    d = decide(gate(running=2, max_concurrent=2))
    assert d.reason is Reason.MAX_CONCURRENT
    assert "2 remediation(s) already running" in d.detail
    assert decide(gate(running=1, max_concurrent=2)).allowed


def test_max_per_hour() -> None:
    d = decide(gate(launches_last_hour=6, max_per_hour=6))
    assert d.reason is Reason.MAX_PER_HOUR
    assert "6 replacements in the last hour" in d.detail
    assert "max_per_hour 6" in d.detail
    # 0 means never replace automatically
    assert decide(gate(launches_last_hour=0, max_per_hour=0)).reason is Reason.MAX_PER_HOUR


def test_retry_limit_pages_a_human_whatever_the_time() -> None:
    for later in (0, 3600, 30 * 86_400):
        d = decide(gate(failures=3, max_retries=3, last_failure=NOW - 5, now=NOW + later))
        assert d.reason is Reason.RETRY_LIMIT
        assert "a human decides" in d.detail
        assert d.retry_at is None  # never opens by itself
    # max_retries 0: the first failure is the last one
    assert decide(gate(failures=1, max_retries=0, last_failure=NOW - 86_400)).reason is Reason.RETRY_LIMIT
    assert decide(gate(failures=0, max_retries=0)).allowed


def test_backoff_doubles_with_each_failure_and_says_when() -> None:
    backoff = 60.0
    last = NOW - 1
    for failures, wait in ((1, 60), (2, 120), (3, 240), (4, 480)):
        g = gate(failures=failures, last_failure=last, backoff=backoff, max_retries=10)
        d = decide(g)
        assert d.reason is Reason.BACKOFF, (failures, d)
        assert d.retry_at == last + wait, (failures, d)
        assert f"backing off {wait}s after {failures} failed attempt(s)" in d.detail
        # just before the end it still holds; at the end it opens
        assert decide(dataclasses.replace(g, now=last + wait - 0.001)).reason is Reason.BACKOFF
        assert decide(dataclasses.replace(g, now=last + wait)).allowed


def test_dry_run_holds_only_what_would_otherwise_run() -> None:
    d = decide(gate(mode=Mode.DRY_RUN))
    assert d.reason is Reason.DRY_RUN
    assert "dry-run" in d.detail
    assert d.retry_at is None


@pytest.mark.parametrize("winner", range(len(PRECEDENCE)), ids=lambda i: str(PRECEDENCE[i]))
def test_the_first_gate_that_holds_wins(winner: int) -> None:
    """With this gate and every later one closed, this one is reported (and the earlier ones still open)."""
    closing: dict[str, Any] = {}
    for reason in reversed(PRECEDENCE[winner:]):
        for k, v in CLOSING[reason].items():
            # two gates on the same field (observe and dry_run both set mode): the earlier one decides
            closing[k] = v
    d = decide(gate(**closing))
    assert d.reason is PRECEDENCE[winner], (closing, d)


def test_paused_beats_everything() -> None:
    everything = {k: v for reason in reversed(PRECEDENCE) for k, v in CLOSING[reason].items()}
    everything["mode"] = Mode.OBSERVE
    d = decide(gate(**everything))
    assert d.reason is Reason.PAUSED
    assert d.retry_at is None


def test_dry_run_is_not_reported_when_another_gate_holds() -> None:
    """In dry-run the log must show what auto mode would do: a gate that would hold it back is reported,
    not "dry-run: the playbook would run"."""
    for reason in PRECEDENCE[:-1]:
        if reason is Reason.OBSERVE:
            continue  # same field as dry-run
        d = decide(gate(**CLOSING[reason], mode=Mode.DRY_RUN))
        assert d.reason is reason, (reason, d)


def test_retry_limit_beats_backoff() -> None:
    d = decide(gate(failures=3, max_retries=3, last_failure=NOW - 1, backoff=60))
    assert d.reason is Reason.RETRY_LIMIT


def test_decide_is_pure() -> None:
    g = gate(failures=2, last_failure=NOW - 30, backoff=60)
    before = dataclasses.asdict(g)
    assert decide(g) == decide(g)
    assert dataclasses.asdict(g) == before


# -- the troubled-machines count behind max_unhealthy (pure) ----------------------------------------------------
def machine_health(machine: str, *results: Status) -> MachineHealth:
    mh = MachineHealth("web", machine, Lifecycle.IN_SERVICE)
    ch = CheckHealth(CheckKey("web", machine, "health"), Thresholds(fall=3, rise=2))
    for i, status in enumerate(results):
        ch.observe(CheckResult(status, ""), NOW + i)
    mh.checks["health"] = ch
    mh.condition = mh.compute()
    return mh


def test_troubled_counts_down_and_failing_machines_and_open_incidents_once_each() -> None:
    down = machine_health("m1", Status.CRITICAL, Status.CRITICAL, Status.CRITICAL)
    failing = machine_health("m2", Status.CRITICAL)  # not confirmed yet: machines break together
    warning = machine_health("m3", Status.WARNING)  # a soft WARNING is not trouble
    recovering = machine_health("m4", Status.CRITICAL, Status.OK)
    fine = machine_health("m5", Status.OK)
    assert troubled([], [down, failing, warning, recovering, fine]) == 2
    assert troubled(["m1", "m9"], [down, failing]) == 3  # m9: out of rotation, its incident still open
    assert troubled([], []) == 0


def test_a_dependency_down_names_it_and_wins_over_max_unhealthy() -> None:
    """The database down makes every web machine fail: that is the dependency's doing, and the words say so."""
    d = decide(gate(dependencies_down=("db: 0 serving machine(s)",), unhealthy=3, max_unhealthy=1))
    assert d.reason is Reason.DEPENDENCY_DOWN
    assert "db: 0 serving machine(s)" in d.detail and "nothing is replaced until the dependency is back" in d.detail
