"""What checking a credential costs an API request: `read` requests at a steady rate against healerd pinned to
one core, with a `read` credential required (`public_reads: false`, a scrypt-hashed access file), against the
same requests to an open API, measured in the same run.

    python -m bench.access [--rate 200] [--seconds 15]

Open loop (requests sent on schedule, whatever the answers): latency p50 / p99 / max for each, the first
request of a token (its scrypt hash, before the cache has it), and the ratio of the p99s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from ._healerd import Healerd, same_address
from ._system import free_port, stop_started

PATH = "/api/v1/services"


async def drive(base: str, token: str | None, rate: float, seconds: float) -> list[float]:
    """Send GET PATH every 1/rate s for `seconds`; the latency of each (seconds); a failure is fatal."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    latencies: list[float] = []
    async with aiohttp.ClientSession(headers=headers) as session:

        async def one() -> None:
            started = time.perf_counter()
            async with session.get(base + PATH) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"GET {PATH} answered {resp.status}")
            latencies.append(time.perf_counter() - started)

        tasks = []
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return latencies


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def line(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"{name:<34} n={len(ms):5d}  p50 {statistics.median(ms):6.2f} ms  p99 {quantile(ms, 0.99):6.2f} ms  "
        f"max {max(ms):7.2f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    if (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # the client on the other core: healerd has core 0 to itself
    folder = Path(tempfile.mkdtemp(prefix="healerd-bench-access-"))
    access = folder / "access.yaml"
    made = subprocess.run(
        [sys.executable, "-m", "healerd", "access", "add", "dashboard", "--scope", "read", "--file", str(access)],
        capture_output=True,
        text=True,
        check=True,
    )
    token = next(w for w in made.stdout.split() if w.startswith("hk_"))
    check = {"name": "up", "kind": "tcp", "interval": "5s", "timeout": "1s"}
    machines = same_address(20, free_port())
    results = {}
    try:
        for name, daemon, sent in (
            ("open API (no credential)", {}, None),
            ("read credential required", {"access_file": str(access), "public_reads": False}, token),
        ):
            healerd = Healerd(machines, check, core=0, daemon=daemon)
            try:
                healerd.wait_ready()
                first = asyncio.run(drive(healerd.base, sent, 1, 1))  # a token's first use: scrypt
                asyncio.run(drive(healerd.base, sent, args.rate, 2))  # warm up
                results[name] = (first, asyncio.run(drive(healerd.base, sent, args.rate, args.seconds)))
            finally:
                healerd.stop()
    finally:
        stop_started()
    print(f"GET {PATH} at {args.rate:g}/s for {args.seconds:g} s, healerd pinned to core 0, client on core 1")
    for name, (first, values) in results.items():
        print(line(name, values) + f"  first request {first[0] * 1000:.2f} ms")
    (_, base), (_, guarded) = results.values()
    print(f"p99 ratio (credential / open): {quantile(guarded, 0.99) / quantile(base, 0.99):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
