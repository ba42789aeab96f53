"""`icmp` check: does the machine answer ping, how often and how fast. `count` echo requests per run; the loss
(percent) and the average round trip (milliseconds) are judged with Nagios ranges, as check_icmp does."""

from __future__ import annotations

import asyncio
import ipaddress
import math
import socket

from pydantic import field_validator

from ..results import CheckResult, PerfDatum, Status
from ..targets import Target
from ._echo import EchoSocket, NoPrivilege, Probe, open_socket
from .base import Check, CheckEnv, CheckOptions
from .nagios import Range

#: the spacing of a run's echo requests (narrowed when the timeout leaves less room)
INTERVAL = 0.05
#: without a timeout to go by (a run outside the runner), how long replies are waited for after the last request
DEFAULT_WAIT = 1.0

SockAddr = tuple[str, int] | tuple[str, int, int, int]


class Thresholds(CheckOptions):
    """A warning and a critical Nagios range; either may be left out."""

    warning: str | None = None
    critical: str | None = None

    @field_validator("warning", "critical", mode="before")
    @classmethod
    def _range(cls, v: object) -> str | None:
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            raise ValueError(f"expected a Nagios range like 200, 10:, ~:10, 10:20 or @10:20, got {v!r}")
        Range.parse(str(v))
        return str(v)


def _thresholds(v: object) -> object:
    """A bare range (string or number) is the critical one; a mapping gives `warning` and `critical`."""
    if isinstance(v, str | int | float) and not isinstance(v, bool):
        return {"critical": str(v)}
    return v


class IcmpConfig(CheckOptions):
    host: str = "{host}"
    #: echo requests per run
    count: int = 3
    #: the percentage of requests without a reply
    loss: Thresholds = Thresholds(warning="40", critical="80")
    #: the average round trip, in milliseconds
    rtt: Thresholds = Thresholds(warning="200", critical="500")

    @field_validator("count", mode="before")
    @classmethod
    def _count(cls, v: object) -> object:
        if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 100:
            raise ValueError(f"count is the number of echo requests per run, from 1 to 100; got {v!r}")
        return v

    @field_validator("loss", "rtt", mode="before")
    @classmethod
    def _ranges(cls, v: object) -> object:
        return _thresholds(v)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("host is empty: give an address or a name to ping, or leave the default '{host}'")
        return v


