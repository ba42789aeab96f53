"""The `dns` check against Debian's dnsmasq serving a `test.` zone on loopback: right and wrong answers, names
that do not exist, record types, a truncated answer fetched again over TCP, a frozen and a stopped server, and
configs refused at validation with their fix."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dns.message
import dns.query
import dns.rrset
import pytest
from conftest import free_port, require_binary, stop_process

from healerd.checks import CheckEnv
from healerd.checks import dns as dns_check
from healerd.checks.dns import DnsCheck, DnsConfig
from healerd.config import ConfigError, load_config
from healerd.results import CheckResult, Status
from healerd.runner import run_check
from healerd.targets import Target, render_model

#: six TXT strings of 250 characters: 1.5 kB, more than a UDP answer carries (the check asks for 1232 bytes)
BIG_TEXT = "".join(letter * 250 for letter in "abcdef")
RECORDS = [
    "--host-record=web.test,10.0.0.1",
    "--host-record=v6.test,2001:db8::1",
    "--mx-host=test,mail.test,10",
    "--txt-record=txt.test,v=spf1 -all",
    "--cname=alias.test,web.test",
    "--txt-record=big.test," + ",".join(BIG_TEXT[i : i + 250] for i in range(0, len(BIG_TEXT), 250)),
]


@dataclass
class Dnsmasq:
    process: subprocess.Popen[bytes]
    port: int

    @property
    def where(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        stop_process(self.process)


def start_dnsmasq(log: Path) -> Dnsmasq:
    """dnsmasq in the foreground answering for `test.` on 127.0.0.1 (any name under it that it does not hold
    is NXDOMAIN; a name elsewhere is REFUSED: it has no upstream), ready when it answers."""
    binary = require_binary("/usr/sbin/dnsmasq")
    port = free_port()
    process = subprocess.Popen(
        [binary, "--keep-in-foreground", "--no-daemon", "--conf-file=/dev/null", "--no-resolv", "--no-hosts",
         f"--port={port}", "--listen-address=127.0.0.1", "--bind-interfaces", "--local=/test/", *RECORDS],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
    )  # fmt: skip
    server = Dnsmasq(process, port)
    deadline = time.monotonic() + 10
    while True:
        try:
            dns.query.udp(dns.message.make_query("web.test", "A"), "127.0.0.1", timeout=0.2, port=port)
            return server
        except (OSError, dns.exception.Timeout):
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                pytest.fail(f"dnsmasq did not start: {log.read_text()}")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def dnsmasq(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dnsmasq]:
    server = start_dnsmasq(tmp_path_factory.mktemp("dnsmasq") / "dnsmasq.log")
    yield server
    server.stop()


def dns_on(env: CheckEnv, port: int, *, machine: str = "web", **options: object) -> DnsCheck:
    """The check as the daemon builds it for a machine at 127.0.0.1: its options rendered for that machine."""
    target = Target("site", machine, "127.0.0.1:8080")
    config = DnsConfig.model_validate({"port": port, **options})
    return DnsCheck(render_model(config, target.fields()), target, env=env)


async def ask(env: CheckEnv, dnsmasq: Dnsmasq, **options: object) -> CheckResult:
    return await run_check(dns_on(env, dnsmasq.port, **options), timeout=2)  # type: ignore[arg-type]


# -- what the server answers -------------------------------------------------------------------------------


async def test_the_expected_address_is_ok_with_the_response_time(env: CheckEnv, dnsmasq: Dnsmasq) -> None:
    result = await ask(env, dnsmasq, query_name="web.test", expect=["10.0.0.1"])
    assert result.status is Status.OK, result.message
    assert result.message.startswith(f"web.test A 10.0.0.1 from {dnsmasq.where} in ")
    assert result.message.endswith("ms")
    (time_,) = result.metrics
    assert (time_.label, time_.uom) == ("time", "s")
    assert 0 < time_.value < 1  # type: ignore[operator]


async def test_a_wrong_address_is_critical_and_says_what_came(env: CheckEnv, dnsmasq: Dnsmasq) -> None:
    result = await ask(env, dnsmasq, query_name="web.test", expect=["10.0.0.9"])
    assert result.status is Status.CRITICAL
    assert result.message == f"web.test A from {dnsmasq.where}: got 10.0.0.1, expected 10.0.0.9"


async def test_a_name_that_does_not_exist_is_critical(env: CheckEnv, dnsmasq: Dnsmasq) -> None:
    result = await ask(env, dnsmasq, query_name="gone.test")
    assert result.status is Status.CRITICAL
    assert result.message == f"NXDOMAIN: gone.test does not exist on {dnsmasq.where}"


async def test_rcode_nxdomain_wants_the_name_gone(env: CheckEnv, dnsmasq: Dnsmasq) -> None:
    gone = await ask(env, dnsmasq, query_name="gone.test", rcode="nxdomain")
    assert gone.status is Status.OK, gone.message
    assert gone.message.startswith(f"gone.test NXDOMAIN from {dnsmasq.where} in ")
    present = await ask(env, dnsmasq, query_name="web.test", rcode="NXDOMAIN")
    assert present.status is Status.CRITICAL
    assert present.message == f"web.test exists on {dnsmasq.where} (A 10.0.0.1); expected NXDOMAIN"


@pytest.mark.parametrize(
    ("name", "type_", "expect", "shown"),
    [
        ("v6.test", "AAAA", "2001:0db8:0:0::1", "v6.test AAAA 2001:db8::1"),  # addresses compared by value
        ("test", "MX", "10 MAIL.test.", "test MX 10 mail.test"),  # names: any case, final dot or not
        ("txt.test", "TXT", "v=spf1 -all", 'txt.test TXT "v=spf1 -all"'),
        ("alias.test", "CNAME", "Web.Test", "alias.test CNAME web.test"),
        ("alias.test", "A", "10.0.0.1", "alias.test A 10.0.0.1"),  # the address at the end of the alias
    ],
)
async def test_each_record_type_compares_in_its_own_form(
    env: CheckEnv, dnsmasq: Dnsmasq, name: str, type_: str, expect: str, shown: str
) -> None:
    result = await ask(env, dnsmasq, query_name=name, type=type_, expect=[expect])
    assert result.status is Status.OK, result.message
    assert result.message.startswith(f"{shown} from {dnsmasq.where} in ")


async def test_a_wrong_mail_host_is_critical(env: CheckEnv, dnsmasq: Dnsmasq) -> None:
    result = await ask(env, dnsmasq, query_name="test", type="MX", expect=["10 mx.test", "20 mail.test"])
    assert result.status is Status.CRITICAL
    assert result.message == f"test MX from {dnsmasq.where}: got 10 mail.test, expected 10 mx.test, 20 mail.test"


async def test_a_name_without_a_record_of_the_type_is_critical(env: CheckEnv, dnsmasq: Dnsmasq) -> None:
    result = await ask(env, dnsmasq, query_name="web.test", type="AAAA")
    assert result.status is Status.CRITICAL
    assert result.message == f"no AAAA record for web.test on {dnsmasq.where}"


async def test_a_refusal_is_critical_and_named(env: CheckEnv, dnsmasq: Dnsmasq) -> None:
    result = await ask(env, dnsmasq, query_name="example.com")  # not its zone, and no upstream to ask
    assert result.status is Status.CRITICAL
    assert result.message == (
        f"REFUSED from {dnsmasq.where} for example.com A (the server refuses to answer it); expected NOERROR"
    )


async def test_an_answer_too_big_for_udp_is_fetched_over_tcp(env: CheckEnv, dnsmasq: Dnsmasq) -> None:
    result = await ask(env, dnsmasq, query_name="big.test", type="TXT", expect=[BIG_TEXT])
    assert result.status is Status.OK, result.message
    assert result.message.startswith(f'big.test TXT "{"a" * 77}..." from {dnsmasq.where} in ')


async def test_options_are_rendered_for_each_machine(env: CheckEnv, dnsmasq: Dnsmasq) -> None:
    """`{id}` in the name and the default server `{host}`: one check, two machines, two answers."""
    web = await run_check(dns_on(env, dnsmasq.port, machine="web", query_name="{id}.test"), timeout=2)
    v6 = await run_check(dns_on(env, dnsmasq.port, machine="v6", query_name="{id}.test", type="AAAA"), timeout=2)
    assert web.message.startswith(f"web.test A 10.0.0.1 from {dnsmasq.where}"), web.message
    assert v6.message.startswith(f"v6.test AAAA 2001:db8::1 from {dnsmasq.where}"), v6.message


async def test_a_slow_answer_crosses_the_time_ranges(env: CheckEnv, dnsmasq: Dnsmasq) -> None:
    relaxed = await ask(env, dnsmasq, query_name="web.test", warning="0.5", critical="1")
    assert relaxed.status is Status.OK, relaxed.message
    slow = await ask(env, dnsmasq, query_name="web.test", warning="0.000001")  # no answer comes in a microsecond
    assert slow.status is Status.WARNING
    assert slow.message.startswith(f"web.test A 10.0.0.1 from {dnsmasq.where} in ")
    assert slow.message.endswith("(outside 0.000001s)")
    assert slow.metrics[0].warn == "0.000001"


# -- a server that does not answer -------------------------------------------------------------------------


async def test_a_frozen_server_is_critical_at_the_timeout(env: CheckEnv, dnsmasq: Dnsmasq) -> None:
    check = dns_on(env, dnsmasq.port, query_name="web.test", expect=["10.0.0.1"])
    dnsmasq.process.send_signal(signal.SIGSTOP)
    try:
        frozen = await run_check(check, timeout=0.4)
    finally:
        dnsmasq.process.send_signal(signal.SIGCONT)
    assert frozen.status is Status.CRITICAL
    assert frozen.message == "no answer within 400ms"
    assert 0.4 <= frozen.duration < 1
    thawed = await run_check(check, timeout=2)  # its late answer to the frozen query is not taken for this one
    assert thawed.status is Status.OK, thawed.message


async def test_a_stopped_server_is_critical_connection_refused(env: CheckEnv, tmp_path: Path) -> None:
    server = start_dnsmasq(tmp_path / "dnsmasq.log")
    check = dns_on(env, server.port, query_name="web.test")
    assert (await run_check(check, timeout=2)).status is Status.OK
    server.stop()
    result = await run_check(check, timeout=2)
    assert result.status is Status.CRITICAL
    assert result.message == f"web.test A to {server.where}: connection refused"
    assert result.duration < 1  # refused at once (ICMP port unreachable), not at the timeout


class Impostor(asyncio.DatagramProtocol):
    """A UDP server that, before the real answer, sends one with the wrong id and one with the right id from
    another port: the kind of answers an attacker or a confused middlebox sends."""

    def __init__(self, forger: socket.socket, addresses: list[str]) -> None:
        self.forger = forger
        self.addresses = addresses
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # asyncio's is one, without the subclass

    def answer(self, query: dns.message.Message, address: str, id_: int) -> bytes:
        response = dns.message.make_response(query)
        response.id = id_
        response.answer.append(dns.rrset.from_text(query.question[0].name, 0, "IN", "A", address))
        return response.to_wire()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self.transport is not None
        query = dns.message.from_wire(data)
        self.transport.sendto(self.answer(query, "10.66.0.1", (query.id + 1) % 65536), addr)
        self.forger.sendto(self.answer(query, "10.66.0.2", query.id), addr)
        self.transport.sendto(self.answer(query, self.addresses.pop(0), query.id), addr)


async def test_answers_with_a_wrong_id_or_from_elsewhere_are_ignored(env: CheckEnv) -> None:
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as forger:
        forger.bind(("127.0.0.1", 0))
        transport, _ = await loop.create_datagram_endpoint(
            lambda: Impostor(forger, ["10.0.0.1", "10.0.0.2"]), local_addr=("127.0.0.1", 0)
        )
        try:
            port = transport.get_extra_info("sockname")[1]
            check = dns_on(env, port, query_name="web.test", expect=["10.0.0.1"])
            first, second = await run_check(check, timeout=2), await run_check(check, timeout=2)
        finally:
            transport.close()
    assert first.status is Status.OK, first.message
    # the same check, the answer changed: it is read again, not taken for the previous one
    assert second.status is Status.CRITICAL
    assert second.message == f"web.test A from 127.0.0.1:{port}: got 10.0.0.2, expected 10.0.0.1"


class Refuser(asyncio.DatagramProtocol):
    """A server that refuses every query with REFUSED and no question section, as some servers do."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        response.set_rcode(dns.rcode.REFUSED)
        response.question = []
        self.transport.sendto(response.to_wire(), addr)  # type: ignore[attr-defined]


