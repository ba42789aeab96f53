"""How `healerd rollout status` prints a rollout: only the judge's figures that exist."""

from __future__ import annotations

from typing import Any

from healerd.cli_rollout import render


def _view(**judge: Any) -> dict[str, Any]:
    return {
        "id": "r1",
        "service": "web",
        "image": "demo-web",
        "version": "v2",
        "previous": "v1",
        "stage": "bake",
        "active": True,
        "paused": False,
        "reason": "",
        "started_at": 1_700_000_000.0,
        "started_by": "cli",
        "waiting": "",
        "judge": judge,
        "progress": {},
        "machines": [
            {"machine": "web-new", "version": "v2", "role": "canary", "lifecycle": "probation", "condition": None}
        ],
    }


def test_a_judge_with_no_canary_result_yet_prints_no_none() -> None:
    text = render(
        _view(
            outcome="wait",
            canary_results=0,
            baseline_results=12,
            canary_error_rate=0.0,
            baseline_error_rate=0.0,
            canary_p50=None,
            canary_p95=None,
            baseline_p50=0.021,
            baseline_p95=0.03,
            latency_ratio_p50=None,
            latency_ratio_p95=None,
        )
    )
    assert "None" not in text, text
    assert "judge: wait; canary 0 results, error rate 0.00%; baseline 12 results, error rate 0.00%, p50 21.0ms" in text
    assert "web-new" in text and "not checked yet" in text, text


def test_the_ratios_are_printed_when_both_sides_have_figures() -> None:
    text = render(
        _view(
            outcome="pass",
            canary_results=40,
            baseline_results=80,
            canary_error_rate=0.0,
            baseline_error_rate=0.0125,
            canary_p50=0.02,
            canary_p95=0.03,
            baseline_p50=0.02,
            baseline_p95=0.025,
            latency_ratio_p50=1.0,
            latency_ratio_p95=1.2,
        )
    )
    assert "latency ratio p50 1x p95 1.2x" in text, text
    assert "error rate 1.25%" in text, text


def test_a_resumed_rollout_is_not_shown_held_by_its_pause() -> None:
    view = _view() | {"waiting": "held: the rollout is paused (healerd rollout resume)"}
    assert "held: the rollout is paused" not in render(view)
    assert "held: the rollout is paused" in render(view | {"paused": True})
