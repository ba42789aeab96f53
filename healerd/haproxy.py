"""HAProxy's runtime API (the stats socket, management guide §9.3): one command per connection, errors read
from the text HAProxy answers, every call bounded by a timeout."""

from __future__ import annotations

import asyncio
import csv
import io
from dataclasses import dataclass

from .providers.base import ProviderError

#: srv_admin_state bits (HAProxy 2.6 server.h): forced, inherited, config, resolution maintenance; drain
MAINT_BITS = 0x01 | 0x02 | 0x04 | 0x20
DRAIN_BITS = 0x08 | 0x10
#: answers of a change that went through (besides an empty one)
DONE = ("New server registered.", "Server deleted.", "IP changed from", "no need to change the addr")
PROBE_SERVER = "healerd-permission-probe"


class HaproxyError(ProviderError):
    """HAProxy refused a command or could not be reached; the message says which and how to fix it."""


@dataclass(frozen=True)
class ServerState:
    name: str
    host: str
    port: int
    op_state: int  # 0 stopped, 1 starting, 2 running, 3 stopping
    admin_state: int

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def maint(self) -> bool:
        return bool(self.admin_state & MAINT_BITS)

    @property
    def draining(self) -> bool:
        return bool(self.admin_state & DRAIN_BITS)

    @property
    def unset(self) -> bool:
        """A slot with no address yet (`server-template … 0.0.0.0:80 … init-addr none`)."""
        return self.host in ("0.0.0.0", "::")

    @property
    def ready(self) -> bool:
        """Taking traffic by healerd's say (HAProxy's own health check aside)."""
        return not self.maint and not self.draining and not self.unset

    @property
    def up(self) -> bool:
        """Ready, and up by HAProxy's health check (or without one)."""
        return self.ready and self.op_state == 2


class RuntimeApi:
    def __init__(self, socket: str, timeout: float = 5.0) -> None:
        self.socket = socket
        self.timeout = timeout

    async def command(self, line: str) -> str:
        """Send one command, read the whole answer (HAProxy closes the connection after it)."""
        try:
            async with asyncio.timeout(self.timeout):
                if self.socket.startswith("/"):
                    reader, writer = await asyncio.open_unix_connection(self.socket)
                else:
                    host, _, port = self.socket.rpartition(":")
                    reader, writer = await asyncio.open_connection(host.strip("[]"), int(port))
                try:
                    writer.write(line.encode() + b"\n")
                    await writer.drain()
                    answer = await reader.read(-1)
                finally:
                    writer.close()
        except TimeoutError:
            raise HaproxyError(
                f"HAProxy at {self.socket} did not answer {line.split()[0]!r} within {self.timeout:g}s"
            ) from None
        except (OSError, ValueError) as exc:
            raise HaproxyError(
                f"cannot reach HAProxy's runtime API at {self.socket}: {getattr(exc, 'strerror', None) or exc}; "
                "is HAProxy running with `stats socket … level admin` (docs/haproxy.md)?"
            ) from None
        return answer.decode("utf-8", "replace")

    async def change(self, line: str) -> str:
        """A command that changes something: HAProxy's answer unless it is an error (raised, with the text)."""
        answer = (await self.command(line)).strip()
        if answer and not answer.startswith(DONE):
            hint = ""
            if "Permission denied" in answer:
                hint = "; the stats socket needs `level admin` (stats socket … level admin)"
            raise HaproxyError(f"HAProxy refused `{line}`: {answer.splitlines()[0]}{hint}")
        return answer

    async def servers(self, backend: str) -> dict[str, ServerState]:
        """The backend's servers from `show servers state` (format 1)."""
        answer = await self.command(f"show servers state {backend}")
        lines = [ln for ln in answer.splitlines() if ln.strip()]
        if not lines or lines[0].strip() != "1":
            first = lines[0] if lines else "(nothing)"
            raise HaproxyError(
                f"HAProxy answered `show servers state {backend}` with {first!r}; is there a backend {backend}?"
            )
        out = {}
        for ln in lines[1:]:
            if ln.startswith("#"):
                continue
            f = ln.split()
            if len(f) < 19 or f[1] != backend:
                continue
            out[f[3]] = ServerState(f[3], f[4], int(f[18]), int(f[5]), int(f[6]))
        return out

    async def sessions(self, backend: str, server: str) -> int:
        """Current sessions of one server (`scur` of `show stat`)."""
        answer = await self.command("show stat")
        rows = csv.reader(io.StringIO(answer.lstrip("# ")))
        header = next(rows, [])
        try:
            px, sv, scur = header.index("pxname"), header.index("svname"), header.index("scur")
        except ValueError:
            raise HaproxyError(f"HAProxy's `show stat` has no pxname/svname/scur columns: {answer[:120]!r}") from None
        for row in rows:
            if len(row) > scur and row[px] == backend and row[sv] == server:
                return int(row[scur] or 0)
        return 0

    async def problem(self, backend: str) -> str | None:
        """What keeps healerd from driving `backend` through this socket (None: it can)."""
        try:
            await self.servers(backend)
            answer = (await self.command(f"set server {backend}/{PROBE_SERVER} state ready")).strip()
        except HaproxyError as exc:
            return str(exc)
        if "Permission denied" in answer:
            return (
                f"HAProxy's stats socket {self.socket} does not allow changes (it answered: {answer.splitlines()[0]}); "
                "declare it with `level admin`: stats socket /run/haproxy/admin.sock mode 660 level admin"
            )
        return None
