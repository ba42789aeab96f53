"""The canary judge (pure): the candidate's check results against the known-good machines' results of the same
window. Error rate is the share of non-OK results; latency is compared at the median and the 95th percentile.

The baseline is the results of the machines `in_baseline`: of the known-good version, in service and healthy.
A verdict is `pass`, `fail` or `wait` (too few results on a side: never promoted on no data). Its figures go
into the rollout record, the events and the alert, so a rejection can be read and argued with.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

from ..config.models import JudgeConfig
from ..health import Condition
from ..machines import Lifecycle, Machine

#: durations kept per side (reservoir sampling beyond): percentiles of 4,000 samples are within a fraction of a
#: percent of the whole population's, and the rollout record stays small
RESERVOIR = 4000
#: the 95th percentile of fewer results than this is their maximum (one slow answer): p95 is judged only from here
P95_MIN = 20


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks; nan for no values."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def in_baseline(machine: Machine | None, condition: Condition | None, known_good: str) -> bool:
    """Whether a machine's result counts in the baseline the candidate is judged against: it runs the known-good
    version, is in service (not on its way out) and healthy. A machine that is down measures its own failure,
    not the version: counted, it would make any candidate look good. A machine whose version healerd never
    recorded (one an Auto Scaling group or the operator started before healerd knew it) runs the known-good
    version, as healerd launches from it when no version is named."""
    return (
        machine is not None
        and machine.lifecycle is Lifecycle.IN_SERVICE
        and "retiring" not in machine.attributes
        and (machine.image_version or known_good) == known_good
        and condition is Condition.UP
    )


@dataclass
class Samples:
    """One side's results: how many, how many not OK, a uniform sample of their durations, and which machines
    they came from."""

    results: int = 0
    errors: int = 0
    durations: list[float] = field(default_factory=list)
    machines: set[str] = field(default_factory=set)
    _rng: random.Random = field(default_factory=random.Random, repr=False, compare=False)

    def add(self, ok: bool, duration: float, machine: str = "") -> None:
        if machine:
            self.machines.add(machine)
        self.results += 1
        if not ok:
            self.errors += 1
        if len(self.durations) < RESERVOIR:
            self.durations.append(duration)
        else:
            j = self._rng.randrange(self.results)
            if j < RESERVOIR:
                self.durations[j] = duration

    @property
    def error_rate(self) -> float:
        return self.errors / self.results if self.results else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "results": self.results,
            "errors": self.errors,
            "durations": [round(d, 6) for d in self.durations],
            "machines": sorted(self.machines),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Samples:
        d = d or {}
        return cls(
            int(d.get("results", 0)),
            int(d.get("errors", 0)),
            [float(x) for x in d.get("durations", [])],
            {str(x) for x in d.get("machines", [])},
        )


@dataclass(frozen=True)
class Verdict:
    outcome: str  # pass | fail | wait
    reason: str
    figures: dict[str, Any]

    @property
    def passed(self) -> bool:
        return self.outcome == "pass"

    @property
    def failed(self) -> bool:
        return self.outcome == "fail"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f} ms"


def judge(canary: Samples, baseline: Samples, limits: JudgeConfig) -> Verdict:
    """The candidate is worse when its error rate exceeds the baseline's by more than max_error_rate, or its p50
    or p95 duration is more than max_latency_ratio times the baseline's (durations under latency_floor count
    as the floor). Until both sides have min_results, the verdict is `wait`."""
    floor = limits.latency_floor
    figures: dict[str, Any] = {
        "canary_results": canary.results,
        "baseline_results": baseline.results,
        "canary_machines": len(canary.machines),
        "baseline_machines": len(baseline.machines),
        "canary_error_rate": round(canary.error_rate, 6),
        "baseline_error_rate": round(baseline.error_rate, 6),
        "max_error_rate": limits.max_error_rate,
        "max_latency_ratio": limits.max_latency_ratio,
        "min_results": limits.min_results,
    }
    for q in (50, 95):
        c, b = percentile(canary.durations, q), percentile(baseline.durations, q)
        figures[f"canary_p{q}"] = None if math.isnan(c) else round(c, 6)
        figures[f"baseline_p{q}"] = None if math.isnan(b) else round(b, 6)
        figures[f"latency_ratio_p{q}"] = (
            None if math.isnan(c) or math.isnan(b) else round(max(c, floor) / max(b, floor), 3)
        )
    short = [
        f"{side} has {n} result(s)"
        for side, n in (("the canary", canary.results), ("the baseline", baseline.results))
        if n < limits.min_results
    ]
    if short:
        return Verdict("wait", f"too few results to judge: {', '.join(short)}, {limits.min_results} needed", figures)
    excess = canary.error_rate - baseline.error_rate
    if excess > limits.max_error_rate + 1e-9:  # 7% against 6% is 1% more, not 1.0000000000000009%
        return Verdict(
            "fail",
            f"error rate {canary.error_rate:.2%} against the baseline's {baseline.error_rate:.2%} "
            f"(at most {limits.max_error_rate:.2%} more allowed)",
            figures,
        )
    figures["p95_judged"] = min(canary.results, baseline.results) >= P95_MIN
    for q in (50, 95) if figures["p95_judged"] else (50,):
        ratio = figures[f"latency_ratio_p{q}"]
        if ratio is not None and ratio > limits.max_latency_ratio:
            return Verdict(
                "fail",
                f"latency p{q} {_ms(figures[f'canary_p{q}'])} against the baseline's {_ms(figures[f'baseline_p{q}'])}: "
                f"{ratio:g}x (at most {limits.max_latency_ratio:g}x allowed)",
                figures,
            )
    ratios = " and ".join(
        f"p{q} {figures[f'latency_ratio_p{q}']:g}x" for q in (50, 95) if figures[f"latency_ratio_p{q}"] is not None
    )
    return Verdict(
        "pass",
        f"error rate {canary.error_rate:.2%} (baseline {baseline.error_rate:.2%}), latency "
        f"{ratios or 'not measured'} the baseline's, over {canary.results} canary and {baseline.results} baseline "
        f"results (from {len(baseline.machines)} baseline machine{'' if len(baseline.machines) == 1 else 's'})",
        figures,
    )
