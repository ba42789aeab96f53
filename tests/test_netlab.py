"""The network lab cuts for real: across a cut a connection times out (it is not refused), a cut is one-way
and one pair only, it heals, and closing the lab leaves nothing of it on the machine."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
import time

import netlab as netlab_module
import psycopg
import pytest
from conftest import require_binary
from netlab import ROOT, Lab, NetlabError, ip, namespaces, require_netlab
from pg import pg_binary, pg_server

PORT = 8000
TIMEOUT = 1.0

SERVER = """
import socket, sys
server = socket.create_server((sys.argv[1], int(sys.argv[2])))
print("listening", flush=True)
while True:
    client, _ = server.accept()
    client.sendall(sys.argv[3].encode())
    client.close()
"""

CLIENT = """
import socket, sys, time
started = time.monotonic()
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as s:
        outcome = s.recv(100).decode()
except TimeoutError:
    outcome = "timeout"
except ConnectionRefusedError:
    outcome = "refused"
except OSError as e:
    outcome = f"error {e}"
print(outcome, time.monotonic() - started)
"""


def serve(lab: Lab, host: str, address: str | None = None) -> None:
    """A server in `host` that answers every connection on `address` (its own by default) with `address`."""
    address = address or lab.address(host)
    process = lab.run(
        host, [sys.executable, "-c", SERVER, address, str(PORT), address], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "listening"


def connect(lab: Lab, host: str, address: str) -> tuple[str, float]:
    """What a client in `host` (ROOT: the test process) gets connecting to `address`, and how long it took."""
    if host == ROOT:
        output = subprocess.run(
            [sys.executable, "-c", CLIENT, address, str(PORT), str(TIMEOUT)], capture_output=True, text=True, timeout=10
        ).stdout
    else:
        output, _ = lab.run(
            host, [sys.executable, "-c", CLIENT, address, str(PORT), str(TIMEOUT)], stdout=subprocess.PIPE, text=True
        ).communicate(timeout=10)
    outcome, _, took = output.strip().rpartition(" ")
    return outcome, float(took)


def test_a_cut_times_out_like_a_lost_link_and_heals(netlab: Lab) -> None:
    for name in ("a", "b", "c"):
        netlab.add_host(name)
    serve(netlab, "c")
    c = netlab.address("c")
    assert connect(netlab, "a", c)[0] == c
    assert connect(netlab, "a", netlab.address("b"))[0] == "refused"  # nobody listens on b

    netlab.cut("a", c)
    outcome, took = connect(netlab, "a", c)
    assert outcome == "timeout"
    assert TIMEOUT * 0.9 <= took < TIMEOUT + 1
    assert connect(netlab, "b", c)[0] == c  # only a is cut from c
    assert connect(netlab, ROOT, c)[0] == c

    netlab.heal("a", c)
    assert connect(netlab, "a", c)[0] == c


def test_a_one_way_cut_stops_connections_both_ways_but_spares_other_hosts(netlab: Lab) -> None:
    for name in ("a", "b", "c"):
        netlab.add_host(name)
    for name in ("a", "c"):
        serve(netlab, name)
    netlab.cut("a", "c")
    assert connect(netlab, "a", netlab.address("c"))[0] == "timeout"
    assert connect(netlab, "c", netlab.address("a"))[0] == "timeout"  # a's answers to c are lost
    assert connect(netlab, "b", netlab.address("c"))[0] == netlab.address("c")
    assert connect(netlab, "b", netlab.address("a"))[0] == netlab.address("a")


def test_an_isolated_host_reaches_nobody_and_nobody_reaches_it_until_it_rejoins(netlab: Lab) -> None:
    for name in ("a", "b"):
        netlab.add_host(name)
        serve(netlab, name)
    a, b = netlab.address("a"), netlab.address("b")

    netlab.isolate("b")
    assert connect(netlab, "a", b)[0] == "timeout"
    assert connect(netlab, ROOT, b)[0] == "timeout"
    assert connect(netlab, "b", a)[0] == "timeout"
    assert connect(netlab, ROOT, a)[0] == a

    netlab.rejoin("b")
    assert connect(netlab, "a", b)[0] == b
    assert connect(netlab, ROOT, b)[0] == b


def test_a_zone_host_carries_its_machines_and_a_cut_may_take_one_address_or_the_whole_zone(netlab: Lab) -> None:
    netlab.add_host("monitor")
    netlab.add_host("zone")
    machines = [netlab.add_address("zone") for _ in range(2)]
    for address in machines:
        serve(netlab, "zone", address)
    assert machines[0] != machines[1]
    assert [connect(netlab, ROOT, m)[0] for m in machines] == machines

    netlab.cut("monitor", machines[0])
    assert [connect(netlab, "monitor", m)[0] for m in machines] == ["timeout", machines[1]]
    netlab.heal("monitor", machines[0])

    netlab.cut(ROOT, "zone")  # the test process loses the zone, the monitor does not
    assert [connect(netlab, ROOT, m)[0] for m in machines] == ["timeout", "timeout"]
    assert [connect(netlab, "monitor", m)[0] for m in machines] == machines


def test_a_host_reaches_nothing_outside_the_lab(netlab: Lab) -> None:
    netlab.add_host("a")
    outside = subprocess.run(["ip", "-4", "route", "get", "1.1.1.1"], capture_output=True, text=True).stdout.split()
    gateway = outside[outside.index("via") + 1] if "via" in outside else "1.1.1.1"  # the machine's own way out
    outcome, took = connect(netlab, "a", gateway)
    assert outcome.startswith("error") and "unreachable" in outcome
    assert took < TIMEOUT


def test_closing_the_lab_ends_its_processes_and_removes_all_it_made() -> None:
    require_netlab()
    with pytest.raises(RuntimeError, match="the test failed"), Lab(["a", "b"]) as lab:
        sleeper = lab.run("a", ["sleep", "300"])
        lab.add_address("b")
        lab.cut("a", "b")
        made = {lab.router, lab.netns("a"), lab.netns("b")}
        assert made <= namespaces()
        assert root_links(lab) and root_routes(lab)
        raise RuntimeError("the test failed")

    assert sleeper.poll() is not None
    assert not made & namespaces()
    assert not root_links(lab)
    assert not root_routes(lab)


def root_links(lab: Lab) -> list[str]:
    """The root namespace's links that belong to `lab`."""
    return [link["ifname"] for link in json.loads(ip("-j", "link", "show")) if lab.token in link["ifname"]]


