"""Helpers for the end-to-end tests: a real `healerd run` subprocess, bounded polling, config and metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from prometheus_client.parser import text_string_to_metric_families

T = TypeVar("T")

_BIN = Path(sys.executable).parent / "healerd"
#: The installed console script when there is one (that is what users run), else `python -m healerd`.
HEALERD: list[str] = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "healerd"]


def wait_until(
    predicate: Callable[[], T],
    timeout: float,
    what: str,
    interval: float = 0.02,
    describe: Callable[[], str] | None = None,
) -> T:
    """Poll `predicate` until it returns something truthy (returned) or `timeout` seconds pass (fails)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() >= deadline:
            extra = f"\n{describe()}" if describe is not None else ""
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}; last value: {last!r}{extra}")
        time.sleep(interval)


def http_get(url: str, timeout: float = 3.0) -> tuple[int, bytes]:
    """GET returning (status, body); HTTP error statuses are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# ---------------------------------------------------------------------------------------------------------
# Config


def http_check(name: str = "health", interval: str = "300ms", fall: int = 3, rise: int = 2, **extra: Any) -> dict:
    check: dict[str, Any] = {
        "name": name,
        "kind": "http",
        "url": "http://{address}/health",
        "interval": interval,
        "timeout": interval,
        "fall": fall,
        "rise": rise,
    }
    check.update(extra)
    return check


def make_config(
    tmp_path: Path,
    port: int,
    machines: Iterable[tuple[str, str]],
    checks: list[dict[str, Any]],
    service: str = "web",
    desired: int | None = None,
    min_healthy: int | str = 1,
    state_dir: Path | None = None,
) -> dict[str, Any]:
    svc: dict[str, Any] = {
        "provider": "lab",
        "min_healthy": min_healthy,
        "machines": [{"id": mid, "address": addr} for mid, addr in machines],
        "checks": checks,
    }
    if desired is not None:
        svc["desired"] = desired
    (tmp_path / "checks").mkdir(exist_ok=True)
    return {
        "daemon": {
            "listen": f"127.0.0.1:{port}",
            "state_dir": str(state_dir or tmp_path / "state"),
            "log_format": "console",
            "log_level": "info",
            "mode": "observe",
            "check_paths": [str(tmp_path / "checks")],
            "playbook_paths": [str(tmp_path / "playbooks")],
        },
        "providers": {"lab": {"kind": "static"}},
        "services": {service: svc},
    }


def write_config(path: Path, config: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------------------
# Metrics


@dataclass
class Metrics:
    families: dict[str, str] = field(default_factory=dict)  # family name -> type
    samples: list[tuple[str, dict[str, str], float]] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Metrics:
        out = cls()
        for fam in text_string_to_metric_families(text):
            out.families[fam.name] = fam.type
            for s in fam.samples:
                out.samples.append((s.name, dict(s.labels), s.value))
        return out

    @property
    def sample_names(self) -> set[str]:
        return {name for name, _, _ in self.samples}

    def get(self, name: str, **labels: str) -> float | None:
        """The value of the one sample `name` whose labels include `labels` (None when absent)."""
        found = [v for n, lbl, v in self.samples if n == name and all(lbl.get(k) == w for k, w in labels.items())]
        if len(found) > 1:
            raise AssertionError(f"{len(found)} samples {name}{labels}; be more specific")
        return found[0] if found else None

    def total(self, name: str, **labels: str) -> float:
        return sum(v for n, lbl, v in self.samples if n == name and all(lbl.get(k) == w for k, w in labels.items()))


# ---------------------------------------------------------------------------------------------------------
# The daemon under test


class DaemonProcess:
    """`healerd run -c CONFIG` as a subprocess; its stdout+stderr go to a log file the test can read."""

    def __init__(self, config_path: Path, port: int, log_path: Path, args: tuple[str, ...] = ()) -> None:
        self.config_path = config_path
        self.port = port
        self.log_path = log_path
        self.args = args  # more `healerd run` arguments (e.g. --crash-at)
        self.proc: subprocess.Popen[bytes] | None = None

    def environment(self) -> dict[str, str]:
        """The daemon's environment; subclasses add to it (credentials, fault injection) or take from it."""
        return dict(os.environ, PYTHONUNBUFFERED="1", NO_COLOR="1")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> DaemonProcess:
        env = self.environment()
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "healerd", "run", "-c", str(self.config_path), *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.log_path.parent,  # not the repository: paths must resolve against the config file
            )
        return self

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def describe(self) -> str:
        state = "running" if self.proc is not None and self.proc.poll() is None else f"exited {self.returncode}"
        return f"healerd ({state}) output:\n{self.output()[-6000:]}"

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- HTTP -----------------------------------------------------------------------------------------
    def get(self, path: str) -> tuple[int, bytes]:
        return http_get(self.url + path)

    def json(self, path: str) -> Any:
        status, body = self.get(path)
        assert status == 200, f"GET {path} answered {status}: {body[:500]!r}"
        return json.loads(body)

    def metrics(self) -> Metrics:
        status, body = self.get("/metrics")
        assert status == 200, f"GET /metrics answered {status}"
        return Metrics.parse(body.decode())

    def machines(self) -> dict[str, dict[str, Any]]:
        return {m["id"]: m for m in self.json("/api/v1/machines")["machines"]}

    def service(self, name: str = "web") -> dict[str, Any]:
        services = {s["name"]: s for s in self.json("/api/v1/services")["services"]}
        return services[name]

    def events(self, **query: str) -> list[dict[str, Any]]:
        """Events, oldest first."""
        qs = "&".join(f"{k}={v}" for k, v in {"limit": "1000", **query}.items())
        return list(reversed(self.json(f"/api/v1/events?{qs}")["events"]))

    # -- lifecycle ------------------------------------------------------------------------------------
    def wait_listening(self, timeout: float = 10.0) -> None:
        def up() -> bool:
            if not self.alive():
                raise AssertionError(f"healerd exited early with status {self.returncode}\n{self.describe()}")
            try:
                return self.get("/healthz")[0] == 200
            except OSError:
                return False

        wait_until(up, timeout, "healerd to answer /healthz", interval=0.01, describe=self.describe)

    def wait_ready(self, timeout: float = 10.0) -> None:
        self.wait_listening(timeout)
        wait_until(lambda: self.get("/readyz")[0] == 200, timeout, "/readyz to answer 200", describe=self.describe)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 5.0) -> int | None:
        """SIGTERM, then SIGKILL if it does not go within `timeout`. Safe to call more than once."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(5)


#: The `start_daemon` fixture: `start_daemon(config, wait="ready"|"listening"|"no", name=...)`.
StartDaemon = Callable[..., DaemonProcess]


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", NO_COLOR="1")
    return subprocess.run(
        [*HEALERD, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        stdin=subprocess.DEVNULL,
        cwd=cwd or Path("/"),
    )