async def test_a_refusal_without_the_question_is_read_as_a_refusal_not_a_timeout(env: CheckEnv) -> None:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Refuser, local_addr=("127.0.0.1", 0))
    try:
        port = transport.get_extra_info("sockname")[1]
        refused = await run_check(dns_on(env, port, query_name="web.test"), timeout=1)
        accepted = await run_check(dns_on(env, port, query_name="web.test", rcode="REFUSED"), timeout=1)
    finally:
        transport.close()
    assert refused.status is Status.CRITICAL
    assert refused.message.startswith(f"REFUSED from 127.0.0.1:{port} for web.test A"), refused.message
    assert accepted.status is Status.OK, accepted.message


# -- the host's resolvers ----------------------------------------------------------------------------------


async def test_server_system_asks_the_resolvers_of_resolv_conf(
    env: CheckEnv, dnsmasq: Dnsmasq, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 127.0.0.1\n")
    monkeypatch.setattr(dns_check, "RESOLV_CONF", str(resolv_conf))
    right = await ask(env, dnsmasq, server="system", query_name="web.test", expect=["10.0.0.1"])
    assert right.status is Status.OK, right.message
    assert right.message.startswith(f"web.test A 10.0.0.1 from {dnsmasq.where} in ")
    gone = await ask(env, dnsmasq, server="system", query_name="gone.test")
    assert gone.status is Status.CRITICAL
    assert gone.message == "NXDOMAIN: gone.test does not exist on the system resolvers"
    refused = await ask(env, dnsmasq, server="system", query_name="example.com")
    assert refused.status is Status.CRITICAL
    assert refused.message.startswith(f"REFUSED from {dnsmasq.where} for example.com A")


async def test_server_system_with_no_resolver_answering_is_critical(
    env: CheckEnv, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 127.0.0.1\n")
    monkeypatch.setattr(dns_check, "RESOLV_CONF", str(resolv_conf))
    port = free_port()  # nothing listens there
    result = await run_check(dns_on(env, port, server="system", query_name="web.test"), timeout=0.5)
    assert result.status is Status.CRITICAL
    assert result.message.startswith(f"web.test A: no answer from the system resolvers (127.0.0.1:{port}) within ")


async def test_server_system_follows_a_rewritten_resolv_conf(
    env: CheckEnv, dnsmasq: Dnsmasq, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolv_conf = tmp_path / "resolv.conf"
    resolv_conf.write_text("nameserver 127.0.0.2\n")  # nothing answers there
    monkeypatch.setattr(dns_check, "RESOLV_CONF", str(resolv_conf))
    before = await run_check(dns_on(env, dnsmasq.port, server="system", query_name="web.test"), timeout=0.5)
    assert before.status is Status.CRITICAL and "127.0.0.2" in before.message, before.message
    resolv_conf.write_text("nameserver 127.0.0.1\n# moved to the local resolver\n")
    after = await ask(env, dnsmasq, server="system", query_name="web.test", expect=["10.0.0.1"])
    assert after.status is Status.OK, after.message


# -- configs refused at validation -------------------------------------------------------------------------

CONFIG = """\
providers:
  lab: {kind: static}
services:
  web:
    provider: lab
    machines: [{id: web-1, address: "127.0.0.1:8001"}]
    checks:
      - name: resolves
        kind: dns
"""


@pytest.mark.parametrize(
    ("options", "key", "hint"),
    [
        ("query_name: web.test\n        type: AAA", "type", "expected a record type such as A, AAAA, CNAME, MX, TXT"),
        ("query_name: web.test\n        type: AXFR", "type", "AXFR is a query type"),
        (
            "query_name: web.test\n        rcode: NXDOMIAN",
            "rcode",
            "expected a response code such as NOERROR, NXDOMAIN",
        ),
        (
            "query_name: web.test\n        expect: ['10.0.0']",
            "expect",
            "'10.0.0' is not a A answer: write an IPv4 address",
        ),
        (
            "query_name: web.test\n        type: MX\n        expect: [mail.test]",
            "expect",
            "write a preference and a host",
        ),
        ("query_name: web.test\n        rcode: NXDOMAIN\n        expect: [10.0.0.1]", "expect", "drop expect"),
        (
            "query_name: web.test\n        server: 10.0.0",
            "server",
            "expected an address like 10.0.0.53, 10.0.0.53:5353",
        ),
        ("query_name: web.test\n        port: 70000", "port", "expected a port between 1 and 65535"),
        ("query_name: web..test", "query_name", "write a name like www.example.com"),
        ("query_name: web.test\n        warning: '1:0'", "warning", "is empty"),
        ("type: A", "query_name", "query_name"),
    ],
)
def test_validate_refuses_what_cannot_work_and_says_the_fix(tmp_path: Path, options: str, key: str, hint: str) -> None:
    path = tmp_path / "healerd.yaml"
    path.write_text(CONFIG + "        " + options + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    rendered = info.value.render()
    assert f"services.web.checks[0].{key}: " in rendered and hint in rendered, rendered


def test_validate_accepts_templates_and_every_option(tmp_path: Path) -> None:
    path = tmp_path / "healerd.yaml"
    path.write_text(
        CONFIG
        + "        server: '{host}'\n        port: 5353\n        query_name: '{id}.web.test'\n        type: aaaa\n"
        "        expect: ['2001:db8::1', '{host}']\n        rcode: NOERROR\n        warning: 0.2\n        critical: 1\n"
    )
    load_config(path)


def test_validate_names_a_host_without_resolvers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "resolv.conf"
    empty.write_text("# no nameserver\n")
    monkeypatch.setattr(dns_check, "RESOLV_CONF", str(empty))
    path = tmp_path / "healerd.yaml"
    path.write_text(CONFIG + "        server: system\n        query_name: web.test\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert f"asks the nameservers listed in {empty}, but none is listed there" in info.value.render()