def root_routes(lab: Lab) -> list[str]:
    """The root namespace's routes (any table) into `lab`'s addresses."""
    routes = json.loads(ip("-4", "-j", "route", "show", "table", "all"))
    return [
        r["dst"]
        for r in routes
        if r["dst"] != "default" and ipaddress.IPv4Network(r["dst"], strict=False).overlaps(lab.network)
    ]


def test_close_reports_a_process_whose_command_line_changed_and_leaves_it_alone() -> None:
    require_netlab()
    lab = Lab(["a"])
    shell = lab.run("a", ["sh", "-c", "exec sleep 300"])  # becomes `sleep 300`: not what was started
    time.sleep(0.3)
    try:
        with pytest.raises(NetlabError, match=f"pid {shell.pid} .*sh -c"):
            lab.close()
        assert shell.poll() is None
        assert lab.netns("a") not in namespaces()  # the rest is removed all the same
    finally:
        shell.kill()
        shell.wait()


def test_no_network_namespaces_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netlab_module, "unavailable", lambda: "`ip netns` does not work here")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="ip netns"):
        require_netlab()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="ip netns"):
        require_netlab()


def test_postgresql_runs_on_a_host_and_is_cut_with_it(netlab: Lab) -> None:
    for name in ("initdb", "pg_ctl"):
        if pg_binary(name) is None:
            require_binary(name)
    netlab.add_host("db")
    with pg_server(address=netlab.address("db"), netns=netlab.netns("db")) as server:
        with psycopg.connect(server.admin_dsn, connect_timeout=5) as conn:
            row = conn.execute("SELECT host(inet_server_addr()), host(inet_client_addr())").fetchone()
        assert row == (netlab.address("db"), netlab.root_address)

        netlab.isolate("db")
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="timeout"):
            psycopg.connect(server.admin_dsn, connect_timeout=2)
        assert time.monotonic() - started >= 1.5
