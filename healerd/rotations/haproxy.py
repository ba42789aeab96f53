"""The `haproxy` rotation (docs/haproxy.md): machines in and out of an HAProxy backend through its runtime API.

Server names in the backend are machine ids. Remove = `drain`, wait until the server's current sessions
reach 0 (at most `drain_timeout`), then `maint`. Add = a dynamic server (`add server`, HAProxy 2.6) or a
free pre-declared slot (`server_template` prefix) re-pointed with `set server … addr`, then `enable health`
and `state ready`; done only once HAProxy reports it ready. HAProxy forgets runtime changes on reload:
`reconcile` compares `show servers state` with healerd's rotation and re-applies what is missing. A world
error during add or remove (HAProxy unreachable, silent, restarting) is retried with backoff for `retry_for`.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import structlog
from pydantic import Field, field_validator

from ..durations import parse_duration
from ..machines import Machine, address_problem
from ..paths import resolve_path
from .base import Rotation, RotationOptions
from .haproxy_api import HaproxyError, RuntimeApi, ServerState

log = structlog.get_logger("healerd.remediation")

DRAIN_POLL = 0.2
CONFIG_MAINT = 0x04  # `disabled` in the config: HAProxy cannot enable it at run time
#: the first wait before a failed call is tried again, doubled each time up to RETRY_MAX
RETRY_FIRST = 0.5
RETRY_MAX = 5.0
#: the longest path of a Unix socket (sun_path holds 108 bytes with the closing NUL)
UNIX_PATH_MAX = 107
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
SOCKET_FIX = (
    "write the path of HAProxy's Unix stats socket (e.g. /run/haproxy/admin.sock; a relative path is "
    "taken from the config file's folder) or host:port of its TCP stats socket (e.g. 127.0.0.1:9999)"
)


def socket_option(v: str) -> str:
    """The stats socket as the runtime API client will open it: an absolute Unix socket path (a relative one
    resolved against the config's folder, as every path of the config), or host:port with a port 1-65535."""
    if _CONTROL.search(v):
        raise ValueError(f"{v!r} has a control character (a line break, a tab); {SOCKET_FIX}")
    if "/" in v or ":" not in v:
        path = str(resolve_path(Path(v)))
        if len(path.encode()) > UNIX_PATH_MAX:
            raise ValueError(
                f"{path[:60]}... is {len(path.encode())} bytes long, and a Unix socket path can be at most "
                f"{UNIX_PATH_MAX}: move HAProxy's stats socket to a shorter path (e.g. /run/haproxy/admin.sock)"
            )
        return path
    problem = address_problem(v)
    if problem is not None:
        raise ValueError(f"{v!r}: {problem.split('; write host:port')[0]}; {SOCKET_FIX}")
    return v


class HaproxyOptions(RotationOptions):
    #: the stats socket: a Unix socket path, or host:port of a TCP stats socket (`level admin`)
    socket: str = Field(min_length=1, max_length=4096)
    backend: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")
    #: how long a removed server may keep its current sessions before it goes to maint anyway
    drain_timeout: float = 30.0
    #: pre-declared servers to re-point (`server-template web 10 …` declares web1 … web10); none: add servers
    server_template: str | None = Field(default=None, max_length=200, pattern=r"^[A-Za-z0-9._-]+$")
    #: what a dynamic server is added with (it does not inherit `default-server`)
    server_options: str = Field(default="check", max_length=1000)
    #: every runtime API call gives up after this long
    timeout: float = 5.0
    #: an added server must be up by HAProxy's own health check within this long
    ready_timeout: float = 30.0
    #: an add or a remove that cannot reach HAProxy (a reload, a restart) is tried again for this long
    retry_for: float = 30.0

    @field_validator("drain_timeout", "timeout", "ready_timeout", "retry_for", mode="before")
    @classmethod
    def _durations(cls, v: object) -> float:
        return parse_duration(v, at_most=3600.0)

    @field_validator("timeout", "ready_timeout")
    @classmethod
    def _positive(cls, v: float) -> float:
        if v <= 0:
            raise ValueError(
                f"got {v:g}s: it must be more than 0s, or healerd would give up on HAProxy at once; write e.g. 5s"
            )
        return v

    @field_validator("socket")
    @classmethod
    def _socket(cls, v: str) -> str:
        return socket_option(v)

    @field_validator("server_options")
    @classmethod
    def _server_options(cls, v: str) -> str:
        bad = sorted({c for c in v if c == ";" or _CONTROL.match(c)})
        if bad:
            shown = v if len(v) <= 80 else v[:77] + "..."
            raise ValueError(
                f"{shown!r} has {' and '.join(repr(c) for c in bad)}: HAProxy's runtime API would take that as the "
                "end of the `add server` command and run what follows as another command; write the server "
                'options on one line, separated by spaces, e.g. "check inter 2s"'
            )
        return v


def _split(machine: Machine) -> tuple[str, int]:
    """The machine's host and port as HAProxy's commands take them; only an IP address or a host name is
    ever written into a command."""
    host, _, port = machine.address.rpartition(":")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if address_problem(machine.address) is not None:
        raise HaproxyError(
            f"{machine.id}'s address {machine.address!r} is not host:port with an IP address or a host name: "
            "it is not written into HAProxy's commands; fix the machine's address"
        )
    return bare, int(port)


class HaproxyRotation(Rotation):
    kind = "haproxy"
    Config = HaproxyOptions
    reconciles = True

    def __init__(self, service: str, options: Any, *, state_dir: Path, provider: Any = None) -> None:
        super().__init__(service, options, state_dir=state_dir, provider=provider)
        self.api = RuntimeApi(self.opts.socket, self.opts.timeout)

    async def _retrying(self, what: str, call: Callable[[], Awaitable[None]]) -> None:
        """`call` (an add or a remove, which checks the world first: safe to run again), tried again with
        backoff while HAProxy cannot be reached, for at most `retry_for` from the first failure (a long drain
        before it does not use the time up); HAProxy's own refusals are not retried."""
        failing_since: float | None = None
        delay, attempts = RETRY_FIRST, 1
        while True:
            try:
                await call()
            except HaproxyError as exc:
                now = time.monotonic()
                failing_since = now if failing_since is None else failing_since
                spent = now - failing_since
                if not exc.transient or spent + delay > self.opts.retry_for:
                    if attempts == 1:
                        raise
                    raise HaproxyError(f"{exc} (tried {attempts} times in {spent:.1f}s)", exc.transient) from None
                if attempts == 1:
                    log.warning(
                        "HAProxy failed; retried with backoff", doing=what, error=str(exc), for_s=self.opts.retry_for
                    )
            else:
                if attempts > 1:
                    log.info("HAProxy answered again", doing=what, attempts=attempts)
                return
            await asyncio.sleep(delay)
            delay, attempts = min(RETRY_MAX, delay * 2), attempts + 1

    @property
    def opts(self) -> HaproxyOptions:
        assert isinstance(self.options, HaproxyOptions)
        return self.options

    def _path(self, server: str) -> str:
        return f"{self.opts.backend}/{server}"

    def _find(self, servers: dict[str, ServerState], machine: Machine) -> ServerState | None:
        """The machine's server: by name (its id), or in slot mode by address."""
        if machine.id in servers:
            return servers[machine.id]
        if self.opts.server_template:
            for s in servers.values():
                if s.name.startswith(self.opts.server_template) and s.address == machine.address:
                    return s
        return None

    # -- add ----------------------------------------------------------------------------------------------
    async def add(self, machine: Machine) -> None:
        await self._retrying(f"adding {machine.id}", lambda: self._add(machine))

    async def _add(self, machine: Machine) -> None:
        servers = await self.api.servers(self.opts.backend)
        host, port = _split(machine)
        found = self._find(servers, machine)
        if found is None and self.opts.server_template:
            found = self._free_slot(servers)
            if found is None:
                raise HaproxyError(
                    f"no free {self.opts.server_template}* slot in backend {self.opts.backend} for {machine.id}: "
                    "declare more with server-template, or drop server_template to add servers"
                )
        if found is None:
            await self.api.change(f"add server {self._path(machine.id)} {host}:{port} {self.opts.server_options}")
            name = machine.id
        else:
            name = found.name
            if found.address != machine.address:
                await self.api.change(f"set server {self._path(name)} addr {host} port {port}")
        await self._enable_health(name)
        await self.api.change(f"set server {self._path(name)} state ready")
        await self._wait_ready(name, machine)

    def _free_slot(self, servers: dict[str, ServerState]) -> ServerState | None:
        """A slot without an address, or one in maint (its machine left); never one disabled in the config."""
        prefix = self.opts.server_template or ""
        free = [
            s
            for s in servers.values()
            if s.name.startswith(prefix) and (s.unset or s.maint) and not s.admin_state & CONFIG_MAINT
        ]
        return min(free, key=lambda s: (not s.unset, s.name)) if free else None

    async def _enable_health(self, name: str) -> None:
        try:
            await self.api.change(f"enable health {self._path(name)}")
        except HaproxyError as exc:
            said = str(exc).lower()  # 2.6 says "Health check was not configured on this server, cannot enable."
            if "not configured" not in said and "no health check" not in said:
                raise

    async def _wait_ready(self, name: str, machine: Machine) -> None:
        """Until HAProxy reports the server ready and up by its own health check (at most ready_timeout)."""
        deadline = time.monotonic() + self.opts.ready_timeout
        while True:
            s = (await self.api.servers(self.opts.backend)).get(name)
            if s is not None and s.up and s.address == machine.address:
                return
            if time.monotonic() > deadline:
                state = "absent" if s is None else f"{_state(s)}, health {'up' if s.op_state == 2 else 'down'}"
                raise HaproxyError(
                    f"{self._path(name)} ({machine.address}) is not up in HAProxy {self.opts.ready_timeout:g}s after "
                    f"`state ready` ({state}): does HAProxy's health check reach it?"
                )
            await asyncio.sleep(DRAIN_POLL)

    # -- remove -------------------------------------------------------------------------------------------
    async def remove(self, machine: Machine) -> None:
        await self._retrying(f"removing {machine.id}", lambda: self._remove(machine))

    async def _remove(self, machine: Machine) -> None:
        found = self._find(await self.api.servers(self.opts.backend), machine)
        if found is None or found.maint:
            return  # not in the backend, or already out: nothing to do
        path = self._path(found.name)
        await self.api.change(f"set server {path} state drain")
        deadline = time.monotonic() + self.opts.drain_timeout
        while (  # noqa: ASYNC110 (polls HAProxy)
            await self.api.sessions(self.opts.backend, found.name, found.sid) > 0 and time.monotonic() < deadline
        ):
            await asyncio.sleep(DRAIN_POLL)
        await self.api.change(f"set server {path} state maint")

    # -- views and reconciling ----------------------------------------------------------------------------
    async def members(self) -> dict[str, str]:
        return {s.name: s.address for s in (await self.api.servers(self.opts.backend)).values() if s.ready}

    async def addresses(self) -> list[str]:
        return sorted(set((await self.members()).values()))

    async def sync(self, machines: list[Machine], leaving: Sequence[Machine] = ()) -> None:
        await self.reconcile(machines, leaving)

    async def reconcile(self, machines: list[Machine], leaving: Sequence[Machine] = ()) -> list[str]:
        """Make the backend serve exactly `machines` (those in service); returns what had to be re-applied.

        The servers of `leaving` machines (a playbook or a retirement is draining them) are left as they are:
        putting one in maint here would cut its drain short, and its remover sees it already out."""
        servers = await self.api.servers(self.opts.backend)
        fixed: list[str] = []
        wanted = {s.name for m in leaving if (s := self._find(servers, m)) is not None}
        for m in machines:
            s = self._find(servers, m)
            if s is not None:
                wanted.add(s.name)
            if s is None or not s.ready or s.address != m.address:
                await self._add(m)  # not retried here: the reconcile loop comes back every interval
                fixed.append(f"{m.id} put back in {self.opts.backend} ({'missing' if s is None else _state(s)})")
                servers = await self.api.servers(self.opts.backend)
                wanted.add(added.name if (added := self._find(servers, m)) else m.id)
        for s in servers.values():
            if s.name not in wanted and not s.maint:
                await self.api.change(f"set server {self._path(s.name)} state maint")
                fixed.append(f"{s.name} taken out of {self.opts.backend} (it was {_state(s)}, not in rotation)")
        return fixed

    async def problem(self) -> str | None:
        """For `healerd check`: the socket missing, the backend unknown, or no `level admin`."""
        return await self.api.problem(self.opts.backend)


def _state(s: ServerState) -> str:
    return "in maint" if s.maint else "draining" if s.draining else "without an address" if s.unset else "ready"
