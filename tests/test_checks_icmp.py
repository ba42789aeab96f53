"""The `icmp` check against real hosts: loopback (IPv4 and IPv6), and namespaces of a network lab that answer
late, lose requests, sit behind a cut, or are not routed at all. Unprivileged sockets are tried by a child
process that runs as nobody inside a namespace of its own ping_group_range."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_binary
from icmp_responder import checksum
from netlab import ROOT, Lab, ip, require_netlab
from pydantic import ValidationError
from test_config_table import BASE, problem_lines, swap, write

import healerd
from healerd.checks import CheckEnv
from healerd.checks.icmp import IcmpCheck, IcmpConfig
from healerd.config import ConfigError, load_config
from healerd.results import Status
from healerd.runner import run_check
from healerd.targets import Target, render_model

RESPONDER = Path(__file__).with_name("icmp_responder.py")
FORGER = Path(__file__).with_name("icmp_forger.py")
NOBODY = 65534  # nogroup's id: the group the unprivileged child runs as
SO_RCVBUFFORCE = 33  # socket(7): SO_RCVBUF beyond rmem_max, for root


def icmp(env: CheckEnv, host: str, **options: object) -> IcmpCheck:
    return IcmpCheck(IcmpConfig(host=host, **options), Target("web", "m1", host), env=env)  # type: ignore[arg-type]


def perf(result: object) -> dict[str, float | None]:
    return {m.label: m.value for m in result.metrics}  # type: ignore[attr-defined]


def respond(lab: Lab, host: str, *args: str) -> subprocess.Popen[str]:
    """A ping responder in `host` in place of its kernel's own answers."""
    ip("netns", "exec", lab.netns(host), "sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1")
    process = lab.run(host, [sys.executable, str(RESPONDER), *args], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None and process.stdout.readline().strip() == "ready"
    return process


@pytest.fixture(scope="module")
def responders() -> Iterator[tuple[Lab, dict[str, subprocess.Popen[str]]]]:
    require_netlab()
    require_binary("setpriv")
    with Lab(["echo", "slow", "lossy", "ping-allowed", "ping-refused", "quiet"]) as lab:
        started = {"slow": respond(lab, "slow", "--delay", "0.25"), "lossy": respond(lab, "lossy", "--drop-every", "3")}
        for host in ("ping-allowed", "quiet"):
            ip("netns", "exec", lab.netns(host), "sysctl", "-qw", f"net.ipv4.ping_group_range={NOBODY} {NOBODY}")
        # a loopback that does not answer ping, for the forgers of the tests below
        ip("netns", "exec", lab.netns("quiet"), "sysctl", "-qw", "net.ipv4.icmp_echo_ignore_all=1")
        yield lab, started


@pytest.fixture
def lab(responders: tuple[Lab, dict[str, subprocess.Popen[str]]]) -> Lab:
    return responders[0]


def unrouted(lab: Lab) -> str:
    """An address inside the lab that no host has and the router has no route for."""
    return str(lab.network.network_address + (250 << 8) + 2)


# -- loopback


async def test_loopback_answers_every_request(env: CheckEnv) -> None:
    result = await run_check(icmp(env, "127.0.0.1"), 2.0)
    assert result.status is Status.OK, result.message
    assert result.message.startswith("127.0.0.1: 3 of 3 replies, rta ")
    figures = perf(result)
    assert figures["pl"] == 0
    assert figures["rtmin"] is not None and figures["rta"] is not None and figures["rtmax"] is not None
    assert 0 < figures["rtmin"] <= figures["rta"] <= figures["rtmax"] < 200


async def test_ipv6_loopback_answers_over_icmpv6(env: CheckEnv) -> None:
    target = Target("web", "m1", "[::1]:80")  # the default host, "{host}", rendered for this machine
    result = await run_check(IcmpCheck(render_model(IcmpConfig(), target.fields()), target, env=env), 2.0)
    assert result.status is Status.OK, result.message
    assert result.message.startswith("::1: 3 of 3 replies, rta ")


async def test_a_name_is_looked_up(env: CheckEnv) -> None:
    result = await run_check(icmp(env, "localhost", count=1), 2.0)
    assert result.status is Status.OK, result.message
    assert result.message.startswith("localhost: 1 of 1 replies")


async def test_hundreds_of_checks_at_once_each_get_their_own_replies(env: CheckEnv) -> None:
    checks = [icmp(env, "127.0.0.1" if i % 2 else "::1") for i in range(400)]
    results = await asyncio.gather(*(run_check(c, 3.0) for c in checks))
    assert [r.message.split(",")[0] for r in results] == [
        f"{'127.0.0.1' if i % 2 else '::1'}: 3 of 3 replies" for i in range(400)
    ]


async def test_the_shared_socket_forgets_an_address_once_nothing_waits_for_it(env: CheckEnv) -> None:
    hosts = [f"127.0.{i // 250}.{1 + i % 250}" for i in range(600)]  # machines that come and go
    results = await asyncio.gather(*(run_check(icmp(env, host), 3.0) for host in hosts))
    assert all(r.status is Status.OK for r in results), [r.message for r in results if r.status is not Status.OK]
    assert env.echo_socket(socket.AF_INET).addresses == 0


def queued(sock: socket.socket) -> int:
    """The bytes waiting in the receive queue of a raw IPv4 socket of this process, as the kernel counts them."""
    inode = os.fstat(sock.fileno()).st_ino
    for line in Path("/proc/net/raw").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[9]) == inode:
            return int(fields[4].split(":")[1], 16)
    raise AssertionError(f"socket {inode} is not in /proc/net/raw")


