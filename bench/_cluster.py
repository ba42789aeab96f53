"""Scale-out: two nodes of a cluster, each pinned to its own core, against one node on one core.

The same fleet shape (one HTTP check per machine, a fresh connection per check, every second) is run three
ways on one throw-away PostgreSQL server: one node with N machines, two nodes with 2N, and one node with 2N
(to show that the second node is what holds them). The on-time share is the fraction of due checks that
started within 100 ms of their time, over every node's scheduler.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ._healerd import Healerd, bucket_quantile, fraction_within, http_check, same_address

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from pg import pg_server  # the tests' throw-away PostgreSQL server

TTL = "5s"


def _run(dsn: str, nodes: int, machines: int, port: int, seconds: float, log: Any) -> dict[str, Any]:
    fleet = same_address(machines, port)
    check = http_check("http://{address}/health/{id}", "1s", "900ms", reuse=False)
    started = []
    try:
        for i in range(nodes):
            cluster = {"store": dsn, "node": f"bench-{i}", "lease_ttl": TTL, "confirm_from": 1}
            started.append(Healerd(fleet, check, core=i, cluster=cluster))
        for h in started:
            h.wait_ready(180)
        time.sleep(12)  # the shards settle (a lease round or two) and every check has run
        before = [h.snapshot() for h in started]
        lags: list[float] = []  # how old the newest result taken from the other node is, sampled each second
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            time.sleep(1.0)
            if nodes > 1:
                lags.extend(h.get("/api/v1/cluster")["mirror_lag"] for h in started)
        after = [h.snapshot() for h in started]
        shards = [h.get("/api/v1/cluster") for h in started[:1]]
    finally:
        for h in started:
            h.stop()
    due = sum(b["sched"]["due"] - a["sched"]["due"] for a, b in zip(before, after, strict=True))
    dispatched = sum(b["sched"]["dispatched"] - a["sched"]["dispatched"] for a, b in zip(before, after, strict=True))
    on_time = sum(
        (b["sched"]["dispatched"] - a["sched"]["dispatched"])
        * fraction_within(a["metrics"]["lag_buckets"], b["metrics"]["lag_buckets"], 0.1)
        for a, b in zip(before, after, strict=True)
    )
    wall = after[0]["t"] - before[0]["t"]
    row = {
        "nodes": nodes,
        "machines": machines,
        "seconds": round(wall, 1),
        "due": due,
        "dispatched": dispatched,
        "on_time_fraction": round(on_time / due, 4) if due else 0.0,
        "lag_p99_seconds": [
            round(bucket_quantile(a["metrics"]["lag_buckets"], b["metrics"]["lag_buckets"], 0.99), 4)
            for a, b in zip(before, after, strict=True)
        ],
        "cpu_fraction": [round((b["cpu"] - a["cpu"]) / wall, 3) for a, b in zip(before, after, strict=True)],
        "shard": {n["node"]: n["machines"] for n in shards[0]["nodes"] if n["live"]} if shards else {},
        "rss_mb": [round(b["rss"] / 2**20, 1) for b in after],
        "mirror_lag_p50_seconds": round(statistics.median(lags), 3) if lags else None,
        "mirror_lag_max_seconds": round(max(lags), 3) if lags else None,
    }
    log(f"  {row}")
    return row


def scenario_cluster(port: int, machines: int, seconds: float, log: Any) -> dict[str, Any]:
    log(f"cluster: 1 node x {machines}, 2 nodes x {2 * machines} total, 1 node x {2 * machines}; {seconds:g}s each")
    with pg_server() as pg:
        one = _run(pg.new_database(), 1, machines, port, seconds, log)
        two = _run(pg.new_database(), 2, 2 * machines, port, seconds, log)
        one_double = _run(pg.new_database(), 1, 2 * machines, port, seconds, log)
    return {
        "one_node": one,
        "two_nodes": two,
        "one_node_double": one_double,
        "capacity_ratio": round(
            (two["machines"] * two["on_time_fraction"]) / (one["machines"] * one["on_time_fraction"]), 3
        )
        if one["on_time_fraction"]
        else None,
    }
