"""Confirmation from several vantage points: before a machine is quarantined, the leader has `confirm_from`
distinct nodes (its owner first, then the next by rendezvous rank) run the machine's checks now. Fewer than
that seeing it down holds the remediation back as `unconfirmed`: the monitor's own network is the usual
false positive, and one node cut off from the fleet must not replace it.

A node that does not answer counts as not confirming: silence is never taken for agreement.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import structlog

from ..monitor import Monitor
from ..results import Status
from ..runner import run_check
from ..store.lease import Member
from .shard import ranked

#: seconds a probe's connection is kept alive: well before the other node's API closes an idle connection
#: (its header timeout, 10 s), so that a probe never goes out on a connection being closed under it
KEEPALIVE = 5.0

log = structlog.get_logger("healerd.cluster")

#: how long a node stays "the odd one out" for a machine after the confirmation that found it so
DISPUTE_KEPT = 60.0
#: results that count as "down" from a vantage point
DOWN = frozenset({Status.CRITICAL, Status.UNKNOWN})


@dataclass(frozen=True)
class Vantage:
    """What one node saw of the machine."""

    node: str
    down: bool | None  # None: it did not answer
    detail: str


@dataclass(frozen=True)
class Verdict:
    confirmed: bool
    need: int
    seen: tuple[Vantage, ...] = field(default=())
    capped: str = ""  # why fewer nodes than configured were asked

    @property
    def odd_one_out(self) -> str | None:
        """The machine's checker, when it alone sees it down and every other vantage point answered up."""
        if len(self.seen) > 1 and self.seen[0].down and all(v.down is False for v in self.seen[1:]):
            return self.seen[0].node
        return None

    @property
    def detail(self) -> str:
        down = sum(1 for v in self.seen if v.down)
        views = "; ".join(f"{v.node}: {v.detail}" for v in self.seen)
        text = f"{down} of {len(self.seen)} vantage point(s) see it down, {self.need} needed ({views})"
        if self.odd_one_out:
            text += f"; {self.odd_one_out} is the odd one out: its own network or checks are more likely at fault"
        return f"{text}; {self.capped}" if self.capped else text


@dataclass(frozen=True)
class ZoneWord:
    """What the nodes outside a zone saw of its machines: only their word counts (a node inside the zone,
    or cut off with it, sees what the zone sees)."""

    zone: str
    confirmed: bool
    need: int
    seen: tuple[Vantage, ...] = field(default=())

    @property
    def detail(self) -> str:
        down = sum(1 for v in self.seen if v.down)
        views = "; ".join(f"{v.node}: {v.detail}" for v in self.seen)
        return f"{down} node(s) outside zone {self.zone} see it down, {self.need} needed ({views})"


async def probe(monitor: Monitor, service: str, machine: str) -> dict[str, Any]:
    """Run the machine's checks now, from this node, outside their schedule (and outside its health)."""
    checks = [bc for key, bc in monitor.checks.items() if key.service == service and key.machine == machine]
    if not checks:
        return {"down": None, "detail": f"{service}/{machine} has no checks here", "checks": []}
    results = await asyncio.gather(*(run_check(bc.check, bc.spec.timeout, bc.spec.timeout_status) for bc in checks))
    rows = [
        {"check": bc.key.check, "status": r.status.name, "message": r.message[:200]}
        for bc, r in zip(checks, results, strict=True)
    ]
    failing = [row for row, r in zip(rows, results, strict=True) if r.status in DOWN]
    detail = "; ".join(f"{f['check']} {f['status']}" for f in failing) if failing else "all checks OK"
    return {"down": bool(failing), "detail": detail, "checks": rows}


