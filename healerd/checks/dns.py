"""`dns` check: ask a DNS server (the machine itself unless told otherwise) for one name and compare what it
answers with what is expected: the response code, and the records of the type asked."""

from __future__ import annotations

import asyncio
import ipaddress
import math
import os
import re
import socket
import time
from dataclasses import dataclass
from typing import Any

import dns.asyncquery
import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
from pydantic import ValidationInfo, field_validator

from .._neterrors import describe
from ..results import CheckResult, PerfDatum, Status
from ..targets import Target
from ._ports import port_number, port_option
from .base import Check, CheckEnv, CheckOptions
from .nagios import Range

#: where `server: system` finds the host's resolvers
RESOLV_CONF = "/etc/resolv.conf"
#: the EDNS buffer size asked for (the 2020 DNS flag day's): a larger answer comes truncated and is asked again
#: over TCP
UDP_PAYLOAD = 1232
#: answers named in a message; the rest are counted
SHOWN = 5
#: the longest text of a TXT answer shown in a message
SHOWN_TEXT = 80
#: how long the address of a server given by name is used before it is looked up again (seconds)
SERVER_ADDRESS_TTL = 60.0

_TYPES_HINT = "a record type such as A, AAAA, CNAME, MX, TXT, NS, PTR, SRV"
_RCODES_HINT = "a response code such as NOERROR, NXDOMAIN, SERVFAIL, REFUSED"
_SERVER_HINT = (
    "an address like 10.0.0.53, 10.0.0.53:5353 or [2001:db8::53]:53, a host name, or 'system' for the host's "
    "configured resolvers"
)
#: how an `expect` entry is written, per type
_ANSWER_EXAMPLES = {
    dns.rdatatype.A: "an IPv4 address like 10.0.0.1",
    dns.rdatatype.AAAA: "an IPv6 address like 2001:db8::1",
    dns.rdatatype.CNAME: "a host name like web.example.com",
    dns.rdatatype.NS: "a host name like ns1.example.com",
    dns.rdatatype.PTR: "a host name like web.example.com",
    dns.rdatatype.MX: "a preference and a host like '10 mail.example.com'",
    dns.rdatatype.SRV: "priority, weight, port and target like '10 5 443 web.example.com'",
}
_HOST_NAME = re.compile(
    r"^(?=.{1,253}\.?$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?$"
)


def _templated(value: str) -> bool:
    """Holds a `{host}`-like template: checked once rendered for each machine, not before."""
    return "{" in value


