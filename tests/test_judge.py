"""The canary judge (healerd.rollouts.judge): the candidate's results against the known-good machines' of the
same window. A verdict is what decides whether a version is promoted or rolled back, and its reason and figures
are what an operator reads in the rollout record and the alert: both are asserted here with concrete numbers."""

from __future__ import annotations

import json
import math
import random
import statistics

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from healerd.config.models import JudgeConfig
from healerd.health import Condition
from healerd.machines import Lifecycle, Machine
from healerd.rollouts.judge import RESERVOIR, Samples, in_baseline, judge, percentile

LIMITS = JudgeConfig()  # max_error_rate 1%, max_latency_ratio 1.5, min_results 50, latency_floor 5 ms


def samples(n: int, duration: float, errors: int = 0, machines: int = 2) -> Samples:
    """n results of `duration` seconds each, the first `errors` of them not OK, from `machines` machines in turn."""
    s = Samples(_rng=random.Random(0))
    for i in range(n):
        s.add(i >= errors, duration, f"web-{i % machines}")
    return s


def from_pairs(pairs: list[tuple[bool, float]]) -> Samples:
    s = Samples(_rng=random.Random(0))
    for ok, duration in pairs:
        s.add(ok, duration)
    return s


# ---------------------------------------------------------------------------------------------------------
# verdicts


def test_a_canary_three_times_slower_fails_naming_p50_and_the_ratio() -> None:
    verdict = judge(samples(100, 0.060), samples(100, 0.020), LIMITS)
    assert verdict.outcome == "fail" and verdict.failed and not verdict.passed
    assert verdict.reason == "latency p50 60.0 ms against the baseline's 20.0 ms: 3x (at most 1.5x allowed)"
    assert verdict.figures == {  # what goes into the rollout record and the alert
        "canary_results": 100,
        "baseline_results": 100,
        "canary_machines": 2,
        "baseline_machines": 2,
        "canary_error_rate": 0.0,
        "baseline_error_rate": 0.0,
        "max_error_rate": 0.01,
        "max_latency_ratio": 1.5,
        "min_results": 50,
        "canary_p50": 0.06,
        "baseline_p50": 0.02,
        "latency_ratio_p50": 3.0,
        "canary_p95": 0.06,
        "baseline_p95": 0.02,
        "latency_ratio_p95": 3.0,
        "p95_judged": True,
    }
    json.dumps(verdict.figures)  # stored as JSON: no nan, no objects


def test_a_slow_tail_alone_fails_on_p95() -> None:
    canary = samples(90, 0.020)
    for _ in range(10):
        canary.add(True, 0.200)  # one check in ten takes 200 ms
    verdict = judge(canary, samples(100, 0.020), LIMITS)
    assert verdict.failed
    assert verdict.figures["latency_ratio_p50"] == 1.0
    assert verdict.figures["latency_ratio_p95"] == 10.0
    assert verdict.reason == "latency p95 200.0 ms against the baseline's 20.0 ms: 10x (at most 1.5x allowed)"


def test_two_percent_errors_against_none_fails_with_a_one_percent_limit() -> None:
    verdict = judge(samples(100, 0.020, errors=2), samples(100, 0.020), LIMITS)
    assert verdict.failed
    assert verdict.reason == "error rate 2.00% against the baseline's 0.00% (at most 1.00% more allowed)"
    assert (verdict.figures["canary_error_rate"], verdict.figures["baseline_error_rate"]) == (0.02, 0.0)


def test_errors_are_judged_before_latency() -> None:
    verdict = judge(samples(100, 0.100, errors=50), samples(100, 0.020), LIMITS)
    assert verdict.failed and verdict.reason.startswith("error rate 50.00%")


def test_the_same_error_rate_as_a_noisy_baseline_passes() -> None:
    verdict = judge(samples(200, 0.020, errors=10), samples(200, 0.021, errors=10), LIMITS)
    assert verdict.outcome == "pass" and verdict.passed and not verdict.failed
    assert verdict.figures["canary_error_rate"] == verdict.figures["baseline_error_rate"] == 0.05
    assert verdict.reason == (
        "error rate 5.00% (baseline 5.00%), latency p50 0.952x and p95 0.952x the baseline's, "
        "over 200 canary and 200 baseline results (from 2 baseline machines)"
    )


def test_slower_within_the_ratio_passes() -> None:
    verdict = judge(samples(100, 0.029), samples(100, 0.020), LIMITS)  # 1.45x
    assert verdict.passed and verdict.figures["latency_ratio_p50"] == 1.45


