"""Process accounting and the loopback target (nginx) shared by the benchmark scenarios."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLK_TCK = os.sysconf("SC_CLK_TCK")

#: pid -> a string its /proc/<pid>/cmdline holds (a path made for that process alone): every long-lived process
#: the bench started, so that a run cut short can still stop them, and only them (a pid is reused once freed).
STARTED: dict[int, str] = {}


def start(argv: list[str], mark: str, **kwargs: Any) -> subprocess.Popen[bytes]:
    """`subprocess.Popen`, recorded in STARTED; `mark` must appear in the process's command line."""
    proc = subprocess.Popen(argv, **kwargs)
    STARTED[proc.pid] = mark
    return proc


def _running_as(pid: int, mark: str) -> bool:
    try:
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False  # exited, not yet reaped
        return mark in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except (OSError, IndexError):
        return False


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # reaped by its Popen already, or not our child
        os.waitpid(pid, os.WNOHANG)


def _signal(pid: int, signum: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # gone since it was looked at
        os.kill(pid, signum)


def stop_started(grace: float = 10.0) -> list[int]:
    """Stop what the bench started and is still running (SIGTERM, then SIGKILL after `grace` seconds), each
    only while its command line still names it; returns the pids it had to stop."""
    alive = [pid for pid, mark in STARTED.items() if _running_as(pid, mark)]
    for pid in alive:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(_running_as(pid, STARTED[pid]) for pid in alive):
        for pid in alive:
            _reap(pid)
        time.sleep(0.1)
    for pid in alive:
        if _running_as(pid, STARTED[pid]):
            _signal(pid, signal.SIGKILL)
        _reap(pid)
    STARTED.clear()
    return alive


def source_env(tree: Path | None) -> dict[str, str] | None:
    """The environment that makes `python -m healerd` import healerd from `tree` (None: the inherited one). Run
    it from a directory without a healerd package: `-m` puts the working directory ahead of PYTHONPATH."""
    return None if tree is None else {**os.environ, "PYTHONPATH": str(tree)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int, children: bool = False) -> float:
    """User + system CPU of a process, from the kernel's accounting; with `children`, plus that of the children
    it has reaped (the plugins an exec check ran)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    own = int(fields[11]) + int(fields[12])
    return (own + (int(fields[13]) + int(fields[14]) if children else 0)) / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """CPU of a process and all its live descendants, each with the children it reaped (no double count: a
    reaped process is no longer in the tree)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        kids = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(kids)
        frontier += kids
    total = 0.0
    for p in tree:
        try:
            total += cpu_seconds(p, children=True)
        except (OSError, IndexError, ValueError):  # exited while we looked
            continue
    return total


def open_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return 0


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


HEALTH = """
        location ~ ^/health/(?<mid>[A-Za-z0-9_.-]+)$ {{
            if (-f {prefix}/markers/$mid) {{ return 500 "failing\\n"; }}
            return 200 "ok\\n";
        }}
"""

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
    ssl_certificate {prefix}/cert.pem;
    ssl_certificate_key {prefix}/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;
    server {{ listen {bind}:{port} backlog=65535; {health} }}
    server {{ listen 127.0.0.1:{fresh_port} backlog=65535; keepalive_timeout 0; {health} }}
    server {{ listen {bind}:{tls_port} ssl backlog=65535; {health} }}
    server {{ listen 127.0.0.1:{tls_fresh_port} ssl backlog=65535; keepalive_timeout 0; {health} }}
}}
"""


@dataclass
class Nginx:
    """Debian's nginx on loopback; /health/<id> answers 500 while the marker file <id> exists.

    Four servers: `port` keeps connections alive (on every loopback address 127.X.Y.Z when `any_address`: it
    then listens on 0.0.0.0, for the distinct-address scenarios; traffic is still only loopback),
    `fresh_port` closes each connection after its answer, `tls_port` (on every loopback address too) and
    `tls_fresh_port` are the same over TLS (a self-signed RSA-2048 certificate made for the run)."""

    core: int | None = 1
    any_address: bool = False

    def __post_init__(self) -> None:
        if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
            raise SystemExit("nginx is missing: apt-get install -y nginx-light (make bench does it as root)")
        self.prefix = Path(tempfile.mkdtemp(prefix="healerd-bench-nginx-"))
        self.prefix.chmod(0o755)  # nginx workers run as an unprivileged user: they must see the markers
        (self.prefix / "markers").mkdir()
        (self.prefix / "tmp").mkdir()
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "90", "-subj", "/CN=localhost",
             "-addext", "subjectAltName=DNS:localhost",
             "-keyout", str(self.prefix / "key.pem"), "-out", str(self.prefix / "cert.pem")],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        self.port, self.fresh_port, self.tls_port, self.tls_fresh_port = (free_port() for _ in range(4))
        (self.prefix / "nginx.conf").write_text(
            NGINX_CONF.format(
                prefix=self.prefix,
                bind="0.0.0.0" if self.any_address else "127.0.0.1",
                port=self.port,
                fresh_port=self.fresh_port,
                tls_port=self.tls_port,
                tls_fresh_port=self.tls_fresh_port,
                health=HEALTH.format(prefix=self.prefix),
            )
        )
        binary = shutil.which("nginx") or "/usr/sbin/nginx"
        self.proc = start(
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
            str(self.prefix / "nginx.conf"),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for port in (self.port, self.fresh_port, self.tls_port, self.tls_fresh_port):
            wait_port(port)

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
