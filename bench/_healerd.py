"""Start healerd on a generated fleet of N machines (all served by one nginx) and read its figures."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from ._system import cpu_seconds, free_port, rss_bytes, source_env, start, taskset, wait_port

SERVICE_MAX = 10000


def http_check(url: str, interval: str, timeout: str, fall: int = 3, reuse: bool = True) -> dict[str, Any]:
    return {
        "name": "health",
        "kind": "http",
        "url": url,
        "interval": interval,
        "timeout": timeout,
        "fall": fall,
        "reuse_connections": reuse,
        "tls_verify": False,  # the bench's certificate is self-signed (blackbox_exporter: insecure_skip_verify)
    }


def fleet_config(
    machines: list[tuple[str, str]], check: dict[str, Any], state_dir: Path, listen: int
) -> dict[str, Any]:
    return {
        "daemon": {
            "listen": f"127.0.0.1:{listen}",
            "state_dir": str(state_dir),
            "log_level": "warning",
            "check_paths": [],
        },
        "providers": {"lab": {"kind": "static"}},
        "services": {  # a service holds at most 10,000 machines: larger fleets are split into several
            ("fleet" if i == 0 else f"fleet-{i // SERVICE_MAX + 1}"): {
                "provider": "lab",
                "min_healthy": 1,
                "checks": [check],
                "machines": [{"id": mid, "address": address} for mid, address in machines[i : i + SERVICE_MAX]],
            }
            for i in range(0, max(1, len(machines)), SERVICE_MAX)
        },
    }


def same_address(n: int, port: int) -> list[tuple[str, str]]:
    return [(f"m{i}", f"127.0.0.1:{port}") for i in range(n)]


def distinct_addresses(n: int, port: int) -> list[tuple[str, str]]:
    """n machines on n loopback addresses 127.0.X.Y (X from 1: 127.0.0.x is left alone)."""
    if n > 254 * 254:
        raise ValueError("at most 64,516 distinct addresses")
    return [(f"m{i}", f"127.0.{1 + i // 254}.{1 + i % 254}:{port}") for i in range(n)]


class Healerd:
    """healerd on a generated fleet; `tree`: the source tree to run it from (None: the one Python finds)."""

    def __init__(
        self,
        machines: list[tuple[str, str]],
        check: dict[str, Any],
        core: int | None = 0,
        nofile: tuple[int, int] | None = None,
        cluster: dict[str, Any] | None = None,
        tree: Path | None = None,
        daemon: dict[str, Any] | None = None,
    ) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="healerd-bench-"))
        self.port = free_port()
        cfg = self.dir / "healerd.yaml"
        config = fleet_config(machines, check, self.dir / "state", self.port)
        config["daemon"].update(daemon or {})  # more daemon settings (an access file, public_reads)
        if cluster is not None:  # a node of a cluster: its section, and the token the nodes share
            token = self.dir / "api-token"
            token.write_text("bench-cluster-token\n")
            config["daemon"]["api_token_file"] = str(token)
            config["cluster"] = cluster
        cfg.write_text(json.dumps(config))  # JSON is YAML
        self.log = (self.dir / "healerd.log").open("w")
        limit = ["prlimit", f"--nofile={nofile[0]}:{nofile[1]}", "--"] if nofile else []
        self.proc = start(
            [*taskset(core), *limit, sys.executable, "-m", "healerd", "run", "-c", str(cfg)],
            str(cfg),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=source_env(tree),
            cwd=self.dir if tree else None,
        )
        deadline = time.monotonic() + 180
        while True:
            try:
                wait_port(self.port, 1)
                break
            except TimeoutError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.proc.kill()
                    lines = (self.dir / "healerd.log").read_text().splitlines()
                    said = "\n".join(line for line in lines if len(line) < 1000)  # not the one-line config
                    raise RuntimeError(f"healerd did not start: {said[-2000:]}") from None
        self.base = f"http://127.0.0.1:{self.port}"

    def log_text(self) -> str:
        self.log.flush()
        return (self.dir / "healerd.log").read_text()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.base + path, timeout=30) as resp:
            return json.loads(resp.read())

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.base + "/readyz", timeout=10) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("healerd not ready")

    def metrics(self) -> tuple[dict[str, Any], float, int]:
        """Parsed /metrics samples of interest, plus the response time and size."""
        started = time.perf_counter()
        with urllib.request.urlopen(self.base + "/metrics", timeout=30) as resp:
            body = resp.read()
        took = time.perf_counter() - started
        out: dict[str, Any] = {"runs": 0.0, "by_status": {}, "lag_buckets": {}, "lag_count": 0.0}
        for fam in text_string_to_metric_families(body.decode()):
            for s in fam.samples:
                if s.name == "healerd_check_runs_total":
                    out["runs"] += s.value
                    status = s.labels.get("status", "")
                    out["by_status"][status] = out["by_status"].get(status, 0.0) + s.value
                elif s.name == "healerd_scheduler_lag_seconds_bucket":
                    out["lag_buckets"][float(s.labels["le"])] = s.value
                elif s.name == "healerd_scheduler_lag_seconds_count":
                    out["lag_count"] = s.value
        return out, took, len(body)

    def snapshot(self) -> dict[str, Any]:
        m, took, size = self.metrics()
        return {
            "t": time.monotonic(),
            "cpu": cpu_seconds(self.proc.pid, children=True),  # plus the plugins it ran and reaped
            "rss": rss_bytes(self.proc.pid),
            "sched": self.get("/api/v1/scheduler"),
            "metrics": m,
            "metrics_seconds": took,
            "metrics_bytes": size,
        }

    def stop(self) -> int:
        self.proc.terminate()
        try:
            code = self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = -9
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        return code


def bucket_quantile(buckets_a: dict[float, float], buckets_b: dict[float, float], q: float) -> float:
    """Quantile of the observations between two cumulative-bucket snapshots (linear inside a bucket)."""
    edges = sorted(buckets_b)
    counts = [buckets_b[e] - buckets_a.get(e, 0.0) for e in edges]
    total = counts[-1] if counts else 0.0
    if total <= 0:
        return 0.0
    rank = q * total
    prev_edge, prev_count = 0.0, 0.0
    for edge, count in zip(edges, counts, strict=True):
        if count >= rank:
            if edge == float("inf"):
                return prev_edge
            span = count - prev_count
            frac = (rank - prev_count) / span if span else 1.0
            return prev_edge + (edge - prev_edge) * frac
        prev_edge, prev_count = edge, count
    return prev_edge


def fraction_within(buckets_a: dict[float, float], buckets_b: dict[float, float], bound: float) -> float:
    total = buckets_b.get(float("inf"), 0.0) - buckets_a.get(float("inf"), 0.0)
    within = buckets_b.get(bound, 0.0) - buckets_a.get(bound, 0.0)
    return within / total if total else 0.0


def measure(
    machines: list[tuple[str, str]],
    check: dict[str, Any],
    warmup: float,
    seconds: float,
    tree: Path | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Start healerd (pinned to core 0, from `tree`) on `machines` with one `check`, and take a snapshot `warmup`
    seconds after it is ready and another `seconds` later."""
    h = Healerd(machines, check, core=0, tree=tree)
    try:
        h.wait_ready()
        time.sleep(warmup)
        a = h.snapshot()
        time.sleep(seconds)
        return a, h.snapshot()
    finally:
        h.stop()