async def test_a_flood_of_icmp_is_read_a_slice_per_turn_of_the_loop(env: CheckEnv) -> None:
    assert (await run_check(icmp(env, "127.0.0.1", count=1), 1.0)).status is Status.OK
    echo = env.echo_socket(socket.AF_INET)
    if not echo.raw:
        pytest.skip("only a raw socket sees the ICMP of the whole host")
    # a borrowed handle on the check's socket, to let it hold the whole flood and to watch its queue
    watched = socket.socket(fileno=os.dup(echo._sock.fileno()))
    flood = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    try:
        watched.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 16 << 20)
        reply = bytearray(b"\0\0\0\0\0\1\0\1" + b"flood" * 4)  # another program's echo reply
        reply[2:4] = checksum(bytes(reply)).to_bytes(2, "big")
        for _ in range(3000):  # all queued before the loop gets a turn
            flood.sendto(reply, ("127.0.0.1", 0))
        seen = [queued(watched)]
        while seen[-1] and len(seen) < 100:
            await asyncio.sleep(0)
            seen.append(queued(watched))
    finally:
        flood.close()
        watched.close()
    assert seen[-1] == 0, seen
    # other callbacks ran between slices: the loop saw part of the flood read and part still waiting
    assert len({q for q in seen if 0 < q < seen[0]}) >= 3, seen


# -- the lab: a host that answers, one behind a cut, one answering late, one losing requests, no host at all


async def test_a_host_that_stops_answering_is_critical_with_its_loss_before_the_timeout(
    lab: Lab, env: CheckEnv
) -> None:
    host = lab.address("echo")
    assert (await run_check(icmp(env, host), 1.0)).status is Status.OK
    lab.cut(ROOT, "echo")
    try:
        result = await run_check(icmp(env, host), 1.0)
    finally:
        lab.heal(ROOT, "echo")
    assert (result.status, result.message) == (Status.CRITICAL, f"{host}: 100% loss (0 of 3 replies)")
    assert perf(result)["pl"] == 100
    assert result.duration < 1.0  # the loss was reported, not a bare "no answer within 1s"


async def test_a_frozen_responder_is_critical_within_the_timeout(
    responders: tuple[Lab, dict[str, subprocess.Popen[str]]], env: CheckEnv
) -> None:
    lab, started = responders
    responder = started["slow"]
    host = lab.address("slow")
    os.kill(responder.pid, signal.SIGSTOP)
    try:
        result = await run_check(icmp(env, host), 0.5)
    finally:
        os.kill(responder.pid, signal.SIGCONT)
    assert (result.status, result.message) == (Status.CRITICAL, f"{host}: 100% loss (0 of 3 replies)")
    assert result.duration < 0.5


async def test_slow_replies_raise_a_warning_naming_the_round_trip_and_the_range(lab: Lab, env: CheckEnv) -> None:
    host = lab.address("slow")
    result = await run_check(icmp(env, host), 1.5)
    assert result.status is Status.WARNING, result.message
    assert result.message.startswith(f"{host}: rta 25")
    assert "ms (warning: above 200ms); 3 of 3 replies" in result.message
    rta = perf(result)["rta"]
    assert rta is not None and 250 <= rta < 500
    critical = await run_check(icmp(env, host, rtt={"warning": "50", "critical": "100"}), 1.5)
    assert critical.status is Status.CRITICAL
    assert "ms (critical: above 100ms)" in critical.message


async def test_partial_loss_is_judged_by_the_loss_range(lab: Lab, env: CheckEnv) -> None:
    host = lab.address("lossy")
    default = await run_check(icmp(env, host), 0.6)
    assert default.status is Status.OK, default.message  # 33% is under check_icmp's warning of 40%
    assert default.message.startswith(f"{host}: 2 of 3 replies, rta ")
    strict = await run_check(icmp(env, host, loss="20"), 0.6)
    assert strict.status is Status.CRITICAL
    assert strict.message.startswith(f"{host}: 33.3% loss (critical: above 20%); 2 of 3 replies, rta ")
    assert perf(strict)["pl"] == 33.3


