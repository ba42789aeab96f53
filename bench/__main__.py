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
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

from . import _blackbox
from ._cluster import scenario_cluster
from ._heal import scenario_heal
from ._healerd import (
    Healerd,
    bucket_quantile,
    distinct_addresses,
    fraction_within,
    http_check,
    measure,
    same_address,
)
from ._nagios import Nagios
from ._page import scenario_page
from ._system import Nginx, open_fds

PLUGIN = "/usr/lib/nagios/plugins/check_http"
RESULTS = Path(__file__).parent / "results"


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# -- cost per check ---------------------------------------------------------------------------------------
def healerd_cost(
    machines: list[tuple[str, str]], check: dict[str, Any], seconds: float, tree: Path | None = None
) -> dict[str, Any]:
    a, b = measure(machines, check, 3, seconds, tree)
    checks = b["metrics"]["runs"] - a["metrics"]["runs"]
    cpu = b["cpu"] - a["cpu"]
    return {
        "checks": checks,
        "cpu_seconds": round(cpu, 3),
        "cpu_per_1000": round(cpu / checks * 1000, 4),
        "checks_per_cpu_second": round(checks / cpu, 1),
    }


#: blackbox_exporter's HTTP module, as healerd's check is set for the bench (no verification of its certificate)
HTTP_2XX = {
    "prober": "http",
    "timeout": "5s",
    "http": {"valid_status_codes": [200], "preferred_ip_protocol": "ip4", "tls_config": {"insecure_skip_verify": True}},
}


def blackbox_cost(target: str, count: int) -> dict[str, Any]:
    probed = _blackbox.probe({"http_2xx": HTTP_2XX}, [f"module=http_2xx&target={target}"], count)
    if probed is None:
        return {"error": _blackbox.MISSING}
    cpu = probed.cpu_seconds
    return {
        "checks": count,
        "successful": probed.successful,
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


#: (key, title, scheme, port attribute of Nginx, healerd reuses connections): one row each, healerd and
#: blackbox_exporter against the same nginx server in the same run.
COST_TARGETS = (
    ("http_keepalive", "HTTP, target keeps connections alive", "http", "port", True),
    ("http_fresh", "HTTP, target closes every connection", "http", "fresh_port", True),
    ("http_no_reuse", "HTTP, healerd `reuse_connections: false`", "http", "port", False),
    ("https_keepalive", "HTTPS, target keeps connections alive", "https", "tls_port", True),
    ("https_fresh", "HTTPS, target closes every connection", "https", "tls_fresh_port", True),
)


def healerd_target_cost(nginx: Nginx, key: str, seconds: float, tree: Path | None = None) -> dict[str, Any]:
    """healerd's cost per check on the COST_TARGETS row `key`: 1,000 machines on one address, every second."""
    _, _, scheme, port_attr, reuse = next(row for row in COST_TARGETS if row[0] == key)
    port = getattr(nginx, port_attr)
    check = http_check(f"{scheme}://127.0.0.1:{port}/health/{{id}}", "1s", "900ms", reuse=reuse)
    return healerd_cost(same_address(1000, port), check, seconds, tree)


def scenario_cost(nginx: Nginx, quick: bool, only: set[str] | None = None) -> dict[str, Any]:
    seconds = 10 if quick else 30
    probes = 3000 if quick else 10000
    out: dict[str, Any] = {}
    blackbox: dict[str, dict[str, Any]] = {}
    for key, title, scheme, port_attr, _ in COST_TARGETS:
        if only and key not in only:
            continue
        port = getattr(nginx, port_attr)
        log(f"cost: {title}: healerd")
        row = {"title": title, "healerd": healerd_target_cost(nginx, key, seconds)}
        log(f"  {row['healerd']}")
        bb_key = f"{scheme}:{port}"
        if bb_key not in blackbox:
            log(f"cost: {title}: blackbox_exporter")
            blackbox[bb_key] = blackbox_cost(f"{scheme}://127.0.0.1:{port}/health/m0", probes)
            log(f"  {blackbox[bb_key]}")
        row["blackbox_exporter"] = bb = blackbox[bb_key]
        if "cpu_per_1000" in bb:
            row["ratio_vs_blackbox"] = round(row["healerd"]["cpu_per_1000"] / bb["cpu_per_1000"], 3)
        out[key] = row
    if not only or "check_http" in only:
        log("cost: check_http per check")
        ch = check_http_cost(nginx, 500 if quick else 2000)
        log(f"  {ch}")
        out["check_http"] = ch
        if "cpu_per_1000" in ch and "http_keepalive" in out:
            out["ratio_vs_check_http"] = round(out["http_keepalive"]["healerd"]["cpu_per_1000"] / ch["cpu_per_1000"], 4)
    return out


# -- fleet scale ------------------------------------------------------------------------------------------
class ReadyzProbe(threading.Thread):
    """Times /readyz every half second while a fleet runs: the API must stay responsive under load."""

    def __init__(self, base: str) -> None:
        super().__init__(daemon=True)
        self.base, self.times, self.failures, self.stopping = base, [], 0, threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(0.5):
            started = time.perf_counter()
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=5) as resp:
                    resp.read()
                self.times.append(time.perf_counter() - started)
            except OSError:
                self.failures += 1

    def summary(self) -> dict[str, Any]:
        self.stopping.set()
        self.join(10)
        t = sorted(self.times)
        return {
            "readyz_samples": len(t),
            "readyz_failures": self.failures,
            "readyz_p99_seconds": round(t[min(len(t) - 1, int(0.99 * len(t)))], 4) if t else None,
            "readyz_max_seconds": round(t[-1], 4) if t else None,
        }


