"""HAProxy's runtime API (the stats socket, management guide §9.3): one command per connection, errors read
from the text HAProxy answers, every call bounded in time and in the bytes it reads."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from dataclasses import dataclass

from ..providers.base import ProviderError

#: srv_admin_state bits (HAProxy 2.6 server.h): forced, inherited, config, resolution maintenance; drain
MAINT_BITS = 0x01 | 0x02 | 0x04 | 0x20
DRAIN_BITS = 0x08 | 0x10
#: answers of a change that went through (besides an empty one)
DONE = ("New server registered.", "Server deleted.", "IP changed from", "no need to change the addr")
PROBE_SERVER = "healerd-permission-probe"
#: The most healerd reads of one answer. `show servers state <backend>` takes about 110 bytes a server, so
#: 1 MiB holds a backend of some 9,000 servers; `show stat` is asked of one server (about 1.7 KB with its
#: header). Anything longer is not an answer of HAProxy's (a stream that does not end): it is cut there
#: instead of being read into memory.
MAX_ANSWER = 1 << 20
CHUNK = 64 * 1024
#: what HAProxy allows in a proxy or server name: a name outside this is not HAProxy's (and is never sent back)
NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


class HaproxyError(ProviderError):
    """HAProxy refused a command or could not be reached; the message says which and how to fix it.

    `transient` errors are the world's (HAProxy unreachable, silent, restarting): the same call may well work
    a moment later. The others are HAProxy's answer, which a retry would not change."""

    def __init__(self, message: str, transient: bool = False) -> None:
        super().__init__(message)
        self.transient = transient


@dataclass(frozen=True)
class ServerState:
    name: str
    host: str
    port: int
    op_state: int  # 0 stopped, 1 starting, 2 running, 3 stopping
    admin_state: int
    sid: int = -1  # HAProxy's id of the server in its backend (`show stat` asks one server by it)

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
    def __init__(self, socket: str, timeout: float = 5.0, *, max_answer: int = MAX_ANSWER) -> None:
        self.socket = socket
        self.timeout = timeout
        self.max_answer = max_answer

    async def command(self, line: str) -> str:
        """Send one command, read its answer (HAProxy closes the connection after it), at most `max_answer`
        bytes within `timeout`."""
        what = f"`{line}`" if len(line) <= 80 else f"`{line[:77]}...`"
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
                    answer = await self._read(reader, what)
                finally:
                    writer.close()
        except TimeoutError:
            raise HaproxyError(
                f"HAProxy at {self.socket} did not answer {what} within {self.timeout:g}s", transient=True
            ) from None
        except (OSError, ValueError) as exc:
            raise HaproxyError(
                f"cannot reach HAProxy's runtime API at {self.socket}: {getattr(exc, 'strerror', None) or exc}; "
                "is HAProxy running with `stats socket … level admin` (docs/haproxy.md)?",
                transient=True,
            ) from None
        return answer.decode("utf-8", "replace")

    async def _read(self, reader: asyncio.StreamReader, what: str) -> bytes:
        answer = bytearray()
        while chunk := await reader.read(CHUNK):
            answer += chunk
            if len(answer) > self.max_answer:
                raise HaproxyError(
                    f"{self.socket} answered {what} with more than {self.max_answer:,} bytes, more than HAProxy "
                    "says to any command of healerd's: is it HAProxy's stats socket (docs/haproxy.md)?"
                )
        return bytes(answer)

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
            if first.startswith("Can't find backend"):
                raise HaproxyError(
                    f"HAProxy answered `show servers state {backend}` with {first!r}: is there a backend {backend}?"
                )
            raise HaproxyError(
                f"{self.socket} answered `show servers state {backend}` with {_quote(first)}, not HAProxy's server "
                f"state (format 1): is there a backend {backend}, and is this HAProxy's stats socket?"
            )
        out = {}
        for n, ln in enumerate(lines[1:], 2):
            if ln.startswith("#"):
                continue
            f = ln.split()
            if len(f) < 19 or f[1] != backend:
                continue
            try:
                if not NAME.match(f[3]):
                    raise ValueError(f[3])
                out[f[3]] = ServerState(f[3], f[4], int(f[18]), int(f[5]), int(f[6]), int(f[2]))
            except ValueError:
                raise HaproxyError(
                    f"{self.socket} answered `show servers state {backend}` with a line that is not HAProxy's "
                    f"(line {n}: {_quote(ln)}): is this HAProxy's stats socket?"
                ) from None
        return out

    async def sessions(self, backend: str, server: str, sid: int = -1) -> int:
        """Current sessions of one server (`scur` of `show stat`, asked of that server when its id is known)."""
        answer = await self.command(f"show stat {backend} 4 {sid}")
        rows = csv.reader(io.StringIO(answer.lstrip("# ")))
        header = next(rows, [])
        try:
            px, sv, scur = header.index("pxname"), header.index("svname"), header.index("scur")
        except ValueError:
            raise HaproxyError(f"HAProxy's `show stat` has no pxname/svname/scur columns: {_quote(answer)}") from None
        for row in rows:
            if len(row) > scur and row[px] == backend and row[sv] == server:
                try:
                    return int(row[scur] or 0)
                except ValueError:
                    raise HaproxyError(
                        f"HAProxy's `show stat` gives {server} a current session count of {_quote(row[scur])}, "
                        "not a number: is this HAProxy's stats socket?"
                    ) from None
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


def _quote(text: str, limit: int = 100) -> str:
    """Some of an answer, quoted for a message: ASCII only (what is not text shows as escapes), cut short."""
    return ascii(text if len(text) <= limit else text[:limit] + "...")
