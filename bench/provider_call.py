"""The cost of one `command` provider call against one exec check run, on the same spawn path and the same
trivial executable (a shell that answers at once): `python -m bench.provider_call [N]`.

A provider call adds to a check run: a stdin pipe written with the request, a stderr pipe read, the JSON
request built and the reply parsed."""

from __future__ import annotations

import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from healerd.checks import CheckEnv
from healerd.checks.exec import ExecCheck, ExecConfig
from healerd.log import configure
from healerd.machines import Machine
from healerd.providers.command import CommandProvider
from healerd.providers.command_protocol import CommandOptions
from healerd.targets import Target


async def per_call(n: int, call: Callable[[], Awaitable[Any]]) -> list[float]:
    times = []
    for _ in range(n):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return times


async def main(n: int) -> None:
    configure(level="warning", stream=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "answer"
        exe.write_text("#!/bin/sh\necho '{\"alive\": true}'\n")
        exe.chmod(0o755)
        env = CheckEnv(check_paths=(), base_dir=Path(tmp))
        check = ExecCheck(ExecConfig(command=[str(exe)]), Target("svc", "m1", "127.0.0.1:9"), env=env)
        provider = CommandProvider("bench", CommandOptions(command=[str(exe)]))
        machine = Machine("svc", "m1", "127.0.0.1:9")
        await per_call(20, check.run)  # warm up both
        await per_call(20, lambda: provider.alive(machine))
        rows = []
        for _ in range(3):  # interleaved rounds: a busy box weighs on both alike
            rows.append(("exec check run", await per_call(n, check.run)))
            rows.append(("command provider alive", await per_call(n, lambda: provider.alive(machine))))
        await env.close()
    for name in ("exec check run", "command provider alive"):
        samples = [t for label, times in rows if label == name for t in times]
        q = statistics.quantiles(samples, n=100)
        print(f"{name:<24} n={len(samples)}  median {statistics.median(samples):.2f} ms  p90 {q[89]:.2f} ms")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 200))