class IcmpCheck(Check[IcmpConfig]):
    kind = "icmp"
    Config = IcmpConfig
    timeout_status = Status.CRITICAL
    uses_socket = True

    def __init__(self, config: IcmpConfig, target: Target, *, env: CheckEnv) -> None:
        super().__init__(config, target, env=env)
        self._host = config.host.strip().strip("[]")
        self._address: tuple[socket.AddressFamily, SockAddr] | None = _literal(self._host)
        self._ranges = {
            name: (_parse(t.warning), _parse(t.critical)) for name, t in (("loss", config.loss), ("rtt", config.rtt))
        }
        self._perf_ranges = {name: (t.warning, t.critical) for name, t in (("loss", config.loss), ("rtt", config.rtt))}

    async def run(self) -> CheckResult:
        address = self._address or await self._resolve()
        if isinstance(address, CheckResult):
            return address
        family, sockaddr = address
        try:
            sock = self.env.echo_socket(family)
        except NoPrivilege as exc:
            return CheckResult.unknown(str(exc))
        probe = await self._ping(sock, sockaddr)
        return self._judge(probe)

    async def _ping(self, sock: EchoSocket, sockaddr: SockAddr) -> Probe:
        loop = sock.loop
        count = self.config.count
        left = self.time_left()
        if math.isfinite(left):
            # stop waiting a little before the runner's timeout, to report the loss rather than a bare timeout
            wait = max(left - min(0.05, left * 0.1), 0.0)
            interval = min(INTERVAL, wait / (2 * count))
        else:
            interval = INTERVAL
            wait = interval * (count - 1) + DEFAULT_WAIT
        waiter: asyncio.Future[None] = loop.create_future()
        probe = Probe(sockaddr, count, waiter=waiter)
        sock.send(probe, 0)
        later = [loop.call_later(interval * i, sock.send, probe, i) for i in range(1, count)]
        timer = loop.call_later(wait, _wake, waiter)
        try:
            await waiter
        finally:
            timer.cancel()
            for handle in later:
                handle.cancel()
            sock.forget(probe)
        return probe

    async def _resolve(self) -> tuple[socket.AddressFamily, SockAddr] | CheckResult:
        try:
            found = await asyncio.get_running_loop().getaddrinfo(self._host, None, type=socket.SOCK_RAW)
        except socket.gaierror as exc:
            return CheckResult.critical(f"{self._host}: DNS lookup failed: {exc.strerror or exc}")
        for family, _, _, _, sockaddr in found:
            if family in (socket.AF_INET, socket.AF_INET6):
                return socket.AddressFamily(family), sockaddr  # type: ignore[return-value]
        return CheckResult.critical(f"{self._host}: the name has no IPv4 or IPv6 address")

    def _judge(self, probe: Probe) -> CheckResult:
        count = self.config.count
        got = len(probe.rtts)
        loss = round(100 * (count - got) / count, 1)
        (lw, lc), (rw, rc) = self._perf_ranges["loss"], self._perf_ranges["rtt"]
        pl = PerfDatum("pl", loss, "%", lw, lc, 0, 100)
        errors = _errors(probe.errors)
        if not got:
            why = f": {errors}" if errors else ""
            return CheckResult.critical(
                f"{self._host}: 100% loss (0 of {count} replies){why}",
                (PerfDatum("rta", None, "ms", rw, rc, 0), pl),
            )
        rta = sum(probe.rtts) / got * 1000
        rtmax, rtmin = max(probe.rtts) * 1000, min(probe.rtts) * 1000
        metrics = (
            PerfDatum("rta", round(rta, 3), "ms", rw, rc, 0),
            pl,
            PerfDatum("rtmax", round(rtmax, 3), "ms"),
            PerfDatum("rtmin", round(rtmin, 3), "ms"),
        )
        figures = f"{got} of {count} replies, rta {_ms(rta)}ms, max {_ms(rtmax)}ms"
        if errors:
            figures += f"; {errors}"
        status, alerts = Status.OK, []
        for name, value, shown, unit in (
            ("loss", loss, f"{loss:g}% loss", "%"),
            ("rtt", rta, f"rta {_ms(rta)}ms", "ms"),
        ):
            warning, critical = self._ranges[name]
            for level, rng in ((Status.CRITICAL, critical), (Status.WARNING, warning)):
                if rng is not None and rng.alerts(value):
                    alerts.append(f"{shown} ({level.name.lower()}: {_outside(rng, unit)})")
                    status = Status.worst([status, level])
                    break
        if alerts:
            return CheckResult(status, f"{self._host}: {', '.join(alerts)}; {figures}", metrics)
        return CheckResult(Status.OK, f"{self._host}: {figures}", metrics)

    @classmethod
    def preflight(cls, options: CheckOptions, env: CheckEnv) -> list[tuple[tuple[str | int, ...], str]]:
        assert isinstance(options, IcmpConfig)
        literal = _literal(options.host.strip().strip("[]"))
        try:
            sock, _ = open_socket(literal[0] if literal else socket.AF_INET)
        except NoPrivilege as exc:
            return [((), str(exc))]
        sock.close()
        return []


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _literal(host: str) -> tuple[socket.AddressFamily, SockAddr] | None:
    """The socket address of an IP literal (worked out once per machine), None for a name to look up."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None
    if ip.version == 4:
        return socket.AF_INET, (str(ip), 0)
    if "%" in host:  # a link-local address with its interface
        found = socket.getaddrinfo(host, None, socket.AF_INET6, socket.SOCK_RAW)
        return socket.AF_INET6, found[0][4]  # type: ignore[return-value]
    return socket.AF_INET6, (str(ip), 0, 0, 0)


def _parse(text: str | None) -> Range | None:
    return Range.parse(text) if text is not None else None


def _ms(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _outside(rng: Range, unit: str) -> str:
    """What a range alerts on, in words: `200` alerts above 200, `10:` below 10."""
    if not rng.inside and rng.low <= 0 and math.isfinite(rng.high):
        return f"above {rng.high:g}{unit}"
    if not rng.inside and not math.isfinite(rng.high):
        return f"below {rng.low:g}{unit}"
    return f"{'inside' if rng.inside else 'outside'} {rng.text}"


def _errors(errors: list[str]) -> str:
    """The errors that came back instead of replies, each once with how often."""
    counted: dict[str, int] = {}
    for text in errors:
        counted[text] = counted.get(text, 0) + 1
    return ", ".join(text if n == 1 else f"{text} (x{n})" for text, n in counted.items())