@pytest.mark.parametrize(
    ("canary_n", "baseline_n", "short"),
    [
        (49, 500, "the canary has 49 result(s)"),
        (500, 3, "the baseline has 3 result(s)"),
        (0, 0, "the canary has 0 result(s), the baseline has 0 result(s)"),
    ],
)
def test_too_few_results_on_a_side_waits_even_for_a_perfect_canary(canary_n: int, baseline_n: int, short: str) -> None:
    verdict = judge(samples(canary_n, 0.020), samples(baseline_n, 0.020), LIMITS)
    assert verdict.outcome == "wait" and not verdict.passed and not verdict.failed
    assert verdict.reason == f"too few results to judge: {short}, 50 needed"


def test_too_few_results_waits_rather_than_judging_a_terrible_canary() -> None:
    verdict = judge(samples(10, 1.0, errors=10), samples(100, 0.020), LIMITS)
    assert verdict.outcome == "wait"
    assert verdict.figures["canary_error_rate"] == 1.0  # the figures are there for the operator to read anyway


def test_with_no_durations_yet_the_figures_say_none() -> None:
    figures = judge(Samples(), Samples(), LIMITS).figures
    assert figures["canary_p50"] is None and figures["latency_ratio_p95"] is None
    json.dumps(figures, allow_nan=False)


def test_latencies_under_the_floor_are_not_called_twice_as_slow() -> None:
    canary, baseline = samples(100, 0.002), samples(100, 0.001)  # 2 ms against 1 ms, both under the 5 ms floor
    verdict = judge(canary, baseline, LIMITS)
    assert verdict.passed
    assert (verdict.figures["canary_p50"], verdict.figures["baseline_p50"]) == (0.002, 0.001)  # raw values kept
    assert verdict.figures["latency_ratio_p50"] == 1.0
    # the floor is what makes it pass: with a 1 µs one, 2x fails
    assert judge(canary, baseline, JudgeConfig(latency_floor=1e-6)).reason.startswith("latency p50 2.0 ms")


def test_the_floor_does_not_hide_a_slowdown_above_it() -> None:
    verdict = judge(samples(100, 0.008), samples(100, 0.001), LIMITS)  # 8 ms against 1 ms (counted as 5 ms)
    assert verdict.failed and verdict.figures["latency_ratio_p50"] == 1.6


@pytest.mark.parametrize(("canary_errors", "baseline_errors"), [(7, 6), (58, 57)])
def test_exactly_the_allowed_excess_of_errors_passes(canary_errors: int, baseline_errors: int) -> None:
    verdict = judge(samples(100, 0.020, canary_errors), samples(100, 0.020, baseline_errors), LIMITS)
    assert verdict.outcome == "pass", verdict.reason


def test_a_zero_floor_is_refused_and_zero_durations_still_give_a_verdict() -> None:
    with pytest.raises(ValueError, match="latency_floor must be above 0"):
        JudgeConfig(latency_floor=0)
    verdict = judge(samples(100, 0.0), samples(100, 0.0), JudgeConfig(latency_floor=1e-6))
    assert verdict.outcome == "pass"


def test_counts_without_durations_still_give_a_verdict() -> None:
    counts = Samples.from_dict({"results": 100, "errors": 0})
    assert judge(counts, counts, LIMITS).outcome in ("pass", "wait")


# ---------------------------------------------------------------------------------------------------------
# percentile


def test_percentile_interpolates_between_closest_ranks() -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], 50) == 2.5  # unsorted input
    assert percentile([1.0, 2.0, 3.0, 4.0], 25) == 1.75
    assert percentile([1.0, 2.0, 3.0, 4.0], 0) == 1.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 100) == 4.0
    assert percentile([float(i) for i in range(1, 101)], 95) == pytest.approx(95.05)
    assert percentile([7.0], 95) == 7.0
    assert math.isnan(percentile([], 50))


def test_percentile_leaves_its_input_alone() -> None:
    values = [3.0, 1.0, 2.0]
    percentile(values, 50)
    assert values == [3.0, 1.0, 2.0]


@given(st.lists(st.floats(0, 1e4), min_size=2, max_size=200), st.integers(1, 99))
def test_percentile_agrees_with_the_standard_librarys_inclusive_quantiles(values: list[float], q: int) -> None:
    expected = statistics.quantiles(values, n=100, method="inclusive")[q - 1]
    assert percentile(values, q) == pytest.approx(expected, rel=1e-9, abs=1e-9)


