"""Quarantined machines as an operator handles them (healerd.remediation.quarantine), through the engine of
tests/remediation_rig.py: a quarantined machine is kept, isolated and listed with its evidence; it is released
(out of healerd's hands, or back to rotation once its checks pass) or terminated, its evidence bundle kept;
what the provider refuses reaches the caller and leaves the machine where it was."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from remediation_rig import Rig
from structlog.contextvars import merge_contextvars
from structlog.testing import capture_logs

from healerd import api
from healerd.access import AccessBook
from healerd.api_access import Gate
from healerd.events import EventType
from healerd.health import CheckKey
from healerd.machines import Lifecycle, Machine
from healerd.providers.base import ProviderError
from healerd.results import Status


async def quarantined_rig(rig_factory: Any, **options: str) -> tuple[Rig, str]:
    """Three machines in service, web-0 quarantined by an incident (its evidence: the provider's answer)."""
    rig: Rig = await rig_factory(**options)
    for i, m in enumerate(("web-0", "web-1", "web-2")):
        await rig.add(m, launched_at=str(rig.t0 - 100 + i), image_version="v1")
    rig.up("web-0", "web-1", "web-2")
    inc = await rig.engine.book.open("web", "web-0", "replace-machine", "web-0 is down", rig.t0)
    await rig.engine.quarantines.quarantine(rig.service, "web-0", inc.id, True)
    return rig, inc.id


def back_on_probation(rig: Rig, monkeypatch: Any) -> asyncio.Event:
    """Set once a release has put a machine back on probation (its store writes run in threads)."""
    reached = asyncio.Event()
    put = rig.monitor.put_machine

    async def put_machine(machine: Machine, now: float | None = None) -> None:
        await put(machine, now)
        if machine.lifecycle is Lifecycle.PROBATION:
            reached.set()

    monkeypatch.setattr(rig.monitor, "put_machine", put_machine)
    return reached


def ended(rig: Rig) -> list[str]:
    return [e.details["ended"] for e in rig.of(EventType.MACHINE_QUARANTINED) if "ended" in e.details]


async def test_a_quarantined_machine_is_kept_isolated_and_listed_with_its_evidence(rig_factory: Any) -> None:
    rig, incident = await quarantined_rig(rig_factory)
    bundle = rig.tmp_path / "state" / "forensics" / incident
    bundle.mkdir(parents=True)

    (listed,) = await rig.engine.quarantines.listing()
    assert {k: listed[k] for k in ("service", "id", "incident", "image_version", "evidence")} == {
        "service": "web",
        "id": "web-0",
        "incident": incident,
        "image_version": "v1",
        "evidence": {"frozen": True},
    }
    assert listed["bundle"] == str(bundle) and listed["address"] == "127.0.0.1:20000"
    assert rig.t0 <= listed["quarantined_at"]
    assert rig.provider.quarantined == ["web-0"] and rig.provider.terminated == []  # kept, not destroyed
    assert rig.lifecycle("web-0") is Lifecycle.QUARANTINED
    assert "web-0" not in rig.rotation()  # no traffic
    assert CheckKey("web", "web-0", "health") not in rig.monitor.checks  # and no more checks
    assert rig.sample("healerd_quarantined_machines", service="web") == 1.0


async def test_released_out_of_rotation_it_is_no_longer_managed(rig_factory: Any, monkeypatch: Any) -> None:
    rig, _ = await quarantined_rig(rig_factory)
    released: list[str] = []

    async def release(machine: Machine) -> None:
        released.append(machine.id)

    monkeypatch.setattr(rig.provider, "release", release)
    answer = await rig.engine.quarantines.release("web-0", to_rotation=False)

    assert answer == {
        "machine": "web-0",
        "lifecycle": "released",
        "detail": "released from quarantine; no longer managed",
    }
    assert released == ["web-0"]  # the provider undid the isolation
    assert rig.lifecycle("web-0") is None and await rig.engine.quarantines.listing() == []
    assert "web-0" not in rig.rotation() and rig.provider.terminated == []
    assert ended(rig) == ["released from quarantine (no longer managed)"]
    with pytest.raises(LookupError, match="web-0 is not a quarantined machine"):
        await rig.engine.quarantines.release("web-0", to_rotation=False)  # released once


async def test_a_release_shows_at_once_in_the_quarantined_machines_gauge(rig_factory: Any) -> None:
    """An alert on healerd_quarantined_machines ends when the machine is released, as it does on termination,
    not at the next incident that happens to open or close."""
    rig, _ = await quarantined_rig(rig_factory)
    assert rig.sample("healerd_quarantined_machines", service="web") == 1.0
    await rig.engine.quarantines.release("web-0", to_rotation=False)
    assert rig.sample("healerd_quarantined_machines", service="web") == 0.0


async def test_released_to_rotation_it_returns_once_its_checks_pass_again(rig_factory: Any, monkeypatch: Any) -> None:
    rig, _ = await quarantined_rig(rig_factory)
    probation = back_on_probation(rig, monkeypatch)
    release = asyncio.create_task(rig.engine.quarantines.release("web-0", to_rotation=True, timeout=10))
    async with asyncio.timeout(5):
        await probation.wait()  # its checks from scratch, out of rotation until they pass
    assert "web-0" not in rig.rotation() and not release.done()

    rig.up("web-0")
    answer = await release

    assert answer["lifecycle"] == "in_service"
    assert rig.lifecycle("web-0") is Lifecycle.IN_SERVICE and rig.rotation() == {"web-0", "web-1", "web-2"}
    assert ended(rig) == ["released from quarantine: its checks passed, back in rotation"]


async def test_released_to_rotation_with_failing_checks_it_stays_out_and_is_quarantined_again(
    rig_factory: Any, monkeypatch: Any
) -> None:
    rig, incident = await quarantined_rig(rig_factory)
    probation = back_on_probation(rig, monkeypatch)
    release = asyncio.create_task(rig.engine.quarantines.release("web-0", to_rotation=True, timeout=10))
    async with asyncio.timeout(5):
        await probation.wait()
    rig.feed("web-0", Status.CRITICAL, 2)  # booted long ago: no boot grace for its failures

    with pytest.raises(RuntimeError, match="web-0 was not returned to rotation: web-0 failed probation"):
        await release
    assert rig.lifecycle("web-0") is Lifecycle.QUARANTINED and "web-0" not in rig.rotation()
    (listed,) = await rig.engine.quarantines.listing()
    assert listed["incident"] == incident  # still the incident it was quarantined for
    assert ended(rig) == []


async def test_terminating_ends_the_machine_and_keeps_its_evidence_bundle(rig_factory: Any) -> None:
    rig, incident = await quarantined_rig(rig_factory)
    bundle = rig.tmp_path / "state" / "forensics" / incident
    bundle.mkdir(parents=True)
    (bundle / "evidence.json").write_text('{"frozen": true}')

    answer = await rig.engine.quarantines.terminate("web-0")

    assert answer == {
        "machine": "web-0",
        "lifecycle": "terminated",
        "detail": "terminated; its evidence bundle is kept",
    }
    assert rig.provider.terminated == ["web-0"]
    assert (bundle / "evidence.json").read_text() == '{"frozen": true}'
    assert await rig.engine.quarantines.listing() == [] and rig.lifecycle("web-0") is None
    assert rig.sample("healerd_quarantined_machines", service="web") == 0.0
    assert ended(rig) == ["terminated (its evidence bundle is kept)"]
    with pytest.raises(LookupError, match="see GET /api/v1/quarantine"):
        await rig.engine.quarantines.terminate("web-1")  # in service: not the operator's to terminate this way


async def test_what_the_provider_refuses_reaches_the_caller_and_leaves_the_machine_quarantined(
    rig_factory: Any, monkeypatch: Any
) -> None:
    rig, incident = await quarantined_rig(rig_factory)

    async def refuse(machine: Machine) -> None:
        raise ProviderError(f"TerminateInstances {machine.id}: UnauthorizedOperation")

    monkeypatch.setattr(rig.provider, "terminate", refuse)
    monkeypatch.setattr(rig.provider, "release", refuse)
    with pytest.raises(ProviderError, match="TerminateInstances web-0: UnauthorizedOperation"):
        await rig.engine.quarantines.terminate("web-0")
    with pytest.raises(ProviderError, match="UnauthorizedOperation"):
        await rig.engine.quarantines.release("web-0", to_rotation=True)

    (listed,) = await rig.engine.quarantines.listing()
    assert (listed["id"], listed["incident"], listed["evidence"]) == ("web-0", incident, {"frozen": True})
    assert rig.lifecycle("web-0") is Lifecycle.QUARANTINED and "web-0" not in rig.rotation()
    assert ended(rig) == []  # nothing said to have ended


async def test_a_quarantine_the_provider_refuses_is_not_recorded_so_a_retry_does_it(
    rig_factory: Any, monkeypatch: Any
) -> None:
    rig: Rig = await rig_factory()
    for m in ("web-0", "web-1", "web-2"):
        await rig.add(m)
    inc = await rig.engine.book.open("web", "web-0", "replace-machine", "web-0 is down", rig.t0)

    async def refuse(machine: Machine, incident: str | None, freeze: bool = False) -> dict[str, Any]:
        raise ProviderError("CreateSnapshot: RequestLimitExceeded")

    monkeypatch.setattr(rig.provider, "quarantine", refuse)
    with pytest.raises(ProviderError, match="RequestLimitExceeded"):
        await rig.engine.quarantines.quarantine(rig.service, "web-0", inc.id, False)
    assert rig.lifecycle("web-0") is Lifecycle.IN_SERVICE and await rig.engine.quarantines.listing() == []
    assert not rig.of(EventType.MACHINE_QUARANTINED)

    monkeypatch.undo()
    assert await rig.engine.quarantines.quarantine(rig.service, "web-0", inc.id, False) == {"frozen": False}
    assert rig.lifecycle("web-0") is Lifecycle.QUARANTINED and rig.provider.quarantined == ["web-0"]


async def test_the_api_answers_a_provider_refusal_with_409_and_what_to_do(rig_factory: Any, monkeypatch: Any) -> None:
    rig, _ = await quarantined_rig(rig_factory)

    async def refuse(machine: Machine) -> None:
        raise ProviderError(f"TerminateInstances {machine.id}: UnauthorizedOperation")

    monkeypatch.setattr(rig.provider, "terminate", refuse)
    monkeypatch.setattr(rig.provider, "release", refuse)
    app = web.Application(middlewares=[api.errors_and_auth])
    app[api.SETTINGS] = SimpleNamespace(config=rig.config, access=AccessBook(None), cluster=None)  # type: ignore[assignment]
    app[api.ENGINE] = rig.engine
    app[api.GATE] = Gate(rig.metrics)
    api.add_routes(app)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        for what, body in (("terminate", {}), ("release", {"to_rotation": False})):
            resp = await client.post(f"/api/v1/quarantine/web-0/{what}", json=body, headers={"Host": "127.0.0.1:9464"})
            answer = await resp.json()
            assert resp.status == 409, answer
            assert answer["error"] == "provider refused"
            assert "UnauthorizedOperation" in answer["detail"] and "stays quarantined" in answer["detail"]
    assert rig.lifecycle("web-0") is Lifecycle.QUARANTINED


async def test_a_termination_at_keep_for_the_provider_refuses_is_retried_and_said_once(
    rig_factory: Any, monkeypatch: Any
) -> None:
    rig, _ = await quarantined_rig(rig_factory, remediation="{keep_for: 1h, keep_warning: 10m}")
    since = float(rig.monitor.machines["web"]["web-0"].attributes["quarantined_at"])
    calls: list[str] = []

    async def refuse(machine: Machine) -> None:
        if machine.id == "web-0":  # (the fill and surplus passes launch and retire others meanwhile)
            calls.append(machine.id)
        raise ProviderError("TerminateInstances: RequestLimitExceeded")

    monkeypatch.setattr(rig.provider, "terminate", refuse)
    with capture_logs(processors=[merge_contextvars]) as logs:
        for second in range(5):  # the engine passes every second: one attempt, not five
            await rig.engine.reconcile(since + 3600 + second)
        said = "quarantine retention ended; the provider refused to terminate"
        refused = [e for e in logs if e["event"] == said and e["machine"] == "web-0"]
        assert calls == ["web-0"] and len(refused) == 1 and "RequestLimitExceeded" in refused[0]["error"]
        assert rig.lifecycle("web-0") is Lifecycle.QUARANTINED

        await rig.engine.reconcile(since + 3600 + 61)  # tried again a minute later, not said again
        assert calls == ["web-0", "web-0"]
        assert len([e for e in logs if e["event"] == said and e["machine"] == "web-0"]) == 1


async def test_a_reconciler_that_fails_for_one_service_leaves_the_others_working(
    rig_factory: Any, monkeypatch: Any
) -> None:
    rig, _ = await quarantined_rig(rig_factory, remediation="{keep_for: 1h, keep_warning: 10m}")
    since = float(rig.monitor.machines["web"]["web-0"].attributes["quarantined_at"])

    async def broken(machine: Machine) -> None:
        raise KeyError("instance-id")  # not a ProviderError: a bug in a provider

    monkeypatch.setattr(rig.provider, "terminate", broken)
    ran: list[float] = []
    rotation = rig.engine.rotation_passes
    real = rotation.reconcile

    async def counted(service: Any, now: float) -> float:
        ran.append(now)
        return await real(service, now)

    monkeypatch.setattr(rotation, "reconcile", counted)
    with capture_logs() as logs:
        next_at = await rig.engine.reconcile(since + 3600)
    assert ran == [since + 3600]  # the reconciler after the failing one still ran
    assert next_at <= since + 3600 + 1  # and the engine looks again soon
    (failed,) = [e for e in logs if e["event"] == "reconcile failed; retrying"]
    assert failed["reconciler"] == "RetentionReconciler" and failed["service"] == "web"
