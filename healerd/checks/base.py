"""The check plugin API: one class per kind, a typed config model and one `async def run()`.

The framework (runner.py) owns timeouts, exception capture, timing and metrics; a check only does the work.
"""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Callable
from contextvars import ContextVar
from pathlib import Path
from typing import ClassVar, Generic, Protocol, TypeVar, runtime_checkable

from pydantic import BaseModel, ConfigDict

from .. import openfiles
from ..results import CheckResult, Status
from ..targets import Target
from ._echo import EchoSocket
from ._http1 import Pool
from ._tls import ResumingContext, client_context

#: when the run under way must have finished (the event loop's clock): set by the runner for each run
RUN_DEADLINE: ContextVar[float] = ContextVar("healerd_check_deadline", default=math.inf)


class CheckOptions(BaseModel):
    """Base of every check kind's config model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)


ConfigT = TypeVar("ConfigT", bound=CheckOptions)


@runtime_checkable
class Closeable(Protocol):
    """What a kind keeps in `CheckEnv.shared` that holds sockets (kept-alive connections): closed with the env."""

    def close(self) -> None: ...


class CheckEnv:
    """Resources shared by every check: HTTP client sessions, ICMP sockets, where drop-in scripts live."""

    def __init__(
        self,
        check_paths: tuple[Path, ...] | Callable[[], tuple[Path, ...]] = (),
        base_dir: Path | None = None,
        *,
        open_files: int | None = None,
        max_concurrent: int = 5000,
    ) -> None:
        #: where drop-in scripts are looked for: fixed, or read at each use from the config in force
        self._check_paths = check_paths if callable(check_paths) else lambda: check_paths
        self.base_dir = base_dir or Path.cwd()
        # Sockets for checks: those of the checks that may run at once, the rest for kept-alive connections.
        self.max_connections, self.max_idle_hosts = openfiles.split(max_concurrent, open_files or openfiles.limits()[0])
        self._pool: Pool | None = None
        self._tls: dict[bool, ResumingContext] = {}
        self._echo: dict[socket.AddressFamily, EchoSocket] = {}
        self.subprocess_slots = asyncio.Semaphore(64)
        #: what the checks of one kind share between machines (the prometheus check's batched answers, the grpc
        #: check's connections); a value with a close() method is closed with the env
        self.shared: dict[object, object] = {}

    @property
    def check_paths(self) -> tuple[Path, ...]:
        return self._check_paths()

    def http_pool(self) -> Pool:
        """The daemon's one pool of kept-alive connections for HTTP checks."""
        if self._pool is None:
            self._pool = Pool(self.max_idle_hosts)
        return self._pool

    def tls_context(self, verify: bool) -> ResumingContext:
        """The daemon's one client TLS context for this verification mode (sessions resumed across checks)."""
        ctx = self._tls.get(verify)
        if ctx is None:
            ctx = self._tls[verify] = client_context(verify, max_sessions=self.max_idle_hosts * 4)
        return ctx

    def echo_socket(self, family: socket.AddressFamily) -> EchoSocket:
        """The daemon's one ICMP socket of this address family (raises NoPrivilege when none may be opened)."""
        sock = self._echo.get(family)
        if sock is None or sock.loop is not asyncio.get_running_loop():
            if sock is not None:
                sock.close()
            sock = self._echo[family] = EchoSocket(family)
        return sock

    async def close(self) -> None:
        for sock in self._echo.values():
            sock.close()
        self._echo.clear()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        for value in self.shared.values():
            if isinstance(value, Closeable):
                value.close()
        self.shared.clear()


class Check(Generic[ConfigT]):
    """Base class of check kinds. Subclasses set `kind` and `Config`, and implement `run`.

    An instance is bound to one target with its config already rendered (templates filled in), so `run`
    does only the work. Raising, or never returning, yields an UNKNOWN result with the reason.
    """

    kind: ClassVar[str] = ""
    Config: ClassVar[type[CheckOptions]] = CheckOptions
    #: Set to False for checks that make sense only once per service (no machine templates).
    per_machine: ClassVar[bool] = True
    #: What a run that does not finish within its timeout means (per check: `timeout_status`). A network
    #: check whose target does not answer has found a problem (CRITICAL, as Nagios' socket timeout); for
    #: other checks the check itself failed to decide (UNKNOWN).
    timeout_status: ClassVar[Status] = Status.UNKNOWN
    #: holds a socket while it runs (and between runs with keep-alive): counted against the open-file limit
    uses_socket: ClassVar[bool] = False

    def __init__(self, config: ConfigT, target: Target, *, env: CheckEnv) -> None:
        self.config = config
        self.target = target
        self.env = env

    async def run(self) -> CheckResult:
        raise NotImplementedError

    @staticmethod
    def time_left() -> float:
        """Seconds until this run's timeout (infinite outside the runner): a check that gathers several answers
        (echo requests, say) stops waiting in time to report what it found instead of being cut off."""
        return RUN_DEADLINE.get() - asyncio.get_running_loop().time()

    @classmethod
    def preflight(cls, options: CheckOptions, env: CheckEnv) -> list[tuple[tuple[str | int, ...], str]]:
        """Problems that would make every run fail, found at validation (e.g. a plugin that is missing or
        not executable): (path within the check's options, message naming the fix)."""
        return []


class Unbuildable(Check[CheckOptions]):
    """Stands in for a check that could not be built for its target (a machine address that makes no URL):
    every run reads UNKNOWN with the reason, so the check is seen failing instead of crashing its binding."""

    kind = "unbuildable"

    def __init__(self, target: Target, env: CheckEnv, *, reason: str) -> None:
        super().__init__(CheckOptions(), target, env=env)
        self.reason = reason

    async def run(self) -> CheckResult:
        return CheckResult(Status.UNKNOWN, self.reason)