# ---------------------------------------------------------------------------------------------------------
# samples


def test_the_reservoir_keeps_at_most_its_size_and_counts_every_result() -> None:
    s = Samples(_rng=random.Random(1))
    for i in range(RESERVOIR * 3):
        s.add(i % 10 != 0, i / 1000)
    assert s.results == RESERVOIR * 3
    assert s.errors == RESERVOIR * 3 // 10
    assert s.error_rate == pytest.approx(0.1)
    assert len(s.durations) == RESERVOIR


def test_the_reservoir_percentiles_stay_close_to_the_whole_streams() -> None:
    rng = random.Random(7)
    stream = [rng.uniform(0.010, 0.110) for _ in range(60_000)]
    s = Samples(_rng=random.Random(8))
    for d in stream:
        s.add(True, d)
    assert len(s.durations) == RESERVOIR
    for q in (50, 95):  # 4,000 of 60,000: within a few standard errors (0.0008 s at p50)
        assert percentile(s.durations, q) == pytest.approx(percentile(stream, q), abs=0.004)


def test_the_reservoir_is_a_sample_of_the_whole_stream_not_its_beginning() -> None:
    s = Samples(_rng=random.Random(3))
    for i in range(40_000):
        s.add(True, 0.010 if i < 20_000 else 0.500)  # the candidate got slow half-way through the bake
    late = sum(1 for d in s.durations if d == 0.500) / len(s.durations)
    assert 0.45 < late < 0.55
    assert judge(s, samples(100, 0.010), LIMITS).failed  # and the judge sees it (p95: 50x)


def test_samples_survive_the_rollout_record_as_json_and_go_on_counting() -> None:
    s = Samples(_rng=random.Random(2))
    for i in range(RESERVOIR + 500):
        s.add(i % 7 != 0, 0.0123456789 + i / 1e5, f"web-{i % 3}")
    stored = json.loads(json.dumps(s.as_dict()))
    again = Samples.from_dict(stored)
    assert (again.results, again.errors, again.machines) == (s.results, s.errors, s.machines)
    assert again.durations == pytest.approx(s.durations, abs=1e-6)  # rounded to the microsecond
    assert judge(again, samples(100, 0.020), LIMITS).figures == judge(s, samples(100, 0.020), LIMITS).figures
    again.add(False, 0.5)  # a resumed bake keeps counting from where it was
    assert (again.results, again.errors, len(again.durations)) == (s.results + 1, s.errors + 1, RESERVOIR)


def test_samples_from_nothing_are_empty() -> None:
    assert Samples.from_dict(None) == Samples() == Samples.from_dict({})
    assert Samples().error_rate == 0.0


# ---------------------------------------------------------------------------------------------------------
# the baseline: machines of the known-good version, in service and healthy


def _m(version: str = "v1", lifecycle: Lifecycle = Lifecycle.IN_SERVICE, **attrs: str) -> Machine:
    return Machine("web", "web-1", "127.0.0.1:1", lifecycle, {"image_version": version, **attrs})


@pytest.mark.parametrize(
    ("machine", "condition", "counted"),
    [
        (_m(), Condition.UP, True),
        (_m(), Condition.DOWN, False),  # down: its errors and timeouts are its failure, not v1's
        (_m(), Condition.IMPAIRED, False),
        (_m(), Condition.FLAPPING, False),
        (_m(), Condition.PENDING, False),
        (_m(), None, False),
        (_m("v0"), Condition.UP, False),  # released back from quarantine on an older version
        (_m(""), Condition.UP, True),  # its version never recorded (found in an Auto Scaling group): known-good
        (Machine("web", "web-1", "127.0.0.1:1"), Condition.UP, True),
        (_m(retiring="1700000000"), Condition.UP, False),  # on its way out, draining
        (_m(lifecycle=Lifecycle.PROBATION), Condition.UP, False),
        (_m(lifecycle=Lifecycle.QUARANTINED), Condition.UP, False),
        (None, Condition.UP, False),
    ],
)
def test_the_baseline_counts_only_healthy_machines_of_the_known_good_version_in_service(
    machine: Machine | None, condition: Condition | None, counted: bool
) -> None:
    assert in_baseline(machine, condition, "v1") is counted


