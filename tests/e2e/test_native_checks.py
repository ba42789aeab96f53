"""The native check kinds as a user meets them: one config with an `http` JSON condition, a `tls` certificate,
a `dns` record, `icmp` and a `grpc` health service, against real servers (Python's http.server, openssl's
s_server, Debian's dnsmasq, grpcio's server); `healerd validate`, `healerd check` and a running daemon's API and
status page, while those servers answer, freeze and fail."""

from __future__ import annotations

import html
import json
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import free_port, require_binary, stop_process
from test_checks_dns import Dnsmasq, start_dnsmasq
from test_checks_grpc import HealthServer

from .helpers import StartDaemon, http_get, make_config, run_cli, wait_until, write_config

pytestmark = pytest.mark.e2e


def _wait_port(port: int, process: subprocess.Popen[bytes], what: str) -> None:
    def up() -> bool:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_until(up, 10, f"{what} to listen on {port}")


@dataclass
class Site:
    """The servers of one machine at 127.0.0.1 (each on its own port), and what the test changes in them."""

    folder: Path
    http_port: int
    tls_port: int
    cert: Path
    dns: Dnsmasq
    grpc: HealthServer
    processes: list[subprocess.Popen[bytes]]

    def health(self, document: dict[str, Any]) -> None:
        (self.folder / "www" / "health.json").write_text(json.dumps(document))

    def checks(self) -> list[dict[str, Any]]:
        every = {"interval": "500ms", "timeout": "400ms", "fall": 2, "rise": 1}
        return [
            {"name": "api", "kind": "http", "url": "http://{address}/health.json",
             "expect": {"json": {"$.status": "UP", "$.db.status": "UP"}}, **every},
            {"name": "cert", "kind": "tls", "port": self.tls_port, "server_name": "localhost",
             "ca_file": str(self.cert), **every},
            {"name": "resolves", "kind": "dns", "port": self.dns.port, "query_name": "web.test",
             "expect": ["10.0.0.1"], **every},
            {"name": "ping", "kind": "icmp", **every},
            {"name": "rpc", "kind": "grpc", "port": self.grpc.port, "service": "web", **every},
        ]  # fmt: skip


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    folder = tmp_path_factory.mktemp("site")
    (folder / "www").mkdir()
    openssl = require_binary("/usr/bin/openssl")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "60", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    processes: list[subprocess.Popen[bytes]] = []
    http_port, tls_port = free_port(), free_port()
    www = subprocess.Popen(
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(folder / "www"),
         str(http_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    processes.append(www)
    tls = subprocess.Popen(
        [openssl, "s_server", "-quiet", "-accept", f"127.0.0.1:{tls_port}", "-cert", str(cert), "-key", str(key),
         "-www"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    processes.append(tls)
    dns = grpc = None
    try:
        _wait_port(http_port, www, "http.server")
        _wait_port(tls_port, tls, "openssl s_server")
        dns = start_dnsmasq(folder / "dnsmasq.log")
        grpc = HealthServer(free_port())
        grpc.set("web", "SERVING")
        s = Site(folder, http_port, tls_port, cert, dns, grpc, processes)
        s.health({"status": "UP", "db": {"status": "UP"}})
        yield s
    finally:
        for process in processes:
            stop_process(process)
        if dns is not None:
            dns.stop()
        if grpc is not None:
            grpc.stop()


def _config(tmp_path: Path, site: Site) -> dict[str, Any]:
    return make_config(tmp_path, free_port(), [("edge-1", f"127.0.0.1:{site.http_port}")], site.checks(), "edge")


def test_validate_and_check_run_every_native_kind_against_real_servers(tmp_path: Path, site: Site) -> None:
    path = write_config(tmp_path / "healerd.yaml", _config(tmp_path, site))
    validated = run_cli("validate", "-c", str(path))
    assert validated.returncode == 0, validated.stdout + validated.stderr
    assert "5 check(s) per round" in validated.stdout, validated.stdout

    result = run_cli("check", "-c", str(path), "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    rows = {row["check"]: row for row in json.loads(result.stdout)}
    assert {name: row["status"] for name, row in rows.items()} == dict.fromkeys(
        ("api", "cert", "resolves", "ping", "rpc"), "OK"
    ), rows
    assert re.match(
        r"certificate for localhost valid (59|60) days \(until \d{4}-\d\d-\d\d\), TLSv1\.[23] ", rows["cert"]["message"]
    )
    assert rows["resolves"]["message"].startswith(f"web.test A 10.0.0.1 from 127.0.0.1:{site.dns.port} in ")
    assert rows["ping"]["message"].startswith("127.0.0.1: 3 of 3 replies, rta ")
    assert rows["rpc"]["message"].startswith("SERVING (web) in ")
    labels = {m["label"] for row in rows.values() for m in row["metrics"]}
    assert {"days_left", "time", "rta", "pl"} <= labels, labels

    # the table a user reads, exit status the worst: the JSON condition fails
    site.health({"status": "UP", "db": {"status": "DOWN"}})
    try:
        table = run_cli("check", "-c", str(path))
    finally:
        site.health({"status": "UP", "db": {"status": "UP"}})
    assert table.returncode == 2, table.stdout + table.stderr
    line = next(row for row in table.stdout.splitlines() if " api " in row)
    assert "CRITICAL" in line and 'HTTP 200: $.db.status is "DOWN", expected "UP"' in line, table.stdout


def test_validate_refuses_bad_options_of_every_native_kind_naming_each_and_its_fix(tmp_path: Path, site: Site) -> None:
    config = _config(tmp_path, site)
    checks = config["services"]["edge"]["checks"]
    checks[0]["expect"]["json"] = {"$.checks[*].status": "UP"}
    checks[1]["warning"] = "2d"  # shorter than critical (7d)
    checks[2]["type"] = "AAA"
    checks[3]["count"] = 0
    checks[4]["port"] = 70000
    path = write_config(tmp_path / "bad.yaml", config)
    result = run_cli("validate", "-c", str(path))
    assert result.returncode == 2, result.stdout + result.stderr
    err = result.stderr
    assert "Traceback" not in err, err
    for index, words in [
        (0, "not supported"),
        (1, "warning"),
        (2, "AAA"),
        (3, "count"),
        (4, "70000"),
    ]:
        hits = [row for row in err.splitlines() if f"services.edge.checks[{index}]" in row]
        assert hits and any(words in row for row in hits), f"checks[{index}] should be refused with {words!r}:\n{err}"
    assert "5 problems" in err, err


def test_the_daemon_shows_each_kind_failing_for_what_it_is_and_recovering(
    tmp_path: Path, site: Site, start_daemon: StartDaemon
) -> None:
    config = _config(tmp_path, site)
    daemon = start_daemon(config)

    def results() -> dict[str, tuple[str, str]]:
        machine = daemon.machines()["edge-1"]
        return {name: (c["status"], c["message"] or "") for name, c in machine["checks"].items()}

    wait_until(lambda: {s for s, _ in results().values()} == {"OK"} and len(results()) == 5, 15, "every check OK")

    # three faults at once, each a kind's own: a frozen DNS server, a gRPC service going NOT_SERVING, a
    # dependency down behind a 200
    site.dns.process.send_signal(signal.SIGSTOP)
    site.grpc.set("web", "NOT_SERVING")
    site.health({"status": "UP", "db": {"status": "DOWN"}})
    try:

        def failing() -> bool:
            r = results()
            return all(r[name][0] == "CRITICAL" for name in ("resolves", "rpc", "api"))

        wait_until(failing, 10, "the three faults to be seen")
        r = results()
        assert r["resolves"][1] == "no answer within 400ms", r
        assert r["rpc"][1].startswith("NOT_SERVING (web)"), r
        assert r["api"][1] == 'HTTP 200: $.db.status is "DOWN", expected "UP"', r
        assert r["cert"][0] == "OK" and r["ping"][0] == "OK", r
        wait_until(lambda: daemon.machines()["edge-1"]["condition"] == "down", 10, "the machine to be down")

        # the status page, once each check's failure is confirmed (fall: 2), says what each kind found
        wanted = ("resolves: CRITICAL no answer within 400ms", "rpc: CRITICAL NOT_SERVING (web)",
                  'api: CRITICAL HTTP 200: $.db.status is "DOWN", expected "UP"', "cert: OK certificate for localhost",
                  "ping: OK 127.0.0.1: 3 of 3 replies")  # fmt: skip
        seen = ""

        def page_says_it() -> bool:
            nonlocal seen
            status, page = http_get(daemon.url + "/")
            assert status == 200
            row = re.search(rb'<tr class="machine" data-machine="edge-1".*?</tr>', page, re.S)
            assert row, page[:2000]
            seen = html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", row.group(0).decode())))
            return all(words in seen for words in wanted)

        wait_until(page_says_it, 5, "the page to show each failure", interval=0.2, describe=lambda: seen)
        assert "✖ down" in seen, seen
    finally:
        site.dns.process.send_signal(signal.SIGCONT)
        site.grpc.set("web", "SERVING")
        site.health({"status": "UP", "db": {"status": "UP"}})

    wait_until(lambda: {s for s, _ in results().values()} == {"OK"}, 15, "every check OK again")
    metrics = daemon.metrics()
    for kind_check in ("api", "cert", "resolves", "ping", "rpc"):
        assert metrics.total("healerd_check_runs_total", check=kind_check) > 0, kind_check


def test_check_reports_a_machine_its_options_cannot_be_built_for_without_crashing(tmp_path: Path, site: Site) -> None:
    # the name asked is made of the machine's id twice, which for a long id is no DNS name (a label over 63)
    checks = [{"name": "resolves", "kind": "dns", "server": "127.0.0.1", "port": site.dns.port,
               "query_name": "{id}{id}.test", "rcode": "NXDOMAIN", "interval": "1s", "timeout": "1s"}]  # fmt: skip
    long_id = "m" * 40
    machines = [(long_id, f"127.0.0.1:{site.http_port}"), ("web", f"127.0.0.1:{site.http_port}")]
    path = write_config(tmp_path / "healerd.yaml", make_config(tmp_path, free_port(), machines, checks))
    result = run_cli("check", "-c", str(path), "--json")
    assert "Traceback" not in result.stderr and result.stdout, result.stdout + result.stderr
    rows = {row["machine"]: row for row in json.loads(result.stdout)}
    assert rows[long_id]["status"] == "UNKNOWN", rows
    assert rows[long_id]["message"].startswith("cannot run dns on '127.0.0.1:"), rows[long_id]
    assert rows["web"]["status"] == "OK", rows["web"]  # webweb.test does not exist, as expected
    assert result.returncode == 3, result.returncode  # the worst status: UNKNOWN
