"""Shared fixtures: real aiohttp servers on loopback that stand in for fleet machines; a fresh state store."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web
from netlab import Lab, require_netlab
from pg import PgServer, pg_binary, pg_server
from remediation_rig import Rig, make_rig
from structlog.testing import capture_logs

from healerd.checks import CheckEnv
from healerd.store import Store
from healerd.store.base import BaseStore
from healerd.store.postgres import PgStore

PLUGIN_DIR = Path("/usr/lib/nagios/plugins")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_process(process: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """End a server the test started, by its Popen: resumed first (a frozen process cannot act on SIGTERM),
    then SIGTERM, SIGKILL after `grace` seconds."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGCONT)
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(grace)


def require_binary(path: str | Path) -> str:
    """A Debian binary a test drives: missing is a failure under CI=true, a skip on a laptop."""
    found = shutil.which(str(path)) if not Path(path).is_absolute() else (str(path) if Path(path).exists() else None)
    if found is None:
        message = f"{path} is missing; install it with `make debs` (apt-get install -y monitoring-plugins-basic)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@dataclass
class FakeMachine:
    """A loopback HTTP server answering /health according to `mode`: ok | fail | slow | hang."""

    port: int
    mode: str = "ok"
    slow_seconds: float = 0.3
    hits: int = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def health(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.mode == "fail":
            return web.Response(status=500, text="broken")
        if self.mode == "slow":
            await asyncio.sleep(self.slow_seconds)
        if self.mode == "hang":
            await asyncio.sleep(3600)
        return web.Response(text="ok")


@dataclass
class Fleet:
    machines: list[FakeMachine] = field(default_factory=list)

    def __getitem__(self, i: int) -> FakeMachine:
        return self.machines[i]


class _ThreadedServers:
    """Runs FakeMachines on their own loop in a thread, so a daemon under test (or a subprocess) and the
    test body can both talk to them regardless of which loop the test uses."""

    def __init__(self, n: int) -> None:
        self.fleet = Fleet([FakeMachine(free_port()) for _ in range(n)])
        self._loop = asyncio.new_event_loop()
        self._runners: list[web.AppRunner] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    async def _start(self) -> None:
        for m in self.fleet.machines:
            app = web.Application()
            app.router.add_get("/health", m.health)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", m.port).start()
            self._runners.append(runner)

    def stop(self) -> None:
        async def _stop() -> None:
            for r in self._runners:
                await r.cleanup()

        asyncio.run_coroutine_threadsafe(_stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[CheckEnv]:
    """What the checks of a test share (connection pools, ICMP sockets), closed after it; files relative to tmp_path."""
    e = CheckEnv(base_dir=tmp_path)
    yield e
    await e.close()


@pytest.fixture
def logs() -> Iterator[list[dict[str, Any]]]:
    """The structured log lines of the test, with the service, machine and incident bound when each was said."""
    with capture_logs(processors=[structlog.contextvars.merge_contextvars]) as entries:
        yield entries


@pytest.fixture
def fleet_factory() -> Iterator[object]:
    started: list[_ThreadedServers] = []

    def make(n: int) -> Fleet:
        servers = _ThreadedServers(n)
        servers.start()
        started.append(servers)
        return servers.fleet

    yield make
    for s in started:
        s.stop()


@pytest.fixture
def fleet3(fleet_factory: object) -> Fleet:
    return fleet_factory(3)  # type: ignore[operator, no-any-return]


@pytest.fixture
async def aiohttp_server_factory() -> AsyncIterator[object]:
    """Start aiohttp apps on loopback inside the test's own loop; yields `start(app) -> base_url`."""
    runners: list[web.AppRunner] = []

    async def start(app: web.Application) -> str:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        runners.append(runner)
        return f"http://127.0.0.1:{port}"

    yield start
    for r in runners:
        await r.cleanup()


@pytest.fixture
def netlab() -> Iterator[Lab]:
    """An empty network lab (tests/netlab.py): `netlab.add_host(name)`, `netlab.run(...)`, `netlab.cut(a, b)`.
    Its processes, namespaces, links and routes are removed when the test ends, whatever happened."""
    require_netlab()
    with Lab() as lab:
        yield lab


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    """A throw-away PostgreSQL server (Debian's postgresql package), one per test worker."""
    for name in ("initdb", "pg_ctl"):
        if pg_binary(name) is None:
            require_binary(name)
    with pg_server() as server:
        yield server


async def lead(store: PgStore, epoch: int = 1) -> None:
    """Make the store's node the leader at `epoch` (as the cluster's lease would), so fenced writes go through."""

    def write() -> None:
        store.pg.conn.execute(
            "INSERT INTO cluster_lease VALUES ('leader', ?, ?, now() + interval '1 hour', now())"
            " ON CONFLICT (name) DO UPDATE SET holder=excluded.holder, epoch=excluded.epoch",
            (store.pg.node, epoch),
        )

    await store.pg.call(write)
    store.pg.lead_at(epoch)


@pytest.fixture(params=["sqlite", "postgresql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[BaseStore]:
    """A real state store, open, closed after the test: SQLite in a fresh temporary directory, and PostgreSQL
    (a fresh database on the session's throw-away server, this node leading)."""
    s: Store | PgStore
    if request.param == "sqlite":
        s = Store(tmp_path / "state")
        await s.open()
    else:
        server: PgServer = request.getfixturevalue("pg")
        s = PgStore(server.new_database(), "test-node")
        await s.open()
        await lead(s)
    yield s
    await s.close()


@pytest.fixture
async def rig_factory(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    """`await rig_factory(**options)`: a remediation engine on a real store and health book (see
    tests/remediation_rig.py), closed when the test ends."""
    made: list[Rig] = []

    async def make(**kwargs: Any) -> Rig:
        rig = await make_rig(tmp_path, **kwargs)
        made.append(rig)
        return rig

    yield make
    for rig in made:
        await rig.close()
