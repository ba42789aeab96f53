"""The `haproxy` rotation against Debian's real HAProxy (2.6): a backend of loopback machines behind a frontend,
driven through the admin socket, with clients going through HAProxy while machines leave and join."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import Fleet, free_port
from e2e.helpers import run_cli
from haproxy_rig import Haproxy

from healerd.machines import Machine
from healerd.rotations.haproxy import HaproxyOptions, HaproxyRotation
from healerd.rotations.haproxy_api import HaproxyError, RuntimeApi


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Any]:
    made: list[Haproxy] = []

    def make(servers: list[tuple[str, str]] | None = None, **kw: Any) -> Haproxy:
        h = Haproxy(tmp_path, servers or [], **kw)
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()


def rotation(h: Haproxy, tmp_path: Path, **options: Any) -> HaproxyRotation:
    opts = HaproxyOptions(socket=h.socket, backend="web", **{"drain_timeout": "5s", **options})
    return HaproxyRotation("web", opts, state_dir=tmp_path)


def machine(fleet: Fleet, i: int) -> Machine:
    return Machine("web", f"web-{i}", fleet[i].address)


async def load(url: str, stop: asyncio.Event, counts: collections.Counter[str]) -> None:
    """One client after another through HAProxy (new connections, as browsers open them) until `stop`."""
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            try:
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                    await resp.read()
                    counts["ok" if resp.status == 200 else f"http {resp.status}"] += 1
            except (aiohttp.ClientError, TimeoutError) as exc:
                counts[type(exc).__name__] += 1


async def test_machines_leave_and_join_with_no_failed_request_and_none_reaching_a_drained_machine(
    haproxy: Any, fleet_factory: Any, tmp_path: Path
) -> None:
    fleet: Fleet = fleet_factory(3)
    h = haproxy()
    rot = rotation(h, tmp_path)
    await rot.sync([machine(fleet, 0), machine(fleet, 1)])  # an empty backend: both added as dynamic servers
    assert await rot.members() == {"web-0": fleet[0].address, "web-1": fleet[1].address}

    tally: collections.Counter[str] = collections.Counter()
    stop = asyncio.Event()
    client = asyncio.create_task(load(f"http://127.0.0.1:{h.port}/health", stop, tally))
    while tally["ok"] < 500:  # noqa: ASYNC110 (the client counts)
        await asyncio.sleep(0.05)
    await rot.remove(machine(fleet, 0))  # drain, sessions reach 0, maint
    drained_hits = fleet[0].hits
    assert fleet[2].hits == 0, "traffic reached the replacement before it was added"
    await rot.add(machine(fleet, 2))  # a replacement: done only once HAProxy reports it ready
    added_at_hits = fleet[2].hits
    while tally["ok"] < 2500:  # noqa: ASYNC110 (the client counts)
        await asyncio.sleep(0.05)
    stop.set()
    await client
    assert set(tally) == {"ok"}, f"failed requests through HAProxy: {dict(tally)}"
    assert fleet[0].hits == drained_hits, "requests reached the machine after its drain completed"
    assert added_at_hits == 0 or added_at_hits < fleet[2].hits
    assert fleet[2].hits > 300 and fleet[1].hits > 300
    servers = await RuntimeApi(h.socket).servers("web")
    assert servers["web-0"].maint and servers["web-2"].ready and servers["web-1"].ready
    assert await rot.addresses() == sorted([fleet[1].address, fleet[2].address])
    # idempotent: the same calls again change nothing and fail nothing
    await rot.remove(machine(fleet, 0))
    await rot.add(machine(fleet, 2))
    assert await rot.reconcile([machine(fleet, 1), machine(fleet, 2)]) == []


async def test_after_a_reload_the_backend_is_made_right_again(haproxy: Any, fleet_factory: Any, tmp_path: Path) -> None:
    fleet: Fleet = fleet_factory(3)
    # the config declares web-0 (the machine since quarantined); healerd added web-1 and web-2 at run time
    h = haproxy([("web-0", fleet[0].address)])
    rot = rotation(h, tmp_path)
    serving = [machine(fleet, 1), machine(fleet, 2)]
    await rot.sync(serving)
    await rot.remove(machine(fleet, 0))
    h.reload()  # a new HAProxy process: runtime changes are gone, web-0 is back from the config
    servers = await RuntimeApi(h.socket).servers("web")
    assert set(servers) == {"web-0"} and servers["web-0"].ready
    fixed = await rot.reconcile(serving)
    assert len(fixed) == 3, fixed
    assert any("web-0 taken out" in f for f in fixed) and sum("put back" in f for f in fixed) == 2
    servers = await RuntimeApi(h.socket).servers("web")
    assert servers["web-0"].maint and servers["web-1"].ready and servers["web-2"].ready
    assert await rot.reconcile(serving) == []  # nothing left to do


async def test_reconciling_during_a_drain_leaves_the_leaving_machine_draining(
    haproxy: Any, fleet_factory: Any, tmp_path: Path
) -> None:
    """The reconcile loop runs while a playbook drains a machine: it must not cut the drain short by putting
    the server in maint (the remover would then see it already out and stop waiting for its sessions)."""
    fleet: Fleet = fleet_factory(2)
    h = haproxy()
    rot = rotation(h, tmp_path)
    leaving, staying = machine(fleet, 0), machine(fleet, 1)
    await rot.sync([leaving, staying])
    fleet[0].mode, fleet[0].slow_seconds = "slow", 2.0
    async with aiohttp.ClientSession() as session:
        held = [asyncio.create_task(session.get(f"http://127.0.0.1:{h.port}/health")) for _ in range(2)]
        api = RuntimeApi(h.socket)
        while await api.sessions("web", "web-0") == 0:  # noqa: ASYNC110 (polls HAProxy)
            await asyncio.sleep(0.02)
        removing = asyncio.create_task(rot.remove(leaving))
        while not (await api.servers("web"))["web-0"].draining:  # noqa: ASYNC110 (polls HAProxy)
            await asyncio.sleep(0.02)
        assert await rot.reconcile([staying], [leaving]) == []
        state = (await api.servers("web"))["web-0"]
        assert state.draining and not state.maint, state
        await removing  # the drain ends when the held request does
        for t in held:
            (await t).release()
    assert fleet[0].hits >= 1
    servers = await api.servers("web")
    assert servers["web-0"].maint and servers["web-1"].ready
    assert await rot.reconcile([staying]) == []  # once out, the loop keeps it out


async def test_pre_declared_slots_are_re_pointed(haproxy: Any, fleet_factory: Any, tmp_path: Path) -> None:
    fleet: Fleet = fleet_factory(2)
    h = haproxy(extra="    server-template slot 3 0.0.0.0:9 check inter 300ms rise 1 init-addr none")
    rot = rotation(h, tmp_path, server_template="slot")
    await rot.add(machine(fleet, 0))
    await rot.add(machine(fleet, 1))
    members = await rot.members()
    assert sorted(members.values()) == sorted([fleet[0].address, fleet[1].address])
    assert all(name.startswith("slot") for name in members)
    await rot.remove(machine(fleet, 0))
    assert list((await rot.members()).values()) == [fleet[1].address]
    await rot.add(Machine("web", "web-7", fleet[0].address))  # a slot in maint is re-used
    assert len(await rot.members()) == 2


async def test_a_missing_socket_or_one_without_level_admin_is_named_with_the_fix(haproxy: Any, tmp_path: Path) -> None:
    missing = HaproxyRotation(
        "web", HaproxyOptions(socket=str(tmp_path / "nope.sock"), backend="web"), state_dir=tmp_path
    )
    problem = await missing.problem()
    assert problem is not None and "cannot reach HAProxy's runtime API" in problem and "level admin" in problem
    h = haproxy(level="user")
    rot = rotation(h, tmp_path)
    problem = await rot.problem()
    assert problem is not None and "level admin" in problem, problem
    with pytest.raises(HaproxyError, match="level admin"):
        await rot.add(Machine("web", "web-9", "127.0.0.1:9"))
    wrong = HaproxyRotation("web", HaproxyOptions(socket=h.socket, backend="nosuch"), state_dir=tmp_path)
    assert "is there a backend nosuch" in (await wrong.problem() or "")


def _config(tmp_path: Path, socket: str, address: str) -> Path:
    path = tmp_path / "healerd.yaml"
    path.write_text(
        f"""daemon: {{listen: "127.0.0.1:{free_port()}", state_dir: ./state, check_paths: [], playbook_paths: []}}
providers: {{lab: {{kind: static}}}}
services:
  web:
    provider: lab
    rotation: {{kind: haproxy, socket: "{socket}", backend: web}}
    machines: [{{id: web-1, address: "{address}"}}]
    checks: [{{name: health, kind: http, url: "http://{{address}}/health", interval: 5s, timeout: 1s}}]
"""
    )
    return path


def test_validate_and_check_say_when_the_socket_is_missing_or_not_admin(
    haproxy: Any, fleet_factory: Any, tmp_path: Path
) -> None:
    fleet: Fleet = fleet_factory(1)
    missing = _config(tmp_path, str(tmp_path / "gone.sock"), fleet[0].address)
    out = run_cli("validate", "-c", str(missing))
    assert out.returncode == 0 and "gone.sock does not exist (yet)" in out.stdout + out.stderr, out
    out = run_cli("check", "-c", str(missing))
    assert out.returncode == 2 and "cannot reach HAProxy's runtime API" in out.stderr, out
    h = haproxy(level="user")
    out = run_cli("check", "-c", str(_config(tmp_path, h.socket, fleet[0].address)))
    assert out.returncode == 2 and "level admin" in out.stderr, out
    assert "OK" in out.stdout  # the machine's own checks still ran and are shown
