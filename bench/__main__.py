"""healerd benchmarks: cost per check vs blackbox_exporter and check_http, fleet scale, detection latency.

    python -m bench                      # everything (about 8 minutes)
    python -m bench --quick              # shorter runs, smaller fleets
    python -m bench --scenarios cost     # one scenario

Writes bench/results/<timestamp>.json and .md; docs/performance.md keeps the latest figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from ._healerd import Healerd, bucket_quantile, fraction_within
from ._system import Nginx, cpu_seconds, free_port, taskset, wait_port

PLUGIN = "/usr/lib/nagios/plugins/check_http"
RESULTS = Path(__file__).parent / "results"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- cost per check ---------------------------------------------------------------------------------------
def healerd_cost(nginx: Nginx, n: int, seconds: float, reuse: bool) -> dict[str, Any]:
    h = Healerd(n, nginx.port, interval="1s", timeout="900ms", core=0, reuse=reuse)
    try:
        h.wait_ready()
        time.sleep(2)
        a = h.snapshot()
        time.sleep(seconds)
        b = h.snapshot()
    finally:
        h.stop()
    checks = b["metrics"]["runs"] - a["metrics"]["runs"]
    cpu = b["cpu"] - a["cpu"]
    return {
        "checks": checks,
        "cpu_seconds": round(cpu, 3),
        "cpu_per_1000": round(cpu / checks * 1000, 4),
        "checks_per_cpu_second": round(checks / cpu, 1),
    }


BLACKBOX_CONF = """modules:
  http_2xx:
    prober: http
    timeout: 5s
    http:
      valid_status_codes: [200]
      preferred_ip_protocol: ip4