class Confirmer:
    def __init__(
        self,
        node: str,
        monitor: Monitor,
        *,
        members: Callable[[], Sequence[Member]],
        need: int,
        token: Callable[[], str | None],
        scheme: str,
        zone: str = "",
    ) -> None:
        self.node = node
        self.zone = zone  # this node's own zone: its word on that zone does not count
        self.monitor = monitor
        self.members = members
        self.need = need
        self.token = token
        self.scheme = scheme
        self._session: aiohttp.ClientSession | None = None
        self._disputes: dict[str, dict[str, float]] = {}  # node -> {service/machine: kept until (monotonic)}

    def effective(self) -> tuple[int, str]:
        """How many vantage points are needed now, and why fewer than configured (capped by live nodes)."""
        live = len(self.members())
        if live >= self.need:
            return self.need, ""
        n = max(1, live)
        return n, f"confirm_from {self.need} capped at {n}: only {live} live node(s)"

    async def confirm(self, service: str, machine: str, timeout: float) -> Verdict:
        need, capped = self.effective()
        members = {m.node: m for m in self.members()}
        asked = ranked(f"{service}\x00{machine}", members)[:need]  # the owner first
        seen = await asyncio.gather(*(self._ask(members.get(n), n, service, machine, timeout) for n in asked))
        confirmed = sum(1 for v in seen if v.down) >= need
        verdict = Verdict(confirmed, need, tuple(seen), capped)
        key = f"{service}/{machine}"
        for held in self._disputes.values():
            held.pop(key, None)
        if verdict.odd_one_out:
            self._disputes.setdefault(verdict.odd_one_out, {})[key] = time.monotonic() + DISPUTE_KEPT
        return verdict

    async def confirm_zone(
        self, service: str, zone: str, machines: Sequence[str], down: int, timeout: float
    ) -> ZoneWord:
        """Every live node runs the checks of the zone's `machines` now; the zone is confirmed down when
        `confirm_from` nodes outside it (capped by those there are; at least one) see `down` of them down."""
        ids = list(machines)
        members = {m.node: m for m in self.members()}
        words = await asyncio.gather(*(self._zone_probe(members[n], service, machines, timeout) for n in members))
        outside = [(node, z, n) for node, z, n in words if z != zone]
        need = max(1, min(self.need, len(outside)))
        seen = tuple(
            Vantage(node, None, "did not answer") if n is None else Vantage(node, n >= down, f"{n} of {len(ids)} down")
            for node, _, n in outside
        )
        inside = [node for node, z, _ in words if z == zone]
        if inside:
            seen += tuple(Vantage(node, None, f"in zone {zone}: not counted") for node in inside)
        return ZoneWord(zone, sum(1 for v in seen if v.down) >= need, need, seen)

    async def _zone_probe(
        self, member: Member, service: str, machines: Sequence[str], timeout: float
    ) -> tuple[str, str | None, int | None]:
        """(node, its zone, how many of `machines` it sees down); the zone and count are None when it is silent."""
        if member.node == self.node:
            answers = await asyncio.gather(*(probe(self.monitor, service, m) for m in machines))
            return member.node, self.zone, sum(1 for a in answers if a["down"])
        body = await self._post(member, {"service": service, "machines": list(machines)}, timeout)
        if not isinstance(body, dict) or not isinstance(body.get("machines"), dict):
            return member.node, None, None
        zone = body.get("zone")
        down = sum(1 for a in body["machines"].values() if isinstance(a, dict) and a.get("down") is True)
        return member.node, zone if isinstance(zone, str) else "", down

    def disputed(self) -> dict[str, int]:
        """Per live node: machines it alone saw down at their last confirmation (within DISPUTE_KEPT)."""
        now = time.monotonic()
        out = {}
        for m in self.members():
            held = self._disputes.get(m.node, {})
            for key in [k for k, until in held.items() if until < now]:
                del held[key]
            out[m.node] = len(held)
        return out

    async def _ask(self, member: Member | None, node: str, service: str, machine: str, timeout: float) -> Vantage:
        if node == self.node:
            answer = await probe(self.monitor, service, machine)
            return Vantage(node, answer["down"], str(answer["detail"]))
        if member is None:
            return Vantage(node, None, "not a live node")
        body = await self._post(member, {"service": service, "machine": machine}, timeout)
        if isinstance(body, str):
            return Vantage(node, None, body)
        down = body.get("down") if isinstance(body, dict) else None
        return Vantage(node, down if isinstance(down, bool) else None, str(body.get("detail", ""))[:200])

    async def _post(self, member: Member, request: dict[str, Any], timeout: float) -> Any:
        """Another node's probe answer, or why there is none (a string)."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(keepalive_timeout=KEEPALIVE)
            self._session = aiohttp.ClientSession(headers={"User-Agent": "healerd"}, connector=connector)
        token = self.token()
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = f"{self.scheme}://{member.advertise}/api/v1/cluster/probe"
        try:
            async with self._session.post(
                url, json=request, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                body = await resp.json(content_type=None)
                if resp.status != 200:
                    return f"answered HTTP {resp.status}: {str(body)[:120]}"
                return body
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return f"did not answer ({type(exc).__name__}: {exc})"[:200]

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
