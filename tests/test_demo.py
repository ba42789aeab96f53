"""The demo machine's fault modes (`python -m healerd.demo`), as an HTTP client sees them."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from conftest import free_port

from healerd import demo

Serve = Callable[[web.Application], Awaitable[str]]


@pytest.fixture
async def machine(aiohttp_server_factory: Serve) -> str:
    """A demo machine on loopback, in this test's loop: its base URL."""
    return await aiohttp_server_factory(demo.build_app())


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    # a fresh connection per request: a fault that kills a connection must not leak into the next request
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


async def set_mode(client: aiohttp.ClientSession, url: str, mode: str) -> None:
    async with client.post(f"{url}/fault", data=mode) as resp:
        assert resp.status == 200, await resp.text()
        assert await resp.json() == {"mode": mode}


async def get_health(client: aiohttp.ClientSession, url: str, timeout: float = 5.0) -> tuple[int, str, float]:
    """(status, body, seconds taken) of GET /health."""
    started = time.monotonic()
    async with client.get(f"{url}/health", timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
        return resp.status, await resp.text(), time.monotonic() - started


async def raw_health(url: str, timeout: float = 2.0) -> bytes:
    """GET /health over a bare TCP connection: every byte the machine sends until it closes."""
    host, _, port = url.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        await writer.drain()
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


async def assert_mendable(client: aiohttp.ClientSession, url: str) -> None:
    """GET / and POST /fault keep answering whatever the fault; `ok` mends /health."""
    async with client.get(f"{url}/", timeout=aiohttp.ClientTimeout(total=5)) as resp:
        assert resp.status == 200
        assert (await resp.json())["service"] == "healerd-demo"
    await set_mode(client, url, "ok")
    status, body, _ = await get_health(client, url)
    assert (status, body) == (200, "ok\n")


# ---------------------------------------------------------------------------------------------------------
# modes


async def test_ok_and_down(machine: str, client: aiohttp.ClientSession) -> None:
    assert (await get_health(client, machine))[:2] == (200, "ok\n")
    await set_mode(client, machine, "down")
    assert (await get_health(client, machine))[:2] == (503, "down\n")
    async with client.get(f"{machine}/") as resp:
        assert (await resp.json())["mode"] == "down"
    await assert_mendable(client, machine)


async def test_flap_alternates(machine: str, client: aiohttp.ClientSession) -> None:
    await set_mode(client, machine, "flap")
    statuses = [(await get_health(client, machine))[0] for _ in range(6)]
    assert statuses == [200, 503] * 3


async def test_slow_answers_after_its_delay(machine: str, client: aiohttp.ClientSession) -> None:
    assert demo.parse_mode("slow") == ("slow", 1.5)
    await set_mode(client, machine, "slow:0.4")
    status, body, took = await get_health(client, machine)
    assert (status, body) == (200, "ok\n")
    assert 0.4 <= took < 3.0, took
    with pytest.raises(TimeoutError):
        await get_health(client, machine, timeout=0.2)
    await assert_mendable(client, machine)


async def test_slow_default_is_one_and_a_half_seconds(machine: str, client: aiohttp.ClientSession) -> None:
    await set_mode(client, machine, "slow")
    status, _, took = await get_health(client, machine)
    assert status == 200 and 1.5 <= took < 4.0, took


async def test_hang_accepts_the_connection_and_never_answers(machine: str, client: aiohttp.ClientSession) -> None:
    await set_mode(client, machine, "hang")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await get_health(client, machine, timeout=0.5)
    assert time.monotonic() - started >= 0.5
    # the TCP connection is accepted and stays open: nothing is written, nothing is closed
    with pytest.raises(TimeoutError):
        await raw_health(machine, timeout=0.5)
    await assert_mendable(client, machine)


async def test_reset_closes_with_rst(machine: str, client: aiohttp.ClientSession) -> None:
    await set_mode(client, machine, "reset")
    with pytest.raises(aiohttp.ClientError):
        await get_health(client, machine)
    with pytest.raises(ConnectionResetError):  # an RST, not an orderly FIN (that would read b"")
        await raw_health(machine)
    await assert_mendable(client, machine)


async def test_garbage_is_not_http(machine: str, client: aiohttp.ClientSession) -> None:
    await set_mode(client, machine, "garbage")
    with pytest.raises(aiohttp.ClientError):
        await get_health(client, machine)
    assert await raw_health(machine) == demo.GARBAGE
    await assert_mendable(client, machine)


async def test_leak_grows_slower_until_capped(machine: str, client: aiohttp.ClientSession) -> None:
    assert demo.parse_mode("leak") == ("leak", 0.1)
    await set_mode(client, machine, "leak:1")
    status, body, first = await get_health(client, machine)
    assert (status, body) == (200, "ok\n")
    assert first < 0.5, first
    await asyncio.sleep(0.6)  # 1 s more latency per second: the next answer takes >= 0.6 s
    status, body, later = await get_health(client, machine)
    assert (status, body) == (200, "ok\n")
    assert later >= 0.6 and later > first, (first, later)
    state = {"since": 100.0, "arg": None}
    assert demo.leak_delay(state, now=103.0) == pytest.approx(0.3)  # +100 ms a second by default
    assert demo.leak_delay(state, now=1e9) == demo.LEAK_CAP
    await assert_mendable(client, machine)


async def test_unknown_modes_are_refused(machine: str, client: aiohttp.ClientSession) -> None:
    for bad in ("explode", "down:3", "slow:soon", "slow:-1", ""):
        async with client.post(f"{machine}/fault", data=bad) as resp:
            assert resp.status == 400, bad
            out = await resp.json()
            assert out["error"] == "unknown fault mode" and out["detail"], out
    async with client.get(f"{machine}/") as resp:
        assert (await resp.json())["mode"] == "ok"
    async with client.post(f"{machine}/fault", json={"mode": "down"}) as resp:  # a JSON body works too
        assert resp.status == 200 and await resp.json() == {"mode": "down"}


@pytest.mark.parametrize("mode", ["hang", "reset", "garbage", "leak:0.5", "slow:0.6", "flap", "down"])
def test_a_machine_may_start_broken(mode: str) -> None:
    assert demo._start_mode(mode) == mode
    app = demo.build_app(mode)
    assert app[demo.STATE]["mode"] == mode


def test_a_machine_cannot_start_in_exit(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        demo.main(["--port", "1", "--mode", "exit"])
    assert exc.value.code == 2
    assert "cannot start in mode exit" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------------
# exit: a real process


def test_exit_answers_then_exits_with_status_3() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "healerd.demo", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
    )
    try:

        async def scenario() -> None:
            async with aiohttp.ClientSession() as session:
                deadline = time.monotonic() + 15
                while True:  # bounded: until it listens or 15 s pass
                    try:
                        async with session.get(f"{url}/") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    assert proc.poll() is None, proc.stdout.read() if proc.stdout else b""
                    assert time.monotonic() < deadline, "the demo machine never listened"
                    await asyncio.sleep(0.05)
                await set_mode(session, url, "exit")

        asyncio.run(scenario())
        assert proc.wait(timeout=10) == demo.EXIT_STATUS
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert "fault mode set to exit" in out, out
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        if proc.stdout:
            proc.stdout.close()
