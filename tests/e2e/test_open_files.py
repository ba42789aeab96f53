"""Open files at fleet scale: healerd raises its soft RLIMIT_NOFILE at start; checks that may run at once
and cannot get a socket under the hard limit are refused at validation with the numbers and the fix,
instead of breaking at run time; a fleet larger than the room for kept-alive connections runs, warned."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import free_port, require_binary

from healerd.openfiles import RESERVE, budget_problem

from .helpers import http_check, make_config, wait_until, write_config

pytestmark = pytest.mark.e2e


def test_the_budget_names_the_numbers_and_the_fix() -> None:
    assert budget_problem(1000, hard=65536) is None
    assert budget_problem(1000, max_concurrent=500, hard=1024) is None  # 500 at once + 256 fit
    problem = budget_problem(1000, hard=1024)
    assert problem is not None
    assert f"about {1000 + RESERVE} open files" in problem and "the limit here is 1024" in problem
    assert "LimitNOFILE" in problem and "ulimit -Hn" in problem


def test_a_fleet_that_cannot_fit_is_refused_at_validation(tmp_path: Path) -> None:
    prlimit = require_binary("prlimit")
    machines = [(f"m{i}", f"127.0.0.{1 + i // 250}:{20000 + i}") for i in range(1000)]
    path = write_config(tmp_path / "healerd.yaml", make_config(tmp_path, free_port(), machines, [http_check()]))

    def validate(nofile: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [prlimit, f"--nofile={nofile}", sys.executable, "-m", "healerd", "validate", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    out = validate("1024:1024")
    assert out.returncode == 2, out
    assert "1000 network checks need about 1256 open files" in out.stderr and "the limit here is 1024" in out.stderr
    assert "Traceback" not in out.stderr
    ok = validate("1024:4096")
    assert ok.returncode == 0, ok


def test_a_fleet_larger_than_the_keepalive_room_is_valid_and_warned(tmp_path: Path) -> None:
    prlimit = require_binary("prlimit")
    machines = [(f"m{i}", f"127.0.{1 + i // 250}.{1 + i % 250}:8080") for i in range(2000)]
    config = make_config(tmp_path, free_port(), machines, [http_check()])
    config["daemon"]["max_concurrent_checks"] = 200
    path = write_config(tmp_path / "healerd.yaml", config)
    out = subprocess.run(
        [prlimit, "--nofile=1024:2048", sys.executable, "-m", "healerd", "validate", "-c", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out
    # 2048 - 256 reserved - 200 for checks running at once = 1592 kept alive; 408 connect anew each run
    assert "leaves room to keep 1592 connections alive between runs: the other 408 connect anew" in out.stderr
    assert "LimitNOFILE" in out.stderr


def test_the_daemon_raises_its_soft_limit_to_the_hard_one(tmp_path: Path) -> None:
    prlimit = require_binary("prlimit")
    port = free_port()
    path = write_config(
        tmp_path / "healerd.yaml", make_config(tmp_path, port, [("web-1", "127.0.0.1:9")], [http_check()])
    )
    # started with a soft limit of 1,024: healerd lifts it to the hard limit and says so
    log = tmp_path / "limited.log"
    with log.open("wb") as f:
        proc = subprocess.Popen(
            [prlimit, "--nofile=1024:8192", sys.executable, "-m", "healerd", "run", "-c", str(path)],
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        wait_until(lambda: "open files limit raised" in log.read_text(), 15, "the raise to be logged")
        limits = Path(f"/proc/{proc.pid}/limits").read_text()
        line = next(ln for ln in limits.splitlines() if ln.startswith("Max open files"))
        assert line.split()[3:5] == ["8192", "8192"], line
        assert "soft_before=1024" in log.read_text() and "soft=8192" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(10)
