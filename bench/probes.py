"""healerd's native check kinds against blackbox_exporter's matching prober: CPU per check, same target, same run.

    python -m bench.probes                    # tls, tls_verify, dns, icmp, icmp3, grpc (about 6 minutes)
    python -m bench.probes --quick            # shorter runs
    python -m bench.probes --kinds dns,grpc   # some of them

healerd runs a fleet of distinct machines (127.0.X.Y, every one its own host, connection and TLS session)
each checked every second, pinned to core 0; its CPU per check is its whole pipeline (scheduler, check,
classification, store, metrics) over the checks it ran. blackbox_exporter, pinned to core 0 too, is driven
through `/probe` at 20 requests at a time over the same targets; its CPU per check is the probe with its HTTP
and metrics around it. The targets (nginx over TLS, dnsmasq, a gRPC server with the health service) run on
core 1; echo requests go to the machines' loopback addresses. Results land in bench/results/probes-*.json/.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from . import _blackbox
from ._healerd import distinct_addresses, measure
from ._system import Nginx, free_port, start, stop_started, taskset, wait_port

RESULTS = Path(__file__).parent / "results"
DNS_NAME = "web.bench.test"
DNS_ANSWER = "10.0.0.1"

GRPC_SERVER = """
import sys
from concurrent import futures
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
servicer = health.HealthServicer()
servicer.set("web", health_pb2.HealthCheckResponse.SERVING)
health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
server.add_insecure_port("0.0.0.0:" + sys.argv[1])
server.start()
server.wait_for_termination()
"""


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", flush=True)


@dataclass
class Targets:
    """The servers the probes look at, started on core 1 for the run and stopped by their recorded pid."""

    nginx: Nginx
    dns_port: int
    grpc_port: int
    folder: Path

    @classmethod
    def start(cls) -> Targets:
        folder = Path(tempfile.mkdtemp(prefix="healerd-bench-probes-"))
        nginx = Nginx(core=1, any_address=True)
        dns_port, grpc_port = free_port(), free_port()
        dnsmasq = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"
        if not Path(dnsmasq).exists():
            raise SystemExit("dnsmasq is missing: apt-get install -y dnsmasq-base")
        conf = folder / "dnsmasq.conf"
        conf.write_text(f"# healerd bench\nhost-record={DNS_NAME},{DNS_ANSWER}\nlocal=/bench.test/\n")
        start(
            [*taskset(1), dnsmasq, "--keep-in-foreground", f"--conf-file={conf}", "--no-resolv", "--no-hosts",
             f"--port={dns_port}", "--pid-file=", "--user=nobody", "--group=nogroup", "--cache-size=1000"],
            str(conf), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        (folder / "grpc_server.py").write_text(GRPC_SERVER)
        start([*taskset(1), sys.executable, str(folder / "grpc_server.py"), str(grpc_port)], str(folder))
        wait_port(grpc_port)
        return cls(nginx, dns_port, grpc_port, folder)

    def stop(self) -> None:
        self.nginx.stop()
        stop_started()
        shutil.rmtree(self.folder, ignore_errors=True)


@dataclass(frozen=True)
class Probe:
    key: str
    title: str
    machines: int  # healerd's fleet, each checked every second
    port: Callable[[Targets], int]  # the machines' port (what their address says)
    check: Callable[[Targets], dict[str, Any]]  # healerd's check
    module: Callable[[Targets], dict[str, Any]]  # blackbox_exporter's module
    target: Callable[[Targets, str], str]  # blackbox_exporter's target for one machine's host


PROBES = (
    Probe(
        "tls", "TLS handshake and certificate expiry (unverified)", 300,
        lambda t: t.nginx.tls_port,
        lambda t: {"kind": "tls", "port": t.nginx.tls_port, "verify": False},
        lambda t: {"prober": "tcp", "tcp": {"tls": True, "preferred_ip_protocol": "ip4",
                                           "tls_config": {"insecure_skip_verify": True}}},
        lambda t, host: f"{host}:{t.nginx.tls_port}",
    ),
    Probe(
        "tls_verify", "TLS, chain and host name verified", 300,
        lambda t: t.nginx.tls_port,
        lambda t: {"kind": "tls", "port": t.nginx.tls_port, "server_name": "localhost",
                   "ca_file": str(t.nginx.prefix / "cert.pem")},
        lambda t: {"prober": "tcp", "tcp": {"tls": True, "preferred_ip_protocol": "ip4",
                                           "tls_config": {"ca_file": str(t.nginx.prefix / "cert.pem"),
                                                          "server_name": "localhost"}}},
        lambda t, host: f"{host}:{t.nginx.tls_port}",
    ),
    Probe(
        "dns", f"DNS: A {DNS_NAME} over UDP, answer checked", 1000,
        lambda t: t.dns_port,
        lambda t: {"kind": "dns", "port": t.dns_port, "query_name": DNS_NAME, "type": "A", "expect": [DNS_ANSWER]},
        lambda t: {"prober": "dns", "dns": {"query_name": DNS_NAME, "query_type": "A", "transport_protocol": "udp",
                                           "preferred_ip_protocol": "ip4",
                                           "validate_answer_rrs": {"fail_if_not_matches_regexp": [
                                               f"{DNS_NAME}.\t.*\tIN\tA\t{DNS_ANSWER}"]}}},
        lambda t, host: f"{host}:{t.dns_port}",
    ),
    Probe(
        "icmp", "ICMP echo, 1 request (blackbox's one)", 1000,
        lambda t: 80,
        lambda t: {"kind": "icmp", "count": 1},
        lambda t: {"prober": "icmp", "icmp": {"preferred_ip_protocol": "ip4"}},
        lambda t, host: host,
    ),
    Probe(
        "icmp3", "ICMP echo, 3 requests (healerd's default) against blackbox's 1", 1000,
        lambda t: 80,
        lambda t: {"kind": "icmp"},
        lambda t: {"prober": "icmp", "icmp": {"preferred_ip_protocol": "ip4"}},
        lambda t, host: host,
    ),
    Probe(
        "grpc", "gRPC health Check (plaintext)", 1000,
        lambda t: t.grpc_port,
        lambda t: {"kind": "grpc", "port": t.grpc_port, "service": "web"},
        lambda t: {"prober": "grpc", "grpc": {"service": "web", "preferred_ip_protocol": "ip4"}},
        lambda t, host: f"{host}:{t.grpc_port}",
    ),
)  # fmt: skip


def healerd_side(probe: Probe, targets: Targets, seconds: float) -> dict[str, Any]:
    machines = distinct_addresses(probe.machines, probe.port(targets))
    check = {"name": probe.key, "interval": "1s", "timeout": "900ms", "fall": 3, **probe.check(targets)}
    a, b = measure(machines, check, 5, seconds)
    runs = b["metrics"]["runs"] - a["metrics"]["runs"]
    ok = b["metrics"]["by_status"].get("OK", 0.0) - a["metrics"]["by_status"].get("OK", 0.0)
    cpu = b["cpu"] - a["cpu"]
    return {
        "machines": probe.machines,
        "checks": int(runs),
        "ok": int(ok),
        "cpu_seconds": round(cpu, 3),
        "cpu_ms_per_check": round(cpu / runs * 1000, 4) if runs else None,
    }


def blackbox_side(probe: Probe, targets: Targets, count: int) -> dict[str, Any]:
    hosts = [address.rpartition(":")[0] for _, address in distinct_addresses(probe.machines, 1)]
    queries = [f"module={probe.key}&target={probe.target(targets, host)}" for host in hosts]
    probed = _blackbox.probe({probe.key: {"timeout": "5s", **probe.module(targets)}}, queries, count)
    if probed is None:
        return {"error": _blackbox.MISSING}
    cpu = probed.cpu_seconds
    return {"checks": count, "ok": probed.successful, "cpu_seconds": round(cpu, 3),
            "cpu_ms_per_check": round(cpu / count * 1000, 4)}  # fmt: skip


def run(kinds: list[str], quick: bool) -> dict[str, Any]:
    seconds, probes = (10, 2000) if quick else (30, 10000)
    targets = Targets.start()
    out: dict[str, Any] = {}
    try:
        for probe in PROBES:
            if probe.key not in kinds:
                continue
            log(f"{probe.title}: healerd, {probe.machines} machines every second")
            row: dict[str, Any] = {"title": probe.title, "healerd": healerd_side(probe, targets, seconds)}
            log(f"  {row['healerd']}")
            log(f"{probe.title}: blackbox_exporter, {probes} probes")
            row["blackbox_exporter"] = bb = blackbox_side(probe, targets, probes)
            log(f"  {bb}")
            if row["healerd"]["cpu_ms_per_check"] and bb.get("cpu_ms_per_check"):
                row["ratio"] = round(row["healerd"]["cpu_ms_per_check"] / bb["cpu_ms_per_check"], 3)
                log(f"  healerd / blackbox_exporter: {row['ratio']}x")
            out[probe.key] = row
    finally:
        targets.stop()
    return out


def markdown(result: dict[str, Any]) -> str:
    lines = [
        "| check | healerd machines | healerd checks (OK) | healerd ms / check | blackbox probes (OK) "
        "| blackbox ms / check | healerd / blackbox |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["probes"].values():
        h, bb = row["healerd"], row["blackbox_exporter"]
        lines.append(
            f"| {row['title']} | {h['machines']:,} | {h['checks']:,} ({h['ok']:,}) | {h['cpu_ms_per_check']} "
            f"| {bb.get('checks', 0):,} ({bb.get('ok', 0):,}) | {bb.get('cpu_ms_per_check', bb.get('error'))} "
            f"| **{row.get('ratio', '-')}x** |"
        )
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.probes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--kinds", default=",".join(p.key for p in PROBES), help="comma-separated: " +
                        ", ".join(p.key for p in PROBES))  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="10 s per healerd run, 2,000 probes")
    args = parser.parse_args()
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = sorted(set(kinds) - {p.key for p in PROBES})
    if unknown:
        parser.error(f"unknown kinds {unknown}; known: {', '.join(p.key for p in PROBES)}")

    def stop(signum: int, frame: FrameType | None) -> None:
        stop_started()
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    stamp = time.strftime("%Y-%m-%dT%H%M%SZ", time.gmtime())
    result = {"started": stamp, "quick": args.quick, "probes": run(kinds, args.quick)}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"probes-{stamp}.json").write_text(json.dumps(result, indent=2))
    (RESULTS / f"probes-{stamp}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