def split_server(text: str) -> tuple[str, int | None]:
    """`10.0.0.53`, `10.0.0.53:5353`, `[2001:db8::53]:53`, `2001:db8::53` or a host name (with a port): the host
    and the port written, if any. ValueError naming what is accepted otherwise."""
    value = text.strip()
    host, port = value, ""
    if value.startswith("["):
        inside, bracket, rest = value[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            host = ""
        else:
            host, port = inside, rest[1:] if rest else ""
            if not _is_ip(host, 6):
                host = ""
    elif value.count(":") == 1:
        host, _, port = value.partition(":")
    elif ":" in value and not _is_ip(value, 6):
        host = ""
    numeric = host.replace(".", "").isdigit()  # 10.0.0 is a mistyped address, not a host name
    try:
        if not (_is_ip(host) or (_HOST_NAME.match(host) and not numeric)):
            raise ValueError(host)
        return host, port_number(port, "53") if port else None
    except ValueError:
        raise ValueError(f"expected {_SERVER_HINT}; got {text!r}") from None


def _is_ip(text: str, version: int | None = None) -> bool:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return False
    return version is None or address.version == version


@dataclass(frozen=True)
class _HeldResolver:
    stamp: tuple[int, int] | None  # the resolv.conf it was read from: modification time and size
    resolver: dns.asyncresolver.Resolver


#: FORMERR, SERVFAIL, NOTIMP, REFUSED: rcodes a server may send without echoing the question
_QUESTIONLESS_RCODES = frozenset({1, 2, 4, 5})


def dns_name(text: str) -> dns.name.Name:
    """`text` as a DNS name; ValueError saying why it is none (an empty label, a label over 63 characters)."""
    try:
        return dns.name.from_text(text.strip())
    except dns.exception.DNSException as exc:
        raise ValueError(f"{text!r} is not a DNS name ({exc}); write a name like www.example.com") from None


def parse_answer(rdtype: dns.rdatatype.RdataType, text: str) -> object:
    """An `expect` entry in the form compared with answers: TXT as its text, other types as parsed records
    (addresses by value, names without regard to case or to a final dot)."""
    if rdtype == dns.rdatatype.TXT:
        return text
    try:
        return dns.rdata.from_text(dns.rdataclass.IN, rdtype, text, origin=dns.name.root, relativize=False)
    except (dns.exception.DNSException, ValueError):
        example = _ANSWER_EXAMPLES.get(rdtype, "the record as a zone file writes it")
        name = dns.rdatatype.to_text(rdtype)
        raise ValueError(f"{text!r} is not a {name} answer: write {example}") from None


def _answer_key(rdtype: dns.rdatatype.RdataType, rdata: Any) -> object:
    return b"".join(rdata.strings).decode("utf-8", "replace") if rdtype == dns.rdatatype.TXT else rdata


def _show_answer(rdtype: dns.rdatatype.RdataType, rdata: Any) -> str:
    if rdtype == dns.rdatatype.TXT:
        return _show_text(b"".join(rdata.strings).decode("utf-8", "replace"))
    return str(rdata.to_text(origin=dns.name.root, relativize=True))


def _show_text(text: str) -> str:
    return '"' + (text if len(text) <= SHOWN_TEXT else text[: SHOWN_TEXT - 3] + "...") + '"'


def _show_list(items: list[str]) -> str:
    items = sorted(items)
    more = f" (+{len(items) - SHOWN} more)" if len(items) > SHOWN else ""
    return ", ".join(items[:SHOWN]) + more


def _took(seconds: float) -> str:
    """Response times as a reader wants them: 0.4ms, 12ms, 1.3s."""
    if seconds < 0.01:
        return f"{seconds * 1000:.1f}ms"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    return f"{seconds:.3g}s"


class DnsConfig(CheckOptions):
    #: the DNS server asked: the machine itself by default; an address, address:port, a host name or `system`
    server: str = "{host}"
    port: int | str = 53
    #: the name asked for (`name` is the check's own)
    query_name: str
    type: str = "A"
    #: the expected response code
    rcode: str = "NOERROR"
    #: the answers expected, all of them (none: any answer of the type will do)
    expect: tuple[str, ...] = ()
    #: Nagios ranges on the response time in seconds
    warning: str | None = None
    critical: str | None = None

    @field_validator("server")
    @classmethod
    def _server(cls, v: str) -> str:
        if not (_templated(v) or v == "system"):
            split_server(v)
        return v

    @field_validator("port", mode="before")
    @classmethod
    def _port(cls, v: object) -> int | str:
        return port_option(v, "53 or 5353")

    @field_validator("query_name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("query_name is empty: write the name to ask for, like www.example.com")
        if not _templated(v):
            dns_name(v)
        return v.strip()

    @field_validator("type", mode="before")
    @classmethod
    def _type(cls, v: object) -> str:
        text = str(v).strip().upper() if isinstance(v, str) else ""
        try:
            rdtype = dns.rdatatype.from_text(text)
        except (dns.exception.DNSException, ValueError):
            raise ValueError(f"expected {_TYPES_HINT}; got {v!r}") from None
        if dns.rdatatype.is_metatype(rdtype):
            raise ValueError(f"{text} is a query type, not a record type a check can compare; expected {_TYPES_HINT}")
        return dns.rdatatype.to_text(rdtype)

    @field_validator("rcode", mode="before")
    @classmethod
    def _rcode(cls, v: object) -> str:
        text = str(v).strip().upper() if isinstance(v, str) else ""
        try:
            return dns.rcode.to_text(dns.rcode.from_text(text))
        except (dns.exception.DNSException, ValueError):
            raise ValueError(f"expected {_RCODES_HINT}; got {v!r}") from None

    @field_validator("expect")
    @classmethod
    def _expect(cls, v: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        rcode, type_ = info.data.get("rcode"), info.data.get("type")
        if v and rcode is not None and rcode != "NOERROR":
            raise ValueError(f"an answer with rcode {rcode} holds no records: drop expect, or expect rcode NOERROR")
        if type_ is not None:
            rdtype = dns.rdatatype.from_text(type_)
            for entry in v:
                if not _templated(entry):
                    parse_answer(rdtype, entry)
        return v

    @field_validator("warning", "critical", mode="before")
    @classmethod
    def _range(cls, v: object) -> object:
        if isinstance(v, int | float) and not isinstance(v, bool):
            v = f"{v:g}"  # `warning: 0.5` as YAML writes it
        if isinstance(v, str):
            Range.parse(v)
        return v


#: what an answer means, before its response time is known: the status and the message
Verdict = tuple[Status, str]


class DnsCheck(Check[DnsConfig]):
    kind = "dns"
    Config = DnsConfig
    timeout_status = Status.CRITICAL
    uses_socket = True

    def __init__(self, config: DnsConfig, target: Target, *, env: CheckEnv) -> None:
        super().__init__(config, target, env=env)
        # The config was validated with its templates; what they became for this machine is checked here.
        port = port_number(config.port, "53 or 5353")
        self._qname = dns_name(config.query_name)  # as rendered for this machine
        self._rdtype = dns.rdatatype.from_text(config.type)
        self._rcode = dns.rcode.from_text(config.rcode)
        self._expected = frozenset(parse_answer(self._rdtype, entry) for entry in config.expect)
        self._shown_expected = _show_list(
            [_show_text(e) if self._rdtype == dns.rdatatype.TXT else e for e in config.expect]
        )
        self._name = self._qname.to_text(omit_final_dot=True)
        self._asked = f"{self._name} {config.type}"
        self._warning = Range.parse(config.warning) if config.warning else None
        self._critical = Range.parse(config.critical) if config.critical else None
        # The query's wire form, made once: a run only puts a fresh id in front of it.
        wire = self._new_query().to_wire()
        self._tail = wire[2:]
        question_end = 12 + len(self._qname.to_digestable()) + 4
        self._question_name = wire[12 : question_end - 4].lower()
        self._question_rest = wire[question_end - 4 : question_end]
        self._system = config.server == "system"
        self._port = port
        self._host = ""
        self._address: tuple[int, tuple[Any, ...]] | None = None
        self._address_until = 0.0
        self._where = "the system resolvers"
        if not self._system:
            self._host, written_port = split_server(config.server)
            self._port = written_port or port
            self._where = _address(self._host, self._port)
            if _is_ip(self._host):
                family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
                self._address = (family, (self._host, self._port))
                self._address_until = math.inf
        #: the last UDP answer (without its id and TTLs) and what it meant: an answer that did not change is not
        #: parsed again (a resolver's answers differ only in TTLs counting down)
        self._last: tuple[bytes, Verdict] | None = None

    @classmethod
    def preflight(cls, options: CheckOptions, env: CheckEnv) -> list[tuple[tuple[str | int, ...], str]]:
        if not isinstance(options, DnsConfig) or options.server != "system":
            return []
        try:
            dns.resolver.Resolver(filename=RESOLV_CONF)
        except (dns.exception.DNSException, OSError) as exc:
            return [
                (
                    ("server",),
                    f"server: system asks the nameservers listed in {RESOLV_CONF}, but {_no_resolvers(exc)}; list "
                    "one there, or name the server to ask (server: 10.0.0.53)",
                )
            ]
        return []

    async def run(self) -> CheckResult:
        if self._system:
            return await self._run_system()
        started = time.perf_counter()
        try:
            address = self._address if time.monotonic() < self._address_until else await self._look_up_server()
            assert address is not None
            data = await self._ask_udp(*address)
            if data[2] & 0x02:  # truncated: the whole answer comes over TCP
                verdict = self._judge(await self._ask_tcp(address[1][0]), self._where)
            else:
                key = _without_ttls(data)
                if self._last is not None and self._last[0] == key:
                    verdict = self._last[1]
                else:
                    verdict = self._judge(dns.message.from_wire(data), self._where)
                    self._last = (key, verdict)
        except OSError as exc:
            return CheckResult.critical(f"{self._asked} to {self._where}: {describe(exc)}")
        except dns.exception.DNSException as exc:
            return CheckResult.critical(f"{self._where} sent an answer that cannot be read ({exc})")
        return self._result(verdict, time.perf_counter() - started)

    async def _look_up_server(self) -> tuple[int, tuple[Any, ...]]:
        """The address of a server given by name (kept for a minute)."""
        infos = await asyncio.get_running_loop().getaddrinfo(self._host, self._port, type=socket.SOCK_DGRAM)
        family, _, _, _, sockaddr = infos[0]
        self._address, self._address_until = (family, sockaddr), time.monotonic() + SERVER_ADDRESS_TTL
        return self._address

    async def _ask_udp(self, family: int, sockaddr: tuple[Any, ...]) -> bytes:
        """The server's answer to the query sent from a fresh port. The socket is connected: the kernel drops
        datagrams from any other source, and reports an ICMP 'port unreachable' as a refused connection."""
        loop = asyncio.get_running_loop()
        query_id = os.urandom(2)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(sockaddr)
            sock.send(query_id + self._tail)
            answer: asyncio.Future[bytes] = loop.create_future()
            fd = sock.fileno()
            loop.add_reader(fd, self._receive, sock, query_id, answer)
            try:
                return await answer
            finally:
                loop.remove_reader(fd)
        finally:
            sock.close()

    def _receive(self, sock: socket.socket, query_id: bytes, answer: asyncio.Future[bytes]) -> None:
        while not answer.done():
            try:
                data = sock.recv(65535)
            except BlockingIOError:
                return
            except OSError as exc:
                answer.set_exception(exc)
                return
            if data[:2] == query_id and self._answers_question(data):
                answer.set_result(data)
            # anything else (a late answer to an earlier query, a forged one) is not this query's answer

    def _answers_question(self, data: bytes) -> bool:
        """A response (QR set, standard query) to exactly our one question; or a refusal without the question,
        as some servers send FORMERR, SERVFAIL, NOTIMP and REFUSED (dnspython takes these as answers too)."""
        if len(data) < 12 or data[2] & 0xF8 != 0x80:
            return False
        if data[4:6] == b"\x00\x00":
            return data[3] & 0x0F in _QUESTIONLESS_RCODES
        end = 12 + len(self._question_name)
        return (
            len(data) >= end + 4
            and data[4:6] == b"\x00\x01"
            and data[12:end].lower() == self._question_name
            and data[end : end + 4] == self._question_rest
        )

    async def _ask_tcp(self, where: str) -> dns.message.Message:
        # only after a truncated answer: a query of its own, with a fresh random id
        return await dns.asyncquery.tcp(self._new_query(), where, port=self._port)

    def _new_query(self) -> dns.message.Message:
        return dns.message.make_query(self._qname, self._rdtype, use_edns=0, payload=UDP_PAYLOAD)

    async def _run_system(self) -> CheckResult:
        started = time.perf_counter()
        try:
            resolver = self._system_resolver()
        except (dns.exception.DNSException, OSError) as exc:
            return CheckResult.unknown(f"cannot ask the system resolvers: {_no_resolvers(exc)}")
        # Stop waiting a little before the run's timeout, to say which resolvers were asked.
        left = self.time_left()
        deadline = asyncio.get_running_loop().time() + left * 0.95 if math.isfinite(left) else None
        try:
            async with asyncio.timeout_at(deadline):
                answer = await resolver.resolve(
                    self._qname, self._rdtype, raise_on_no_answer=False, lifetime=left * 0.95 if deadline else None
                )
            response, where = answer.response, _address(answer.nameserver or "?", answer.port or self._port)
        except dns.resolver.NXDOMAIN as exc:
            response, where = exc.response(self._qname), self._where  # type: ignore[no-untyped-call]
        except dns.resolver.NoNameservers as exc:
            errors = exc.kwargs.get("errors") or []
            answered = [e for e in errors if len(e) > 4 and e[4] is not None]
            if not answered:
                said = "; ".join(f"{_nameserver(e[0], e[2])} {_said(e[3])}" for e in errors) or "none is listed"
                return CheckResult.critical(f"{self._asked}: no system resolver answered ({said})")
            response, where = answered[-1][4], _nameserver(answered[-1][0], answered[-1][2])
        except (TimeoutError, dns.resolver.LifetimeTimeout):
            asked = ", ".join(_nameserver(ns, resolver.port) for ns in resolver.nameservers)
            took = _took(time.perf_counter() - started)
            return CheckResult.critical(f"{self._asked}: no answer from the system resolvers ({asked}) within {took}")
        except dns.exception.DNSException as exc:
            return CheckResult.critical(f"{self._asked} to {self._where}: {exc}")
        return self._result(self._judge(response, where), time.perf_counter() - started)

    def _system_resolver(self) -> dns.asyncresolver.Resolver:
        """The host's resolvers for every check that asks them on this port, read again once the file changed."""
        try:
            stat = os.stat(RESOLV_CONF)
            stamp: tuple[int, int] | None = (stat.st_mtime_ns, stat.st_size)
        except OSError:
            stamp = None
        key = ("dns", "system", self._port)
        held = self.env.shared.get(key)
        if isinstance(held, _HeldResolver) and held.stamp == stamp:
            return held.resolver
        resolver = dns.asyncresolver.Resolver(filename=RESOLV_CONF)
        resolver.port = self._port
        self.env.shared[key] = _HeldResolver(stamp, resolver)
        return resolver

    def _judge(self, response: dns.message.Message, where: str) -> Verdict:
        rcode = response.rcode()
        records = [
            rdata
            for rrset in response.answer
            if rrset.rdtype == self._rdtype and rrset.rdclass == dns.rdataclass.IN
            for rdata in rrset
        ]
        got = _show_list([_show_answer(self._rdtype, r) for r in records])
        if rcode != self._rcode:
            return Status.CRITICAL, self._wrong_rcode(rcode, got, where)
        if rcode != dns.rcode.NOERROR:
            return Status.OK, f"{self._name} {dns.rcode.to_text(rcode)} from {where}"
        if not records:
            held = _show_list(
                [f"{dns.rdatatype.to_text(s.rdtype)} {_show_answer(s.rdtype, r)}" for s in response.answer for r in s]
            )
            return Status.CRITICAL, f"no {self.config.type} record for {self._name} on {where}" + (
                f" (the answer holds {held})" if held else ""
            )
        if self._expected and frozenset(_answer_key(self._rdtype, r) for r in records) != self._expected:
            return Status.CRITICAL, f"{self._asked} from {where}: got {got}, expected {self._shown_expected}"
        return Status.OK, f"{self._asked} {got} from {where}"

    def _wrong_rcode(self, rcode: dns.rcode.Rcode, got: str, where: str) -> str:
        if rcode == dns.rcode.NXDOMAIN:
            return f"NXDOMAIN: {self._name} does not exist on {where}"
        if rcode == dns.rcode.NOERROR:
            found = f"{self.config.type} {got}" if got else f"NOERROR, no {self.config.type} record"
            return f"{self._name} exists on {where} ({found}); expected {self.config.rcode}"
        why = {
            dns.rcode.SERVFAIL: " (the server failed to resolve it)",
            dns.rcode.REFUSED: " (the server refuses to answer it)",
        }
        said = f"{dns.rcode.to_text(rcode)} from {where} for {self._asked}{why.get(rcode, '')}"
        return f"{said}; expected {self.config.rcode}"

    def _result(self, verdict: Verdict, elapsed: float) -> CheckResult:
        status, message = verdict
        perf = (PerfDatum("time", round(elapsed, 6), "s", self.config.warning, self.config.critical, 0.0),)
        if status is not Status.OK:
            return CheckResult(status, message, perf)
        for level, rng in ((Status.CRITICAL, self._critical), (Status.WARNING, self._warning)):
            if rng is not None and rng.alerts(elapsed):
                return CheckResult(level, f"{message} in {_took(elapsed)} (outside {rng.text}s)", perf)
        return CheckResult(Status.OK, f"{message} in {_took(elapsed)}", perf)


def _without_ttls(data: bytes) -> bytes:
    """The answer without its id and with every record's TTL zeroed (but OPT's, which holds flags and the
    extended rcode): equal for answers that mean the same. The whole answer if it cannot be walked."""
    key = bytearray(data)
    key[0:2] = b"\x00\x00"
    records = sum(int.from_bytes(data[i : i + 2], "big") for i in (6, 8, 10))
    try:
        at = _skip_name(data, 12) + 4  # the one question
        for _ in range(records):
            at = _skip_name(data, at)
            if data[at : at + 2] != b"\x00\x29":  # OPT
                key[at + 4 : at + 8] = b"\x00\x00\x00\x00"
            at += 10 + int.from_bytes(data[at + 8 : at + 10], "big")
    except IndexError:
        return data
    return bytes(key) if at == len(data) else data


def _skip_name(data: bytes, at: int) -> int:
    """Where the (possibly compressed) name at `at` ends."""
    while True:
        length = data[at]
        if length == 0:
            return at + 1
        if length >= 0xC0:
            return at + 2
        at += length + 1


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _nameserver(ns: str | dns.nameserver.Nameserver, port: int) -> str:
    """How a resolver is named in messages: its address and port (dnspython writes `Do53:10.0.0.53@53`)."""
    if isinstance(ns, dns.nameserver.Nameserver):
        return _address(ns.answer_nameserver(), ns.answer_port())
    if ns.startswith("Do53:"):
        ns = ns[5:].rpartition("@")[0] or ns[5:]
    return _address(ns, port)


def _said(error: object) -> str:
    return describe(error) if isinstance(error, BaseException) else str(error)


def _no_resolvers(exc: BaseException) -> str:
    if isinstance(exc, dns.resolver.NoResolverConfiguration):
        return "none is listed there"
    return describe(exc) if isinstance(exc, OSError) else str(exc)
