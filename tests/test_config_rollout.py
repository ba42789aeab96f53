"""`images.<name>.rollout` in the config (docs/rollouts.md): the defaults when it is absent, a full section with
durations and rates as people write them, and every mistake reported with its YAML path and line."""

from __future__ import annotations

from pathlib import Path

import pytest
from test_config import problems_of, write

from healerd.config import ConfigError, load_config
from healerd.config.models import JudgeConfig, RolloutConfig

IMAGE = """\
providers:
  demo: {kind: local}
images:
  demo-web:
    provider: demo
    versions:
      v1: {command: [python3, -m, healerd.demo, --port, "{port}"]}
      v2: {command: [python3, -m, healerd.demo, --port, "{port}", --latency, "0.06"]}
    known_good: v1
ROLLOUT
services:
  web:
    provider: demo
    image: demo-web
    desired: 3
"""

FULL = """\
    rollout:
      canary: 2
      bake: 30s
      max_bake: 2m
      max_surge: 2
      max_unavailable: 1
      probation_timeout: 90s
      drain: 500ms
      judge:
        max_error_rate: 1%
        max_latency_ratio: 1.25
        min_results: 20
        latency_floor: 2ms
"""


def config_with(rollout: str) -> str:
    return IMAGE.replace("ROLLOUT\n", rollout)


def rollout_of(tmp_path: Path, rollout: str) -> RolloutConfig:
    return load_config(write(tmp_path, config_with(rollout))).images["demo-web"].rollout


def line_of(text: str, at: str) -> int:
    lines = [i for i, line in enumerate(text.splitlines(), start=1) if at in line]
    assert len(lines) == 1, f"{at!r} is on lines {lines}"
    return lines[0]


def test_without_a_rollout_section_the_defaults_apply(tmp_path: Path) -> None:
    r = rollout_of(tmp_path, "")
    assert (r.canary, r.bake, r.max_bake, r.bake_limit) == (1, 300.0, None, 900.0)  # bake 5m, up to 3 x bake
    assert (r.max_surge, r.max_unavailable, r.probation_timeout, r.drain) == (1, 0, 600.0, 5.0)
    j = r.judge
    assert (j.max_error_rate, j.max_latency_ratio, j.min_results, j.latency_floor) == (0.01, 1.5, 50, 0.005)
    assert r == RolloutConfig() and j == JudgeConfig()


def test_a_full_rollout_section_is_read_with_its_units(tmp_path: Path) -> None:
    r = rollout_of(tmp_path, FULL)
    assert (r.canary, r.bake, r.max_bake, r.bake_limit) == (2, 30.0, 120.0, 120.0)
    assert (r.max_surge, r.max_unavailable, r.probation_timeout, r.drain) == (2, 1, 90.0, 0.5)
    j = r.judge
    assert (j.max_error_rate, j.max_latency_ratio, j.min_results) == (0.01, 1.25, 20)
    assert j.latency_floor == pytest.approx(0.002)


def test_the_example_configs_rollout_is_what_its_comments_say() -> None:
    cfg = load_config(Path(__file__).parent.parent / "config.example.yaml")
    r = cfg.images["demo-web"].rollout
    assert (r.canary, r.bake, r.max_surge, r.max_unavailable, r.drain) == (1, 30.0, 1, 0, 2.0)
    assert (r.judge.max_error_rate, r.judge.max_latency_ratio, r.judge.min_results) == (0.01, 1.5, 20)


@pytest.mark.parametrize(
    ("written", "rate"),
    [("1%", 0.01), ("0.5%", 0.005), ("0%", 0.0), ("100%", 1.0), ("0.02", 0.02), ("'2.5 %'", 0.025)],
)
def test_an_error_rate_is_a_percentage_or_a_fraction(tmp_path: Path, written: str, rate: float) -> None:
    r = rollout_of(tmp_path, f"    rollout:\n      judge: {{max_error_rate: {written}}}\n")
    assert r.judge.max_error_rate == pytest.approx(rate)


