"""The keep-alive pool stays bounded over many distinct hosts, and checks still reuse connections."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from aiohttp import web

from healerd.checks import CheckEnv
from healerd.checks.http import HttpCheck, HttpConfig
from healerd.results import Status
from healerd.runner import run_check
from healerd.targets import Target


def open_sockets() -> int:
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # the listing's own descriptor, gone by now
            count += os.readlink(f"/proc/self/fd/{fd}").startswith("socket:")
    return count


async def test_idle_connections_to_many_hosts_are_bounded_and_the_pooled_hosts_keep_theirs(tmp_path: Path) -> None:
    """Checks come round in a cycle: the hosts that got into the pool keep their connection round after round,
    only the overflow connects anew (closing the least recently used instead would make every check a new
    connection)."""
    peers: dict[int, list[object]] = {}  # server port -> the client address of each request

    async def ok(request: web.Request) -> web.Response:
        assert request.transport is not None
        port = request.transport.get_extra_info("sockname")[1]
        peers.setdefault(port, []).append(request.transport.get_extra_info("peername"))
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/health", ok)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    ports = []
    for _ in range(160):  # 160 distinct hosts (host:port pairs) on loopback
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
    env = CheckEnv(open_files=256 + 160, max_concurrent=64)  # 160 sockets for checks, 64 of them in use at once
    idle = env.max_idle_hosts
    assert (idle, env.max_connections) == (96, 64)
    try:
        before = open_sockets()
        checks = [
            HttpCheck(HttpConfig(url=f"http://127.0.0.1:{p}/health"), Target("web", f"m{p}", f"127.0.0.1:{p}"), env=env)
            for p in ports
        ]
        for _ in range(2):
            for check in checks:
                assert (await run_check(check, 2.0)).status is Status.OK
        client_side = open_sockets() - before
        # both ends of each idle connection are in this process: 96 hosts' worth, not 160
        assert client_side <= 2 * idle + 4, client_side
        assert env.http_pool().overflow_closed == 2 * (160 - idle)
        reused = [p for p in ports if peers[p][0] == peers[p][1]]
        assert reused == ports[:idle]  # the first 96 hosts kept their connection from round one to round two
        # and a third round still reuses theirs
        assert (await run_check(checks[0], 2.0)).status is Status.OK
        assert peers[ports[0]][-1] == peers[ports[0]][0]
    finally:
        await env.close()
        await runner.cleanup()
