"""blackbox_exporter as the reference: started on the given modules, pinned to core 0, driven through `/probe` at
20 requests at a time; its CPU per probe read from the kernel's accounting of its process."""

from __future__ import annotations

import asyncio
import itertools
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from ._system import cpu_seconds, free_port, start, taskset, wait_port

MISSING = "prometheus-blackbox-exporter missing (apt-get install -y prometheus-blackbox-exporter)"


@dataclass(frozen=True)
class Probed:
    probes: int
    successful: int
    cpu_seconds: float


async def _drive(urls: list[str], count: int, concurrency: int) -> int:
    ok = 0
    sem = asyncio.Semaphore(concurrency)
    cycle = itertools.cycle(urls)
    async with aiohttp.ClientSession() as session:

        async def one(url: str) -> None:
            nonlocal ok
            async with sem, session.get(url) as resp:
                if "probe_success 1" in await resp.text():
                    ok += 1

        await asyncio.gather(*(one(next(cycle)) for _ in range(count)))
    return ok


def probe(modules: dict[str, Any], queries: list[str], count: int) -> Probed | None:
    """`count` probes over `queries` (`module=...&target=...`, in turn) after 500 to warm up; None without the
    binary."""
    binary = shutil.which("prometheus-blackbox-exporter") or shutil.which("blackbox_exporter")
    if binary is None:
        return None
    folder = Path(tempfile.mkdtemp(prefix="healerd-bench-bb-"))
    conf = folder / "blackbox.yml"
    conf.write_text(yaml.safe_dump({"modules": modules}))
    port = free_port()
    proc = start(
        [*taskset(0), binary, f"--config.file={conf}", f"--web.listen-address=127.0.0.1:{port}", "--log.level=error"],
        str(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_port(port)
        urls = [f"http://127.0.0.1:{port}/probe?{query}" for query in queries]
        asyncio.run(_drive(urls, 500, 20))  # warm-up
        before = cpu_seconds(proc.pid)
        ok = asyncio.run(_drive(urls, count, 20))
        return Probed(count, ok, cpu_seconds(proc.pid) - before)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