async def test_destination_unreachable_is_reported_as_such(lab: Lab, env: CheckEnv) -> None:
    host = unrouted(lab)
    router = str(lab.network.network_address + 2)
    result = await run_check(icmp(env, host, count=2), 1.0)
    assert result.status is Status.CRITICAL
    assert result.message == (
        f"{host}: 100% loss (0 of 2 replies): destination unreachable (network unreachable) from {router} (x2)"
    )


# -- privileges: a child process as nobody, in a namespace whose ping_group_range lets nogroup in or not

CHILD = """
import asyncio, json, sys
from healerd.checks import CheckEnv
from healerd.checks.icmp import IcmpCheck, IcmpConfig
from healerd.runner import run_check
from healerd.targets import Target, render_model

async def main():
    env = CheckEnv()
    out = {"preflight": [m for _, m in IcmpCheck.preflight(IcmpConfig(), env)]}
    for host in sys.argv[1:]:
        result = await run_check(IcmpCheck(IcmpConfig(host=host, count=2), Target("web", "m1", host), env=env), 1.0)
        out[host] = [result.status.name, result.message]
    await env.close()
    print(json.dumps(out))

asyncio.run(main())
"""


def as_nobody(lab: Lab, host: str, *targets: str, root: bool = False) -> dict[str, list[str]]:
    """The child's results in `host`, run as nobody (an unprivileged ICMP socket or none) or as root (raw)."""
    argv = ["ip", "netns", "exec", lab.netns(host)]
    if not root:
        argv += ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--inh-caps=-all"]
    argv += [sys.executable, "-c", CHILD, *targets]
    source = str(Path(healerd.__file__).parent.parent)
    environ = {"PYTHONPATH": source, "PYTHONDONTWRITEBYTECODE": "1", "PATH": os.environ.get("PATH", "")}
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/", env=environ)
    assert done.returncode == 0, done.stderr
    found: dict[str, list[str]] = json.loads(done.stdout)
    return found


def test_an_unprivileged_process_pings_where_ping_group_range_allows_it(lab: Lab) -> None:
    far = unrouted(lab)
    gateway = str(lab.hosts["ping-allowed"].block.network_address + 1)
    found = as_nobody(lab, "ping-allowed", "127.0.0.1", "::1", far)
    assert found["preflight"] == []
    assert found["127.0.0.1"][0] == "OK" and found["127.0.0.1"][1].startswith("127.0.0.1: 2 of 2 replies, rta ")
    assert found["::1"][0] == "OK" and found["::1"][1].startswith("::1: 2 of 2 replies, rta ")
    assert found[far][0] == "CRITICAL"
    assert found[far][1].startswith(f"{far}: 100% loss (0 of 2 replies): destination unreachable (")
    assert found[far][1].endswith(f"(network unreachable) from {gateway} (x2)")


def test_without_any_icmp_privilege_the_check_is_unknown_and_says_how_to_allow_it(lab: Lab) -> None:
    found = as_nobody(lab, "ping-refused", "127.0.0.1")
    status, message = found["127.0.0.1"]
    assert status == "UNKNOWN"
    assert f"add group {NOBODY} to net.ipv4.ping_group_range (now '1 0')" in message
    assert f"sysctl -w net.ipv4.ping_group_range='{NOBODY} {NOBODY}'" in message
    assert "AmbientCapabilities=CAP_NET_RAW" in message
    assert found["preflight"] == [message]


# -- forgeries: what another host sends about a probe is not taken for what the pinged host said

FORGERIES = {
    "a reply from another address": (["--source", "127.0.0.2", "--reply"], "127.0.0.1: 100% loss (0 of 2 replies)"),
    "unreachable about another address": (
        ["--source", "127.0.0.2", "--unreachable", "--about", "127.0.0.3"],
        "127.0.0.1: 100% loss (0 of 2 replies)",
    ),
    # the same forger telling the truth, which shows it reaches the check
    "a reply from the address pinged": (["--source", "127.0.0.1", "--reply"], "127.0.0.1: 2 of 2 replies"),
    "unreachable about the address pinged": (
        ["--source", "127.0.0.2", "--unreachable", "--about", "127.0.0.1"],
        "127.0.0.1: 100% loss (0 of 2 replies): destination unreachable (host unreachable) from 127.0.0.2 (x2)",
    ),
}