def scenario_fleet(nginx: Nginx, sizes: list[int], seconds: float, distinct: bool = False) -> list[dict[str, Any]]:
    rows = []
    addresses = distinct_addresses if distinct else same_address
    for n in sizes:
        where = "distinct addresses" if distinct else "one address"
        log(f"fleet: {n} machines ({where}), one HTTP check each every 5s, healerd on one core, {seconds:g}s")
        url = "http://{address}/health/{id}"
        # distinct: started with the soft open-file limit most shells give (1,024); healerd raises it
        nofile = (1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]) if distinct else None
        try:
            h = Healerd(addresses(n, nginx.port), http_check(url, "5s", "2s"), core=0, nofile=nofile)
        except RuntimeError as exc:  # refused: e.g. more machines than the open-file limit can hold
            log(f"  refused: {exc}")
            rows.append({"machines": n, "distinct_addresses": distinct, "refused": str(exc)[-600:]})
            continue
        try:
            h.wait_ready(180)
            time.sleep(5)
            probe = ReadyzProbe(h.base)
            probe.start()
            a = h.snapshot()
            samples = []
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                time.sleep(min(10, max(0.1, end - time.monotonic())))
                samples.append(h.snapshot())
            b = samples[-1]
            readyz = probe.summary()
            fds = open_fds(h.proc.pid)
            metric_times = []
            for _ in range(3):
                _, took, size = h.metrics()
                metric_times.append(took)
            raised = "open files limit raised" in h.log_text()
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
            "distinct_addresses": distinct,
            "started_with_nofile": list(nofile) if nofile else None,
            "limit_raised_logged": raised,
            "open_fds": fds,
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
            **readyz,
        }
        log(f"  {row}")
        rows.append(row)
    return rows


# -- exec checks against Nagios Core ---------------------------------------------------------------------
PLUGINS = "/usr/lib/nagios/plugins"


