"""Machine records: saved and updated in place, found by service, id or incident, forgotten with their results."""

from __future__ import annotations

from healerd.health import CheckKey
from healerd.machines import Lifecycle, Machine
from healerd.results import CheckResult, Status
from healerd.store import Store


async def test_machines_are_saved_and_forgotten(store: Store) -> None:
    machines = [Machine("web", f"m{i}", f"127.0.0.1:{8000 + i}", Lifecycle.IN_SERVICE) for i in range(3)]
    await store.machines.save(machines, "lab", 1.0)
    await store.machines.forget("web", {"m0", "m2"})
    assert sorted(m.id for m in await store.machines.load("web")) == ["m0", "m2"]


async def test_forgetting_a_machine_drops_its_results_and_spares_other_services(store: Store) -> None:
    await store.machines.save([Machine("web", "m1", "127.0.0.1:1", Lifecycle.IN_SERVICE)], "lab", 1.0)
    await store.machines.save([Machine("db", "m1", "127.0.0.1:2", Lifecycle.IN_SERVICE)], "lab", 1.0)
    store.results.add(CheckKey("web", "m1", "health"), CheckResult(Status.OK, "up"), 1.0)
    store.results.add(CheckKey("db", "m1", "health"), CheckResult(Status.OK, "up"), 1.0)
    await store.flush()
    await store.machines.forget("web", set())
    assert await store.machines.load("web") == []
    assert await store.results.recent(CheckKey("web", "m1", "health")) == []
    assert [m.service for m in await store.machines.load()] == ["db"]
    assert len(await store.results.recent(CheckKey("db", "m1", "health"))) == 1


async def test_an_upsert_updates_lifecycle_address_and_attributes(store: Store) -> None:
    m = Machine("web", "web-1", "127.0.0.1:9001", Lifecycle.LAUNCHING, {"port": "9001", "launched_for": "I1"})
    await store.machines.upsert(m, "demo", 1.0)
    moved = Machine("web", "web-1", "127.0.0.1:9002", Lifecycle.QUARANTINED, {"port": "9002", "launched_for": "I1"})
    await store.machines.upsert(moved, "demo", 2.0)
    assert await store.machines.get("web", "web-1") == moved
    assert await store.machines.get("db", "web-1") is None  # the id is per service
    assert await store.machines.find("web-1") == moved
    assert await store.machines.find("nope") is None


async def test_machines_launched_for_an_incident_are_found_by_it(store: Store) -> None:
    await store.machines.save(
        [
            Machine("web", "a", "127.0.0.1:1", Lifecycle.PROBATION, {"launched_for": "I1"}),
            Machine("web", "b", "127.0.0.1:2", Lifecycle.IN_SERVICE, {"launched_for": "fill"}),
            Machine("web", "c", "127.0.0.1:3", Lifecycle.IN_SERVICE),
        ],
        "demo",
        1.0,
    )
    assert [m.id for m in await store.machines.for_incident("I1")] == ["a"]
    assert await store.machines.for_incident("I2") == []