"""


async def _drive_probes(url: str, count: int, concurrency: int) -> int:
    ok = 0
    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession() as session:

        async def one() -> None:
            nonlocal ok
            async with sem, session.get(url) as resp:
                text = await resp.text()
                if "probe_success 1" in text:
                    ok += 1

        await asyncio.gather(*(one() for _ in range(count)))
    return ok


def blackbox_cost(nginx: Nginx, count: int) -> dict[str, Any]:
    binary = shutil.which("prometheus-blackbox-exporter") or shutil.which("blackbox_exporter")
    if binary is None:
        return {"error": "prometheus-blackbox-exporter missing (apt-get install -y prometheus-blackbox-exporter)"}
    tmp = Path(tempfile.mkdtemp(prefix="healerd-bench-bb-"))
    (tmp / "blackbox.yml").write_text(BLACKBOX_CONF)
    port = free_port()
    proc = subprocess.Popen(
        [
            *taskset(0),
            binary,
            f"--config.file={tmp / 'blackbox.yml'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=error",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_port(port)
        url = f"http://127.0.0.1:{port}/probe?module=http_2xx&target={nginx.url('m0')}"
        asyncio.run(_drive_probes(url, 500, 20))  # warm-up
        before = cpu_seconds(proc.pid)
        ok = asyncio.run(_drive_probes(url, count, 20))
        cpu = cpu_seconds(proc.pid) - before
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    return {
        "checks": count,
        "successful": ok,
        "cpu_seconds": round(cpu, 3),
        "cpu_per_1000": round(cpu / count * 1000, 4),
        "checks_per_cpu_second": round(count / cpu, 1),
    }


async def _launch_plugins(url_host: str, port: int, count: int, concurrency: int) -> int:
    ok = 0
    sem = asyncio.Semaphore(concurrency)

    async def one() -> None:
        nonlocal ok
        async with sem:
            proc = await asyncio.create_subprocess_exec(
                PLUGIN,
                "-H",
                url_host,
                "-p",
                str(port),
                "-u",
                "/health/m0",
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            if await proc.wait() == 0:
                ok += 1

    await asyncio.gather(*(one() for _ in range(count)))
    return ok


def check_http_cost(nginx: Nginx, count: int) -> dict[str, Any]:
    if not Path(PLUGIN).exists():
        return {"error": f"{PLUGIN} missing (apt-get install -y monitoring-plugins-basic)"}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    ok = asyncio.run(_launch_plugins("127.0.0.1", nginx.port, count, 4))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "checks": count,
        "successful": ok,
        "cpu_seconds": round(cpu, 3),
        "cpu_per_1000": round(cpu / count * 1000, 4),
        "checks_per_cpu_second": round(count / cpu, 1),
    }


def scenario_cost(nginx: Nginx, quick: bool) -> dict[str, Any]:
    seconds = 10 if quick else 30
    log("cost: healerd (connection reuse)")
    keep = healerd_cost(nginx, 1000, seconds, reuse=True)
    log(f"  {keep}")
    log("cost: healerd (fresh connection per check)")
    fresh = healerd_cost(nginx, 1000, seconds, reuse=False)
    log(f"  {fresh}")
    log("cost: blackbox_exporter")
    bb = blackbox_cost(nginx, 5000 if quick else 20000)
    log(f"  {bb}")
    log("cost: check_http per check")
    ch = check_http_cost(nginx, 500 if quick else 2000)
    log(f"  {ch}")
    out: dict[str, Any] = {
        "healerd": keep,
        "healerd_fresh_connections": fresh,
        "blackbox_exporter": bb,
        "check_http": ch,
    }
    if "cpu_per_1000" in bb:
        out["ratio_vs_blackbox"] = round(keep["cpu_per_1000"] / bb["cpu_per_1000"], 3)
        out["ratio_fresh_vs_blackbox"] = round(fresh["cpu_per_1000"] / bb["cpu_per_1000"], 3)
    if "cpu_per_1000" in ch:
        out["ratio_vs_check_http"] = round(keep["cpu_per_1000"] / ch["cpu_per_1000"], 4)
        out["ratio_fresh_vs_check_http"] = round(fresh["cpu_per_1000"] / ch["cpu_per_1000"], 4)
    return out


# -- fleet scale ------------------------------------------------------------------------------------------
def scenario_fleet(nginx: Nginx, sizes: list[int], seconds: float) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        log(f"fleet: {n} machines, one HTTP check each every 5s, healerd on one core, {seconds:g}s")
        h = Healerd(n, nginx.port, interval="5s", timeout="2s", core=0)
        try:
            h.wait_ready(180)
            time.sleep(5)
            a = h.snapshot()
            samples = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(min(10, max(0.1, end - time.monotonic())))
                samples.append(h.snapshot())
            b = samples[-1]
            metric_times = []
            for _ in range(3):
                _, took, size = h.metrics()
                metric_times.append(took)
        finally:
            h.stop()
        due = b["sched"]["due"] - a["sched"]["due"]
        dispatched = b["sched"]["dispatched"] - a["sched"]["dispatched"]
        missed = b["sched"]["missed"] - a["sched"]["missed"]
        done = b["metrics"]["runs"] - a["metrics"]["runs"]
        la, lb = a["metrics"]["lag_buckets"], b["metrics"]["lag_buckets"]
        wall = b["t"] - a["t"]
        on_time = dispatched * fraction_within(la, lb, 0.1)
        # drift: CPU per check in the first and the last third of the run
        thirds = max(1, len(samples) // 3)

        def cpu_per_check(x: dict[str, Any], y: dict[str, Any]) -> float:
            runs = y["metrics"]["runs"] - x["metrics"]["runs"]
            return (y["cpu"] - x["cpu"]) / runs * 1000 if runs else 0.0

        first = cpu_per_check(a, samples[thirds - 1])
        last = cpu_per_check(samples[-thirds - 1] if len(samples) > thirds else a, b)
        row = {
            "machines": n,
            "seconds": round(wall, 1),
            "due": due,
            "done": done,
            "dispatched": dispatched,
            "missed": missed,
            "on_time_fraction": round(on_time / due, 5) if due else 0.0,
            "lag_p50_seconds": round(bucket_quantile(la, lb, 0.5), 4),
            "lag_p99_seconds": round(bucket_quantile(la, lb, 0.99), 4),
            "cpu_fraction": round((b["cpu"] - a["cpu"]) / wall, 3),
            "cpu_per_1000_checks": round((b["cpu"] - a["cpu"]) / done * 1000, 4) if done else None,
            "cpu_per_1000_first_third": round(first, 4),
            "cpu_per_1000_last_third": round(last, 4),
            "rss_mb": round(b["rss"] / 2**20, 1),
            "rss_mb_start": round(a["rss"] / 2**20, 1),
            "metrics_seconds": round(statistics.median(metric_times), 4),
            "metrics_bytes": size,
        }
        log(f"  {row}")
        rows.append(row)
    return rows


# -- detection latency ------------------------------------------------------------------------------------
def scenario_latency(nginx: Nginx, machines: int, flipped: int) -> dict[str, Any]:
    interval, timeout, fall = 2.0, 1.0, 3
    log(f"latency: {flipped} of {machines} machines flipped to failing; interval {interval:g}s fall {fall}")
    nginx.clear()
    h = Healerd(machines, nginx.port, interval=f"{interval:g}s", timeout=f"{timeout:g}s", fall=fall, core=0)
    try:
        h.wait_ready(120)
        time.sleep(interval * 2)
        ids = [f"m{i}" for i in range(0, machines, machines // flipped)][:flipped]
        flip_at = time.time()
        for mid in ids:
            nginx.fail(mid)
        bound = fall * interval + timeout
        deadline = time.monotonic() + bound + 15
        seen: dict[str, float] = {}
        while time.monotonic() < deadline and len(seen) < len(ids):
            time.sleep(0.5)
            for e in h.get("/api/v1/events?type=machine.unhealthy&limit=1000")["events"]:
                if e["machine"] in ids and e["timestamp"] >= flip_at:
                    seen.setdefault(e["machine"], e["timestamp"] - flip_at)
    finally:
        h.stop()
        nginx.clear()
    lat = sorted(seen.values())
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else None  # noqa: E731
    return {
        "machines": machines,
        "flipped": flipped,
        "detected": len(lat),
        "interval": interval,
        "fall": fall,
        "timeout": timeout,
        "bound_seconds": bound,
        "goal_seconds": bound + 0.5,
        "p50_seconds": round(q(0.5), 3) if lat else None,
        "p99_seconds": round(q(0.99), 3) if lat else None,
        "max_seconds": round(lat[-1], 3) if lat else None,
    }


def markdown(result: dict[str, Any]) -> str:
    out = [f"# healerd benchmark {result['started']}", "", f"Machine: {result['machine']}", ""]
    cost = result.get("cost")
    if cost:
        out += [
            "## Cost per HTTP check (CPU-seconds per 1,000 checks, same nginx target, same run)",
            "",
            "| prober | checks | CPU s / 1000 | checks per CPU-second | ratio healerd / it |",
            "|---|---|---|---|---|",
        ]
        for name, key, ratio in (
            ("healerd (reused connections)", "healerd", None),
            ("healerd (fresh connection per check)", "healerd_fresh_connections", None),
            ("blackbox_exporter", "blackbox_exporter", "ratio_vs_blackbox"),
            ("check_http launched per check", "check_http", "ratio_vs_check_http"),
        ):
            r = cost[key]
            if "error" in r:
                out.append(f"| {name} | - | {r['error']} | | |")
                continue
            out.append(
                f"| {name} | {r['checks']:.0f} | {r['cpu_per_1000']} | {r['checks_per_cpu_second']} | "
                f"{cost.get(ratio, '') if ratio else ''} |"
            )
        out.append("")
    fleet = result.get("fleet")
    if fleet:
        out += [
            "## Fleet scale (one HTTP check per machine every 5 s, healerd pinned to one core)",
            "",
            "| machines | due | done | missed | on time (≤100 ms) | lag p50 | lag p99 | CPU | CPU s/1000 "
            "(first→last third) | RSS MB | /metrics s | /metrics KB |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in fleet:
            out.append(
                f"| {r['machines']} | {r['due']} | {r['done']:.0f} | {r['missed']} | "
                f"{r['on_time_fraction'] * 100:.2f}% | {r['lag_p50_seconds'] * 1000:.1f} ms | "
                f"{r['lag_p99_seconds'] * 1000:.1f} ms | {r['cpu_fraction'] * 100:.0f}% | "
                f"{r['cpu_per_1000_checks']} ({r['cpu_per_1000_first_third']}→{r['cpu_per_1000_last_third']})"
                f" | {r['rss_mb']} | {r['metrics_seconds']} | {r['metrics_bytes'] // 1024} |"
            )
        out.append("")
    lat = result.get("latency")
    if lat:
        out += [
            "## Detection latency",
            "",
            f"{lat['flipped']} of {lat['machines']} machines flipped to failing at one instant; interval "
            f"{lat['interval']:g} s, fall {lat['fall']}, timeout {lat['timeout']:g} s: bound fall x interval + "
            f"timeout = {lat['bound_seconds']:g} s.",
            "",
            "| detected | p50 | p99 | max | goal (bound + 0.5 s) |",
            "|---|---|---|---|---|",
            f"| {lat['detected']}/{lat['flipped']} | {lat['p50_seconds']} s | {lat['p99_seconds']} s | "
            f"{lat['max_seconds']} s | {lat['goal_seconds']:g} s |",
            "",
        ]
    return "\n".join(out)


def main() -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scenarios", default="cost,fleet,latency")
    p.add_argument("--sizes", default="1000,5000,10000,20000")
    p.add_argument("--seconds", type=float, default=60.0, help="duration of each fleet run")
    p.add_argument("--quick", action="store_true", help="short runs (for a smoke test of the bench)")
    args = p.parse_args()
    scenarios = set(args.scenarios.split(","))
    sizes = [int(x) for x in args.sizes.split(",")]
    if args.quick:
        sizes, args.seconds = [s for s in sizes if s <= 5000] or sizes[:1], min(args.seconds, 15.0)
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.release()}",
    }
    nginx = Nginx(core=1)
    try:
        if "cost" in scenarios:
            result["cost"] = scenario_cost(nginx, args.quick)
        if "fleet" in scenarios:
            result["fleet"] = scenario_fleet(nginx, sizes, args.seconds)
        if "latency" in scenarios:
            result["latency"] = scenario_latency(nginx, 1000, 100)
    finally:
        nginx.stop()
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / result["started"].replace(":", "")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=2))
    md = markdown(result)
    stem.with_suffix(".md").write_text(md)
    print(md)
    log(f"written {stem}.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