@pytest.mark.parametrize("root", [True, False], ids=["raw socket", "unprivileged socket"])
@pytest.mark.parametrize("forgery", list(FORGERIES))
def test_only_the_address_pinged_answers_for_itself(lab: Lab, forgery: str, root: bool) -> None:
    args, said = FORGERIES[forgery]
    forger = lab.run("quiet", [sys.executable, str(FORGER), *args], stdout=subprocess.PIPE, text=True)
    try:
        assert forger.stdout is not None and forger.stdout.readline().strip() == "ready"
        found = as_nobody(lab, "quiet", "127.0.0.1", root=root)
    finally:
        forger.terminate()
        forger.wait(5)
    assert found["127.0.0.1"][1].split(", rta ")[0] == said  # the round trips aside


# -- many echo requests in flight at once: a partition of a fleet

BURST = """
import asyncio, gc, json, sys
from healerd.checks import CheckEnv
from healerd.checks.icmp import IcmpCheck, IcmpConfig
from healerd.runner import run_check
from healerd.targets import Target

async def main():
    env = CheckEnv()
    checks = [IcmpCheck(IcmpConfig(host=h, count=100), Target("web", "m1", h), env=env) for h in sys.argv[1:]]
    results = await asyncio.gather(*(run_check(c, 3.0) for c in checks))
    await env.close()
    print(json.dumps([[r.status.name, r.message] for r in results]))

# the collector's pauses over 70,000 requests in flight can outlast the 50ms a run keeps before its timeout,
# which is not what these tests are about
gc.disable()
asyncio.run(main())
"""


def burst(lab: Lab, silent: str, hosts: list[str]) -> list[list[str]]:
    """The results of a run of count 100 to each of `hosts` at once, from a child process (whose loop may
    wedge), while the lab drops everything sent to `silent` without a word."""
    source = str(Path(healerd.__file__).parent.parent)
    lab.cut(ROOT, silent)
    try:
        done = subprocess.run(
            [sys.executable, "-c", BURST, *hosts],
            capture_output=True,
            text=True,
            timeout=60,
            cwd="/",
            env={"PYTHONPATH": source, "PYTHONDONTWRITEBYTECODE": "1", "PATH": os.environ.get("PATH", "")},
        )
    finally:
        lab.heal(ROOT, silent)
    assert done.returncode == 0, done.stderr
    found: list[list[str]] = json.loads(done.stdout)
    return found


def test_seven_hundred_silent_hosts_at_count_100_each_read_as_total_loss(lab: Lab) -> None:
    silent = lab.network.network_address + (200 << 8)  # 10.N.200.0/22: no host, no route beyond the cut
    hosts = [str(silent + 1 + i) for i in range(700)]
    found = burst(lab, f"{silent}/22", hosts)
    assert found == [["CRITICAL", f"{h}: 100% loss (0 of 100 replies)"] for h in hosts]


def test_more_echo_requests_in_flight_to_one_host_than_sequence_numbers_are_counted_as_lost(lab: Lab) -> None:
    silent = str(lab.network.network_address + (200 << 8) + 1)
    found = burst(lab, silent, [silent] * 700)  # 70,000 requests, 65,536 sequence numbers
    assert {status for status, _ in found} == {"CRITICAL"}
    refused = 0
    for _, message in found:
        head, _, why = message.partition(": too many echo requests in flight")
        assert head == f"{silent}: 100% loss (0 of 100 replies)", message
        refused += int(why.strip(" (x)") or 1) if message != head else 0
    assert 0 < refused <= 70_000 - 65_536


# -- options refused at validation, with the fix


@pytest.mark.parametrize(
    ("options", "said"),
    [
        ({"count": 0}, "count is the number of echo requests per run, from 1 to 100; got 0"),
        ({"count": 101}, "from 1 to 100; got 101"),
        ({"rtt": "fast"}, "expected a Nagios range like 10, 10:, ~:10, 10:20 or @10:20, got 'fast'"),
        ({"loss": {"warning": "50:10"}}, "the range '50:10' is empty: its start is above its end"),
        ({"loss": {"warn": "10"}}, "warn"),
    ],
)
def test_bad_options_are_refused_naming_the_fix(options: dict[str, object], said: str) -> None:
    with pytest.raises(ValidationError) as info:
        IcmpConfig(**options)  # type: ignore[arg-type]
    assert said in str(info.value)


def test_validate_refuses_a_bad_count_at_its_key(tmp_path: Path) -> None:
    text = swap(
        '        kind: http\n        url: "http://{address}/health"\n', "        kind: icmp\n        count: 0\n", BASE
    )
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    hits = problem_lines(info.value.render(), "services.web.checks[0].count")
    assert hits and "from 1 to 100; got 0" in hits[0], info.value.render()


def test_ranges_accept_numbers_and_templates_render_per_machine() -> None:
    config = IcmpConfig(rtt=300, loss={"warning": 10, "critical": "20:"})  # type: ignore[arg-type]
    assert (config.rtt.warning, config.rtt.critical) == (None, "300")
    assert (config.loss.warning, config.loss.critical) == ("10", "20:")
    assert IcmpConfig().host == "{host}"