BAD = [
    pytest.param(
        "    rollout: {max_surge: 0, max_unavailable: 0}\n",
        "images.demo-web.rollout",
        "max_surge and max_unavailable cannot both be 0: a refresh could never replace a machine",
        "rollout:",
        id="no-room-to-refresh",
    ),
    pytest.param(
        "    rollout:\n      bake: 5m\n      max_bake: 1m\n",
        "images.demo-web.rollout",
        "max_bake (60s) must be at least bake (300s)",
        "rollout:",
        id="max-bake-under-bake",
    ),
    pytest.param(
        "    rollout:\n      judge:\n        max_error_rate: 150%\n",
        "images.demo-web.rollout.judge.max_error_rate",
        "expected a rate like 1% or 0.01 (between 0 and 100%), got '150%'",
        "max_error_rate:",
        id="error-rate-over-100%",
    ),
    pytest.param(
        "    rollout:\n      judge:\n        max_error_rate: -0.1\n",
        "images.demo-web.rollout.judge.max_error_rate",
        "expected a rate like 1% or 0.01 (between 0 and 100%), got -0.1",
        "max_error_rate:",
        id="error-rate-negative",
    ),
    pytest.param(
        "    rollout:\n      judge:\n        max_error_rate: 1\n",
        "images.demo-web.rollout.judge.max_error_rate",
        "a bare number must be a fraction below 1 (0.01 is 1%); write 1% or 100% as a percentage",
        "max_error_rate:",
        id="error-rate-bare-1-is-ambiguous",
    ),
    pytest.param(
        "    rollout:\n      judge:\n        max_latency_ratio: 0.5\n",
        "images.demo-web.rollout.judge.max_latency_ratio",
        "must be at least 1, got 0.5; use 1 or more",
        "max_latency_ratio:",
        id="latency-ratio-under-1",
    ),
    pytest.param(
        "    rollout:\n      judge:\n        min_results: 0\n",
        "images.demo-web.rollout.judge.min_results",
        "must be at least 1, got 0; use 1 or more",
        "min_results:",
        id="no-results-needed",
    ),
    pytest.param(
        "    rollout:\n      bake: 5 minutes\n",
        "images.demo-web.rollout.bake",
        "expected a duration",
        "bake:",
        id="bake-not-a-duration",
    ),
    pytest.param(
        "    rollout:\n      canary: 1\n      max_surg: 2\n",
        "images.demo-web.rollout.max_surg",
        "unknown key 'max_surg'",
        "max_surg:",
        id="typo-under-rollout",
    ),
    pytest.param(
        "    rollout:\n      judge: {min_result: 10}\n",
        "images.demo-web.rollout.judge.min_result",
        "unknown key 'min_result'",
        "min_result:",
        id="typo-under-judge",
    ),
]


@pytest.mark.parametrize(("rollout", "path", "hint", "at"), BAD)
def test_a_bad_rollout_is_refused_naming_its_path_line_and_problem(
    tmp_path: Path, rollout: str, path: str, hint: str, at: str
) -> None:
    text = config_with(rollout)
    problems = problems_of(tmp_path, text)
    mine = [p for p in problems if f": {path}: " in p]
    assert len(mine) == 1, problems
    assert f"healerd.yaml:{line_of(text, at)}: {path}: " in mine[0]
    assert hint in mine[0]


def test_every_rollout_mistake_is_listed_at_once(tmp_path: Path) -> None:
    text = config_with(FULL.replace("max_latency_ratio: 1.25", "max_latency_ratio: 0.5").replace("drain:", "dran:"))
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    rendered = info.value.render()
    assert f"healerd.yaml:{line_of(text, 'dran:')}: images.demo-web.rollout.dran: unknown key 'dran'" in rendered
    assert (
        f"healerd.yaml:{line_of(text, 'max_latency_ratio:')}: images.demo-web.rollout.judge.max_latency_ratio: "
        "must be at least 1, got 0.5; use 1 or more"
    ) in rendered


def test_a_typo_under_rollout_suggests_the_key(tmp_path: Path) -> None:
    joined = "\n".join(problems_of(tmp_path, config_with("    rollout:\n      max_surg: 2\n")))
    assert "did you mean 'max_surge'" in joined


def test_a_bad_rollout_is_the_only_problem_reported(tmp_path: Path) -> None:
    problems = problems_of(tmp_path, config_with("    rollout: {max_surge: 0, max_unavailable: 0}\n"))
    assert len(problems) == 1, problems