def scenario_exec(nginx: Nginx, quick: bool, services: int = 100, interval: int = 5) -> dict[str, Any]:
    """The same plugin, the same number of services and interval, under healerd and under Nagios Core 4: CPU of
    the daemon plus every process it ran (healerd: its reaped children; Nagios: its workers and theirs)."""
    seconds = 20 if quick else 60
    plugins = {
        "check_dummy": [f"{PLUGINS}/check_dummy", "0", "ok"],
        "check_tcp": [f"{PLUGINS}/check_tcp", "-H", "127.0.0.1", "-p", str(nginx.port)],
    }
    out: dict[str, Any] = {"services": services, "interval_seconds": interval, "seconds": seconds}
    for name, argv in plugins.items():
        row: dict[str, Any] = {"command": " ".join(argv)}
        log(f"exec: {name}, {services} services every {interval}s: healerd")
        check = {"name": "probe", "kind": "exec", "command": argv, "interval": f"{interval}s", "timeout": "4s"}
        a, b = measure(same_address(services, nginx.port), check, interval + 3, seconds)
        checks = b["metrics"]["runs"] - a["metrics"]["runs"]
        row["healerd"] = {"checks": checks, "cpu_ms_per_check": round((b["cpu"] - a["cpu"]) / checks * 1000, 3)}
        log(f"  {row['healerd']}")
        log(f"exec: {name}: nagios4")
        try:
            nagios = Nagios(" ".join(argv), services, interval, core=0)
        except (FileNotFoundError, RuntimeError) as exc:
            row["nagios"] = {"error": str(exc)}
        else:
            try:
                time.sleep(interval + 3)
                c0, k0 = nagios.cpu(), nagios.checks()
                time.sleep(seconds)
                c1, k1 = nagios.cpu(), nagios.checks()
            finally:
                nagios.stop()
            row["nagios"] = {"checks": k1 - k0, "cpu_ms_per_check": round((c1 - c0) / max(1, k1 - k0) * 1000, 3)}
            row["ratio_vs_nagios"] = round(row["healerd"]["cpu_ms_per_check"] / row["nagios"]["cpu_ms_per_check"], 3)
        log(f"  {row.get('nagios')} ratio {row.get('ratio_vs_nagios')}")
        out[name] = row
    return out


# -- detection latency ------------------------------------------------------------------------------------
def scenario_latency(nginx: Nginx, machines: int, flipped: int) -> dict[str, Any]:
    interval, timeout, fall = 2.0, 1.0, 3
    log(f"latency: {flipped} of {machines} machines flipped to failing; interval {interval:g}s fall {fall}")
    nginx.clear()
    url = f"http://127.0.0.1:{nginx.port}/health/{{id}}"
    check = http_check(url, f"{interval:g}s", f"{timeout:g}s", fall=fall)
    h = Healerd(same_address(machines, nginx.port), check, core=0)
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


