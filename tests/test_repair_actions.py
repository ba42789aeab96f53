"""The `command` step's tool runner, on the event loop the daemon runs (uvloop): what the tool says comes back in
the order it said it, a tool that starts a server returns when the tool exits (not when the server does), and
a tool that cannot be run fails the step for good."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import uvloop

from healerd.checks import _spawn
from healerd.remediation.actions import StepFailed
from healerd.remediation.repair_actions import run_tool

T = TypeVar("T")
ENV = {"PATH": os.environ.get("PATH", os.defpath)}


def on_uvloop(coro: Coroutine[Any, Any, T]) -> T:
    return uvloop.run(coro)


@pytest.fixture(autouse=True, params=["posix_spawn", "asyncio"])
def spawn_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on both ways of starting a tool: posix_spawn with the loop watching its pipes (Linux, the
    default) and asyncio's subprocess support (where there are no pidfds)."""
    if request.param == "posix_spawn" and not _spawn.AVAILABLE:
        pytest.skip("posix_spawn path needs Linux 5.3+ (pidfd_open)")
    monkeypatch.setattr(_spawn, "AVAILABLE", request.param == "posix_spawn")
    return str(request.param)


@pytest.fixture
def server_pidfile(tmp_path: Path) -> Iterator[Path]:
    """Where a tool records the server it started; that server is killed at the end."""
    path = tmp_path / "server.pid"
    yield path
    if path.exists():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(path.read_text()), signal.SIGKILL)


def test_the_output_is_stdout_and_stderr_in_the_order_said_and_stdin_is_the_request() -> None:
    script = 'read -r line; echo "got $line"; echo oops >&2; echo done; exit 3'
    code, output = on_uvloop(run_tool(["sh", "-c", script], b'{"machine": "web-1"}\n', ENV))
    assert (code, output) == (3, 'got {"machine": "web-1"}\noops\ndone\n')


def test_a_tool_that_starts_a_server_returns_when_the_tool_exits(server_pidfile: Path) -> None:
    # what `nginx` or `service app start` does: a server in a session of its own, its stdio redirected
    script = f"setsid sleep 60 </dev/null >/dev/null 2>&1 & echo $! > {server_pidfile}; echo started"

    async def run() -> tuple[int, str]:
        async with asyncio.timeout(10):
            return await run_tool(["sh", "-c", script], b"{}", ENV)

    began = time.monotonic()
    code, output = on_uvloop(run())
    took = time.monotonic() - began
    assert (code, output) == (0, "started\n")
    assert took < 5, f"the step waited {took:.1f}s for the server the tool started"
    server = int(server_pidfile.read_text())
    os.kill(server, 0)  # the server is left running: the tool's job was to start it


def test_a_missing_tool_fails_the_step_for_good(tmp_path: Path) -> None:
    with pytest.raises(StepFailed, match="cannot run") as failed:
        on_uvloop(run_tool([str(tmp_path / "no-such-tool")], b"{}", ENV))
    assert failed.value.terminal
