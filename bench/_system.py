"""Process accounting and the loopback target (nginx) shared by the benchmark scenarios."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (not its children), from the kernel's accounting."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def taskset(core: int | None) -> list[str]:
    if core is None or shutil.which("taskset") is None or (os.cpu_count() or 1) <= core:
        return []
    return ["taskset", "-c", str(core)]


def wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


NGINX_CONF = """
worker_processes 1;
error_log {prefix}/error.log crit;
pid {prefix}/nginx.pid;
events {{ worker_connections 65535; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    client_body_temp_path {prefix}/tmp;
    proxy_temp_path {prefix}/tmp;
    fastcgi_temp_path {prefix}/tmp;
    uwsgi_temp_path {prefix}/tmp;
    scgi_temp_path {prefix}/tmp;
    server {{
        listen 127.0.0.1:{port} backlog=65535;
        location ~ ^/health/(?<mid>[A-Za-z0-9_.-]+)$ {{
            if (-f {prefix}/markers/$mid) {{ return 500 "failing\\n"; }}
            return 200 "ok\\n";
        }}
    }}
}}
"""


@dataclass
class Nginx:
    """Debian's nginx on loopback; /health/<id> answers 500 while the marker file <id> exists."""

    core: int | None = 1

    def __post_init__(self) -> None:
        if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
            raise SystemExit("nginx is missing: apt-get install -y nginx-light (make bench does it as root)")
        self.prefix = Path(tempfile.mkdtemp(prefix="healerd-bench-nginx-"))
        self.prefix.chmod(0o755)  # nginx workers run as an unprivileged user: they must see the markers
        (self.prefix / "markers").mkdir()
        (self.prefix / "tmp").mkdir()
        self.port = free_port()
        (self.prefix / "nginx.conf").write_text(NGINX_CONF.format(prefix=self.prefix, port=self.port))
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = subprocess.Popen(
            [
                *taskset(self.core),
                binary,
                "-c",
                str(self.prefix / "nginx.conf"),
                "-p",
                str(self.prefix),
                "-g",
                "daemon off;",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_port(self.port)

    def url(self, machine_id: str) -> str:
        return f"http://127.0.0.1:{self.port}/health/{machine_id}"

    def fail(self, machine_id: str) -> None:
        (self.prefix / "markers" / machine_id).touch()

    def clear(self) -> None:
        for marker in (self.prefix / "markers").iterdir():
            marker.unlink()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.prefix, ignore_errors=True)
