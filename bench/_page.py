"""The status page of a 10,000-machine fleet (docs/status-page.md: served in under 1 s, HTML under 500 KB):
healerd pinned to one core checks 10,000 machines (every 10 s, one nginx), 50 of them on a closed port so
the page has problems to list first, then all of them (a mass outage); GET / and GET /?part=main are timed
while the fleet is checked."""

from __future__ import annotations

import statistics
import time
import urllib.request
from typing import Any

from ._healerd import Healerd, http_check, same_address
from ._system import free_port

MACHINES = 10_000
DOWN = 50
ROUNDS = 20


def _get(url: str) -> tuple[float, int]:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as resp:
        body = resp.read()
    return time.perf_counter() - started, len(body)


def scenario_page(nginx_port: int, log: Any) -> dict[str, Any]:
    """50 machines down, then a mass outage (every machine down: every one an incident, all listed nowhere
    but counted)."""
    return {
        "some_down": _page(nginx_port, DOWN, log),
        "all_down": _page(nginx_port, MACHINES, log),
    }


def _page(nginx_port: int, down: int, log: Any) -> dict[str, Any]:
    closed = free_port()
    machines = same_address(MACHINES - down, nginx_port) + [(f"d{i}", f"127.0.0.1:{closed}") for i in range(down)]
    check = http_check("http://{address}/health/{id}", "10s", "1s", fall=1)
    h = Healerd(machines, check, core=0)
    try:
        h.wait_ready(300)
        time.sleep(12)  # one more round: the down machines are hard down, the history has a bucket
        out: dict[str, Any] = {"machines": MACHINES, "down": down}
        for path in ("/", "/?part=main"):
            _get(h.base + path)  # warm
            timings, size = [], 0
            for _ in range(ROUNDS):
                took, size = _get(h.base + path)
                timings.append(took)
            out[path] = {
                "p50_s": round(statistics.median(timings), 4),
                "max_s": round(max(timings), 4),
                "bytes": size,
            }
            p50, top = out[path]["p50_s"], out[path]["max_s"]
            log(f"page ({down} down) {path}: p50 {p50:.3f}s, max {top:.3f}s, {size / 1024:.0f} KiB")
        return out
    finally:
        h.stop()