def test_a_down_machine_left_out_of_the_baseline_does_not_pass_a_worse_candidate() -> None:
    # two healthy v1 machines, and one v1 machine down during the bake (35% errors, 800 ms); the candidate
    # fails 12% of its checks. With the down machine's results the baseline has 11.67% errors: the candidate
    # would pass as "0.33% more".
    results = [(f"web-{i % 2}", True, 0.020) for i in range(200)] + [
        ("web-down", i % 20 >= 7, 0.800) for i in range(100)
    ]
    canary = samples(100, 0.020, errors=12, machines=1)
    everything, baseline = Samples(_rng=random.Random(0)), Samples(_rng=random.Random(0))
    for mid, ok, duration in results:
        everything.add(ok, duration, mid)
        if in_baseline(_m(), Condition.DOWN if mid == "web-down" else Condition.UP, "v1"):
            baseline.add(ok, duration, mid)

    assert judge(canary, everything, LIMITS).passed

    verdict = judge(canary, baseline, LIMITS)
    assert verdict.failed
    assert verdict.reason == "error rate 12.00% against the baseline's 0.00% (at most 1.00% more allowed)"
    assert (verdict.figures["baseline_machines"], verdict.figures["baseline_results"]) == (2, 200)
    assert verdict.figures["baseline_p95"] == 0.02


# ---------------------------------------------------------------------------------------------------------
# properties

results = st.lists(st.tuples(st.booleans(), st.floats(0, 30)), max_size=80)
limits = st.builds(
    JudgeConfig,
    max_error_rate=st.floats(0, 0.99),
    max_latency_ratio=st.floats(1, 10),
    min_results=st.integers(1, 40),
    latency_floor=st.sampled_from([0.001, 0.005, 0.1]),
)


@settings(max_examples=100)
@given(results, limits)
def test_a_canary_identical_to_its_baseline_never_fails(pairs: list[tuple[bool, float]], lim: JudgeConfig) -> None:
    verdict = judge(from_pairs(pairs), from_pairs(pairs), lim)
    assert verdict.outcome == ("pass" if len(pairs) >= lim.min_results else "wait"), verdict.reason


@settings(max_examples=100)
@given(results, results, limits, st.booleans())
def test_fewer_than_min_results_on_a_side_always_waits(
    a: list[tuple[bool, float]], b: list[tuple[bool, float]], lim: JudgeConfig, canary_short: bool
) -> None:
    short, other = a[: lim.min_results - 1], b
    canary, baseline = (short, other) if canary_short else (other, short)
    verdict = judge(from_pairs(canary), from_pairs(baseline), lim)
    assert verdict.outcome == "wait" and verdict.reason.startswith("too few results to judge")


@settings(max_examples=100)
@given(
    st.lists(st.tuples(st.booleans(), st.floats(0.005, 30)), min_size=10, max_size=60),
    st.floats(1, 5),
    st.floats(0.002, 20),
)
def test_a_canary_slower_than_the_ratio_above_the_floor_always_fails(
    pairs: list[tuple[bool, float]], max_ratio: float, margin: float
) -> None:
    lim = JudgeConfig(max_latency_ratio=max_ratio, min_results=10)
    k = max_ratio + margin  # the ratio figure is rounded to 3 decimals: beyond that, k is always more
    verdict = judge(from_pairs([(ok, d * k) for ok, d in pairs]), from_pairs(pairs), lim)
    assert verdict.failed and verdict.reason.startswith("latency p50"), verdict.reason


@settings(max_examples=100)
@given(
    st.lists(st.tuples(st.booleans(), st.floats(0, 30)), min_size=10, max_size=60),
    st.floats(0, 1),
    st.integers(0, 60),
)
def test_a_faster_canary_with_fewer_errors_never_fails(pairs: list[tuple[bool, float]], k: float, fixed: int) -> None:
    canary = [(ok or i < fixed, d * k) for i, (ok, d) in enumerate(pairs)]  # some errors gone, every check faster
    verdict = judge(from_pairs(canary), from_pairs(pairs), JudgeConfig(min_results=10))
    assert verdict.outcome == "pass", verdict.reason


def test_p95_is_judged_only_from_20_results_a_side() -> None:
    """Below 20 results the 95th percentile is the slowest answer: one cold request must not reject a build."""
    few = Samples(results=10, errors=0, durations=[0.02] * 9 + [0.2])
    base = Samples(results=10, errors=0, durations=[0.02] * 10)
    verdict = judge(few, base, JudgeConfig(min_results=8))
    assert verdict.passed and verdict.figures["p95_judged"] is False, verdict.reason
    many = Samples(results=40, errors=0, durations=[0.02] * 30 + [0.2] * 10)
    assert judge(many, Samples(results=40, errors=0, durations=[0.02] * 40), JudgeConfig(min_results=8)).failed
