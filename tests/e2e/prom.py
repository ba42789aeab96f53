"""Debian's real Prometheus and Alertmanager for the end-to-end tests, on loopback, each in a temporary folder,
and a loopback exporter publishing one series per demo machine."""

from __future__ import annotations

import contextlib
import json
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml
from conftest import free_port, require_binary

from .helpers import http_get, wait_until

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"


class Exporter(ThreadingHTTPServer):
    """GET /metrics: `demo_queue_depth{machine=…}` for every machine healerd knows (0 unless set)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.depth: dict[str, float] = {}
        self.healerd_url = ""
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def port(self) -> int:
        return int(self.server_address[1])


class _Handler(BaseHTTPRequestHandler):
    server: Exporter

    def do_GET(self) -> None:
        ids: list[str] = []
        if self.server.healerd_url:
            try:
                with urllib.request.urlopen(self.server.healerd_url + "/api/v1/machines", timeout=2) as resp:
                    ids = [m["id"] for m in json.loads(resp.read())["machines"]]
            except OSError:
                pass
        lines = ["# TYPE demo_queue_depth gauge"]
        lines += [f'demo_queue_depth{{machine="{i}"}} {self.server.depth.get(i, 0.0)}' for i in ids]
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(argv: list[str], home: Path, ready_url: str, what: str) -> Iterator[None]:
    log = (home / f"{what}.log").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def ready() -> bool:
        assert proc.poll() is None, (home / f"{what}.log").read_text()
        try:
            return http_get(ready_url, timeout=1)[0] == 200
        except OSError:
            return False

    try:
        wait_until(ready, 30, f"{what} to be ready", interval=0.1)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


@contextlib.contextmanager
def prometheus(home: Path, config: dict[str, Any]) -> Iterator[str]:
    """A Prometheus on `config` (scrape and evaluate every second unless it says otherwise); yields its URL."""
    home.mkdir(parents=True, exist_ok=True)
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, **config}
    (home / "prometheus.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    argv = [
        require_binary("prometheus"),
        f"--config.file={home / 'prometheus.yml'}",
        f"--storage.tsdb.path={home / 'tsdb'}",
        f"--web.listen-address={url.removeprefix('http://')}",
    ]
    yield from _as_url(_serve(argv, home, url + "/-/ready", "prometheus"), url)


@contextlib.contextmanager
def alertmanager(home: Path, config: dict[str, Any]) -> Iterator[str]:
    """An Alertmanager on `config`, alone (no cluster); yields its URL."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "alertmanager.yml").write_text(yaml.safe_dump(config))
    url = f"http://127.0.0.1:{free_port()}"
    argv = [
        require_binary(ALERTMANAGER),
        f"--config.file={home / 'alertmanager.yml'}",
        f"--storage.path={home / 'data'}",
        f"--web.listen-address={url.removeprefix('http://')}",
        "--cluster.listen-address=",
        "--log.level=warn",
    ]
    yield from _as_url(_serve(argv, home, url + "/-/ready", "alertmanager"), url)


def _as_url(serving: Iterator[None], url: str) -> Iterator[str]:
    for _ in serving:
        yield url
