"""End to end: `healerd rollout pause|resume|abort` as an operator reads them on a real rollout of the demo
fleet: what was done, and no stale or empty figure (a resumed rollout is not 'held: the rollout is paused')."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import run_cli, wait_until
from .test_crash_resume import SERVICE, tear_down
from .test_rollout import RolloutFleet, rollout_view, start_fleet, wait_rollout_end

pytestmark = pytest.mark.e2e


@pytest.fixture
def demo_fleet(tmp_path: Path) -> Iterator[RolloutFleet]:
    rf = RolloutFleet(tmp_path)
    try:
        yield rf
    finally:
        tear_down(rf)


def test_rollout_resume_says_it_resumed_and_prints_only_figures_that_exist(demo_fleet: RolloutFleet) -> None:
    daemon = start_fleet(demo_fleet)
    url = ("--url", daemon.url)
    out = run_cli("images", "promote", SERVICE, "v2", "--bake", "10m", *url)
    assert out.returncode == 0, out.stdout + out.stderr
    wait_until(lambda: rollout_view(daemon)["stage"] == "bake", 30, "the bake", describe=demo_fleet.describe)

    paused = run_cli("rollout", "pause", SERVICE, *url)
    assert paused.returncode == 0, paused.stdout + paused.stderr
    assert "rollout " in paused.stdout and ": paused" in paused.stdout, paused.stdout
    wait_until(
        lambda: rollout_view(daemon)["waiting"].startswith("held: the rollout is paused"), 10, "the rollout to hold"
    )

    resumed = run_cli("rollout", "resume", SERVICE, *url)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert ": resumed" in resumed.stdout, resumed.stdout
    assert "held: the rollout is paused" not in resumed.stdout, resumed.stdout
    assert "None" not in resumed.stdout, resumed.stdout
    status = run_cli("rollout", "status", SERVICE, *url)
    assert status.returncode == 0 and "None" not in status.stdout, status.stdout
    assert "judge: " in status.stdout and "canary " in status.stdout, status.stdout

    aborted = run_cli("rollout", "abort", SERVICE, *url)
    assert aborted.returncode == 0 and "aborting" in aborted.stdout, aborted.stdout + aborted.stderr
    assert wait_rollout_end(demo_fleet, daemon)["stage"] == "rolled_back"