def _fleet_table(rows: list[dict[str, Any]], title: str) -> list[str]:
    out = [
        f"## {title}",
        "",
        "| machines | due | done | missed | on time (≤100 ms) | lag p50 | lag p99 | CPU | CPU s/1000 "
        "(first→last third) | RSS MB | open fds | /readyz p99 / max | /metrics s | /metrics KB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "refused" in r:
            out.append(f"| {r['machines']} | refused at start: {r['refused'].splitlines()[-1][:300]} |" + " |" * 12)
            continue
        readyz = (
            f"{r['readyz_p99_seconds'] * 1000:.1f} / {r['readyz_max_seconds'] * 1000:.1f} ms"
            + (f" ({r['readyz_failures']} failed)" if r["readyz_failures"] else "")
            if r.get("readyz_p99_seconds") is not None
            else "-"
        )
        out.append(
            f"| {r['machines']} | {r['due']} | {r['done']:.0f} | {r['missed']} | "
            f"{r['on_time_fraction'] * 100:.2f}% | {r['lag_p50_seconds'] * 1000:.1f} ms | "
            f"{r['lag_p99_seconds'] * 1000:.1f} ms | {r['cpu_fraction'] * 100:.0f}% | "
            f"{r['cpu_per_1000_checks']} ({r['cpu_per_1000_first_third']}→{r['cpu_per_1000_last_third']})"
            f" | {r['rss_mb']} | {r['open_fds']} | {readyz} | {r['metrics_seconds']} | {r['metrics_bytes'] // 1024} |"
        )
    started = {tuple(r["started_with_nofile"]) for r in rows if r.get("started_with_nofile")}
    if started:
        soft, hard = sorted(started)[0]
        raised = all(r["open_fds"] > soft for r in rows if "refused" not in r)
        out += ["", f"Started with open files {soft} (soft) / {hard} (hard); more open once running: {raised}."]
    return [*out, ""]


def markdown(result: dict[str, Any]) -> str:
    out = [f"# healerd benchmark {result['started']}", "", f"Machine: {result['machine']}", ""]
    cost = result.get("cost")
    if cost:
        out += [
            "## Cost per HTTP check (1,000 machines every 1 s; CPU ms per check; same nginx server, same run)",
            "",
            "| target | healerd checks | healerd | blackbox_exporter probes | blackbox_exporter | healerd / blackbox |",
            "|---|---|---|---|---|---|",
        ]
        for key, *_ in COST_TARGETS:
            r = cost.get(key)
            if not r:
                continue
            h, bb = r["healerd"], r["blackbox_exporter"]
            bb_cells = f"{bb['checks']} | {bb['cpu_per_1000']}" if "cpu_per_1000" in bb else f"- | {bb['error']}"
            out.append(
                f"| {r['title']} | {h['checks']:.0f} | {h['cpu_per_1000']} | {bb_cells} | "
                f"**{r.get('ratio_vs_blackbox', '-')}x** |"
            )
        ch = cost.get("check_http")
        if ch and "cpu_per_1000" in ch:
            out += [
                "",
                f"`check_http` launched per check: {ch['cpu_per_1000']} ms per check ({ch['checks']} runs); "
                f"healerd (keep-alive HTTP) / it: **{cost.get('ratio_vs_check_http', '-')}x**.",
            ]
        out.append("")
    if result.get("fleet"):
        out += _fleet_table(
            result["fleet"], "Fleet scale, one address (one HTTP check per machine every 5 s, one core)"
        )
    if result.get("distinct"):
        out += _fleet_table(
            result["distinct"], "Fleet scale, distinct addresses 127.0.X.Y (one HTTP check per machine every 5 s)"
        )
    ex = result.get("exec")
    if ex:
        out += [
            f"## Exec checks: healerd vs Nagios Core 4 ({ex['services']} services every {ex['interval_seconds']} s, "
            f"{ex['seconds']} s; CPU of the daemon and every process it ran, ms per check)",
            "",
            "| plugin | healerd checks | healerd | Nagios checks | Nagios | healerd / Nagios |",
            "|---|---|---|---|---|---|",
        ]
        for name in ("check_dummy", "check_tcp"):
            r = ex.get(name)
            if not r:
                continue
            n = r["nagios"]
            n_cells = f"{n['checks']} | {n['cpu_ms_per_check']}" if "checks" in n else f"- | {n['error']}"
            out.append(
                f"| `{name}` | {r['healerd']['checks']:.0f} | {r['healerd']['cpu_ms_per_check']} | {n_cells} | "
                f"**{r.get('ratio_vs_nagios', '-')}x** |"
            )
        out.append("")
    heal = result.get("heal")
    if heal:
        out += [
            f"## Heal loop ({len(heal['heals'])} heals on the demo fleet)",
            "",
            "healerd's own share = hard-down result → launch call returned, plus the replacement's `rise`-th OK "
            "result → rotation.add done.",
            "",
            "| heal | detection s | healerd's own ms | of which to launch / after rise | boot + probation s | "
            "steps (ms) |",
            "|---|---|---|---|---|---|",
        ]
        for k, h in enumerate(heal["heals"], 1):
            steps = ", ".join(f"{a} {ms}" for a, ms in h["steps_ms"].items())
            out.append(
                f"| {k} | {h['detection_seconds']} | {h['own_seconds'] * 1000:.1f} | "
                f"{h['own_to_launch_seconds'] * 1000:.1f} / {h['own_after_rise_seconds'] * 1000:.1f} | "
                f"{h['boot_and_probation_seconds']} | {steps} |"
            )
        out += [
            "",
            f"healerd's own share: median {heal['own_median_seconds'] * 1000:.1f} ms, "
            f"**p95 {heal['own_p95_seconds'] * 1000:.1f} ms**, max {heal['own_max_seconds'] * 1000:.1f} ms.",
            "",
        ]
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
    cl = result.get("cluster")
    if cl:
        out += [
            "## Scale-out: a cluster of two nodes (one core each) against one node",
            "",
            "One HTTP check per machine every second, a fresh connection each; PostgreSQL on the same machine.",
            "",
            "| run | machines | on time (≤ 100 ms) | lag p99 per node | CPU per node | shard |",
            "|---|---|---|---|---|---|",
        ]
        for label, key in (("1 node", "one_node"), ("2 nodes", "two_nodes"), ("1 node, 2N", "one_node_double")):
            r = cl[key]
            out.append(
                f"| {label} | {r['machines']} | {r['on_time_fraction']:.2%} | {r['lag_p99_seconds']} s | "
                f"{r['cpu_fraction']} | {r['shard']} |"
            )
        lag = cl["two_nodes"]
        out += [
            "",
            f"Machines held on time, two nodes / one: **{cl['capacity_ratio']}x**. Results of the other node reach "
            f"each node through the database: the newest one taken was {lag['mirror_lag_p50_seconds']} s old "
            f"(median of samples each second; max {lag['mirror_lag_max_seconds']} s).",
            "",
        ]
    for page in (result.get("page") or {}).values():
        out += [
            f"## Status page of {page['machines']:,} machines ({page['down']:,} down), healerd on one core",
            "",
            "| request | p50 | max | size | bound |",
            "|---|---|---|---|---|",
        ]
        for path in ("/", "/?part=main"):
            p = page[path]
            out.append(
                f"| GET {path} | {p['p50_s'] * 1000:.0f} ms | {p['max_s'] * 1000:.0f} ms | {p['bytes'] / 1024:.0f} KiB "
                f"| < 1 s ({p['max_s']:.2f}x), < 500 KB ({p['bytes'] / 500_000:.2f}x) |"
            )
        out.append("")
    return "\n".join(out)


SCENARIOS = ("cost", "fleet", "distinct", "exec", "heal", "latency", "cluster", "page")


def main() -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help=f"comma-separated, of {', '.join(SCENARIOS)}")
    p.add_argument("--sizes", default="1000,5000,10000,20000", help="fleet sizes of the one-address scenario")
    p.add_argument("--distinct-sizes", default="5000,10000,20000", help="fleet sizes of the distinct-address one")
    p.add_argument("--cost-targets", default="", help="only these cost rows (e.g. https_fresh,http_fresh)")
    p.add_argument("--seconds", type=float, default=60.0, help="duration of each fleet run")
    p.add_argument("--heals", type=int, default=10)
    p.add_argument("--cluster-machines", type=int, default=2500, help="machines of one node in the cluster scenario")
    p.add_argument("--quick", action="store_true", help="short runs (for a smoke test of the bench)")
    args = p.parse_args()
    scenarios = set(args.scenarios.split(","))
    unknown = scenarios - set(SCENARIOS)
    if unknown:
        p.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; choose from {', '.join(SCENARIOS)}")
    sizes = [int(x) for x in args.sizes.split(",")]
    distinct = [int(x) for x in args.distinct_sizes.split(",")]
    if args.quick:
        sizes, args.seconds = [s for s in sizes if s <= 5000] or sizes[:1], min(args.seconds, 15.0)
        distinct, args.heals = [s for s in distinct if s <= 5000] or distinct[:1], min(args.heals, 3)
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_implementation()} "
        f"{platform.python_version()}, {platform.system()} {platform.release()}",
    }
    nginx = Nginx(core=1, any_address="distinct" in scenarios)
    try:
        if "cost" in scenarios:
            only = set(args.cost_targets.split(",")) if args.cost_targets else None
            result["cost"] = scenario_cost(nginx, args.quick, only)
        if "fleet" in scenarios:
            result["fleet"] = scenario_fleet(nginx, sizes, args.seconds)
        if "distinct" in scenarios:
            result["distinct"] = scenario_fleet(nginx, distinct, args.seconds, distinct=True)
        if "exec" in scenarios:
            result["exec"] = scenario_exec(nginx, args.quick)
        if "heal" in scenarios:
            log(f"heal: {args.heals} heals on the demo fleet")
            result["heal"] = scenario_heal(args.heals, log)
        if "latency" in scenarios:
            result["latency"] = scenario_latency(nginx, 1000, 100)
        if "cluster" in scenarios:
            result["cluster"] = scenario_cluster(nginx.port, args.cluster_machines, args.seconds, log)
        if "page" in scenarios:
            result["page"] = scenario_page(nginx.port, log)
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
