"""Heal-loop overhead: on the demo fleet (local provider, `python -m healerd.demo` machines), break machines
one after another and split each heal into detection, healerd's own work, and boot + probation.

healerd's own share of a heal = (hard-down result → the replacement's launch call returned: rotation.remove,
quarantine, evidence, launch) + (the replacement's `rise`-th OK result → rotation.add done)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from ._system import free_port, source_env, start, taskset, wait_port

CONFIG = """daemon:
  listen: 127.0.0.1:{port}
  state_dir: {state}
  log_level: warning
  check_paths: []
  playbook_paths: []
providers:
  demo: {{kind: local, port_range: [{low}, {high}]}}
images:
  demo-web:
    provider: demo
    versions:
      v1: {{command: ["{{python}}", -m, healerd.demo, --port, "{{port}}"]}}
    known_good: v1
services:
  web:
    provider: demo
    image: demo-web
    desired: 3
    min_healthy: 2
    rotation: {{kind: file, path: {state}/rotation-web.json}}
    checks:
      - {{name: health, kind: http, url: "http://{{address}}/health", interval: 1s, timeout: 800ms, fall: 3, rise: 2}}
    remediation: {{playbook: replace-machine, max_concurrent: 1, max_unhealthy: 50%, max_per_hour: 100,
                  boot_timeout: 20s}}
"""


def _get(base: str, path: str) -> Any:
    with urllib.request.urlopen(base + path, timeout=10) as resp:
        return json.loads(resp.read())


def _post(url: str, body: bytes) -> None:
    with urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=5) as resp:
        resp.read()


def _wait(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise TimeoutError(what)


def scenario_heal(heals: int, log: Any, tree: Path | None = None) -> dict[str, Any]:
    """`heals` heals one after another, healerd run from `tree` (None: the one Python finds)."""
    tmp = Path(tempfile.mkdtemp(prefix="healerd-bench-heal-"))
    port = free_port()
    state = tmp / "state"
    (tmp / "healerd.yaml").write_text(CONFIG.format(port=port, state=state, low=23000, high=23999))
    out = (tmp / "healerd.log").open("w")
    proc = start(
        [*taskset(0), sys.executable, "-m", "healerd", "run", "-c", str(tmp / "healerd.yaml")],
        str(tmp / "healerd.yaml"),
        stdout=out,
        stderr=subprocess.STDOUT,
        cwd=tmp,
        env=source_env(tree),
    )
    base = f"http://127.0.0.1:{port}"
    rows: list[dict[str, Any]] = []
    try:
        wait_port(port, 60)

        def optimal() -> list[dict[str, Any]] | None:
            ms = _get(base, "/api/v1/machines?service=web")["machines"]
            live = [m for m in ms if m["lifecycle"] == "in_service" and m["up"]]
            return live if len(live) == 3 and _get(base, "/api/v1/services/web")["state"] == "optimal" else None

        for n in range(heals):
            victim = _wait(optimal, 60, "fleet not optimal")[0]
            known = {i["id"] for i in _get(base, "/api/v1/incidents")["incidents"]}
            broke_at = time.time()
            _post(f"http://{victim['address']}/fault", b"down")

            def resolved(known: set[str] = known) -> dict[str, Any] | None:
                for inc in _get(base, "/api/v1/incidents")["incidents"]:
                    if inc["id"] not in known and inc["state"] == "resolved":
                        return dict(_get(base, f"/api/v1/incidents/{inc['id']}"))
                return None

            inc = _wait(resolved, 60, f"heal {n} did not resolve")
            rows.append({"incident": inc, "broke_at": broke_at})
            log(f"  heal {n + 1}/{heals}: {inc['machine']} -> {inc['replacement']}")
        time.sleep(2)  # results are written to the store once a second
    finally:
        proc.terminate()
        proc.wait(15)
        out.close()
        _kill_machines(state)
    try:
        return _split(rows, state / "state.db")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _kill_machines(state: Path) -> None:
    """The demo machines of this run (quarantined ones are kept alive by design): by the owner mark the local
    provider puts in their environment."""
    mark = f"HEALERD_STATE_DIR={state.resolve()}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


def _split(rows: list[dict[str, Any]], db: Path) -> dict[str, Any]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    heals = []
    try:
        for row in rows:
            inc = row["incident"]
            steps = {s["action"]: s for s in inc["steps"]}
            (down_at,) = conn.execute(
                "SELECT ts FROM results WHERE machine = ? AND status = 2 AND ts >= ? ORDER BY ts LIMIT 1 OFFSET 2",
                (inc["machine"], row["broke_at"]),
            ).fetchone()  # fall = 3: the third CRITICAL result makes it hard down
            await_step, add = steps["checks.await_healthy"], steps["rotation.add"]
            (risen_at,) = conn.execute(
                "SELECT max(ts) FROM results WHERE machine = ? AND status = 0 AND ts <= ?",
                (inc["replacement"], await_step["ended_at"]),
            ).fetchone()
            launched = steps["machine.launch_replacement"]["ended_at"]
            before = launched - down_at
            after = add["ended_at"] - risen_at
            heals.append(
                {
                    "detection_seconds": round(down_at - row["broke_at"], 4),
                    "own_seconds": round(before + after, 4),
                    "own_to_launch_seconds": round(before, 4),
                    "own_after_rise_seconds": round(after, 4),
                    "boot_and_probation_seconds": round(risen_at - launched, 4),
                    "steps_ms": {
                        a: round((s["ended_at"] - s["started_at"]) * 1000, 1)
                        for a, s in steps.items()
                        if a != "checks.await_healthy"
                    },
                }
            )
    finally:
        conn.close()
    own = sorted(h["own_seconds"] for h in heals)
    return {
        "heals": heals,
        "own_median_seconds": round(statistics.median(own), 4),
        "own_p95_seconds": round(own[min(len(own) - 1, int(0.95 * len(own)))], 4),
        "own_max_seconds": round(own[-1], 4),
    }
