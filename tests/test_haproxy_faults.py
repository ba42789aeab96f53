"""The remediation engine (tests/remediation_rig.py) driving Debian's real HAProxy while its stats socket
fails: a hiccup during a remediation is retried instead of escalated; a remediation that did escalate leaves
its machine out of the backend once the socket answers again; an answer that is not HAProxy's is said once,
without a traceback, and so is the recovery."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from haproxy_rig import FakeStatsSocket, Haproxy
from remediation_rig import Rig

from healerd.machines import Machine
from healerd.rotations.haproxy import HaproxyOptions, HaproxyRotation
from healerd.rotations.haproxy_api import RuntimeApi

Logs = list[dict[str, Any]]
MACHINES = ("web-0", "web-1", "web-2")


@pytest.fixture
async def haproxy(tmp_path: Path) -> AsyncIterator[Any]:
    made: list[Haproxy] = []

    def make() -> Haproxy:
        h = Haproxy(tmp_path, [])
        made.append(h)
        return h

    yield make
    for h in made:
        h.stop()


def said(logs: Logs, event: str) -> Logs:
    return [e for e in logs if e["event"] == event]


def use_haproxy(rig: Rig, socket: str, **options: Any) -> None:
    """The rig's service behind HAProxy's backend `web` (servers added without a health check of HAProxy's:
    the rig's machines are records, with nothing listening)."""
    opts = HaproxyOptions(socket=socket, backend="web", server_options="", **options)
    rig.engine.fleet.rotations["web"] = HaproxyRotation("web", opts, state_dir=rig.tmp_path)


async def fleet_of(rig: Rig) -> None:
    for i, m in enumerate(MACHINES):
        await rig.add(m, launched_at=str(rig.t0 - 100 + i))
    rig.up(*MACHINES)


async def backend(socket: str) -> dict[str, str]:
    servers = await RuntimeApi(socket).servers("web")
    return {name: "maint" if s.maint else "ready" if s.ready else "other" for name, s in servers.items()}


async def rotation_pass(rig: Rig, now: float) -> None:
    """One pass of the engine, and the rotation's comparison with HAProxy it starts in the background."""
    await rig.engine.reconcile(now)
    await asyncio.gather(*rig.engine.rotation_passes.running)


async def test_a_socket_hiccup_during_a_remediation_is_retried_and_the_remediation_succeeds(
    rig_factory: Any, haproxy: Any, logs: Logs
) -> None:
    rig: Rig = await rig_factory()
    h = haproxy()
    use_haproxy(rig, h.socket)  # retried for 30s by default
    await fleet_of(rig)
    away = Path(h.socket + ".away")
    await asyncio.to_thread(Path(h.socket).rename, away)  # HAProxy runs on; healerd cannot reach it where it looks
    rig.down("web-0")
    await rig.engine.reconcile(rig.t0 + 1)  # the incident opens; its rotation.remove cannot reach HAProxy
    await asyncio.sleep(1.5)
    await asyncio.to_thread(away.rename, h.socket)
    await rig.settle()

    (inc,) = await rig.engine.views.incident_list()
    assert inc["state"] in ("remediated", "resolved"), inc
    view = await rig.engine.views.incident_view(inc["id"])
    assert view is not None
    steps = {s["action"]: s for s in view["steps"]}
    assert steps["rotation.remove"]["state"] == "succeeded" and steps["rotation.remove"]["attempts"] == 1
    state = await backend(h.socket)
    assert state["web-0"] == "maint" and state[inc["replacement"]] == "ready", state
    (retried,) = said(logs, "HAProxy failed; retried with backoff")
    assert retried["doing"] == "removing web-0" and "No such file or directory" in retried["error"]
    assert retried["incident"] == inc["id"]
    assert len(said(logs, "HAProxy answered again")) == 1
    assert not said(logs, "remediation failed; escalating")


async def test_an_escalated_machine_is_taken_out_of_the_backend_once_the_socket_answers_again(
    rig_factory: Any, haproxy: Any
) -> None:
    rig: Rig = await rig_factory()
    h = haproxy()
    use_haproxy(rig, h.socket, retry_for="1s")
    await fleet_of(rig)
    away = Path(h.socket + ".away")
    await asyncio.to_thread(Path(h.socket).rename, away)  # away longer than the retries: the remediation escalates
    rig.down("web-0")
    await rig.engine.reconcile(rig.t0 + 1)
    await rig.settle()
    (inc,) = await rig.engine.views.incident_list()
    assert inc["state"] == "failed" and "rotation.remove" in inc["error"] and "tried" in inc["error"], inc
    assert (await backend(str(away)))["web-0"] == "ready"  # the remove never reached HAProxy

    await asyncio.to_thread(away.rename, h.socket)
    await rotation_pass(rig, rig.t0 + 2)
    assert await backend(h.socket) == {"web-0": "maint", "web-1": "ready", "web-2": "ready"}
    await rotation_pass(rig, rig.t0 + 3)  # and keeps it out while the incident waits for a human
    assert (await backend(h.socket))["web-0"] == "maint"
    rig.up("web-0")  # it recovers: the service is optimal again, the incident ends, the machine serves again
    await rotation_pass(rig, rig.t0 + 4)
    assert (await rig.engine.views.incident_list())[0]["state"] == "resolved"
    assert (await backend(h.socket))["web-0"] == "ready"


async def test_an_answer_that_is_not_haproxys_is_said_once_without_a_traceback_and_so_is_the_recovery(
    rig_factory: Any, haproxy: Any, logs: Logs, tmp_path: Path
) -> None:
    rig: Rig = await rig_factory()
    await fleet_of(rig)  # in the rig's file rotation; then behind a socket that answers nonsense
    socket = tmp_path / "admin.sock"
    fake = FakeStatsSocket(socket, "crafted").start()
    use_haproxy(rig, str(socket))
    for tick in range(5):
        await rotation_pass(rig, rig.t0 + 10 * tick)
    assert fake.connections == 5
    (failing,) = said(logs, "the load balancer fails; monitoring goes on, healerd tries again every check interval")
    assert failing["service"] == "web" and "a line that is not HAProxy's" in failing["error"]
    assert not [e for e in logs if e.get("exc_info")], "a traceback was logged"
    assert rig.engine.fleet.rotation_faults == {"web": failing["error"]}
    assert rig.sample("healerd_rotation_up", service="web") == 0.0

    fake.stop()
    h = haproxy()  # on the same path
    assert h.socket == str(socket)
    await rotation_pass(rig, rig.t0 + 60)
    assert await backend(h.socket) == dict.fromkeys(MACHINES, "ready")
    await rotation_pass(rig, rig.t0 + 70)
    assert len(said(logs, "the load balancer answers again")) == 1
    assert rig.engine.fleet.rotation_faults == {}
    assert rig.sample("healerd_rotation_up", service="web") == 1.0


async def test_a_step_is_not_retried_when_haproxy_itself_refuses(haproxy: Any, tmp_path: Path) -> None:
    """A refusal is HAProxy's answer, not the world's: retrying it would only delay the step's failure."""
    h = haproxy()
    rotation = HaproxyRotation("web", HaproxyOptions(socket=h.socket, backend="nosuch"), state_dir=tmp_path)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Exception, match="is there a backend nosuch"):
        await rotation.remove(Machine("web", "web-0", "127.0.0.1:9"))
    assert loop.time() - started < 0.5
